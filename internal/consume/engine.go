package consume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/groupcommit"
	"github.com/ferry-cdc/ferry/internal/kafkaconf"
	"github.com/ferry-cdc/ferry/internal/lane"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/retry"
	"github.com/ferry-cdc/ferry/internal/route"
	"github.com/ferry-cdc/ferry/internal/safe"
	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/mapping"
)

// Engine delivers one integration's events.
type Engine struct {
	cfg    Config
	kafka  kafkaconf.Config // brokers, TLS, SASL
	conn   connector.Connector
	prober connector.Prober // nil when the connector cannot probe
	dlog   *delivery.Log
	maps   *mapping.Store // nil: connectors get no mapping store
	log    *slog.Logger
	m      *metrics.Sink

	cl      *kgo.Client
	sched   *lane.Scheduler
	limiter *rate.Limiter
	calls   chan *callJob // to the callers (see caller)
	breaker circuitbreaker.CircuitBreaker[any]

	pausedMu sync.RWMutex
	pauses   map[string]bool // tenant → paused; "" = the whole integration
	disabled map[string]bool // tenants switched off
	// switchVersion is ferry.switch_version when pauses and disabled were
	// read (-1: not yet); pauseLoop re-reads them only when it moved.
	switchVersion atomic.Int64

	// commitMu serialises commits with revocations, so a partition is
	// never committed after it was revoked (another member may own it).
	commitMu sync.Mutex
	owned    map[lane.TP]bool
	paused   map[lane.TP]bool // by back-pressure
	// unloaded are owned partitions whose parked records could not be
	// loaded: they stay paused (whatever the back-pressure says) until
	// loadLoop loads them. The value tells one assignment from the next.
	unloaded map[lane.TP]*struct{}
	// redriving are the operator's redrive requests this engine holds in
	// its lanes, by request (redrive.go); under commitMu.
	redriving map[int64]redriveQueued

	finished atomic.Int64 // deliveries finished, for the live report

	// budget bounds the bytes of the records the lanes hold; while it is
	// spent, or while the integration cannot deliver anything (breaker
	// open, integration paused), every topic's fetching is paused
	// (hold.go). holdMu guards heldFor: why fetching is paused, "" when
	// it is not.
	budget  *lane.Budget
	holdMu  sync.Mutex
	heldFor string

	// Reachability of the delivery log and of Kafka (readiness). While
	// the log is down, lanes wait without touching it or the partner;
	// dbCheck asks the watcher to check it (see health.go).
	dbUp, kafkaUp atomic.Bool
	dbCheck       chan struct{}
	dbErrLog      rate.Sometimes
	// leaseAt is when the last successful lease renewal was sent
	// (report.go).
	leaseAt atomic.Pointer[time.Time]
}

// New returns an engine; cfg must have defaults set and be valid.
// maps may be nil when the connector needs no mappings.
func New(cfg Config, kafka kafkaconf.Config, conn connector.Connector, dlog *delivery.Log, maps *mapping.Store, log *slog.Logger, m *metrics.Sink) *Engine {
	e := &Engine{cfg: cfg, kafka: kafka, conn: conn, dlog: dlog, maps: maps, log: log.With("integration", cfg.Name), m: m,
		owned: map[lane.TP]bool{}, paused: map[lane.TP]bool{}, unloaded: map[lane.TP]*struct{}{}, calls: make(chan *callJob),
		dbCheck: make(chan struct{}, 1), dbErrLog: rate.Sometimes{Interval: 5 * time.Second}}
	e.prober, _ = conn.(connector.Prober)
	e.redriving = map[int64]redriveQueued{}
	e.switchVersion.Store(-1)
	if cfg.RateLimit > 0 {
		e.limiter = rate.NewLimiter(rate.Limit(cfg.RateLimit), max(1, int(cfg.RateLimit/10)))
	}
	e.breaker = circuitbreaker.NewBuilder[any]().
		WithFailureThresholdRatio(cfg.Breaker.Failures, cfg.Breaker.Window).
		WithDelay(cfg.Breaker.OpenFor).
		WithSuccessThreshold(1).
		OnStateChanged(func(ev circuitbreaker.StateChangedEvent) {
			e.log.Warn("circuit breaker "+ev.NewState.String(), "previous", ev.OldState.String())
			open := 0.0
			if ev.NewState != circuitbreaker.ClosedState {
				open = 1
			}
			e.m.BreakerOpen.WithLabelValues(cfg.Name).Set(open)
		}).Build()
	e.sched = lane.New(cfg.Workers, e.deliverItem)
	if cfg.MaxBufferedBytes > 0 {
		e.budget = lane.NewBudget(cfg.MaxBufferedBytes)
		e.sched.SetBudget(e.budget)
	}
	if cfg.ParkAfter > 0 {
		e.sched.SetSpill(cfg.ParkAfter, cfg.MaxBufferedPerPartition, e.spill, e.loadPage)
	}
	return e
}

