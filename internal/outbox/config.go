package outbox

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// DefaultResyncRate is outbox.resync_rate's default, in objects per
// second. Uncapped, a 1,000,000-object resync kept the 2-core machine of
// docs/performance.md busy for a minute and other tenants' inserts
// waited for CPU (p99 28-48x their baseline); at this rate it takes
// about 6 minutes and leaves them CPU.
const DefaultResyncRate = 3000

// Config configures the outbox reader.
type Config struct {
	// Table is the outbox table, schema-qualified. Default "public.outbox".
	Table string `yaml:"table"`
	// Columns names the table's columns. Defaults: DefaultColumns.
	Columns Columns `yaml:"columns"`
	// Publication is the publication name. Default "ferry_outbox".
	Publication string `yaml:"publication"`
	// Slot is the replication slot name. Default "ferry_outbox".
	Slot string `yaml:"slot"`
	// CreateObjects lets cdc create the outbox table, publication and slot
	// when missing. Default true (the flag is --no-create to turn it off).
	CreateObjects bool `yaml:"create_objects"`
	// MessagePrefix is the prefix of table-less outbox messages written
	// with pg_logical_emit_message(true, prefix, json). Default
	// "ferry.outbox".
	MessagePrefix string `yaml:"message_prefix"`
	// HeartbeatInterval is how often cdc writes a heartbeat message and
	// checks the previous one came back. Default 10s; negative disables.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// StatusInterval is how often the confirmed position is sent to the
	// server. Default 1s.
	StatusInterval time.Duration `yaml:"status_interval"`
	// StandbyPoll is how often a standby cdc checks whether the slot's
	// holder is gone. Default 1s.
	StandbyPoll time.Duration `yaml:"standby_poll"`
	// RecoverLostSlot, when the slot was dropped, recreated or
	// invalidated, makes cdc create a new slot and backfill rows created
	// since the last confirmed commit (minus RecoverMargin) instead of
	// refusing to start. Duplicates are possible and carry the same event
	// id.
	RecoverLostSlot bool `yaml:"recover_lost_slot"`
	// RecoverMargin is subtracted from the last confirmed commit time when
	// recovering, to cover transactions that began before it and committed
	// after it. Default 1h.
	RecoverMargin time.Duration `yaml:"recover_margin"`
	// Partitions is "" (a plain table) or "daily": cdc setup creates the
	// outbox partitioned by day on created_at (UTC), cdc keeps
	// PartitionsAhead days of partitions ready, and cdc prune drops whole
	// days. Applies to an outbox cdc creates; an existing partitioned
	// outbox is detected.
	Partitions string `yaml:"partitions"`
	// PartitionsAhead is how many days of partitions cdc creates ahead.
	// Default 7.
	PartitionsAhead int `yaml:"partitions_ahead"`
	// ResyncPoll is how often cdc looks for resync requests (filed by
	// `sink tenants enable` when the sink shares this database). Default
	// 2s; negative disables.
	ResyncPoll time.Duration `yaml:"resync_poll"`
	// ResyncChunk is how many objects one resync transaction emits (the
	// tenant's objects are read and emitted a chunk at a time, each inside
	// its own watermark window). Default 2000.
	ResyncChunk int `yaml:"resync_chunk"`
	// ResyncRate caps the objects a resync emits per second. Default
	// DefaultResyncRate; negative: no cap. Uncapped, a resync reads,
	// writes to the WAL and sends through cdc as fast as it can, and the
	// application's own writes wait for CPU; capped, each chunk holds at
	// most a twentieth of a second's objects, so the load is even rather
	// than in bursts.
	ResyncRate float64 `yaml:"resync_rate"`
	// ResyncQueries read the current state of a tenant's objects of one
	// aggregate type from the application's own tables, for resync,
	// instead of the outbox: objects whose outbox rows were pruned are
	// resynced too. They run in the order listed (parents first), before
	// the aggregate types resynced from the outbox.
	ResyncQueries []ResyncQuery `yaml:"resync_queries"`
	// WALWarnBytes: warn when the slot's safe_wal_size (what can still be
	// written before max_slot_wal_keep_size invalidates it) drops below
	// this. Default 1 GiB.
	WALWarnBytes int64 `yaml:"wal_warn_bytes"`
	// ReconnectMax caps the backoff between reconnect attempts after
	// Postgres or Kafka went away (the first retry waits 200ms, then
	// doubling, with jitter). Default 30s.
	ReconnectMax time.Duration `yaml:"reconnect_max"`
}

// SetDefaults fills zero fields with their defaults. CreateObjects is not
// touched (its default is set by the caller's flag).
func (c *Config) SetDefaults() {
	if c.Table == "" {
		c.Table = "public.outbox"
	}
	if !strings.Contains(c.Table, ".") {
		c.Table = "public." + c.Table
	}
	d := DefaultColumns()
	for _, f := range []struct {
		v   *string
		def string
	}{
		{&c.Columns.ID, d.ID}, {&c.Columns.TenantID, d.TenantID}, {&c.Columns.AggregateType, d.AggregateType},
		{&c.Columns.AggregateID, d.AggregateID}, {&c.Columns.EventType, d.EventType}, {&c.Columns.Payload, d.Payload},
		{&c.Columns.Headers, d.Headers}, {&c.Columns.CreatedAt, d.CreatedAt}, {&c.Columns.Seq, d.Seq},
	} {
		if *f.v == "" {
			*f.v = f.def
		}
	}
	if c.Publication == "" {
		c.Publication = "ferry_outbox"
	}
	if c.Slot == "" {
		c.Slot = "ferry_outbox"
	}
	if c.PartitionsAhead == 0 {
		c.PartitionsAhead = 7
	}
	if c.ResyncPoll == 0 {
		c.ResyncPoll = 2 * time.Second
	}
	if c.ResyncChunk == 0 {
		c.ResyncChunk = 2000
	}
	if c.ResyncRate == 0 {
		c.ResyncRate = DefaultResyncRate
	}
	if c.MessagePrefix == "" {
		c.MessagePrefix = "ferry.outbox"
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 10 * time.Second
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = time.Second
	}
	if c.StandbyPoll == 0 {
		c.StandbyPoll = time.Second
	}
	if c.RecoverMargin == 0 {
		c.RecoverMargin = time.Hour
	}
	if c.WALWarnBytes == 0 {
		c.WALWarnBytes = 1 << 30
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = 30 * time.Second
	}
}

