package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Backend names which servers the tests run against. It is read from
// FERRY_TEST_BACKEND: "" or "local" (throwaway initdb cluster, or
// DATABASE_URL when set) or "containers" (testcontainers; needs
// -tags containers and a Docker engine).
func Backend() string { return os.Getenv("FERRY_TEST_BACKEND") }

var (
	shared struct {
		once sync.Once
		url  string
		stop func() error
		err  error
	}
	dbSeq atomic.Int64
)

// Main runs a test package's tests and stops the shared server afterwards.
// Use it from TestMain: func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	if shared.stop != nil {
		if err := shared.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
	}
	return code
}

// ServerURL returns the URL of the package's shared PostgreSQL server,
// starting it on first use: DATABASE_URL when set, a container when
// FERRY_TEST_BACKEND=containers, else a throwaway initdb cluster.
func ServerURL(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		switch {
		case os.Getenv("DATABASE_URL") != "":
			shared.url = os.Getenv("DATABASE_URL")
		case Backend() == "containers":
			shared.url, shared.stop, shared.err = startContainer(ctx)
		default:
			var c *Cluster
			c, shared.err = Start(ctx, Options{})
			if c != nil {
				shared.url, shared.stop = c.URL, c.Stop
			}
		}
	})
	if shared.err != nil {
		t.Fatalf("start PostgreSQL: %v", shared.err)
	}
	return shared.url
}

// New creates a fresh database on the shared server for one test and
// returns its URL. The database name is unique in the process and is a
// valid replication slot name prefix.
func New(t testing.TB) string {
	t.Helper()
	server := ServerURL(t)
	name := fmt.Sprintf("t%d_%s", dbSeq.Add(1), sanitize(t.Name()))
	if len(name) > 40 {
		name = name[:40]
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url, err := CreateDatabase(ctx, server, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dropDatabase(t, server, name) })
	return url
}

func dropDatabase(t testing.TB, server, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Errorf("pgtest: connect to drop %s: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	// Slots belong to the database; drop them first (their walsenders may
	// take a moment to exit after the test's readers stop).
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active`, name)
		if err == nil {
			var left int
			err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left)
			if err == nil && left == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("pgtest: replication slots of %s still active after 20s: %v", name, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Errorf("pgtest: drop database %s: %v", name, err)
	}
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// Querier is what Texts reads with: a pool, a connection or a
// transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Texts runs sql and returns its rows' one text column (an EXPLAIN's
// plan lines, a list of names); it fails t on any error.
func Texts(t testing.TB, q Querier, sql string, args ...any) []string {
	t.Helper()
	rows, err := q.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
