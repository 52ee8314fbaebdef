// Package webhook is the simplest connector: it POSTs each event as JSON
// to one URL, with Idempotency-Key, X-Tenant-ID and X-Event-Type headers,
// signed the Standard Webhooks way when given secrets (see Signer).
// 2xx is success; 408, 425, 429, 5xx and network errors are failures
// (retried, honouring Retry-After); any other status is a rejection.
// It is safe for concurrent use.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

// Config configures a webhook connector.
type Config struct {
	// URL receives the POSTs.
	URL string `yaml:"url"`
	// Timeout bounds each call. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// SigningSecrets, when set, sign every request the Standard Webhooks
	// way (see Signer): one signature per secret, for rotation. Read them
	// from the environment, never from a file.
	SigningSecrets []string `yaml:"-"`
}

// Connector is a webhook connector.
type Connector struct {
	cfg    Config
	client *http.Client
	signer *Signer // nil: requests are not signed
}

// New returns a connector; cfg.URL must be an http(s) URL.
func New(cfg Config) (*Connector, error) {
	if cfg.URL == "" {
		return nil, errors.New("webhook: url is required (e.g. https://partner.example/hooks/ferry)")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	c := &Connector{cfg: cfg, client: Client(cfg.Timeout)}
	if len(cfg.SigningSecrets) > 0 {
		s, err := NewSigner(cfg.SigningSecrets)
		if err != nil {
			return nil, fmt.Errorf("webhook: %w", err)
		}
		c.signer = s
	}
	return c, nil
}

// Client is the HTTP client connectors use for one partner, with a
// per-call timeout. The default transport keeps 2 idle connections per
// host: with many lanes calling one partner, every other call would open
// a new TCP connection; this one keeps up to 1024.
func Client(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1024, 1024
	return &http.Client{Timeout: timeout, Transport: tr}
}

// Deliver implements connector.Connector.
func (c *Connector) Deliver(ctx context.Context, req connector.Request) (connector.Result, error) {
	body, err := json.Marshal(req.Event)
	if err != nil {
		return connector.Result{}, &connector.Rejection{Reason: "event does not encode as JSON: " + err.Error()}
	}
	call := connector.Call{Method: http.MethodPost, URL: c.cfg.URL, RequestBody: string(body)}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return connector.Result{}, &connector.Rejection{Reason: "bad request: " + err.Error()}
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Idempotency-Key", req.IdempotencyKey)
	hreq.Header.Set("X-Tenant-ID", req.Event.TenantID)
	hreq.Header.Set("X-Event-Type", req.Event.EventType)
	start := time.Now()
	if c.signer != nil {
		// The event id names the message: the same on every retry.
		c.signer.Sign(hreq.Header, req.Event.ID, start, body)
	}
	resp, err := c.client.Do(hreq)
	call.Duration = time.Since(start)
	if err != nil {
		call.Error = err.Error()
		return connector.Result{}, &connector.Failure{Reason: "no answer from partner", Calls: []connector.Call{call}, Err: err}
	}
	defer resp.Body.Close()
	rb, readErr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	call.Status, call.ResponseBody = resp.StatusCode, string(rb)
	calls := []connector.Call{call}
	switch s := resp.StatusCode; {
	case readErr != nil:
		return connector.Result{}, &connector.Failure{Status: s, Reason: "response cut off", Calls: calls, Err: readErr}
	case s >= 200 && s < 300:
		return connector.Result{Calls: calls}, nil
	case s == 408 || s == 425 || s == 429 || s >= 500:
		return connector.Result{}, &connector.Failure{Status: s, Reason: string(rb), RetryAfter: RetryAfter(resp.Header.Get("Retry-After"), time.Now()), Calls: calls}
	default:
		return connector.Result{}, &connector.Rejection{Status: s, Reason: string(rb), Calls: calls}
	}
}

// Probe implements connector.Prober: any answer below 500 means the
// partner is up.
func (c *Connector) Probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, c.cfg.URL, nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("webhook: partner answers %d", resp.StatusCode)
	}
	return nil
}

// RetryAfter parses a Retry-After header (delay-seconds or an HTTP date);
// 0 when absent or unparseable.
func RetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