// Run consumes and delivers until ctx ends; it returns after its
// goroutines end, having committed what was finished.
func (e *Engine) Run(ctx context.Context) error {
	opts := append(e.kafka.Opts(), // brokers, TLS, SASL
		kgo.ConsumerGroup(e.cfg.Group),
		kgo.ConsumeTopics(e.cfg.Topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(e.assigned),
		kgo.OnPartitionsRevoked(e.revoked),
		kgo.OnPartitionsLost(e.lost),
		kgo.ClientID("ferry-sink-"+e.cfg.Name),
		// A resumed partition is fetched only once the fetch in flight
		// returns: a short long-poll keeps lanes from running dry after
		// back-pressure (found by sinkbench: 2.5 s stalls at 5 s).
		kgo.FetchMaxWait(500*time.Millisecond),
	)
	if e.cfg.FetchMaxBytes > 0 {
		// A fetch buffered in the client and one in flight are not yet
		// counted by the budget: together at most about twice this.
		opts = append(opts, kgo.FetchMaxBytes(e.cfg.FetchMaxBytes),
			kgo.BrokerMaxReadBytes(max(100<<20, 2*e.cfg.FetchMaxBytes)))
	}
	if e.cfg.FetchMaxPartitionBytes > 0 {
		opts = append(opts, kgo.FetchMaxPartitionBytes(e.cfg.FetchMaxPartitionBytes))
	}
	if e.cfg.InstanceID != "" {
		// Static membership: a restarted process takes its partitions
		// back at once (docs/operations.md).
		opts = append(opts, kgo.InstanceID(e.cfg.InstanceID))
	}
	if e.cfg.SessionTimeout > 0 {
		opts = append(opts, kgo.SessionTimeout(e.cfg.SessionTimeout))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return retry.Permanent(fmt.Errorf("%s: kafka client: %w", e.cfg.Name, err))
	}
	e.cl = cl
	defer cl.Close()
	defer e.leave(ctx)

	// Kafka or the delivery log down at start is weather: wait for both.
	// Pauses are known before the first delivery, so a paused tenant
	// stays paused across restarts.
	err = e.reconnect("kafka").Run(ctx, func(ctx context.Context, up func()) error {
		if err := e.pingKafka(ctx); err != nil {
			return err
		}
		up()
		return nil
	})
	if err == nil {
		err = e.reconnect("postgres").Run(ctx, func(ctx context.Context, up func()) error {
			if err := e.refresh(ctx); err != nil {
				return err
			}
			if err := e.dlog.SetOutcomeTopic(ctx, e.cfg.Name, e.cfg.Outcomes.TopicOrOff()); err != nil {
				return err
			}
			// The first lease, before any lane starts.
			host, _ := os.Hostname()
			if err := e.report(ctx, host, time.Now(), 0, 0); err != nil {
				return err
			}
			if err := e.reapPreviousRuns(ctx, host); err != nil {
				return err
			}
			up()
			return nil
		})
	}
	if err != nil || ctx.Err() != nil {
		return err
	}
	outcomes, err := e.newOutcomeProducer()
	if err != nil {
		return err
	}
	defer outcomes.Close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return e.relayLoop(gctx, outcomes) })
	// Each worker makes one call at a time: more callers than workers
	// would idle.
	for range min(e.cfg.Concurrency, e.cfg.Workers) {
		g.Go(func() error { e.caller(gctx); return nil })
	}
	g.Go(func() error { e.sched.Run(gctx); return nil })
	g.Go(func() error { return e.commitLoop(gctx) })
	g.Go(func() error { return e.pauseLoop(gctx) })
	g.Go(func() error { return e.reportLoop(gctx) })
	g.Go(func() error { return e.watchDB(gctx) })
	g.Go(func() error { return e.loadLoop(gctx) })
	g.Go(func() error { return e.redriveLoop(gctx) })
	g.Go(func() error { return e.watchKafka(gctx) })
	if e.prober != nil {
		g.Go(func() error { return e.probeLoop(gctx) })
	}
	g.Go(func() error { return e.poll(gctx) })
	err = g.Wait()

	// Leave the group cleanly: the revoke callback commits what finished.
	cl.Close()
	e.dropLease(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func (e *Engine) poll(ctx context.Context) error {
	for {
		fs := e.cl.PollRecords(ctx, 1000)
		if ctx.Err() != nil {
			e.cl.AllowRebalance()
			return ctx.Err()
		}
		var fatal error
		fs.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, kerr.FencedInstanceID) {
				fatal = retry.Permanent(fmt.Errorf("%s: Kafka fenced this process: another process joined group %s with the same instance id %q; "+
					"give every process its own instance_id (FERRY_INSTANCE_ID, --instance-id): %w", e.cfg.Name, e.cfg.Group, e.cfg.InstanceID, err))
				return
			}
			e.log.Warn("fetch failed", "topic", topic, "partition", p, "reason", err.Error())
		})
		if fatal != nil {
			e.cl.AllowRebalance()
			return fatal
		}
		fs.EachPartition(func(ftp kgo.FetchTopicPartition) {
			if len(ftp.Records) == 0 {
				return
			}
			tp := lane.TP{Topic: ftp.Topic, Partition: ftp.Partition}
			items := make([]*lane.Item, len(ftp.Records))
			for i, r := range ftp.Records {
				detach(r)
				items[i] = &lane.Item{Key: string(r.Key), Offset: r.Offset, Value: r, Size: recordSize(r)}
			}
			n := e.sched.Add(tp, items...)
			e.hold()
			if n >= e.cfg.MaxBufferedPerPartition {
				// Memory stays bounded: stop fetching this partition until
				// its lanes drain.
				e.cl.PauseFetchPartitions(map[string][]int32{tp.Topic: {tp.Partition}})
				e.commitMu.Lock()
				e.paused[tp] = true
				e.commitMu.Unlock()
			}
		})
		e.cl.AllowRebalance()
	}
}

