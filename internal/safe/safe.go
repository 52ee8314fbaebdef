package safe

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"
)

// MaxID is the longest tenant or event id, in bytes, that Ferry passes
// on: ids travel as Kafka headers and as the X-Tenant-ID and
// Idempotency-Key headers of partner calls.
const MaxID = 255

// ID returns why v cannot be a tenant or event id, or "" when it can: it
// must be 1 to MaxID bytes and a valid HTTP header value. The reason
// never quotes v (it may hold terminal escapes).
func ID(v string) string {
	switch {
	case v == "":
		return "is empty"
	case len(v) > MaxID:
		return fmt.Sprintf("is %d bytes long (at most %d)", len(v), MaxID)
	case !HeaderValue(v):
		return "has a control character (not a valid HTTP header value)"
	}
	return ""
}

// HeaderValue reports whether v is a valid HTTP header field value (RFC
// 9110 field-value): no control characters but horizontal tab. It is the
// rule net/http's client enforces (golang.org/x/net/http/httpguts
// ValidHeaderFieldValue), checked before a call so a value the client
// would refuse is a rejection with a reason, not a failure retried
// forever.
func HeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		b := v[i]
		if b < ' ' && b != '\t' || b == 0x7f {
			return false
		}
	}
	return true
}

// HeaderName reports whether v is a valid HTTP header field name (an RFC
// 9110 token).
func HeaderName(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		b := v[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0) {
			return false
		}
	}
	return true
}

// Redacted replaces secrets.
const Redacted = "REDACTED"

// secretWords are the parts of a query parameter's name that mark its
// value as a secret (matched case-insensitively anywhere in the name:
// api_key, X-Amz-Signature, access_token, sslpassword).
var secretWords = []string{"token", "key", "secret", "signature", "sig", "password", "passwd", "pwd", "auth", "credential"}

// SecretParam reports whether a query parameter named name holds a
// secret.
func SecretParam(name string) bool {
	n := strings.ToLower(name)
	for _, w := range secretWords {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// Query returns the raw query with the values of secret parameters
// replaced by REDACTED, keeping the order and encoding of the others.
func Query(raw string) string {
	if raw == "" {
		return ""
	}
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		k, _, _ := strings.Cut(p, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			name = k
		}
		if SecretParam(name) {
			parts[i] = k + "=" + Redacted
		}
	}
	return strings.Join(parts, "&")
}

// URL returns raw fit to store, log and show: userinfo (user and
// password: either may be a token) and the values of secret query
// parameters are replaced by REDACTED. A URL that does not parse is
// replaced whole.
func URL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(URL redacted: it does not parse)"
	}
	return URLOf(u)
}

// URLOf is URL of a URL parsed already (u is left as it is).
func URLOf(u *url.URL) string {
	c := *u
	if c.User != nil {
		c.User = url.User(Redacted)
	}
	c.RawQuery = Query(c.RawQuery)
	return c.String()
}

// urlRe finds URLs in free text (error messages): a scheme, "://", and
// everything up to a space or a quote.
var urlRe = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>` + "`" + `]+`)

// Text returns s with every URL in it redacted (see URL): for reasons and
// error messages that may quote a URL.
func Text(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	return urlRe.ReplaceAllStringFunc(s, URL)
}

// Terminal returns b fit to print to a terminal: control characters
// other than newline and tab (ESC and the C1 controls start escape
// sequences, CR overwrites a line), Unicode bidirectional overrides and
// invalid UTF-8 bytes are written as visible escapes (\u001b, \xff).
// JSON stays valid: inside a JSON string, \u001b is the same character.
func Terminal(b []byte) []byte {
	clean := true
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if unsafeRune(r, n) {
			clean = false
			break
		}
		i += n
	}
	if clean {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			out = fmt.Appendf(out, `\x%02x`, b[i])
		case unsafeRune(r, n):
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	return out
}

func unsafeRune(r rune, n int) bool {
	switch {
	case r == utf8.RuneError && n == 1:
		return true
	case r == '\n' || r == '\t':
		return false
	case r < 0x20 || r >= 0x7f && r <= 0x9f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e || r == 0x200f:
		return true // bidirectional controls reorder what the operator reads
	}
	return false
}
