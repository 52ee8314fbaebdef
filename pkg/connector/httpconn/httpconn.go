package httpconn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-cdc/ferry/internal/safe"
	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/connector/webhook"
)

// Connector is a declarative HTTP connector. It is safe for concurrent
// use.
type Connector struct {
	cfg      Config
	base     string
	entities map[string]*entity
	headers  map[string]*tmpl
	auth     func(*http.Request)
	client   *http.Client
	origin   *url.URL // base_url parsed: every call goes to its scheme, host and port

	// ops caches Config.operation by event type (matching the patterns
	// takes a few µs, twice per create); about maxCachedOps types at
	// most (calls racing to add one may each add it).
	ops  sync.Map // event type → operation
	nops atomic.Int64
}

// maxCachedOps bounds Connector.ops: event types come from the outbox,
// and a writer may invent them.
const maxCachedOps = 4096

// sameOrigin checks that a call's URL goes where base_url does: same
// scheme, host and port, no userinfo, under base_url's path. Paths start
// with "/" and values are escaped, so only a raw value could break this.
func (c *Connector) sameOrigin(u *url.URL) error {
	switch {
	case u.Scheme != c.origin.Scheme || u.Host != c.origin.Host || u.User != nil:
		return fmt.Errorf("the rendered URL goes to %s://%s, not to base_url's %s://%s", u.Scheme, u.Host, c.origin.Scheme, c.origin.Host)
	case !strings.HasPrefix(u.Path, c.origin.Path):
		return fmt.Errorf("the rendered URL's path leaves base_url's %s", c.origin.Path)
	}
	return nil
}

// New checks cfg (every problem at once, each with its field path under
// prefix, e.g. "integrations[1].connector") and returns the connector.
// Secrets are read from the environment now.
func New(cfg Config, prefix string) (*Connector, error) {
	return newWithEnv(cfg, prefix, env)
}

func newWithEnv(cfg Config, prefix string, getenv func(string) string) (*Connector, error) {
	entities, headers, err := cfg.compile(prefix, getenv)
	if err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	c := &Connector{cfg: cfg, base: strings.TrimRight(cfg.BaseURL, "/"), entities: entities, headers: headers}
	if c.origin, err = url.Parse(c.base); err != nil {
		return nil, fmt.Errorf("%s.base_url: %w", prefix, err) // checked by compile
	}
	c.origin.Host = strings.TrimSuffix(c.origin.Host, ":") // as http.NewRequest leaves a request's
	switch a := cfg.Auth; a.Type {
	case "bearer":
		tok := getenv(a.TokenEnv)
		c.auth = func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	case "basic":
		u, p := getenv(a.UsernameEnv), getenv(a.PasswordEnv)
		c.auth = func(r *http.Request) { r.SetBasicAuth(u, p) }
	case "header":
		v := getenv(a.ValueEnv)
		c.auth = func(r *http.Request) { r.Header.Set(a.Header, v) }
	default:
		c.auth = func(*http.Request) {}
	}
	c.client = webhook.Client(cfg.Timeout)
	return c, nil
}

// delivery is one Deliver or Undo in progress.
type delivery struct {
	c     *Connector
	req   connector.Request
	e     *entity
	data  map[string]any
	steps map[string]any // .steps
	calls []connector.Call
	// delivered is set once a Deliver took this delivery over from
	// Intent (fromIntent).
	delivered bool
}

// Deliver implements connector.Connector.
func (c *Connector) Deliver(ctx context.Context, req connector.Request) (connector.Result, error) {
	d, ok := fromIntent(req)
	if !ok {
		var err error
		if d, err = c.start(req); err != nil {
			return connector.Result{}, err
		}
	}
	res, err := d.run(ctx)
	res.Calls = d.calls
	return res, err
}

// fromIntent is the delivery Intent started for req's attempt
// (req.IntentState), for its Deliver alone, once.
func fromIntent(req connector.Request) (*delivery, bool) {
	d, ok := req.IntentState.(*delivery)
	if !ok || d.delivered || d.req.Event.ID != req.Event.ID {
		return nil, false
	}
	d.delivered = true
	d.req = req // the claimed attempt's: steps, key, checkpoint
	d.data["idempotency_key"] = req.IdempotencyKey
	return d, true
}