// commitLoop commits each owned partition's watermark every
// CommitInterval, resumes paused partitions that drained (checked every
// 100 ms, so lanes do not run dry), and publishes lane gauges.
func (e *Engine) commitLoop(ctx context.Context) error {
	t := time.NewTicker(min(100*time.Millisecond, e.cfg.CommitInterval))
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		e.resume()
		e.hold()
		if time.Since(last) < e.cfg.CommitInterval {
			continue
		}
		last = time.Now()
		e.commit(ctx)
		for state, n := range e.sched.LaneCounts() {
			e.m.Lanes.WithLabelValues(e.cfg.Name, string(state)).Set(float64(n))
		}
	}
}

// resume restarts fetching partitions whose lanes drained below half the
// cap.
func (e *Engine) resume() {
	e.commitMu.Lock()
	defer e.commitMu.Unlock()
	for tp := range e.paused {
		if e.unloaded[tp] != nil {
			continue // paused until its parked records are loaded
		}
		if e.sched.Buffered(tp) < e.cfg.MaxBufferedPerPartition/2 {
			e.cl.ResumeFetchPartitions(map[string][]int32{tp.Topic: {tp.Partition}})
			delete(e.paused, tp)
		}
	}
}

func (e *Engine) commit(ctx context.Context) {
	e.commitMu.Lock()
	defer e.commitMu.Unlock()
	offsets := map[string]map[int32]kgo.EpochOffset{}
	for tp := range e.owned {
		off, ok := e.sched.Committable(tp)
		if !ok {
			continue
		}
		if offsets[tp.Topic] == nil {
			offsets[tp.Topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[tp.Topic][tp.Partition] = kgo.EpochOffset{Epoch: -1, Offset: off}
	}
	if len(offsets) == 0 {
		return
	}
	e.cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
		if err != nil && ctx.Err() == nil {
			e.log.Warn("offset commit failed; will retry", "reason", err.Error())
		}
	})
}

func (e *Engine) assigned(ctx context.Context, _ *kgo.Client, assigned map[string][]int32) {
	e.commitMu.Lock()
	defer e.commitMu.Unlock()
	if e.maps != nil {
		// Another process wrote the new partitions' tenants' mappings
		// while it owned them.
		e.maps.Purge()
	}
	for topic, ps := range assigned {
		for _, p := range ps {
			tp := lane.TP{Topic: topic, Partition: p}
			e.owned[tp] = true
			// Parked records of this partition go first in their lanes,
			// before anything fetched from Kafka.
			parked, err := e.loadParked(ctx, tp)
			if err != nil {
				// Fetching it now would let a parked tenant's newer records
				// overtake its parked ones: it waits for loadLoop.
				e.cl.PauseFetchPartitions(map[string][]int32{topic: {p}})
				e.unloaded[tp] = &struct{}{}
				e.log.Warn("could not load parked records; the partition stays paused until they are loaded",
					"topic", topic, "partition", p, "reason", err.Error())
				continue
			}
			if n := e.addParked(tp, parked); n > 0 {
				e.log.Info("resuming parked records", "partition", p, "parked", n)
			}
		}
	}
	e.log.Info("partitions assigned", "partitions", fmt.Sprint(assigned))
}

// revoked waits for in-flight deliveries of the revoked partitions, then
// commits their watermarks and forgets them, before the group moves them.
func (e *Engine) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	e.release(ctx, cl, revoked, true)
}

// lost forgets partitions without committing: they may be someone else's.
func (e *Engine) lost(ctx context.Context, cl *kgo.Client, lost map[string][]int32) {
	e.release(ctx, cl, lost, false)
}

func (e *Engine) release(ctx context.Context, cl *kgo.Client, parts map[string][]int32, commit bool) {
	var tps []lane.TP
	for topic, ps := range parts {
		for _, p := range ps {
			tps = append(tps, lane.TP{Topic: topic, Partition: p})
		}
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.Timeout+5*time.Second)
	defer cancel()
	final := e.sched.Revoke(wctx, tps)
	e.commitMu.Lock()
	defer e.commitMu.Unlock()
	e.forgetRedrives(tps)
	for _, tp := range tps {
		delete(e.owned, tp)
		delete(e.paused, tp)
		if e.unloaded[tp] != nil {
			delete(e.unloaded, tp)
			e.cl.ResumeFetchPartitions(map[string][]int32{tp.Topic: {tp.Partition}}) // a later assignment starts unpaused
		}
	}
	if !commit || len(final) == 0 {
		return
	}
	offsets := map[string]map[int32]kgo.EpochOffset{}
	for tp, off := range final {
		if offsets[tp.Topic] == nil {
			offsets[tp.Topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[tp.Topic][tp.Partition] = kgo.EpochOffset{Epoch: -1, Offset: off}
	}
	cl.CommitOffsetsSync(wctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			e.log.Warn("commit on revoke failed; the next owner redelivers (deduplicated by the delivery log)", "reason", err.Error())
		}
	})
	e.log.Info("partitions revoked", "partitions", fmt.Sprint(parts))
}

