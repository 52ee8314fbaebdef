package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestRestartKeepsPortAndData restarts a cluster each way and finds the
// committed row on the same port after each.
func TestRestartKeepsPortAndData(t *testing.T) {
	if Backend() == "containers" {
		t.Skip("restarts need a local cluster") // never the default path
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
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
