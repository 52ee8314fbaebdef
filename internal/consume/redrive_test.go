package consume

import (
	"encoding/json"
	"testing"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

// A redrive never sends the stored copy of a record rejected as bad
// input: it is rejected again.
func TestRedriveRefusesAnUnusableStoredCopy(t *testing.T) {
	for _, c := range []struct {
		name string
		ev   connector.Event
		bad  bool
	}{
		{"usable", connector.Event{TenantID: "acme", Payload: json.RawMessage(`{"n":1}`)}, false},
		{"no tenant", connector.Event{Payload: json.RawMessage(`{"n":1}`)}, true},
		{"payload not JSON (stored as null)", connector.Event{TenantID: "acme", Payload: json.RawMessage(`null`)}, true},
		{"no payload", connector.Event{TenantID: "acme"}, true},
	} {
		if got := unusable(c.ev) != ""; got != c.bad {
			t.Errorf("%s: unusable = %v, want %v", c.name, got, c.bad)
		}
	}
	// A stored copy round-trips through the log's JSON as it was kept.
	var back connector.Event
	b, err := json.Marshal(connector.Event{TenantID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &back); err != nil || unusable(back) == "" {
		t.Fatalf("a stored copy without payload, read back: %q %v", back.Payload, err)
	}
}
