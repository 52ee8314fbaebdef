package metrics

import (
	"fmt"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families is a scraped /metrics page, parsed by expfmt: the one reader
// of the Prometheus text format that the tests and benchmarks share.
type Families map[string]*dto.MetricFamily

// Scrape reads and parses url (an admin address's /metrics), asking
// for it uncompressed: it is read over loopback, where gzip only costs
// the scraped process CPU (half of a whole page's encoding).
func Scrape(url string) (Families, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	return fams, nil
}

// ScrapeSeries reads one series (as Value takes it) from url (an admin
// address's /metrics), asking for its family only: Prometheus' handler
// honours name[] and then encodes that family alone. The benchmarks poll
// a series every few milliseconds while they time a process, and the
// whole page cost the process timed 8% of its CPU. ok is false when the
// series is absent.
func ScrapeSeries(url, series string) (v float64, ok bool, err error) {
	name, _, _ := strings.Cut(series, "{")
	q := neturl.Values{"name[]": {name}}
	for _, s := range aggregates {
		if base, cut := strings.CutSuffix(name, s); cut {
			q.Add("name[]", base)
		}
	}
	f, err := Scrape(url + "?" + q.Encode())
	if err != nil {
		return 0, false, err
	}
	v, ok = f.Value(series)
	return v, ok, nil
}

// aggregates are the suffixes of a histogram's or summary's sum and
// count series, whose family is named without them.
var aggregates = [...]string{"_sum", "_count"}

// Value returns one series' value. series is written as PromQL selects
// it: name, or name{label="value",...} with every label the series has
// (in any order); a histogram's or summary's sum and count are name_sum
// and name_count. ok is false when the series is absent or series does
// not parse.
func (f Families) Value(series string) (v float64, ok bool) {
	name, labels, ok := parseSeries(series)
	if !ok {
		return 0, false
	}
	suffix := ""
	fam := f[name]
	if fam == nil {
		for _, s := range aggregates {
			if base, cut := strings.CutSuffix(name, s); cut && f[base] != nil {
				fam, suffix = f[base], s
			}
		}
	}
	if fam == nil {
		return 0, false
	}
	for _, m := range fam.GetMetric() {
		if !sameLabels(m.GetLabel(), labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		case m.Histogram != nil && suffix == "_sum":
			return m.Histogram.GetSampleSum(), true
		case m.Histogram != nil && suffix == "_count":
			return float64(m.Histogram.GetSampleCount()), true
		case m.Summary != nil && suffix == "_sum":
			return m.Summary.GetSampleSum(), true
		case m.Summary != nil && suffix == "_count":
			return float64(m.Summary.GetSampleCount()), true
		}
	}
	return 0, false
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	UpperBound float64
	Count      uint64
}

// Histogram returns an unlabelled histogram's buckets (ascending upper
// bounds, cumulative counts) and its sample count.
func (f Families) Histogram(name string) ([]Bucket, uint64, bool) {
	fam := f[name]
	if fam == nil || len(fam.GetMetric()) == 0 || fam.GetMetric()[0].Histogram == nil {
		return nil, 0, false
	}
	h := fam.GetMetric()[0].Histogram
	bs := make([]Bucket, 0, len(h.GetBucket()))
	for _, b := range h.GetBucket() {
		bs = append(bs, Bucket{UpperBound: b.GetUpperBound(), Count: b.GetCumulativeCount()})
	}
	return bs, h.GetSampleCount(), true
}

func sameLabels(have []*dto.LabelPair, want map[string]string) bool {
	if len(have) != len(want) {
		return false
	}
	for _, l := range have {
		if v, ok := want[l.GetName()]; !ok || v != l.GetValue() {
			return false
		}
	}
	return true
}

// parseSeries splits name{a="x",b="y"} into the name and its labels.
func parseSeries(s string) (string, map[string]string, bool) {
	name, rest, hasLabels := strings.Cut(s, "{")
	labels := map[string]string{}
	if !hasLabels {
		return name, labels, name != ""
	}
	rest, ok := strings.CutSuffix(rest, "}")
	if !ok {
		return "", nil, false
	}
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok {
			return "", nil, false
		}
		val, err := strconv.QuotedPrefix(after)
		if err != nil {
			return "", nil, false
		}
		labels[strings.TrimSpace(key)], _ = strconv.Unquote(val)
		rest = strings.TrimPrefix(after[len(val):], ",")
	}
	return name, labels, name != ""
}
