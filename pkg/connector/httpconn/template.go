package httpconn

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/ferry-cdc/ferry/internal/safe"
)

// Templates are Go text/template over the event (see Data). Escaping is
// automatic, by where the value lands, as html/template does for HTML:
//
//   - in a path, each value is path-escaped ("a/b" → "a%2Fb"), and after
//     a "?" query-escaped;
//   - in a body, a value outside a JSON string is written as JSON (a
//     string quoted, a number as is, an object as an object), and a value
//     inside a JSON string is written as that string's escaped content;
//   - in a header, values are written as they are (no newlines allowed).
//
// End a pipeline with "raw" to write a value unescaped.
type kind int

const (
	pathKind kind = iota
	bodyKind
	headerKind
)

// Escapers appended to each action; "raw" opts out.
const (
	fnJSON       = "json"
	fnJSONString = "jsonString"
	fnPath       = "pathEscape"
	fnQuery      = "queryEscape"
	fnHeader     = "headerValue"
	fnRaw        = "raw"
)

var funcs = template.FuncMap{
	fnJSON: func(v any) (string, error) {
		if s, ok := v.(string); ok && plainJSON(s) {
			return `"` + s + `"`, nil
		}
		b, err := json.Marshal(v)
		return string(b), err
	},
	fnJSONString: func(v any) (string, error) {
		s := text(v)
		if plainJSON(s) {
			return s, nil
		}
		b, err := json.Marshal(s)
		if err != nil {
			return "", err
		}
		return string(b[1 : len(b)-1]), nil
	},
	// Path values are marked, so renderPath can tell a segment a value
	// made from the template's own text.
	fnPath:  func(v any) string { return markStart + url.PathEscape(text(v)) + markEnd },
	fnQuery: func(v any) string { return url.QueryEscape(text(v)) },
	fnHeader: func(v any) (string, error) {
		s := text(v)
		if strings.ContainsAny(s, "\r\n") {
			return "", fmt.Errorf("header value %q contains a line break", s)
		}
		if !safe.HeaderValue(s) {
			return "", fmt.Errorf("header value %q has a control character", s)
		}
		return s, nil
	},
	fnRaw: func(v any) string { return text(v) },
}