// deliverItem delivers a fetched record, or a parked one (read back from
// Postgres and deleted there once finished).
func (e *Engine) deliverItem(ctx context.Context, tp lane.TP, it *lane.Item) lane.Outcome {
	if !e.dbUp.Load() {
		// The delivery log is down: nothing is attempted, so no attempt
		// is counted and the partner is not called.
		return lane.Outcome{Verdict: lane.Backoff, Delay: time.Second}
	}
	if ref, ok := it.Value.(redriveRef); ok {
		return e.deliverRedrive(ctx, tp, it, ref)
	}
	ref, parked := it.Value.(parkedRef)
	if !parked {
		return e.deliver(ctx, tp, it.Value.(*kgo.Record))
	}
	rec, err := e.unpark(ctx, ref)
	if err != nil {
		return e.dbTrouble(err)
	}
	out := e.deliver(ctx, tp, rec)
	if out.Verdict == lane.Done {
		if err := e.dropParked(ctx, ref); err != nil {
			return e.dbTrouble(err) // delivered; the retry finds it succeeded and drops it again
		}
	}
	return out
}

// pauseLoop keeps the operator pauses (ferry.pause) current.
func (e *Engine) pauseLoop(ctx context.Context) error {
	t := time.NewTicker(e.cfg.ParkRecheck)
	defer t.Stop()
	for {
		if err := e.refreshIfChanged(ctx); err != nil && ctx.Err() == nil {
			// Keeping the last known pauses; the watcher logs the outage.
			e.dbTrouble(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// refresh re-reads the pauses and the tenant switch. A tenant switched
// on or off loses its cached mappings: the rollback (or a resync) that
// goes with the switch may write them from another process.
func (e *Engine) refresh(ctx context.Context) error {
	v, err := e.readSwitchVersion(ctx)
	if err != nil {
		return err
	}
	p, err := e.dlog.Paused(ctx, e.cfg.Name)
	if err != nil {
		return err
	}
	d, err := e.dlog.Disabled(ctx, e.cfg.Name)
	if err != nil {
		return err
	}
	e.pausedMu.Lock()
	defer e.pausedMu.Unlock()
	if e.maps != nil {
		for t := range d {
			if !e.disabled[t] {
				e.maps.PurgeTenant(e.cfg.Name, t)
			}
		}
		for t := range e.disabled {
			if !d[t] {
				e.maps.PurgeTenant(e.cfg.Name, t)
			}
		}
	}
	e.pauses, e.disabled = p, d
	e.switchVersion.Store(v) // read before the tables: a change in between is read again next time
	return nil
}

// refreshIfChanged re-reads the pauses and the tenant switch only when
// ferry.switch_version moved since the last read: one row per
// park_recheck instead of every paused or switched-off tenant.
func (e *Engine) refreshIfChanged(ctx context.Context) error {
	v, err := e.readSwitchVersion(ctx)
	if err != nil {
		return err
	}
	if v == e.switchVersion.Load() {
		return nil
	}
	return e.refresh(ctx)
}

func (e *Engine) readSwitchVersion(ctx context.Context) (int64, error) {
	ctx, cancel := e.dlog.Bound(ctx)
	defer cancel()
	var v int64
	err := e.dlog.Pool().QueryRow(ctx, `SELECT version FROM ferry.switch_version WHERE id = 1`).Scan(&v)
	return v, err
}

func (e *Engine) isPaused(tenant string) bool {
	e.pausedMu.RLock()
	defer e.pausedMu.RUnlock()
	return e.pauses[""] || e.pauses[tenant]
}

func (e *Engine) isDisabled(tenant string) bool {
	e.pausedMu.RLock()
	defer e.pausedMu.RUnlock()
	return e.disabled[tenant]
}

// deliver runs one record through the delivery log and the connector.
func (e *Engine) deliver(ctx context.Context, tp lane.TP, rec *kgo.Record) lane.Outcome {
	ev, resync, bad := decode(rec)
	return e.deliverEvent(ctx, tp, rec, ev, resync, bad)
}

// deliverEvent runs a decoded event (of rec, or a redrive's stored copy)
// through the delivery log and the connector.
func (e *Engine) deliverEvent(ctx context.Context, tp lane.TP, rec *kgo.Record, ev connector.Event, resync, bad string) lane.Outcome {
	src := delivery.Source{Topic: tp.Topic, Partition: tp.Partition, Offset: rec.Offset, Key: string(rec.Key)}
	if resync != "" && resync != e.cfg.Name {
		return lane.Outcome{Verdict: lane.Done} // another integration's resync
	}
	if e.isPaused("") {
		// The whole integration is paused: fetching is paused too (hold),
		// so the lanes wait with what they hold, not parked.
		return lane.Outcome{Verdict: lane.Pause, Delay: e.cfg.ParkRecheck, Shared: true}
	}
	if e.isPaused(ev.TenantID) {
		return lane.Outcome{Verdict: lane.Pause, Delay: e.cfg.ParkRecheck}
	}
	skip := ""
	switch {
	case bad != "":
	case e.isDisabled(ev.TenantID) && resync != "" && e.refresh(ctx) != nil:
		return e.dbTrouble(errors.New("cannot read the tenant switch"))
	case e.isDisabled(ev.TenantID):
		// (A resync event follows an enable this engine may not have seen
		// yet: the switch was just re-read for it.)
		skip = "skipped by switch: tenant " + ev.TenantID + " is disabled for this integration"
	case !e.cfg.handles(ev.EventType):
		skip = "no handler for event type " + ev.EventType + " in this integration"
	}
	// The copy the log keeps for a redrive carries the resync marker, so
	// a redriven resync event is delivered as one (an upsert).
	kept := withResync(ev, resync)
	if skip != "" {
		if err := e.dlog.Ignore(ctx, e.cfg.Name, kept, src, skip); err != nil {
			return e.dbTrouble(err)
		}
		e.m.Deliveries.WithLabelValues(e.cfg.Name, "skipped").Inc()
		return lane.Outcome{Verdict: lane.Done}
	}
	// An open breaker pauses the whole integration: wait without touching
	// the log or burning an attempt. (The permit itself is taken only right
	// before the call, which always records its result: a permit taken and
	// never recorded would leave a half-open breaker waiting forever.)
	// Once the open delay has passed, lanes go on: the breaker turns
	// half-open only when asked for a permit.
	// With a Prober, the probe loop, not a real event, decides when the
	// breaker half-opens.
	// Fetching is paused meanwhile (hold): the lanes wait with what they
	// hold, and the topic's backlog stays in Kafka, not parked.
	if bad == "" && e.breakerHolds() {
		return lane.Outcome{Verdict: lane.Backoff, Delay: max(e.breaker.RemainingDelay(), 100*time.Millisecond), Shared: true}
	}
	if e.leaseAge() > leaseFresh {
		// This process could not renew its lease lately: another one may
		// soon take its deliveries over. Claim nothing meanwhile.
		return e.dbTrouble(errors.New("lease not renewed lately"))
	}
	// The partner ids a create records commit with the delivery's
	// outcome (Finish below), in one transaction; the intent it writes
	// before its call, with the claim, when the connector can name it.
	var maps *mapping.Deferred
	var claim []*groupcommit.Op
	var intentState any
	if e.maps != nil {
		maps = e.maps.Deferred(e.cfg.Name, ev.TenantID)
		if in, ok := e.conn.(connector.Intender); ok && resync == "" && bad == "" {
			first := connector.Request{Integration: e.cfg.Name, Event: ev, Mappings: maps,
				IdempotencyKey: delivery.Attempt{Integration: e.cfg.Name, EventID: ev.ID}.IdempotencyKey()}
			if it, ok := in.Intent(first); ok {
				if o := maps.IntendOnClaim(ev.ID, it); o != nil {
					claim = append(claim, o)
				}
				intentState = it.State
			}
		}
	}
	att, err := e.dlog.Begin(ctx, e.cfg.Name, kept, src, claim...)
	var nc *delivery.ErrNotClaimed
	switch {
	case errors.As(err, &nc) && nc.Held():
		// Another live process holds it (a previous partition owner still
		// finishing it): wait for it to finish, or for its lease to expire.
		e.log.Debug("delivery held by another process; waiting", append(where(ev, tp, rec), "holder", nc.Holder)...)
		return lane.Outcome{Verdict: lane.Backoff, Delay: 500 * time.Millisecond}
	case errors.As(err, &nc) && (nc.State == delivery.Rejected || nc.State == delivery.Compensated || nc.State == delivery.Expired ||
		nc.State == delivery.CompensationFailed) &&
		e.cfg.OnReject == OnRejectPark:
		return lane.Outcome{Verdict: lane.Park, Delay: e.cfg.ParkRecheck}
	case errors.As(err, &nc):
		e.m.Deliveries.WithLabelValues(e.cfg.Name, "duplicate").Inc()
		return lane.Outcome{Verdict: lane.Done} // delivered (or skipped) before: never twice
	case err != nil:
		return e.dbTrouble(err)
	}
	req := connector.Request{Integration: e.cfg.Name, Event: ev, Resync: resync != "", Steps: att.Steps,
		IdempotencyKey: att.IdempotencyKey(), Attempt: att.Number, IntentState: intentState,
		Checkpoint: func(ctx context.Context, s connector.Step) error { return e.dlog.Checkpoint(ctx, att, s) }}
	if maps != nil {
		req.Mappings = maps
	}

	var res connector.Result
	var derr error
	expired := ""
	refused := false // by the breaker: the integration's wait, not the lane's
	if !att.Compensating {
		expired = e.expiry(ev, rec, att, att.Number-1)
	}
	switch {
	case expired != "":
		// Past its deadline before this attempt: not sent.
	case att.Compensating:
		// A rejected multi-step delivery whose undo failed before.
		derr = &connector.Rejection{Reason: "undoing the completed steps after a rejection", Steps: att.Steps}
	case bad != "":
		derr = &connector.Rejection{Reason: "bad input: " + bad}
		e.m.BadRecords.WithLabelValues(e.cfg.Name).Inc()
	case !e.breaker.TryAcquirePermit():
		// Half-open with its probe already out, or opened meanwhile.
		refused = true
		derr = &connector.Failure{Reason: "circuit breaker open: partner calls are paused for this integration",
			RetryAfter: max(e.breaker.RemainingDelay(), 100*time.Millisecond)}
	default:
		res, derr = e.call(ctx, req)
	}
	o := delivery.OutcomeOf(res, derr)
	var unh *connector.Unhandled
	switch {
	case expired != "":
		o = delivery.Outcome{State: delivery.Expired, Reason: expired}
	case errors.As(derr, &unh) && e.cfg.OnUnhandled == OnRejectSkip:
		o.State = delivery.Skipped
	case o.State == delivery.Failed:
		if why := e.expiry(ev, rec, att, att.Number); why != "" {
			o.State, o.Reason = delivery.Expired, why+"; last failure: "+o.Reason
		}
	}
	switch o.State {
	case delivery.Failed:
		_, retryAfter := connector.Classify(derr)
		o.NextRetry = time.Now().Add(e.cfg.Retry.Delay(att.Number, retryAfter))
	case delivery.Waiting:
		o.NextRetry = time.Now().Add(e.cfg.WaitRecheck)
	case delivery.Rejected:
		var rej *connector.Rejection
		if errors.As(derr, &rej) && len(rej.Steps) > 0 {
			e.compensate(ctx, req, rej.Steps, att, &o)
		}
	}
	// The partner answered: its answer is recorded even when the sink is
	// stopping meanwhile, or the next owner would call the partner again
	// for a change it already made (the write then waits only on the
	// log's statement timeout, bounded here too).
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	if ctx.Err() != nil && o.State == delivery.Failed {
		// Stopping, and the call was cut short or failed as the stop
		// came: the delivery stays in flight under this process's lease
		// (which a restart ends at once), and no attempt is burnt. The
		// partner ids of the steps that did complete are kept.
		if maps != nil {
			if err := maps.Flush(fctx); err != nil {
				e.log.Warn("partner ids not recorded while stopping; the next attempt finds them by the intent's key", append(where(ev, tp, rec), "err", err)...)
			}
		}
		return lane.Outcome{Verdict: lane.Backoff, Delay: time.Second}
	}
	var with []*groupcommit.Op
	if maps != nil {
		with = maps.Pending()
		defer maps.Settle()
	}
	if err := e.dlog.Finish(fctx, att, o, with...); err != nil {
		if len(with) == 0 || errors.Is(err, delivery.ErrMovedOn) {
			return e.dbTrouble(err)
		}
		// The outcome and the partner ids were refused together: write
		// the ids on their own, and when the database refuses them,
		// record the attempt as failed, saying so (the next attempt
		// recovers the object by the intent's key, or from the steps).
		if ferr := maps.Flush(fctx); ferr != nil {
			o.State, o.Reason = delivery.Failed, "the partner answered, but its partner ids could not be recorded: "+safe.Text(ferr.Error())
			o.NextRetry = time.Now().Add(e.cfg.Retry.Delay(att.Number, 0))
		}
		if err := e.dlog.Finish(fctx, att, o); err != nil {
			return e.dbTrouble(err)
		}
	}
	e.m.Deliveries.WithLabelValues(e.cfg.Name, string(o.State)).Inc()
	if o.State.Final() {
		e.finished.Add(1)
	}
	switch o.State {
	case delivery.Failed, delivery.Compensating:
		e.log.Warn("delivery "+string(o.State)+"; lane backs off", append(where(ev, tp, rec), "attempt", att.Number,
			"reason", o.Reason, "retry_at", o.NextRetry.Format(time.RFC3339Nano))...)
		return lane.Outcome{Verdict: lane.Backoff, Delay: time.Until(o.NextRetry), Shared: refused && o.State == delivery.Failed}
	case delivery.Waiting:
		e.log.Info("delivery waits for a parent", append(where(ev, tp, rec), "reason", o.Reason)...)
		return lane.Outcome{Verdict: lane.Backoff, Delay: e.cfg.WaitRecheck}
	case delivery.Skipped:
		e.log.Warn("delivery skipped: the connector does not handle it (on_unhandled: skip)", append(where(ev, tp, rec), "reason", o.Reason)...)
		return lane.Outcome{Verdict: lane.Done}
	case delivery.Rejected, delivery.Compensated, delivery.Expired, delivery.CompensationFailed:
		e.log.Error("delivery "+string(o.State), append(where(ev, tp, rec), "reason", o.Reason, "policy", e.cfg.OnReject)...)
		if e.cfg.OnReject == OnRejectSkip {
			return lane.Outcome{Verdict: lane.Done}
		}
		return lane.Outcome{Verdict: lane.Park, Delay: e.cfg.ParkRecheck}
	}
	return lane.Outcome{Verdict: lane.Done}
}

// stopGrace is how long a partner call under way may still take once the
// sink is told to stop (SIGTERM): enough for a partner that answers in
// seconds, within a Kubernetes pod's default 30 s termination grace.
const stopGrace = 5 * time.Second

// finishTimeout bounds the write of a partner's answer to the delivery
// log, which is not cancelled by a stop.
const finishTimeout = 30 * time.Second

// where are the log fields that find an event: its ids, where it is in
// Kafka, and the commit LSN cdc read it at (the integration is on the
// engine's logger).
func where(ev connector.Event, tp lane.TP, rec *kgo.Record) []any {
	return []any{"event_id", ev.ID, "tenant_id", ev.TenantID, "topic", tp.Topic, "partition", tp.Partition,
		"offset", rec.Offset, "lsn", ev.Headers[route.HeaderCommitLSN]}
}

// compensate undoes the steps a rejected delivery completed, when the
// connector can: o becomes compensated, compensating (to be retried)
// when the undo failed, or compensation_failed (final) when the partner
// rejected it; it stays rejected when nothing can be undone.
func (e *Engine) compensate(ctx context.Context, req connector.Request, steps []connector.Step, att delivery.Attempt, o *delivery.Outcome) {
	u, ok := e.conn.(connector.Undoer)
	if !ok {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	calls, err := u.Undo(cctx, req, steps)
	o.Calls = append(o.Calls, calls...)
	switch {
	case errors.Is(err, connector.ErrNothingToUndo):
	case err == nil:
		o.State = delivery.Compensated
		o.Reason += fmt.Sprintf("; compensated: undid %d completed step(s)", len(steps))
	case errors.As(err, new(*connector.Rejection)):
		// The partner refused the undo for good: retrying cannot help.
		o.State = delivery.CompensationFailed
		o.Reason += "; undo rejected, the completed steps stay at the partner: " + err.Error()
	default:
		o.State = delivery.Compensating
		o.Reason += "; undo failed, will retry: " + err.Error()
		o.NextRetry = time.Now().Add(e.cfg.Retry.Delay(att.Number, 0))
	}
}

// call runs the connector behind the rate limit, the concurrency cap and
// the breaker, with the per-delivery timeout.
func (e *Engine) call(ctx context.Context, req connector.Request) (connector.Result, error) {
	if e.limiter != nil {
		if err := e.limiter.Wait(ctx); err != nil {
			return connector.Result{}, &connector.Failure{Reason: "stopping", Err: err}
		}
	}
	j := &callJob{ctx: ctx, req: req, done: make(chan struct{})}
	select {
	case e.calls <- j:
	case <-ctx.Done():
		return connector.Result{}, &connector.Failure{Reason: "stopping", Err: ctx.Err()}
	}
	<-j.done // a caller that took the job always finishes it
	return j.res, j.err
}

// callJob is one connector call, from a lane's worker to a caller.
type callJob struct {
	ctx  context.Context
	req  connector.Request
	res  connector.Result
	err  error
	done chan struct{}
}

// caller makes connector calls, one at a time, until ctx ends; there
// are Concurrency callers (at most Workers), which is the concurrency
// cap. A caller that finishes a call takes the next waiting job at once,
// so the cap stays full. (With a semaphore, a released slot stayed idle
// until the woken waiter got a core: sinkbench kept 252 of 256 calls in
// flight.)
func (e *Engine) caller(ctx context.Context) {
	for {
		select {
		case j := <-e.calls:
			j.res, j.err = e.invoke(j.ctx, j.req)
			close(j.done)
		case <-ctx.Done():
			return
		}
	}
}

// invoke makes one connector call with the integration's timeout, and
// feeds the breaker.
func (e *Engine) invoke(ctx context.Context, req connector.Request) (connector.Result, error) {
	if e.leaseAge()+e.cfg.Timeout > e.leaseTTL() {
		// The call could outlast this process's lease (not renewed: the
		// log is unreachable), and another process could then send the
		// same event at the same time. Not the partner's fault: the
		// breaker is not told.
		return connector.Result{}, &connector.Failure{Reason: "lease on the delivery not renewed (delivery log unreachable): partner not called",
			RetryAfter: time.Second}
	}
	// A call under way when the sink is told to stop may finish, for up
	// to stopGrace: its answer is then recorded, and the next owner does
	// not send the event again. Cut short, it is a lost response, which
	// the idempotency key covers.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.Timeout)
	defer cancel()
	defer context.AfterFunc(ctx, func() { time.AfterFunc(stopGrace, cancel) })()
	start := time.Now()
	res, err := e.conn.Deliver(cctx, req)
	e.m.DeliveryDuration.WithLabelValues(e.cfg.Name).Observe(time.Since(start).Seconds())
	// Rejections mean the partner is up and answering, and a waiting
	// event made no call: only failures count against the breaker.
	if out, _ := connector.Classify(err); out == connector.Failed {
		e.breaker.RecordFailure()
	} else {
		e.breaker.RecordSuccess()
	}
	return res, err
}

// probeLoop, while the breaker is open and its delay has passed, asks the
// connector's cheap health probe instead of sending a real event to a
// partner that is probably still down: an answer half-opens the breaker
// (the next delivery confirms it), no answer keeps it open for another
// delay.
func (e *Engine) probeLoop(ctx context.Context) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var next time.Time // after a failed probe: one open_for later
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if !e.breaker.IsOpen() || e.breaker.RemainingDelay() > 0 || time.Now().Before(next) {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
		err := e.prober.Probe(pctx)
		cancel()
		if err != nil {
			e.log.Info("partner probe failed; breaker stays open", "reason", err.Error())
			next = time.Now().Add(e.cfg.Breaker.OpenFor)
			continue
		}
		e.log.Info("partner probe answered; breaker half-open")
		e.breaker.HalfOpen()
	}
}

// dbTrouble: a delivery-log statement failed. When the delivery moved
// on meanwhile (another process, an operator), the lane looks again
// soon. Otherwise the lane backs off, and the watcher checks whether
// the log is reachable: if not, every lane waits, without touching the
// log or the partner, until it is back (one log line per outage). A
// statement that failed alone (a lock held past the statement timeout)
// delays only its lane.
func (e *Engine) dbTrouble(err error) lane.Outcome {
	if errors.Is(err, delivery.ErrMovedOn) {
		e.log.Warn("delivery moved on since this attempt began; looking again", "reason", err.Error())
		return lane.Outcome{Verdict: lane.Backoff, Delay: 100 * time.Millisecond}
	}
	if e.dbUp.Load() {
		e.dbErrLog.Do(func() {
			e.log.Warn("delivery-log statement failed; the lane backs off (at most one such line per 5s)", "reason", err.Error())
		})
	}
	select {
	case e.dbCheck <- struct{}{}:
	default:
	}
	return lane.Outcome{Verdict: lane.Backoff, Delay: time.Second}
}

// decode reads an outbox event from a record cdc produced. It returns the
// integration the record resyncs (or ""), and why the record is unusable
// (or "").
func decode(r *kgo.Record) (ev connector.Event, resync, bad string) {
	ev = connector.Event{Headers: map[string]string{}}
	for _, h := range r.Headers {
		v := string(h.Value)
		switch h.Key {
		case route.HeaderEventID:
			ev.ID = v
		case route.HeaderTenantID:
			ev.TenantID = v
		case route.HeaderEventType:
			ev.EventType = v
		case route.HeaderAggregateType:
			ev.AggregateType = v
		case route.HeaderAggregateID:
			ev.AggregateID = v
		case route.HeaderResync:
			resync = v
		default:
			ev.Headers[h.Key] = v
		}
	}
	var problems []string
	switch {
	case strings.HasPrefix(ev.Headers[route.HeaderContentType], "application/cloudevents+json"):
		if err := unwrapCloudEvent(&ev, r.Value); err != nil {
			problems = append(problems, err.Error())
		}
	case !json.Valid(r.Value):
		problems = append(problems, "payload is not JSON")
	default:
		ev.Payload = r.Value
	}
	if ev.ID == "" {
		ev.ID = fmt.Sprintf("bad:%s/%d/%d", r.Topic, r.Partition, r.Offset)
		problems = append(problems, "no event_id header")
	}
	if ev.TenantID == "" {
		ev.TenantID = string(r.Key)
	}
	if ev.TenantID == "" {
		problems = append(problems, "no tenant (tenant_id header or key)")
	}
	if len(problems) > 0 {
		return ev, resync, fmt.Sprintf("%v at %s/%d offset %d", problems, r.Topic, r.Partition, r.Offset)
	}
	return ev, resync, ""
}

// withResync returns ev with the resync marker among its headers (a
// copy of them), as the delivery log stores it; ev itself when resync is
// "". deliverRedrive takes the marker back out.
func withResync(ev connector.Event, resync string) connector.Event {
	if resync == "" {
		return ev
	}
	h := make(map[string]string, len(ev.Headers)+1)
	maps.Copy(h, ev.Headers)
	h[route.HeaderResync] = resync
	ev.Headers = h
	return ev
}

// Per-event deadline headers: an outbox row's headers may carry either
// (RFC 3339); cdc copies them to the Kafka record.
const (
	HeaderDeliverBy = "deliver_by"
	HeaderExpiresAt = "expires_at"
)

// expiry says why a delivery is given up after failed attempts (""
// while it may go on): retry.max_attempts, retry.max_age (from the
// event's commit time, the record's timestamp cdc sets), or the event's
// own deadline (deliver_by or expires_at header). After an operator's
// redrive, attempts and age count from the redrive, and the event's own
// deadline no longer applies: the operator chose to deliver it late.
func (e *Engine) expiry(ev connector.Event, rec *kgo.Record, att delivery.Attempt, failed int) string {
	failed, from, redriven := redriveBudget(att, failed, rec.Timestamp)
	if m := e.cfg.Retry.MaxAttempts; m > 0 && failed >= m {
		return fmt.Sprintf("expired: gave up after %d failed attempts (retry.max_attempts)", failed)
	}
	now := time.Now()
	if m := e.cfg.Retry.MaxAge; m > 0 && !from.IsZero() && now.Sub(from) > m {
		if redriven {
			return fmt.Sprintf("expired: %s since the operator's redrive, past retry.max_age %s", now.Sub(from).Round(time.Millisecond), m)
		}
		return fmt.Sprintf("expired: the event is %s old, past retry.max_age %s (committed %s)",
			now.Sub(from).Round(time.Millisecond), m, from.UTC().Format(time.RFC3339Nano))
	}
	for _, h := range []string{HeaderDeliverBy, HeaderExpiresAt} {
		if redriven {
			break
		}
		v := ev.Headers[h]
		if v == "" {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return fmt.Sprintf("expired: the %s header %q is not an RFC 3339 time, so its deadline cannot be kept", h, v)
		}
		if now.After(at) {
			return fmt.Sprintf("expired: past the event's %s deadline %s", h, v)
		}
	}
	return ""
}
