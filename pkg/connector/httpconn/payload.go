package httpconn

import (
	"encoding/json"
	"slices"
	"text/template/parse"
	"unicode/utf8"

	"github.com/ferry-cdc/ferry/internal/jsonscan"
)

// payloadUse is what an entity's templates read of .payload: the
// members named by .payload.X (keys), or the whole of it (whole: a
// template hands .payload on as it is, walks it, reaches it through a
// variable or dot, or calls a named template). start decodes only what
// is read: most templates name a few members of a larger payload, and
// decoding all of it into maps was the HTTP connector's largest cost of
// its own (sinkbench -only mapped, docs/performance.md).
type payloadUse struct {
	whole bool
	keys  []string
}

// add records a reference (a field chain from the data's root).
func (u *payloadUse) add(ident []string) {
	switch {
	case len(ident) == 0 || ident[0] != "payload":
	case len(ident) == 1:
		u.whole = true
	case !slices.Contains(u.keys, ident[1]):
		u.keys = append(u.keys, ident[1])
	}
}

// read adds what t reads of .payload (nothing for a nil t).
func (u *payloadUse) read(t *tmpl) {
	if t == nil {
		return
	}
	for _, tt := range t.Templates() {
		if tt.Tree == nil || tt.Root == nil {
			continue
		}
		if tt.Name() != t.Name() {
			u.whole = true // a {{define}}d template: its dot is not known here
		}
		walk(tt.Root, func(n parse.Node) {
			switch x := n.(type) {
			case *parse.FieldNode:
				u.add(x.Ident)
			case *parse.VariableNode:
				if len(x.Ident) == 1 {
					u.whole = true // $ or a variable: may hold the data, or .payload
				} else {
					u.add(x.Ident[1:])
				}
			case *parse.DotNode, *parse.TemplateNode:
				u.whole = true
			}
		})
	}
}

// readCall adds what c's templates read (nil: nothing).
func (u *payloadUse) readCall(c *call) {
	if c == nil {
		return
	}
	u.read(c.path)
	u.read(c.body)
	for _, t := range c.headers {
		u.read(t)
	}
}

// payloadOf is what e's templates, and the connector's headers, read.
func payloadOf(e *entity, headers map[string]*tmpl) payloadUse {
	var u payloadUse
	u.read(e.id)
	for _, t := range e.parents {
		u.read(t)
	}
	for _, t := range headers {
		u.read(t)
	}
	u.readCall(e.lookup)
	for _, steps := range e.ops {
		for _, s := range steps {
			u.readCall(&s.call)
			u.readCall(s.undo)
		}
	}
	return u
}

// decode is .payload for templates that read u of it: the members in
// u.keys, decoded as decodeJSON would, of a payload that is a JSON
// object; anything else (the whole read, a payload that is not a valid
// object, an escaped key, which could spell a member's name) is decoded
// whole, with decodeJSON's result or error.
func (u payloadUse) decode(b []byte) (any, error) {
	if u.whole || !json.Valid(b) {
		return decodeJSON(b)
	}
	m := make(map[string]any, len(u.keys))
	var err error
	plain := true
	isObject, done := jsonscan.Object(b, func(key, value []byte) bool {
		if jsonscan.HasEscape(key) {
			plain = false
			return false
		}
		if !slices.Contains(u.keys, string(key)) {
			return true
		}
		var v any
		if v, err = decodeValue(value); err != nil {
			return false
		}
		m[string(key)] = v // a key written twice: the last, as a decode keeps
		return true
	})
	if !isObject || !done || !plain || err != nil {
		return decodeJSON(b)
	}
	return m, nil
}

// decodeValue is decodeJSON of one JSON value: a plain string (no
// escapes, valid UTF-8) and a number without decoding.
func decodeValue(v []byte) (any, error) {
	switch c := v[0]; {
	case c == '"' && !jsonscan.HasEscape(v) && utf8.Valid(v):
		return string(v[1 : len(v)-1]), nil
	case c == '-' || c >= '0' && c <= '9':
		return json.Number(v), nil
	}
	return decodeJSON(v)
}
