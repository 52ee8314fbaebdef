package httpconn

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"unicode/utf8"

	"github.com/theory/jsonpath"

	"github.com/ferry-cdc/ferry/internal/jsonscan"
)

// idPath is where a step's partner id is in the partner's answer: a JSON
// path, and for the common "$.name" (one member of the answer's object)
// the member's name, found without decoding the whole answer.
type idPath struct {
	*jsonpath.Path
	member string // "" for any other path
}

var memberPath = regexp.MustCompile(`^\$\.([A-Za-z_][A-Za-z0-9_]*)$`)

func parseIDPath(s string) (*idPath, error) {
	p, err := jsonpath.Parse(s)
	if err != nil {
		return nil, err
	}
	out := &idPath{Path: p}
	if m := memberPath.FindStringSubmatch(s); m != nil {
		out.member = m[1]
	}
	return out, nil
}

// extractID returns the first value the path selects in body, as a
// string: a string's text or a number as written.
func extractID(p *idPath, body []byte) (string, error) {
	if id, err, ok := p.memberID(body); ok {
		return id, err
	}
	v, err := decodeJSON(body)
	if err != nil {
		return "", fmt.Errorf("the answer is not JSON: %v", err)
	}
	nodes := p.Select(v)
	if len(nodes) == 0 {
		return "", errors.New("nothing there")
	}
	switch x := nodes[0].(type) {
	case string:
		if x == "" {
			return "", errors.New("it is empty")
		}
		return x, nil
	case json.Number:
		return x.String(), nil
	default:
		return "", fmt.Errorf("it is a %T, not a string or number", x)
	}
}

// memberID is extractID for a "$.name" path over an answer that is a
// JSON object, read in place: the member's last occurrence (the one a
// decode keeps), when it is a string with no escapes and valid UTF-8,
// or a number. ok is false for anything else (escaped keys among them,
// which could spell the name), and extractID decodes the answer.
func (p *idPath) memberID(body []byte) (id string, err error, ok bool) {
	if p.member == "" || !json.Valid(body) {
		return "", nil, false
	}
	var val []byte
	plain := true
	isObject, done := jsonscan.Object(body, func(key, value []byte) bool {
		if jsonscan.HasEscape(key) {
			plain = false
			return false
		}
		if string(key) == p.member {
			val = value
		}
		return true
	})
	if !isObject || !done || !plain || val == nil {
		return "", nil, false
	}
	switch c := val[0]; {
	case c == '"':
		s := val[1 : len(val)-1]
		if jsonscan.HasEscape(s) || !utf8.Valid(s) {
			return "", nil, false
		}
		if len(s) == 0 {
			return "", errors.New("it is empty"), true
		}
		return string(s), nil, true
	case c == '-' || c >= '0' && c <= '9':
		return string(val), nil, true
	}
	return "", nil, false
}
