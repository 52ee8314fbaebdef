package httpconn

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ferry-cdc/ferry/internal/safe"
)

// Config describes one partner API. Field names are the YAML keys.
type Config struct {
	// BaseURL is prefixed to every path (e.g. https://api.partner.example).
	BaseURL string `yaml:"base_url"`
	// Timeout bounds each call. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// Auth is how calls authenticate.
	Auth Auth `yaml:"auth"`
	// Headers are added to every call (templates; see Data).
	Headers map[string]string `yaml:"headers"`
	// RejectStatuses are statuses that reject the event for good. Default:
	// every 4xx but 408, 425 and 429.
	RejectStatuses []int `yaml:"reject_statuses"`
	// RetryStatuses are statuses that fail the attempt, to be retried.
	// Default: 408, 425, 429 and every 5xx. A status in both lists
	// retries.
	RetryStatuses []int `yaml:"retry_statuses"`
	// Operations map event types (path.Match patterns) to an operation:
	// create, update, upsert or delete. An exact name wins over a
	// pattern, a longer pattern over a shorter one. Default: *.created →
	// create, *.updated → update, *.deleted → delete.
	Operations map[string]string `yaml:"operations"`
	// NoUpsert makes an update of an object that has no mapping a
	// rejection. By default it creates the object.
	NoUpsert bool `yaml:"no_upsert"`
	// HealthPath is probed while the circuit breaker is open (any answer
	// below 500 means up). Default: the base URL.
	HealthPath string `yaml:"health_path"`
	// Entities are keyed by the event's aggregate type.
	Entities map[string]Entity `yaml:"entities"`
}

// Auth is bearer, basic or header; secrets come from the environment and
// are never logged or stored.
type Auth struct {
	// Type is "", "bearer", "basic" or "header".
	Type string `yaml:"type"`
	// TokenEnv names the variable holding the bearer token.
	TokenEnv string `yaml:"token_env"`
	// UsernameEnv and PasswordEnv name the basic-auth variables.
	UsernameEnv string `yaml:"username_env"`
	PasswordEnv string `yaml:"password_env"`
	// Header is the API-key header's name; ValueEnv the variable holding
	// its value.
	Header   string `yaml:"header"`
	ValueEnv string `yaml:"value_env"`
}

// Entity is how one of our object types is created, updated and deleted
// at the partner.
type Entity struct {
	// ID is our id of the object (a template). Default {{.aggregate_id}}.
	ID string `yaml:"id"`
	// Parents are other entities this one needs the partner id of, each
	// with a template giving the parent's local id (e.g. product:
	// "{{.payload.product_id}}"). Until the parent is mapped the event
	// waits. Templates see the partner ids as .parents.<entity>.
	Parents map[string]string `yaml:"parents"`
	// Lookup finds the partner object by our id after a create whose
	// outcome is unknown (the process died between the partner's answer
	// and the mapping write). Its ID is where the partner id is.
	Lookup *Call `yaml:"lookup"`
	// Create, Update and Delete are each one call or a list of steps.
	Create Steps `yaml:"create"`
	Update Steps `yaml:"update"`
	Delete Steps `yaml:"delete"`
}

// Steps is one call or several; YAML accepts a mapping or a list.
type Steps []Step

// UnmarshalYAML accepts a single step as well as a list.
func (s *Steps) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		var one Step
		if err := n.Decode(&one); err != nil {
			return err
		}
		*s = Steps{one}
		return nil
	}
	var many []Step
	if err := n.Decode(&many); err != nil {
		return err
	}
	*s = many
	return nil
}

// Call is one HTTP request.
type Call struct {
	// Method defaults to POST for create, PUT for update, DELETE for
	// delete, GET for lookup.
	Method string `yaml:"method"`
	// Path is a template appended to the base URL.
	Path string `yaml:"path"`
	// Body is a JSON template; empty sends no body.
	Body string `yaml:"body"`
	// Headers are added to this call (templates).
	Headers map[string]string `yaml:"headers"`
	// ID is a JSON path (RFC 9535) to the partner id in the response,
	// e.g. $.id or $.data[0].id.
	ID string `yaml:"id"`
}