// start finds the entity and builds the template data.
func (c *Connector) start(req connector.Request) (*delivery, error) {
	ev := req.Event
	e, ok := c.entities[ev.AggregateType]
	if !ok {
		return nil, &connector.Unhandled{Reason: fmt.Sprintf("no entity %q in this connector's configuration (aggregate type of event type %s); configured: %v",
			ev.AggregateType, ev.EventType, sortedKeys(c.entities))}
	}
	payload, err := e.payload.decode(ev.Payload)
	if err != nil {
		return nil, &connector.Rejection{Reason: "payload is not JSON: " + err.Error()}
	}
	headers := make(map[string]any, len(ev.Headers))
	for k, v := range ev.Headers {
		headers[k] = v
	}
	d := &delivery{c: c, req: req, e: e, steps: map[string]any{}}
	d.data = map[string]any{
		"event_id": ev.ID, "tenant_id": ev.TenantID, "event_type": ev.EventType, "aggregate_type": ev.AggregateType,
		"aggregate_id": ev.AggregateID, "payload": payload, "headers": headers, "remote_id": "",
		"ids": map[string]any{}, "parents": map[string]any{}, "steps": d.steps, "idempotency_key": req.IdempotencyKey,
		"cloudevent": cloudEventOf(ev), "local_id": "", // set below; listed so that the map is made big enough for it
	}
	local, err := render(e.id, d.data)
	if err != nil || local == "" {
		return nil, &connector.Rejection{Reason: fmt.Sprintf("cannot tell our id of the %s: %v (entity id template)", e.name, orEmpty(err))}
	}
	d.data["local_id"] = local
	return d, nil
}

func orEmpty(err error) string {
	if err == nil {
		return "it is empty"
	}
	return err.Error()
}

// cacher is a Mappings whose Get may be served from a cache (the sink's,
// pkg/mapping): Cached answers from the cache alone, and reports false
// when it holds nothing for the object.
type cacher interface {
	Cached(entityType, localID string) (connector.Mapping, bool)
}

