// Package pgdb applies Ferry's embedded SQL migrations (package schemas)
// and classifies PostgreSQL connection errors into messages that say what
// to do. Both binaries call Migrate at start-up; it is idempotent and safe
// to run from several processes at once (an advisory lock serialises it).
package pgdb