// ResyncQuery reads one aggregate type's objects of a tenant for resync.
type ResyncQuery struct {
	// AggregateType is the aggregate type the query's objects have.
	AggregateType string `yaml:"aggregate_type"`
	// EventType is the event type of their resync events: one the
	// integrations' connectors handle as an upsert (e.g. customer.updated).
	EventType string `yaml:"event_type"`
	// Query is a SELECT with $1 the tenant id, returning the columns
	// aggregate_id (text, not null) and payload (json or jsonb): one row
	// per object that exists now.
	Query string `yaml:"query"`
}

var (
	identRe = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)
	tableRe = regexp.MustCompile(`^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$`)
)

// Validate returns every problem with the config at once.
func (c *Config) Validate() error {
	var errs []error
	if !tableRe.MatchString(c.Table) {
		errs = append(errs, fmt.Errorf("outbox.table: %q: use a lower-case schema.table name", c.Table))
	}
	if !identRe.MatchString(c.Slot) || len(c.Slot) > 63 {
		errs = append(errs, fmt.Errorf("outbox.slot: %q: slot names are lower-case letters, digits and _ (at most 63)", c.Slot))
	}
	if !identRe.MatchString(c.Publication) {
		errs = append(errs, fmt.Errorf("outbox.publication: %q: use a lower-case identifier", c.Publication))
	}
	for name, v := range map[string]string{"id": c.Columns.ID, "tenant_id": c.Columns.TenantID,
		"aggregate_type": c.Columns.AggregateType, "aggregate_id": c.Columns.AggregateID, "event_type": c.Columns.EventType,
		"payload": c.Columns.Payload, "headers": c.Columns.Headers, "created_at": c.Columns.CreatedAt, "seq": c.Columns.Seq} {
		if !identRe.MatchString(v) {
			errs = append(errs, fmt.Errorf("outbox.columns.%s: %q: use a lower-case column name", name, v))
		}
	}
	if c.ReconnectMax < 0 {
		errs = append(errs, fmt.Errorf("outbox.reconnect_max: %s: give a positive duration (e.g. 30s)", c.ReconnectMax))
	}
	if c.StatusInterval < 0 || c.StandbyPoll < 0 {
		errs = append(errs, errors.New("outbox.status_interval and outbox.standby_poll must be positive"))
	}
	if c.RecoverMargin < 0 {
		errs = append(errs, fmt.Errorf("outbox.recover_margin: %s: must be positive (0 or unset means 1h)", c.RecoverMargin))
	}
	if c.WALWarnBytes < 0 {
		errs = append(errs, fmt.Errorf("outbox.wal_warn_bytes: %d: must be positive", c.WALWarnBytes))
	}
	if c.Partitions != "" && c.Partitions != "daily" {
		errs = append(errs, fmt.Errorf("outbox.partitions: %q: use daily, or leave it empty for a plain table", c.Partitions))
	}
	seen := map[string]bool{}
	for i, q := range c.ResyncQueries {
		at := fmt.Sprintf("outbox.resync_queries[%d]", i)
		switch {
		case q.AggregateType == "":
			errs = append(errs, fmt.Errorf("%s.aggregate_type: not set: name the aggregate type the query reads", at))
		case seen[q.AggregateType]:
			errs = append(errs, fmt.Errorf("%s.aggregate_type: %q has a query already", at, q.AggregateType))
		}
		seen[q.AggregateType] = true
		if q.EventType == "" {
			errs = append(errs, fmt.Errorf("%s.event_type: not set: give the event type its resync events carry (one the connectors handle as an upsert, e.g. %s.updated)", at, q.AggregateType))
		}
		if !strings.Contains(q.Query, "$1") {
			errs = append(errs, fmt.Errorf("%s.query: %q: give a SELECT with $1 as the tenant id, returning aggregate_id and payload", at, q.Query))
		}
	}
	if c.ResyncChunk < 0 {
		errs = append(errs, fmt.Errorf("outbox.resync_chunk: %d: give 1 or more objects per chunk", c.ResyncChunk))
	}
	if c.PartitionsAhead < 0 {
		errs = append(errs, fmt.Errorf("outbox.partitions_ahead: %d: give 1 or more days", c.PartitionsAhead))
	}
	if c.MessagePrefix == HeartbeatPrefix || c.MessagePrefix == WatermarkPrefix {
		errs = append(errs, fmt.Errorf("outbox.message_prefix: %q is reserved for heartbeats and resync watermarks", c.MessagePrefix))
	}
	return errors.Join(errs...)
}
