// Package testutil holds the small helpers the end-to-end test packages
// share: waiting for a condition with a ceiling, a free loopback address,
// and a buffer safe to write from a server goroutine while a test reads it.
package testutil

import (
	"bytes"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// WaitFor polls cond until it holds, failing the test after ceiling.
func WaitFor(t *testing.T, ceiling time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Eventually(ceiling, cond) {
		t.Fatalf("timed out after %s waiting for %s", ceiling, what)
	}
}

// Eventually polls cond until it holds or ceiling passes, and reports
// whether it held: for a test that must clean up before it fails.
func Eventually(ceiling time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(ceiling)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
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

// DeadAddr returns a 127.0.0.1:port that refuses connections for the
// rest of the test. A port FreeAddr returned, or a closed listener's, is
// free for anyone: another test process may listen on it (a broker, a
// partner) a moment later, and the "dead" server answers. DeadAddr keeps
// a socket bound to its port without listening (and without
// SO_REUSEADDR), so that no one else can bind it, and a connection is
// refused.
func DeadAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
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