func (d *delivery) run(ctx context.Context) (connector.Result, error) {
	if d.req.Mappings == nil {
		return connector.Result{}, &connector.Rejection{Reason: "the http connector needs the sink's mapping store"}
	}
	op := d.c.operation(d.req)
	if op == "" {
		return connector.Result{}, &connector.Unhandled{Reason: fmt.Sprintf("event type %s maps to no operation: add it to the connector's operations (create, update, upsert or delete)", d.req.Event.EventType)}
	}
	// Parents first: a child whose parent is not at the partner yet waits.
	if op != opDelete {
		parents := d.data["parents"].(map[string]any)
		for _, p := range sortedKeys(d.e.parents) {
			pid, err := render(d.e.parents[p], d.data)
			if err != nil || pid == "" {
				return connector.Result{}, &connector.Rejection{Reason: fmt.Sprintf("cannot tell the %s parent's id: %v", p, orEmpty(err))}
			}
			// Another lane (or process) writes the parent: never a cached id.
			m, err := d.req.Mappings.Fresh(ctx, p, pid)
			if err != nil && !errors.Is(err, connector.ErrNoMapping) {
				return connector.Result{}, &connector.Failure{Reason: "mapping store", Err: err}
			}
			if !m.Active() {
				return connector.Result{}, &connector.Waiting{EntityType: p, LocalID: pid}
			}
			parents[p] = m.RemoteID
		}
	}
	local := d.data["local_id"].(string)
	intentKey := d.intentKey()
	var m connector.Mapping
	var err error
	intended := false
	if c, ok := intendsFirst(d.req, op, d.e); ok {
		// A create: the intent is written whatever the mapping holds
		// (below), unless it is active, and Intend answers with the
		// mapping as it stands. So a create that finds nothing in the
		// cache skips the read and writes the intent at once: one
		// statement instead of two (sinkbench -only mapped).
		var hit bool
		if m, hit = c.Cached(d.e.name, local); !hit {
			m, err = d.req.Mappings.Intend(ctx, d.e.name, local, intentKey)
			intended = true
		}
	} else {
		m, err = d.req.Mappings.Get(ctx, d.e.name, local)
	}
	if err != nil && !errors.Is(err, connector.ErrNoMapping) {
		return connector.Result{}, &connector.Failure{Reason: "mapping store", Err: err}
	}
	d.data["remote_id"] = m.RemoteID
	if err := d.loadIDs(ctx, local); err != nil {
		return connector.Result{}, err
	}
	done := map[string]connector.Step{}
	for _, s := range d.req.Steps {
		done[s.Name] = s
	}
	deleting := m.State == "deleting" && m.RemoteID != "" // an earlier delete did not finish
	switch {
	case op == opDelete && deleting:
	case op == opDelete && !m.Active() && m.State != "creating":
		return connector.Result{Note: fmt.Sprintf("nothing mapped for %s %s: delete is a no-op", d.e.name, local)}, nil
	case op == opDelete && !m.Active():
		// An intent whose create may have reached the partner.
		id, err := d.lookup(ctx)
		if err != nil {
			return connector.Result{}, err
		}
		if id == "" {
			if _, err := d.req.Mappings.MarkDeleted(ctx, d.e.name, local); err != nil {
				return connector.Result{}, &connector.Failure{Reason: "mapping store", Err: err}
			}
			return connector.Result{Note: fmt.Sprintf("%s %s was never created at the partner: delete is a no-op", d.e.name, local)}, nil
		}
		d.data["remote_id"] = id
	case (op == opCreate || op == opUpsert) && m.Active() && len(done) == 0 && m.IdempotencyKey == intentKey:
		// This event's own create reached the partner and its mapping was
		// written, but the attempt did not finish (a crash, a lost
		// commit): the active mapping under this event's intent key is
		// the record of the create step (runSteps records no step
		// besides it when the create is the only step).
		op = opCreate
		first := d.e.ops[opCreate][0].name
		done[first] = connector.Step{Name: first, RemoteID: m.RemoteID, Created: true}
	case (op == opCreate || op == opUpsert) && m.Active() && len(done) == 0:
		op = opUpdate // already at the partner (a resync, or a second create)
	case op == opUpdate && !m.Active() && len(done) == 0:
		if d.c.cfg.NoUpsert {
			return connector.Result{}, &connector.Rejection{Reason: fmt.Sprintf("update of %s %s, which has no mapping (never created at the partner) and no_upsert is set", d.e.name, local)}
		}
		op = opCreate
	case op == opUpsert:
		op = opCreate
	}
	if op == opCreate && len(done) == 0 && !m.Active() {
		// The intent comes before the partner call, so a crash after the
		// partner's answer is recovered, not created twice.
		im := m
		if !intended {
			if im, err = d.req.Mappings.Intend(ctx, d.e.name, local, intentKey); err != nil {
				return connector.Result{}, &connector.Failure{Reason: "mapping store", Err: err}
			}
		}
		if im.IdempotencyKey != intentKey && d.e.lookup != nil {
			// An earlier event's create may have reached the partner.
			id, err := d.lookup(ctx)
			if err != nil {
				return connector.Result{}, err
			}
			if id != "" {
				// Found: the create step is done; the remaining create
				// steps (a price after its item) still run.
				first := d.e.ops[opCreate][0].name
				done[first] = connector.Step{Name: first, RemoteID: id, Created: true}
				d.data["remote_id"] = id
			}
		}
		d.data["idempotency_key"] = im.IdempotencyKey
	}
	if op == opDelete {
		if err := d.markDeleting(ctx); err != nil {
			return connector.Result{}, err
		}
	}
	return d.runSteps(ctx, op, done)
}

