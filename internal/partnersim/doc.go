// Package partnersim is a partner REST API simulator for tests, the demo
// and benchmarks: create, read, update and delete objects per entity type,
// with Idempotency-Key replay, lookup by our external id, configurable
// latency, error rate and rate limit (429 with Retry-After), rejection
// rules, outage windows, and a log of every request received that tests
// query over HTTP to check order and counts. A Server is safe for
// concurrent use.
//
// API (tenant from the X-Tenant-ID header):
//
//	POST   /v1/{entity}                 create → 201 {"id": ..., body fields}
//	GET    /v1/{entity}/{id}            read   → 200 | 404
//	PUT    /v1/{entity}/{id}            update → 200 | 404
//	DELETE /v1/{entity}/{id}            delete → 204 | 404
//	GET    /v1/{entity}?external_id=X   lookup → 200 {"data": [...]}
//	GET    /healthz                     200, or 503 during an outage
//	GET    /_sim/requests[?tenant=T]    the request log
//	GET    /_sim/objects?entity=E       the live objects
//	POST   /_sim/rules                  add a Rule (JSON); DELETE removes all
//	POST   /_sim/outage?for=5s          answer 503 to everything for a while
package partnersim