// Step is one call of an operation.
type Step struct {
	Call `yaml:",inline"`
	// Name names the step in the delivery log and for later steps
	// (.steps.<name>.id). Default "step1", "step2", ...
	Name string `yaml:"name"`
	// Map records the step's partner id as the mapping of this entity
	// type (same local id), so updates and deletes find it as
	// .ids.<map>. The first create step with an id maps the entity itself.
	Map string `yaml:"map"`
	// Undo undoes the step when a later step is rejected (compensation).
	Undo *Call `yaml:"undo"`
}

// Operations.
const (
	opCreate = "create"
	opUpdate = "update"
	opUpsert = "upsert"
	opDelete = "delete"
)

var defaultOperations = map[string]string{"*.created": opCreate, "*.updated": opUpdate, "*.deleted": opDelete}

// compiled forms, built once by New.
type call struct {
	method  string
	path    *tmpl
	body    *tmpl
	headers map[string]*tmpl
	id      *idPath
	idSrc   string
}

type step struct {
	call
	name string
	maps string // entity type its id is recorded under ("" = none)
	undo *call
}

type entity struct {
	name    string
	id      *tmpl
	parents map[string]*tmpl
	lookup  *call
	ops     map[string][]step // create, update, delete
	payload payloadUse        // what its templates read of .payload
}

// compileConfig checks every field and returns every problem at once,
// each with its field path under prefix.
func (c *Config) compile(prefix string, getenv func(string) string) (map[string]*entity, map[string]*tmpl, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", prefix, field, fmt.Sprintf(format, args...)))
	}
	switch u, err := url.Parse(c.BaseURL); {
	case c.BaseURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		// Not quoted: a URL that does not parse may still hold a secret.
		bad(".base_url", "%q: give the partner's http(s) URL, e.g. https://api.partner.example", safe.URL(c.BaseURL))
	case u.User != nil:
		bad(".base_url", "carries credentials (user:password@): they would be stored and shown with every call; "+
			"take them from the environment with auth (bearer, basic or header)")
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(c.BaseURL, "?"):
		bad(".base_url", "%s has a query or fragment: put query parameters in each call's path, secrets in auth", safe.URL(c.BaseURL))
	}
	if c.HealthPath != "" && !strings.HasPrefix(c.HealthPath, "/") {
		bad(".health_path", "%q must start with \"/\" (it is appended to base_url)", c.HealthPath)
	}
	if c.Timeout < 0 {
		bad(".timeout", "must not be negative")
	}
	secret := func(field, name string) {
		switch {
		case name == "":
			bad(field, "required for auth type %q: name the environment variable holding the secret", c.Auth.Type)
		case getenv(name) == "":
			bad(field, "environment variable %s is not set (or empty)", name)
		}
	}
	switch c.Auth.Type {
	case "":
	case "bearer":
		secret(".auth.token_env", c.Auth.TokenEnv)
	case "basic":
		secret(".auth.username_env", c.Auth.UsernameEnv)
		secret(".auth.password_env", c.Auth.PasswordEnv)
	case "header":
		if c.Auth.Header == "" {
			bad(".auth.header", "required for auth type header (e.g. X-Api-Key)")
		}
		secret(".auth.value_env", c.Auth.ValueEnv)
	default:
		bad(".auth.type", "%q: use bearer, basic or header", c.Auth.Type)
	}
	for i, s := range append(slices.Clone(c.RejectStatuses), c.RetryStatuses...) {
		if s < 100 || s > 599 {
			bad(".reject_statuses/retry_statuses", "entry %d: %d is not an HTTP status", i, s)
		}
	}
	for pat, op := range c.Operations {
		if _, err := path.Match(pat, ""); err != nil {
			bad(".operations."+pat, "bad pattern: %v", err)
		}
		if op != opCreate && op != opUpdate && op != opUpsert && op != opDelete {
			bad(".operations."+pat, "%q: use create, update, upsert or delete", op)
		}
	}
	headers := map[string]*tmpl{}
	for _, h := range sortedKeys(c.Headers) {
		t, err := compile(h, c.Headers[h], headerKind, scope{})
		if err != nil {
			bad(".headers."+h, "%v", err)
		}
		headers[h] = t
	}
	if len(c.Entities) == 0 {
		bad(".entities", "none configured: describe at least one entity (keyed by aggregate type) with create, update and delete")
	}
	entities := map[string]*entity{}
	for _, name := range sortedKeys(c.Entities) {
		e, eerrs := c.Entities[name].compile(name, fmt.Sprintf("%s.entities.%s", prefix, name))
		errs = append(errs, eerrs...)
		e.payload = payloadOf(e, headers)
		entities[name] = e
	}
	// Declared parents must be entities too.
	for _, name := range sortedKeys(c.Entities) {
		for _, p := range sortedKeys(c.Entities[name].Parents) {
			if _, ok := c.Entities[p]; !ok {
				bad(".entities."+name+".parents."+p, "not an entity of this connector (entities: %v)", sortedKeys(c.Entities))
			}
		}
	}
	return entities, headers, errors.Join(errs...)
}

