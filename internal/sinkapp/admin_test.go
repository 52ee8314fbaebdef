package sinkapp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/ops"
	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// api calls the sink's admin API and decodes the JSON answer into out.
func api(t *testing.T, addr, token, method, path, body string, out any) int {
	t.Helper()
	var rdr io.Reader
	if body != "" {
		rdr = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+addr+path, rdr)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json") // the API takes JSON only
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

type apiError struct {
	Error string `json:"error"`
}

// Every admin API operation against a running sink, real Postgres and
// kfake: token enforcement, status with live lanes, breaker and consumer
// lag, failures, skip, retry, pause, resume, the tenant switch, and clear
// 4xx answers to bad requests.
func TestAdminAPI(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Status: 422, Reason: "sku unknown"})
	e.sim.AddRule(partnersim.Rule{Tenant: "initech", Status: 503, Reason: "down"})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	e.produce("globex", "globex-1", "product.updated", `{"n":1}`)
	e.produce("initech", "initech-1", "product.updated", `{"n":1}`)
	addr := freeAddr(t)
	const token = "s3cret"
	e.vars = map[string]string{"FERRY_ADMIN_TOKEN": token, "FERRY_ADMIN_TOKEN_NAME": "oncall-bot"}
	e.start("--config", e.config("    retry: {initial: 1h, max: 1h}\n"), "--admin-addr", addr)
	waitFor(t, time.Minute, "the rejection and the failure", func() bool {
		return e.state("acme-1") == "rejected" && e.state("initech-1") == "failed" && e.state("globex-1") == "succeeded"
	})

	var ae apiError
	if code := api(t, addr, "", "GET", "/api/v1/status", "", &ae); code != 401 || !strings.Contains(ae.Error, "token") {
		t.Fatalf("no token: %d %+v", code, ae)
	}
	if code := api(t, addr, "wrong", "GET", "/api/v1/status", "", &ae); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}
	if resp, err := http.Get("http://" + addr + "/debug/pprof/"); err != nil || resp.StatusCode != 401 {
		t.Fatalf("pprof without the token: %v %v", resp.StatusCode, err)
	}
	var st []struct {
		Integration string           `json:"integration"`
		Breaker     string           `json:"breaker"`
		Lanes       map[string]int   `json:"lanes"`
		Deliveries  map[string]int64 `json:"deliveries"`
		Processes   []struct {
			Partitions []string `json:"partitions"`
		} `json:"processes"`
		Lag []struct {
			Topic string `json:"topic"`
			Lag   int64  `json:"lag"`
		} `json:"lag"`
		LagError string `json:"lag_error"`
	}
	waitFor(t, 30*time.Second, "the live report and committed offsets", func() bool {
		if api(t, addr, token, "GET", "/api/v1/status", "", &st) != 200 || len(st) != 1 {
			return false
		}
		return len(st[0].Processes) == 1 && len(st[0].Lag) > 0 && st[0].Lanes["parked"] == 1 && st[0].Lanes["backing_off"] == 1
	})
	s := st[0]
	if s.Integration != "shop" || s.Breaker != "closed" || s.Deliveries["rejected"] != 1 || len(s.Processes[0].Partitions) == 0 || s.LagError != "" {
		t.Fatalf("status: %+v", s)
	}

	var rows []struct {
		EventID string `json:"event_id"`
		State   string `json:"state"`
		Calls   []struct {
			Status int `json:"status"`
		} `json:"calls"`
	}
	if code := api(t, addr, token, "GET", "/api/v1/failures?integration=shop&tenant=acme&since=1h", "", &rows); code != 200 ||
		len(rows) != 1 || rows[0].EventID != "acme-1" || rows[0].State != "rejected" || len(rows[0].Calls) != 1 || rows[0].Calls[0].Status != 422 {
		t.Fatalf("failures: %d %+v", code, rows)
	}
	for _, bad := range []string{"since=soon", "state=lost", "limit=x"} {
		if code := api(t, addr, token, "GET", "/api/v1/failures?"+bad, "", &ae); code != 400 || ae.Error == "" {
			t.Fatalf("failures?%s: %d %+v", bad, code, ae)
		}
	}

	for _, c := range []struct {
		path, body string
		want       int
		errHas     string
	}{
		{"/api/v1/skip", `{"integration":"shop","event":"acme-1"}`, 400, "reason is required"},
		{"/api/v1/skip", `{"integration":"shop","event":"acme-1","reason":"sku retired","extra":1}`, 400, "unknown field"},
		{"/api/v1/skip", `{"integration":"shop","event":"globex-1","reason":"x"}`, 409, "nothing to skip"},
		{"/api/v1/retry", `{"integration":"shop"}`, 400, "exactly one of"},
		{"/api/v1/retry", `{"integration":"shop","event":"globex-1"}`, 409, "nothing to retry"},
		{"/api/v1/resume", `{"integration":"shop","tenant":"nobody"}`, 409, "not paused"},
		{"/api/v1/tenants/disable", `{"integration":"nope","tenant":"acme"}`, 400, "not in the --config"},
		{"/api/v1/pause", `not json`, 400, "request body"},
	} {
		if code := api(t, addr, token, "POST", c.path, c.body, &ae); code != c.want || !strings.Contains(ae.Error, c.errHas) {
			t.Errorf("POST %s %s: %d %q; want %d %q", c.path, c.body, code, ae.Error, c.want, c.errHas)
		}
	}

	var ok map[string]any
	if code := api(t, addr, token, "POST", "/api/v1/skip", `{"integration":"shop","event":"acme-1","reason":"sku retired"}`, &ok); code != 200 {
		t.Fatalf("skip: %d %v", code, ok)
	}
	waitFor(t, 10*time.Second, "skipped", func() bool { return e.state("acme-1") == "skipped" })
	e.sim.ClearRules()
	if code := api(t, addr, token, "POST", "/api/v1/retry", `{"integration":"shop","tenant":"initech"}`, &ok); code != 200 || ok["retrying"] != float64(1) {
		t.Fatalf("retry: %d %v", code, ok)
	}
	if code := api(t, addr, token, "POST", "/api/v1/pause", `{"integration":"shop","tenant":"globex","reason":"migration"}`, &ok); code != 200 {
		t.Fatalf("pause: %d", code)
	}
	if code := api(t, addr, token, "POST", "/api/v1/pause", `{"integration":"shop","tenant":"globex","reason":"again"}`, &ae); code != 409 || !strings.Contains(ae.Error, "already paused") {
		t.Fatalf("pause of a paused tenant: %d %+v", code, ae)
	}
	if code := api(t, addr, token, "POST", "/api/v1/tenants/disable", `{"integration":"shop","tenant":"initech","no_rollback":true}`, &ok); code != 200 {
		t.Fatalf("disable: %d %v", code, ok)
	}
	var ts []struct {
		TenantID string `json:"tenant_id"`
		Enabled  bool   `json:"enabled"`
		Paused   bool   `json:"paused"`
	}
	if code := api(t, addr, token, "GET", "/api/v1/tenants?integration=shop", "", &ts); code != 200 {
		t.Fatalf("tenants: %d", code)
	}
	got := map[string]string{}
	for _, x := range ts {
		got[x.TenantID] = fmt.Sprintf("enabled=%v paused=%v", x.Enabled, x.Paused)
	}
	if got["globex"] != "enabled=true paused=true" || got["initech"] != "enabled=false paused=false" || got["acme"] != "enabled=true paused=false" {
		t.Fatalf("tenants: %v", got)
	}
	var en struct {
		Request int64 `json:"resync_request"`
		Events  int   `json:"events"`
	}
	if code := api(t, addr, token, "POST", "/api/v1/tenants/enable", `{"integration":"shop","tenant":"initech"}`, &en); code != 200 || en.Request == 0 || en.Events != -1 {
		t.Fatalf("enable: %d %+v", code, en)
	}
	if code := api(t, addr, token, "POST", "/api/v1/resume", `{"integration":"shop","tenant":"globex"}`, &ok); code != 200 {
		t.Fatalf("resume: %d", code)
	}
	// Every act names the token's holder.
	var acts, byBot int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*), count(*) FILTER (WHERE actor = 'token:oncall-bot') FROM ferry.operator_action`).
		Scan(&acts, &byBot); err != nil || acts != 6 || byBot != acts {
		t.Fatalf("operator acts: %d, %d by token:oncall-bot (%v); want skip, retry, pause, disable, enable, resume", acts, byBot, err)
	}
	// The CLI sees the same live state (and Kafka lag with --brokers).
	code, out, errOut := e.runCmd("status", "--brokers", strings.Join(e.kafka.Addrs, ","))
	if code != 0 || !strings.Contains(out, "closed") || !strings.Contains(out, e.topic) {
		t.Fatalf("sink status: %d\n%s%s", code, out, errOut)
	}
}

// On a large log (its succeeded count estimated) the admin API reuses
// status's delivery counts for a while (they cost up to a second on
// 10,000,000 deliveries, and the page asks every 5 s) and says when they
// were read; an operator act, through this API or any other process,
// has the next status count again. A small log is counted at every call.
func TestStatusReusesTheCountsOfALargeLog(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	for _, id := range []string{"globex-1", "globex-2", "globex-3", "globex-4", "globex-5"} {
		e.produce("globex", id, "product.updated", `{"n":1}`)
	}
	addr := freeAddr(t)
	e.start("--config", e.config(""), "--admin-addr", addr)
	waitFor(t, time.Minute, "the deliveries", func() bool { return e.state("globex-5") == "succeeded" })
	type status struct {
		Deliveries map[string]int64 `json:"deliveries"`
		Estimated  []string         `json:"deliveries_estimated"`
		CountedAt  time.Time        `json:"counted_at"`
		CountedAge float64          `json:"counted_age_seconds"`
	}
	get := func() status {
		t.Helper()
		var st []status
		if code := api(t, addr, "", "GET", "/api/v1/status", "", &st); code != 200 || len(st) != 1 {
			t.Fatalf("status: %d %+v", code, st)
		}
		return st[0]
	}
	// Another process's work, as far as this one knows.
	skip := func(id string) {
		t.Helper()
		if _, err := e.conn.Exec(context.Background(), `UPDATE ferry.delivery SET state = 'skipped', problem_at = now()
			WHERE integration = 'shop' AND event_id = $1`, id); err != nil {
			t.Fatal(err)
		}
	}
	oldBelow, oldReuse := delivery.CountedBelow, ops.MinCountsReuse
	ops.MinCountsReuse = time.Hour // counts reused are reused for the whole test
	t.Cleanup(func() { delivery.CountedBelow, ops.MinCountsReuse = oldBelow, oldReuse })

	skip("globex-1")
	if st := get(); st.Deliveries["skipped"] != 1 || len(st.Estimated) != 0 || time.Since(st.CountedAt) > time.Minute {
		t.Fatalf("status of a small log: %+v", st)
	}
	skip("globex-2")
	if st := get(); st.Deliveries["skipped"] != 2 {
		t.Fatalf("status of a small log after a change: %+v; want it counted again", st)
	}

	if _, err := e.conn.Exec(context.Background(), `ANALYZE ferry.delivery`); err != nil {
		t.Fatal(err)
	}
	delivery.CountedBelow = 0
	first := get()
	if first.Deliveries["skipped"] != 2 || !slices.Equal(first.Estimated, []string{"succeeded"}) {
		t.Fatalf("status of a large log: %+v", first)
	}
	skip("globex-3")
	time.Sleep(50 * time.Millisecond) // for the age to grow
	if st := get(); st.Deliveries["skipped"] != 2 || !st.CountedAt.Equal(first.CountedAt) || st.CountedAge < 0.05 {
		t.Fatalf("status of a large log, asked again: %+v; want the counts of %v reused, at least 0.05 s old", st, first.CountedAt)
	}
	// An act through this API.
	var ok map[string]any
	if code := api(t, addr, "", "POST", "/api/v1/pause", `{"integration":"shop","tenant":"acme","reason":"migration"}`, &ok); code != 200 {
		t.Fatalf("pause: %d %v", code, ok)
	}
	second := get()
	if second.Deliveries["skipped"] != 3 || !second.CountedAt.After(first.CountedAt) {
		t.Fatalf("status of a large log after an act: %+v; want it counted again", second)
	}
	skip("globex-4")
	if st := get(); st.Deliveries["skipped"] != 3 {
		t.Fatalf("status of a large log, asked again: %+v; want the counts of %v reused", st, second.CountedAt)
	}
	// An act of another process (the CLI).
	if code, out, errOut := e.runCmd("resume", "--integration", "shop", "--tenant", "acme"); code != 0 {
		t.Fatalf("resume: %d %s %s", code, out, errOut)
	}
	if st := get(); st.Deliveries["skipped"] != 4 {
		t.Fatalf("status of a large log after another process's act: %+v; want it counted again", st)
	}
}

// A non-loopback admin address needs a token.
func TestAdminOffLoopbackNeedsAToken(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"--config", e.config(""), "--admin-addr", "0.0.0.0:0"}, func(string) string { return "" }, io.Discard, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "FERRY_ADMIN_TOKEN") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

// The read-only web page, rendered by headless Chromium (Debian's
// chromium): the DOM it builds from the API shows the tenants, the
// rejected delivery with its reason, and the lag; the screenshot has the
// page's red badge for the rejection and green for the closed breaker.
func TestWebPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run make deps (apt-get install chromium)")
	}
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Status: 422, Reason: "sku unknown"})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	e.produce("globex", "globex-1", "product.updated", `{"n":1}`)
	addr := freeAddr(t)
	e.vars = map[string]string{"FERRY_ADMIN_TOKEN": "pagetoken"}
	e.start("--config", e.config(""), "--admin-addr", addr)
	waitFor(t, time.Minute, "the rejection", func() bool { return e.state("acme-1") == "rejected" && e.state("globex-1") == "succeeded" })
	waitFor(t, 30*time.Second, "the live report", func() bool {
		var st []struct {
			Breaker string `json:"breaker"`
		}
		return api(t, addr, "pagetoken", "GET", "/api/v1/status", "", &st) == 200 && len(st) == 1 && st[0].Breaker == "closed"
	})
	url := "http://" + addr + "/#token=pagetoken"
	dir := t.TempDir()
	browser := func(args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
			"--user-data-dir=" + filepath.Join(dir, "profile"), "--virtual-time-budget=5000", "--window-size=1400,1000"}
		cmd := exec.CommandContext(ctx, chromium, append(append(base, args...), url)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
		}
		return out
	}
	dom := string(browser("--dump-dom"))
	for _, want := range []string{`data-loaded="true"`, "acme", "globex", "acme-1", "rejected", "sku unknown", "closed", e.topic, "#1 rejected 422"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	shot := filepath.Join(dir, "page.png")
	if p := os.Getenv("FERRY_KEEP_SCREENSHOT"); p != "" {
		shot = p
	}
	browser("--screenshot=" + shot)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1400 || b.Dy() != 1000 {
		t.Fatalf("screenshot is %v", b)
	}
	red, green := countColor(img, 0xc6, 0x28, 0x28), countColor(img, 0x1f, 0x8a, 0x4c)
	if red < 200 || green < 200 {
		t.Fatalf("screenshot shows %d red (rejection badge) and %d green (closed breaker) pixels; want the badges drawn", red, green)
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}
}

// countColor counts pixels within a small distance of the color.
func countColor(img image.Image, r, g, b uint8) int {
	n := 0
	bd := img.Bounds()
	for y := bd.Min.Y; y < bd.Max.Y; y++ {
		for x := bd.Min.X; x < bd.Max.X; x++ {
			pr, pg, pb, _ := img.At(x, y).RGBA()
			if near(pr>>8, r) && near(pg>>8, g) && near(pb>>8, b) {
				n++
			}
		}
	}
	return n
}

func near(a uint32, b uint8) bool { d := int(a) - int(b); return d > -8 && d < 8 }
