package retry

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestReconnectRetriesUntilUpAndLogsOncePerOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf bytes.Buffer
		var retries int
		var states []bool
		r := Reconnect{What: "replication", Log: slog.New(slog.NewTextHandler(&buf, nil)),
			Policy:  Policy{Initial: time.Second, Max: 4 * time.Second},
			OnRetry: func(error) { retries++ }, OnState: func(up bool) { states = append(states, up) }}
		calls := 0
		start := time.Now()
		err := r.Run(t.Context(), func(ctx context.Context, up func()) error {
			calls++
			if calls <= 5 {
				return errors.New("connection refused")
			}
			up()
			return nil // a clean stop
		})
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if calls != 6 || retries != 5 {
			t.Fatalf("calls %d, retries %d; want 6 and 5", calls, retries)
		}
		// Backoff 1,2,4,4,4 s with equal jitter: between 7.5 s and 15 s.
		if d := time.Since(start); d < 7500*time.Millisecond || d > 15*time.Second {
			t.Fatalf("waited %v between attempts; want the capped exponential backoff", d)
		}
		if n := strings.Count(buf.String(), "lost; reconnecting"); n != 1 {
			t.Fatalf("%d 'lost' lines for one outage; want 1:\n%s", n, buf.String())
		}
		if n := strings.Count(buf.String(), "is back"); n != 1 {
			t.Fatalf("%d 'back' lines; want 1:\n%s", n, buf.String())
		}
		if len(states) != 6 || states[5] != true || states[0] != false {
			t.Fatalf("states %v; want five downs then up", states)
		}
	})
}

func TestReconnectStopsOnPermanentAndOnCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := Reconnect{What: "kafka", Log: slog.New(slog.DiscardHandler)}
		bad := errors.New("SASL authentication failed")
		calls := 0
		err := r.Run(t.Context(), func(context.Context, func()) error {
			calls++
			if calls < 3 {
				return errors.New("EOF")
			}
			return Permanent(bad)
		})
		if !errors.Is(err, bad) || !IsPermanent(err) || calls != 3 {
			t.Fatalf("err %v (permanent %v) after %d calls; want the permanent error after 3", err, IsPermanent(err), calls)
		}

		ctx, cancel := context.WithCancel(t.Context())
		go func() { time.Sleep(time.Minute); cancel() }()
		err = r.Run(ctx, func(context.Context, func()) error { return errors.New("down") })
		if err != nil {
			t.Fatalf("cancelled Run returned %v; want nil", err)
		}
	})
}

func TestPermanentNilAndIdempotent(t *testing.T) {
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) is not nil")
	}
	e := Permanent(errors.New("x"))
	if Permanent(e) != e {
		t.Fatal("Permanent wrapped twice")
	}
	if IsPermanent(errors.New("x")) {
		t.Fatal("plain error reported permanent")
	}
}
