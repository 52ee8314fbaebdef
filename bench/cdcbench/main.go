// Command cdcbench measures cdc (make bench): how fast the real cdc binary
// drains a backlog of outbox rows (headers column filled with trace
// context) into a Kafka-protocol broker (devbroker, a separate process,
// a fresh data folder per drain) in two shapes — 1,000-row transactions
// and single-row transactions — and two tenant counts, against two
// references measured on the same backlog in the same run: pg_recvlogical
// (pgoutput to a pipe, timed like cdc from its first event to its last,
// taking turns with cdc at going first) and the server-side decoding
// ceiling (pg_logical_slot_peek_binary_changes with pgoutput, timed inside
// Postgres, no client); its commit-to-Kafka-ack latency at a steady rate;
// its peak RSS; and one transaction of 1,000,000 rows (-big-tx), which cdc
// streams as it is decoded, to show that its memory stays flat. It writes
// a Markdown report.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/bench/benchutil"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// The resync-under-writes run's settings (flags).
var (
	resyncObjects, resyncRate int
	resyncBaseline            time.Duration
	resyncCap                 float64
	resyncChunk               int
	pgLog                     string
	resyncLockRef             bool
	resyncControl             bool
)

// resyncRuns runs the resync-under-writes run repeat times with
// watermarks and, in turns with it, as references: the same run with no
// resync at all for as long as the resync took (the control: what the
// machine alone does to a p99 over a window that long), and the way
// resync used to lock the outbox, so each set sees the same machine.
func resyncRuns(ctx context.Context, cl *pgtest.Cluster, bin string, repeat int) ([]resyncResult, error) {
	var rs []resyncResult
	run := func(w way, control time.Duration) (resyncResult, error) {
		r, err := resyncUnderWrites(ctx, cl, bin, resyncObjects, resyncRate, resyncBaseline, w, control)
		if err != nil {
			return r, fmt.Errorf("resync under writes (%s): %w", r.how, err)
		}
		fmt.Fprintln(os.Stderr, r)
		rs = append(rs, r)
		return r, nil
	}
	for range repeat {
		r, err := run(watermarks, 0)
		if err != nil {
			return nil, err
		}
		if resyncControl {
			if _, err := run(noResync, time.Duration(r.resyncSecs*float64(time.Second))); err != nil {
				return nil, err
			}
		}
		if resyncLockRef {
			if _, err := run(shareLock, 0); err != nil {
				return nil, err
			}
		}
	}
	return rs, nil
}

// cdcProfile, when set, is where the first drain writes a CPU profile of
// cdc (its admin API's /debug/pprof/profile).
var cdcProfile string

type result struct {
	shape      string
	tenants    int
	rows       int
	insertSecs float64
	ceilRate   float64
	refRate    float64
	cdcRate    float64
	peakRSSMiB float64
	ceilRuns   []float64
	refRuns    []float64
	cdcRuns    []float64
}

