// Package httpconn is the declarative HTTP connector: a partner REST API
// described in configuration instead of code.
//
// A Config names the partner's base URL, how calls authenticate (bearer,
// basic or an API-key header, secrets read from the environment and never
// logged or stored), which statuses reject an event for good and which
// are retried, and, per entity (the event's aggregate type), how an object
// is created, updated and deleted: each operation one call or a list of
// steps, with path, query, headers and body rendered from Go templates
// over the event (.payload, .tenant_id, .aggregate_id, the partner ids of
// .parents and of earlier steps). Values are escaped for where they land
// (path segment, query, JSON value, inside a JSON string), and a template
// that names an unknown field is refused when the connector is built.
// JSON paths (RFC 9535) find the partner's ids in its answers.
//
// Where it sits: the sink's engine (internal/consume) calls Deliver once
// per event, in the tenant's order, and records the outcome. The
// connector upholds guarantee 3 (effectively once at the partner) with the
// engine: it sends the Idempotency-Key it is given, asks for the ID
// mapping (pkg/mapping) whose intent the engine wrote before a create,
// checkpoints each completed step so a retry resumes at the failed one,
// finds an object whose create outcome was lost by a lookup, and undoes
// completed steps when a later one is rejected (Undo). Events whose parent
// object is not mapped yet wait (connector.Waiting) instead of failing.
// Probe is the circuit breaker's cheap health check.
//
// A Connector is safe for concurrent use. docs/connectors.md is the
// user's guide, with examples in examples/.
package httpconn
