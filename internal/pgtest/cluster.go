package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a throwaway PostgreSQL cluster started from the system's
// server binaries with wal_level=logical. It is owned by one process and
// removed by Stop.
type Cluster struct {
	// URL connects to the cluster's "postgres" database as the superuser.
	URL string
	// Port is the TCP port on 127.0.0.1 the cluster listens on.
	Port int

	dir    string
	cmd    *exec.Cmd
	done   chan error
	bindir string
	cred   *syscall.Credential
	opts   Options
}

// Options tunes a throwaway cluster. The zero value is ready to use.
type Options struct {
	// Port to listen on; 0 picks a free port.
	Port int
	// Settings are extra postgres -c settings (name → value) that override
	// the test defaults.
	Settings map[string]string
	// Log receives the server's stderr; nil discards it.
	Log *os.File
}

// Start runs initdb and starts postgres. When the process runs as root the
// server runs as the unprivileged "postgres" user, since PostgreSQL refuses
// to run as root.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bindir, err := binDir()
	if err != nil {
		return nil, err
	}
	cred, owner, err := serverCredential()
	if err != nil {
		return nil, err
	}
	// t.TempDir's parent is root-only, so the data folder lives in its own
	// temporary folder handed to the server's user.
	dir, err := os.MkdirTemp("", "ferry-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: make data folder: %w", err)
	}
	c := &Cluster{dir: dir, done: make(chan error, 1), bindir: bindir, cred: cred, opts: opts}
	fail := func(err error) (*Cluster, error) {
		_ = os.RemoveAll(dir) // best effort: the error being returned matters more
		return nil, err
	}
	data := filepath.Join(dir, "data")
	for _, d := range []string{dir, filepath.Join(dir, "sock")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fail(fmt.Errorf("pgtest: %w", err))
		}
		if owner != nil {
			if err := os.Chown(d, owner[0], owner[1]); err != nil {
				return fail(fmt.Errorf("pgtest: hand %s to the postgres user: %w", d, err))
			}
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(bindir, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("pgtest: initdb: %w\n%s", err, out))
	}

	port := opts.Port
	for attempt := 0; ; attempt++ {
		if opts.Port == 0 {
			if port, err = freePort(); err != nil {
				return fail(err)
			}
		}
		err = c.startServer(ctx, bindir, data, port, cred, opts)
		if err == nil || opts.Port != 0 || attempt == 3 {
			break
		}
	}
	if err != nil {
		return fail(err)
	}
	c.Port = port
	c.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	return c, nil
}

func (c *Cluster) startServer(ctx context.Context, bindir, data string, port int, cred *syscall.Credential, opts Options) error {
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": filepath.Join(c.dir, "sock"),
		"wal_level":               "logical",
		"max_replication_slots":   "64",
		"max_wal_senders":         "64",
		"max_connections":         "200",
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"wal_sender_timeout":      "60s",
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	args := []string{"-D", data}
	for k, v := range settings {
		args = append(args, "-c", k+"="+v)
	}
	cmd := exec.Command(filepath.Join(bindir, "postgres"), args...)
	// Pdeathsig stops the server if the test binary dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
	if opts.Log != nil {
		cmd.Stderr = opts.Log
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-done:
			return fmt.Errorf("pgtest: postgres exited during start-up: %v", err)
		default:
		}
		conn, err := pgx.Connect(ctx, url)
		if err == nil {
			closeErr := conn.Close(ctx)
			if closeErr == nil {
				c.cmd, c.done = cmd, done
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = cmd.Process.Signal(syscall.SIGQUIT) // we are failing start-up anyway
			<-done
			return fmt.Errorf("pgtest: postgres on port %d not ready after 30s: %v", port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Restart stops the server and starts it again on the same port and data,
// as an operator's `pg_ctl restart -m MODE` would: mode "fast" (SIGINT: a
// clean shutdown with a checkpoint), "immediate" (SIGQUIT: a crash
// restart; logical slots resume from the last checkpoint) or "kill"
// (SIGKILL of the postmaster). down, when positive, is how long the
// server stays down. Clients see their connections drop.
func (c *Cluster) Restart(ctx context.Context, mode string, down time.Duration) error {
	if err := c.Down(mode); err != nil {
		return err
	}
	if down > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(down):
		}
	}
	return c.Up(ctx)
}

// Down stops the server the way mode says (see Restart) and waits for it to
// exit; Up starts it again.
func (c *Cluster) Down(mode string) error {
	sig := map[string]syscall.Signal{"fast": syscall.SIGINT, "immediate": syscall.SIGQUIT, "kill": syscall.SIGKILL}[mode]
	if sig == 0 {
		return fmt.Errorf("pgtest: restart mode %q: use fast, immediate or kill", mode)
	}
	if c.cmd == nil {
		return errors.New("pgtest: server is not running")
	}
	if err := c.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("pgtest: signal postgres: %w", err)
	}
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		return errors.New("pgtest: postgres did not stop within 30s")
	}
	c.cmd = nil
	if sig == syscall.SIGKILL {
		// The postmaster's children notice its death on their own; a new
		// postmaster refuses to start while they hold shared memory.
		time.Sleep(500 * time.Millisecond)
	}
	return nil
}

