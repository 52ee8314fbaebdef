package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/ferry-cdc/ferry/internal/admin"
	"github.com/ferry-cdc/ferry/internal/cli"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/outbox"
	"github.com/ferry-cdc/ferry/internal/pgdb"
	"github.com/ferry-cdc/ferry/internal/publish"
	"github.com/ferry-cdc/ferry/internal/retry"
	"github.com/ferry-cdc/ferry/internal/route"
)

func (c *command) exec(ctx context.Context, stdout, stderr io.Writer) error {
	log, err := cli.Logger(stderr, c.cfg.LogFormat, c.cfg.LogLevel)
	if err != nil {
		return err
	}
	switch c.name {
	case "setup":
		return withConn(ctx, c.cfg.PostgresURL, func(conn *pgx.Conn) error {
			if err := migrate(ctx, conn); err != nil {
				return err
			}
			if err := outbox.Setup(ctx, conn, c.cfg.Outbox); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "ready: table %s, publication %s, slot %s\n", c.cfg.Outbox.Table, c.cfg.Outbox.Publication, c.cfg.Outbox.Slot)
			return nil
		})
	case "status":
		if c.st.Tenants < 0 {
			return fmt.Errorf("status: --tenants %d: give 0 or more", c.st.Tenants)
		}
		return cli.Print(stdout, func(w io.Writer) error { return c.status(ctx, w) })
	case "resync":
		return withConn(ctx, c.cfg.PostgresURL, func(conn *pgx.Conn) error {
			if err := migrate(ctx, conn); err != nil {
				return err
			}
			id, n, err := outbox.Resync(ctx, conn, c.cfg.Outbox, c.rs.Integration, c.rs.Tenant, log)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "resync %d: %d events of tenant %s emitted for %s; the running cdc publishes them\n", id, n, c.rs.Tenant, c.rs.Integration)
			return nil
		})
	case "prune":
		return withConn(ctx, c.cfg.PostgresURL, func(conn *pgx.Conn) error {
			res, err := outbox.Prune(ctx, conn, c.cfg.Outbox, c.pr.OlderThan)
			if err != nil {
				return err
			}
			if res.DroppedPartitions > 0 {
				fmt.Fprintf(stdout, "dropped %d daily partitions (about %d rows)\n", res.DroppedPartitions, res.DroppedRows)
			}
			fmt.Fprintf(stdout, "pruned %d rows created before %s\n", res.Deleted, res.Cutoff.UTC().Format(time.RFC3339))
			return nil
		})
	}

	m := metrics.NewCDC()
	router, err := route.New(c.cfg.Route)
	if err != nil {
		return err
	}
	pub, err := publish.New(c.cfg.Kafka, router, log, m)
	if err != nil {
		return err
	}

	if c.name == "backfill" {
		return withConn(ctx, c.cfg.PostgresURL, func(conn *pgx.Conn) error {
			sess, err := pub.Open(ctx)
			if err != nil {
				return err
			}
			defer sess.Close()
			n, err := outbox.Backfill(ctx, conn, c.cfg.Outbox, outbox.BackfillFilter{TenantID: c.bf.Tenant, Since: c.bf.Since}, sess)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "backfilled %d events\n", n)
			return nil
		})
	}

	tenants := publish.NewTenants()
	pub.Tenants = tenants
	reader := outbox.NewReader(c.cfg.Outbox, c.cfg.PostgresURL, pub, log, m)
	g, gctx := errgroup.WithContext(ctx)
	if c.cfg.AdminAddr != "off" {
		acc := admin.Access{Token: c.cfg.AdminToken, AllowedHosts: c.cfg.AdminAllowedHosts}
		srv, err := admin.Listen(c.cfg.AdminAddr, m.Registry, func() (bool, string) {
			switch {
			case !reader.Connected():
				return false, "reconnecting: postgres or kafka is unreachable"
			case !reader.Leader():
				return false, "standby: another cdc holds the slot"
			case !pub.KafkaUp():
				return false, "kafka unreachable: records wait in memory"
			case !reader.Ready():
				return false, "not streaming, or heartbeats are not coming back"
			}
			return true, ""
		}, map[string]http.Handler{"GET /tenants": acc.RequireToken(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(tenants.Snapshot()) // a client hanging up is its own problem
		}))}, acc)
		if err != nil {
			return err
		}
		log.Info("admin listening", "addr", srv.Addr())
		g.Go(func() error { return srv.Run(gctx) })
	}
	// Background loops hold a Postgres connection each; they reconnect
	// after a restart like the reader does, and never stop the process
	// for what a retry can fix.
	keep := func(what string, fn func(ctx context.Context, conn *pgx.Conn) error) {
		rc := retry.Reconnect{What: what, Policy: retry.Policy{Initial: 200 * time.Millisecond, Max: c.cfg.Outbox.ReconnectMax}, Log: log,
			OnRetry: func(error) { m.Reconnects.WithLabelValues("postgres").Inc() }}
		g.Go(func() error {
			return rc.Run(gctx, func(ctx context.Context, up func()) error {
				return withConn(ctx, c.cfg.PostgresURL, func(conn *pgx.Conn) error {
					up()
					return fn(ctx, conn)
				})
			})
		})
	}
	migrated := make(chan struct{})
	// afterMigrations waits until the migrations ran; false when ctx ended first.
	afterMigrations := func(ctx context.Context) bool {
		select {
		case <-migrated:
			return true
		case <-ctx.Done():
			return false
		}
	}
	keep("migrations", func(ctx context.Context, conn *pgx.Conn) error {
		if err := migrate(ctx, conn); err != nil {
			return err
		}
		close(migrated)
		return nil
	})
	keep("per-tenant progress (ferry.cdc_tenant)", func(ctx context.Context, conn *pgx.Conn) error {
		if !afterMigrations(ctx) {
			return nil
		}
		t := time.NewTicker(tenantFlush)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				_ = tenants.Flush(fctx, conn, c.cfg.Outbox.Slot) // best effort at shutdown: the counts are statistics
				cancel()
				return nil
			case <-t.C:
			}
			if err := tenants.Flush(ctx, conn, c.cfg.Outbox.Slot); err != nil && ctx.Err() == nil {
				if conn.IsClosed() {
					return fmt.Errorf("record per-tenant progress: %w", err)
				}
				log.Warn("could not record per-tenant progress in ferry.cdc_tenant; will try again", "reason", err.Error())
			}
		}
	})
	if c.cfg.Outbox.Partitions == "daily" {
		// Days ahead stay ready; checked hourly.
		keep("daily partitions", func(ctx context.Context, conn *pgx.Conn) error {
			t := time.NewTicker(time.Hour)
			defer t.Stop()
			for {
				now := time.Now()
				if n, err := outbox.EnsurePartitions(ctx, conn, c.cfg.Outbox, now, now.AddDate(0, 0, c.cfg.Outbox.PartitionsAhead)); err != nil && ctx.Err() == nil {
					if conn.IsClosed() {
						return fmt.Errorf("daily partitions: %w", err)
					}
					log.Error("could not create the outbox's daily partitions; rows go to the default partition meanwhile", "reason", err.Error())
				} else if n > 0 {
					log.Info("created daily partitions", "partitions", n)
				}
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
				}
			}
		})
	}
	if c.cfg.Outbox.ResyncPoll > 0 {
		keep("resync requests", func(ctx context.Context, conn *pgx.Conn) error {
			if !afterMigrations(ctx) {
				return nil
			}
			return outbox.ServeResyncs(ctx, conn, c.cfg.Outbox, c.cfg.Outbox.ResyncPoll, log)
		})
	}
	g.Go(func() error {
		if !afterMigrations(gctx) {
			return context.Canceled
		}
		err := reader.Run(gctx)
		if err == nil {
			err = context.Canceled // stop the admin server and the loops too
		}
		return err
	})
	err = g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// tenantFlush is how often per-tenant progress goes to ferry.cdc_tenant.
