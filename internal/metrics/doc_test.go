package metrics

import (
	"os"
	"regexp"
	"sort"
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
	s.BadRecords.WithLabelValues("i")
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
