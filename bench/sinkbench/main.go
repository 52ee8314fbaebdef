// Command sinkbench measures the sink binary (make bench): deliveries/s
// to a 0 ms partner over 1,000 tenants with the delivery log on; the
// efficiency against a 20 ms partner at concurrency 256; healthy tenants'
// throughput while one tenant fails every call, against the same run
// without it; and peak RSS holding 100,000 parked events. The broker
// (devbroker) and the partner (partnersim) are separate processes.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/pgtest"
)

func main() {
	events := flag.Int("events", 100_000, "events per throughput run")
	parked := flag.Int("parked", 100_000, "events parked in the memory run")
	out := flag.String("out", "", "append the Markdown section to this file")
	bin := flag.String("bin", "bin", "folder with sink, devbroker and partnersim")
	flag.Parse()
	if err := runBench(context.Background(), *bin, *events, *parked, *out); err != nil {
		fmt.Fprintln(os.Stderr, "sinkbench:", err)
		os.Exit(1)
	}
}

type env struct {
	bin, pg, broker, partner, admin string
	procs                           []*exec.Cmd
}

func (e *env) stop() {
	for _, p := range e.procs {
		_ = p.Process.Signal(syscall.SIGTERM) // may have exited
		_ = p.Wait()                          // its status is not the measurement
	}
	e.procs = nil
}

func start(name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	return cmd, cmd.Start()
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitDial(addr string) error {
	for range 400 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s", addr)
}

// setup starts a fresh database, broker and partner.
func setup(ctx context.Context, cl *pgtest.Cluster, bin, name string, partnerArgs ...string) (*env, error) {
	url, err := pgtest.CreateDatabase(ctx, cl.URL, name)
	if err != nil {
		return nil, err
	}
	e := &env{bin: bin, pg: url, broker: freeAddr(), partner: freeAddr(), admin: freeAddr()}
	_, port, _ := net.SplitHostPort(e.broker) // freeAddr returns host:port
	b, err := start(filepath.Join(bin, "devbroker"), "--port", port, "--data-dir", "")
	if err != nil {
		return nil, err
	}
	e.procs = append(e.procs, b)
	p, err := start(filepath.Join(bin, "partnersim"), append([]string{"-addr", e.partner, "-discard"}, partnerArgs...)...)
	if err != nil {
		e.stop()
		return nil, err
	}
	e.procs = append(e.procs, p)
	if err := waitDial(e.broker); err != nil {
		e.stop()
		return nil, err
	}
	return e, waitDial(e.partner)
}

// produce writes n events round-robin over tenants (as cdc would).
func (e *env) produce(ctx context.Context, n, tenants int, tenantOf func(i int) string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.broker), kgo.AllowAutoTopicCreation(), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		return err
	}
	defer cl.Close()
	payload := []byte(`{"sku":"sku-1","name":"Product","description":"lorem ipsum lorem ipsum lorem ipsum lorem ipsum","price":100,"currency":"EUR"}`)
	for i := range n {
		tenant := tenantOf(i)
		cl.Produce(ctx, &kgo.Record{Topic: "outbox.product", Key: []byte(tenant), Value: payload, Headers: []kgo.RecordHeader{
			{Key: "event_id", Value: []byte("e-" + strconv.Itoa(i))}, {Key: "tenant_id", Value: []byte(tenant)},
			{Key: "event_type", Value: []byte("product.updated")}, {Key: "aggregate_type", Value: []byte("product")},
			{Key: "aggregate_id", Value: []byte("p")}}}, nil)
	}
	return cl.Flush(ctx)
}