// plainJSON reports whether s is written into a JSON string as it is:
// printable ASCII that json.Marshal does not escape (it escapes '"',
// '\\', and '<', '>', '&' for HTML). Most values are; Marshal writes the
// rest.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// text is v as a plain string: strings as they are, anything else as
// JSON (numbers keep their digits: payloads are decoded with UseNumber).
func text(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case nil:
		return ""
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// fields are what templates see: the top-level keys of Data.
var fields = []string{"event_id", "tenant_id", "event_type", "aggregate_type", "aggregate_id", "local_id",
	"payload", "headers", "remote_id", "ids", "parents", "steps", "idempotency_key", "cloudevent"}

// scope is what a template may refer to besides fields.
type scope struct {
	parents []string // .parents.X
	steps   []string // .steps.X (earlier steps only)
	ids     []string // .ids.X
}

// tmpl is a compiled template. Most are text and plain field references
// ({{.local_id}}, {{.payload.name}}): those also have a plan, rendered
// by walking the data directly; text/template renders the rest, and any
// event the plan cannot render as it would (a missing key, a value that
// is not a map, an escaper's error).
type tmpl struct {
	*template.Template
	plan []piece // nil: text/template only
}

// piece is literal text, then (when path is set) one escaped value.
type piece struct {
	text string
	path []string
	esc  func(any) (string, error)
}

// escapers are funcs' escapers with one signature, for plans.
var escapers = func() map[string]func(any) (string, error) {
	out := map[string]func(any) (string, error){}
	for name, f := range funcs {
		switch f := f.(type) {
		case func(any) (string, error):
			out[name] = f
		case func(any) string:
			out[name] = func(v any) (string, error) { return f(v), nil }
		}
	}
	return out
}()

// planOf returns the plan of a template root made only of text and
// actions {{.a.b | escaper}}, or nil.
func planOf(root *parse.ListNode) []piece {
	plan := []piece{{}}
	for _, n := range root.Nodes {
		switch x := n.(type) {
		case *parse.TextNode:
			last := &plan[len(plan)-1]
			if last.path != nil {
				plan = append(plan, piece{})
				last = &plan[len(plan)-1]
			}
			last.text += string(x.Text)
		case *parse.ActionNode:
			p := x.Pipe
			if len(p.Decl) != 0 || len(p.Cmds) != 2 || len(p.Cmds[0].Args) != 1 || len(p.Cmds[1].Args) != 1 {
				return nil
			}
			f, ok := p.Cmds[0].Args[0].(*parse.FieldNode)
			id, ok2 := p.Cmds[1].Args[0].(*parse.IdentifierNode)
			if !ok || !ok2 || escapers[id.Ident] == nil {
				return nil
			}
			last := &plan[len(plan)-1]
			if last.path != nil {
				plan = append(plan, piece{})
				last = &plan[len(plan)-1]
			}
			last.path, last.esc = f.Ident, escapers[id.Ident]
		default:
			return nil
		}
	}
	return plan
}

// fast renders t's plan over data; false leaves data to text/template.
func (t *tmpl) fast(data map[string]any) (string, bool) {
	var b strings.Builder
	for _, p := range t.plan {
		b.WriteString(p.text)
		if p.path == nil {
			continue
		}
		var v any = data
		for _, k := range p.path {
			m, ok := v.(map[string]any)
			if !ok {
				return "", false
			}
			if v, ok = m[k]; !ok {
				return "", false
			}
		}
		s, err := p.esc(v)
		if err != nil {
			return "", false
		}
		b.WriteString(s)
	}
	return b.String(), true
}

// compile parses src as a template of kind k, checks every field it
// refers to, and adds the escapers.
func compile(name, src string, k kind, sc scope) (*tmpl, error) {
	tt, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(src)
	if err != nil {
		return nil, fmt.Errorf("template does not parse: %v", strings.TrimPrefix(err.Error(), "template: "+name+":"))
	}
	t := &tmpl{Template: tt}
	if t.Tree == nil || t.Tree.Root == nil {
		return t, nil
	}
	var errs []string
	walk(t.Tree.Root, func(n parse.Node) {
		if f, ok := n.(*parse.FieldNode); ok {
			if msg := sc.check(f.Ident); msg != "" {
				errs = append(errs, msg)
			}
		}
	})
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	st := &escState{}
	st.list(t.Tree.Root, k)
	t.plan = planOf(t.Tree.Root)
	return t, nil
}

func (sc scope) check(ident []string) string {
	if !slices.Contains(fields, ident[0]) {
		return fmt.Sprintf("unknown field %q (templates see .%s)", ident[0], strings.Join(fields, ", ."))
	}
	sub := map[string][]string{"parents": sc.parents, "steps": sc.steps, "ids": sc.ids}
	if known, ok := sub[ident[0]]; ok && len(ident) > 1 && !slices.Contains(known, ident[1]) {
		switch ident[0] {
		case "parents":
			return fmt.Sprintf("unknown parent %q: declare it under the entity's parents", ident[1])
		case "steps":
			return fmt.Sprintf("unknown step %q: only earlier steps of this operation can be used (%v)", ident[1], sc.steps)
		default:
			return fmt.Sprintf("unknown id %q: name it with map: on a create step", ident[1])
		}
	}
	return ""
}

// walk calls f on every node under n.
func walk(n parse.Node, f func(parse.Node)) {
	if n == nil {
		return
	}
	f(n)
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return
		}
		for _, c := range x.Nodes {
			walk(c, f)
		}
	case *parse.ActionNode:
		walk(x.Pipe, f)
	case *parse.PipeNode:
		if x == nil {
			return
		}
		for _, c := range x.Cmds {
			walk(c, f)
		}
	case *parse.CommandNode:
		for _, a := range x.Args {
			walk(a, f)
		}
	case *parse.IfNode:
		walk(x.Pipe, f)
		walk(x.List, f)
		walk(x.ElseList, f)
	case *parse.RangeNode:
		walk(x.Pipe, f)
		walk(x.List, f)
		walk(x.ElseList, f)
	case *parse.WithNode:
		walk(x.Pipe, f)
		walk(x.List, f)
		walk(x.ElseList, f)
	case *parse.ChainNode:
		walk(x.Node, f)
	case *parse.TemplateNode:
		walk(x.Pipe, f)
	}
}

// escState tracks where in the output an action lands: inside a JSON
// string (bodies) or after a "?" (paths).
type escState struct {
	inString bool // body: inside a JSON string
	escaped  bool // body: the last character was a backslash in a string
	query    bool // path: after "?"
}

