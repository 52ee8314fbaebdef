package outbox

import (
	"time"

	"github.com/jackc/pglogrepl"
)

// Event is one outbox event: a row inserted into the outbox table, or a
// transactional logical decoding message with the outbox prefix.
type Event struct {
	ID            string
	TenantID      string
	AggregateType string
	AggregateID   string
	EventType     string
	// Payload is the payload as Postgres printed it (jsonb text).
	Payload []byte
	// Headers is the headers column (a JSON object), or nil.
	Headers []byte
	// CreatedAt is the created_at column's text, or "" for messages.
	CreatedAt string
	// Invalid, when not empty, says why the event cannot be published
	// normally (missing tenant, payload that is not JSON, ...). Such events
	// are still delivered — to the dead-letter topic — never dropped.
	Invalid string
}

// Tx is one committed transaction's outbox events, in the order written.
type Tx struct {
	Xid       uint32
	CommitLSN pglogrepl.LSN
	// CommitLSNText is CommitLSN formatted once per transaction for the
	// commit_lsn header ("" when CommitLSN is 0, as in backfills).
	CommitLSNText string
	EndLSN        pglogrepl.LSN // confirming this position means the tx is done
	CommitTime    time.Time
	Events        []Event
}
