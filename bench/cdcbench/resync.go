package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/bench/benchutil"
	"github.com/ferry-cdc/ferry/internal/outbox"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// resyncResult is one resync-under-writes run: the latency of other
// tenants' single-row outbox inserts without a resync (the baseline:
// before it and after it) and during a resync of one tenant with many
// objects.
type resyncResult struct {
	objects              int
	way                  way
	how                  string // the way, with its settings
	baseP50, baseP99     time.Duration
	duringP50, duringP99 time.Duration
	duringMax            time.Duration
	baseN, duringN       int
	resyncSecs           float64 // until cdc confirmed it all
	serverSecs           float64 // the resync command (or the locked transaction)
	published            float64 // resync events cdc published
}

// way is what a resync-under-writes run does between its baselines.
type way int

const (
	watermarks way = iota // cdc resync
	noResync              // nothing: the control
	shareLock             // what resync did before watermarks
)

// resyncUnderWrites fills one tenant ("big") with objects objects, runs
// cdc live, and has 4 clients insert other tenants' events at rate per
// second: for baseline, then while `cdc resync --tenant big` runs, then
// for baseline again (the baseline is both, since this machine's own
// latency drifts over minutes). With
// shareLock it instead runs what resync did before watermarks (one
// transaction: LOCK TABLE outbox IN SHARE MODE, then emit every object's
// latest event) so the two can be compared on the same machine. With
// noResync it runs nothing for control (as long as the resync it stands
// beside took): what p99 ratio a window that long gives with no resync.
func resyncUnderWrites(ctx context.Context, cl *pgtest.Cluster, bin string, objects, rate int, baseline time.Duration, w way, control time.Duration) (resyncResult, error) {
	r := resyncResult{objects: objects, way: w}
	switch {
	case resyncCap > 0:
		r.how = fmt.Sprintf("watermarks, resync_rate %.0f/s", resyncCap)
	case resyncCap < 0:
		r.how = "watermarks, no cap (resync_rate -1)"
	default:
		r.how = fmt.Sprintf("watermarks, default resync_rate (%d/s)", outbox.DefaultResyncRate)
	}
	if resyncChunk > 0 {
		r.how += fmt.Sprintf(", resync_chunk %d", resyncChunk)
	}
	name := "bench_resync"
	switch w {
	case shareLock:
		r.how = "share lock (before)"
		name += "_lock"
	case noResync:
		r.how = "no resync (control)"
		name += "_control"
	}
	url, conn, done, err := scratchDB(ctx, cl, bin, name)
	if err != nil {
		return r, err
	}
	defer done()
	// The big tenant's objects are written before cdc starts: the slot
	// streams them first, and the measurement starts once they are
	// drained.
	if _, err := conn.Exec(ctx, `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload, headers)
		SELECT 'big', 'product', 'sku-' || g, 'product.updated',
			jsonb_build_object('sku', 'sku-' || g, 'name', 'Product number ' || g, 'description', repeat('lorem ipsum ', 20), 'price', g % 997),
			jsonb_build_object('traceparent', '00-' || md5(g::text) || '-' || left(md5('s' || g), 16) || '-01')
		FROM generate_series(1, $1::int) g`, objects); err != nil {
		return r, fmt.Errorf("fill: %w", err)
	}
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE outbox`); err != nil {
		return r, err
	}
	broker, brokerAddr, err := startBroker(bin, "--data-dir", "")
	if err != nil {
		return r, err
	}
	defer stop(broker)
	admin := benchutil.FreeAddr()
	cdc := exec.Command(bin+"/cdc", "run", "--postgres-url", url, "--brokers", brokerAddr, "--admin-addr", admin, "--log-level", "warn", "--slot", name)
	cdc.Stderr = os.Stderr
	if err := cdc.Start(); err != nil {
		return r, err
	}
	defer stop(cdc)
	for benchutil.Metric(admin, `ferry_cdc_events_total{outcome="published"}`) < float64(objects) {
		time.Sleep(100 * time.Millisecond)
	}

	// Writers: other tenants, paced against the wall clock.
	var mu sync.Mutex
	var base, during []time.Duration
	var slow []string // during: when (since the resync began) an insert took over 50 ms, and how long
	var t0 time.Time
	var phase int // 0 baseline, 1 during the resync, 2 baseline again, 3 done
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	errs := make(chan error, 1)
	go func() {
		errs <- pacedInserts(wctx, url, rate, 0, func(d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			switch phase {
			case 0, 2:
				base = append(base, d)
			case 1:
				during = append(during, d)
				if d > 50*time.Millisecond {
					slow = append(slow, fmt.Sprintf("%.1fs:%.0fms", time.Since(t0).Seconds(), ms(d)))
				}
			}
		})
	}()
	select {
	case <-time.After(baseline):
	case err := <-errs:
		return r, err
	}
	mu.Lock()
	phase = 1
	t0 = time.Now()
	mu.Unlock()
	if cdcProfile != "" {
		// Past the resync's set-up: its chunks are streaming.
		go func(file string) { time.Sleep(5 * time.Second); profile(admin, file) }(cdcProfile)
		cdcProfile = ""
	}
	switch w {
	case noResync:
		select {
		case <-time.After(control):
		case err = <-errs:
		}
	case shareLock:
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `LOCK TABLE outbox IN SHARE MODE`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `SELECT count(pg_logical_emit_message(true, 'ferry.outbox', json_build_object(
					'id', x.id || ':resync:0', 'tenant_id', x.tenant_id, 'aggregate_type', x.aggregate_type,
					'aggregate_id', x.aggregate_id, 'event_type', x.event_type, 'payload', x.payload,
					'headers', json_build_object('ferry_resync', 'bench'))::text))
				FROM (SELECT * FROM (SELECT DISTINCT ON (aggregate_type, aggregate_id) id::text, tenant_id, aggregate_type, aggregate_id, event_type, payload, seq
					FROM outbox WHERE tenant_id = 'big' ORDER BY aggregate_type, aggregate_id, seq DESC) l ORDER BY seq) x`)
			return err
		})
	default:
		var out []byte
		args := []string{"resync", "--postgres-url", url, "--integration", "bench", "--tenant", "big"}
		if resyncCap != 0 {
			args = append(args, "--resync-rate="+strconv.FormatFloat(resyncCap, 'f', -1, 64))
		}
		if resyncChunk > 0 {
			args = append(args, "--resync-chunk", strconv.Itoa(resyncChunk))
		}
		out, err = exec.Command(bin+"/cdc", args...).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("cdc resync: %v: %s", err, out)
		}
	}
	if err != nil {
		return r, err
	}
	r.serverSecs = time.Since(t0).Seconds()
	// The resync is over once cdc has confirmed everything written so far.
	var end pglogrepl.LSN
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()`).Scan(&end); err != nil {
		return r, err
	}
	for benchutil.Metric(admin, "ferry_cdc_confirmed_lsn") < float64(end) {
		time.Sleep(20 * time.Millisecond)
	}
	r.resyncSecs = time.Since(t0).Seconds()
	r.published = benchutil.Metric(admin, `ferry_cdc_resync_events_total{outcome="published"}`)
	mu.Lock()
	phase = 2
	mu.Unlock()
	select {
	case <-time.After(baseline):
	case err := <-errs:
		return r, err
	}
	mu.Lock()
	phase = 3
	mu.Unlock()
	stopWriters()
	if err := <-errs; err != nil {
		return r, err
	}
	if len(slow) > 0 {
		// The first ones show when the stalls began; a lock stalls
		// thousands, which say no more.
		shown := slow[:min(len(slow), 40)]
		more := ""
		if len(slow) > len(shown) {
			more = fmt.Sprintf(" … and %d more", len(slow)-len(shown))
		}
		fmt.Fprintf(os.Stderr, "cdcbench: %d inserts over 50 ms during the resync (seconds into it: latency): %s%s\n", len(slow), strings.Join(shown, " "), more)
	}
	r.baseN, r.duringN = len(base), len(during)
	r.baseP50, r.baseP99 = pct(base, 0.50), pct(base, 0.99)
	r.duringP50, r.duringP99 = pct(during, 0.50), pct(during, 0.99)
	if len(during) > 0 {
		r.duringMax = slices.Max(during)
	}
	return r, nil
}

