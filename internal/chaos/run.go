package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/time/rate"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// Fault kinds.
const (
	BrokerKill    = "broker-kill"    // devbroker SIGKILL, down a while, restarted on the same data
	ProduceErrors = "produce-errors" // a window of retriable produce errors
	PGFast        = "pg-fast"        // PostgreSQL restart -m fast
	PGImmediate   = "pg-immediate"   // PostgreSQL restart -m immediate (crash recovery)
	CDCKill       = "cdc-kill"       // cdc SIGKILL (the supervisor restarts it)
	SinkKill      = "sink-kill"      // sink SIGKILL (the supervisor restarts it)
)

// Kinds lists every fault kind, in report order.
var Kinds = []string{BrokerKill, ProduceErrors, PGFast, PGImmediate, CDCKill, SinkKill}

const topic = "outbox.order"

// Config sets up a suite.
type Config struct {
	// Bin is the folder holding the cdc, sink and devbroker binaries.
	Bin string
	// Seed is the first run's seed; run i uses Seed+i, so any run can be
	// replayed alone with -seed Seed+i -runs 1.
	Seed uint64
	// Runs is the number of fault-mix iterations. Default 20.
	Runs int
	// Faults per run. Default 8: each kind once, in random order, and two
	// more drawn at random. With fewer than 6, consecutive runs take turns
	// through the kinds.
	Faults int
	// Tenants writing events. Default 100.
	Tenants int
	// Writers are the application's connections. Default 4.
	Writers int
	// Rate is events per second over all writers. Default 800.
	Rate int
	// SyncWrites makes the broker fsync every batch (devbroker --sync-writes).
	SyncWrites bool
	// Warmup is the load before the first fault. Default 2s.
	Warmup time.Duration
	// Gap is the most load between a fault's recovery and the next fault
	// (drawn from Gap/4..Gap). Default 3s.
	Gap time.Duration
	// RecoveryCeiling is the longest wait for a fault's recovery before
	// the next fault. Default 60s.
	RecoveryCeiling time.Duration
	// Drain is the longest wait, after the last fault, for every committed
	// event to reach Kafka and the partner; what has not is counted lost.
	// Default 120s.
	Drain time.Duration
	// Work is the folder for the runs' files (logs, broker data). Default
	// the system's temporary folder. A failed run's folder is kept.
	Work string
	// Keep keeps every run's folder.
	Keep bool
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Runs, 20)
	def(&c.Faults, 8)
	def(&c.Tenants, 100)
	def(&c.Writers, 4)
	def(&c.Rate, 800)
	defd := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defd(&c.Warmup, 2*time.Second)
	defd(&c.Gap, 3*time.Second)
	defd(&c.RecoveryCeiling, 60*time.Second)
	defd(&c.Drain, 120*time.Second)
	if c.Work == "" {
		c.Work = os.TempDir()
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// Validate returns every problem at once.
func (c *Config) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{{"runs", c.Runs}, {"faults", c.Faults}, {"tenants", c.Tenants}, {"writers", c.Writers}, {"rate", c.Rate}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %d: must not be negative", f.name, f.v))
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"warmup", c.Warmup}, {"gap", c.Gap}, {"recovery_ceiling", c.RecoveryCeiling}, {"drain", c.Drain}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %s: must be positive", f.name, f.v))
		}
	}
	if c.Writers > c.Tenants && c.Tenants > 0 {
		errs = append(errs, fmt.Errorf("writers: %d is more than the %d tenants: each writer owns at least one tenant", c.Writers, c.Tenants))
	}
	for _, b := range []string{"cdc", "sink", "devbroker"} {
		if _, err := os.Stat(filepath.Join(c.Bin, b)); err != nil {
			errs = append(errs, fmt.Errorf("bin: %s: %w (run make build, or set -bin)", filepath.Join(c.Bin, b), err))
		}
	}
	return errors.Join(errs...)
}

// Run runs the suite and returns every run's result. An error means the
// harness could not run (a part would not start), not that a guarantee
// failed: that is in the results.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var out []Result
	for i := range cfg.Runs {
		res, err := runOnce(ctx, cfg, i)
		if err != nil {
			return out, fmt.Errorf("run %d (seed %d; files in %s): %w", i, cfg.Seed+uint64(i), res.Dir, err)
		}
		if !cfg.Keep && !res.Failed() {
			if err := os.RemoveAll(res.Dir); err != nil {
				fmt.Fprintf(cfg.Log, "chaos: remove %s: %v\n", res.Dir, err)
			}
			res.Dir = ""
		}
		fmt.Fprintln(cfg.Log, res.Line())
		out = append(out, res)
	}
	return out, nil
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x6368616f73)) }

