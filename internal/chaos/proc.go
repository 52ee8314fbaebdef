package chaos

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// restartDelay is how long the supervisor waits before starting a process
// that exited (systemd's RestartSec, a pod's restart).
const restartDelay = 200 * time.Millisecond

// proc is one child process. Supervised, it is restarted whenever it exits
// until stop; unsupervised (the broker), the harness starts and kills it.
type proc struct {
	name, path string
	args, env  []string
	logPath    string
	supervised bool

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when cmd has exited
	killing  bool          // the running process's death is the harness's doing
	stopping bool
	// exits counts exits the harness did not cause, by how the process
	// ended; notes keeps the last log line of the first few.
	exits    map[string]int
	notes    []string
	starts   int
	loopDone chan struct{}
}

func newProc(name, path, logPath string, supervised bool, env []string, args ...string) *proc {
	return &proc{name: name, path: path, args: args, env: env, logPath: logPath, supervised: supervised, exits: map[string]int{}}
}

// start launches the process (and, when supervised, the loop that restarts
// it).
func (p *proc) start() error {
	if err := p.spawn(); err != nil {
		return err
	}
	if p.supervised {
		p.loopDone = make(chan struct{})
		go p.supervise()
	}
	return nil
}

func (p *proc) spawn() error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("chaos: %s log: %w", p.name, err)
	}
	fmt.Fprintf(logf, "=== chaos: start %s at %s\n", p.name, time.Now().Format("15:04:05.000"))
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The child dies with the harness: no orphan broker holds a port.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("chaos: start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.killing = cmd, done, false
	p.starts++
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		if !p.killing && !p.stopping {
			how := "exit 0"
			if err != nil {
				how = err.Error()
			}
			p.exits[how]++
			if len(p.notes) < 5 {
				p.notes = append(p.notes, fmt.Sprintf("%s %s at %s: %s", p.name, how, time.Now().Format("15:04:05.000"), lastLine(p.logPath)))
			}
		}
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

func (p *proc) supervise() {
	defer close(p.loopDone)
	for {
		p.mu.Lock()
		done := p.done
		p.mu.Unlock()
		<-done
		time.Sleep(restartDelay)
		p.mu.Lock()
		stopping := p.stopping
		p.mu.Unlock()
		if stopping {
			return
		}
		for p.spawn() != nil { // the binary is there; a failed fork is transient
			time.Sleep(restartDelay)
		}
	}
}

// kill sends SIGKILL to the running process and waits for it to exit. A
// supervised process is then restarted by its loop.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.killing = true
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL) // it may have exited on its own just now
	<-done
}

// stop ends the process for good: SIGTERM, then SIGKILL after 10 s. A
// supervisor that was restarting it at that moment starts it once more;
// that one is stopped too.
func (p *proc) stop() {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	for {
		p.mu.Lock()
		cmd, done := p.cmd, p.done
		p.mu.Unlock()
		if cmd != nil {
			_ = cmd.Process.Signal(syscall.SIGTERM) // it may have exited already
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Signal(syscall.SIGKILL) // a hung shutdown is in its log
				<-done
			}
		}
		if p.loopDone == nil {
			return
		}
		select {
		case <-p.loopDone:
			return
		case <-time.After(restartDelay + time.Second):
		}
	}
}

// unexpectedExits returns how many times the process exited on its own.
func (p *proc) unexpectedExits() (int, map[string]int, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	m := map[string]int{}
	for k, v := range p.exits {
		n += v
		m[k] = v
	}
	return n, m, append([]string(nil), p.notes...)
}

// lastLine returns the last non-empty line of a log file, shortened.
func lastLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	s := strings.TrimSpace(string(lines[len(lines)-1]))
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}
