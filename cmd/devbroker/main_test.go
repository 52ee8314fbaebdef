package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs the broker until the returned stop is called (a clean
// shutdown, like SIGTERM).
func start(t *testing.T, args ...string) (addr string, stop func()) {
	t.Helper()
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append(args, "--port", fmt.Sprint(port)), func(string) string { return "" }, &out, &errb)
	}()
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("devbroker did not listen: %s", errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return addr, func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("devbroker exited %d: %s", code, errb.String())
		}
	}
}

// Records of an auto-created topic survive a clean restart.
func TestDevbrokerKeepsDataAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	addr, stop := start(t, "--data-dir", dir)
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "outbox.product", Key: []byte("acme"), Value: []byte("kept")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	stop()

	addr, stop = start(t, "--data-dir", dir)
	defer stop()
	cl, err = kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics("outbox.product"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fs := cl.PollFetches(ctx)
	if err := ctx.Err(); err != nil {
		t.Fatal("no records after restart")
	}
	recs := fs.Records()
	if len(recs) != 1 || string(recs[0].Value) != "kept" {
		t.Fatalf("after restart: %v", recs)
	}
}