// operation is what req asks of the partner: create, update, upsert or
// delete; "" when its event type maps to none.
func (c *Connector) operation(req connector.Request) string {
	var op string
	if v, ok := c.ops.Load(req.Event.EventType); ok {
		op = v.(string)
	} else {
		op = c.cfg.operation(req.Event.EventType)
		if c.nops.Load() < maxCachedOps {
			if _, had := c.ops.LoadOrStore(req.Event.EventType, op); !had {
				c.nops.Add(1)
			}
		}
	}
	switch {
	case req.Delete:
		return opDelete
	case req.Resync && op != opDelete && op != "":
		return opUpsert
	}
	return op
}

// intentKey is the idempotency key of the entity's first create step,
// the one its intent records; "" when the entity has no create.
func (d *delivery) intentKey() string {
	if creates := d.e.ops[opCreate]; len(creates) > 0 {
		return d.req.IdempotencyKey + ":" + creates[0].name
	}
	return ""
}

// intendsFirst reports whether run writes e's intent before it reads
// the mapping (unless the cache holds it): a create's first attempt of
// an entity that has a create, with a store that caches.
func intendsFirst(req connector.Request, op string, e *entity) (cacher, bool) {
	c, ok := req.Mappings.(cacher)
	return c, ok && op == opCreate && len(req.Steps) == 0 && len(e.ops[opCreate]) > 0
}

// Intent names the intent a create writes first (connector.Intender):
// run's create of an entity with no parents (a child checks its parents
// first, and may wait instead) whose object the cache does not hold.
func (c *Connector) Intent(req connector.Request) (connector.Intent, bool) {
	e, ok := c.entities[req.Event.AggregateType]
	if !ok || len(e.parents) > 0 {
		return connector.Intent{}, false
	}
	m, ok := intendsFirst(req, c.operation(req), e)
	if !ok {
		return connector.Intent{}, false
	}
	d, err := c.start(req)
	if err != nil {
		return connector.Intent{}, false
	}
	local := d.data["local_id"].(string)
	if _, hit := m.Cached(e.name, local); hit {
		return connector.Intent{}, false
	}
	return connector.Intent{EntityType: e.name, LocalID: local, IdempotencyKey: d.intentKey(), State: d}, true
}

// loadIDs fills .ids with the mappings create steps record.
func (d *delivery) loadIDs(ctx context.Context, local string) error {
	ids := d.data["ids"].(map[string]any)
	for _, s := range d.e.ops[opCreate] {
		if s.maps == "" || s.maps == d.e.name {
			continue
		}
		m, err := d.req.Mappings.Get(ctx, s.maps, local)
		if err != nil && !errors.Is(err, connector.ErrNoMapping) {
			return &connector.Failure{Reason: "mapping store", Err: err}
		}
		ids[s.maps] = m.RemoteID
	}
	return nil
}

