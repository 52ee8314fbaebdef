package connector

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err   error
		want  Outcome
		after time.Duration
	}{
		{nil, Succeeded, 0},
		{&Rejection{Status: 422, Reason: "bad sku"}, Rejected, 0},
		{fmt.Errorf("step 2: %w", &Rejection{Status: 402}), Rejected, 0},
		{&Failure{Status: 429, RetryAfter: 3 * time.Second}, Failed, 3 * time.Second},
		{context.DeadlineExceeded, Failed, 0},
		{fmt.Errorf("price: %w", &Waiting{EntityType: "product", LocalID: "p1"}), Waits, 0},
		{errors.New("connection reset"), Failed, 0},
	} {
		got, after := Classify(c.err)
		if got != c.want || after != c.after {
			t.Errorf("Classify(%v) = %v, %v; want %v, %v", c.err, got, after, c.want, c.after)
		}
	}
}
