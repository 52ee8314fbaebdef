package sinkapp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/ops"
	"github.com/ferry-cdc/ferry/internal/pgdb"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// operate runs an operator command through the same service the admin
// API uses.
func (c *command) operate(ctx context.Context, stdout, stderr io.Writer) error {
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
	dlog, err := delivery.New(pool, delivery.Options{Outcomes: c.cfg.outcomeTopics()})
	if err != nil {
		return err
	}
	defer dlog.Close()
	svc, err := c.service(dlog, pool, nil)
	if err != nil {
		return err
	}
	// Every act is recorded under the OS user who ran the command.
	ctx = delivery.WithActor(ctx, osUser())
	switch c.name {
	case "status":
		return status(ctx, svc, c.f.Status, stdout)
	case "failures":
		return failures(ctx, svc, c.f.Failures, stdout, stderr)
	case "retry":
		return redrive(ctx, svc, c.f.Retry, stdout)
	case "skip":
		s := c.f.Skip
		if err := svc.Skip(ctx, s.Integration, s.Event, s.Reason); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "skipped %s/%s: %s\n", s.Integration, s.Event, s.Reason)
		return nil
	case "pause":
		p := c.f.Pause
		if err := svc.Pause(ctx, p.Integration, p.Tenant, p.Reason); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "paused %s\n", ops.Target(p.Integration, p.Tenant))
		return nil
	case "resume":
		r := c.f.Resume
		if err := svc.Resume(ctx, r.Integration, r.Tenant, r.Reason); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "resumed %s\n", ops.Target(r.Integration, r.Tenant))
		return nil
	case "prune":
		res, err := svc.Prune(ctx, c.f.Prune.OlderThan)
		if err != nil {
			return err
		}
		if res.Deliveries == 0 {
			fmt.Fprintf(stdout, "nothing to prune: no finished delivery was last updated more than %s ago\n", c.f.Prune.OlderThan)
			return nil
		}
		fmt.Fprintf(stdout, "pruned %d finished deliveries and %d kept attempts last updated more than %s ago (unfinished deliveries are never pruned)\n",
			res.Deliveries, res.Attempts, c.f.Prune.OlderThan)
		return nil
	case "tenants list", "tenants enable", "tenants disable":
		return c.tenants(ctx, svc, stdout, stderr)
	}
	return fmt.Errorf("unknown command %q", c.name)
}

// osUser names who runs the CLI, for the record of operator acts.
func osUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return "os:" + u.Username
	}
	if u := os.Getenv("USER"); u != "" {
		return "os:" + u
	}
	return fmt.Sprintf("os:uid %d", os.Getuid())
}

// redrive redrives, prints what it took and where it goes in the
// tenant's order, and waits (up to --wait) for the running sink to
// deliver it, printing each one's state then.
func redrive(ctx context.Context, svc *ops.Service, r retryCmd, stdout io.Writer) error {
	res, err := svc.Retry(ctx, ops.RetryRequest{Integration: r.Integration, Event: r.Event, Tenant: r.Tenant, All: r.All,
		States: r.State, Since: r.Since, Reason: r.Reason})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "retrying %d deliveries of %s: %s\n", res.Count, ops.Target(r.Integration, r.Tenant), ops.RedriveOrder)
	if r.Wait <= 0 {
		for _, e := range res.Events {
			fmt.Fprintf(stdout, "  %s (tenant %s, was %s): queued\n", e.EventID, e.TenantID, e.From)
		}
		return nil
	}
	states, open, err := svc.WaitRedriven(ctx, r.Integration, res.Events, r.Wait)
	if err != nil {
		return err
	}
	for _, e := range res.Events {
		fmt.Fprintf(stdout, "  %s (tenant %s, was %s): now %s\n", e.EventID, e.TenantID, e.From, orDash(string(states[e.EventID])))
	}
	if open > 0 {
		fmt.Fprintf(stdout, "%d not delivered yet after %s: no running sink of %s has acted on them yet (they go when one owns their partition and its lane gets there; see sink status)\n",
			open, r.Wait, r.Integration)
	}
	return nil
}

