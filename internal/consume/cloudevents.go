package consume

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

// unwrapCloudEvent reads a structured-mode CloudEvents JSON envelope (as
// cdc writes with --envelope cloudevents, or any producer following the
// CloudEvents Kafka binding): the event's payload becomes the envelope's
// data, and its attributes go to ev.CloudEvent. Ferry's headers win over
// the envelope; an envelope from another producer fills the event's ids
// from its attributes (id, type, subject, and the tenantid and
// aggregatetype extensions).
func unwrapCloudEvent(ev *connector.Event, value []byte) error {
	var env map[string]json.RawMessage
	if err := json.Unmarshal(value, &env); err != nil {
		return fmt.Errorf("CloudEvents envelope is not a JSON object: %v", err)
	}
	if _, ok := env["specversion"]; !ok {
		return errors.New("CloudEvents envelope has no specversion")
	}
	if _, ok := env["data_base64"]; ok {
		return errors.New("CloudEvents envelope carries binary data (data_base64); only JSON data is delivered")
	}
	ev.Payload = env["data"]
	if ev.Payload == nil {
		ev.Payload = json.RawMessage("null") // an event without data
	}
	ev.CloudEvent = make(map[string]any, len(env))
	for k, raw := range env {
		if k == "data" {
			continue
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("CloudEvents attribute %s: %v", k, err)
		}
		ev.CloudEvent[k] = v
	}
	fill := func(dst *string, attr string) {
		if s, ok := ev.CloudEvent[attr].(string); ok && *dst == "" {
			*dst = s
		}
	}
	fill(&ev.ID, "id")
	fill(&ev.EventType, "type")
	fill(&ev.AggregateID, "subject")
	fill(&ev.TenantID, "tenantid")
	fill(&ev.AggregateType, "aggregatetype")
	return nil
}
