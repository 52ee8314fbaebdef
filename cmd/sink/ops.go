package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/pgdb"
)

// operate runs an operator command against the delivery log.
func (c *command) operate(ctx context.Context, stdout io.Writer) error {
	pool, err := pgxpool.New(ctx, c.cfg.PostgresURL)
	if err != nil {
		return pgdb.Explain("postgres", c.cfg.PostgresURL, err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return pgdb.Explain("postgres", c.cfg.PostgresURL, err)
	}
	// Idempotent: an operator may pause a tenant before the first run.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return pgdb.Explain("postgres", c.cfg.PostgresURL, err)
	}
	_, err = pgdb.Migrate(ctx, conn.Conn())
	conn.Release()
	if err != nil {
		return err
	}
	dlog := delivery.New(pool)
	defer dlog.Close()
	switch c.name {
	case "status":
		return status(ctx, dlog, c.f.Status, stdout)
	case "failures":
		return failures(ctx, dlog, c.f.Failures, stdout)
	case "retry":
		r := c.f.Retry
		if r.Event != "" {
			if err := dlog.Retry(ctx, r.Integration, r.Event); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "retrying %s/%s\n", r.Integration, r.Event)
			return nil
		}
		n, err := dlog.RetryTenant(ctx, r.Integration, r.Tenant)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "retrying %d deliveries of %s%s\n", n, r.Integration, map[bool]string{true: "", false: " tenant " + r.Tenant}[r.Tenant == ""])
		return nil
	case "skip":
		s := c.f.Skip
		if strings.TrimSpace(s.Reason) == "" {
			return fmt.Errorf("skip: --reason must say why")
		}
		if err := dlog.Skip(ctx, s.Integration, s.Event, s.Reason); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "skipped %s/%s: %s\n", s.Integration, s.Event, s.Reason)
		return nil
	case "pause":
		p := c.f.Pause
		if err := dlog.Pause(ctx, p.Integration, p.Tenant, p.Reason); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "paused %s\n", target(p.Integration, p.Tenant))
		return nil
	case "tenants list", "tenants enable", "tenants disable":
		return c.tenants(ctx, dlog, pool, stdout)
	case "resume":
		r := c.f.Resume
		if err := dlog.Resume(ctx, r.Integration, r.Tenant); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "resumed %s\n", target(r.Integration, r.Tenant))
		return nil
	}
	return fmt.Errorf("unknown command %q", c.name)
}

func status(ctx context.Context, dlog *delivery.Log, cmd statusCmd, stdout io.Writer) error {
	counts, parked, err := dlog.Counts(ctx)
	if err != nil {
		return err
	}
	if cmd.JSON {
		return writeJSON(stdout, map[string]any{"deliveries": counts, "parked": parked})
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INTEGRATION\tSTATE\tDELIVERIES")
	for _, c := range counts {
		fmt.Fprintf(w, "%s\t%s\t%d\n", c.Integration, c.State, c.Deliveries)
	}
	if len(parked) > 0 {
		fmt.Fprintln(w, "\nINTEGRATION\tPARKED TENANT\tQUEUED EVENTS")
		ins := make([]string, 0, len(parked))
		for in := range parked {
			ins = append(ins, in)
		}
		sort.Strings(ins)
		for _, in := range ins {
			tenants := make([]string, 0, len(parked[in]))
			for t := range parked[in] {
				tenants = append(tenants, t)
			}
			sort.Strings(tenants)
			for _, t := range tenants {
				fmt.Fprintf(w, "%s\t%s\t%d\n", in, t, parked[in][t])
			}
		}
	}
	return w.Flush()
}

func failures(ctx context.Context, dlog *delivery.Log, cmd failuresCmd, stdout io.Writer) error {
	f := delivery.Filter{Integration: cmd.Integration, TenantID: cmd.Tenant, Limit: cmd.Limit}
	for _, s := range cmd.State {
		f.States = append(f.States, delivery.State(s))
	}
	if cmd.Since > 0 {
		f.Since = time.Now().Add(-cmd.Since)
	}
	rows, err := dlog.Failures(ctx, f)
	if err != nil {
		return err
	}
	if cmd.JSON {
		return writeJSON(stdout, rows)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "UPDATED\tINTEGRATION\tTENANT\tEVENT\tTYPE\tSTATE\tATTEMPTS\tSTATUS\tREASON")
	for _, r := range rows {
		status := "-"
		if r.LastStatus != nil {
			status = fmt.Sprint(*r.LastStatus)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.UpdatedAt.UTC().Format(time.RFC3339), r.Integration, r.TenantID,
			r.EventID, r.EventType, r.State, r.Attempts, status, oneLine(r.Reason, 80))
		if cmd.Calls {
			for _, call := range r.Calls {
				fmt.Fprintf(w, "\t\t\t\t%s %s -> %d\t\t\t\trequest: %s | response: %s\n", call.Method, call.URL, call.Status,
					oneLine(call.RequestBody, 120), oneLine(call.ResponseBody, 120))
			}
		}
	}
	return w.Flush()
}

func target(integration, tenant string) string {
	if tenant == "" {
		return integration + " (all tenants)"
	}
	return integration + " tenant " + tenant
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