func main() {
	rows := flag.Int("rows", 1_000_000, "backlog rows per shape")
	repeat := flag.Int("repeat", 3, "drains of the backlog per shape (medians are reported)")
	rate := flag.Int("rate", 5000, "steady events/s for the latency run")
	latDur := flag.Duration("latency-duration", 20*time.Second, "length of the latency run")
	out := flag.String("out", "", "write the Markdown report here (default stdout only)")
	bin := flag.String("bin", "bin", "folder with the cdc and devbroker binaries (make build)")
	tenants := flag.String("tenants", "50,1000", "comma-separated tenant counts; every shape runs with each")
	bigTx := flag.Int("big-tx", 1_000_000, "rows of the single-transaction run (0 skips it)")
	flag.StringVar(&cdcProfile, "cdc-profile", "", "write a 10-second CPU profile of cdc, taken during the first drain (or resync), to this file")
	only := flag.String("only", "", `run one part only, without writing a report: "bigtx" (the single large transaction), "1000" or "single" (one drain shape, with -tenants), "latency", "resync"`)
	flag.IntVar(&resyncObjects, "resync-objects", 1_000_000, "objects of the tenant resynced while other tenants write (0 skips it)")
	flag.IntVar(&resyncRate, "resync-rate", 1000, "other tenants' inserts per second during the resync run")
	flag.DurationVar(&resyncBaseline, "resync-baseline", 20*time.Second, "how long other tenants' inserts are timed before the resync starts")
	flag.Float64Var(&resyncCap, "resync-cap", 0, "the resync's outbox.resync_rate (objects/s; 0: cdc's default, negative: no cap)")
	flag.StringVar(&pgLog, "pg-log", "", "write Postgres' log here, with autovacuum runs, checkpoints and statements over 200 ms")
	flag.IntVar(&resyncChunk, "resync-chunk", 0, "the resync's outbox.resync_chunk (0: cdc's default)")
	flag.BoolVar(&resyncLockRef, "resync-lock-ref", true, "run the share-lock reference in turns with the resync runs")
	flag.BoolVar(&resyncControl, "resync-control", true, "after each resync run, run the control: the same writers for as long, with no resync")
	flag.Parse()
	ctx := context.Background()
	var counts []int
	for _, f := range strings.Split(*tenants, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "cdcbench: -tenants %q: give positive whole numbers\n", *tenants)
			os.Exit(2)
		}
		counts = append(counts, n)
	}
	if *only != "" {
		if err := runOnly(ctx, *only, *rows, *repeat, counts, *bigTx, *rate, *latDur, *bin); err != nil {
			fmt.Fprintln(os.Stderr, "cdcbench:", err)
			os.Exit(1)
		}
		return
	}
	if err := runBench(ctx, *rows, *repeat, counts, *bigTx, *rate, *latDur, *out, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "cdcbench:", err)
		os.Exit(1)
	}
}

func startPostgres(ctx context.Context) (*pgtest.Cluster, error) {
	opts := pgtest.Options{Settings: map[string]string{
		// Commits wake the walsender at once (synchronous_commit=off
		// delays changes up to wal_writer_delay); fsync stays off.
		"synchronous_commit": "on", "shared_buffers": "512MB", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
	}}
	if pgLog != "" {
		f, err := os.Create(pgLog)
		if err != nil {
			return nil, err
		}
		opts.Log = f
		maps.Copy(opts.Settings, map[string]string{"log_autovacuum_min_duration": "0", "log_checkpoints": "on",
			"log_min_duration_statement": "200ms", "log_line_prefix": "%m [%p] "})
	}
	return pgtest.Start(ctx, opts)
}

// runOnly runs one part of the benchmark and prints its figures.
func runOnly(ctx context.Context, only string, rows, repeat int, tenants []int, bigTx, rate int, latDur time.Duration, bin string) error {
	cl, err := startPostgres(ctx)
	if err != nil {
		return err
	}
	defer cl.Stop()
	switch only {
	case "bigtx":
		b, err := bigTransaction(ctx, cl, bin, bigTx)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "one %d-row transaction: insert %.1f s, cdc %.0f events/s (from process start), peak RSS %.1f MiB\n", b.rows, b.insertSecs, b.rate, b.peakRSSMiB)
	case "1000", "single":
		shape := "1000-row transactions"
		if only == "single" {
			shape = "single-row transactions"
		}
		for _, n := range tenants {
			r, err := drain(ctx, cl, bin, shape, n, rows, repeat)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%s, %d tenants: ceiling %.0f/s, pg_recvlogical %.0f/s, cdc %.0f/s (%.2fx pg_recvlogical, %.2f of the ceiling), peak RSS %.1f MiB\n",
				shape, n, r.ceilRate, r.refRate, r.cdcRate, r.cdcRate/r.refRate, r.cdcRate/r.ceilRate, r.peakRSSMiB)
		}
	case "latency":
		p50, p99, n, rss, err := latency(ctx, cl, bin, rate, latDur)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "latency at %d/s: p50 %.2f ms, p99 %.2f ms over %d transactions, peak RSS %.1f MiB\n", rate, p50*1000, p99*1000, n, rss)
	case "resync":
		_, err := resyncRuns(ctx, cl, bin, repeat)
		return err
	default:
		return fmt.Errorf("-only %q: use bigtx, 1000, single, latency or resync", only)
	}
	return nil
}

