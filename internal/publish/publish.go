package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkaconf"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/outbox"
	"github.com/ferry-cdc/ferry/internal/retry"
	"github.com/ferry-cdc/ferry/internal/route"
)

// Bad-event policies.
const (
	OnBadDeadLetter = "dead_letter"
	OnBadStop       = "stop"
)

// Config configures the producer.
type Config struct {
	// Config is the connection: brokers, TLS, SASL (kafkaconf).
	kafkaconf.Config `yaml:",inline"`
	// DeadLetterTopic receives events that cannot be published normally.
	// Default "ferry.cdc.dead_letter".
	DeadLetterTopic string `yaml:"dead_letter_topic"`
	// OnBadEvent is "dead_letter" (default) or "stop" (cdc exits with the
	// event id and reason; the slot does not move past it).
	OnBadEvent string `yaml:"on_bad_event"`
	// MaxBufferedRecords caps records sent and not yet acknowledged; the
	// reader waits when it is reached. Default 20000.
	MaxBufferedRecords int `yaml:"max_buffered_records"`
	// MaxDeadLetterValueBytes is the largest payload copied into a
	// dead-letter record; larger ones are left out (the outbox row keeps
	// them). Default 65536.
	MaxDeadLetterValueBytes int `yaml:"max_dead_letter_value_bytes"`
	// MaxRecordBytes caps a produce batch, and so a record, in bytes
	// before compression. Set it at or below the broker's
	// message.max.bytes (and every topic's max.message.bytes): a larger
	// record then fails alone, client-side, and is dead-lettered, instead
	// of the broker refusing a whole batch of good records with it.
	// Default 1000000 (Kafka's limit is 1048588).
	MaxRecordBytes int `yaml:"max_record_bytes"`
	// ClientID names the producer to the brokers. Default "ferry-cdc".
	ClientID string `yaml:"client_id"`
}

// SetDefaults fills zero fields with their defaults.
func (c *Config) SetDefaults() {
	c.Config.SetDefaults()
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = "ferry.cdc.dead_letter"
	}
	if c.OnBadEvent == "" {
		c.OnBadEvent = OnBadDeadLetter
	}
	if c.MaxBufferedRecords == 0 {
		c.MaxBufferedRecords = 20000
	}
	if c.MaxDeadLetterValueBytes == 0 {
		c.MaxDeadLetterValueBytes = 64 << 10
	}
	if c.MaxRecordBytes == 0 {
		c.MaxRecordBytes = 1000000
	}
	if c.ClientID == "" {
		c.ClientID = "ferry-cdc"
	}
}

// Validate returns every problem with the config at once.
func (c *Config) Validate() error {
	errs := []error{c.Config.Validate()}
	if c.OnBadEvent != OnBadDeadLetter && c.OnBadEvent != OnBadStop {
		errs = append(errs, fmt.Errorf("kafka.on_bad_event: %q: use %q or %q", c.OnBadEvent, OnBadDeadLetter, OnBadStop))
	}
	if err := route.ValidTopic(c.DeadLetterTopic); err != nil {
		errs = append(errs, fmt.Errorf("kafka.dead_letter_topic: %v", err))
	}
	if c.MaxBufferedRecords < 0 {
		errs = append(errs, errors.New("kafka.max_buffered_records: must be positive"))
	}
	if c.MaxRecordBytes < 1024 || c.MaxRecordBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("kafka.max_record_bytes: %d: use a size between 1024 and 1073741824, at most the broker's message.max.bytes", c.MaxRecordBytes))
	}
	return errors.Join(errs...)
}

// Publisher sends outbox transactions to Kafka.
type Publisher struct {
	cfg    Config
	cl     *kgo.Client
	router *route.Router
	log    *slog.Logger
	m      *metrics.CDC
	// Tenants, when set, tracks each tenant's published events.
	Tenants *Tenants
}

// New creates the producer. It does not contact the brokers; call Ping.
func New(cfg Config, router *route.Router, log *slog.Logger, m *metrics.CDC) (*Publisher, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, router: router, log: log, m: m}
	cl, err := kgo.NewClient(append(cfg.Opts(), // brokers, TLS, SASL
		kgo.ClientID(cfg.ClientID),
		kgo.RequiredAcks(kgo.AllISRAcks()),                   // the default, stated: guarantee 1 needs it
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), // murmur2, like the Java client
		kgo.MaxBufferedRecords(cfg.MaxBufferedRecords),
		kgo.ProducerBatchMaxBytes(int32(cfg.MaxRecordBytes)),
		kgo.ProducerLinger(0),
		kgo.AllowAutoTopicCreation(),
		kgo.WithHooks(errorHook{p}),
		kgo.WithLogger(kgoLogger{log}),
	)...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	p.cl = cl
	return p, nil
}

// Ping checks that a broker answers.
func (p *Publisher) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.cfg.Ping(ctx, p.cl); err != nil {
		if retry.IsPermanent(err) { // rejected credentials or certificate: the error says which
			return err
		}
		return fmt.Errorf("cannot reach Kafka brokers %v: %w (are they running? check --brokers / FERRY_KAFKA_BROKERS)", p.cfg.Brokers, err)
	}
	return nil
}

// Client is the underlying client (for the backfill's flush and tests).
func (p *Publisher) Client() *kgo.Client { return p.cl }

