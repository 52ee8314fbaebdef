package consume

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/ferry-cdc/ferry/internal/lane"
)

// ReportInterval is how often an engine writes its live state to
// ferry.sink_process; readers treat a row older than three intervals as a
// process that is gone.
const ReportInterval = 2 * time.Second

// processID names this process in ferry.sink_process.
var processID = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%d", host, os.Getpid(), time.Now().UnixNano()%1e6)
}()

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
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_, _ = e.dlog.Pool().Exec(dctx, `DELETE FROM ferry.sink_process WHERE process_id = $1 AND integration = $2`, processID, e.cfg.Name)
			cancel()
			return ctx.Err()
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
	_, err = e.dlog.Pool().Exec(ctx, `INSERT INTO ferry.sink_process (process_id, integration, consumer_group, host, started_at,
			partitions, lanes, breaker, finished, rate)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (process_id, integration) DO UPDATE SET updated_at = now(), partitions = $6, lanes = $7, breaker = $8,
			finished = $9, rate = $10`,
		processID, e.cfg.Name, e.cfg.Group, host, started, pj, lj, e.breaker.State().String(), finished, rate)
	return err
}
