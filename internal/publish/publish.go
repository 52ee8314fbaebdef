package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"golang.org/x/sync/semaphore"

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
	// MaxBufferedBytes caps the bytes (key, value and headers) of records
	// sent and not yet acknowledged; the reader waits when it is reached.
	// With MaxBufferedRecords it bounds cdc's memory whatever the size of
	// a transaction or of its payloads (a record larger than the cap is
	// sent alone). Default 33554432 (32 MiB).
	MaxBufferedBytes int64 `yaml:"max_buffered_bytes"`
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
	if c.MaxBufferedBytes == 0 {
		c.MaxBufferedBytes = 32 << 20
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
	if c.MaxBufferedBytes < 0 {
		errs = append(errs, errors.New("kafka.max_buffered_bytes: must be positive"))
	}
	if c.MaxRecordBytes < 1024 || c.MaxRecordBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("kafka.max_record_bytes: %d: use a size between 1024 and 1073741824, at most the broker's message.max.bytes", c.MaxRecordBytes))
	}
	return errors.Join(errs...)
}

// Publisher sends outbox transactions to Kafka through sessions: each
// replication session of the reader publishes through a Session of its
// own, with a Kafka client of its own (see Open). It is safe for
// concurrent use.
type Publisher struct {
	cfg    Config
	opts   []kgo.Opt // the client options every session starts from
	router *route.Router
	log    *slog.Logger
	m      *metrics.CDC
	// published and deadLettered are m.Events' two series, looked up
	// once (a lookup per transaction hashed the label each time).
	published, deadLettered prometheus.Counter
	// Tenants, when set, tracks each tenant's published events.
	Tenants *Tenants

	kafkaDown atomic.Bool // a broker connection failed and none succeeded since

	// batchMax caps a produce batch, and so a record: max_record_bytes,
	// or the broker's message.max.bytes when that is lower (learnt by
	// the first session, see limitBatches).
	batchMax     atomic.Int32
	limitsLogged atomic.Bool
}

// New checks the config and prepares the producer options. It does not
// contact the brokers; Open does.
func New(cfg Config, router *route.Router, log *slog.Logger, m *metrics.CDC) (*Publisher, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, router: router, log: log, m: m,
		published: m.Events.WithLabelValues("published"), deadLettered: m.Events.WithLabelValues("dead_lettered")}
	p.batchMax.Store(int32(cfg.MaxRecordBytes))
	p.opts = append(cfg.Opts(), // brokers, TLS, SASL
		kgo.ClientID(cfg.ClientID),
		kgo.RequiredAcks(kgo.AllISRAcks()),                   // the default, stated: guarantee 1 needs it
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), // murmur2, like the Java client
		// The session bounds records in flight itself (HandleTx), so
		// franz-go never blocks Produce: its blocking would tie the
		// records' context to the caller's. Dead-letter records produced
		// from callbacks (at most one per record) take the other half.
		kgo.MaxBufferedRecords(2*cfg.MaxBufferedRecords),
		kgo.ProducerLinger(0),
		kgo.AllowAutoTopicCreation(),
		// A record fails only for a reason no retry fixes, or when its
		// session ends: never because a broker was away for a while or
		// forgot a topic for a moment (docs/internals.md, Ordering under
		// faults).
		kgo.RecordRetries(math.MaxInt64),
		kgo.RecordDeliveryTimeout(0),
		kgo.UnknownTopicRetries(-1),
	)
	return p, nil
}

// KafkaUp reports whether the last connection attempt to a broker
// succeeded (true before the first attempt).
func (p *Publisher) KafkaUp() bool { return !p.kafkaDown.Load() }

// kafkaState records a broker connection attempt's outcome: one log line
// per change, a reconnect counted per failed attempt.
func (p *Publisher) kafkaState(err error) {
	if err == nil {
		if p.kafkaDown.CompareAndSwap(true, false) {
			p.log.Info("kafka is back")
		}
		return
	}
	p.m.KafkaErrors.Inc()
	p.m.Reconnects.WithLabelValues("kafka").Inc()
	if p.kafkaDown.CompareAndSwap(false, true) {
		p.log.Warn("kafka unreachable; retrying, records wait in memory (readyz is false meanwhile)", "brokers", strings.Join(p.cfg.Brokers, ","), "reason", err.Error())
	}
}

