// Package safe holds the checks and rewrites for what crosses Ferry's
// trust boundaries: ids from the outbox that become HTTP header values at
// a partner (ID, HeaderValue), URLs that may carry credentials on their
// way into the delivery log, logs and the admin API (URL, Text,
// SecretParam), and text from payloads or partners printed to an
// operator's terminal (Terminal). See docs/security.md.
//
// Every function is pure and safe for concurrent use.
package safe