func (e Entity) compile(name, prefix string) (*entity, []error) {
	var errs []error
	bad := func(field string, err error) {
		errs = append(errs, fmt.Errorf("%s%s: %v", prefix, field, err))
	}
	out := &entity{name: name, parents: map[string]*tmpl{}, ops: map[string][]step{}}
	idSrc := e.ID
	if idSrc == "" {
		idSrc = "{{.aggregate_id}}"
	}
	var err error
	if out.id, err = compile("id", idSrc, headerKind, scope{}); err != nil {
		bad(".id", err)
	}
	sc := scope{}
	for _, p := range sortedKeys(e.Parents) {
		sc.parents = append(sc.parents, p)
		t, err := compile("parents."+p, e.Parents[p], headerKind, scope{})
		if err != nil {
			bad(".parents."+p, err)
		}
		out.parents[p] = t
	}
	// .ids.X: what create steps map.
	for _, s := range e.Create {
		if s.Map != "" {
			sc.ids = append(sc.ids, s.Map)
		}
	}
	if e.Lookup != nil {
		if e.Lookup.ID == "" {
			bad(".lookup.id", errors.New("required: the JSON path of the partner id in the lookup's answer, e.g. $.data[0].id"))
		}
		c, cerrs := e.Lookup.compile(prefix+".lookup", http.MethodGet, sc)
		errs = append(errs, cerrs...)
		out.lookup = c
	}
	for _, op := range []struct {
		name, method string
		steps        Steps
	}{{opCreate, http.MethodPost, e.Create}, {opUpdate, http.MethodPut, e.Update}, {opDelete, http.MethodDelete, e.Delete}} {
		if len(op.steps) == 0 {
			errs = append(errs, fmt.Errorf("%s.%s: required: the request(s) that %s a %s at the partner", prefix, op.name, op.name, name))
			continue
		}
		ssc := sc
		ssc.steps = nil
		mapsEntity := false
		for i, s := range op.steps {
			if s.Name == "" {
				s.Name = fmt.Sprintf("step%d", i+1)
			}
			sp := fmt.Sprintf("%s.%s[%d]", prefix, op.name, i)
			if len(op.steps) == 1 {
				sp = fmt.Sprintf("%s.%s", prefix, op.name)
			}
			if slices.Contains(ssc.steps, s.Name) {
				errs = append(errs, fmt.Errorf("%s.name: %q is used twice", sp, s.Name))
			}
			c, cerrs := s.Call.compile(sp, op.method, ssc)
			errs = append(errs, cerrs...)
			st := step{call: *c, name: s.Name, maps: s.Map}
			if op.name == opCreate && s.Map == "" && s.ID != "" && !mapsEntity {
				st.maps, mapsEntity = name, true
			}
			if s.Map != "" && op.name != opCreate {
				errs = append(errs, fmt.Errorf("%s.map: only create steps record mappings", sp))
			}
			if s.Map != "" && s.ID == "" {
				errs = append(errs, fmt.Errorf("%s.map: needs id: the JSON path of the partner id to record", sp))
			}
			if s.Undo != nil {
				usc := ssc
				usc.steps = append(slices.Clone(ssc.steps), s.Name)
				st.undo, cerrs = s.Undo.compile(sp+".undo", http.MethodDelete, usc)
				errs = append(errs, cerrs...)
			}
			out.ops[op.name] = append(out.ops[op.name], st)
			ssc.steps = append(ssc.steps, s.Name)
		}
		if op.name == opCreate && !mapsEntity {
			errs = append(errs, fmt.Errorf("%s.create: no step has an id: give the JSON path of the partner id in the create's answer (id: $.id), or updates and deletes cannot find the object", prefix))
		}
	}
	return out, errs
}