// bigResult is the single large transaction's run.
type bigResult struct {
	rows       int
	insertSecs float64
	rate       float64 // events/s from cdc's start to its last acknowledgement
	peakRSSMiB float64
}

// bigTransaction writes rows outbox rows (headers filled, 50 tenants) in
// one transaction and drains it with cdc on a fresh broker: cdc streams
// the transaction's records as it decodes them, so its peak RSS is
// bounded by the records in flight, not by the transaction.
func bigTransaction(ctx context.Context, cl *pgtest.Cluster, bin string, rows int) (bigResult, error) {
	r := bigResult{rows: rows}
	const name = "bench_bigtx"
	url, conn, done, err := scratchDB(ctx, cl, bin, name)
	if err != nil {
		return r, err
	}
	defer done()
	t0 := time.Now()
	if _, err := conn.Exec(ctx, `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload, headers)
		SELECT `+rowExpr(50)+` FROM generate_series(0, $1::int - 1) g`, rows); err != nil {
		return r, fmt.Errorf("fill: %w", err)
	}
	r.insertSecs = time.Since(t0).Seconds()
	if _, err := conn.Exec(ctx, `CHECKPOINT`); err != nil {
		return r, err
	}
	r.rate, r.peakRSSMiB, _, err = cdcDrain(bin, url, name, rows, true)
	return r, err
}

func runBench(ctx context.Context, rows, repeat int, tenants []int, bigTx, rate int, latDur time.Duration, out, bin string) error {
	cl, err := startPostgres(ctx)
	if err != nil {
		return err
	}
	defer cl.Stop()
	var results []result
	for _, shape := range []string{"1000-row transactions", "single-row transactions"} {
		for _, n := range tenants {
			r, err := drain(ctx, cl, bin, shape, n, rows, repeat)
			if err != nil {
				return fmt.Errorf("%s, %d tenants: %w", shape, n, err)
			}
			results = append(results, r)
			fmt.Fprintf(os.Stderr, "%s, %d tenants: ceiling %.0f/s, pg_recvlogical %.0f/s, cdc %.0f/s (%.2fx pg_recvlogical, %.2f of the ceiling), peak RSS %.1f MiB\n",
				shape, n, r.ceilRate, r.refRate, r.cdcRate, r.cdcRate/r.refRate, r.cdcRate/r.ceilRate, r.peakRSSMiB)
		}
	}
	var big *bigResult
	if bigTx > 0 {
		b, err := bigTransaction(ctx, cl, bin, bigTx)
		if err != nil {
			return fmt.Errorf("one %d-row transaction: %w", bigTx, err)
		}
		fmt.Fprintf(os.Stderr, "one %d-row transaction: cdc %.0f events/s, peak RSS %.1f MiB\n", b.rows, b.rate, b.peakRSSMiB)
		big = &b
	}
	p50, p99, n, rss, err := latency(ctx, cl, bin, rate, latDur)
	if err != nil {
		return fmt.Errorf("latency: %w", err)
	}
	fmt.Fprintf(os.Stderr, "latency at %d/s: p50 %.2f ms, p99 %.2f ms over %d transactions\n", rate, p50*1000, p99*1000, n)
	report := render(results, big, rate, latDur, p50, p99, n, rss)
	if resyncObjects > 0 {
		rs, err := resyncRuns(ctx, cl, bin, repeat)
		if err != nil {
			return err
		}
		report += renderResync(rs)
	}
	fmt.Print(report)
	if out != "" {
		return os.WriteFile(out, []byte(report), 0o644)
	}
	return nil
}

