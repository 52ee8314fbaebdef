package sinkapp

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/pkg/connector/webhook"
)

// A webhook integration with two signing secrets (a rotation) signs every
// request the Standard Webhooks way; the partner verifies each signature
// against the body it received. (The signer itself is checked against the
// specification's published test vector in pkg/connector/webhook.)
func TestWebhook_RequestsAreSignedWithEverySecret(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	const current, previous = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_b2xkLXNlY3JldC1rZXk="
	t.Setenv("HOOK_SECRET", current)
	t.Setenv("HOOK_SECRET_OLD", previous)
	verifyWith := func(secret string) *webhook.Signer {
		s, err := webhook.NewSigner([]string{secret})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cur, old := verifyWith(current), verifyWith(previous)
	var mu sync.Mutex
	var bad []string
	var signed int
	partner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body) // a short body fails the check below
		r.Body = io.NopCloser(bytes.NewReader(body))
		unix, err := strconv.ParseInt(r.Header.Get("webhook-timestamp"), 10, 64)
		id, sig := r.Header.Get("webhook-id"), r.Header.Get("webhook-signature")
		want := cur.Signature(id, time.Unix(unix, 0), body) + " " + old.Signature(id, time.Unix(unix, 0), body)
		mu.Lock()
		if err != nil || id == "" || sig != want {
			bad = append(bad, r.Header.Get("Idempotency-Key")+": "+sig)
		} else {
			signed++
		}
		mu.Unlock()
		e.sim.ServeHTTP(w, r)
	}))
	defer partner.Close()
	e.simURL = partner.URL
	for i := 1; i <= 3; i++ {
		e.produce("acme", "e"+strconv.Itoa(i), "product.updated", `{"n": `+strconv.Itoa(i)+`}`)
	}
	e.start("--config", e.config("      signing_secrets_env: [HOOK_SECRET, HOOK_SECRET_OLD]\n"))
	waitFor(t, time.Minute, "three signed deliveries", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return signed+len(bad) >= 3
	})
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 || signed != 3 {
		t.Fatalf("%d verified, unverifiable: %v", signed, bad)
	}
}

// A secret that is not set stops the sink at start-up with the key path.
func TestWebhook_MissingSigningSecretIsAConfigError(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	code, _, errOut := e.runCmd("run", "--config", e.config("      signing_secrets_env: [NOT_SET_ANYWHERE]\n"))
	if code == 0 || !strings.Contains(errOut, "signing_secrets_env[0]: environment variable NOT_SET_ANYWHERE is not set") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}
