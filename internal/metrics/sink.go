package metrics

import "github.com/prometheus/client_golang/prometheus"

// Sink holds the sink binary's metrics.
type Sink struct {
	Registry *prometheus.Registry

	Deliveries       *prometheus.CounterVec   // integration, outcome
	DeliveryDuration *prometheus.HistogramVec // integration
	Lanes            *prometheus.GaugeVec     // integration, state
	BreakerOpen      *prometheus.GaugeVec     // integration
	FetchHeld        *prometheus.GaugeVec     // integration, reason
	BadRecords       *prometheus.CounterVec   // integration
	Reconnects       *prometheus.CounterVec   // target (postgres, kafka, outcomes)
	Outcomes         *prometheus.CounterVec   // integration
}

// NewSink creates and registers the sink metrics.
func NewSink() *Sink {
	m := &Sink{
		Registry: prometheus.NewRegistry(),
		Deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_sink_deliveries_total",
			Help: "Delivery attempts by integration and outcome (succeeded, failed, rejected, duplicate, skipped)."}, []string{"integration", "outcome"}),
		DeliveryDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ferry_sink_delivery_seconds",
			Help: "Duration of connector calls.", Buckets: prometheus.ExponentialBucketsRange(0.0005, 30, 24)}, []string{"integration"}),
		Lanes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_sink_lanes",
			Help: "Tenant lanes holding records, by state (active, backing_off, parked, paused)."}, []string{"integration", "state"}),
		BreakerOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_sink_breaker_open",
			Help: "1 while the integration's circuit breaker is open or half-open (partner calls paused)."}, []string{"integration"}),
		FetchHeld: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_sink_fetch_held",
			Help: "1 while the integration does not fetch, by reason (paused, breaker_open, max_buffered_bytes): its backlog waits in Kafka."}, []string{"integration", "reason"}),
		BadRecords: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_sink_bad_records_total",
			Help: "Records that could not be read as outbox events (no event id or tenant, payload not JSON) or had no handler."}, []string{"integration"}),
		Reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_sink_reconnects_total",
			Help: "Failed attempts to reach a dependency that is unreachable (postgres: the delivery log; kafka: the brokers), one per backoff step; readiness is false meanwhile."}, []string{"target"}),
	}
	m.Outcomes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_sink_outcomes_total",
		Help: "Outcome records produced to Kafka (acknowledged), one per delivery that reached a final state; a record sent again after a crash counts again."}, []string{"integration"})
	m.Registry.MustRegister(m.Deliveries, m.DeliveryDuration, m.Lanes, m.BreakerOpen, m.FetchHeld, m.BadRecords, m.Reconnects, m.Outcomes)
	return m
}
