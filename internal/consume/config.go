package consume

import (
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/ferry-cdc/ferry/internal/retry"
)

// Rejection policies.
const (
	OnRejectPark = "park"
	OnRejectSkip = "skip" // record the rejection and continue the lane
)

// Config configures one integration's engine.
type Config struct {
	// Name identifies the integration (delivery log, metrics, group).
	Name string `yaml:"name"`
	// Topics to consume.
	Topics []string `yaml:"topics"`
	// Group is the consumer group. Default "ferry-sink-<name>".
	Group string `yaml:"group"`
	// EventTypes are path.Match patterns of event types this integration
	// handles ("product.*"); others are recorded as skipped. Default all.
	EventTypes []string `yaml:"event_types"`
	// Workers is the number of lanes delivering at once. Default 64.
	Workers int `yaml:"workers"`
	// Concurrency caps partner calls in flight (0 = Workers).
	Concurrency int `yaml:"concurrency"`
	// RateLimit caps partner calls per second (0 = unlimited).
	RateLimit float64 `yaml:"rate_limit"`
	// Timeout bounds each delivery. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// Retry is the backoff for failed deliveries.
	Retry retry.Policy `yaml:"retry"`
	// OnReject is "park" (default: the lane waits for an operator's retry
	// or skip) or "skip" (record the rejection and go on).
	OnReject string `yaml:"on_reject"`
	// OnUnhandled is what happens to an event the connector has nothing
	// for (no entity or operation: connector.Unhandled): "skip" (default:
	// record it as skipped, with the reason, and go on) or "park" (treat
	// it as a rejection, under on_reject).
	OnUnhandled string `yaml:"on_unhandled"`
	// ParkRecheck is how often a parked lane re-reads its event's state
	// (an operator may have retried or skipped it). Default 2s.
	ParkRecheck time.Duration `yaml:"park_recheck"`
	// ParkAfter moves a lane blocked (backing off or parked) this long,
	// with its queued records and every later one, into Postgres
	// (ferry.parked_event) so the partition's offsets move on and memory
	// stays flat. Default 30s; negative disables.
	ParkAfter time.Duration `yaml:"park_after"`
	// WaitRecheck is how often an event waiting for a parent's mapping
	// looks again. Default 500ms.
	WaitRecheck time.Duration `yaml:"wait_recheck"`
	// MaxBufferedPerPartition pauses fetching a partition holding this
	// many unfinished records. Default 10000.
	MaxBufferedPerPartition int `yaml:"max_buffered_per_partition"`
	// CommitInterval is how often offsets are committed. Default 1s.
	CommitInterval time.Duration `yaml:"commit_interval"`
	// Breaker pauses the whole integration while the partner is down.
	Breaker BreakerConfig `yaml:"breaker"`
	// Outcomes configures the outcome records (one per delivery that
	// reaches a final state) this integration produces to Kafka.
	Outcomes OutcomesConfig `yaml:"outcomes"`

	// InstanceID is the consumer's static group membership
	// (group.instance.id); "" joins as a dynamic member. Set by the
	// binary from its process-wide setting.
	InstanceID string `yaml:"-"`
	// SessionTimeout is the group session timeout; 0 keeps franz-go's
	// default (45s). Set by the binary.
	SessionTimeout time.Duration `yaml:"-"`
	// MaxBufferedBytes bounds the bytes of the records this integration's
	// lanes hold in memory (key, value and headers): fetching pauses at it
	// and resumes below half of it. 0: unbounded. Set by the binary (its
	// share of the process's max_buffered_bytes).
	MaxBufferedBytes int64 `yaml:"-"`
	// FetchMaxBytes and FetchMaxPartitionBytes bound one fetch response
	// and one partition's part of it (franz-go's FetchMaxBytes and
	// FetchMaxPartitionBytes); 0 keeps franz-go's defaults (50 MiB, 1
	// MiB). Set by the binary.
	FetchMaxBytes          int32 `yaml:"-"`
	FetchMaxPartitionBytes int32 `yaml:"-"`
}

// BreakerConfig configures the circuit breaker.
type BreakerConfig struct {
	// Failures of the last Window calls that open the breaker. Default
	// 50 of 100 — one failing tenant among many does not open it.
	Failures uint `yaml:"failures"`
	Window   uint `yaml:"window"`
	// OpenFor is how long it stays open before probing. Default 5s.
	OpenFor time.Duration `yaml:"open_for"`
}

// DefaultOutcomeTopic is the Kafka topic of outcome records unless an
// integration names another.
const DefaultOutcomeTopic = "ferry.outcomes"

// OutcomesConfig configures an integration's outcome records
// (docs/connectors.md, schemas/outcome.v1.schema.json).
type OutcomesConfig struct {
	// Enabled switches the outcome records on or off. Default true.
	Enabled *bool `yaml:"enabled"`
	// Topic is the Kafka topic they go to. Default "ferry.outcomes"; ""
	// switches them off.
	Topic *string `yaml:"topic"`
}

