// Package crm is a Ferry connector for a small CRM's contacts API:
// customer.created creates a contact, customer.updated changes it,
// customer.deleted deletes it. It is the example of a connector written
// in Go (docs/connectors.md, "Writing a Go connector").
//
// The CRM's API (fakecrm serves it for the tests):
//
//	POST   /contacts        {"email", "name"} → 201 {"id"}; 422 when the email is invalid
//	PATCH  /contacts/{id}   {"email", "name"} → 200 | 404
//	DELETE /contacts/{id}   → 204 | 404
//	GET    /health          → 200
//
// Calls carry "Authorization: Bearer <key>" and an Idempotency-Key that
// the CRM uses to apply a repeated call once.
package crm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/sink"
)

// Config is the crm connector block's keys (beside type).
type Config struct {
	// URL is the CRM API's base URL, e.g. https://crm.example/api.
	URL string `yaml:"url"`
	// APIKeyEnv names the environment variable holding the API key.
	APIKeyEnv string `yaml:"api_key_env"`
	// Timeout bounds each call. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// New is the crm type's sink.Factory: it decodes and checks the block
// and builds the connector, reporting every problem at once.
func New(b *sink.Block) (connector.Connector, error) {
	var cfg Config
	if err := b.Decode(&cfg); err != nil {
		return nil, err
	}
	var errs []error
	if u, err := url.Parse(cfg.URL); cfg.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("%s.url: %q: give the CRM's http(s) base URL, e.g. https://crm.example/api", b.Path(), cfg.URL))
	}
	key := ""
	switch {
	case cfg.APIKeyEnv == "":
		errs = append(errs, fmt.Errorf("%s.api_key_env: required: name the environment variable holding the API key", b.Path()))
	case b.Getenv(cfg.APIKeyEnv) == "":
		errs = append(errs, fmt.Errorf("%s.api_key_env: environment variable %s is not set", b.Path(), cfg.APIKeyEnv))
	default:
		key = b.Getenv(cfg.APIKeyEnv)
	}
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("%s.timeout: %s: must not be negative (0 means 10s)", b.Path(), cfg.Timeout))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return NewConnector(cfg.URL, key, cfg.Timeout), nil
}

// Connector delivers customer events to the CRM. It is safe for
// concurrent use.
type Connector struct {
	base, key string
	client    *http.Client
}

// NewConnector returns a connector for the CRM at base (timeout 0 means
// 10s).
func NewConnector(base, key string, timeout time.Duration) *Connector {
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	return &Connector{base: base, key: key, client: &http.Client{Timeout: timeout}}
}

// entity is the mapping's entity type: our customer ↔ the CRM's contact.
const entity = "contact"

