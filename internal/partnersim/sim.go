package partnersim

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Config sets the simulator's behaviour. The zero value is a fast,
// healthy partner.
type Config struct {
	// Latency is added to every /v1 request; Jitter adds up to that much
	// more, at random.
	Latency, Jitter time.Duration
	// ErrorRate is the fraction of /v1 requests answered 503 (0..1).
	ErrorRate float64
	// RateLimit is the requests per second allowed before answering 429;
	// 0 means unlimited.
	RateLimit float64
	// RetryAfter is sent with 429 and 503 answers. Default 1s.
	RetryAfter time.Duration
	// Seed makes the error draws repeatable.
	Seed uint64
	// Discard answers /v1 requests (201 with an id, after latency, rules
	// and faults) without storing objects, idempotency keys or the request
	// log: for throughput benchmarks, where the simulator must cost the
	// machine as little as possible.
	Discard bool
}

// Rule answers matching /v1 requests with a fixed status instead of
// serving them. Empty fields match anything.
type Rule struct {
	Tenant       string `json:"tenant,omitempty"`
	Entity       string `json:"entity,omitempty"`
	Method       string `json:"method,omitempty"`
	BodyContains string `json:"body_contains,omitempty"`
	Status       int    `json:"status"`
	Reason       string `json:"reason,omitempty"`
	// RetryAfterSeconds is sent as Retry-After when not zero.
	RetryAfterSeconds int `json:"retry_after_seconds,omitempty"`
	// Times limits how many requests the rule answers; 0 means forever.
	Times int `json:"times,omitempty"`
	// Stored keeps the answer under the request's Idempotency-Key, as a
	// real API keeps a validation error (Stripe, for one, replays a 4xx
	// for a repeated key): a request with that key gets it again, even
	// once the rule is gone.
	Stored bool `json:"stored,omitempty"`
}