func (s *escState) list(l *parse.ListNode, k kind) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		switch x := n.(type) {
		case *parse.TextNode:
			s.text(x.Text, k)
		case *parse.ActionNode:
			if len(x.Pipe.Decl) == 0 {
				s.escape(x.Pipe, k)
			}
		case *parse.IfNode:
			s.branch(&x.BranchNode, k)
		case *parse.RangeNode:
			s.branch(&x.BranchNode, k)
		case *parse.WithNode:
			s.branch(&x.BranchNode, k)
		}
	}
}

// branch escapes both arms from the same state; the state after the
// "then" arm carries on (templates whose arms end in different contexts
// are not supported).
func (s *escState) branch(b *parse.BranchNode, k kind) {
	save := *s
	s.list(b.List, k)
	after := *s
	*s = save
	s.list(b.ElseList, k)
	*s = after
}

func (s *escState) text(t []byte, k kind) {
	for _, c := range t {
		switch {
		case k == pathKind && c == '?':
			s.query = true
		case k != bodyKind:
		case s.escaped:
			s.escaped = false
		case s.inString && c == '\\':
			s.escaped = true
		case c == '"':
			s.inString = !s.inString
		}
	}
}

func (s *escState) escape(p *parse.PipeNode, k kind) {
	if n := len(p.Cmds); n > 0 {
		if id, ok := p.Cmds[n-1].Args[0].(*parse.IdentifierNode); ok && isEscaper(id.Ident) {
			return
		}
	}
	fn := fnHeader
	switch {
	case k == pathKind && s.query:
		fn = fnQuery
	case k == pathKind:
		fn = fnPath
	case k == bodyKind && s.inString:
		fn = fnJSONString
	case k == bodyKind:
		fn = fnJSON
	}
	p.Cmds = append(p.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: p.Pos,
		Args: []parse.Node{parse.NewIdentifier(fn).SetPos(p.Pos)}})
}

func isEscaper(name string) bool {
	switch name {
	case fnJSON, fnJSONString, fnPath, fnQuery, fnHeader, fnRaw:
		return true
	}
	return false
}

// markStart and markEnd surround each escaped path value while a path
// renders. url.PathEscape escapes every non-ASCII byte, so an escaped
// value never contains them.
const (
	markStart = "\ue000"
	markEnd   = "\ue001"
)

var unmark = strings.NewReplacer(markStart, "", markEnd, "")

// render executes t over data.
func render(t *tmpl, data map[string]any) (string, error) {
	out, err := execute(t, data)
	if strings.Contains(out, markStart) {
		out = unmark.Replace(out) // pathEscape used outside a path
	}
	return out, err
}

func execute(t *tmpl, data map[string]any) (string, error) {
	if t.plan != nil {
		if out, ok := t.fast(data); ok {
			return out, nil
		}
	}
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 && strings.Contains(msg, "executing") {
			msg = msg[i+2:]
		}
		return "", fmt.Errorf("%s: %s", t.Name(), msg)
	}
	return b.String(), nil
}

// renderPath executes a path template and checks what the event's values
// made of it: a segment made by a value that is empty, "." or ".." would
// aim the call at another object (DELETE /v1/items/ instead of
// /v1/items/7; /v1/items/.. is /v1), so it is an error, and so is any
// dot segment at all (a raw value can make one).
func renderPath(t *tmpl, data map[string]any) (string, error) {
	out, err := execute(t, data)
	if err != nil {
		return "", err
	}
	p, _, _ := strings.Cut(out, "?")
	for i, seg := range strings.Split(p, "/") {
		if i == 0 || !strings.Contains(seg, markStart) {
			continue
		}
		switch plain := unmark.Replace(seg); plain {
		case "", ".", "..":
			return "", fmt.Errorf("path segment %d is %q after the event's values are filled in "+
				"(a value is empty or a dot segment): the call would reach another object", i, plain)
		}
	}
	out = unmark.Replace(out)
	p, _, _ = strings.Cut(out, "?")
	for _, seg := range strings.Split(p, "/") {
		if dec, err := url.PathUnescape(seg); seg == "." || seg == ".." || err == nil && (dec == "." || dec == "..") {
			return "", fmt.Errorf("path %q has a dot segment: the call would reach another object", p)
		}
	}
	return out, nil
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
