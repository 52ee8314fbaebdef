package retry

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// permanentError marks an error that a reconnect cannot fix.
type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Permanent marks err as one that no retry can fix (invalid config, a
// slot-guard refusal, rejected credentials): Reconnect returns it at once
// instead of trying again, and the process exits non-zero. Permanent(nil)
// is nil.
func Permanent(err error) error {
	if err == nil || IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Reconnect keeps a connection-holding loop alive through outages: a
// database restart, a broker that is down, a dropped connection. It is
// used by cdc's reader and the sink's startup, never per record.
type Reconnect struct {
	// What names the loop in logs ("replication", "delivery log").
	What string
	// Policy is the backoff between attempts. Zero fields take
	// Initial 200ms, Max 30s.
	Policy Policy
	// Log receives one line per state change (lost, back), never one
	// per attempt. Required.
	Log *slog.Logger
	// OnRetry, when set, is called once per failed attempt (a reconnects
	// counter).
	OnRetry func(err error)
	// OnState, when set, is called with true when fn reports it is up
	// and false when it fails (readiness).
	OnState func(up bool)
}

// Run calls fn until ctx ends, fn returns nil, or fn returns an error
// marked Permanent (which Run returns). fn calls up once it holds its
// connections and works: that resets the backoff and, after an outage,
// logs the recovery. Any other error is logged once per outage and fn is
// called again after a capped, jittered backoff. Run returns nil when ctx
// ends.
func (r Reconnect) Run(ctx context.Context, fn func(ctx context.Context, up func()) error) error {
	p := r.Policy
	if p.Initial <= 0 {
		p.Initial = 200 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 30 * time.Second
	}
	var (
		attempt   int       // failures since fn last reported up
		downSince time.Time // zero while up (or before the first failure)
	)
	up := func() {
		if !downSince.IsZero() {
			r.Log.Info(r.What+" is back", "down_for", time.Since(downSince).Round(time.Millisecond).String(), "attempt", attempt)
		}
		attempt, downSince = 0, time.Time{}
		if r.OnState != nil {
			r.OnState(true)
		}
	}
	for {
		err := fn(ctx, up)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			return nil
		}
		if r.OnState != nil {
			r.OnState(false)
		}
		if IsPermanent(err) {
			return err
		}
		attempt++
		if r.OnRetry != nil {
			r.OnRetry(err)
		}
		if downSince.IsZero() {
			downSince = time.Now()
			r.Log.Warn(r.What+" lost; reconnecting with backoff", "reason", err.Error(), "retry", p.String())
		}
		t := time.NewTimer(p.Delay(attempt, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}