func status(ctx context.Context, svc *ops.Service, cmd statusCmd, stdout io.Writer) error {
	sts, err := svc.Status(ctx)
	if err != nil {
		return err
	}
	if cmd.JSON {
		return writeJSON(stdout, sts)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INTEGRATION\tBREAKER\tSINKS\tLANES\tDELIVERIES/S\tDELIVERIES\tLAG")
	for _, s := range sts {
		lag := fmt.Sprint(s.LagTotal)
		if s.LagError != "" {
			lag = "? (" + s.LagError + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%.1f\t%s\t%s\n", s.Name, orDash(s.Breaker), len(s.Processes), counts(s.Lanes), s.Rate, counts(s.Deliveries, s.Estimated...), lag)
	}
	fmt.Fprintln(w, "\nINTEGRATION\tTOPIC\tPARTITION\tCOMMITTED\tEND\tLAG")
	for _, s := range sts {
		for _, l := range s.Lag {
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\n", s.Name, l.Topic, l.Partition, l.Committed, l.End, l.Lag)
		}
	}
	fmt.Fprintln(w, "\nINTEGRATION\tPARKED TENANT\tQUEUED EVENTS")
	for _, s := range sts {
		tenants := make([]string, 0, len(s.Parked))
		for t := range s.Parked {
			tenants = append(tenants, t)
		}
		sort.Slice(tenants, func(i, j int) bool { // most first
			a, b := s.Parked[tenants[i]], s.Parked[tenants[j]]
			return a > b || (a == b && tenants[i] < tenants[j])
		})
		for _, t := range tenants {
			fmt.Fprintf(w, "%s\t%s\t%d\n", s.Name, t, s.Parked[t])
		}
		if more := s.ParkedTenants - int64(len(tenants)); more > 0 {
			fmt.Fprintf(w, "%s\t(%d more tenants)\t%d in all (sink tenants --integration %s lists them)\n", s.Name, more, s.ParkedTotal, s.Name)
		}
	}
	return w.Flush()
}

// counts prints a state → count map as "a=1 b=2", or "-"; the states
// named estimated as "a≈1".
func counts[N int | int64](m map[string]N, estimated ...string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, len(keys))
	for i, k := range keys {
		sep := "="
		if slices.Contains(estimated, k) {
			sep = "≈" // an estimate from the table's statistics
		}
		out[i] = fmt.Sprintf("%s%s%d", k, sep, m[k])
	}
	return orDash(strings.Join(out, " "))
}

// failures prints a page of problem deliveries; the next page's cursor
// follows the table ("more: --cursor …"), or goes to stderr with
// --json (stdout stays one JSON array).
func failures(ctx context.Context, svc *ops.Service, cmd failuresCmd, stdout, stderr io.Writer) error {
	f := delivery.Filter{Integration: cmd.Integration, TenantID: cmd.Tenant, Limit: cmd.Limit, Cursor: cmd.Cursor, History: cmd.Calls}
	for _, s := range cmd.State {
		f.States = append(f.States, delivery.State(s))
	}
	if cmd.Since > 0 {
		f.Since = time.Now().Add(-cmd.Since)
	}
	rows, next, err := svc.Failures(ctx, f)
	if err != nil {
		return err
	}
	if cmd.JSON {
		if next != "" {
			fmt.Fprintf(stderr, "more: --cursor %s\n", next)
		}
		return writeJSON(stdout, rows)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PROBLEM AT\tINTEGRATION\tTENANT\tEVENT\tTYPE\tSTATE\tATTEMPTS\tSTATUS\tREASON")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.ProblemAt.UTC().Format(time.RFC3339), r.Integration, r.TenantID,
			r.EventID, r.EventType, r.State, r.Attempts, statusText(r.LastStatus), oneLine(r.Reason, 80))
		if cmd.Calls {
			for _, st := range r.Steps {
				fmt.Fprintf(w, "\t\t\t\tstep %s done\t\t\t\tpartner id: %s\n", st.Name, orDash(st.RemoteID))
			}
			// Every kept attempt with its calls; the delivery's own last
			// calls when none is kept (a delivery written before 0011).
			for i, a := range r.History {
				if i > 0 && r.History[i-1].Attempt != a.Attempt-1 {
					fmt.Fprintf(w, "\t\t\t\t… attempts %d-%d not kept\t\t\t\t\n", r.History[i-1].Attempt+1, a.Attempt-1)
				}
				dur := "-"
				if a.DurationMS != nil {
					dur = fmt.Sprintf("%.0fms", *a.DurationMS)
				}
				fmt.Fprintf(w, "\t\t\t\tattempt %d %s\t\t\t%s\t%s at %s, %s\n", a.Attempt, a.State, statusText(a.Status), oneLine(a.Reason, 80),
					a.FinishedAt.UTC().Format(time.RFC3339), dur)
				printCalls(w, a.Calls)
			}
			if len(r.History) == 0 {
				printCalls(w, r.Calls)
			}
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if next != "" {
		fmt.Fprintf(stdout, "more: --cursor %s\n", next)
	}
	return nil
}

func statusText(s *int) string {
	if s == nil {
		return "-"
	}
	return fmt.Sprint(*s)
}

func printCalls(w io.Writer, calls []connector.Call) {
	for _, call := range calls {
		fmt.Fprintf(w, "\t\t\t\t  %s %s -> %d\t\t\t\trequest: %s | response: %s\n", call.Method, call.URL, call.Status,
			oneLine(call.RequestBody, 120), oneLine(call.ResponseBody, 120))
	}
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