// Open starts a publishing session: a new Kafka client whose records
// can only be written in the order they were produced (see Session). It
// returns an error when no broker answers within 10 seconds; the caller
// retries.
func (p *Publisher) Open(ctx context.Context) (outbox.Session, error) {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := p.open(pctx)
	if err == nil && p.limitBatches(pctx, s.cl) {
		// The broker takes less than the client was built for: a new
		// client, before any record.
		s.cancel()
		s.cl.Close()
		s, err = p.open(pctx)
	}
	if err != nil {
		return nil, err
	}
	s.watched = make(chan struct{})
	go s.watch()
	return s, nil
}

// open makes a session's client and pings the brokers with it.
func (p *Publisher) open(ctx context.Context) (*Session, error) {
	s := &Session{p: p, sem: semaphore.NewWeighted(int64(p.cfg.MaxBufferedRecords)), bytes: semaphore.NewWeighted(p.cfg.MaxBufferedBytes), batchMax: int(p.batchMax.Load())}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	cl, err := kgo.NewClient(append(p.opts, kgo.ProducerBatchMaxBytes(int32(s.batchMax)),
		kgo.WithHooks(sessionHook{s}), kgo.WithLogger(kgoLogger{p, s}))...)
	if err != nil {
		s.cancel()
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	s.cl = cl
	if err := p.cfg.Ping(ctx, cl); err != nil {
		s.cancel()
		cl.Close()
		if retry.IsPermanent(err) { // rejected credentials or certificate: the error says which
			return nil, err
		}
		return nil, fmt.Errorf("cannot reach Kafka brokers %v: %w (are they running? check --brokers / FERRY_KAFKA_BROKERS)", p.cfg.Brokers, err)
	}
	return s, nil
}

// limitBatches asks a broker for its message.max.bytes, the largest
// batch it takes, and lowers batchMax to it when max_record_bytes is
// higher. It reports whether batchMax changed. Without the limit, a
// batch of small records, or one record, between the two sizes would
// be refused by the broker, and the refusal fails every record buffered
// for that partition, innocent ones too. A broker that does not say
// (no DescribeConfigs permission) is trusted to match max_record_bytes,
// as the setting's documentation asks.
func (p *Publisher) limitBatches(ctx context.Context, cl *kgo.Client) bool {
	adm := kadm.NewClient(cl)
	brokers, err := adm.ListBrokers(ctx)
	if err != nil || len(brokers) == 0 {
		return false
	}
	rcs, err := adm.DescribeBrokerConfigs(ctx, brokers[0].NodeID)
	if err != nil || len(rcs) == 0 {
		if !p.limitsLogged.Swap(true) {
			p.log.Info("could not read the broker's message.max.bytes; kafka.max_record_bytes must not exceed it", "reason", fmt.Sprint(err))
		}
		return false
	}
	limit := 0
	for _, c := range rcs[0].Configs {
		if c.Key == "message.max.bytes" && c.Value != nil {
			limit, _ = strconv.Atoi(*c.Value)
		}
	}
	if limit <= 0 || limit >= int(p.batchMax.Load()) {
		return false
	}
	p.batchMax.Store(int32(limit))
	p.log.Warn("the broker's message.max.bytes is below kafka.max_record_bytes: batches are capped at the broker's limit, and a record over it goes to the dead-letter topic (on_bad_event)",
		"message_max_bytes", limit, "max_record_bytes", p.cfg.MaxRecordBytes)
	return true
}

// watch pings the brokers once a second while Kafka is known to be
// unreachable, so readiness comes back when they do even if no record is
// waiting. It ends when the session does.
func (s *Session) watch() {
	defer close(s.watched)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if s.p.kafkaDown.Load() {
			ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
			_ = s.cl.Ping(ctx) // its outcome reaches kafkaState through the connect hook
			cancel()
		}
	}
}

// Session publishes one replication session's transactions. Within a
// session, once any record has failed, no record produced after it can
// be written to Kafka (the failure latch): Ferry's restart resends from
// the slot's confirmed position, so a later record written after an
// earlier one failed would reach consumers before the resent earlier
// one. docs/internals.md ("Ordering under faults") gives the argument
// from franz-go's source. HandleTx is called from one goroutine; the
// promise callbacks run on franz-go's.
type Session struct {
	p      *Publisher
	cl     *kgo.Client
	ctx    context.Context // every record's context: cancelled only by fail
	cancel context.CancelFunc
	sem    *semaphore.Weighted // records handed to franz-go and not yet finished
	bytes  *semaphore.Weighted // their bytes (recordBytes)
	wg     sync.WaitGroup      // likewise, for Close
	cur    *txState            // the transaction begun and not yet committed (the reader's goroutine)

	mu     sync.Mutex
	err    error       // the first failure: the latch
	failed atomic.Bool // err != nil, read before every Produce
	inits  atomic.Int32
	// batchMax is the client's ProducerBatchMaxBytes.
	batchMax int

	watched chan struct{} // closed when watch has returned
}

