package metrics

import (
	"math"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func TestScrapeReadsCountersGaugesAndHistograms(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total"}, []string{"integration", "outcome"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "y"})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "z_seconds", Buckets: []float64{0.1, 1}})
	reg.MustRegister(c, g, h)
	c.WithLabelValues("shop", "duplicate").Add(30)
	c.WithLabelValues("shop", "succeeded").Add(2)
	g.Set(-1.5)
	h.Observe(0.05)
	h.Observe(0.5)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()

	f, err := Scrape(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]float64{
		`x_total{integration="shop",outcome="duplicate"}`: 30,
		`x_total{outcome="succeeded",integration="shop"}`: 2,
		`y`:               -1.5,
		`z_seconds_count`: 2,
		`z_seconds_sum`:   0.55,
	} {
		if v, ok := f.Value(series); !ok || v != want {
			t.Errorf("%s = %v (found %v); want %v", series, v, ok, want)
		}
	}
	for _, absent := range []string{`x_total`, `x_total{integration="shop"}`, `nope`, `x_total{integration=shop}`} {
		if v, ok := f.Value(absent); ok {
			t.Errorf("%s found with %v; want absent", absent, v)
		}
	}
	bs, n, ok := f.Histogram("z_seconds")
	if !ok || n != 2 || len(bs) != 3 || bs[0].Count != 1 || bs[1].Count != 2 || !math.IsInf(bs[2].UpperBound, 1) {
		t.Fatalf("histogram %v %d %v", bs, n, ok)
	}
}
