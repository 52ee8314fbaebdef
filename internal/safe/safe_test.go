package safe

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestID(t *testing.T) {
	for _, c := range []struct {
		v, want string
	}{
		{"acme", ""},
		{"tenant with spaces\tand tab", ""},
		{"", "is empty"},
		{strings.Repeat("x", MaxID), ""},
		{strings.Repeat("x", MaxID+1), "256 bytes"},
		{"a\r\nX-Injected: 1", "control character"},
		{"a\x1b[31m", "control character"},
		{"a\x7f", "control character"},
		{"a\x00", "control character"},
	} {
		if got := ID(c.v); (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("ID(%q) = %q; want %q", c.v, got, c.want)
		}
	}
}

func TestURLRedactsCredentialsAndSecretParams(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"https://api.example/v1/items/7", "https://api.example/v1/items/7"},
		{"https://user:pw@api.example/x", "https://REDACTED@api.example/x"},
		{"https://tok@api.example/x", "https://REDACTED@api.example/x"},
		{"https://h.example/hook?token=abc&b=2", "https://h.example/hook?token=REDACTED&b=2"},
		{"https://h.example/h?X-Amz-Signature=s&api_key=k&Password=p&sig=1&auth=a&client_secret=c&page=3",
			"https://h.example/h?X-Amz-Signature=REDACTED&api_key=REDACTED&Password=REDACTED&sig=REDACTED&auth=REDACTED&client_secret=REDACTED&page=3"},
		{"https://h.example/h?acc%65ss_token=x", "https://h.example/h?acc%65ss_token=REDACTED"},
		{"://bad url with token=1", "(URL redacted: it does not parse)"},
	} {
		if got := URL(c.in); got != c.want {
			t.Errorf("URL(%q) = %q; want %q", c.in, got, c.want)
		}
	}
}

func TestTextRedactsURLsInErrors(t *testing.T) {
	in := `Post "https://u:p@h.example:8443/hook?token=abc": dial tcp 127.0.0.1:8443: connect: connection refused`
	want := `Post "https://REDACTED@h.example:8443/hook?token=REDACTED": dial tcp 127.0.0.1:8443: connect: connection refused`
	if got := Text(in); got != want {
		t.Fatalf("Text:\n got %s\nwant %s", got, want)
	}
}

func TestTerminalEscapesControlCharacters(t *testing.T) {
	in := "ok\tcell\nred \x1b[31mX\x1b[0m \x9b2J \u009b bell\a cr\r rtl\u202eevil\u202c bad\xff é 日本"
	got := string(Terminal([]byte(in)))
	want := `ok` + "\t" + `cell` + "\n" + `red \u001b[31mX\u001b[0m \x9b2J \u009b bell\u0007 cr\u000d rtl\u202eevil\u202c bad\xff é 日本`
	if got != want {
		t.Fatalf("Terminal:\n got %q\nwant %q", got, want)
	}
	if s := "plain text, tabs\tand newlines\n"; string(Terminal([]byte(s))) != s {
		t.Fatal("clean text changed")
	}
}

func FuzzTerminal(f *testing.F) {
	f.Add([]byte("a\x1b[2Jb\x9b\u009b\r\u202e"))
	f.Fuzz(func(t *testing.T, b []byte) {
		out := Terminal(b)
		for i := 0; i < len(out); {
			r, n := utf8.DecodeRune(out[i:])
			if unsafeRune(r, n) {
				t.Fatalf("Terminal(%q) = %q keeps %q", b, out, out[i:i+n])
			}
			i += n
		}
	})
}

func FuzzURL(f *testing.F) {
	f.Add("https://u:p@h.example/x?token=SECRET&q=1")
	f.Add("http://h/?a=1&api_key=SECRET#frag")
	f.Fuzz(func(t *testing.T, secret string) {
		if len(secret) < 4 || strings.ContainsAny(secret, "&#=?/@%:;[] ") || !utf8.ValidString(secret) {
			return
		}
		for _, raw := range []string{"https://" + secret + "@h.example/x", "https://u:" + secret + "@h.example/x",
			"https://h.example/x?a=1&token=" + secret, "https://h.example/x?Signature=" + secret + "&b=2"} {
			if got := URL(raw); strings.Contains(got, secret) && !strings.Contains("REDACTED", secret) {
				t.Fatalf("URL(%q) = %q keeps the secret", raw, got)
			}
		}
	})
}