func pct(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func (r resyncResult) String() string {
	return fmt.Sprintf("resync of %d objects (%s) in %.1f s (%.1f s writing it): other tenants' inserts p50 %.2f ms / p99 %.2f ms without it (%d), p50 %.2f ms / p99 %.2f ms / max %.0f ms during (%d): p99 %.2fx the baseline",
		r.objects, r.how, r.resyncSecs, r.serverSecs, ms(r.baseP50), ms(r.baseP99), r.baseN, ms(r.duringP50), ms(r.duringP99), ms(r.duringMax), r.duringN, ms(r.duringP99)/ms(r.baseP99))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// renderResync is the report's section for the resync runs: every run,
// and per way the median of the p99 ratios.
func renderResync(rs []resyncResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Resync while other tenants write (cdc)\n\n")
	fmt.Fprintf(&b, "One tenant with %d objects is resynced (`cdc resync` with its default chunks: 2000 objects, or a twentieth of a second's when capped) while 4 clients insert other tenants' events at %d/s (single-row transactions); the latency of those inserts, client-side, from when each was due (so inserts held up behind a slow one count), for %s before the resync, during it (until cdc confirmed it all) and for as long after it (the baseline is before and after together). The control rows run the same writers with no resync at all, for as long as the resync before them took: the ratio the machine alone gives over a window that long. The share-lock rows run what resync did before watermarks (one transaction: `LOCK TABLE outbox IN SHARE MODE`, then every object's latest event), in turns with the watermark runs. Target (issue 14): p99 during at most 2x the baseline.\n\n",
		rs[0].objects, resyncRate, resyncBaseline)
	b.WriteString("| resync | took (writing it) | inserts before and after: p50 / p99 | during: p50 / p99 / max | p99 during / before |\n|---|---|---|---|---|\n")
	ratios := map[way][]float64{}
	hows := map[way]string{}
	for _, r := range rs {
		ratio := ms(r.duringP99) / ms(r.baseP99)
		ratios[r.way] = append(ratios[r.way], ratio)
		hows[r.way] = r.how
		fmt.Fprintf(&b, "| %s | %.1f s (%.1f s) | %.2f / %.2f ms (%d) | %.2f / %.2f / %.0f ms (%d) | %.2fx |\n",
			r.how, r.resyncSecs, r.serverSecs, ms(r.baseP50), ms(r.baseP99), r.baseN, ms(r.duringP50), ms(r.duringP99), ms(r.duringMax), r.duringN, ratio)
	}
	b.WriteString("\n")
	for _, w := range []way{watermarks, noResync, shareLock} {
		if vs := ratios[w]; len(vs) > 0 {
			var each []string
			for _, v := range vs {
				each = append(each, fmt.Sprintf("%.2f", v))
			}
			fmt.Fprintf(&b, "- %s: median p99 ratio %.2fx (runs: %s)\n", hows[w], benchutil.Median(vs), strings.Join(each, ", "))
		}
	}
	return b.String()
}
