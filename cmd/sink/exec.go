package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

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
	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/connector/httpconn"
	"github.com/ferry-cdc/ferry/pkg/connector/webhook"
	"github.com/ferry-cdc/ferry/pkg/mapping"
)

func (c *command) exec(ctx context.Context, stdout, stderr io.Writer) error {
	if c.name != "run" {
		return cli.Print(stdout, func(w io.Writer) error { return c.operate(ctx, w) })
	}
	log, err := cli.Logger(stderr, c.cfg.LogFormat, c.cfg.LogLevel)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.cfg.PostgresURL)
	if err != nil {
		return pgdb.Explain("postgres", c.cfg.PostgresURL, err)
	}
	_, err = pgdb.Migrate(ctx, conn)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	pcfg, err := pgxpool.ParseConfig(c.cfg.PostgresURL)
	if err != nil {
		return pgdb.Explain("postgres", c.cfg.PostgresURL, err)
	}
	pcfg.MaxConns = c.cfg.PostgresMaxConns
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return pgdb.Explain("postgres", c.cfg.PostgresURL, err)
	}
	defer pool.Close()
	dlog, err := delivery.New(pool)
	if err != nil {
		return err
	}
	defer dlog.Close() // before the pool closes: defers run last-in first-out
	m := metrics.NewSink()

	maps, err := mapping.New(pool, 0)
	if err != nil {
		return err
	}
	svc, err := c.service(dlog, pool)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, in := range c.cfg.Integrations {
		e := consume.New(in.Config, c.cfg.Kafka, svc.Integrations[in.Name].Connector, dlog, maps, log, m)
		g.Go(func() error { return e.Run(gctx) })
	}
	if c.cfg.AdminAddr != "off" {
		srv, err := admin.Listen(c.cfg.AdminAddr, m.Registry, func() (bool, string) {
			if gctx.Err() != nil {
				return false, "stopping"
			}
			return true, ""
		}, svc.Routes(c.adminAccess()), c.adminAccess())
		if err != nil {
			return err
		}
		log.Info("admin listening", "addr", srv.Addr())
		g.Go(func() error { return srv.Run(gctx) })
	}
	err = g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	if err == nil && ctx.Err() == nil {
		return errors.New("all integrations stopped")
	}
	return err
}

func (c *command) adminAccess() admin.Access {
	return admin.Access{Token: c.cfg.AdminToken, AllowedHosts: c.cfg.AdminAllowedHosts}
}

// connector builds the integration's connector; i is its index in the
// config, for error paths.
func (in Integration) connector(i int) (connector.Connector, error) {
	if in.Connector.Type == "http" {
		return httpconn.New(in.Connector.Config, fmt.Sprintf("integrations[%d].connector", i))
	}
	cfg := webhook.Config{URL: in.Connector.URL, URLEnv: in.Connector.URLEnv, Timeout: in.Connector.Timeout}
	for j, name := range in.Connector.SigningSecretsEnv {
		v := os.Getenv(name)
		if v == "" {
			return nil, fmt.Errorf("integrations[%d].connector.signing_secrets_env[%d]: environment variable %s is not set", i, j, name)
		}
		cfg.SigningSecrets = append(cfg.SigningSecrets, v)
	}
	c, err := webhook.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("integrations[%d].connector.%w", i, err) // webhook's errors start with the key
	}
	return c, nil
}

// service is the operator surface over the configured integrations (their
// connectors are built once: the rollback uses them).
// Only run and tenants disable need them: other commands skip a connector
// that cannot be built (its secret may not be set where operators work).
func (c *command) service(dlog *delivery.Log, pool *pgxpool.Pool) (*ops.Service, error) {
	svc := &ops.Service{Log: dlog, Pool: pool, Kafka: c.cfg.Kafka, Integrations: map[string]ops.Integration{}}
	for i, in := range c.cfg.Integrations {
		conn, err := in.connector(i)
		if err != nil && (c.name == "run" || c.name == "tenants disable") {
			return nil, err
		}
		svc.Integrations[in.Name] = ops.Integration{Name: in.Name, Group: in.Group, Connector: conn, ParkRecheck: in.ParkRecheck, Timeout: in.Timeout}
	}
	return svc, nil
}
