// Package delivery is the sink's delivery log in Postgres: one row per
// (integration, event) recording its state, attempts, last status code,
// reason and the partner calls, and the transitions of the delivery state
// machine:
//
//	pending → in_flight → succeeded | rejected | failed
//	failed → in_flight (after backoff); any → skipped (operator)
//
// Each transition is a conditional UPDATE fenced by the attempt number, so
// two processes can never both move one delivery forward (guarantee 3),
// and an event whose delivery is final is never sent again. Every attempt,
// failure and rejection is recorded (guarantee 5). A Log is safe for
// concurrent use.
package delivery