// schedule draws a run's faults.
func schedule(cfg Config, i int, rng *rand.Rand) []string {
	if cfg.Faults < len(Kinds) {
		var ks []string
		for j := range cfg.Faults {
			ks = append(ks, Kinds[(i*cfg.Faults+j)%len(Kinds)])
		}
		rng.Shuffle(len(ks), func(a, b int) { ks[a], ks[b] = ks[b], ks[a] })
		return ks
	}
	ks := slices.Clone(Kinds)
	for len(ks) < cfg.Faults {
		ks = append(ks, Kinds[rng.IntN(len(Kinds))])
	}
	rng.Shuffle(len(ks), func(a, b int) { ks[a], ks[b] = ks[b], ks[a] })
	return ks
}

// env is one run's parts.
type env struct {
	cfg     Config
	dir     string
	pg      *pgtest.Cluster
	broker  string
	control string
	brokerP *proc
	cdc     *proc
	sink    *proc
	partner *partner
	tr      *tracker
	log     *os.File // the run's own event log
}

func (e *env) note(format string, args ...any) {
	fmt.Fprintf(e.log, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("chaos: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitDial(ctx context.Context, addr string, ceiling time.Duration) error {
	deadline := time.Now().Add(ceiling)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("chaos: nothing listens on %s after %s", addr, ceiling)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func waitReady(ctx context.Context, admin string, ceiling time.Duration) error {
	deadline := time.Now().Add(ceiling)
	for {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("chaos: %s/readyz not ready after %s", admin, ceiling)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func runOnce(ctx context.Context, cfg Config, i int) (res Result, err error) {
	seed := cfg.Seed + uint64(i)
	rng := newRand(seed)
	kinds := schedule(cfg, i, rng)
	res = Result{Run: i, Seed: seed, SyncWrites: cfg.SyncWrites, Faults: map[string]int{}, Exits: map[string]int{}}
	startRun := time.Now()
	dir, err := os.MkdirTemp(cfg.Work, fmt.Sprintf("ferry-chaos-%d-", seed))
	if err != nil {
		return res, fmt.Errorf("chaos: work folder: %w", err)
	}
	res.Dir = dir
	e := &env{cfg: cfg, dir: dir, tr: newTracker()}
	if e.log, err = os.Create(filepath.Join(dir, "chaos.log")); err != nil {
		return res, fmt.Errorf("chaos: %w", err)
	}
	defer e.log.Close()
	e.note("run %d seed %d faults %v", i, seed, kinds)

	// PostgreSQL as operators run it: commits are durable
	// (synchronous_commit on); fsync stays off since every fault here is
	// a process crash, never the machine's.
	pglog, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return res, fmt.Errorf("chaos: %w", err)
	}
	defer pglog.Close()
	e.pg, err = pgtest.Start(ctx, pgtest.Options{Log: pglog, Settings: map[string]string{"synchronous_commit": "on"}})
	if err != nil {
		return res, err
	}
	defer e.pg.Stop()

	addrs := make([]string, 5)
	for j := range addrs {
		if addrs[j], err = freeAddr(); err != nil {
			return res, err
		}
	}
	e.broker, e.control = addrs[0], addrs[1]
	cdcAdmin, sinkAdmin, partnerAddr := addrs[2], addrs[3], addrs[4]
	_, brokerPort, _ := net.SplitHostPort(e.broker) // freeAddr returns host:port
	bargs := []string{"--port", brokerPort, "--data-dir", filepath.Join(dir, "kafka"), "--partitions", "8",
		"--topics", topic + ",ferry.cdc.dead_letter", "--control-addr", e.control}
	if cfg.SyncWrites {
		bargs = append(bargs, "--sync-writes")
	}
	e.brokerP = newProc("devbroker", filepath.Join(cfg.Bin, "devbroker"), filepath.Join(dir, "devbroker.log"), false, nil, bargs...)
	if err := e.brokerP.start(); err != nil {
		return res, err
	}
	defer e.brokerP.stop()
	if err := waitDial(ctx, e.broker, 30*time.Second); err != nil {
		return res, err
	}

	// The partner, in this process so its record is at hand.
	e.partner = &partner{sim: partnersim.New(partnersim.Config{Latency: 2 * time.Millisecond, Jitter: 8 * time.Millisecond, ErrorRate: 0.01, RetryAfter: time.Second, Seed: seed}),
		tr: e.tr, inFlight: map[string]int{}}
	pl, err := net.Listen("tcp", partnerAddr)
	if err != nil {
		return res, fmt.Errorf("chaos: partner: %w", err)
	}
	psrv := &http.Server{Handler: e.partner, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := psrv.Serve(pl); !errors.Is(err, http.ErrServerClosed) {
			e.note("partner server: %v", err)
		}
	}()
	defer psrv.Close() // the partner's record is read before this

	pgURL := e.pg.URL
	e.cdc = newProc("cdc", filepath.Join(cfg.Bin, "cdc"), filepath.Join(dir, "cdc.log"), true, nil,
		"run", "--postgres-url", pgURL, "--brokers", e.broker, "--admin-addr", cdcAdmin, "--log-format", "text")
	sinkYAML := fmt.Sprintf(`postgres_url: %s
kafka:
  brokers: [%s]
admin_addr: %s
log_format: text
integrations:
  - name: partner
    topics: [%s]
    workers: 64
    retry: {initial: 100ms, max: 2s}
    connector:
      type: webhook
      url: http://%s/v1/events
      timeout: 5s
`, pgURL, e.broker, sinkAdmin, topic, partnerAddr)
	sinkConf := filepath.Join(dir, "sink.yaml")
	if err := os.WriteFile(sinkConf, []byte(sinkYAML), 0o644); err != nil {
		return res, fmt.Errorf("chaos: %w", err)
	}
	// A stable instance id: static group membership, where the sink
	// supports it, lets a restarted sink take its old place at once.
	e.sink = newProc("sink", filepath.Join(cfg.Bin, "sink"), filepath.Join(dir, "sink.log"), true,
		[]string{"FERRY_INSTANCE_ID=chaos-sink-1"}, "run", "--config", sinkConf)
	if err := e.cdc.start(); err != nil {
		return res, err
	}
	defer e.cdc.stop()
	if err := waitReady(ctx, cdcAdmin, 60*time.Second); err != nil {
		return res, fmt.Errorf("%w; cdc log: %s", err, lastLine(e.cdc.logPath))
	}
	if err := e.sink.start(); err != nil {
		return res, err
	}
	defer e.sink.stop()
	if err := waitReady(ctx, sinkAdmin, 60*time.Second); err != nil {
		return res, fmt.Errorf("%w; sink log: %s", err, lastLine(e.sink.logPath))
	}

	// The live reader: when each event first reaches Kafka.
	live, err := kgo.NewClient(kgo.SeedBrokers(e.broker), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return res, fmt.Errorf("chaos: kafka client: %w", err)
	}
	liveCtx, stopLive := context.WithCancel(ctx)
	liveDone := make(chan struct{})
	go func() {
		defer close(liveDone)
		for liveCtx.Err() == nil {
			fs := live.PollFetches(liveCtx)
			now := time.Now()
			fs.EachRecord(func(r *kgo.Record) {
				if rec, ok := parseRecord(r); ok {
					e.tr.arrive(atKafka, rec.id, now)
				}
			})
		}
	}()
	defer func() { stopLive(); <-liveDone; live.Close() }()

	// Load for the whole run.
	ld := &load{url: pgURL, tenants: cfg.Tenants, writers: cfg.Writers, tr: e.tr, seed: seed,
		limiter: rate.NewLimiter(rate.Limit(cfg.Rate), max(cfg.Rate/10, 5))}
	loadCtx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() { defer close(loadDone); ld.run(loadCtx) }()
	defer func() { stopLoad(); <-loadDone }()

	sleep(ctx, cfg.Warmup)
	late := false
	var faultEnds []time.Time
	for _, kind := range kinds {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		marks := [2]int{e.tr.mark(atKafka), e.tr.mark(atPartner)}
		began := time.Now()
		end, detail, err := e.inject(ctx, kind, rng)
		if err != nil {
			return res, err
		}
		res.Faults[kind]++
		faultEnds = append(faultEnds, end)
		e.note("fault %s %s: %s", kind, detail, end.Sub(began).Round(time.Millisecond))
		rec := Recovery{Kind: kind, Detail: detail, AfterLate: late}
		deadline := end.Add(cfg.RecoveryCeiling)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if !rec.KafkaRecovered {
				if k, ok := e.tr.firstAfter(atKafka, marks[0], end); ok {
					rec.KafkaRecovered, rec.ToKafkaMS = true, k.Sub(end).Milliseconds()
				}
			}
			if p, ok := e.tr.firstAfter(atPartner, marks[1], end); ok {
				rec.Recovered, rec.ToPartnerMS = true, p.Sub(end).Milliseconds()
				if rec.KafkaRecovered {
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		late = !rec.Recovered || !rec.KafkaRecovered
		e.note("recovery %+v", rec)
		res.Recoveries = append(res.Recoveries, rec)
		sleep(ctx, cfg.Gap/4+time.Duration(rng.Int64N(int64(cfg.Gap*3/4)+1)))
	}
	stopLoad()
	<-loadDone
	res.Transactions, res.FailedTransactions = ld.txs, ld.failed

	// The ground truth, then wait for everything committed to arrive.
	truth, err := readTruth(ctx, pgURL)
	if err != nil {
		return res, err
	}
	ids := make([]string, 0, len(truth))
	for id := range truth {
		ids = append(ids, id)
	}
	drainStart := time.Now()
	lastNote := time.Now()
	for time.Since(drainStart) < cfg.Drain && ctx.Err() == nil {
		mk, mp := e.tr.missing(atKafka, ids), e.tr.missing(atPartner, ids)
		if mk == 0 && mp == 0 {
			break
		}
		if time.Since(lastNote) > 5*time.Second {
			e.note("draining: %d of %d events not yet in Kafka, %d not yet at the partner", mk, len(ids), mp)
			lastNote = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.DrainMS = time.Since(drainStart).Milliseconds()
	e.note("drained in %s", time.Since(drainStart).Round(time.Millisecond))

	e.slowestTenants(&res, faultEnds)
	e.check(ctx, &res, truth)
	for name, p := range map[string]*proc{"cdc": e.cdc, "sink": e.sink} {
		n, _, notes := p.unexpectedExits()
		res.Exits[name] = n
		res.ExitNotes = append(res.ExitNotes, notes...)
	}
	slices.Sort(res.ExitNotes)
	res.Seconds = time.Since(startRun).Seconds()
	return res, nil
}

// slowestTenants fills each recovery's SlowestTenantMS: for every tenant
// that committed an event after the fault ended, when its first such event
// reached the partner; the slowest tenant's time. A fault that stalls a few
// tenants' lanes shows here, while the first-event time shows the rest
// flowing.
func (e *env) slowestTenants(res *Result, ends []time.Time) {
	e.tr.mu.Lock()
	defer e.tr.mu.Unlock()
	for i, end := range ends {
		first := map[string]time.Time{}
		for _, ev := range e.tr.ev {
			if !ev.start.After(end) || !ev.acked {
				continue
			}
			at := ev.first[atPartner]
			if at.IsZero() {
				at = time.Now() // never arrived: as slow as the whole run
			}
			if f, ok := first[ev.tenant]; !ok || at.Before(f) {
				first[ev.tenant] = at
			}
		}
		var worst time.Duration
		var who string
		for t, at := range first {
			if d := at.Sub(end); d > worst {
				worst, who = d, t
			}
		}
		res.Recoveries[i].SlowestTenantMS, res.Recoveries[i].SlowestTenant = worst.Milliseconds(), who
	}
}

// inject applies one fault and returns when it is over (the part is back,
// or the error window closed).
func (e *env) inject(ctx context.Context, kind string, rng *rand.Rand) (time.Time, string, error) {
	down := time.Duration(500+rng.IntN(2000)) * time.Millisecond
	switch kind {
	case BrokerKill:
		e.brokerP.kill()
		sleep(ctx, down)
		if err := e.brokerP.start(); err != nil {
			return time.Time{}, "", err
		}
		if err := waitDial(ctx, e.broker, 30*time.Second); err != nil {
			return time.Time{}, "", fmt.Errorf("%w; broker log: %s", err, lastLine(e.brokerP.logPath))
		}
		return time.Now(), "down " + down.Round(time.Millisecond).String(), nil
	case ProduceErrors:
		name := []string{"NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT", "NOT_ENOUGH_REPLICAS"}[rng.IntN(3)]
		window := time.Duration(1000+rng.IntN(3000)) * time.Millisecond
		if err := e.faultSwitch(http.MethodPost, "/faults/produce?error="+name); err != nil {
			return time.Time{}, "", err
		}
		sleep(ctx, window)
		if err := e.faultSwitch(http.MethodDelete, "/faults"); err != nil {
			return time.Time{}, "", err
		}
		return time.Now(), name + " for " + window.String(), nil
	case PGFast, PGImmediate:
		mode := strings.TrimPrefix(kind, "pg-")
		d := time.Duration(rng.IntN(1500)) * time.Millisecond
		if err := e.pg.Restart(ctx, mode, d); err != nil {
			return time.Time{}, "", err
		}
		return time.Now(), "down " + d.String(), nil
	case CDCKill:
		e.cdc.kill()
		return time.Now(), "", nil
	case SinkKill:
		e.sink.kill()
		return time.Now(), "", nil
	}
	return time.Time{}, "", fmt.Errorf("chaos: unknown fault %q", kind)
}

// faultSwitch calls devbroker's --control-addr switch, retrying while the
// broker is not listening.
func (e *env) faultSwitch(method, path string) error {
	var last error
	for range 50 {
		req, err := http.NewRequest(method, "http://"+e.control+path, nil)
		if err != nil {
			return fmt.Errorf("chaos: fault switch: %w", err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return nil
			}
			err = errors.New(resp.Status)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("chaos: fault switch %s %s: %w", method, path, last)
}

// check fills res from the truth, the final Kafka log and the partner.
func (e *env) check(ctx context.Context, res *Result, truth map[string]truthRow) {
	res.Events = len(truth)
	e.tr.mu.Lock()
	for id, ev := range e.tr.ev {
		if _, ok := truth[id]; !ok && ev.acked {
			res.AckedNotInTable++
		}
	}
	e.tr.mu.Unlock()

	// Kafka: a fresh reader of the whole log.
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	recs, unparsed, err := readLog(rctx, e.broker, topic)
	if err != nil {
		res.Problems = append(res.Problems, err.Error())
	}
	res.Records = len(recs) + unparsed
	kc := newOrderCheck()
	for _, r := range recs {
		kc.add(r, "kafka")
	}
	res.DuplicateRecords, res.Reordered = kc.dups, kc.reorders
	res.Examples = append(res.Examples, kc.examples...)
	var lost []string
	e.tr.mu.Lock()
	for id, t := range truth {
		if !kc.seen[id] {
			res.Lost++
			if ev := e.tr.ev[id]; ev != nil && !ev.first[atKafka].IsZero() {
				res.BrokerLost++
			}
			if len(lost) < 10 {
				lost = append(lost, fmt.Sprintf("kafka: lost tenant %s seq %d (event %s)", t.tenant, t.seq, id))
			}
		}
	}
	e.tr.mu.Unlock()
	slices.Sort(lost)
	res.Examples = append(res.Examples, lost...)

	// The partner.
	applied, replayed, refused := partnerRecords(e.partner.sim)
	pc := newOrderCheck()
	for _, r := range applied {
		pc.add(r, "partner")
	}
	res.PartnerApplied, res.PartnerReplayed, res.PartnerRefused = len(pc.seen), replayed, refused
	res.DoubleEffects, res.PartnerReordered = pc.dups, pc.reorders
	res.Examples = append(res.Examples, pc.examples...)
	if pc.dups > 0 {
		count := map[string]int{}
		for _, r := range applied {
			count[r.id]++
		}
		n := 0
		for id, c := range count {
			if c > 1 && n < 10 {
				res.Examples = append(res.Examples, "partner: event "+id+" applied "+strconv.Itoa(c)+" times")
				n++
			}
		}
	}
	lost = lost[:0]
	for id, t := range truth {
		if !pc.seen[id] {
			res.PartnerLost++
			if len(lost) < 10 {
				lost = append(lost, fmt.Sprintf("partner: never applied tenant %s seq %d (event %s)", t.tenant, t.seq, id))
			}
		}
	}
	slices.Sort(lost)
	res.Examples = append(res.Examples, lost...)
	e.partner.mu.Lock()
	res.ConcurrentCalls = e.partner.concurrent
	res.Examples = append(res.Examples, e.partner.examples...)
	e.partner.mu.Unlock()
}
