package benchutil

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/admin"
	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricAsksForOneFamily reads a counter, a gauge and a histogram's
// sum and count from a real admin server through Metric, and checks that
// each scrape asked for the series' family only, uncompressed, and got
// no other family: the benchmarks poll every few milliseconds, and a
// whole gzipped page cost the process being timed 8% of its CPU.
func TestMetricAsksForOneFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	events := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bench_events_total"}, []string{"outcome"})
	lat := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "bench_seconds"})
	other := prometheus.NewGauge(prometheus.GaugeOpts{Name: "bench_other"})
	reg.MustRegister(events, lat, other)
	events.WithLabelValues("published").Add(41)
	events.WithLabelValues("failed").Add(2)
	lat.Observe(0.5)
	lat.Observe(1.5)
	other.Set(7)

	srv, err := admin.Listen("127.0.0.1:0", reg, func() (bool, string) { return true, "" }, nil, admin.Access{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Run(ctx)

	// A proxy in front records what each scrape asked for and got.
	type exchange struct {
		query     url.Values
		encoding  string
		body      string
		gotEncode string
	}
	var (
		mu   sync.Mutex
		seen []exchange
	)
	target, _ := url.Parse("http://" + srv.Addr())
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body := string(b)
		resp.Body = readCloser{strings.NewReader(body)}
		mu.Lock()
		seen = append(seen, exchange{resp.Request.URL.Query(), resp.Request.Header.Get("Accept-Encoding"), body, resp.Header.Get("Content-Encoding")})
		mu.Unlock()
		return nil
	}
	front := httptest.NewServer(proxy)
	defer front.Close()
	addr := strings.TrimPrefix(front.URL, "http://")

	for _, c := range []struct {
		series, family string
		want           float64
	}{
		{`bench_events_total{outcome="published"}`, "bench_events_total", 41},
		{`bench_seconds_sum`, "bench_seconds", 2},
		{`bench_seconds_count`, "bench_seconds", 2},
		{`bench_other`, "bench_other", 7},
	} {
		if got := Metric(addr, c.series); got != c.want {
			t.Errorf("Metric(%s) = %v, want %v", c.series, got, c.want)
		}
		mu.Lock()
		if len(seen) == 0 {
			mu.Unlock()
			t.Fatalf("Metric(%s) made no request", c.series)
		}
		ex := seen[len(seen)-1]
		mu.Unlock()
		if !strings.Contains(strings.Join(ex.query["name[]"], ","), c.family) || ex.encoding != "identity" || ex.gotEncode != "" {
			t.Errorf("Metric(%s) asked for name[]=%q with Accept-Encoding %q, got Content-Encoding %q; want its family %q, uncompressed",
				c.series, ex.query["name[]"], ex.encoding, ex.gotEncode, c.family)
		}
		for _, f := range []string{"bench_events_total", "bench_seconds", "bench_other"} {
			if f != c.family && strings.Contains(ex.body, "# TYPE "+f+" ") {
				t.Errorf("Metric(%s) was sent family %s too:\n%s", c.series, f, ex.body)
			}
		}
	}
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

// CPUSeconds reads this process's CPU time, which grows as it works.
func TestCPUSecondsGrowsWithWork(t *testing.T) {
	before := CPUSeconds(os.Getpid())
	x := 0
	for start := time.Now(); time.Since(start) < 200*time.Millisecond; {
		x++
	}
	after := CPUSeconds(os.Getpid())
	if after-before < 0.05 || after > 3600 {
		t.Fatalf("CPU seconds %.2f then %.2f after 200 ms of work (%d loops)", before, after, x)
	}
}