// errSessionEnded is the latch's error when the session was closed.
var errSessionEnded = errors.New("publishing session ended")

// fail sets the latch (first error wins), then cancels the records'
// context, so franz-go fails every record it has not yet written.
func (s *Session) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
		s.failed.Store(true)
	}
	s.mu.Unlock()
	s.cancel()
}

// Err returns the error that ended the session, or nil.
func (s *Session) Err() error {
	if !s.failed.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// recordBytes is what a record weighs against max_buffered_bytes: its
// key, value and headers (capped at the limit, so that a larger record
// is sent alone rather than never).
func (s *Session) recordBytes(r *kgo.Record) int64 {
	return min(int64(recordSize(r)), s.p.cfg.MaxBufferedBytes)
}

// produce hands rec to franz-go unless the latch is set. done is called
// exactly once.
func (s *Session) produce(ctx context.Context, rec *kgo.Record, done func(*kgo.Record, error)) error {
	if err := s.sem.Acquire(ctx, 1); err != nil {
		return err
	}
	size := s.recordBytes(rec)
	if err := s.bytes.Acquire(ctx, size); err != nil {
		s.sem.Release(1)
		return err
	}
	s.wg.Add(1)
	// done runs before the record's room is released: a dead-letter
	// record it produces is counted before this one is released, so
	// Close's wait cannot end early.
	if err := s.Err(); err != nil {
		done(rec, fmt.Errorf("not sent: %w", err))
		s.release(size)
		return nil
	}
	s.cl.Produce(s.ctx, rec, func(r *kgo.Record, err error) {
		if err != nil && !s.badRecord(r, err) {
			// Set before the transaction hears of it, and before any
			// later record of this session can be produced.
			s.fail(err)
		}
		done(r, err)
		s.release(size)
	})
	return nil
}

// release gives back the room of a record produce took, once its
// callback ran.
func (s *Session) release(size int64) {
	s.bytes.Release(size)
	s.sem.Release(1)
	s.wg.Done()
}

// produceNow is produce for a promise callback: it does not wait for
// room among the records in flight.
func (s *Session) produceNow(rec *kgo.Record, done func(*kgo.Record, error)) {
	s.wg.Add(1)
	if err := s.Err(); err != nil {
		s.wg.Done()
		done(rec, fmt.Errorf("not sent: %w", err))
		return
	}
	s.cl.Produce(s.ctx, rec, func(r *kgo.Record, err error) {
		if err != nil && !s.badRecord(r, err) {
			s.fail(err)
		}
		done(r, err)
		s.wg.Done()
	})
}

// closeWait bounds how long Close waits for records already sent to be
// answered before it closes the client.
const closeWait = 10 * time.Second

// Close ends the session: it sets the latch (nothing more is produced;
// records not yet written fail), waits up to 10 seconds for records
// already written to be answered, closes the client, and returns once
// every record's callback has run, so the next session never overlaps
// this one's callbacks.
func (s *Session) Close() {
	// A transaction begun and never committed is acked first, with the
	// session's end: the latch cancels its records in flight, whose
	// callbacks would otherwise ack it with "context canceled".
	if s.cur != nil {
		s.cur.finish(fmt.Errorf("transaction at %s not received whole: %w", s.cur.tx.CommitLSN, errSessionEnded))
		s.cur = nil
	}
	s.fail(errSessionEnded)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	wait := closeWait
	if s.p.kafkaDown.Load() {
		wait = 0 // nothing will answer
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.p.log.Warn("records still unanswered when the publishing session ended; abandoning them (the next session resends them)")
	}
	<-s.watched
	s.cl.Close() // fails what is left
	<-done
}

// sessionHook watches a session's client: broker reachability, and every
// producer-ID request after the first, which sets the latch.
type sessionHook struct{ s *Session }

func (h sessionHook) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	h.s.p.kafkaState(err)
}

// OnBrokerWrite runs on the connection's goroutine after a request is
// written and before its response is read. franz-go loads a new producer
// ID (or epoch) only after a record failed or the broker lost the
// producer's state; records under the new epoch could then be written
// after an earlier record that failed. Setting the latch here, before
// the new ID is known, means every batch of the new epoch is checked
// against a cancelled context before it is sent, and fails.
func (h sessionHook) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, written int, _, _ time.Duration, _ error) {
	if key == int16(kmsg.InitProducerID) && written > 0 && h.s.inits.Add(1) > 1 {
		h.s.fail(errProducerReset)
	}
}

