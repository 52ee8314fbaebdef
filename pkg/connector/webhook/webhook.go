// Package webhook is the simplest connector: it POSTs each event as JSON
// to one URL, with Idempotency-Key, X-Tenant-ID and X-Event-Type headers,
// signed the Standard Webhooks way when given secrets (see Signer).
// 2xx is success; 3xx (redirects are not followed), 408, 425, 429, 5xx
// and network errors are failures (retried, honouring Retry-After); any
// other status is a rejection. A request that cannot be built (a tenant
// id that is not a valid header value) is a rejection.
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
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/ferry-cdc/ferry/internal/safe"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// Config configures a webhook connector.
type Config struct {
	// URL receives the POSTs. Its userinfo and secret-looking query
	// parameters (token, key, sig, ...) are redacted wherever the call is
	// stored or shown.
	URL string `yaml:"url"`
	// URLEnv names an environment variable holding the URL instead (when
	// it carries a token). Give URL or URLEnv, not both.
	URLEnv string `yaml:"url_env"`
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
	url    string
	client *http.Client
	signer *Signer // nil: requests are not signed
}

// New returns a connector. The URL (from URL, or the variable URLEnv
// names) must be an http(s) URL. Errors name the YAML key (url, url_env,
// timeout) first, for the caller to prefix with its path.
func New(cfg Config) (*Connector, error) {
	return newWithEnv(cfg, os.Getenv)
}

func newWithEnv(cfg Config, getenv func(string) string) (*Connector, error) {
	raw, key := cfg.URL, "url"
	switch {
	case cfg.URL != "" && cfg.URLEnv != "":
		return nil, errors.New("url: give url or url_env, not both")
	case cfg.URLEnv != "":
		raw, key = getenv(cfg.URLEnv), "url_env"
		if raw == "" {
			return nil, fmt.Errorf("url_env: environment variable %s is not set (or empty)", cfg.URLEnv)
		}
	case cfg.URL == "":
		return nil, errors.New("url: required (e.g. https://partner.example/hooks/ferry), or url_env naming a variable that holds it")
	}
	if u, err := url.Parse(raw); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s: %s is not an http(s) URL (e.g. https://partner.example/hooks/ferry)", key, safe.URL(raw))
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("timeout: %s: must not be negative (0 means the default, 10s)", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	c := &Connector{cfg: cfg, url: raw, client: Client(cfg.Timeout)}
	if len(cfg.SigningSecrets) > 0 {
		s, err := NewSigner(cfg.SigningSecrets)
		if err != nil {
			return nil, fmt.Errorf("signing_secrets_env: %w", err)
		}
		c.signer = s
	}
	return c, nil
}

// Client is the HTTP client connectors use for one partner, with a
// per-call timeout. The default transport keeps 2 idle connections per
// host: with many lanes calling one partner, every other call would open
// a new TCP connection; this one keeps up to 1024. It never follows a
// redirect: the 3xx answer is returned (a redirect could carry the
// partner's credentials to another host, or from https to http).
func Client(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1024, 1024
	return &http.Client{Timeout: timeout, Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// TransportError returns err, from http.Client.Do, without the request's
// URL (which may carry a secret): "Post: dial tcp 10.0.0.1:443: connect:
// connection refused". What it wraps stays reachable with errors.As
// (timeouts still test as timeouts).
func TransportError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return &transportError{op: ue.Op, err: ue.Err}
	}
	return err
}

type transportError struct {
	op  string
	err error
}

func (e *transportError) Error() string { return e.op + ": " + safe.Text(e.err.Error()) }
func (e *transportError) Unwrap() error { return e.err }
func (e *transportError) Timeout() bool {
	t, ok := e.err.(interface{ Timeout() bool })
	return ok && t.Timeout()
}

// CheckHeaders returns why h cannot be sent (a name or value net/http
// would refuse), or nil. A request that cannot be built is a rejection
// with this reason, never a failure retried forever. The value is not
// quoted: it may be a credential.
func CheckHeaders(h http.Header) error {
	for name, vs := range h {
		if !safe.HeaderName(name) {
			return fmt.Errorf("header name %q is not a valid HTTP token", name)
		}
		for _, v := range vs {
			if !safe.HeaderValue(v) {
				return fmt.Errorf("header %s has a control character (not a valid HTTP header value)", name)
			}
		}
	}
	return nil
}

// Redirect is the reason a 3xx answer fails an attempt.
func Redirect(status int, location string) string {
	return fmt.Sprintf("partner answered %d, a redirect to %s: redirects are not followed (they could carry credentials elsewhere); "+
		"point the connector at the new address", status, safe.URL(location))
}

// Deliver implements connector.Connector.
func (c *Connector) Deliver(ctx context.Context, req connector.Request) (connector.Result, error) {
	body, err := json.Marshal(req.Event)
	if err != nil {
		return connector.Result{}, &connector.Rejection{Reason: "event does not encode as JSON: " + err.Error()}
	}
	call := connector.Call{Method: http.MethodPost, URL: safe.URL(c.url), RequestBody: string(body)}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return connector.Result{}, &connector.Rejection{Reason: "cannot build the request: " + safe.Text(err.Error())}
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Idempotency-Key", req.IdempotencyKey)
	hreq.Header.Set("X-Tenant-ID", req.Event.TenantID)
	hreq.Header.Set("X-Event-Type", req.Event.EventType)
	if err := CheckHeaders(hreq.Header); err != nil {
		return connector.Result{}, &connector.Rejection{Reason: "cannot build the request (bad input): " + err.Error()}
	}
	start := time.Now()
	if c.signer != nil {
		// The event id names the message: the same on every retry.
		c.signer.Sign(hreq.Header, req.Event.ID, start, body)
	}
	resp, err := c.client.Do(hreq)
	call.Duration = time.Since(start)
	if err != nil {
		err = TransportError(err)
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
	case s >= 300 && s < 400:
		return connector.Result{}, &connector.Failure{Status: s, Reason: Redirect(s, resp.Header.Get("Location")), Calls: calls}
	default:
		return connector.Result{}, &connector.Rejection{Status: s, Reason: string(rb), Calls: calls}
	}
}

// Probe implements connector.Prober: any answer below 500 means the
// partner is up.
func (c *Connector) Probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, c.url, nil)
	if err != nil {
		return errors.New("webhook: cannot build the probe request")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return TransportError(err)
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
