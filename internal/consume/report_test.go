package consume

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// A previous run's lease is ended early only when its process is known
// to be gone from this host.
func TestGoneHere(t *testing.T) {
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		gone bool
	}{
		{fmt.Sprintf("host/%d/1", exited.Process.Pid), true}, // exited
		{fmt.Sprintf("host/%d/2", os.Getpid()), true},        // this pid: an earlier run in a restarted container
		{fmt.Sprintf("host/%d/3", os.Getppid()), false},      // running
		{"host/x/3", false}, {"nonsense", false}, {"h/0/1", false}, // not a process id
	} {
		if got := goneHere(tc.id); got != tc.gone {
			t.Errorf("goneHere(%q) = %v, want %v", tc.id, got, tc.gone)
		}
	}
}
