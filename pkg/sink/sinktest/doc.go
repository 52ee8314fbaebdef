// Package sinktest starts what an end-to-end test of a sink binary
// needs, without Docker: a PostgreSQL database (a throwaway cluster made
// with the system's initdb, run as the unprivileged postgres user when
// the test runs as root, or the server in DATABASE_URL) and a
// Kafka-protocol broker (franz-go's kfake, in the test process, over
// TCP), and produces events to it as Ferry's cdc does.
//
// Use Main from TestMain: the PostgreSQL server is shared by the test
// package, each test gets a database of its own from Postgres, and a
// broker of its own from Kafka. Functions are safe for concurrent use.
package sinktest
