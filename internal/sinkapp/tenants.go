package sinkapp

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/ferry-cdc/ferry/internal/ops"
)

// tenants runs `sink tenants list|enable|disable`.
func (c *command) tenants(ctx context.Context, svc *ops.Service, stdout, stderr io.Writer) error {
	switch c.name {
	case "tenants enable":
		en := c.f.Tenants.Enable
		res, err := svc.Enable(ctx, en.Integration, en.Tenant, en.Reason, en.Wait)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "enabled %s tenant %s; resync request %d filed\n", en.Integration, en.Tenant, res.Request)
		switch {
		case res.Error != "":
			return fmt.Errorf("resync request %d failed after %d events: %s (fix cdc's outbox.resync_queries, then enable the tenant again)", res.Request, res.Events, res.Error)
		case res.Events >= 0:
			fmt.Fprintf(stdout, "resync published %d events (each object's latest; cdc leaves out those of objects changed meanwhile, whose own events are newer); they are delivered in order through the tenant's lane\n", res.Events)
		default:
			fmt.Fprintf(stdout, "resync not served yet: a running cdc on this database serves it within its resync_poll; "+
				"if cdc uses another database, run there: cdc resync --integration %s --tenant %s\n", en.Integration, en.Tenant)
		}
		return nil
	case "tenants disable":
		d := c.f.Tenants.Disable
		res, err := svc.Disable(ctx, d.Integration, d.Tenant, d.Reason, !d.NoRollback)
		if !ops.Switched(err) {
			return err
		}
		fmt.Fprintf(stdout, "disabled %s tenant %s: its new events are recorded as skipped\n", d.Integration, d.Tenant)
		if !d.NoRollback {
			fmt.Fprintf(stdout, "rollback: %d partner objects deleted, %d sub-mappings deleted with their owner, %d failed\n", res.Deleted, res.Skipped, len(res.Failed))
			for _, f := range res.Failed {
				fmt.Fprintf(stdout, "  failed: %s\n", f)
			}
		}
		return err
	}
	l := c.f.Tenants.List
	if l.Limit < 1 {
		return &ops.InputError{Status: 400, Msg: fmt.Sprintf("--limit: %d: use 1 to %d", l.Limit, ops.MaxTenantsLimit)}
	}
	ts, next, err := svc.TenantsPage(ctx, l.Integration, l.After, l.Limit)
	if err != nil {
		return err
	}
	if l.JSON { // stdout stays one JSON array; the cursor goes to stderr
		if next != "" {
			fmt.Fprintf(stderr, "more: --after %s\n", next)
		}
		return writeJSON(stdout, ts)
	}
	if next != "" {
		defer fmt.Fprintf(stdout, "more: --after %s\n", next)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "INTEGRATION\tTENANT\tSWITCH\tPAUSED\tDELIVERIES\tPARKED\tRESYNC\tLAST UPDATE")
	for _, t := range ts {
		sw := "enabled"
		if !t.Enabled {
			sw = "disabled"
		}
		last := "-"
		if t.LastUpdate != nil {
			last = t.LastUpdate.UTC().Format(time.RFC3339)
		}
		dl := counts(t.Deliveries)
		if t.DeliveriesOver > 0 {
			dl = fmt.Sprintf("over %d", t.DeliveriesOver) // not all read: sink failures --tenant lists its problems
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\t%d\t%s\t%s\n", t.Integration, t.TenantID, sw, t.Paused, dl, t.Parked,
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
