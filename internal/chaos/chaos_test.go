package chaos

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// TestFaultSuite_NoLossNoReorderNoDoubleEffect is make chaos in short: two
// runs of three faults each, together every kind once, against the built
// binaries. It fails on any lost, reordered or twice-applied event and
// logs the figures; how fast things recover is printed, never asserted.
func TestFaultSuite_NoLossNoReorderNoDoubleEffect(t *testing.T) {
	if pgtest.Backend() == "containers" {
		t.Skip("the fault suite restarts a local PostgreSQL cluster") // never the default path
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/cdc", "./cmd/sink", "./cmd/devbroker")
	build.Dir = filepath.Join("..", "..")
	build.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the binaries: %v\n%s", err, out)
	}
	var log bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rs, err := Run(ctx, Config{Bin: bin, Seed: 42, Runs: 2, Faults: 3, Tenants: 50, Writers: 4, Rate: 300,
		Warmup: time.Second, Gap: time.Second, RecoveryCeiling: 20 * time.Second, Drain: 90 * time.Second, Log: &log})
	t.Log(log.String())
	if err != nil {
		t.Fatal(err)
	}
	s := Summarize(rs)
	var report bytes.Buffer
	s.Print(&report)
	t.Log("\n" + report.String())
	for _, k := range Kinds {
		if s.Faults[k] == 0 {
			t.Errorf("fault %s was never injected", k)
		}
	}
	if s.Total.Events == 0 || s.Total.PartnerApplied == 0 {
		t.Fatalf("nothing flowed: %d events committed, %d applied at the partner", s.Total.Events, s.Total.PartnerApplied)
	}
	if !s.OK() {
		t.Fatalf("guarantees broke under faults:\n%s", report.String())
	}
}

// The checker itself: a reader that drops seen ids and requires each
// tenant's sequence numbers to increase.
func TestOrderCheckCountsDuplicatesAndReorders(t *testing.T) {
	c := newOrderCheck()
	for _, r := range []record{
		{id: "a1", tenant: "a", seq: 1}, {id: "b1", tenant: "b", seq: 1},
		{id: "a3", tenant: "a", seq: 3}, {id: "a1", tenant: "a", seq: 1}, // a resend: duplicate, not reordered
		{id: "a2", tenant: "a", seq: 2}, // first seen after seq 3: reordered
		{id: "a4", tenant: "a", seq: 4}, {id: "b2", tenant: "b", seq: 2},
	} {
		c.add(r, "kafka")
	}
	if c.dups != 1 || c.reorders != 1 {
		t.Fatalf("dups %d reorders %d, want 1 and 1", c.dups, c.reorders)
	}
	if len(c.examples) != 1 || !strings.Contains(c.examples[0], "tenant a seq 2") || !strings.Contains(c.examples[0], "after seq 3") {
		t.Fatalf("evidence %q", c.examples)
	}
}

func TestSummaryFailsOnLossReorderOrDoubleEffect(t *testing.T) {
	for _, r := range []Result{{Lost: 1}, {Reordered: 1}, {PartnerLost: 1}, {PartnerReordered: 1}, {DoubleEffects: 1}, {Problems: []string{"x"}}} {
		if Summarize([]Result{{}, r}).OK() {
			t.Errorf("%+v passed", r)
		}
	}
	if !Summarize([]Result{{DuplicateRecords: 5, PartnerReplayed: 3, Exits: map[string]int{"cdc": 2}}}).OK() {
		t.Error("duplicates and exits alone failed the suite: they are figures, not broken guarantees")
	}
}

func TestScheduleTakesTurnsOverKinds(t *testing.T) {
	seen := map[string]int{}
	for i := range 2 {
		for _, k := range schedule(Config{Faults: 3}, i, newRand(uint64(i))) {
			seen[k]++
		}
	}
	for _, k := range Kinds {
		if seen[k] != 1 {
			t.Errorf("%s drawn %d times over two 3-fault runs, want 1", k, seen[k])
		}
	}
	full := schedule(Config{Faults: 8}, 0, newRand(1))
	for _, k := range Kinds {
		if !strings.Contains(strings.Join(full, ","), k) {
			t.Errorf("8-fault run lacks %s: %v", k, full)
		}
	}
}