func (c *Call) compile(prefix, defaultMethod string, sc scope) (*call, []error) {
	var errs []error
	out := &call{method: strings.ToUpper(c.Method), headers: map[string]*tmpl{}, idSrc: c.ID}
	if out.method == "" {
		out.method = defaultMethod
	}
	switch out.method {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
	default:
		errs = append(errs, fmt.Errorf("%s.method: %q: use GET, POST, PUT, PATCH or DELETE", prefix, c.Method))
	}
	var err error
	if c.Path == "" {
		errs = append(errs, fmt.Errorf("%s.path: required (e.g. /v1/items/{{.remote_id}})", prefix))
	} else if !strings.HasPrefix(c.Path, "/") {
		// base_url + ".attacker.example" or "@attacker.example" would
		// change the host the credentials go to.
		errs = append(errs, fmt.Errorf("%s.path: %q must start with \"/\" (it is appended to base_url)", prefix, c.Path))
	} else if hasDotSegment(c.Path) {
		errs = append(errs, fmt.Errorf("%s.path: %q has a \".\" or \"..\" segment: write the path the partner documents", prefix, c.Path))
	} else if out.path, err = compile("path", c.Path, pathKind, sc); err != nil {
		errs = append(errs, fmt.Errorf("%s.path: %v", prefix, err))
	}
	if c.Body != "" {
		if out.body, err = compile("body", c.Body, bodyKind, sc); err != nil {
			errs = append(errs, fmt.Errorf("%s.body: %v", prefix, err))
		}
	}
	for _, h := range sortedKeys(c.Headers) {
		t, err := compile(h, c.Headers[h], headerKind, sc)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.headers.%s: %v", prefix, h, err))
		}
		out.headers[h] = t
	}
	if c.ID != "" {
		if out.id, err = parseIDPath(c.ID); err != nil {
			errs = append(errs, fmt.Errorf("%s.id: %q is not a JSON path: %v", prefix, c.ID, err))
		}
	}
	return out, errs
}

// operation returns the operation for an event type, or "".
func (c *Config) operation(eventType string) string {
	ops := c.Operations
	if len(ops) == 0 {
		ops = defaultOperations
	}
	if op, ok := ops[eventType]; ok {
		return op
	}
	best, bestOp := "", ""
	for pat, op := range ops {
		if ok, _ := path.Match(pat, eventType); ok && (len(pat) > len(best) || len(pat) == len(best) && pat < best) {
			best, bestOp = pat, op
		}
	}
	return bestOp
}

// hasDotSegment reports whether a path template's own text has a "." or
// ".." segment.
func hasDotSegment(src string) bool {
	p, _, _ := strings.Cut(src, "?")
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// env is os.Getenv, replaced in tests.
var env = os.Getenv
