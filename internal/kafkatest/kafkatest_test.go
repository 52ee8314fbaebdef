package kafkatest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestStopStartKeepsSeededTopics stops and starts a broker with a data
// folder and reads back what was acknowledged before the outage.
func TestStopStartKeepsSeededTopics(t *testing.T) {
	if os.Getenv("FERRY_TEST_BACKEND") == "containers" {
		t.Skip("kfake only")
	}
	b := New(t, kfake.DataDir(t.TempDir()), kfake.SeedTopics(1, "kept"))
	cl := b.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "kept", Value: []byte("before")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	b.Stop(t)
	b.Start(t)
	got := b.Consume(t, 30*time.Second, AtLeast(1), "kept")
	if string(got[0].Value) != "before" {
		t.Fatalf("read %q after the restart; want %q", got[0].Value, "before")
	}
}
