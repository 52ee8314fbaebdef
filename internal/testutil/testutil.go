// Package testutil holds the small helpers the end-to-end test packages
// share: waiting for a condition with a ceiling, a free loopback address,
// and a buffer safe to write from a server goroutine while a test reads it.
package testutil

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"
)

// WaitFor polls cond until it holds, failing the test after ceiling.
func WaitFor(t *testing.T, ceiling time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ceiling)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", ceiling, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreeAddr returns a free 127.0.0.1:port.
func FreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// SyncBuffer is a bytes.Buffer safe for concurrent Write and String.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
