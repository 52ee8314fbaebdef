// Package groupcommit runs the sink's small hot writes — the delivery
// log's Begin, Checkpoint and Finish, the mapping store's intents and
// partner ids — as few statements: many lanes write at once, and each
// write on its own would cost a round trip, a transaction and a
// statement. A Batcher collects the writes that arrive within linger of
// the first one and runs all writes of one kind as one statement over
// arrays (unnest), all kinds in one pipeline: one round trip, one
// implicit transaction, one statement per kind. If a batch fails, its
// writes are retried one by one, so one bad write never fails the
// others.
//
// Do returns only after the write's transaction committed (or failed),
// so a caller that waits for it may rely on the write as on a statement
// of its own: the mapping intent is in the database before the partner
// call, a delivery's outcome after it. A Batcher is safe for concurrent
// use.
package groupcommit