// scratchDB is newDB with one slot named after the database, a
// connection to it, and done, which closes the connection and drops the
// database (so later runs do not share the cluster with its rows).
func scratchDB(ctx context.Context, cl *pgtest.Cluster, bin, name string) (url string, conn *pgx.Conn, done func(), err error) {
	if url, err = newDB(ctx, cl, bin, name); err != nil {
		return "", nil, nil, err
	}
	drop := func() {
		if err := pgtest.DropDatabase(ctx, cl.URL, name); err != nil {
			fmt.Fprintln(os.Stderr, "cdcbench: drop", name+":", err)
		}
	}
	if conn, err = pgx.Connect(ctx, url); err != nil {
		drop()
		return "", nil, nil, err
	}
	return url, conn, func() { conn.Close(ctx); drop() }, nil
}

// newDB creates a database and runs `cdc setup` for each slot (one per
// drain, so every drain reads the same backlog).
func newDB(ctx context.Context, cl *pgtest.Cluster, bin, name string, slots ...string) (string, error) {
	url, err := pgtest.CreateDatabase(ctx, cl.URL, name)
	if err != nil {
		return "", err
	}
	if len(slots) == 0 {
		slots = []string{name}
	}
	for _, slot := range slots {
		if out, err := exec.Command(bin+"/cdc", "setup", "--postgres-url", url, "--brokers", "127.0.0.1:1", "--slot", slot).CombinedOutput(); err != nil {
			return "", fmt.Errorf("cdc setup: %v: %s", err, out)
		}
	}
	return url, nil
}

// fill writes the backlog: ~390-byte payloads over the given number of
// tenants and two aggregate types (two topics), with the headers column
// filled the way the README suggests (W3C trace context).
func fill(ctx context.Context, url, shape string, tenants, rows int) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	row := rowExpr(tenants)
	if shape == "1000-row transactions" {
		for start := 0; start < rows; start += 1000 {
			if _, err := conn.Exec(ctx, `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload, headers)
				SELECT `+row+` FROM generate_series($1::int, $2::int) g`, start, min(start+1000, rows)-1); err != nil {
				return err
			}
		}
		return nil
	}
	// Single-row transactions: a procedure commits after every row; four
	// clients share the work.
	if _, err := conn.Exec(ctx, `CREATE PROCEDURE fill_single(lo int, hi int) LANGUAGE plpgsql AS $$
		BEGIN FOR g IN lo..hi LOOP
			INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload, headers) SELECT `+row+`;
			COMMIT;
		END LOOP; END $$`); err != nil {
		return err
	}
	const clients = 4
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	per := rows / clients
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, err := pgx.Connect(ctx, url)
			if err != nil {
				errs <- err
				return
			}
			defer cc.Close(ctx)
			hi := (c+1)*per - 1
			if c == clients-1 {
				hi = rows - 1
			}
			if _, err := cc.Exec(ctx, `CALL fill_single($1, $2)`, c*per, hi); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// rowExpr is the select list of one outbox row numbered g.
func rowExpr(tenants int) string {
	return `'tenant-' || (g % ` + strconv.Itoa(tenants) + `), (ARRAY['product','order'])[g % 2 + 1], 'sku-' || g, 'product.updated',
		jsonb_build_object('sku', 'sku-' || g, 'name', 'Product number ' || g, 'description', repeat('lorem ipsum ', 20),
			'price', g % 997, 'currency', 'EUR', 'tags', jsonb_build_array('a', 'b', 'c')),
		jsonb_build_object('traceparent', '00-' || md5(g::text) || '-' || left(md5('s' || g), 16) || '-01', 'tracestate', 'ferry=bench')`
}

