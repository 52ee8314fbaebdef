package retry

import (
	"testing"
	"time"
)

func TestDelayGrowsCapsAndHonoursRetryAfter(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: time.Second}
	for attempt, bounds := range map[int][2]time.Duration{
		1: {50 * time.Millisecond, 100 * time.Millisecond},
		2: {100 * time.Millisecond, 200 * time.Millisecond},
		4: {400 * time.Millisecond, 800 * time.Millisecond},
		9: {500 * time.Millisecond, time.Second},
	} {
		for range 100 {
			if d := p.Delay(attempt, 0); d < bounds[0] || d > bounds[1] {
				t.Fatalf("attempt %d: %v outside %v", attempt, d, bounds)
			}
		}
	}
	if d := p.Delay(1, 700*time.Millisecond); d != 700*time.Millisecond {
		t.Fatalf("Retry-After not honoured: %v", d)
	}
	if d := p.Delay(1, time.Hour); d != time.Second {
		t.Fatalf("Retry-After of an hour waited %v; want it capped at max (1s)", d)
	}
}
