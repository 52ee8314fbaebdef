package sinkapp

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The memory settings are validated with their paths: zero and negative
// sizes are refused, a partition's fetch share may not exceed the fetch;
// sizes take units; defaults and flags reach each integration, which gets
// its share of max_buffered_bytes.
func TestMemorySettingsAreValidatedAndShared(t *testing.T) {
	write := func(body string) string {
		p := filepath.Join(t.TempDir(), "sink.yaml")
		if err := os.WriteFile(p, []byte(`
postgres_url: postgres://x/y
kafka: {brokers: [127.0.0.1:9092]}
`+body+`
integrations:
  - name: a
    topics: [outbox.product]
    connector: {type: webhook, url: http://127.0.0.1:1/hooks}
  - name: b
    topics: [outbox.product]
    connector: {type: webhook, url: http://127.0.0.1:1/hooks}
`), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bad := write("max_buffered_bytes: 0\nfetch_max_bytes: -5\nfetch_max_partition_bytes: 2GiB\n")
	var stderr strings.Builder
	if code := run(t.Context(), []string{"--config", bad}, func(string) string { return "" }, io.Discard, &stderr); code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, stderr.String())
	}
	for _, want := range []string{"max_buffered_bytes: 0: must be positive", "fetch_max_bytes: -5: must be positive",
		"fetch_max_partition_bytes: 2GiB is more than fetch_max_bytes -5"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("error lacks %q:\n%s", want, stderr.String())
		}
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"--config", write("fetch_max_bytes: 1GiB\n")}, func(string) string { return "" }, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "fetch_max_bytes: 1GiB: at most 256MiB") {
		t.Errorf("exit %d: %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"--config", write("fetch_max_bytes: lots\n")}, func(string) string { return "" }, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), `"lots": not a size`) {
		t.Errorf("exit %d: %s", code, stderr.String())
	}

	c, err := parse([]string{"--config", write("")}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range c.cfg.Integrations {
		if in.MaxBufferedBytes != 32<<20 || in.FetchMaxBytes != 4<<20 || in.FetchMaxPartitionBytes != 64<<10 {
			t.Errorf("%s: defaults %d, %d, %d: want half of 64MiB, 4MiB, 64KiB", in.Name, in.MaxBufferedBytes, in.FetchMaxBytes, in.FetchMaxPartitionBytes)
		}
	}
	c, err = parse([]string{"--config", write("max_buffered_bytes: 1 GB\n"), "--fetch-max-bytes", "4MiB"},
		func(k string) string { return map[string]string{"FERRY_FETCH_MAX_PARTITION_BYTES": "131072"}[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if in := c.cfg.Integrations[1]; in.MaxBufferedBytes != 500_000_000 || in.FetchMaxBytes != 4<<20 || in.FetchMaxPartitionBytes != 131072 {
		t.Errorf("file, flag and environment not applied: %d, %d, %d", in.MaxBufferedBytes, in.FetchMaxBytes, in.FetchMaxPartitionBytes)
	}
	if _, err := parse([]string{"--config", write(""), "--max-buffered-bytes", "0"}, func(string) string { return "" }, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "max_buffered_bytes: 0: must be positive") {
		t.Errorf("--max-buffered-bytes 0: %v", err)
	}
}
