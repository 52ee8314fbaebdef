package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
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

// The fault switch fails produce requests with a retriable error until it
// is told to stop; the producer's retries then get through.
func TestDevbrokerFaultSwitchFailsProduceUntilRemoved(t *testing.T) {
	ctl := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	addr, stop := start(t, "--data-dir", "", "--topics", "t", "--control-addr", ctl)
	defer stop()
	call := func(method, path string) string {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+ctl+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %s %v", method, path, resp.StatusCode, b, err)
		}
		return string(b)
	}
	call(http.MethodPost, "/faults/produce?error=NOT_LEADER_OR_FOLLOWER")
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.RecordRetries(1), kgo.RetryBackoffFn(func(int) time.Duration { return 10 * time.Millisecond }))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("x")}).FirstErr(); err == nil {
		t.Fatal("produce succeeded while the switch fails every produce")
	}
	if got := call(http.MethodGet, "/faults"); !strings.Contains(got, "produce NOT_LEADER_OR_FOLLOWER hits=") || strings.Contains(got, "hits=0") {
		t.Fatalf("GET /faults = %q, want a fault with hits", got)
	}
	call(http.MethodDelete, "/faults")
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("y")}).FirstErr(); err != nil {
		t.Fatalf("produce after the switch was removed: %v", err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+ctl+"/faults/produce?error=OFFSET_OUT_OF_RANGE", nil) // a constant URL parses
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a non-retriable error was accepted: %d", resp.StatusCode)
	}
}

func TestDevbrokerSyncWritesNeedsDataDir(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--data-dir", "", "--sync-writes"}, func(string) string { return "" }, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--sync-writes needs --data-dir") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}
