package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// The metrics page must list exactly the metrics the code registers.
func TestDocsMetricsMatchCode(t *testing.T) {
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(ferry_[a-z_]+)").FindAllStringSubmatch(string(b), -1) {
		documented[m[1]] = true
	}
	m := NewCDC()
	m.Events.WithLabelValues("published") // vectors appear once they have a child
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	s := NewSink()
	s.Deliveries.WithLabelValues("i", "succeeded")
	s.DeliveryDuration.WithLabelValues("i")
	s.Lanes.WithLabelValues("i", "active")
	s.BreakerOpen.WithLabelValues("i")
	s.FetchHeld.WithLabelValues("i", "paused")
	s.BadRecords.WithLabelValues("i")
	s.Reconnects.WithLabelValues("postgres")
	s.Outcomes.WithLabelValues("i")
	sinkFamilies, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	families = append(families, sinkFamilies...)
	var missing []string
	for _, f := range families {
		if !documented[f.GetName()] {
			missing = append(missing, f.GetName())
		}
		delete(documented, f.GetName())
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("registered but not in docs/metrics.md: %v", missing)
	}
	if len(documented) > 0 {
		t.Errorf("in docs/metrics.md but not registered: %v", documented)
	}
}

// The Grafana dashboard queries only documented metrics (and docs match
// the code, above).
func TestGrafanaDashboardUsesDocumentedMetrics(t *testing.T) {
	docs, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	if len(dash.Panels) == 0 {
		t.Fatal("dashboard has no panels")
	}
	name := regexp.MustCompile(`ferry_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
				if !strings.Contains(string(docs), "`"+base) {
					t.Errorf("panel %q queries %s, which docs/metrics.md does not list", p.Title, m)
				}
			}
		}
	}
}
