// Package metrics defines Ferry's Prometheus metrics, one struct per
// binary, each registered on its own registry so tests can read them.
// Every metric is listed in docs/metrics.md. Safe for concurrent use.
package metrics
