// Package chaos is Ferry's fault suite (make chaos): it runs the whole
// pipeline the way operators run it — a PostgreSQL cluster, a Kafka broker
// in its own process, the built cdc and sink binaries under a supervisor
// that restarts whatever exits, and a partner API — puts it under load from
// many tenants, injects faults at random (broker kill -9 and restart on the
// same data, windows of retriable produce errors, PostgreSQL fast and
// immediate restarts, SIGKILL of cdc and of sink), and then checks the
// guarantees against what really happened:
//
//   - Guarantee 1 (no loss) and 2 (per-tenant order) on the Kafka log: a
//     fresh reader of the whole topic drops event ids it has seen and
//     requires each tenant's events in commit order (the per-tenant
//     sequence number each event carries). Records a live reader saw
//     before a broker crash but that the log no longer holds after it are
//     counted apart: that is the broker's loss, not Ferry's.
//   - Guarantees 2 and 3 at the partner: the partner simulator's request
//     log gives each event's first application per tenant, events applied
//     twice, redeliveries its Idempotency-Key absorbed, and calls for one
//     event made at the same time.
//   - Guarantee 7 (faults are weather): how long from each fault's end to
//     the first event committed after it reaching Kafka and the partner,
//     and how often cdc and sink exited on their own.
//
// The ground truth is the outbox table itself, read when the faults have
// stopped: every row in it was committed. The suite prints figures (in the
// manner of Jepsen's reports) and fails when anything was lost, reordered
// or applied twice. Each run's seed is printed; rerunning with that seed
// replays the same load and fault schedule (timing differs).
//
// Run is not safe for concurrent use: one suite per process.
package chaos