var errProducerReset = errors.New("the Kafka producer ID was reset (a record failed, or the broker lost the producer's state): the session ends so that no later record can overtake an earlier one")

// HandleTx publishes a whole transaction: Begin, Publish for each of
// tx.Events, Commit. ack is called exactly once, from a producer
// goroutine: with nil when Kafka has acknowledged every record
// (including dead-letter records), or with the error that stopped it. A
// transaction with no events is acknowledged at once. It blocks while
// max_buffered_records or max_buffered_bytes are in flight; ctx ends
// that wait (records already handed over are not cancelled by ctx: Close
// ends them).
func (s *Session) HandleTx(ctx context.Context, tx *outbox.Tx, ack func(error)) error {
	s.Begin(tx, ack)
	for i := range tx.Events {
		if err := s.Publish(ctx, &tx.Events[i]); err != nil {
			return err
		}
	}
	s.Commit()
	return nil
}

// Begin starts a transaction whose events follow through Publish, as
// the reader receives them (see outbox.Session). Only its header is
// kept; events are held only while their records are in flight.
func (s *Session) Begin(tx *outbox.Tx, ack func(error)) {
	st := &txState{s: s, tx: tx, ack: ack}
	st.remaining.Store(1) // until Commit
	s.cur = st
}

// Publish starts publishing one event of the transaction begun. It
// blocks while max_buffered_records or max_buffered_bytes are in flight.
// A returned error also fails the transaction.
func (s *Session) Publish(ctx context.Context, e *outbox.Event) error {
	st := s.cur
	st.remaining.Add(1)
	st.events++
	reason := e.Invalid
	var rec *kgo.Record
	if reason == "" {
		var err error
		if rec, err = s.p.router.Record(st.tx, e); err != nil {
			reason = err.Error()
		}
	}
	if reason != "" {
		if err := st.deadLetter(ctx, e, reason); err != nil {
			st.finish(err)
			return err
		}
		return nil
	}
	if err := s.produce(ctx, rec, func(r *kgo.Record, err error) { st.promise(e, r, err) }); err != nil {
		st.finish(err)
		return err
	}
	return nil
}

// Commit ends the transaction begun: its ack follows once every record
// is acknowledged.
func (s *Session) Commit() {
	st := s.cur
	s.cur = nil
	st.finish(nil)
}

// txState is one transaction in flight: its header, how many of its
// records are not yet acknowledged (plus one until Commit), and its ack.
type txState struct {
	s         *Session
	tx        *outbox.Tx
	ack       func(error)
	remaining atomic.Int64
	acked     atomic.Bool
	events    int64 // events handed over (the reader's goroutine; read after Commit)
	dead      atomic.Int64
}

func (st *txState) finish(err error) {
	if err != nil {
		if st.acked.CompareAndSwap(false, true) {
			st.ack(err)
		}
		return
	}
	if st.remaining.Add(-1) == 0 && st.acked.CompareAndSwap(false, true) {
		p := st.s.p
		dead := st.dead.Load()
		p.published.Add(float64(st.events - dead))
		if dead > 0 {
			p.deadLettered.Add(float64(dead))
		}
		st.ack(nil)
	}
}

// promise is the callback of e's record.
func (st *txState) promise(e *outbox.Event, r *kgo.Record, err error) {
	if err == nil {
		if t := st.s.p.Tenants; t != nil {
			t.observe(e.TenantID, st.tx.CommitTime)
		}
		st.finish(nil)
		return
	}
	st.s.p.m.KafkaErrors.Inc()
	if st.s.badRecord(r, err) { // (a dead-letter record's own failure goes to its done, not here: no second detour)
		// On franz-go's promise goroutine: the dead-letter record must not
		// wait for room (Produce from a promise must not block).
		if dlErr := st.deadLetter(nil, e, fmt.Sprintf("kafka refused the record for %s: %v", r.Topic, err)); dlErr != nil {
			st.finish(dlErr)
		}
		return
	}
	if errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) {
		// The broker refused a batch that the client and the broker's
		// message.max.bytes allow: the topic's own max.message.bytes is
		// lower. Which record is too large is unknown (every record
		// buffered for the partition fails), and a restart would send the
		// same batch: stop, with the slot before it.
		err = retry.Permanent(fmt.Errorf("%w: the broker refused a batch of at most %d bytes for topic %s as too large: the topic's max.message.bytes is lower than kafka.max_record_bytes; raise the topic's max.message.bytes or lower kafka.max_record_bytes to it, and restart (nothing was skipped)",
			err, st.s.batchMax, r.Topic))
	}
	st.finish(fmt.Errorf("publish event %s (tenant %q) to topic %s: %w", route.HeaderValue(r, route.HeaderEventID), string(r.Key), r.Topic, err))
}

