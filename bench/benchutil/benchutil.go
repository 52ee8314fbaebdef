// Package benchutil holds what the benchmark commands share: free ports,
// reading a process's /metrics and peak RSS, and summarising repeated runs.
package benchutil

import (
	"bufio"
	"fmt"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
)

// FreeAddr returns a free 127.0.0.1:port.
func FreeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err) // no free port on loopback: nothing to benchmark with
	}
	defer l.Close()
	return l.Addr().String()
}

// Scrape returns an admin address's parsed /metrics (empty if it does
// not answer: a failed scrape reads as "not yet").
func Scrape(admin string) metrics.Families {
	f, err := metrics.Scrape("http://" + admin + "/metrics")
	if err != nil {
		return metrics.Families{}
	}
	return f
}

// Metric returns the value of one series (name with labels), or 0. It
// asks for that series' family only, uncompressed (metrics.ScrapeSeries):
// cdcbench polls it every 5 ms while it times a drain.
func Metric(admin, series string) float64 {
	v, _, _ := metrics.ScrapeSeries("http://"+admin+"/metrics", series)
	return v
}

// PeakRSS returns a process's peak resident set (VmHWM) in MiB.
func PeakRSS(pid int) float64 { return status(pid, "VmHWM:") }

// CPUSeconds returns the CPU time (user and system) a process has used,
// from /proc/<pid>/stat (0 if it cannot be read). Its resolution is a
// clock tick (10 ms).
func CPUSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (which may hold spaces), from
	// the third: state, ppid, …; utime and stime are the 14th and 15th.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ, 100 on Linux
}

// RSS returns a process's resident set now (VmRSS) in MiB.
func RSS(pid int) float64 { return status(pid, "VmRSS:") }

// status reads a kB field of /proc/<pid>/status, in MiB (0 if absent).
func status(pid int, field string) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), field); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

// Median returns the median of vs.
func Median(vs []float64) float64 {
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// List formats vs as "1, 2, 3".
func List(vs []float64) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("%.0f", v)
	}
	return strings.Join(parts, ", ")
}

// MappedOperations and MappedEntities are the HTTP connector the mapped
// runs use (sinkbench -only mapped, and httpconn's BenchmarkDeliver):
// create writes a mapping (intent first, then the partner's id), update
// reads it for the path. YAML at the connector's level.
const (
	MappedOperations = `operations: {"*.created": create, "*.updated": update, "*.deleted": delete}`
	MappedEntities   = `entities:
  product:
    create:
      - name: item
        path: /v1/items
        body: '{"external_id": {{.local_id}}, "name": {{.payload.name}}}'
        id: $.id
    update:
      - name: item
        path: /v1/items/{{.remote_id}}
        body: '{"external_id": {{.local_id}}, "name": {{.payload.name}}}'
    delete:
      - name: item
        path: /v1/items/{{.remote_id}}
`
)

// Indent puts prefix before every line of s that is not empty.
func Indent(prefix, s string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "")
}
