// Package publish is cdc's Kafka side: a franz-go producer (acks=all,
// idempotent, murmur2 key partitioning like the Java client) that sends
// each committed outbox transaction's records asynchronously and calls the
// transaction's ack once Kafka has acknowledged every one of them.
//
// Bad events (missing tenant, payload that is not JSON, a topic name Kafka
// refuses, a record larger than the broker accepts) go to the dead-letter
// topic with the reason in the ferry_error header, or stop cdc with a
// clear error when OnBadEvent is "stop". Nothing is dropped. A Publisher is
// safe for concurrent use.
package publish
