// Package lane is the sink's scheduler: inside each Kafka partition,
// records are split by key (the tenant) into FIFO lanes; a bounded pool of
// workers runs lanes concurrently, one record per lane at a time, so a
// tenant's events are delivered strictly in order (guarantee 2) while a
// lane that fails or is parked waits without holding a worker, and every
// other lane — in the same partition too — keeps flowing (guarantee 4).
//
// Each partition keeps an offset watermark: the lowest offset not yet
// finished. Only that is committed, so a restart redelivers, never skips.
//
// A Scheduler is safe for concurrent use: the consumer adds records and
// revokes partitions from its goroutine while workers deliver.
package lane
