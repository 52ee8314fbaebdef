package testutil

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// A dead address refuses connections, and no one can listen on it while
// the test runs (net.Listen sets SO_REUSEADDR, as servers do).
func TestDeadAddrRefusesAndCannotBeTaken(t *testing.T) {
	addr := DeadAddr(t)
	if _, err := net.DialTimeout("tcp", addr, 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v, want connection refused", addr, err)
	}
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Fatalf("listened on the dead address %s", addr)
	}
}
