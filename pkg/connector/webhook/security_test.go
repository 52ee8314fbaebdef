package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

const hookToken = "whsec-7f3a9c"

func ev(tenant string) connector.Event {
	return connector.Event{ID: "e-1", TenantID: tenant, EventType: "product.created", AggregateType: "product", AggregateID: "p1", Payload: []byte(`{}`)}
}

// The URL may come from the environment (url_env); the token in its
// query never reaches the recorded calls, and the request is still sent
// with it.
func TestURLFromEnvIsRedactedInCalls(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.Query().Get("token")
		w.WriteHeader(422)
	}))
	defer srv.Close()
	env := map[string]string{"HOOK_URL": srv.URL + "/hook?token=" + hookToken}
	c, err := newWithEnv(Config{URLEnv: "HOOK_URL"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Deliver(context.Background(), connector.Request{Event: ev("acme"), IdempotencyKey: "k"})
	var rej *connector.Rejection
	if !errors.As(err, &rej) || got != hookToken {
		t.Fatalf("got %v; partner saw token %q", err, got)
	}
	b, _ := json.Marshal(rej)
	if strings.Contains(string(b), hookToken) || !strings.Contains(rej.Calls[0].URL, "token=REDACTED") {
		t.Fatalf("recorded: %s", b)
	}
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "url: required"},
		{Config{URL: "https://x", URLEnv: "HOOK_URL"}, "not both"},
		{Config{URLEnv: "UNSET"}, "url_env: environment variable UNSET is not set"},
		{Config{URL: "ftp://x/?token=" + hookToken}, "url: "},
		{Config{URL: "https://x", Timeout: -1}, "timeout:"},
	} {
		_, err := newWithEnv(c.cfg, func(k string) string { return env[k] })
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), hookToken) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
}

// Transport errors name no URL; redirects are failures, not followed;
// a tenant id the client would refuse is a rejection, never sent.
func TestTransportRedirectAndBadHeader(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	dead := srv.URL
	srv.Close()
	c, err := New(Config{URL: dead + "/hook?token=" + hookToken})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Deliver(context.Background(), connector.Request{Event: ev("acme"), IdempotencyKey: "k"})
	var fail *connector.Failure
	if !errors.As(err, &fail) || strings.Contains(err.Error(), hookToken) || strings.Contains(fail.Calls[0].Error, hookToken) || strings.Contains(err.Error(), "http://") {
		t.Fatalf("transport error: %v / %+v", err, fail)
	}
	if err := c.Probe(context.Background()); err == nil || strings.Contains(err.Error(), hookToken) {
		t.Fatalf("probe: %v", err)
	}

	var followed bool
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { followed = true }))
	defer other.Close()
	redir := httptest.NewServer(http.RedirectHandler(other.URL+"/?sig=abc", http.StatusFound))
	defer redir.Close()
	c, _ = New(Config{URL: redir.URL})
	_, err = c.Deliver(context.Background(), connector.Request{Event: ev("acme"), IdempotencyKey: "k"})
	if !errors.As(err, &fail) || fail.Status != 302 || !strings.Contains(fail.Reason, "sig=REDACTED") || followed {
		t.Fatalf("redirect: %v (followed %v)", err, followed)
	}

	var sent bool
	ok := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { sent = true }))
	defer ok.Close()
	c, _ = New(Config{URL: ok.URL})
	_, err = c.Deliver(context.Background(), connector.Request{Event: ev("acme\x1b[2J"), IdempotencyKey: "k"})
	if out, _ := connector.Classify(err); out != connector.Rejected || sent || !strings.Contains(err.Error(), "X-Tenant-Id") {
		t.Fatalf("bad tenant id: %v %v (sent %v)", out, err, sent)
	}
}