// Close flushes nothing and closes the client; unacknowledged records are
// abandoned (the slot was not confirmed past them, so they are resent).
func (p *Publisher) Close() { p.cl.Close() }

// HandleTx starts publishing tx. ack is called exactly once, from a
// producer goroutine: with nil when Kafka has acknowledged every record
// (including dead-letter records), or with the error that stopped it. A
// transaction with no events is acknowledged at once.
func (p *Publisher) HandleTx(ctx context.Context, tx *outbox.Tx, ack func(error)) error {
	st := &txState{p: p, tx: tx, ack: ack}
	st.remaining.Store(int32(len(tx.Events)) + 1) // +1 until every record is handed over
	for i := range tx.Events {
		e := &tx.Events[i]
		reason := e.Invalid
		var rec *kgo.Record
		if reason == "" {
			var err error
			if rec, err = p.router.Record(tx, e); err != nil {
				reason = err.Error()
			}
		}
		if reason != "" {
			if err := st.deadLetter(ctx, e, reason); err != nil {
				return err
			}
			continue
		}
		p.cl.Produce(ctx, rec, st.promise)
	}
	st.finish(nil)
	return ctx.Err()
}

type txState struct {
	p         *Publisher
	tx        *outbox.Tx
	ack       func(error)
	remaining atomic.Int32
	acked     atomic.Bool
	dead      atomic.Int32
}

func (st *txState) finish(err error) {
	if err != nil {
		if st.acked.CompareAndSwap(false, true) {
			st.ack(err)
		}
		return
	}
	if st.remaining.Add(-1) == 0 && st.acked.CompareAndSwap(false, true) {
		st.p.m.Events.WithLabelValues("published").Add(float64(len(st.tx.Events) - int(st.dead.Load())))
		st.p.m.Events.WithLabelValues("dead_lettered").Add(float64(st.dead.Load()))
		if st.p.Tenants != nil {
			st.p.Tenants.observe(st.tx)
		}
		st.ack(nil)
	}
}

func (st *txState) promise(r *kgo.Record, err error) {
	if err == nil {
		st.finish(nil)
		return
	}
	st.p.m.KafkaErrors.Inc()
	e := st.event(r)
	if e != nil && isBadRecord(err) {
		if dlErr := st.deadLetter(context.Background(), e, fmt.Sprintf("kafka refused the record for %s: %v", r.Topic, err)); dlErr != nil {
			st.finish(dlErr)
		}
		return
	}
	st.finish(fmt.Errorf("publish event %s (tenant %q) to topic %s: %w", route.HeaderValue(r, route.HeaderEventID), string(r.Key), r.Topic, err))
}

// deadLetter routes e aside (or fails the transaction under "stop"). It
// takes over the count of e's record.
func (st *txState) deadLetter(ctx context.Context, e *outbox.Event, reason string) error {
	p := st.p
	if p.cfg.OnBadEvent == OnBadStop {
		err := fmt.Errorf("bad outbox event %s (tenant %q, commit LSN %s): %s; the slot stays before it: fix or delete the row and restart, or set on_bad_event: dead_letter",
			e.ID, e.TenantID, st.tx.CommitLSN, reason)
		st.finish(err)
		return nil
	}
	p.log.Error("outbox event routed to the dead-letter topic", "event_id", e.ID, "tenant_id", e.TenantID,
		"lsn", st.tx.CommitLSN.String(), "topic", p.cfg.DeadLetterTopic, "reason", reason)
	st.dead.Add(1)
	rec := p.router.DeadLetter(p.cfg.DeadLetterTopic, st.tx, e, reason, p.cfg.MaxDeadLetterValueBytes)
	p.cl.Produce(ctx, rec, func(r *kgo.Record, err error) {
		if err != nil {
			p.m.KafkaErrors.Inc()
			st.finish(fmt.Errorf("dead-letter event %s (reason: %s) to %s: %w", e.ID, reason, r.Topic, err))
			return
		}
		st.finish(nil)
	})
	return nil
}

func (st *txState) event(r *kgo.Record) *outbox.Event {
	if route.HeaderValue(r, route.HeaderError) != "" {
		return nil // a dead-letter record itself failed: no second detour
	}
	id := route.HeaderValue(r, route.HeaderEventID)
	for i := range st.tx.Events {
		if st.tx.Events[i].ID == id {
			return &st.tx.Events[i]
		}
	}
	return nil
}

// isBadRecord reports errors caused by the record itself, which retrying
// cannot fix.
func isBadRecord(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) ||
		errors.Is(err, kerr.InvalidRecord) || errors.Is(err, kerr.InvalidTopicException) ||
		errors.Is(err, kerr.CorruptMessage)
}

// errorHook counts broker connection failures.
type errorHook struct{ p *Publisher }

func (h errorHook) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		h.p.m.KafkaErrors.Inc()
	}
}

// kgoLogger forwards franz-go's warnings and errors to slog.
type kgoLogger struct{ log *slog.Logger }

func (l kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (l kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lvl := slog.LevelWarn
	if level == kgo.LogLevelError {
		lvl = slog.LevelError
	}
	l.log.Log(context.Background(), lvl, "kafka: "+msg, keyvals...)
}