// Up starts a server stopped by Down on the same port and data folder.
func (c *Cluster) Up(ctx context.Context) error {
	if c.cmd != nil {
		return errors.New("pgtest: server is already running")
	}
	var err error
	for attempt := 0; attempt < 20; attempt++ { // a killed server's children may linger briefly
		if err = c.startServer(ctx, c.bindir, filepath.Join(c.dir, "data"), c.Port, c.cred, c.opts); err == nil {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return err
}

// Stop shuts the server down fast and removes its files.
func (c *Cluster) Stop() error {
	var err error
	if c.cmd != nil && c.cmd.Process != nil {
		if sigErr := c.cmd.Process.Signal(syscall.SIGINT); sigErr == nil {
			select {
			case <-c.done:
			case <-time.After(20 * time.Second):
				_ = c.cmd.Process.Kill() // fast shutdown hung; the folder goes anyway
				<-c.done
			}
		}
	}
	if rmErr := os.RemoveAll(c.dir); rmErr != nil {
		err = fmt.Errorf("pgtest: remove %s: %w", c.dir, rmErr)
	}
	return err
}

// CreateDatabase creates a fresh database and returns its URL.
func CreateDatabase(ctx context.Context, serverURL, name string) (string, error) {
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return "", fmt.Errorf("pgtest: connect %s: %w", redactURL(serverURL), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return withDatabase(serverURL, name)
}

// DropDatabase drops a database made by CreateDatabase, closing its
// connections and dropping its replication slots (no longer in use) first.
func DropDatabase(ctx context.Context, serverURL, name string) error {
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return fmt.Errorf("pgtest: connect %s: %w", redactURL(serverURL), err)
	}
	defer conn.Close(ctx)
	// A slot stays active until its walsender has exited, which can be a
	// moment after its client stopped: end the walsenders and wait for
	// their slots to be let go (a database with a slot cannot be dropped).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var active int
		if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE database = $1 AND active`, name).Scan(&active); err != nil {
			return fmt.Errorf("pgtest: end the replication connections of %s: %w", name, err)
		}
		if active == 0 || time.Now().After(deadline) {
			break
		}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active`, name); err != nil {
		return fmt.Errorf("pgtest: drop the replication slots of %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgtest: drop database %s: %w", name, err)
	}
	return nil
}

func withDatabase(raw, name string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("pgtest: parse server URL: %w", err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

func redactURL(u string) string {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return "(unparseable URL)"
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

func binDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb") // a bad pattern is impossible here
	if len(matches) > 0 {
		return filepath.Dir(matches[len(matches)-1]), nil
	}
	return "", errors.New("pgtest: PostgreSQL server binaries (initdb, postgres) not found on PATH, in pg_config --bindir or /usr/lib/postgresql/*/bin: install postgresql-15, or set DATABASE_URL to a server with wal_level=logical")
}

// serverCredential returns the credential to run the server with: nil when
// not root, else the "postgres" user's, plus that user's uid/gid for chown.
func serverCredential() (*syscall.Credential, []int, error) {
	if os.Geteuid() != 0 {
		return nil, nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, nil, fmt.Errorf("pgtest: running as root, and PostgreSQL refuses to: need the unprivileged 'postgres' user (install postgresql-15 or create the user): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid) // user.Lookup returns numeric ids on Unix
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, []int{uid, gid}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}
