// Package route turns outbox events into Kafka records: the topic from a
// template over the event (default "outbox.{{.AggregateType}}"), the key
// (the tenant, or tenant+aggregate), the value (the payload as written, or
// a CloudEvents JSON envelope) and the headers (event id, tenant, event
// type, aggregate type and id, commit LSN, and the trace context carried
// in the outbox headers column).
//
// The key is what gives guarantee 2 (per-tenant order): one key, one
// partition, commit order. A Router is safe for concurrent use.
package route
