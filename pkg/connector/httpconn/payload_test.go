package httpconn

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
)

// What a template reads of .payload: the members it names, or the whole
// of it wherever it could reach more than those.
func TestPayloadUse(t *testing.T) {
	for _, tc := range []struct {
		src   string
		whole bool
		keys  []string
	}{
		{`{"name": {{.payload.name}}, "s": "x-{{.payload.sku}}", "again": {{.payload.name}}}`, false, []string{"name", "sku"}},
		{`{"deep": {{.payload.a.b}}, "id": {{.local_id}}}`, false, []string{"a"}},
		{`{{if .payload.on}}{"n": {{.payload.n}}}{{else}}{}{{end}}`, false, []string{"on", "n"}},
		{`{{with .ids}}{"n": {{$.payload.n}}}{{end}}`, false, []string{"n"}},
		{`{"t": {{.tenant_id}}}`, false, nil},
		{`{"all": {{.payload}}}`, true, nil},
		{`{{range .payload.items}}{{.}}{{end}}`, true, []string{"items"}},
		{`{{with .payload}}x{{end}}`, true, nil},
		{`{{$p := .payload.a}}{{$p}}`, true, []string{"a"}},
		{`{{index . "payload"}}`, true, nil},
		{`{{(.payload).name}}`, true, nil},
		{`{{define "x"}}{{.name}}{{end}}{{template "x" .payload}}`, true, nil},
	} {
		tt, err := compile("t", tc.src, bodyKind, scope{})
		if err != nil {
			t.Fatalf("%s: %v", tc.src, err)
		}
		var u payloadUse
		u.read(tt)
		if u.whole != tc.whole || !slices.Equal(u.keys, tc.keys) {
			t.Errorf("%s: whole %v, keys %v; want %v, %v", tc.src, u.whole, u.keys, tc.whole, tc.keys)
		}
	}
}

// Templates render from a payload decoded for what they read what they
// render from the whole payload decoded: the same text, or the same
// error, for the payloads events carry and the odd ones.
func TestPayloadDecodedForItsTemplatesRendersAsWhole(t *testing.T) {
	templates := []string{
		`{"name": {{.payload.name}}, "s": "x-{{.payload.name}}", "n": {{.payload.n}}}`,
		`{"deep": {{.payload.a.b}}}`,
		`{{if .payload.name}}{"n": {{.payload.n | raw}}}{{end}}`,
		`{"missing": {{.payload.nope}}}`,
		`{"all": {{.payload}}}`,
	}
	for _, src := range templates {
		tt, err := compile("t", src, bodyKind, scope{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range payloadSeeds {
			checkPayloadDecode(t, tt, []byte(p))
		}
	}
}

var payloadSeeds = []string{
	`{"sku":"sku-1","name":"Product","n":100,"a":{"b":[1.5,"x",null]}}`,
	`{"name":"a \"b\" \u00e9","n":-1.5e300,"a":"not a map"}`,
	`{"name":null,"n":true,"name":"twice"}`,
	`{"na\u006de":"escaped key","n":1}`,
	`{"name":"` + "\xff" + `","n":12345678901234567890}`,
	` { "name" : "spaces" , "n" : 0 } `,
	`{}`,
	`[1,2]`,
	`"a string"`,
	`null`,
	`{"name":"trailing"} x`,
	`{"name":`,
	`not json`,
	``,
}

// checkPayloadDecode renders tt over payload decoded for tt, and whole.
func checkPayloadDecode(t *testing.T, tt *tmpl, payload []byte) {
	t.Helper()
	var u payloadUse
	u.read(tt)
	part, perr := u.decode(payload)
	whole, werr := decodeJSON(payload)
	if fmt.Sprint(perr) != fmt.Sprint(werr) {
		t.Fatalf("%q: decoded for %+v: error %v; whole: %v", payload, u, perr, werr)
	}
	if werr != nil {
		return
	}
	got, gotErr := render(tt, map[string]any{"payload": part, "local_id": "L"})
	want, wantErr := render(tt, map[string]any{"payload": whole, "local_id": "L"})
	if got != want || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
		t.Fatalf("%s over %q:\ndecoded for it %q, %v\nwhole          %q, %v", tt.Root, payload, got, gotErr, want, wantErr)
	}
}

// FuzzPayloadDecode: whatever the payload, the templates that read a few
// of its members render from those as from the whole payload.
func FuzzPayloadDecode(f *testing.F) {
	for _, p := range payloadSeeds {
		f.Add([]byte(p))
	}
	tt, err := compile("t", `{"name": {{.payload.name}}, "s": "x-{{.payload.name}}", "deep": {{.payload.a.b}}, "n": {{.payload.n}}}`, bodyKind, scope{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte) { checkPayloadDecode(t, tt, payload) })
}

// The body escapers write what json.Marshal writes, byte for byte, also
// where they skip it for a plain string.
func TestBodyEscapersWriteWhatMarshalWrites(t *testing.T) {
	values := []string{"", "Product", "sku-1 x/y?z=1", `quo"te`, `back\slash`, "</script>", "a&b", "\u2028", "é", "\xff", "\x7f", "tab\t"}
	for c := range 256 {
		values = append(values, "x"+string(rune(c))+"y", "x"+string([]byte{byte(c)})+"y")
	}
	asJSON, inString := escapers[fnJSON], escapers[fnJSONString]
	for _, v := range values {
		want, _ := json.Marshal(v)
		got, err := asJSON(v)
		if err != nil || got != string(want) {
			t.Fatalf("json of %q: %q, %v; Marshal writes %q", v, got, err, want)
		}
		got, err = inString(v)
		if err != nil || got != string(want[1:len(want)-1]) {
			t.Fatalf("jsonString of %q: %q, %v; Marshal writes %q", v, got, err, want)
		}
	}
}
