package main

import (
	"bytes"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/sink/sinktest"

	"example.com/crm-sink/fakecrm"
)

func TestMain(m *testing.M) { os.Exit(sinktest.Main(m)) }

// buildBinary builds this module's main package, as a user would.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "crm-sink")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// sinkCmd runs the binary with args, the API key in its environment.
func sinkCmd(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "CRM_API_KEY=test-key", "FERRY_LOG_FORMAT=text")
	return cmd
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitFor polls cond until it holds or the ceiling passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// The built binary is a whole sink with the crm type: it delivers each
// tenant's customer events to the CRM in order, parks a tenant whose
// event the CRM refuses while the others go on, and serves the stock
// operator commands (status, failures, skip) over the same database.
func TestBinaryDeliversToTheCRM(t *testing.T) {
	bin := buildBinary(t)
	crm := fakecrm.New("test-key")
	srv := httptest.NewServer(crm)
	t.Cleanup(srv.Close)
	db, kafka := sinktest.Postgres(t), sinktest.Kafka(t)
	cfg := writeFile(t, "sink.yaml", fmt.Sprintf(`
postgres_url: %s
kafka: {brokers: [%s]}
admin_addr: "off"
instance_id: crm-sink-e2e
integrations:
  - name: crm
    topics: [outbox.customer]
    commit_interval: 100ms
    park_recheck: 100ms
    retry: {initial: 50ms, max: 500ms}
    connector:
      type: crm
      url: %s
      api_key_env: CRM_API_KEY
      timeout: 2s
`, db, strings.Join(kafka.Brokers, ","), srv.URL))

	run := sinkCmd(bin, "run", "--config", cfg)
	var logs bytes.Buffer
	run.Stderr = &logs
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() error {
		stopped = true
		if err := run.Process.Signal(syscall.SIGTERM); err != nil {
			return err
		}
		return run.Wait()
	}
	t.Cleanup(func() {
		if !stopped {
			run.Process.Kill()
			run.Wait()
		}
		if t.Failed() {
			t.Logf("crm-sink log:\n%s", logs.String())
		}
	})

	ev := func(id, tenant, typ, customer, payload string) connector.Event {
		return connector.Event{ID: id, TenantID: tenant, EventType: typ, AggregateType: "customer", AggregateID: customer, Payload: []byte(payload)}
	}
	const refused = "00000000-0000-0000-0000-0000000000b1"
	for _, e := range []connector.Event{
		ev("00000000-0000-0000-0000-0000000000a1", "acme", "customer.created", "cu-1", `{"email": "ada@acme.example", "name": "Ada"}`),
		ev(refused, "globex", "customer.created", "cu-2", `{"email": "not-an-email", "name": "Bob"}`),
		ev("00000000-0000-0000-0000-0000000000a2", "acme", "customer.updated", "cu-1", `{"email": "ada@acme.example", "name": "Ada Lovelace"}`),
		ev("00000000-0000-0000-0000-0000000000a3", "acme", "customer.created", "cu-3", `{"email": "grace@acme.example", "name": "Grace"}`),
		ev("00000000-0000-0000-0000-0000000000b2", "globex", "customer.created", "cu-4", `{"email": "carol@globex.example", "name": "Carol"}`),
	} {
		kafka.Produce(t, "outbox.customer", e)
	}

	waitFor(t, "acme's events at the CRM", func() bool {
		c := crm.Contacts()
		return c["ada@acme.example"].Name == "Ada Lovelace" && c["grace@acme.example"].ID != ""
	})
	if n := crm.Applied(); n != 3 {
		t.Fatalf("the CRM applied %d changes, want 3 (two creates, one update): %+v", n, crm.Contacts())
	}
	if _, ok := crm.Contacts()["carol@globex.example"]; ok {
		t.Fatal("globex's second event was delivered while its first was refused (the lane must park)")
	}

	out, err := sinkCmd(bin, "failures", "--config", cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), refused) || !strings.Contains(string(out), "422") {
		t.Fatalf("failures (%v) does not list the refused event with its status:\n%s", err, out)
	}
	out, err = sinkCmd(bin, "status", "--config", cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "crm") {
		t.Fatalf("status (%v):\n%s", err, out)
	}
	out, err = sinkCmd(bin, "skip", "--config", cfg, "--integration", "crm", "--event", refused, "--reason", "bad email in the source").CombinedOutput()
	if err != nil {
		t.Fatalf("skip (%v):\n%s", err, out)
	}
	waitFor(t, "globex's next event after the skip", func() bool { return crm.Contacts()["carol@globex.example"].ID != "" })
	if n := crm.Applied(); n != 4 {
		t.Fatalf("the CRM applied %d changes, want 4", n)
	}
	if err := stop(); err != nil {
		t.Fatalf("crm-sink did not stop cleanly on SIGTERM: %v", err)
	}
}

// A crm block with problems stops the binary at start-up, exit code 2,
// each problem with its path, beside the rest of the config's.
func TestBinaryRefusesABadCRMBlock(t *testing.T) {
	bin := buildBinary(t)
	cfg := writeFile(t, "sink.yaml", `
postgres_url: postgres://x/y
kafka: {brokers: ["127.0.0.1:9092"]}
session_timeout: 1s
integrations:
  - name: crm
    topics: [outbox.customer]
    connector: {type: crm, url: "ftp://crm", api_key_env: CRM_KEY_NOT_SET_ANYWHERE, timeout: -1s}
  - name: crm2
    topics: [outbox.customer]
    connector: {type: crm, url: "https://crm.example", api_key_env: CRM_API_KEY, retries: 3}
`)
	cmd := sinkCmd(bin, "run", "--config", cfg)
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 2 {
		t.Fatalf("exit %d (%v), want 2:\n%s", code, err, out)
	}
	for _, want := range []string{
		`integrations[0].connector.url: "ftp://crm": give the CRM's http(s) base URL`,
		"integrations[0].connector.api_key_env: environment variable CRM_KEY_NOT_SET_ANYWHERE is not set",
		"integrations[0].connector.timeout: -1s: must not be negative",
		"integrations[1].connector.retries: unknown key (line 11): use one of api_key_env, timeout, url",
		"session_timeout: 1s",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The stock commands are all there.
	out, err = sinkCmd(bin, "--help").CombinedOutput()
	for _, c := range []string{"run", "status", "failures", "retry", "skip", "pause", "resume", "tenants"} {
		if err != nil || !strings.Contains(string(out), "  "+c) {
			t.Fatalf("--help (%v) lacks %s:\n%s", err, c, out)
		}
	}
}