// TopicOrOff returns the topic of the integration's outcome records, or ""
// when they are switched off.
func (o OutcomesConfig) TopicOrOff() string {
	if o.Enabled != nil && !*o.Enabled {
		return ""
	}
	if o.Topic == nil {
		return DefaultOutcomeTopic
	}
	return *o.Topic
}

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	if c.Group == "" {
		c.Group = "ferry-sink-" + c.Name
	}
	if c.Workers == 0 {
		c.Workers = 64
	}
	if c.Concurrency == 0 {
		c.Concurrency = c.Workers
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	c.Retry.SetDefaults()
	if c.OnReject == "" {
		c.OnReject = OnRejectPark
	}
	if c.OnUnhandled == "" {
		c.OnUnhandled = OnRejectSkip
	}
	if c.ParkRecheck == 0 {
		c.ParkRecheck = 2 * time.Second
	}
	if c.ParkAfter == 0 {
		c.ParkAfter = 30 * time.Second
	}
	if c.WaitRecheck == 0 {
		c.WaitRecheck = 500 * time.Millisecond
	}
	if c.MaxBufferedPerPartition == 0 {
		c.MaxBufferedPerPartition = 10000
	}
	if c.CommitInterval == 0 {
		c.CommitInterval = time.Second
	}
	if c.Breaker.Failures == 0 {
		c.Breaker.Failures = 50
	}
	if c.Breaker.Window == 0 {
		c.Breaker.Window = 100
	}
	if c.Breaker.OpenFor == 0 {
		c.Breaker.OpenFor = 5 * time.Second
	}
}

// Validate returns every problem at once; prefix is the field path.
func (c *Config) Validate(prefix string) error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, fmt.Errorf("%s.name: required", prefix))
	}
	if len(c.Topics) == 0 {
		errs = append(errs, fmt.Errorf("%s.topics: name at least one topic (e.g. outbox.product)", prefix))
	}
	for i, p := range c.EventTypes {
		if _, err := path.Match(p, ""); err != nil {
			errs = append(errs, fmt.Errorf("%s.event_types[%d]: %q: %v", prefix, i, p, err))
		}
	}
	if c.OnReject != OnRejectPark && c.OnReject != OnRejectSkip {
		errs = append(errs, fmt.Errorf("%s.on_reject: %q: use %q or %q", prefix, c.OnReject, OnRejectPark, OnRejectSkip))
	}
	if c.OnUnhandled != OnRejectPark && c.OnUnhandled != OnRejectSkip {
		errs = append(errs, fmt.Errorf("%s.on_unhandled: %q: use %q or %q", prefix, c.OnUnhandled, OnRejectSkip, OnRejectPark))
	}
	if c.Workers < 0 || c.Concurrency < 0 || c.RateLimit < 0 || c.MaxBufferedPerPartition < 0 {
		errs = append(errs, fmt.Errorf("%s: workers, concurrency, rate_limit and max_buffered_per_partition must not be negative", prefix))
	}
	// Zero means the default; a negative duration would panic a ticker
	// or expire every call at once.
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"timeout", c.Timeout}, {"park_recheck", c.ParkRecheck}, {"park_after", c.ParkAfter}, {"wait_recheck", c.WaitRecheck},
		{"commit_interval", c.CommitInterval}, {"breaker.open_for", c.Breaker.OpenFor}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s.%s: %s: must be positive (0 or unset means the default)", prefix, d.key, d.v))
		}
	}
	if c.Breaker.Failures < 0 || c.Breaker.Window < 0 {
		errs = append(errs, fmt.Errorf("%s.breaker: failures and window must not be negative", prefix))
	}
	if c.Breaker.Failures > c.Breaker.Window {
		errs = append(errs, fmt.Errorf("%s.breaker.failures: %d is more than the window %d", prefix, c.Breaker.Failures, c.Breaker.Window))
	}
	if t := c.Outcomes.TopicOrOff(); t != "" && !validTopic(t) {
		errs = append(errs, fmt.Errorf("%s.outcomes.topic: %q: a Kafka topic is 1 to 249 of a-z, A-Z, 0-9, '.', '_', '-' (\"\" or enabled: false switches outcomes off)", prefix, t))
	}
	if err := c.Retry.Validate(prefix + ".retry"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// handles reports whether the integration handles eventType.
func (c *Config) handles(eventType string) bool {
	if len(c.EventTypes) == 0 {
		return true
	}
	for _, p := range c.EventTypes {
		if ok, _ := path.Match(p, eventType); ok { // patterns were validated
			return true
		}
	}
	return false
}

// validTopic reports whether Kafka accepts t as a topic name.
func validTopic(t string) bool {
	if len(t) == 0 || len(t) > 249 || t == "." || t == ".." {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
