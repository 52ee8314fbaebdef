package connectortest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

// contacts is a small connector for the suite's own tests: it creates a
// contact with POST /contacts and maps its id. broken names a defect.
type contacts struct {
	base, broken string
	client       *http.Client
}

func (c *contacts) Deliver(ctx context.Context, req connector.Request) (connector.Result, error) {
	key := req.IdempotencyKey
	if c.broken == "fresh-key" {
		key += ":" + strconv.Itoa(req.Attempt)
	}
	if _, err := req.Mappings.Intend(ctx, "contact", req.Event.AggregateID, key); err != nil {
		return connector.Result{}, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/contacts", bytes.NewReader(req.Event.Payload))
	if err != nil {
		return connector.Result{}, &connector.Rejection{Reason: err.Error()}
	}
	hreq.Header.Set("Idempotency-Key", key)
	resp, err := c.client.Do(hreq)
	if err != nil {
		return connector.Result{}, &connector.Failure{Reason: "no answer", Err: err}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body) // a cut-off body fails the JSON decode below
	calls := []connector.Call{{Method: "POST", URL: c.base + "/contacts", Status: resp.StatusCode, ResponseBody: string(body)}}
	switch s := resp.StatusCode; {
	case s >= 500 && c.broken == "503-rejects":
		return connector.Result{}, &connector.Rejection{Status: s, Calls: calls}
	case s == 429 || s >= 500:
		return connector.Result{}, &connector.Failure{Status: s, Calls: calls, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	case s >= 400:
		return connector.Result{}, &connector.Rejection{Status: s, Reason: string(body), Calls: calls}
	}
	var out struct{ ID string }
	if err := json.Unmarshal(body, &out); err != nil || out.ID == "" {
		return connector.Result{}, &connector.Failure{Status: resp.StatusCode, Reason: "no id in the answer", Calls: calls}
	}
	if c.broken != "intent-left" {
		if err := req.Mappings.Activate(ctx, "contact", req.Event.AggregateID, out.ID); err != nil {
			return connector.Result{}, err
		}
	}
	if c.broken == "no-calls" {
		calls = nil
	}
	return connector.Result{Calls: calls, RemoteID: out.ID}, nil
}

// Intent: Deliver's first write is its intent (connector.Intender).
func (c *contacts) Intent(req connector.Request) (connector.Intent, bool) {
	in := connector.Intent{EntityType: "contact", LocalID: req.Event.AggregateID, IdempotencyKey: req.IdempotencyKey}
	if c.broken == "other-intent" {
		in.IdempotencyKey += ":other"
	}
	return in, true
}

func retryAfter(v string) time.Duration {
	n, _ := strconv.Atoi(v) // absent or a date: no hint
	return time.Duration(n) * time.Second
}

func contactsHarness(broken string) Harness {
	return Harness{
		New: func(_ testing.TB, baseURL string, timeout time.Duration) connector.Connector {
			return &contacts{base: baseURL, broken: broken, client: &http.Client{Timeout: timeout}}
		},
		Event: func(tenant string) connector.Event {
			return connector.Event{ID: "e-1", TenantID: tenant, EventType: "contact.created", AggregateType: "contact", AggregateID: "c-1",
				Payload: []byte(`{"email": "ada@example.com"}`)}
		},
		Partner: func(testing.TB) Partner {
			return Replay(Exchange{Method: "POST", Path: "/contacts", Answer: Answer{Status: 201, Body: `{"id": "crm_1"}`}})
		},
	}
}

// A connector that keeps the contract passes against a recorded partner.
func TestRecordedPartner(t *testing.T) {
	Run(t, contactsHarness(""))
}

// The suite fails connectors that break the contract, each in the check
// that names the defect. Each broken connector runs in a child process
// (a failed subtest cannot be undone in this one).
func TestSuiteFailsBrokenConnectors(t *testing.T) {
	if broken := os.Getenv("CONNECTORTEST_BROKEN"); broken != "" {
		Run(t, contactsHarness(broken))
		return
	}
	for broken, check := range map[string]string{
		"fresh-key":    "RedeliveryHasNoSecondEffect",
		"503-rejects":  "ServerErrorIsFailure",
		"no-calls":     "SuccessRecordsCallsAndMappings",
		"intent-left":  "SuccessRecordsCallsAndMappings",
		"other-intent": "IntentIsTheFirstWrite",
	} {
		t.Run(broken, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestSuiteFailsBrokenConnectors$", "-test.v")
			cmd.Env = append(os.Environ(), "CONNECTORTEST_BROKEN="+broken)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a connector with defect %s:\n%s", broken, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestSuiteFailsBrokenConnectors/"+check+" ") {
				t.Fatalf("defect %s did not fail check %s:\n%s", broken, check, out)
			}
		})
	}
}
