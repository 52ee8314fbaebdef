package metrics

import "github.com/prometheus/client_golang/prometheus"

// CDC holds the cdc binary's metrics.
type CDC struct {
	Registry *prometheus.Registry

	Events          *prometheus.CounterVec // by outcome: published, dead_lettered
	Transactions    prometheus.Counter
	InFlight        prometheus.Gauge
	KafkaErrors     prometheus.Counter
	SlotLagBytes    prometheus.Gauge
	SlotLagSeconds  prometheus.Gauge
	ConfirmedLSN    prometheus.Gauge
	CommitToAck     prometheus.Histogram
	HeartbeatAge    prometheus.Gauge
	Leader          prometheus.Gauge
	SlotSafeWALSize prometheus.Gauge
	Reconnects      *prometheus.CounterVec // by what: postgres, kafka
	ResyncEvents    *prometheus.CounterVec // by outcome: published, superseded, dropped
	ResyncWindows   prometheus.Gauge
}

// NewCDC creates and registers the cdc metrics.
func NewCDC() *CDC {
	m := &CDC{
		Registry: prometheus.NewRegistry(),
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_cdc_events_total",
			Help: "Outbox events handed to Kafka and acknowledged, by outcome (published, dead_lettered)."}, []string{"outcome"}),
		Transactions: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_cdc_transactions_total",
			Help: "Committed transactions with outbox events acknowledged by Kafka."}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_cdc_in_flight_transactions",
			Help: "Transactions sent to Kafka and not yet acknowledged."}),
		KafkaErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_cdc_kafka_errors_total",
			Help: "Kafka connection failures and produce errors (retried or not)."}),
		SlotLagBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_cdc_slot_lag_bytes",
			Help: "WAL bytes between the server's current position and the slot's confirmed position."}),
		SlotLagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_cdc_slot_lag_seconds",
			Help: "Age of the newest transaction confirmed to the slot, while WAL is waiting to be read; 0 when caught up."}),
		ConfirmedLSN: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_cdc_confirmed_lsn",
			Help: "The LSN last confirmed to the replication slot, as a number."}),
		CommitToAck: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_cdc_commit_to_ack_seconds",
			Help:    "Time from a transaction's commit in Postgres to Kafka's acknowledgement of all its records.",
			Buckets: prometheus.ExponentialBucketsRange(0.0002, 10, 48)}),
		HeartbeatAge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_cdc_heartbeat_age_seconds",
			Help: "Seconds since the last heartbeat message came back through the slot."}),
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_cdc_leader",
			Help: "1 while this process holds the slot and streams; 0 while it waits as a standby."}),
		SlotSafeWALSize: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_cdc_slot_safe_wal_size_bytes",
			Help: "Bytes of WAL that can still be written before max_slot_wal_keep_size invalidates the slot (-1: unlimited)."}),
		Reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_cdc_reconnects_total",
			Help: "Failed connection attempts that cdc retried, by what was unreachable (postgres, kafka)."}, []string{"what"}),
		ResyncEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_cdc_resync_events_total",
			Help: "Resync events decoded, by outcome: published, superseded (the object changed inside the resync window: its own event carries the newer state), dropped (the window's start was not seen)."}, []string{"outcome"}),
		ResyncWindows: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_cdc_resync_windows",
			Help: "Resync windows open: the slot's confirmed position is held at the earliest one's low watermark."}),
	}
	m.Registry.MustRegister(m.Events, m.Transactions, m.InFlight, m.KafkaErrors, m.SlotLagBytes, m.SlotLagSeconds,
		m.ConfirmedLSN, m.CommitToAck, m.HeartbeatAge, m.Leader, m.SlotSafeWALSize, m.Reconnects,
		m.ResyncEvents, m.ResyncWindows)
	m.Reconnects.WithLabelValues("postgres")
	m.Reconnects.WithLabelValues("kafka")
	for _, o := range []string{"published", "superseded", "dropped"} {
		m.ResyncEvents.WithLabelValues(o)
	}
	return m
}
