// Package consume is the sink engine for one integration: a franz-go
// consumer group (manual commits, cooperative rebalancing that waits for
// in-flight deliveries of revoked partitions) feeding tenant lanes
// (package lane), each record delivered through the delivery log (package
// delivery) and a connector, behind the integration's rate limit,
// concurrency cap and circuit breaker.
//
// Offsets are committed only up to each partition's lowest unfinished
// record, and only for partitions this process still owns (guarantees 1
// and 3); a failing or rejected tenant waits in its lane while the others
// flow (guarantee 4); every attempt and outcome is recorded (guarantee 5).
package consume
