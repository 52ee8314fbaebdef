package webhook

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

// The Standard Webhooks specification's published test vector, as the
// reference libraries check it: a receiver's library verifies what we
// send only if this reproduces exactly.
func TestSignatureMatchesTheStandardWebhooksTestVector(t *testing.T) {
	s, err := NewSigner([]string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
	if err != nil {
		t.Fatal(err)
	}
	got := s.Signature("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("signature %s; want %s", got, want)
	}
	// Without the prefix, and two secrets during a rotation.
	s2, err := NewSigner([]string{"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2Vjb25k"})
	if err != nil {
		t.Fatal(err)
	}
	both := strings.Fields(s2.Signature("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`)))
	if len(both) != 2 || both[0] != got || !strings.HasPrefix(both[1], "v1,") || both[1] == got {
		t.Fatalf("rotation signatures %v", both)
	}
	if _, err := NewSigner([]string{"whsec_not base64!"}); err == nil || strings.Contains(err.Error(), "not base64!") {
		t.Fatalf("bad secret: %v (must fail without echoing the secret)", err)
	}
}

// A signed delivery carries the three headers; the id is the event's on
// every attempt and the signature covers exactly the body sent.
func TestDeliverSignsEveryAttempt(t *testing.T) {
	var got []http.Header
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body) // a short read fails the signature check below
		got, bodies = append(got, r.Header.Clone()), append(bodies, string(b))
		if len(got) == 1 {
			w.WriteHeader(503)
		}
	}))
	defer srv.Close()
	c, err := New(Config{URL: srv.URL, SigningSecrets: []string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}})
	if err != nil {
		t.Fatal(err)
	}
	req := connector.Request{Event: connector.Event{ID: "e1", TenantID: "acme", EventType: "order.paid", Payload: []byte(`{"n":1}`)}, IdempotencyKey: "k:e1"}
	if _, err := c.Deliver(context.Background(), req); err == nil {
		t.Fatal("503 did not fail the attempt")
	}
	if _, err := c.Deliver(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	s, _ := NewSigner([]string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
	for i, h := range got {
		unix, err := strconv.ParseInt(h.Get("webhook-timestamp"), 10, 64)
		if h.Get("webhook-id") != "e1" || err != nil || unix == 0 || h.Get("webhook-signature") != s.Signature("e1", time.Unix(unix, 0), []byte(bodies[i])) {
			t.Fatalf("attempt %d headers %v do not sign body %s", i+1, h, bodies[i])
		}
	}
}