// runSteps runs op's steps, skipping those done in earlier attempts.
func (d *delivery) runSteps(ctx context.Context, op string, done map[string]connector.Step) (connector.Result, error) {
	var completed []connector.Step
	local := d.data["local_id"].(string)
	for i, s := range d.e.ops[op] {
		key := d.req.IdempotencyKey + ":" + s.name
		if i == 0 && op == opCreate {
			key = d.data["idempotency_key"].(string)
		}
		later := i < len(d.e.ops[op])-1 // only later steps' templates read .steps
		if prev, ok := done[s.name]; ok {
			if later {
				d.steps[s.name] = stepData(prev)
			}
			completed = append(completed, prev)
			if prev.RemoteID != "" && s.maps != "" {
				// The mapping may not have been written before a crash.
				if err := d.activate(ctx, s.maps, local, prev.RemoteID); err != nil {
					return connector.Result{}, err
				}
			}
			continue
		}
		resp, err := d.do(ctx, s.call, key, op == opDelete)
		if err != nil {
			// Typed errors stay unwrapped (callers type-assert them); the
			// step is named in the reason.
			var rej *connector.Rejection
			var fail *connector.Failure
			switch {
			case errors.As(err, &rej):
				rej.Steps, rej.Reason = completed, fmt.Sprintf("%s step %q: %s", op, s.name, rej.Reason)
			case errors.As(err, &fail):
				fail.Reason = fmt.Sprintf("%s step %q: %s", op, s.name, fail.Reason)
			}
			return connector.Result{}, err
		}
		st := connector.Step{Name: s.name, Response: bounded(resp), Created: op == opCreate && s.maps == d.e.name}
		if s.id != nil {
			if st.RemoteID, err = extractID(s.id, resp); err != nil {
				return connector.Result{}, &connector.Failure{Reason: fmt.Sprintf("%s step %q: the answer has no partner id at %s: %v", op, s.name, s.idSrc, err),
					Calls: d.calls}
			}
		}
		if later {
			d.steps[s.name] = stepData(st)
		}
		completed = append(completed, st)
		// Recorded before the mapping: a crash in between resumes here and
		// writes the mapping from the recorded step. The last step needs
		// no record of its own when it maps nothing (the outcome that
		// follows records the delivery; a retry before it sends the call
		// again under the same idempotency key, as after a crash before
		// any record) or when it is the create whose intent the mapping
		// holds (an active mapping under this event's intent key is the
		// record: run; the sink commits it with the outcome). A statement
		// less per delivery.
		if d.req.Checkpoint != nil && !d.recordedByFinish(op, i, s) {
			if err := d.req.Checkpoint(ctx, st); err != nil {
				return connector.Result{}, &connector.Failure{Reason: "delivery log: record step " + s.name, Err: err}
			}
		}
		if st.RemoteID != "" && s.maps != "" {
			if err := d.activate(ctx, s.maps, local, st.RemoteID); err != nil {
				return connector.Result{}, err
			}
			if s.maps == d.e.name {
				d.data["remote_id"] = st.RemoteID
			} else {
				d.data["ids"].(map[string]any)[s.maps] = st.RemoteID
			}
		}
	}
	if op == opDelete {
		if err := d.markDeleted(ctx); err != nil {
			return connector.Result{}, err
		}
	}
	return d.result(), nil
}

// recordedByFinish reports whether step i of op, when done, needs no
// checkpoint: it is the last step, and what it did is recorded by the
// delivery's Finish (its call) or by the mapping it activates (the
// entity's own create, under the intent written before the call).
func (d *delivery) recordedByFinish(op string, i int, s step) bool {
	if i != len(d.e.ops[op])-1 {
		return false
	}
	return s.maps == "" || (op == opCreate && i == 0 && s.maps == d.e.name)
}

// result names the partner ids the delivery knows, for the outcome.
func (d *delivery) result() connector.Result {
	res := connector.Result{}
	res.RemoteID, _ = d.data["remote_id"].(string)
	for name, v := range d.data["ids"].(map[string]any) {
		if id, _ := v.(string); id != "" {
			if res.RemoteIDs == nil {
				res.RemoteIDs = map[string]string{}
			}
			res.RemoteIDs[name] = id
		}
	}
	return res
}

func (d *delivery) activate(ctx context.Context, entityType, local, remote string) error {
	if err := d.req.Mappings.Activate(ctx, entityType, local, remote); err != nil {
		return &connector.Failure{Reason: "mapping store: record the partner id", Err: err}
	}
	return nil
}

// markDeleting marks the entity's mappings (and those its create steps
// recorded) deleting, before the delete calls.
func (d *delivery) markDeleting(ctx context.Context) error {
	local := d.data["local_id"].(string)
	for _, t := range d.mappedTypes() {
		if err := d.req.Mappings.MarkDeleting(ctx, t, local); err != nil {
			return &connector.Failure{Reason: "mapping store", Err: err}
		}
	}
	return nil
}

func (d *delivery) mappedTypes() []string {
	types := []string{d.e.name}
	for _, s := range d.e.ops[opCreate] {
		if s.maps != "" && !slices.Contains(types, s.maps) {
			types = append(types, s.maps)
		}
	}
	return types
}

// markDeleted marks the entity's mappings (and those its create steps
// recorded) deleted.
func (d *delivery) markDeleted(ctx context.Context) error {
	local := d.data["local_id"].(string)
	for _, t := range d.mappedTypes() {
		if _, err := d.req.Mappings.MarkDeleted(ctx, t, local); err != nil {
			return &connector.Failure{Reason: "mapping store", Err: err}
		}
	}
	return nil
}

