package consume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/internal/lane"
)

// ReportInterval is how often an engine writes its live state to
// ferry.sink_process, renewing its lease; readers treat a row older than
// three intervals as a process that is gone.
const ReportInterval = 2 * time.Second

// ProcessID names this process in ferry.sink_process and in the
// deliveries it holds (delivery.Options.Holder).
var ProcessID = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%d", host, os.Getpid(), time.Now().UnixNano()%1e6)
}()

// The lease (migration 0009). Each report extends this process's lease
// to leaseTTL past the database's clock; other processes take over the
// deliveries it holds only after it expires. The engine itself starts a
// delivery only while its last renewal is younger than leaseFresh, and
// a partner call only if the call's timeout ends before the lease does,
// so a process cut off from the log stops calling the partner before
// anyone may take its deliveries over.
func (e *Engine) leaseTTL() time.Duration { return e.cfg.Timeout + 3*ReportInterval }

const leaseFresh = 2 * ReportInterval

// leaseAge is the time since the last renewal was sent (the lease runs
// from the database's clock at that statement, which is later).
func (e *Engine) leaseAge() time.Duration {
	at := e.leaseAt.Load()
	if at == nil {
		return time.Duration(1<<63 - 1)
	}
	return time.Since(*at)
}

// dropLease removes this process's row (and so its lease) once the
// engine has stopped: its deliveries may be taken over at once.
func (e *Engine) dropLease(ctx context.Context) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if _, err := e.dlog.Pool().Exec(dctx, `DELETE FROM ferry.sink_process WHERE process_id = $1 AND integration = $2`, ProcessID, e.cfg.Name); err != nil {
		e.log.Warn("could not remove this process from ferry.sink_process; its deliveries are taken over when its lease expires",
			"lease", e.leaseTTL().String(), "reason", err.Error())
	}
}

// reportLoop writes the engine's live state every ReportInterval and
// removes it when ctx ends.
func (e *Engine) reportLoop(ctx context.Context) error {
	host, _ := os.Hostname()
	started := time.Now()
	t := time.NewTicker(ReportInterval)
	defer t.Stop()
	lastN, lastT := int64(0), time.Now()
	for {
		n, now := e.finished.Load(), time.Now()
		rate := float64(n-lastN) / now.Sub(lastT).Seconds()
		lastN, lastT = n, now
		if err := e.report(ctx, host, started, n, rate); err != nil && ctx.Err() == nil {
			e.dbTrouble(err) // the watcher logs the outage
		}
		select {
		case <-ctx.Done():
			return ctx.Err() // Run drops the lease once every lane stopped
		case <-t.C:
		}
	}
}

func (e *Engine) report(ctx context.Context, host string, started time.Time, finished int64, rate float64) error {
	e.commitMu.Lock()
	parts := make([]string, 0, len(e.owned))
	for tp := range e.owned {
		parts = append(parts, fmt.Sprintf("%s/%d", tp.Topic, tp.Partition))
	}
	e.commitMu.Unlock()
	sort.Strings(parts)
	lanes := map[lane.LaneState]int{}
	for s, n := range e.sched.LaneCounts() {
		lanes[s] = n
	}
	pj, err := json.Marshal(parts)
	if err != nil {
		return err
	}
	lj, err := json.Marshal(lanes)
	if err != nil {
		return err
	}
	ctx, cancel := e.dlog.Bound(ctx)
	defer cancel()
	sent := time.Now()
	_, err = e.dlog.Pool().Exec(ctx, `INSERT INTO ferry.sink_process (process_id, integration, consumer_group, host, started_at,
			partitions, lanes, breaker, finished, rate, lease_until, instance_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + $11::interval, $12)
		ON CONFLICT (process_id, integration) DO UPDATE SET updated_at = now(), partitions = $6, lanes = $7, breaker = $8,
			finished = $9, rate = $10, lease_until = now() + $11::interval`,
		ProcessID, e.cfg.Name, e.cfg.Group, host, started, pj, lj, e.breaker.State().String(), finished, rate, e.leaseTTL(), e.cfg.InstanceID)
	if err == nil {
		e.leaseAt.Store(&sent)
	}
	return err
}

// reapPreviousRuns ends the leases of this instance's earlier runs on
// this host that are known to be gone, so their deliveries in flight
// are taken over at once instead of when the leases expire (a restart
// after SIGKILL). Known gone: the same host and instance id (unique per
// live process: docs/operations.md), and its pid is no longer running,
// or is this process's own (a container restarted in its own pid
// namespace).
func (e *Engine) reapPreviousRuns(ctx context.Context, host string) error {
	if e.cfg.InstanceID == "" {
		return nil
	}
	ctx, cancel := e.dlog.Bound(ctx)
	defer cancel()
	rows, err := e.dlog.Pool().Query(ctx, `SELECT process_id FROM ferry.sink_process
		WHERE integration = $1 AND host = $2 AND instance_id = $3 AND process_id <> $4`, e.cfg.Name, host, e.cfg.InstanceID, ProcessID)
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, id := range ids {
		if !goneHere(id) {
			continue
		}
		if _, err := e.dlog.Pool().Exec(ctx, `DELETE FROM ferry.sink_process WHERE process_id = $1 AND integration = $2`, id, e.cfg.Name); err != nil {
			return err
		}
		e.log.Info("previous run of this instance is gone; its deliveries in flight are taken over", "previous", id)
	}
	return nil
}

// goneHere reports whether the process a ProcessID (host/pid/nonce) of
// this host names is no longer running.
func goneHere(id string) bool {
	i := strings.LastIndexByte(id, '/')
	if i < 0 {
		return false
	}
	j := strings.LastIndexByte(id[:i], '/')
	pid, err := strconv.Atoi(id[j+1 : i])
	if j < 0 || err != nil || pid <= 0 {
		return false
	}
	return pid == os.Getpid() || errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