// Deliver implements connector.Connector.
func (c *Connector) Deliver(ctx context.Context, req connector.Request) (connector.Result, error) {
	ev := req.Event
	switch ev.EventType {
	case "customer.created":
		// The intent is recorded before the call; a retry finds it with the
		// same idempotency key, so the CRM creates the contact once.
		m, err := req.Mappings.Intend(ctx, entity, ev.AggregateID, req.IdempotencyKey)
		if err != nil {
			return connector.Result{}, err
		}
		if m.Active() { // created by an earlier delivery
			return connector.Result{RemoteID: m.RemoteID, Note: "already created"}, nil
		}
		var out struct {
			ID string `json:"id"`
		}
		calls, err := c.call(ctx, http.MethodPost, "/contacts", m.IdempotencyKey, ev.Payload, &out)
		if err != nil {
			return connector.Result{}, err
		}
		if out.ID == "" {
			return connector.Result{}, &connector.Failure{Reason: "the CRM's answer has no id", Calls: calls}
		}
		if err := req.Mappings.Activate(ctx, entity, ev.AggregateID, out.ID); err != nil {
			return connector.Result{}, err
		}
		return connector.Result{Calls: calls, RemoteID: out.ID}, nil
	case "customer.updated":
		m, err := req.Mappings.Get(ctx, entity, ev.AggregateID)
		if errors.Is(err, connector.ErrNoMapping) || (err == nil && !m.Active()) {
			return connector.Result{}, &connector.Waiting{EntityType: entity, LocalID: ev.AggregateID}
		}
		if err != nil {
			return connector.Result{}, err
		}
		calls, err := c.call(ctx, http.MethodPatch, "/contacts/"+url.PathEscape(m.RemoteID), req.IdempotencyKey, ev.Payload, nil)
		return connector.Result{Calls: calls, RemoteID: m.RemoteID}, err
	case "customer.deleted":
		m, err := req.Mappings.Get(ctx, entity, ev.AggregateID)
		if errors.Is(err, connector.ErrNoMapping) || (err == nil && m.State == "deleted") {
			return connector.Result{Note: "nothing mapped: delete is a no-op"}, nil
		}
		if err != nil {
			return connector.Result{}, err
		}
		if err := req.Mappings.MarkDeleting(ctx, entity, ev.AggregateID); err != nil {
			return connector.Result{}, err
		}
		calls, err := c.call(ctx, http.MethodDelete, "/contacts/"+url.PathEscape(m.RemoteID), req.IdempotencyKey, nil, nil)
		var rej *connector.Rejection
		if errors.As(err, &rej) && rej.Status == http.StatusNotFound {
			err = nil // already gone
		}
		if err != nil {
			return connector.Result{}, err
		}
		if _, err := req.Mappings.MarkDeleted(ctx, entity, ev.AggregateID); err != nil {
			return connector.Result{}, err
		}
		return connector.Result{Calls: calls, RemoteID: m.RemoteID}, nil
	}
	return connector.Result{}, &connector.Unhandled{Reason: "crm handles customer.created, customer.updated and customer.deleted, not " + ev.EventType}
}

// Probe implements connector.Prober: the sink's circuit breaker calls it
// while open.
func (c *Connector) Probe(ctx context.Context) error {
	_, err := c.call(ctx, http.MethodGet, "/health", "", nil, nil)
	return err
}

// call makes one CRM call and classifies its answer: 2xx succeeds (and
// decodes into out), 408, 429 and 5xx fail (retried, honouring
// Retry-After), any other status rejects the event.
func (c *Connector) call(ctx context.Context, method, path, idemKey string, body []byte, out any) ([]connector.Call, error) {
	call := connector.Call{Method: method, URL: c.base + path, RequestBody: string(body)}
	hreq, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, &connector.Rejection{Reason: "cannot build the request: " + err.Error()}
	}
	hreq.Header.Set("Authorization", "Bearer "+c.key) // never stored: Call has no headers
	hreq.Header.Set("Content-Type", "application/json")
	if idemKey != "" {
		hreq.Header.Set("Idempotency-Key", idemKey)
	}
	start := time.Now()
	resp, err := c.client.Do(hreq)
	call.Duration = time.Since(start)
	if err != nil {
		call.Error = err.Error()
		return []connector.Call{call}, &connector.Failure{Reason: "no answer from the CRM", Calls: []connector.Call{call}, Err: err}
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	call.Status, call.ResponseBody = resp.StatusCode, string(rb)
	calls := []connector.Call{call}
	switch s := resp.StatusCode; {
	case err != nil:
		return calls, &connector.Failure{Status: s, Reason: "answer cut off", Calls: calls, Err: err}
	case s >= 200 && s < 300:
		if out != nil {
			if err := json.Unmarshal(rb, out); err != nil {
				return calls, &connector.Failure{Status: s, Reason: "answer is not JSON", Calls: calls, Err: err}
			}
		}
		return calls, nil
	case s == 408 || s == 429 || s >= 500:
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After")) // absent or a date: no hint
		return calls, &connector.Failure{Status: s, Reason: string(rb), RetryAfter: time.Duration(secs) * time.Second, Calls: calls}
	default:
		return calls, &connector.Rejection{Status: s, Reason: string(rb), Calls: calls}
	}
}
