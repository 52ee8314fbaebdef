package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestRestartKeepsPortAndData restarts a cluster each way and finds the
// committed row on the same port after each.
func TestRestartKeepsPortAndData(t *testing.T) {
	if Backend() == "containers" {
		t.Skip("restarts need a local cluster") // never the default path
	}
	ctx, c := started(t)
	exec := func(sql string) error {
		conn, err := pgx.Connect(ctx, c.URL)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec(`CREATE TABLE kept (n int); INSERT INTO kept VALUES (1); CHECKPOINT`); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"fast", "immediate", "kill"} {
		if err := c.Restart(ctx, mode, 0); err != nil {
			t.Fatalf("restart %s: %v", mode, err)
		}
		if err := exec(`SELECT 1/count(*) FROM kept`); err != nil {
			t.Fatalf("after %s restart: %v", mode, err)
		}
	}
	if err := c.Restart(ctx, "sideways", 0); err == nil {
		t.Fatal("unknown restart mode accepted")
	}
}

// TestDropDatabaseWithAnActiveSlot drops a database whose logical slot a
// replication connection still streams from (a cdc that has not quite
// gone away): the connection is ended and the slot dropped with it.
func TestDropDatabaseWithAnActiveSlot(t *testing.T) {
	ctx, c := started(t)
	url, err := CreateDatabase(ctx, c.URL, "held")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE PUBLICATION p FOR ALL TABLES`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	repl, err := pgconn.Connect(ctx, url+"&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close(context.Background())
	slot, err := pglogrepl.CreateReplicationSlot(ctx, repl, "s", "pgoutput", pglogrepl.CreateReplicationSlotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(slot.ConsistentPoint)
	if err != nil {
		t.Fatal(err)
	}
	if err := pglogrepl.StartReplication(ctx, repl, "s", lsn, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'p'"}}); err != nil {
		t.Fatal(err)
	}
	if err := DropDatabase(ctx, c.URL, "held"); err != nil {
		t.Fatalf("drop with the slot in use: %v", err)
	}
	server, err := pgx.Connect(ctx, c.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close(ctx)
	var dbs, slots int
	if err := server.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_database WHERE datname = 'held'), (SELECT count(*) FROM pg_replication_slots)`).Scan(&dbs, &slots); err != nil || dbs+slots != 0 {
		t.Fatalf("after the drop: %d databases named held, %d slots (%v); want none", dbs, slots, err)
	}
}

// started starts a cluster for the test, stopped when it ends.
func started(t *testing.T) (context.Context, *Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	c, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	return ctx, c
}
