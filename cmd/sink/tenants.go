package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/internal/consume"
	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/pkg/mapping"
)

// tenants runs `sink tenants list|enable|disable`.
func (c *command) tenants(ctx context.Context, dlog *delivery.Log, pool *pgxpool.Pool, stdout io.Writer) error {
	switch c.name {
	case "tenants enable":
		en := c.f.Tenants.Enable
		id, err := dlog.SetTenant(ctx, en.Integration, en.Tenant, true, en.Reason)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "enabled %s tenant %s; resync request %d filed\n", en.Integration, en.Tenant, id)
		deadline := time.Now().Add(en.Wait)
		for {
			var n *int
			err := pool.QueryRow(ctx, `SELECT events FROM ferry.resync_request WHERE id = $1`, id).Scan(&n)
			if err != nil {
				return fmt.Errorf("read resync request %d: %w", id, err)
			}
			if n != nil {
				fmt.Fprintf(stdout, "resync published %d events (each object's latest); they are delivered in order through the tenant's lane\n", *n)
				return nil
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(stdout, "resync not served yet: a running cdc on this database serves it within its resync_poll; "+
					"if cdc uses another database, run there: cdc resync --integration %s --tenant %s\n", en.Integration, en.Tenant)
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	case "tenants disable":
		return c.disable(ctx, dlog, pool, stdout)
	}
	l := c.f.Tenants.List
	ts, err := dlog.Tenants(ctx, l.Integration)
	if err != nil {
		return err
	}
	if l.JSON {
		if ts == nil {
			ts = []delivery.Tenant{}
		}
		return writeJSON(stdout, ts)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INTEGRATION\tTENANT\tSWITCH\tPAUSED\tDELIVERIES\tPARKED\tRESYNC\tLAST UPDATE")
	for _, t := range ts {
		sw := "enabled"
		if !t.Enabled {
			sw = "disabled"
		}
		states := make([]string, 0, len(t.Deliveries))
		for s, n := range t.Deliveries {
			states = append(states, fmt.Sprintf("%s=%d", s, n))
		}
		sort.Strings(states)
		last := "-"
		if t.LastUpdate != nil {
			last = t.LastUpdate.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\t%d\t%s\t%s\n", t.Integration, t.TenantID, sw, t.Paused, strings.Join(states, " "), t.Parked,
			orDash(t.Resync), last)
	}
	return w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// disable switches a tenant off, waits for the running sinks to notice
// and finish what they have in flight, then rolls the tenant back.
func (c *command) disable(ctx context.Context, dlog *delivery.Log, pool *pgxpool.Pool, stdout io.Writer) error {
	d := c.f.Tenants.Disable
	var in *Integration
	for i := range c.cfg.Integrations {
		if c.cfg.Integrations[i].Name == d.Integration {
			in = &c.cfg.Integrations[i]
		}
	}
	if in == nil && !d.NoRollback {
		return fmt.Errorf("tenants disable: integration %q is not in the --config file: the rollback needs its connector (or pass --no-rollback)", d.Integration)
	}
	if _, err := dlog.SetTenant(ctx, d.Integration, d.Tenant, false, d.Reason); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "disabled %s tenant %s: its new events are recorded as skipped\n", d.Integration, d.Tenant)
	if d.NoRollback {
		return nil
	}
	conn, err := in.connector(indexOf(c.cfg.Integrations, d.Integration))
	if err != nil {
		return err
	}
	// Running sinks re-read the switch every park_recheck; a delivery
	// already in flight finishes before the rollback reads the mappings.
	settle := time.Now().Add(2 * in.ParkRecheck)
	deadline := settle.Add(in.Timeout)
	for {
		n, err := dlog.InFlight(ctx, d.Integration, d.Tenant)
		if err != nil {
			return err
		}
		if n == 0 && time.Now().After(settle) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tenants disable: %d deliveries of %s are still in flight after %s; run the disable again", n, d.Tenant, in.Timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	maps, err := mapping.New(pool, 1)
	if err != nil {
		return err
	}
	res, err := consume.Rollback(ctx, d.Integration, d.Tenant, conn, dlog, maps, in.Timeout)
	fmt.Fprintf(stdout, "rollback: %d partner objects deleted, %d sub-mappings deleted with their owner, %d failed\n", res.Deleted, res.Skipped, len(res.Failed))
	for _, f := range res.Failed {
		fmt.Fprintf(stdout, "  failed: %s\n", f)
	}
	return err
}

func indexOf(ins []Integration, name string) int {
	for i, in := range ins {
		if in.Name == name {
			return i
		}
	}
	return -1
}