// Request is one logged request.
type Request struct {
	Seq            int       `json:"seq"`
	Time           time.Time `json:"time"`
	Method         string    `json:"method"`
	Path           string    `json:"path"`
	Tenant         string    `json:"tenant"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	Body           string    `json:"body,omitempty"`
	Status         int       `json:"status"`
	// Replayed is true when the answer was replayed for a repeated
	// Idempotency-Key and nothing was applied.
	Replayed bool `json:"replayed,omitempty"`
}

// Object is a partner object.
type Object struct {
	ID         string         `json:"id"`
	Entity     string         `json:"entity"`
	Tenant     string         `json:"tenant"`
	ExternalID string         `json:"external_id,omitempty"`
	Fields     map[string]any `json:"fields"`
	Version    int            `json:"version"`
}

type stored struct {
	status int
	body   []byte
	rule   bool // a Stored rule's answer
}

// Server is the simulator.
type Server struct {
	cfg     Config
	limiter *rate.Limiter

	mu      sync.Mutex
	rng     *rand.Rand
	seq     int
	nextID  int
	objects map[string]map[string]*Object // entity → id → object
	idem    map[string]stored             // method path key → answer
	log     []Request
	rules   []*Rule
	outage  time.Time
}

// New returns a simulator.
func New(cfg Config) *Server {
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = time.Second
	}
	s := &Server{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 1)), objects: map[string]map[string]*Object{}, idem: map[string]stored{}}
	if cfg.RateLimit > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(cfg.RateLimit), max(1, int(cfg.RateLimit/10)))
	}
	return s
}

// AddRule installs a rule; rules are checked in the order added.
func (s *Server) AddRule(r Rule) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = append(s.rules, &r)
}

// ClearRules removes every rule.
func (s *Server) ClearRules() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = nil
}

// Outage answers 503 to everything, /healthz included, for d.
func (s *Server) Outage(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outage = time.Now().Add(d)
}

// Requests returns the request log, oldest first, optionally for one
// tenant.
func (s *Server) Requests(tenant string) []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Request
	for _, r := range s.log {
		if tenant == "" || r.Tenant == tenant {
			out = append(out, r)
		}
	}
	return out
}

// Objects returns the live objects of an entity type.
func (s *Server) Objects(entity string) []Object {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Object
	for _, o := range s.objects[entity] {
		out = append(out, *o)
	}
	return out
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/healthz":
		if s.inOutage() {
			http.Error(w, "outage", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	case strings.HasPrefix(r.URL.Path, "/_sim/"):
		s.control(w, r)
	case strings.HasPrefix(r.URL.Path, "/v1/"):
		s.api(w, r)
	default:
		http.NotFound(w, r)
	}
}

// report writes a plain-text summary: "applied N", then per tenant every
// request in arrival order with its status.
func (s *Server) report(w io.Writer) {
	reqs := s.Requests("")
	byTenant := map[string][]Request{}
	var tenants []string
	applied := 0
	for _, r := range reqs {
		if _, ok := byTenant[r.Tenant]; !ok {
			tenants = append(tenants, r.Tenant)
		}
		byTenant[r.Tenant] = append(byTenant[r.Tenant], r)
		if r.Status < 300 && !r.Replayed {
			applied++
		}
	}
	sort.Strings(tenants)
	fmt.Fprintf(w, "applied %d\n", applied)
	for _, t := range tenants {
		fmt.Fprintf(w, "-- tenant %s\n", t)
		for _, r := range byTenant[t] {
			note := "applied"
			switch {
			case r.Replayed:
				note = "replayed (idempotency key seen before: not applied again)"
			case r.Status >= 300:
				note = "refused"
			}
			var ev struct {
				EventType string          `json:"event_type"`
				Payload   json.RawMessage `json:"payload"`
			}
			_ = json.Unmarshal([]byte(r.Body), &ev) // a body that is not an event prints as it is
			what, body := ev.EventType, string(ev.Payload)
			if what == "" {
				what, body = r.Path, r.Body
			}
			fmt.Fprintf(w, "   #%-4d %s %-6s -> %d %-8s %-16s %s\n", r.Seq, r.Time.Format("15:04:05.000"), r.Method, r.Status, note, what, body)
		}
	}
}

func (s *Server) inOutage() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Before(s.outage)
}

func (s *Server) control(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/_sim/requests" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Requests(r.URL.Query().Get("tenant")))
	case r.URL.Path == "/_sim/report" && r.Method == http.MethodGet:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		s.report(w)
	case r.URL.Path == "/_sim/objects" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Objects(r.URL.Query().Get("entity")))
	case r.URL.Path == "/_sim/rules" && r.Method == http.MethodPost:
		var rule Rule
		if err := json.NewDecoder(r.Body).Decode(&rule); err != nil || rule.Status < 100 || rule.Status > 599 {
			http.Error(w, "body must be a rule with a status between 100 and 599", http.StatusBadRequest)
			return
		}
		s.AddRule(rule)
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == "/_sim/rules" && r.Method == http.MethodDelete:
		s.ClearRules()
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == "/_sim/outage" && r.Method == http.MethodPost:
		d, err := time.ParseDuration(r.URL.Query().Get("for"))
		if err != nil {
			http.Error(w, "for: a duration such as 5s", http.StatusBadRequest)
			return
		}
		s.Outage(d)
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	if d := s.delay(); d > 0 {
		time.Sleep(d) // simulated partner latency
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read body", http.StatusBadRequest)
		return
	}
	if s.cfg.Discard {
		s.discard(w, r)
		return
	}
	req := Request{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Tenant: r.Header.Get("X-Tenant-ID"),
		IdempotencyKey: r.Header.Get("Idempotency-Key"), Body: string(body)}
	status, resp, hdr, replayed := s.answer(r, req, body)
	req.Status, req.Replayed = status, replayed
	s.mu.Lock()
	s.seq++
	req.Seq = s.seq
	s.log = append(s.log, req)
	s.mu.Unlock()
	for k, v := range hdr {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(resp) // the client hanging up is its own problem
}

// discard answers without keeping anything (Config.Discard).
func (s *Server) discard(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body) // the body's content does not matter here
	req := Request{Method: r.Method, Tenant: r.Header.Get("X-Tenant-ID")}
	status, resp, hdr := http.StatusCreated, []byte(`{"id":"x"}`), map[string]string(nil)
	retry := map[string]string{"Retry-After": strconv.Itoa(max(1, int(s.cfg.RetryAfter.Seconds())))}
	s.mu.Lock()
	switch {
	case time.Now().Before(s.outage):
		status, resp, hdr = http.StatusServiceUnavailable, errBody("partner outage"), retry
	default:
		for _, rule := range s.rules {
			if rule.Tenant == "" || rule.Tenant == req.Tenant {
				status, resp = rule.Status, errBody(rule.Reason)
				break
			}
		}
	}
	s.mu.Unlock()
	for k, v := range hdr {
		w.Header().Set(k, v)
	}
	w.WriteHeader(status)
	_, _ = w.Write(resp) // the client hanging up is its own problem
}

func (s *Server) delay() time.Duration {
	d := s.cfg.Latency
	if s.cfg.Jitter > 0 {
		s.mu.Lock()
		d += time.Duration(s.rng.Int64N(int64(s.cfg.Jitter)))
		s.mu.Unlock()
	}
	return d
}

func errBody(msg string) []byte {
	b, _ := json.Marshal(map[string]string{"error": msg}) // a string map always marshals
	return b
}

// answer decides the response: faults first, then idempotent replay, then
// the operation itself.
func (s *Server) answer(r *http.Request, req Request, body []byte) (int, []byte, map[string]string, bool) {
	retry := map[string]string{"Retry-After": strconv.Itoa(max(1, int(s.cfg.RetryAfter.Seconds())))}
	if s.limiter != nil && !s.limiter.Allow() {
		return http.StatusTooManyRequests, errBody("rate limit exceeded"), retry, false
	}
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/v1/"), "/"), "/")
	entity, id := parts[0], ""
	if len(parts) > 1 {
		id = parts[1]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Now().Before(s.outage) {
		return http.StatusServiceUnavailable, errBody("partner outage"), retry, false
	}
	idemKey := ""
	if req.IdempotencyKey != "" && r.Method != http.MethodGet {
		idemKey = r.Method + " " + r.URL.Path + " " + req.IdempotencyKey
		if st, ok := s.idem[idemKey]; ok && st.rule {
			return st.status, st.body, nil, true
		}
	}
	for i, rule := range s.rules {
		if (rule.Tenant == "" || rule.Tenant == req.Tenant) && (rule.Entity == "" || rule.Entity == entity) &&
			(rule.Method == "" || rule.Method == r.Method) && (rule.BodyContains == "" || strings.Contains(string(body), rule.BodyContains)) {
			if rule.Times > 0 {
				if rule.Times--; rule.Times == 0 {
					s.rules = append(s.rules[:i:i], s.rules[i+1:]...)
				}
			}
			var hdr map[string]string
			if rule.RetryAfterSeconds > 0 {
				hdr = map[string]string{"Retry-After": strconv.Itoa(rule.RetryAfterSeconds)}
			}
			if rule.Stored && idemKey != "" {
				s.idem[idemKey] = stored{status: rule.Status, body: errBody(rule.Reason), rule: true}
			}
			return rule.Status, errBody(rule.Reason), hdr, false
		}
	}
	if s.cfg.ErrorRate > 0 && s.rng.Float64() < s.cfg.ErrorRate {
		return http.StatusServiceUnavailable, errBody("random failure"), retry, false
	}
	if st, ok := s.idem[idemKey]; ok && idemKey != "" {
		return st.status, st.body, nil, true
	}
	status, resp := s.apply(r.Method, entity, id, req.Tenant, r.URL.Query().Get("external_id"), body)
	if idemKey != "" && status < 500 {
		s.idem[idemKey] = stored{status: status, body: resp}
	}
	return status, resp, nil, false
}

// apply performs the operation; s.mu is held.
func (s *Server) apply(method, entity, id, tenant, externalID string, body []byte) (int, []byte) {
	objs := s.objects[entity]
	if objs == nil {
		objs = map[string]*Object{}
		s.objects[entity] = objs
	}
	var fields map[string]any
	if method == http.MethodPost || method == http.MethodPut {
		if err := json.Unmarshal(body, &fields); err != nil {
			return http.StatusBadRequest, errBody("body is not a JSON object: " + err.Error())
		}
	}
	switch {
	case method == http.MethodPost && id == "":
		s.nextID++
		o := &Object{ID: fmt.Sprintf("%s_%d", entity, s.nextID), Entity: entity, Tenant: tenant, Fields: fields, Version: 1}
		if ext, ok := fields["external_id"].(string); ok {
			o.ExternalID = ext
		}
		objs[o.ID] = o
		return http.StatusCreated, mustJSON(o)
	case method == http.MethodGet && id == "":
		var out []*Object
		for _, o := range objs {
			if o.ExternalID != "" && o.ExternalID == externalID && o.Tenant == tenant {
				out = append(out, o)
			}
		}
		return http.StatusOK, mustJSON(map[string]any{"data": out})
	case id == "":
		return http.StatusMethodNotAllowed, errBody("method not allowed")
	}
	o, ok := objs[id]
	if !ok || o.Tenant != tenant {
		return http.StatusNotFound, errBody(entity + " " + id + " not found")
	}
	switch method {
	case http.MethodGet:
		return http.StatusOK, mustJSON(o)
	case http.MethodPut:
		o.Fields = fields
		o.Version++
		return http.StatusOK, mustJSON(o)
	case http.MethodDelete:
		delete(objs, id)
		return http.StatusNoContent, nil
	}
	return http.StatusMethodNotAllowed, errBody("method not allowed")
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only our own types, which always marshal
	}
	return b
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client hanging up is its own problem
}

// ObjectCount returns the number of live objects of every entity type.
func (s *Server) ObjectCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, objs := range s.objects {
		n += len(objs)
	}
	return n
}
