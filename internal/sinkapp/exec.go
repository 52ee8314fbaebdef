package sinkapp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/ferry-cdc/ferry/internal/admin"
	"github.com/ferry-cdc/ferry/internal/cli"
	"github.com/ferry-cdc/ferry/internal/consume"
	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/ops"
	"github.com/ferry-cdc/ferry/internal/pgdb"
	"github.com/ferry-cdc/ferry/internal/retry"
	"github.com/ferry-cdc/ferry/pkg/mapping"
)

func (c *command) exec(ctx context.Context, stdout, stderr io.Writer) error {
	if c.name != "run" {
		if c.warning != nil {
			fmt.Fprintf(stderr, "sink: warning: `sink run` would refuse this configuration:\n%v\n", c.warning)
		}
		return cli.Print(stdout, func(w io.Writer) error { return c.operate(ctx, w, stderr) })
	}
	log, err := cli.Logger(stderr, c.cfg.LogFormat, c.cfg.LogLevel)
	if err != nil {
		return err
	}
	log.Info("sink starting", "instance_id", c.cfg.InstanceID, "session_timeout", c.cfg.SessionTimeout.String())
	m := metrics.NewSink()
	pcfg, err := pgxpool.ParseConfig(c.cfg.PostgresURL)
	if err != nil {
		return pgdb.Explain("postgres", c.cfg.PostgresURL, err)
	}
	pcfg.MaxConns = c.cfg.PostgresMaxConns
	boundStatements(pcfg.ConnConfig, c.cfg.PostgresStatementTimeout)
	// The pool connects lazily: nothing here needs the database up.
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return pgdb.Explain("postgres", c.cfg.PostgresURL, err)
	}
	defer pool.Close()
	dlog, err := delivery.New(pool, delivery.Options{StatementTimeout: c.cfg.PostgresStatementTimeout, Holder: consume.ProcessID, AttemptsKept: c.cfg.AttemptsKept,
		Outcomes: c.cfg.outcomeTopics()})
	if err != nil {
		return err
	}
	defer dlog.Close() // before the pool closes: defers run last-in first-out

	// The mapping writes of a create (intent, partner id) join the log's
	// group commit instead of committing one row each.
	maps, err := mapping.New(pool, 0, mapping.WithGroupCommit(dlog.GroupCommit()))
	if err != nil {
		return err
	}
	svc, err := c.service(dlog, pool, log)
	if err != nil {
		return err
	}
	engines := make([]*consume.Engine, len(c.cfg.Integrations))
	for i, in := range c.cfg.Integrations {
		engines[i] = consume.New(in.Config, c.cfg.Kafka, svc.Integrations[in.Name].Connector, dlog, maps, log, m)
	}
	var migrated atomic.Bool
	g, gctx := errgroup.WithContext(ctx)
	if c.cfg.AdminAddr != "off" {
		// Up before the dependencies, so /readyz says what it waits for.
		srv, err := admin.Listen(c.cfg.AdminAddr, m.Registry, func() (bool, string) {
			if gctx.Err() != nil {
				return false, "stopping"
			}
			if !migrated.Load() {
				return false, "waiting for postgres (delivery log)"
			}
			for _, e := range engines {
				if ok, why := e.Ready(); !ok {
					return false, why
				}
			}
			return true, ""
		}, svc.Routes(c.adminAccess()), c.adminAccess())
		if err != nil {
			return err
		}
		log.Info("admin listening", "addr", srv.Addr())
		g.Go(func() error { return srv.Run(gctx) })
	}
	g.Go(func() error {
		// Postgres down at start is weather: wait for it.
		err := retry.Reconnect{What: "postgres (delivery log)", Log: log,
			OnRetry: func(error) { m.Reconnects.WithLabelValues("postgres").Inc() },
		}.Run(gctx, func(ctx context.Context, up func()) error {
			if err := c.migrate(ctx); err != nil {
				return err
			}
			up()
			return nil
		})
		if err != nil || gctx.Err() != nil {
			return err
		}
		migrated.Store(true)
		for _, e := range engines {
			g.Go(func() error { return e.Run(gctx) })
		}
		return nil
	})
	err = g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	if err == nil && ctx.Err() == nil {
		return errors.New("all integrations stopped")
	}
	return err
}

// migrate applies the schema migrations on a connection of its own.
// Connection errors that a retry cannot fix (wrong password, refused by
// pg_hba.conf, a malformed URL) are permanent.
func (c *command) migrate(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, c.cfg.PostgresURL)
	if err != nil {
		err = pgdb.Explain("postgres", c.cfg.PostgresURL, err)
		if pgdb.Unfixable(err) {
			return retry.Permanent(err)
		}
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = pgdb.Migrate(ctx, conn)
	return err
}

// boundStatements makes the server end every statement of the pool's
// connections that runs longer than d (statement_timeout; the log's
// write connections copy it), and bounds connecting to about d too.
func boundStatements(cc *pgx.ConnConfig, d time.Duration) {
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	if _, set := cc.RuntimeParams["statement_timeout"]; !set { // the URL's options win
		cc.RuntimeParams["statement_timeout"] = strconv.FormatInt(d.Milliseconds(), 10)
	}
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = d
	}
}

func (c *command) adminAccess() admin.Access {
	return admin.Access{Token: c.cfg.AdminToken, TokenName: c.cfg.AdminTokenName, AllowedHosts: c.cfg.AdminAllowedHosts}
}

// service is the operator surface over the configured integrations (their
// connectors are built once: the rollback uses them).
// Only run and tenants disable need them: other commands skip a connector
// that cannot be built (its secret may not be set where operators work).
func (c *command) service(dlog *delivery.Log, pool *pgxpool.Pool, log *slog.Logger) (*ops.Service, error) {
	svc := &ops.Service{Log: dlog, Pool: pool, Kafka: c.cfg.Kafka, Integrations: map[string]ops.Integration{}}
	for i, in := range c.cfg.Integrations {
		conn, errs := c.reg.build(i, in, c.getenv, log)
		if len(errs) > 0 && (c.name == "run" || c.name == "tenants disable") {
			return nil, errors.Join(errs...)
		}
		svc.Integrations[in.Name] = ops.Integration{Name: in.Name, Group: in.Group, Connector: conn, ParkRecheck: in.ParkRecheck, Timeout: in.Timeout}
	}
	return svc, nil
}