func drain(ctx context.Context, cl *pgtest.Cluster, bin, shape string, tenants, rows, repeat int) (result, error) {
	r := result{shape: shape, tenants: tenants, rows: rows}
	name := fmt.Sprintf("bench_%s_%d", strings.ReplaceAll(strings.Fields(shape)[0][:4], "-", "_"), tenants)
	var slots []string
	for i := range repeat {
		slots = append(slots, fmt.Sprintf("%s_%d", name, i))
	}
	url, err := newDB(ctx, cl, bin, name, slots...)
	if err != nil {
		return r, err
	}
	defer func() {
		if err := pgtest.DropDatabase(ctx, cl.URL, name); err != nil {
			fmt.Fprintln(os.Stderr, "cdcbench: drop", name+":", err)
		}
	}()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return r, err
	}
	defer conn.Close(ctx)
	for _, slot := range slots {
		if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot('ref_'||$1, 'pgoutput')`, slot); err != nil {
			return r, err
		}
	}
	if _, err := conn.Exec(ctx, `CREATE FUNCTION bench_decode(slot text) RETURNS float8 LANGUAGE plpgsql AS $$
		DECLARE t0 timestamptz := clock_timestamp(); n bigint;
		BEGIN
			SELECT count(*) INTO n FROM pg_logical_slot_peek_binary_changes(slot, NULL, NULL,
				'proto_version', '1', 'publication_names', 'ferry_outbox');
			RETURN extract(epoch FROM clock_timestamp() - t0);
		END $$`); err != nil {
		return r, err
	}
	t0 := time.Now()
	if err := fill(ctx, url, shape, tenants, rows); err != nil {
		return r, fmt.Errorf("fill: %w", err)
	}
	r.insertSecs = time.Since(t0).Seconds()
	var end pglogrepl.LSN
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()`).Scan(&end); err != nil {
		return r, err
	}
	if _, err := conn.Exec(ctx, `CHECKPOINT`); err != nil {
		return r, err
	}
	for i, slot := range slots {
		// The server-side ceiling: pgoutput decoding the same backlog
		// inside Postgres (peek: the slot is not consumed).
		var secs float64
		if err := conn.QueryRow(ctx, `SELECT bench_decode($1)`, "ref_"+slot).Scan(&secs); err != nil {
			return r, fmt.Errorf("decoding ceiling: %w", err)
		}
		ceil := float64(rows) / secs
		// cdc and pg_recvlogical take turns at going first: whoever runs
		// second finds more of the WAL in the page cache.
		var ref, rate, rss, cpu float64
		runRef := func() error { ref, err = refDrain(url, "ref_"+slot, end, rows); return err }
		runCDC := func() error { rate, rss, cpu, err = cdcDrain(bin, url, slot, rows, false); return err }
		order := []func() error{runRef, runCDC}
		if i%2 == 1 {
			order = []func() error{runCDC, runRef}
		}
		for _, f := range order {
			if err := f(); err != nil {
				return r, err
			}
		}
		fmt.Fprintf(os.Stderr, "%s, %d tenants, drain %s: ceiling %.0f/s, pg_recvlogical %.0f/s, cdc %.0f/s, RSS %.1f MiB, cdc CPU %.2f µs/event\n", shape, tenants, slot, ceil, ref, rate, rss, cpu)
		r.ceilRuns, r.refRuns, r.cdcRuns = append(r.ceilRuns, ceil), append(r.refRuns, ref), append(r.cdcRuns, rate)
		r.peakRSSMiB = max(r.peakRSSMiB, rss)
	}
	r.ceilRate, r.refRate, r.cdcRate = benchutil.Median(r.ceilRuns), benchutil.Median(r.refRuns), benchutil.Median(r.cdcRuns)
	return r, nil
}

