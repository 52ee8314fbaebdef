// Package retry is the sink's backoff policy for failed deliveries:
// exponential with jitter, capped, and never shorter than the partner's
// Retry-After. Safe for concurrent use.
package retry

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Policy computes how long a lane waits before the next attempt.
type Policy struct {
	// Initial is the wait after the first failure. Default 200ms.
	Initial time.Duration `yaml:"initial"`
	// Max caps the wait. Default 1m.
	Max time.Duration `yaml:"max"`
}

// SetDefaults fills zero fields.
func (p *Policy) SetDefaults() {
	if p.Initial == 0 {
		p.Initial = 200 * time.Millisecond
	}
	if p.Max == 0 {
		p.Max = time.Minute
	}
}

// Validate reports problems, naming fields under prefix.
func (p *Policy) Validate(prefix string) error {
	if p.Initial <= 0 || p.Max < p.Initial {
		return errors.New(prefix + ": initial must be positive and max at least initial")
	}
	return nil
}

// Delay returns the wait after the attempt-th failure (1-based): Initial
// doubled per attempt, capped at Max, with "equal jitter" (half fixed, half
// random) so lanes failing together do not retry together; at least
// retryAfter (the partner's Retry-After), but never more than Max: a
// partner asking for an hour must not stall a lane past the operator's
// bound.
func (p Policy) Delay(attempt int, retryAfter time.Duration) time.Duration {
	d := p.Initial
	for i := 1; i < attempt && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	d = d/2 + rand.N(d/2+1)
	return min(max(d, retryAfter), p.Max)
}

// String describes the policy.
func (p Policy) String() string {
	return fmt.Sprintf("exponential %s..%s with jitter", p.Initial, p.Max)
}
