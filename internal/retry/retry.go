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
	// MaxAttempts gives a delivery up (state expired) after this many
	// failed attempts. 0 (the default) never gives up.
	MaxAttempts int `yaml:"max_attempts"`
	// MaxAge gives a delivery up (state expired) once its event is this
	// old, counted from the event's commit time. 0 (the default) never
	// gives up.
	MaxAge time.Duration `yaml:"max_age"`
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
	var errs []error
	if p.Initial <= 0 || p.Max < p.Initial {
		errs = append(errs, errors.New(prefix+": initial must be positive and max at least initial"))
	}
	if p.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("%s.max_attempts: %d: must not be negative (0 never gives up)", prefix, p.MaxAttempts))
	}
	if p.MaxAge < 0 {
		errs = append(errs, fmt.Errorf("%s.max_age: %s: must not be negative (0 never gives up)", prefix, p.MaxAge))
	}
	return errors.Join(errs...)
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
