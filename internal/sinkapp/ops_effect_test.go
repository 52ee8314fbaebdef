package sinkapp

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// operatorCommands lists the sink's commands but run, as kong knows
// them ("tenants enable"), so a new command cannot go untested below.
func operatorCommands(t *testing.T) []string {
	t.Helper()
	parser, err := kong.New(&flags{}, kong.Name("sink"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var walk func(n *kong.Node, prefix string)
	walk = func(n *kong.Node, prefix string) {
		for _, c := range n.Children {
			if c.Type != kong.CommandNode {
				continue
			}
			full := strings.TrimSpace(prefix + " " + c.Name)
			sub := slices.ContainsFunc(c.Children, func(k *kong.Node) bool { return k.Type == kong.CommandNode })
			if sub {
				walk(c, full)
			} else if full != "run" {
				names = append(names, full)
			}
		}
	}
	walk(parser.Model.Node, "")
	slices.Sort(names)
	return names
}

// No operator command reports success without an effect: each one is run
// here and its effect checked in the delivery log or at the partner;
// each one that changes something, run again with nothing left to do,
// says so and exits 1. Every act is recorded with its actor and reason.
func TestEveryOperatorCommandHasAnEffectOrSaysNothingToDo(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", BodyContains: `"n":1`, Status: 422, Reason: "price must be positive"})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	e.produce("globex", "globex-1", "product.updated", `{"n":1}`)
	e.start("--config", e.config(""))
	waitFor(t, time.Minute, "a rejection and a success", func() bool {
		return e.state("acme-1") == "rejected" && e.state("globex-1") == "succeeded"
	})
	ok := func(want string, args ...string) string {
		t.Helper()
		code, out, errOut := e.runCmd(args...)
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("sink %v: exit %d, want 0 and %q in\n%s%s", args, code, want, out, errOut)
		}
		return out
	}
	nothing := func(want string, args ...string) {
		t.Helper()
		code, out, errOut := e.runCmd(args...)
		if code != 1 || !strings.Contains(errOut, want) {
			t.Fatalf("sink %v with nothing to do: exit %d, want 1 and %q in\n%s%s", args, code, want, out, errOut)
		}
	}
	var acts int
	acted := func(action string) {
		t.Helper()
		var n int
		if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.operator_action WHERE action = $1 AND actor LIKE 'os:%' AND at > now() - interval '1 minute'`,
			action).Scan(&n); err != nil || n == 0 {
			t.Fatalf("no %s act recorded with its OS user (%v)", action, err)
		}
		acts++
	}
	tested := map[string]bool{}
	for _, c := range []struct {
		name string
		run  func()
	}{
		{"status", func() { ok("rejected=1", "status") }},
		{"failures", func() {
			if out := ok("acme-1", "failures", "--integration", "shop"); strings.Contains(out, "globex-1") {
				t.Fatalf("failures lists a success:\n%s", out)
			}
		}},
		{"skip", func() {
			ok("skipped shop/acme-1", "skip", "--integration", "shop", "--event", "acme-1", "--reason", "not now")
			if s := e.state("acme-1"); s != "skipped" {
				t.Fatalf("after skip: %s", s)
			}
			acted("skip")
			nothing("nothing to skip", "skip", "--integration", "shop", "--event", "acme-1", "--reason", "again")
		}},
		{"retry", func() {
			e.sim.ClearRules()
			ok("acme-1 (tenant acme, was skipped): now succeeded", "retry", "--integration", "shop", "--event", "acme-1", "--reason", "fixed")
			if got := e.delivered()["acme"]; len(got) != 1 || got[0] != 1 {
				t.Fatalf("acme at the partner after the retry: %v", got)
			}
			acted("retry")
			nothing("nothing to retry", "retry", "--integration", "shop", "--event", "acme-1")
		}},
		{"pause", func() {
			// (At the partner: TestOperatorPauseAndResumeSurviveRestart.)
			ok("paused shop tenant globex", "pause", "--integration", "shop", "--tenant", "globex", "--reason", "migration")
			var reason string
			if err := e.conn.QueryRow(context.Background(), `SELECT reason FROM ferry.pause WHERE integration = 'shop' AND tenant_id = 'globex'`).
				Scan(&reason); err != nil || reason != "migration" {
				t.Fatalf("pause row: %q %v", reason, err)
			}
			acted("pause")
			nothing("already paused", "pause", "--integration", "shop", "--tenant", "globex")
			e.produce("globex", "globex-2", "product.updated", `{"n":2}`)
		}},
		{"resume", func() {
			ok("resumed shop tenant globex", "resume", "--integration", "shop", "--tenant", "globex")
			var n int
			if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.pause`).Scan(&n); err != nil || n != 0 {
				t.Fatalf("pauses left after resume: %d %v", n, err)
			}
			waitFor(t, time.Minute, "globex-2 after the resume", func() bool { return len(e.delivered()["globex"]) == 2 })
			acted("resume")
			nothing("not paused", "resume", "--integration", "shop", "--tenant", "globex")
		}},
		{"prune", func() {
			ok("nothing to prune", "prune", "--older-than", "1h")
			if _, err := e.conn.Exec(context.Background(), `UPDATE ferry.delivery SET updated_at = now() - interval '2 hours' WHERE event_id = 'globex-1'`); err != nil {
				t.Fatal(err)
			}
			ok("pruned 1 finished deliveries", "prune", "--older-than", "1h")
			if s := e.state("globex-1"); s != "none" {
				t.Fatalf("globex-1 after prune: %s", s)
			}
			acted("prune")
		}},
		{"tenants list", func() { ok("globex", "tenants", "list", "--integration", "shop") }},
		{"tenants disable", func() {
			ok("disabled shop tenant globex", "tenants", "disable", "--integration", "shop", "--tenant", "globex", "--no-rollback")
			acted("disable")
			// (At the partner: e2e_switch_test.go.)
			var on bool
			if err := e.conn.QueryRow(context.Background(), `SELECT enabled FROM ferry.tenant_switch WHERE integration = 'shop' AND tenant_id = 'globex'`).
				Scan(&on); err != nil || on {
				t.Fatalf("switch row: enabled=%v %v", on, err)
			}
			nothing("already disabled", "tenants", "disable", "--integration", "shop", "--tenant", "globex", "--no-rollback")
		}},
		{"tenants enable", func() {
			ok("resync request", "tenants", "enable", "--integration", "shop", "--tenant", "globex", "--wait", "0s")
			acted("enable")
			var on bool
			if err := e.conn.QueryRow(context.Background(), `SELECT enabled FROM ferry.tenant_switch WHERE integration = 'shop' AND tenant_id = 'globex'`).
				Scan(&on); err != nil || !on {
				t.Fatalf("switch row: enabled=%v %v", on, err)
			}
			var n int
			if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.resync_request WHERE tenant_id = 'globex'`).Scan(&n); err != nil || n != 1 {
				t.Fatalf("resync requests: %d %v", n, err)
			}
		}},
	} {
		c.run()
		tested[c.name] = true
	}
	for _, name := range operatorCommands(t) {
		if !tested[name] {
			t.Errorf("operator command %q is not checked for its effect here", name)
		}
	}
	if acts != 7 {
		t.Fatalf("%d acts checked", acts)
	}
}