const tenantFlush = 2 * time.Second

func migrate(ctx context.Context, conn *pgx.Conn) error {
	_, err := pgdb.Migrate(ctx, conn)
	return err
}

func withConn(ctx context.Context, url string, fn func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return pgdb.Explain("postgres", url, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(conn)
}

func (c *command) status(ctx context.Context, stdout io.Writer) error {
	return withConn(ctx, c.cfg.PostgresURL, func(conn *pgx.Conn) error {
		s, err := outbox.Status(ctx, conn, c.cfg.Outbox.Slot, c.st.Tenants)
		if err != nil {
			return err
		}
		if c.st.JSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(s)
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "slot\t%s\n", s.Slot)
		if !s.Exists {
			fmt.Fprintf(w, "state\tmissing (run `cdc setup`)\n")
			return w.Flush()
		}
		fmt.Fprintf(w, "active\t%v\nwal_status\t%s\nconfirmed_lsn\t%s\nlag_bytes\t%d\nlag_seconds\t%.1f\n", s.Active, s.WALStatus, s.ConfirmedLSN, s.LagBytes, s.LagSeconds)
		if err := w.Flush(); err != nil {
			return err
		}
		w = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "\nTENANT\tLAST EVENT (COMMIT TIME)\tAGO\tEVENTS PUBLISHED\n")
		for _, t := range s.Tenants {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", t.TenantID, t.LastCommitAt.UTC().Format(time.RFC3339), time.Since(t.LastCommitAt).Round(time.Second), t.Events)
		}
		return w.Flush()
	})
}
