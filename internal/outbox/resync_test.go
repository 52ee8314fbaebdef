package outbox

import (
	"testing"

	"golang.org/x/time/rate"
)

// TestResyncPace: resync is capped by default; capped, its chunks hold
// at most a twentieth of a second's objects; a negative rate lifts the
// cap and keeps resync_chunk whole.
func TestResyncPace(t *testing.T) {
	var def Config
	def.SetDefaults()
	for _, tc := range []struct {
		name      string
		cfg       Config
		chunk     int
		limit     rate.Limit
		burstSize int
	}{
		{"defaults", def, int(DefaultResyncRate / 20), DefaultResyncRate, int(DefaultResyncRate / 20)},
		{"a chunk smaller than a twentieth", Config{ResyncChunk: 10, ResyncRate: 4000}, 10, 4000, 10},
		{"a slow rate", Config{ResyncChunk: 10, ResyncRate: 5}, 1, 5, 1},
		{"no cap", Config{ResyncChunk: 2000, ResyncRate: -1}, 2000, rate.Inf, 0},
	} {
		chunk, l := resyncPace(tc.cfg)
		if chunk != tc.chunk || l.Limit() != tc.limit || l.Burst() != tc.burstSize {
			t.Errorf("%s: chunk %d, limit %v, burst %d; want %d, %v, %d", tc.name, chunk, l.Limit(), l.Burst(), tc.chunk, tc.limit, tc.burstSize)
		}
	}
}
