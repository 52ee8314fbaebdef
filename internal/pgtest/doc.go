// Package pgtest gives tests, the demo and the benchmarks a real
// PostgreSQL server with wal_level=logical and no Docker: a throwaway
// cluster made with the system's initdb on a free port (run as the
// unprivileged "postgres" user when the process is root), or the server in
// DATABASE_URL, or — with FERRY_TEST_BACKEND=containers and -tags
// containers — a postgres container through testcontainers.
//
// Each test gets its own database from New, so replication slots and
// outbox tables never leak between tests. Functions are safe for
// concurrent use.
package pgtest
