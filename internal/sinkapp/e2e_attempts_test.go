package sinkapp

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// Every attempt is kept in its own row (the first and last
// attempts_kept of them), with its status, error, bounded calls and
// duration; `sink failures --calls` and the API show the history.
func TestEveryAttemptIsKeptFirstAndLastN(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Status: 503, Reason: "maintenance", Times: 6})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	addr := freeAddr(t)
	cfg := e.config("    retry: {initial: 10ms, max: 20ms}\n    breaker: {failures: 100, window: 100}\n")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, append([]byte("attempts_kept: 2\n"), b...), 0o600); err != nil {
		t.Fatal(err)
	}
	e.start("--config", cfg, "--admin-addr", addr)
	waitFor(t, time.Minute, "the success after six failures", func() bool { return e.state("acme-1") == "succeeded" })

	rows, err := e.conn.Query(context.Background(), `SELECT attempt, state, status, calls IS NOT NULL, finished_at >= started_at
		FROM ferry.delivery_attempt WHERE event_id = 'acme-1' ORDER BY attempt`)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for rows.Next() {
		var n, status int
		var state string
		var calls, timed bool
		if err := rows.Scan(&n, &state, &status, &calls, &timed); err != nil {
			t.Fatal(err)
		}
		if !calls || !timed {
			t.Fatalf("attempt %d: calls %v, timed %v", n, calls, timed)
		}
		kept = append(kept, fmt.Sprintf("%d:%s:%d", n, state, status))
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if got := strings.Join(kept, " "); got != "1:failed:503 2:failed:503 6:failed:503 7:succeeded:201" {
		t.Fatalf("kept attempts %q, want the first 2 and the last 2 of 7", got)
	}

	code, out, errOut := e.runCmd("failures", "--integration", "shop", "--state", "succeeded", "--calls")
	if code != 0 || !strings.Contains(out, "attempt 1 failed") || !strings.Contains(out, "… attempts 3-5 not kept") ||
		!strings.Contains(out, "attempt 7 succeeded") || !strings.Contains(out, "maintenance") {
		t.Fatalf("failures --calls: %d\n%s%s", code, out, errOut)
	}
	var page []delivery.Failure
	req, _ := http.NewRequest("GET", "http://"+addr+"/api/v1/failures?state=succeeded&history=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || len(page) != 1 || len(page[0].History) != 4 ||
		page[0].History[0].DurationMS == nil || len(page[0].History[3].Calls) != 1 || page[0].History[3].Calls[0].Status != 201 {
		t.Fatalf("API history: %v %+v", err, page)
	}
}

// The failure listings page by key (limit and cursor) in the CLI and the
// API, newest problem first, each row once; the query uses the
// delivery_problem index.
func TestFailureListingsPaginateByKey(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Status: 422, Reason: "no"})
	for n := 1; n <= 7; n++ {
		e.produce(fmt.Sprintf("t%d", n), fmt.Sprintf("e%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	addr := freeAddr(t)
	e.start("--config", e.config("    on_reject: skip\n"), "--admin-addr", addr)
	waitFor(t, time.Minute, "seven rejections", func() bool {
		var n int
		return e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.delivery WHERE state = 'rejected'`).Scan(&n) == nil && n == 7
	})

	seen := map[string]bool{}
	var order []time.Time
	cursor := ""
	for pages := 0; ; pages++ {
		args := []string{"failures", "--json", "--limit", "3"}
		if cursor != "" {
			args = append(args, "--cursor", cursor)
		}
		code, out, errOut := e.runCmd(args...)
		if code != 0 {
			t.Fatalf("failures page %d: %d %s", pages, code, errOut)
		}
		var rows []delivery.Failure
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("page %d: %v\n%s", pages, err, out)
		}
		for _, r := range rows {
			if seen[r.EventID] {
				t.Fatalf("%s listed twice", r.EventID)
			}
			seen[r.EventID] = true
			order = append(order, r.ProblemAt)
		}
		next, more := strings.CutPrefix(strings.TrimSpace(errOut), "more: --cursor ")
		if !more {
			if pages != 2 || len(rows) != 1 {
				t.Fatalf("last page %d had %d rows; want pages of 3, 3, 1", pages, len(rows))
			}
			break
		}
		cursor = next
	}
	if len(seen) != 7 {
		t.Fatalf("listed %d of 7", len(seen))
	}
	for i := 1; i < len(order); i++ {
		if order[i].After(order[i-1]) {
			t.Fatalf("not newest first: %v", order)
		}
	}
	if code, _, errOut := e.runCmd("failures", "--cursor", "garbage"); code != 1 || !strings.Contains(errOut, "not a cursor") {
		t.Fatalf("bad cursor: %d %s", code, errOut)
	}

	// The API: the same pages; the next one named in Link and Next-Cursor.
	resp, err := http.Get("http://" + addr + "/api/v1/failures?limit=5")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	link := resp.Header.Get("Link")
	if resp.Header.Get("Next-Cursor") == "" || !strings.Contains(link, `rel="next"`) || !strings.Contains(link, "cursor=") {
		t.Fatalf("API page headers: %v", resp.Header)
	}
	next := strings.TrimSuffix(strings.TrimPrefix(strings.Split(link, ";")[0], "<"), ">")
	resp, err = http.Get("http://" + addr + next)
	if err != nil {
		t.Fatal(err)
	}
	var rest []delivery.Failure
	if err := json.NewDecoder(resp.Body).Decode(&rest); err != nil || len(rest) != 2 || resp.Header.Get("Link") != "" {
		t.Fatalf("API second page: %v %d rows, Link %q", err, len(rest), resp.Header.Get("Link"))
	}
	resp.Body.Close()

	// The listing's query can run on the index alone (the planner picks
	// it once the log is large; a table this small is read whole).
	tx, err := e.conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(context.Background(), `SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off`); err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(pgtest.Texts(t, tx, `EXPLAIN SELECT event_id FROM ferry.delivery
		WHERE problem_at IS NOT NULL AND state = ANY('{rejected}') AND (problem_at, integration, event_id) < (now(), 'shop', 'e9')
		ORDER BY problem_at DESC, integration DESC, event_id DESC LIMIT 3`), "\n")
	if !strings.Contains(plan, "Index Scan using delivery_problem") || strings.Contains(plan, "Sort") {
		t.Fatalf("the listing does not read delivery_problem in order:\n%s", plan)
	}
}

// sink prune removes finished deliveries older than the limit, with
// their kept attempts, and never an unfinished one, nor one an operator
// asked to redrive, nor a rejection its lane still waits on (on_reject:
// park); with nothing old enough it says so.
func TestPruneRemovesOnlyFinishedDeliveries(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Status: 422, Reason: "no"})
	e.sim.AddRule(partnersim.Rule{Tenant: "umbrella", Status: 422, Reason: "no"})
	e.sim.AddRule(partnersim.Rule{Tenant: "globex", Status: 503, Reason: "down"})
	e.sim.AddRule(partnersim.Rule{Tenant: "initech", Status: 503, Reason: "down", Times: 1})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	e.produce("globex", "globex-1", "product.updated", `{"n":1}`)
	e.produce("initech", "initech-1", "product.updated", `{"n":1}`)
	e.produce("hooli", "hooli-1", "product.updated", `{"n":1}`)
	e.produce("umbrella", "umbrella-1", "product.updated", `{"n":1}`)
	stop := e.start("--config", e.config("    retry: {initial: 50ms, max: 1h}\n"))
	// initech-1's failed attempt must be recorded before the stop: a
	// call answered as the sink stops is not recorded (no attempt is
	// burnt; the delivery stays in flight for the next run), and the
	// count of kept attempts below would be one short.
	waitFor(t, time.Minute, "a parked rejection and initech's retry", func() bool {
		return e.state("umbrella-1") == "rejected" && e.state("initech-1") == "succeeded"
	})
	stop()
	// acme's lane moves on past its rejection (on_reject: skip, and a
	// later event of the same aggregate); umbrella's rejection has no
	// later event: a parked lane could still wait on it, so it stays.
	e.produce("acme", "acme-2", "product.updated", `{"n":2}`)
	e.start("--config", e.config("    on_reject: skip\n    retry: {initial: 50ms, max: 1h}\n"))
	waitFor(t, time.Minute, "a rejection, a failure and two successes", func() bool {
		return e.state("acme-1") == "rejected" && e.state("acme-2") == "rejected" && e.state("globex-1") == "failed" &&
			e.state("initech-1") == "succeeded" && e.state("hooli-1") == "succeeded"
	})
	if code, out, errOut := e.runCmd("prune", "--older-than", "24h"); code != 0 || !strings.Contains(out, "nothing to prune") {
		t.Fatalf("prune of a fresh log: %d %s %s", code, out, errOut)
	}
	// Two days pass for every row; hooli-1 is also asked to be redriven.
	if _, err := e.conn.Exec(context.Background(), `UPDATE ferry.delivery SET updated_at = now() - interval '2 days'`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.Exec(context.Background(), `INSERT INTO ferry.redrive (integration, event_id, tenant_id, topic, kafka_partition, lane_key)
		VALUES ('shop', 'hooli-1', 'hooli', 'nowhere', 0, 'hooli')`); err != nil {
		t.Fatal(err)
	}
	var attempts int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.delivery_attempt WHERE event_id IN ('acme-1', 'initech-1')`).Scan(&attempts); err != nil || attempts != 3 {
		t.Fatalf("kept attempts before: %d %v", attempts, err)
	}
	code, out, errOut := e.runCmd("prune", "--older-than", "24h")
	if code != 0 || !strings.Contains(out, "pruned 2 finished deliveries and 3 kept attempts") {
		t.Fatalf("prune: %d %s %s", code, out, errOut)
	}
	for id, want := range map[string]string{"acme-1": "none", "acme-2": "rejected", "initech-1": "none", "globex-1": "failed",
		"hooli-1": "succeeded", "umbrella-1": "rejected"} {
		got := e.state(id)
		if id == "globex-1" && got == "in_flight" {
			got = "failed" // the running sink is retrying it right now: unfinished either way
		}
		if got != want {
			t.Errorf("%s after prune: %s, want %s", id, got, want)
		}
	}
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.delivery_attempt WHERE event_id IN ('acme-1', 'initech-1')`).Scan(&attempts); err != nil || attempts != 0 {
		t.Fatalf("kept attempts of pruned deliveries: %d %v", attempts, err)
	}
	var acts int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.operator_action WHERE action = 'prune' AND actor LIKE 'os:%'`).Scan(&acts); err != nil || acts != 2 {
		t.Fatalf("prune acts: %d %v", acts, err)
	}
}
