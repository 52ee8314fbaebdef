package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/pgtest"
	"github.com/ferry-cdc/ferry/internal/testutil"
)

var cdcBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-cdc-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cdcBinary = filepath.Join(dir, "cdc")
	if out, err := exec.Command("go", "build", "-o", cdcBinary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build cdc: %v\n%s", err, out)
		os.Exit(1)
	}
	code := pgtest.Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's Postgres database and Kafka broker.
type env struct {
	t     *testing.T
	db    string // database URL
	slot  string
	kafka *kafkatest.Broker
	conn  *pgx.Conn
	admin string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, db: pgtest.New(t), kafka: kafkatest.New(t)}
	connectEnv(t, e)
	return e
}

// connectEnv fills e's slot name and connection from e.db.
func connectEnv(t *testing.T, e *env) {
	t.Helper()
	cfg, err := pgx.ParseConfig(e.db)
	if err != nil {
		t.Fatal(err)
	}
	e.slot = cfg.Database // unique per test, a valid slot name
	e.conn, err = pgx.Connect(context.Background(), e.db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close(context.Background()) })
}

// args are the common cdc arguments for this env; extra override them.
func (e *env) args(extra ...string) []string {
	return append([]string{"run", "--postgres-url", e.db, "--brokers", strings.Join(e.kafka.Addrs, ","),
		"--slot", e.slot, "--topic-template", e.kafka.TopicPrefix + "outbox.{{.AggregateType}}",
		"--dead-letter-topic", e.kafka.TopicPrefix + "dead_letter",
		"--status-interval", "100ms", "--heartbeat-interval", "500ms", "--admin-addr", "127.0.0.1:0", "--log-format", "text"}, extra...)
}

func (e *env) topic(aggType string) string { return e.kafka.TopicPrefix + "outbox." + aggType }

// inproc runs cdc in this process (under the race detector) until the
// returned stop is called; stop returns the exit code and stderr.
func (e *env) inproc(extra ...string) (stop func() (int, string)) {
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, e.args(extra...), func(string) string { return "" }, io.Discard, &stderr) }()
	var once sync.Once
	var code int
	stop = func() (int, string) {
		once.Do(func() { cancel(); code = <-done })
		return code, stderr.String()
	}
	e.t.Cleanup(func() {
		// cdc's own account of a failed test (a stall, a reconnect).
		if _, out := stop(); e.t.Failed() {
			e.t.Logf("cdc stderr:\n%s", out)
		}
	})
	return stop
}

// proc is cdc as a child process, for crash and failover tests.
type proc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	admin  string
}

func (e *env) start(extra ...string) *proc {
	e.t.Helper()
	adminAddr := freeAddr(e.t)
	args := append(e.args(extra...), "--admin-addr", adminAddr)
	cmd := exec.Command(cdcBinary, args...)
	p := &proc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{}), admin: adminAddr}
	cmd.Stderr = p.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }() // exit status is read from cmd.ProcessState
	e.t.Cleanup(func() { p.kill(); e.t.Logf("cdc %d stderr:\n%s", cmd.Process.Pid, p.stderr.String()) })
	return p
}

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL) // may have exited already
	<-p.done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ready reports whether the process's /readyz answers 200.
func (p *proc) ready() bool {
	resp, err := http.Get("http://" + p.admin + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// exec runs SQL on the test database.
func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.conn.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// setup runs `cdc setup` so the table, publication and slot exist.
func (e *env) setup() {
	e.t.Helper()
	var out, errb bytes.Buffer
	args := e.args()
	args[0] = "setup"
	if code := run(context.Background(), args, func(string) string { return "" }, &out, &errb); code != 0 {
		e.t.Fatalf("cdc setup exited %d: %s", code, errb.String())
	}
}

// insert writes one outbox row in its own transaction and returns its id.
func (e *env) insert(tenant, aggType, aggID, evType, payload string) string {
	e.t.Helper()
	var id string
	err := e.conn.QueryRow(context.Background(), `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
		VALUES (NULLIF($1, ''), $2, $3, $4, $5::jsonb) RETURNING id::text`, tenant, aggType, aggID, evType, payload).Scan(&id)
	if err != nil {
		e.t.Fatalf("insert: %v", err)
	}
	return id
}

// slotLSN is the slot's confirmed_flush_lsn.
func (e *env) slotLSN() pglogrepl.LSN {
	e.t.Helper()
	var lsn pglogrepl.LSN
	if err := e.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&lsn); err != nil {
		e.t.Fatalf("read slot: %v", err)
	}
	return lsn
}

// walInsertLSN is the position everything written so far ends before.
func (e *env) walInsertLSN() pglogrepl.LSN {
	e.t.Helper()
	var lsn pglogrepl.LSN
	if err := e.conn.QueryRow(context.Background(), `SELECT pg_current_wal_insert_lsn()`).Scan(&lsn); err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

// Shared helpers (internal/testutil), under the names the tests use.
var (
	waitFor  = testutil.WaitFor
	freeAddr = testutil.FreeAddr
)

type syncBuffer = testutil.SyncBuffer

// metric returns the value of an unlabelled metric from a process's
// /metrics, or -1 when absent.
func (p *proc) metric(series string) float64 {
	f, err := metrics.Scrape("http://" + p.admin + "/metrics")
	if err != nil {
		return -1
	}
	if v, ok := f.Value(series); ok {
		return v
	}
	return -1
}

// readyz returns the status code and body of /readyz (0 if unreachable).
func (p *proc) readyz() (int, string) {
	resp, err := http.Get("http://" + p.admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body) // a short body; an error leaves it partial
	return resp.StatusCode, string(b)
}

// eventIDs returns the event_id headers of recs.
func eventIDs(recs []*kgo.Record) map[string]int {
	ids := map[string]int{}
	for _, r := range recs {
		ids[kafkatest.Header(r, "event_id")]++
	}
	return ids
}

// hasIDs is a Consume stop condition: every id in want was seen.
func hasIDs(want []string) func([]*kgo.Record) bool {
	return func(recs []*kgo.Record) bool {
		got := eventIDs(recs)
		for _, id := range want {
			if got[id] == 0 {
				return false
			}
		}
		return true
	}
}

// runToExit runs cdc in this process until it exits by itself (within a
// minute) and returns its exit code and stderr.
func (e *env) runToExit(extra ...string) (int, string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stderr syncBuffer
	code := run(ctx, e.args(extra...), func(string) string { return "" }, io.Discard, &stderr)
	if ctx.Err() != nil {
		e.t.Fatalf("cdc did not exit within a minute; stderr:\n%s", stderr.String())
	}
	return code, stderr.String()
}
