// Package lsnack keeps cdc's LSN watermark: the highest transaction end
// LSN such that that transaction and every transaction received before it
// have been acknowledged by Kafka. Only that position is ever confirmed to
// the replication slot, which is what upholds guarantee 1 (no loss): a
// crash can resend, never skip.
//
// The reader adds transactions in commit order on its goroutine (at their
// Begin, and sets the end LSN at their Commit: records are published as
// they are decoded, so a transaction can be in flight, or fail, before
// its end is known); producer
// callbacks mark them done from any goroutine. A Tracker is safe for
// concurrent use.
package lsnack
