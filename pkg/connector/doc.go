// Package connector is the contract between Ferry's sink and a partner
// API: deliver one outbox event, told the partner ids already mapped for
// it, and report success (with the partner ids to record), a rejection
// (final: the partner will never accept this event as it is) or a failure
// (temporary: try again later, possibly after a Retry-After).
//
// The sink calls a Connector from many goroutines at once, but never for
// two events of the same tenant at the same time, and always in the
// tenant's order (guarantee 2). It may call Deliver again for an event it
// already delivered (restarts, rebalances): connectors send
// Request.IdempotencyKey so the partner applies it once (guarantee 3).
//
// Optional interfaces extend the contract: Undoer (compensate completed
// work after a later rejection) and Prober (a cheap health check the
// circuit breaker uses to probe a partner back). The conformance suite in
// connectortest checks every implementation against this contract.
package connector