func stepData(s connector.Step) map[string]any {
	resp, err := decodeJSON([]byte(s.Response))
	if err != nil {
		resp = s.Response
	}
	return map[string]any{"id": s.RemoteID, "response": resp}
}

// lookup asks the partner for the object by our id; "" when not found or
// no lookup is configured.
func (d *delivery) lookup(ctx context.Context) (string, error) {
	if d.e.lookup == nil {
		return "", nil
	}
	resp, err := d.do(ctx, *d.e.lookup, "", true)
	if err != nil {
		return "", fmt.Errorf("lookup: %w", err)
	}
	if resp == nil {
		return "", nil
	}
	id, err := extractID(d.e.lookup.id, resp)
	if err != nil {
		return "", nil // no match: not at the partner
	}
	return id, nil
}

// Undo implements connector.Undoer: it runs the undo request of each
// completed step, the last first, and marks the mappings they created
// deleted. It returns connector.ErrNothingToUndo when no step has one.
func (c *Connector) Undo(ctx context.Context, req connector.Request, steps []connector.Step) ([]connector.Call, error) {
	d, err := c.start(req)
	if err != nil {
		return nil, err
	}
	byName := map[string]step{}
	for _, op := range []string{opCreate, opUpdate, opDelete} {
		for _, s := range d.e.ops[op] {
			if _, ok := byName[s.name]; !ok {
				byName[s.name] = s
			}
		}
	}
	undoable := false
	for _, s := range steps {
		d.steps[s.Name] = stepData(s)
		if byName[s.Name].undo != nil {
			undoable = true
		}
	}
	if !undoable {
		return nil, connector.ErrNothingToUndo
	}
	local := d.data["local_id"].(string)
	for i := len(steps) - 1; i >= 0; i-- {
		s := steps[i]
		cfg := byName[s.Name]
		if cfg.undo == nil {
			continue
		}
		if _, err := d.do(ctx, *cfg.undo, req.IdempotencyKey+":undo:"+s.Name, true); err != nil {
			return d.calls, fmt.Errorf("undo step %q: %w", s.Name, err)
		}
		if cfg.maps != "" {
			if _, err := req.Mappings.MarkDeleted(ctx, cfg.maps, local); err != nil {
				return d.calls, &connector.Failure{Reason: "mapping store", Err: err}
			}
		}
	}
	return d.calls, nil
}

// Probe implements connector.Prober.
func (c *Connector) Probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+c.cfg.HealthPath, nil)
	if err != nil {
		return errors.New("cannot build the probe request")
	}
	c.auth(req)
	resp, err := c.client.Do(req)
	if err != nil {
		return webhook.TransportError(err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("partner answers %d", resp.StatusCode)
	}
	return nil
}