// refDrain runs pg_recvlogical (pgoutput into a pipe this process reads
// and discards) over the backlog, timed like cdc: from its first byte of
// output to its last, not from process start to exit.
func refDrain(url, slot string, end pglogrepl.LSN, rows int) (float64, error) {
	ref := exec.Command("pg_recvlogical", "-d", url, "--slot", slot, "--start", "--endpos", end.String(),
		"--no-loop", "-o", "proto_version=1", "-o", "publication_names=ferry_outbox", "-f", "-")
	out, err := ref.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	ref.Stderr = &stderr
	if err := ref.Start(); err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	var first, last time.Time
	for {
		n, err := out.Read(buf)
		if n > 0 {
			last = time.Now()
			if first.IsZero() {
				first = last
			}
		}
		if err != nil {
			break // EOF at endpos, or the process failed: Wait says which
		}
	}
	if err := ref.Wait(); err != nil {
		return 0, fmt.Errorf("pg_recvlogical: %v: %s", err, stderr.String())
	}
	if first.IsZero() || !last.After(first) {
		return 0, errors.New("pg_recvlogical wrote nothing")
	}
	return float64(rows) / last.Sub(first).Seconds(), nil
}

// cdcDrain runs the cdc binary on its own slot and a fresh broker until it
// published rows events; it returns the rate, cdc's peak RSS and its CPU
// time per event in µs (from its start, start-up included). The rate
// runs from the first event published to the last; with whole (a backlog
// of one transaction, whose events are counted as published all at once
// when it is acknowledged) from cdc's start instead.
func cdcDrain(bin, url, slot string, rows int, whole bool) (rate, rss, cpuMicros float64, err error) {
	dir, err := os.MkdirTemp("", "cdcbench-broker-")
	if err != nil {
		return 0, 0, 0, err
	}
	defer os.RemoveAll(dir)
	broker, brokerAddr, err := startBroker(bin, "--data-dir", dir, "--partitions", "8")
	if err != nil {
		return 0, 0, 0, err
	}
	defer stop(broker)
	admin := benchutil.FreeAddr()
	cdc := exec.Command(bin+"/cdc", "run", "--postgres-url", url, "--brokers", brokerAddr, "--admin-addr", admin, "--log-level", "warn", "--slot", slot)
	cdc.Stderr = os.Stderr
	start := time.Now()
	if err := cdc.Start(); err != nil {
		return 0, 0, 0, err
	}
	defer stop(cdc)
	var first time.Time
	var n0 float64
	if whole {
		first = start
	}
	deadline := start.Add(10 * time.Minute)
	for {
		n := benchutil.Metric(admin, `ferry_cdc_events_total{outcome="published"}`)
		if n > 0 && first.IsZero() {
			first, n0 = time.Now(), n
			if cdcProfile != "" {
				go profile(admin, cdcProfile)
				cdcProfile = ""
			}
		}
		if n >= float64(rows) {
			return (n - n0) / time.Since(first).Seconds(), benchutil.PeakRSS(cdc.Process.Pid),
				benchutil.CPUSeconds(cdc.Process.Pid) / float64(rows) * 1e6, nil
		}
		if time.Now().After(deadline) {
			return 0, 0, 0, fmt.Errorf("cdc published %.0f of %d in 10 minutes", n, rows)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// profile saves a 5-second CPU profile of the cdc whose admin API is at
// admin.
func profile(admin, file string) {
	resp, err := http.Get("http://" + admin + "/debug/pprof/profile?seconds=10")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cdcbench: profile:", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cdcbench: profile:", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		fmt.Fprintln(os.Stderr, "cdcbench: profile:", err)
	}
}

// latency runs cdc live and writes single-row transactions at a steady
// rate, then reads cdc's commit-to-ack histogram.
func latency(ctx context.Context, cl *pgtest.Cluster, bin string, rate int, dur time.Duration) (p50, p99 float64, n int, rss float64, err error) {
	url, err := newDB(ctx, cl, bin, "bench_latency")
	if err != nil {
		return
	}
	broker, brokerAddr, err := startBroker(bin, "--data-dir", "")
	if err != nil {
		return
	}
	defer stop(broker)
	admin := benchutil.FreeAddr()
	cdc := exec.Command(bin+"/cdc", "run", "--postgres-url", url, "--brokers", brokerAddr, "--admin-addr", admin, "--log-level", "warn", "--slot", "bench_latency")
	cdc.Stderr = os.Stderr
	if err = cdc.Start(); err != nil {
		return
	}
	defer stop(cdc)
	for !ready(admin) {
		time.Sleep(20 * time.Millisecond)
	}
	total := int(float64(rate) * dur.Seconds())
	if err = pacedInserts(ctx, url, rate, total, nil); err != nil {
		return
	}
	for benchutil.Metric(admin, `ferry_cdc_events_total{outcome="published"}`) < float64(total) {
		time.Sleep(20 * time.Millisecond)
	}
	buckets, count := histogram(admin, "ferry_cdc_commit_to_ack_seconds")
	return quantile(buckets, count, 0.50), quantile(buckets, count, 0.99), int(count), benchutil.PeakRSS(cdc.Process.Pid), nil
}

// pacedInserts has 4 clients insert single-row transactions of 1,000
// other tenants, insert i due at i/rate from the start, until total have
// been written (total 0: until ctx ends). seen, if not nil, gets each
// insert's latency from when it was due, not from when its client got
// to it: an insert held up (by a lock, say) holds up the ones after it
// too, and they count. It returns the first error, ctx ending aside.
func pacedInserts(ctx context.Context, url string, rate, total int, seen func(time.Duration)) error {
	const clients = 4
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, err := pgx.Connect(ctx, url)
			if err != nil {
				errs <- err
				return
			}
			defer cc.Close(context.WithoutCancel(ctx))
			for i := c; (total == 0 || i < total) && ctx.Err() == nil; i += clients {
				due := start.Add(time.Duration(float64(i) / float64(rate) * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				if _, err := cc.Exec(ctx, `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
					VALUES ('tenant-' || ($1::int % 1000), 'product', $1::text, 'product.updated', jsonb_build_object('n', $1::int, 'pad', repeat('x', 300)))`, i); err != nil {
					errs <- err
					return
				}
				if seen != nil {
					seen(time.Since(due))
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if ctx.Err() == nil {
			return err
		}
	}
	return nil
}

// startBroker runs the devbroker with args (its data folder is always
// given: the default one would be reused across runs).
func startBroker(bin string, args ...string) (*exec.Cmd, string, error) {
	addr := benchutil.FreeAddr()
	_, port, _ := net.SplitHostPort(addr) // freeAddr returns host:port
	cmd := exec.Command(bin+"/devbroker", append([]string{"--port", port}, args...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	for range 200 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd, addr, nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	stop(cmd)
	return nil, "", fmt.Errorf("devbroker did not listen on %s", addr)
}

func stop(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM) // may have exited
	_ = cmd.Wait()                          // its exit status is not the measurement
}

func ready(admin string) bool {
	resp, err := http.Get("http://" + admin + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

type bucket struct{ le, count float64 }

func histogram(admin, name string) ([]bucket, float64) {
	hb, count, _ := benchutil.Scrape(admin).Histogram(name)
	bs := make([]bucket, len(hb))
	for i, b := range hb {
		bs[i] = bucket{b.UpperBound, float64(b.Count)}
	}
	return bs, float64(count)
}

// quantile interpolates linearly inside the bucket holding rank q.
func quantile(bs []bucket, count, q float64) float64 {
	rank := q * count
	prevLE, prevC := 0.0, 0.0
	for _, b := range bs {
		if b.count >= rank {
			if math.IsInf(b.le, 1) {
				return prevLE
			}
			return prevLE + (b.le-prevLE)*(rank-prevC)/math.Max(b.count-prevC, 1)
		}
		prevLE, prevC = b.le, b.count
	}
	return prevLE
}

func render(rs []result, big *bigResult, rate int, dur time.Duration, p50, p99 float64, n int, latRSS float64) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "# Benchmarks\n\nMade by `make bench` (`go run ./bench/cdcbench %s`) on %s, %s, %d CPUs, %s, host %s. What the figures mean, profiles and the history of changes: [performance.md](performance.md).\n",
		strings.Join(os.Args[1:], " "), time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), runtime.Version(), host)
	b.WriteString(`
Setup: a throwaway PostgreSQL 15 cluster (fsync off, synchronous_commit on),
the devbroker (kfake, a fresh data folder and 8 partitions per topic for
every drain) and the real ` + "`cdc`" + ` binary in separate processes, all on this
machine. Rows carry ~390 bytes of JSON payload and a filled headers column
(traceparent, tracestate), over two aggregate types (two topics) and the
given number of tenants. Two references read the same backlog in the same
run: the **decoding ceiling** is pgoutput decoding it inside Postgres
(` + "`pg_logical_slot_peek_binary_changes`" + ` with the publication, timed in a
PL/pgSQL function: no client, no network), and ` + "`pg_recvlogical`" + `
(pgoutput, proto 1, into a pipe that is read and discarded). cdc and
pg_recvlogical are both timed from their first event to their last
(pg_recvlogical: first to last byte of output), and take turns at going
first. cdc publishes with acks=all and an idempotent producer and confirms
the slot after Kafka acknowledges. Peak RSS is cdc's VmHWM.

## Draining a backlog (cdc)

Each backlog is drained once per slot (slots made before the fill, so
every drain reads the same WAL); the table gives medians, and every drain
is listed.

| shape | tenants | rows | insert time | decoding ceiling | pg_recvlogical | cdc | cdc / pg_recvlogical | cdc / ceiling | cdc peak RSS | drains: ceiling; pg_recvlogical; cdc |
|---|---|---|---|---|---|---|---|---|---|---|
`)
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %d | %d | %.1f s | %.0f rows/s | %.0f events/s | %.0f events/s | %.2f | %.2f | %.1f MiB | %s; %s; %s |\n",
			r.shape, r.tenants, r.rows, r.insertSecs, r.ceilRate, r.refRate, r.cdcRate, r.cdcRate/r.refRate, r.cdcRate/r.ceilRate, r.peakRSSMiB,
			benchutil.List(r.ceilRuns), benchutil.List(r.refRuns), benchutil.List(r.cdcRuns))
	}
	if big != nil {
		fmt.Fprintf(&b, `
## One large transaction (cdc)

One transaction of %d rows (same rows, 50 tenants), inserted in %.1f s,
drained by cdc on a fresh broker: cdc publishes a transaction's records as
it decodes them and confirms the slot once all are acknowledged, so its
memory is bounded by the records in flight (max_buffered_records,
max_buffered_bytes), not by the transaction.

| rows | cdc (from process start to the transaction's ack) | cdc peak RSS | target |
|---|---|---|---|
| %d | %.0f events/s | %.1f MiB | ≤ 100 MiB |
`, big.rows, big.insertSecs, big.rows, big.rate, big.peakRSSMiB)
	}
	fmt.Fprintf(&b, `
## Commit-to-Kafka-ack latency (cdc)

Single-row transactions at a steady %d events/s for %s (%d transactions),
four writers; latency is from the transaction's commit timestamp in
Postgres to Kafka's acknowledgement of its record, from cdc's
ferry_cdc_commit_to_ack_seconds histogram (interpolated in buckets ~20%%
wide).

| p50 | p99 | cdc peak RSS |
|---|---|---|
| %.2f ms | %.2f ms | %.1f MiB |

Targets (issue 14, 2-core machine, headers column filled): at least 265k
events/s and 0.55 of the decoding ceiling for 1,000-row transactions, at
least 120k events/s for single-row transactions; p99 under 20 ms and RSS
under 100 MiB (issue 2).
`, rate, dur, n, p50*1000, p99*1000, latRSS)
	return b.String()
}