// deadLetter routes e aside (or fails the transaction under "stop"). It
// takes over the count of e's record. A nil ctx (from a promise) does
// not wait for room among the records in flight.
func (st *txState) deadLetter(ctx context.Context, e *outbox.Event, reason string) error {
	p := st.s.p
	if p.cfg.OnBadEvent == OnBadStop {
		// A restart reads the same row again: exit instead.
		err := retry.Permanent(fmt.Errorf("bad outbox event %s (tenant %q, commit LSN %s): %s; the slot stays before it: fix or delete the row and restart, or set on_bad_event: dead_letter",
			e.ID, e.TenantID, st.tx.CommitLSN, reason))
		st.finish(err)
		return nil
	}
	p.log.Error("outbox event routed to the dead-letter topic", "event_id", e.ID, "tenant_id", e.TenantID,
		"lsn", st.tx.CommitLSN.String(), "topic", p.cfg.DeadLetterTopic, "reason", reason)
	st.dead.Add(1)
	rec := p.router.DeadLetter(p.cfg.DeadLetterTopic, st.tx, e, reason, p.cfg.MaxDeadLetterValueBytes)
	if recordSize(rec)+batchOverhead > st.s.batchMax {
		rec.Value = nil // the payload copy would not fit the broker's limit; the row still has it
	}
	done := func(r *kgo.Record, err error) {
		if err != nil {
			p.m.KafkaErrors.Inc()
			st.finish(fmt.Errorf("dead-letter event %s (reason: %s) to %s: %w", e.ID, reason, r.Topic, err))
			return
		}
		st.finish(nil)
	}
	if ctx == nil {
		st.s.produceNow(rec, done)
		return nil
	}
	return st.s.produce(ctx, rec, done)
}

// badRecord reports whether r failed for a reason of its own, which no
// retry fixes. A record refused as too large is the cause only when it
// alone does not fit in a batch (franz-go refuses it before sending,
// and fails nothing else); a batch the broker refused as too large fails
// every record of the partition, innocent ones too (see promise).
func (s *Session) badRecord(r *kgo.Record, err error) bool {
	if errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) {
		return recordSize(r)+batchOverhead > s.batchMax
	}
	return errors.Is(err, kerr.InvalidRecord) || errors.Is(err, kerr.InvalidTopicException) ||
		errors.Is(err, kerr.CorruptMessage)
}

// batchOverhead bounds the bytes a batch of one record adds to the
// record's key, value and headers: the batch header (61 bytes) and the
// record's varints.
const batchOverhead = 128

// recordSize is about what franz-go counts as a record's size: key,
// value, and header keys and values (and their varints).
func recordSize(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value) + 10 // and each header's varints
	}
	return n
}

// kgoLogger forwards franz-go's warnings and errors to slog. While Kafka
// is known to be unreachable they go to debug: the outage was logged once.
//
// It also closes the one window the latch cannot close from outside
// franz-go: when the broker rejects a batch, franz-go fails every record
// buffered for that partition and rewinds its sequence without a new
// producer epoch, and our callbacks hear of it only later, on another
// goroutine; a record produced meanwhile would start a new batch that
// could be written ahead of the resent failed one. franz-go v1.22.2 logs
// rewindMsg (at debug, under the partition's lock) in that path before
// any later record can be buffered; ending the session right there
// cancels the records' context, so every batch not yet written fails.
// The same message marks retries (a dropped connection, a retriable
// error): those end the session too, which costs resends, not order.
// TestSessionWritesNothingAfterAFailedRecord fails if a franz-go upgrade
// renames the message.
type kgoLogger struct {
	p *Publisher
	s *Session
}

// rewindMsg is franz-go's (recBuf).resetBatchDrainIdx log message.
const rewindMsg = "rewinding produce sequence to resend pending batches"

func (l kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelDebug }

func (l kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	if level == kgo.LogLevelDebug {
		if msg == rewindMsg && l.s != nil {
			l.s.fail(errRewound)
		}
		return
	}
	if level == kgo.LogLevelInfo {
		return
	}
	lvl := slog.LevelWarn
	switch {
	case l.p.kafkaDown.Load():
		lvl = slog.LevelDebug
	case level == kgo.LogLevelError:
		lvl = slog.LevelError
	}
	l.p.log.Log(context.Background(), lvl, "kafka: "+msg, keyvals...)
}

var errRewound = errors.New("kafka refused or lost a produce request, and franz-go rewound the partition's sequence: the session ends so that no later record can overtake an earlier one")