// do renders and makes one call. A 404/410 answer is success (nil body)
// when missingOK (deletes, undos and lookups: the object is not there).
func (d *delivery) do(ctx context.Context, c call, idemKey string, missingOK bool) ([]byte, error) {
	path, err := renderPath(c.path, d.data)
	if err != nil {
		return nil, &connector.Rejection{Reason: "cannot build the request path (bad input): " + err.Error(), Calls: d.calls}
	}
	var body string
	if c.body != nil {
		if body, err = render(c.body, d.data); err != nil {
			return nil, &connector.Rejection{Reason: "cannot build the request body: " + err.Error(), Calls: d.calls}
		}
		if !json.Valid([]byte(body)) {
			return nil, &connector.Rejection{Reason: "the rendered body is not JSON (check the body template): " + bounded([]byte(body)), Calls: d.calls}
		}
	}
	var rdr io.Reader
	if body != "" {
		rdr = strings.NewReader(body)
	}
	hreq, err := http.NewRequestWithContext(ctx, c.method, d.c.base+path, rdr)
	if err != nil {
		return nil, &connector.Rejection{Reason: "cannot build the request (bad input): " + safe.Text(err.Error()), Calls: d.calls}
	}
	if err := d.c.sameOrigin(hreq.URL); err != nil {
		return nil, &connector.Rejection{Reason: "cannot build the request (bad input): " + err.Error(), Calls: d.calls}
	}
	if body != "" {
		hreq.Header.Set("Content-Type", "application/json")
	}
	hreq.Header.Set("Accept", "application/json")
	if idemKey != "" {
		hreq.Header.Set("Idempotency-Key", idemKey)
	}
	hreq.Header.Set("X-Tenant-ID", d.req.Event.TenantID)
	for _, hs := range []map[string]*tmpl{d.c.headers, c.headers} {
		for name, t := range hs {
			v, err := render(t, d.data)
			if err != nil {
				return nil, &connector.Rejection{Reason: "cannot build header " + name + ": " + err.Error(), Calls: d.calls}
			}
			hreq.Header.Set(name, v)
		}
	}
	d.c.auth(hreq)
	if err := webhook.CheckHeaders(hreq.Header); err != nil {
		return nil, &connector.Rejection{Reason: "cannot build the request (bad input): " + err.Error(), Calls: d.calls}
	}
	rec := connector.Call{Method: c.method, URL: safe.URLOf(hreq.URL), RequestBody: body}
	start := time.Now()
	resp, err := d.c.client.Do(hreq)
	rec.Duration = time.Since(start)
	if err != nil {
		err = webhook.TransportError(err)
		rec.Error = err.Error()
		d.calls = append(d.calls, rec)
		return nil, &connector.Failure{Reason: "no answer from partner", Calls: d.calls, Err: err}
	}
	defer resp.Body.Close()
	rb, readErr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	rec.Status, rec.ResponseBody = resp.StatusCode, bounded(rb)
	d.calls = append(d.calls, rec)
	s := resp.StatusCode
	switch {
	case readErr != nil:
		return nil, &connector.Failure{Status: s, Reason: "response cut off", Calls: d.calls, Err: readErr}
	case d.retries(s):
		return nil, &connector.Failure{Status: s, Reason: bounded(rb), Calls: d.calls,
			RetryAfter: webhook.RetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	case s >= 200 && s < 300:
		return rb, nil
	case missingOK && (s == http.StatusNotFound || s == http.StatusGone):
		return nil, nil
	case d.rejects(s):
		return nil, &connector.Rejection{Status: s, Reason: bounded(rb), Calls: d.calls}
	case s >= 300 && s < 400:
		return nil, &connector.Failure{Status: s, Reason: webhook.Redirect(s, resp.Header.Get("Location")), Calls: d.calls}
	default:
		return nil, &connector.Failure{Status: s, Reason: "unexpected answer: " + bounded(rb), Calls: d.calls}
	}
}

func (d *delivery) retries(s int) bool {
	if len(d.c.cfg.RetryStatuses) > 0 {
		return slices.Contains(d.c.cfg.RetryStatuses, s)
	}
	return s == 408 || s == 425 || s == 429 || s >= 500
}

func (d *delivery) rejects(s int) bool {
	if len(d.c.cfg.RejectStatuses) > 0 {
		return slices.Contains(d.c.cfg.RejectStatuses, s)
	}
	return s >= 400 && s < 500
}

// decodeJSON decodes b keeping numbers as they were written (json.Number),
// so ids and amounts keep their digits.
func decodeJSON(b []byte) (any, error) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	err := dec.Decode(&v)
	return v, err
}

// maxBody bounds bodies kept for steps and reasons.
const maxBody = 4096

func bounded(b []byte) string {
	if len(b) > maxBody {
		return string(b[:maxBody]) + "…(truncated)"
	}
	return string(b)
}

// Handles reports whether entityType is one of the connector's entities
// (mapping types recorded by a step's map: are not: they are deleted with
// their entity).
func (c *Connector) Handles(entityType string) bool {
	_, ok := c.entities[entityType]
	return ok
}

// cloudEventOf is what templates see as .cloudevent: the envelope's
// attributes, or an empty map for an event that came without one.
func cloudEventOf(ev connector.Event) map[string]any {
	if ev.CloudEvent == nil {
		return map[string]any{}
	}
	return ev.CloudEvent
}
