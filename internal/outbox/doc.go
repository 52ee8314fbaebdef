// Package outbox is cdc's Postgres side. It sets up the outbox table, the
// publication (publish = 'insert') and the pgoutput replication slot;
// streams committed transactions by logical replication (protocol 1, no
// streaming of uncommitted rows) and decodes outbox rows and table-less
// outbox messages (pg_logical_emit_message) one event at a time, handing
// each on as it is decoded (a transaction is never held whole); and
// confirms to the slot only what the LSN watermark (package lsnack)
// allows.
//
// It upholds guarantee 1 (no loss): the confirmed position never passes a
// transaction Kafka has not acknowledged, the flush position is always set
// explicitly, and the slot guard refuses a slot that was dropped,
// recreated or invalidated (WAL was skipped) unless told to recover by
// backfilling. Transactions are handed to the Handler in commit order,
// which with tenant keys gives guarantee 2.
//
// A Reader is owned by one goroutine (Run); its status accessors are safe
// for concurrent use.
package outbox
