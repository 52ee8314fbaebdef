package lane

import "sync/atomic"

// Budget bounds the bytes of records held in memory by schedulers: each
// queued item's Size counts against it from Add until the item is
// finished, spilled or its partition revoked. The budget does not refuse
// items: its owner stops fetching while it is Over and starts again once
// it is Under, so a single item larger than the budget is still taken
// (and delivered) alone. A Budget is safe for concurrent use.
type Budget struct {
	limit int64
	used  atomic.Int64
}

// NewBudget returns a budget of limit bytes (at least 1).
func NewBudget(limit int64) *Budget {
	return &Budget{limit: max(1, limit)}
}

// Limit returns the budget's size in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// Used returns the bytes counted against the budget now.
func (b *Budget) Used() int64 { return b.used.Load() }

// Over reports whether the items held reach the limit: stop fetching.
func (b *Budget) Over() bool { return b.used.Load() >= b.limit }

// Under reports whether the items held are below half the limit: fetch
// again. (The gap between Over and Under keeps a partition from being
// paused and resumed on every record.)
func (b *Budget) Under() bool { return b.used.Load() < b.limit/2 }
