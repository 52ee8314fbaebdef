package sinkapp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/ops"
	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// runCmd runs a sink command to completion and returns exit code, stdout
// and stderr.
func (e *env) runCmd(args ...string) (int, string, string) {
	e.t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, append(args, "--postgres-url", e.db), func(string) string { return "" }, &out, &errb)
	return code, out.String(), errb.String()
}

// An operator finds a rejected delivery with its status, reason and the
// partner call, skips it (the lane resumes), and retries a tenant's
// failed one — without SQL.
func TestOperatorFailuresSkipRetryAndStatus(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", BodyContains: `"n":1`, Status: 422, Reason: "price must be positive"})
	e.sim.AddRule(partnersim.Rule{Tenant: "globex", Status: 503, Reason: "maintenance"})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	e.produce("acme", "acme-2", "product.updated", `{"n":2}`)
	e.produce("globex", "globex-1", "product.updated", `{"n":1}`)
	e.start("--config", e.config("    retry: {initial: 1h, max: 1h}\n"))
	waitFor(t, time.Minute, "the rejection and the failure", func() bool {
		return e.state("acme-1") == "rejected" && e.state("globex-1") == "failed"
	})

	code, out, errOut := e.runCmd("failures", "--integration", "shop", "--json")
	if code != 0 {
		t.Fatalf("failures: %d %s", code, errOut)
	}
	var rows []delivery.Failure
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("failures --json: %v\n%s", err, out)
	}
	byID := map[string]delivery.Failure{}
	for _, r := range rows {
		byID[r.EventID] = r
	}
	rej := byID["acme-1"]
	if rej.State != "rejected" || rej.LastStatus == nil || *rej.LastStatus != 422 || !strings.Contains(rej.Reason, "price must be positive") ||
		len(rej.Calls) != 1 || !strings.Contains(rej.Calls[0].RequestBody, `"acme-1"`) {
		t.Fatalf("rejected row: %+v", rej)
	}
	if f := byID["globex-1"]; f.State != "failed" || f.LastStatus == nil || *f.LastStatus != 503 {
		t.Fatalf("failed row: %+v", f)
	}
	code, out, _ = e.runCmd("failures", "--tenant", "acme", "--calls")
	if code != 0 || !strings.Contains(out, "acme-1") || strings.Contains(out, "globex-1") || !strings.Contains(out, "POST") {
		t.Fatalf("failures table:\n%s", out)
	}

	if code, _, errOut := e.runCmd("skip", "--integration", "shop", "--event", "acme-1"); code != 2 || !strings.Contains(errOut, "--reason") {
		t.Fatalf("skip without reason: %d %s", code, errOut)
	}
	if code, _, errOut := e.runCmd("skip", "--integration", "shop", "--event", "nope", "--reason", "x"); code != 1 || !strings.Contains(errOut, "nothing to skip") {
		t.Fatalf("skip of an unknown event: %d %s", code, errOut)
	}
	if code, out, errOut := e.runCmd("skip", "--integration", "shop", "--event", "acme-1", "--reason", "bad price, fixed at the partner"); code != 0 {
		t.Fatalf("skip: %d %s %s", code, out, errOut)
	}
	waitFor(t, time.Minute, "acme's lane to resume", func() bool { return e.state("acme-2") == "succeeded" })

	e.sim.ClearRules()
	// The lane backs off for an hour; the operator's retry wakes it.
	if code, out, errOut := e.runCmd("retry", "--integration", "shop", "--tenant", "globex"); code != 0 ||
		!strings.Contains(out, "retrying 1 deliveries") || !strings.Contains(out, "globex-1 (tenant globex, was failed): now succeeded") {
		t.Fatalf("retry: %d %s %s", code, out, errOut)
	}

	code, out, _ = e.runCmd("status")
	if code != 0 || !strings.Contains(out, "skipped=1 succeeded=2") {
		t.Fatalf("status:\n%s", out)
	}
	// A log above delivery.CountedBelow rows: the problems are counted,
	// succeeded is estimated from the table's statistics, and says so.
	if _, err := e.conn.Exec(context.Background(), `ANALYZE ferry.delivery`); err != nil {
		t.Fatal(err)
	}
	old := delivery.CountedBelow
	delivery.CountedBelow = 0
	defer func() { delivery.CountedBelow = old }()
	code, out, _ = e.runCmd("status")
	if code != 0 || !strings.Contains(out, "skipped=1 succeeded≈2") {
		t.Fatalf("status of a large log:\n%s", out)
	}
	code, out, _ = e.runCmd("status", "--json")
	var sts []ops.IntegrationStatus
	if err := json.Unmarshal([]byte(out), &sts); code != 0 || err != nil || len(sts) != 1 ||
		!slices.Equal(sts[0].Estimated, []string{"succeeded"}) || sts[0].Deliveries["skipped"] != 1 {
		t.Fatalf("status --json of a large log: %v %+v\n%s", err, sts, out)
	}
	var acts int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.operator_action`).Scan(&acts); err != nil || acts != 2 {
		t.Fatalf("operator acts recorded: %d %v", acts, err)
	}
}

// A paused tenant's events wait (no partner call) while others flow, also
// across a restart; resuming delivers them in order.
func TestOperatorPauseAndResumeSurviveRestart(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	if code, out, errOut := e.runCmd("pause", "--integration", "shop", "--tenant", "acme", "--reason", "partner migration"); code != 0 {
		t.Fatalf("pause: %d %s %s", code, out, errOut)
	}
	for n := 1; n <= 3; n++ {
		e.produce("acme", fmt.Sprintf("acme-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
		e.produce("globex", fmt.Sprintf("globex-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	stop := e.start("--config", e.config(""))
	waitFor(t, time.Minute, "globex delivered", func() bool { return len(e.delivered()["globex"]) == 3 })
	if len(e.sim.Requests("acme")) != 0 {
		t.Fatal("a paused tenant's event reached the partner")
	}
	stop()
	e.start("--config", e.config(""))
	e.produce("globex", "globex-4", "product.updated", `{"n":4}`)
	waitFor(t, time.Minute, "globex-4 after the restart", func() bool { return len(e.delivered()["globex"]) == 4 })
	if len(e.sim.Requests("acme")) != 0 {
		t.Fatal("the pause did not survive a restart")
	}
	if code, _, errOut := e.runCmd("resume", "--integration", "shop", "--tenant", "nobody"); code != 1 || !strings.Contains(errOut, "not paused") {
		t.Fatalf("resume of a tenant that is not paused: %d %s", code, errOut)
	}
	if code, out, errOut := e.runCmd("resume", "--integration", "shop", "--tenant", "acme"); code != 0 {
		t.Fatalf("resume: %d %s %s", code, out, errOut)
	}
	waitFor(t, time.Minute, "acme after resume", func() bool { return len(e.delivered()["acme"]) == 3 })
	checkInOrder(t, e.delivered(), map[string]int{"acme": 3, "globex": 4})
}