func (e *env) sink(extra string) (*exec.Cmd, error) {
	cfg := fmt.Sprintf(`postgres_url: %s
kafka: {brokers: [%s]}
admin_addr: %s
log_level: error
integrations:
  - name: bench
    topics: [outbox.product]
    retry: {initial: 200ms, max: 5s}
%s    connector: {type: webhook, url: "http://%s/v1/events", timeout: 10s}
`, e.pg, e.broker, e.admin, extra, e.partner)
	path := filepath.Join(os.TempDir(), fmt.Sprintf("sinkbench-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd, err := start(filepath.Join(e.bin, "sink"), "run", "--config", path)
	if err != nil {
		return nil, err
	}
	e.procs = append([]*exec.Cmd{cmd}, e.procs...) // stopped first
	return cmd, nil
}

func metric(admin, name string) float64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body) // a partial scrape reads as "not yet"
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// rate waits until the succeeded counter reaches n and returns the rate
// from the first success to the last.
func rate(admin string, n int) (float64, error) {
	const name = `ferry_sink_deliveries_total{integration="bench",outcome="succeeded"}`
	var first time.Time
	var n0 float64
	deadline := time.Now().Add(15 * time.Minute)
	for {
		v := metric(admin, name)
		if v > 0 && first.IsZero() {
			first, n0 = time.Now(), v
		}
		if v >= float64(n) {
			return (v - n0) / time.Since(first).Seconds(), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%0.f of %d delivered in 15 minutes", v, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func peakRSS(pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

func tenantN(i int) string { return fmt.Sprintf("tenant-%04d", i%1000) }

func runBench(ctx context.Context, bin string, events, parked int, out string) error {
	cl, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"shared_buffers": "512MB", "max_wal_size": "8GB"}})
	if err != nil {
		return err
	}
	defer cl.Stop()
	var b strings.Builder

	// 1. 0 ms partner, 1,000 tenants.
	e, err := setup(ctx, cl, bin, "sink_fast")
	if err != nil {
		return err
	}
	if err := e.produce(ctx, events, 1000, tenantN); err != nil {
		return err
	}
	s, err := e.sink("    workers: 128\n")
	if err != nil {
		return err
	}
	fast, err := rate(e.admin, events)
	if err != nil {
		return err
	}
	fastRSS := peakRSS(s.Process.Pid)
	e.stop()
	fmt.Fprintf(os.Stderr, "0 ms partner: %.0f deliveries/s, RSS %.1f MiB\n", fast, fastRSS)

	// 2. 20 ms partner, concurrency 256.
	slowN := events / 2
	e, err = setup(ctx, cl, bin, "sink_slow", "-latency", "20ms")
	if err != nil {
		return err
	}
	if err := e.produce(ctx, slowN, 1000, tenantN); err != nil {
		return err
	}
	if _, err := e.sink("    workers: 256\n    concurrency: 256\n"); err != nil {
		return err
	}
	slow, err := rate(e.admin, slowN)
	if err != nil {
		return err
	}
	e.stop()
	ideal := 256 / 0.020
	fmt.Fprintf(os.Stderr, "20 ms partner: %.0f deliveries/s, efficiency %.2f\n", slow, slow/ideal)

	// 3. One tenant fails every call: healthy tenants' rate vs run 1.
	e, err = setup(ctx, cl, bin, "sink_failing")
	if err != nil {
		return err
	}
	if err := e.produce(ctx, events, 1000, tenantN); err != nil {
		return err
	}
	resp, err := http.Post("http://"+e.partner+"/_sim/rules", "application/json", strings.NewReader(`{"tenant":"tenant-0000","status":503}`))
	if err != nil {
		return err
	}
	resp.Body.Close()
	if _, err := e.sink("    workers: 128\n"); err != nil {
		return err
	}
	healthy, err := rate(e.admin, events-events/1000)
	if err != nil {
		return err
	}
	e.stop()
	fmt.Fprintf(os.Stderr, "one failing tenant: healthy %.0f deliveries/s (%.0f%% of baseline)\n", healthy, 100*healthy/fast)

	// 4. 100,000 parked events.
	e, err = setup(ctx, cl, bin, "sink_parked")
	if err != nil {
		return err
	}
	if err := e.produce(ctx, parked, 1, func(int) string { return "stuck" }); err != nil {
		return err
	}
	resp, err = http.Post("http://"+e.partner+"/_sim/rules", "application/json", strings.NewReader(`{"tenant":"stuck","status":503}`))
	if err != nil {
		return err
	}
	resp.Body.Close()
	s, err = e.sink("    park_after: 1s\n")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, e.pg)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Minute)
	for {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM ferry.parked_event`).Scan(&n); err == nil && n >= parked {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("parked events did not reach %d", parked)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // a few retry rounds with everything parked
	parkedRSS := peakRSS(s.Process.Pid)
	conn.Close(ctx)
	e.stop()
	fmt.Fprintf(os.Stderr, "%d parked events: peak RSS %.1f MiB\n", parked, parkedRSS)

	host, _ := os.Hostname()
	fmt.Fprintf(&b, `
## sink

Made by `+"`make bench`"+` (`+"`go run ./bench/sinkbench -out docs/benchmarks.md`"+`) on %s, %d CPUs, %s, host %s.
The real `+"`sink`"+` binary with the delivery log on (a throwaway PostgreSQL 15,
fsync off), devbroker and partnersim (`+"`-discard`"+`: it answers without
storing anything) as separate processes, all sharing the machine's cores;
webhook connector. Rates run from the first success to the last.

| run | events | result | target |
|---|---|---|---|
| 0 ms partner, 1,000 tenants, 128 workers | %d | %.0f deliveries/s (peak RSS %.1f MiB) | ≥ 10,000/s |
| 20 ms partner, concurrency 256 | %d | %.0f deliveries/s = efficiency %.2f of 256 / 20 ms | ≥ 0.9 |
| one tenant of 1,000 failing every call | %d | healthy tenants %.0f deliveries/s = %.0f%% of the 0 ms run | ≥ 95%% |
| one tenant with %d events parked in Postgres | %d | peak RSS %.1f MiB | < 200 MiB |
`, time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), runtime.Version(), host,
		events, fast, fastRSS, slowN, slow, slow/ideal, events, healthy, 100*healthy/fast, parked, parked, parkedRSS)
	fmt.Print(b.String())
	if out == "" {
		return nil
	}
	f, err := os.OpenFile(out, os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(b.String())
	return err
}
