// Package ops is the sink's operator surface: status, failures, retry,
// skip, pause, resume and the tenant switch. The CLI commands and the
// admin HTTP API both call it, so they do the same thing.
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/singleflight"

	"github.com/ferry-cdc/ferry/internal/consume"
	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/kafkaconf"
	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/mapping"
)

// Integration is what operations need of one configured integration.
type Integration struct {
	Name, Group string
	// Connector is needed to roll a disabled tenant back.
	Connector   connector.Connector
	ParkRecheck time.Duration
	Timeout     time.Duration
}

// Service runs operations against the delivery log (and Kafka, for
// consumer lag, when Kafka's brokers are known).
type Service struct {
	Log  *delivery.Log
	Pool *pgxpool.Pool
	// Kafka is where consumer lag is read: brokers, TLS, SASL.
	Kafka        kafkaconf.Config
	Integrations map[string]Integration

	counts countsCache // a large log's last counts, for Status
}

// countsCache holds the last delivery counts of a large log (see
// countsReuse).
type countsCache struct {
	mu   sync.Mutex
	last countsRead // last.at zero: none held
	took time.Duration
	act  int64 // the last operator act (ferry.operator_action.id) before they were read
	// flight has callers at once share one read.
	flight singleflight.Group
}

// countsRead is one read of the log's counts.
type countsRead struct {
	counts []delivery.Count
	parked map[string]map[string]int64
	at     time.Time
}

// countsReuse: Status reuses a large log's counts (some estimated: over
// delivery.CountedBelow rows), the parked counts with them, for
// countsReuse times what reading them took, until an operator act is
// recorded (by any process: ferry.operator_action). They cost up to a
// second there (the problems' pages are read), and every open status
// page asks every 5 s; reused so, and with callers at once sharing one
// read, each sink's status keeps Postgres busy a twentieth of the time
// at most, however many pages are open. A small log is counted at every
// call.
const countsReuse = 20

// MinCountsReuse is the least time a large log's counts are reused for
// (0: countsReuse alone). A variable for tests.
var MinCountsReuse time.Duration

// countsTimeout bounds a read that callers share (no single caller's
// context ends it).
const countsTimeout = time.Minute

// deliveryCounts is Log.Counts, reused as countsReuse says; at is when
// the counts were read. The maps and slices are shared: read them only.
func (s *Service) deliveryCounts(ctx context.Context) (counts []delivery.Count, parked map[string]map[string]int64, at time.Time, err error) {
	// An index lookup: counts read before the last act are not reused.
	// (An act whose id was assigned before another's but committed
	// after it goes unnoticed until the counts expire.)
	var act int64
	if err := s.Pool.QueryRow(ctx, `SELECT COALESCE(max(id), 0) FROM ferry.operator_action`).Scan(&act); err != nil {
		return nil, nil, at, fmt.Errorf("status: read the last operator act: %w", err)
	}
	c := &s.counts
	c.mu.Lock()
	if last := c.last; !last.at.IsZero() && c.act == act && time.Since(last.at) < max(MinCountsReuse, countsReuse*c.took) {
		c.mu.Unlock()
		return last.counts, last.parked, last.at, nil
	}
	c.mu.Unlock()
	// Keyed by the last act: a read begun before an act is not handed to
	// callers after it.
	ch := c.flight.DoChan(strconv.FormatInt(act, 10), func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), countsTimeout)
		defer cancel()
		r := countsRead{at: time.Now()}
		var err error
		if r.counts, r.parked, err = s.Log.Counts(rctx); err != nil {
			return nil, err
		}
		if slices.ContainsFunc(r.counts, func(n delivery.Count) bool { return n.Estimated }) {
			c.mu.Lock()
			if r.at.After(c.last.at) {
				c.last, c.took, c.act = r, time.Since(r.at), act
			}
			c.mu.Unlock()
		}
		return r, nil
	})
	select {
	case <-ctx.Done():
		return nil, nil, at, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return nil, nil, at, res.Err
		}
		r := res.Val.(countsRead)
		return r.counts, r.parked, r.at, nil
	}
}

// InputError is an operator mistake (bad or missing argument, nothing to
// act on): the CLI exits non-zero with it, the API answers 4xx.
type InputError struct {
	Status int // HTTP status: 400 (bad argument) or 409 (state does not allow it)
	Msg    string
}

func (e *InputError) Error() string { return e.Msg }

func bad(format string, args ...any) error {
	return &InputError{Status: 400, Msg: fmt.Sprintf(format, args...)}
}

// conflict makes a state conflict (delivery.ErrState) a 409; other errors
// (the database) stay what they are.
func conflict(err error) error {
	if errors.Is(err, delivery.ErrState) {
		return &InputError{Status: 409, Msg: err.Error()}
	}
	return err
}

// Process is one running sink's live state for one integration.
type Process struct {
	ProcessID  string         `json:"process_id"`
	Host       string         `json:"host"`
	StartedAt  time.Time      `json:"started_at"`
	UpdatedAt  time.Time      `json:"updated_at"`
	Partitions []string       `json:"partitions"`
	Lanes      map[string]int `json:"lanes"`
	Breaker    string         `json:"breaker"`
	Rate       float64        `json:"deliveries_per_second"`
}

// PartitionLag is the consumer lag of one partition.
type PartitionLag struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Committed int64  `json:"committed"`
	End       int64  `json:"end"`
	Lag       int64  `json:"lag"`
}

// IntegrationStatus is `sink status` for one integration.
type IntegrationStatus struct {
	Name       string           `json:"integration"`
	Deliveries map[string]int64 `json:"deliveries"` // by state
	// Estimated names the states whose Deliveries are estimates from
	// the table's statistics (succeeded, on a large log: delivery.CountedBelow).
	Estimated []string `json:"deliveries_estimated,omitempty"`
	// CountedAt is when Deliveries and the parked counts were read (a
	// large log's are reused for a while: see countsReuse), CountedAge
	// how long before this answer.
	CountedAt  time.Time        `json:"counted_at"`
	CountedAge float64          `json:"counted_age_seconds"`
	Parked     map[string]int64 `json:"parked"` // tenant → queued events, for the delivery.ParkedTop tenants with the most
	// ParkedTotal is the integration's parked events, over ParkedTenants
	// tenants (`sink tenants` lists every one).
	ParkedTotal   int64          `json:"parked_total"`
	ParkedTenants int64          `json:"parked_tenants"`
	Processes     []Process      `json:"processes"` // live sinks
	Lanes         map[string]int `json:"lanes"`     // by state, over live sinks
	Breaker       string         `json:"breaker"`   // closed, open, half-open; "" when no sink runs
	Rate          float64        `json:"deliveries_per_second"`
	Lag           []PartitionLag `json:"lag,omitempty"`
	LagTotal      int64          `json:"lag_total"`
	LagError      string         `json:"lag_error,omitempty"`
}

// Status reports every integration known to the log, the live sinks or
// the configuration.
func (s *Service) Status(ctx context.Context) ([]IntegrationStatus, error) {
	counts, parked, countedAt, err := s.deliveryCounts(ctx)
	if err != nil {
		return nil, err
	}
	byName := map[string]*IntegrationStatus{}
	get := func(name string) *IntegrationStatus {
		st := byName[name]
		if st == nil {
			st = &IntegrationStatus{Name: name, Deliveries: map[string]int64{}, Parked: map[string]int64{}, Lanes: map[string]int{},
				CountedAt: countedAt, CountedAge: time.Since(countedAt).Seconds()}
			byName[name] = st
		}
		return st
	}
	for _, c := range counts {
		st := get(c.Integration)
		st.Deliveries[string(c.State)] = c.Deliveries
		if c.Estimated {
			st.Estimated = append(st.Estimated, string(c.State))
		}
	}
	for in, ts := range parked {
		st := get(in)
		for t, n := range ts {
			switch t {
			case "":
				st.ParkedTotal = n
			case "#tenants":
				st.ParkedTenants = n
			default:
				st.Parked[t] = n
			}
		}
	}
	groups := map[string]string{}
	for name, in := range s.Integrations {
		get(name)
		groups[name] = in.Group
	}
	rows, err := s.Pool.Query(ctx, `SELECT process_id, integration, consumer_group, host, started_at, updated_at, partitions, lanes, breaker, rate
		FROM ferry.sink_process WHERE updated_at > now() - $1::interval ORDER BY integration, process_id`,
		fmt.Sprintf("%d milliseconds", 3*consume.ReportInterval.Milliseconds()))
	if err != nil {
		return nil, fmt.Errorf("status: read live sinks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p Process
		var in, group string
		var parts, lanes []byte
		if err := rows.Scan(&p.ProcessID, &in, &group, &p.Host, &p.StartedAt, &p.UpdatedAt, &parts, &lanes, &p.Breaker, &p.Rate); err != nil {
			return nil, fmt.Errorf("status: read live sinks: %w", err)
		}
		if err := json.Unmarshal(parts, &p.Partitions); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(lanes, &p.Lanes); err != nil {
			return nil, err
		}
		st := get(in)
		st.Processes = append(st.Processes, p)
		for k, n := range p.Lanes {
			st.Lanes[k] += n
		}
		st.Rate += p.Rate
		st.Breaker = worse(st.Breaker, p.Breaker)
		if groups[in] == "" {
			groups[in] = group
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	s.lag(ctx, byName, groups)
	out := make([]IntegrationStatus, 0, len(byName))
	for _, st := range byName {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// worse returns the more alarming breaker state.
func worse(a, b string) string {
	rank := map[string]int{"": 0, "closed": 1, "half-open": 2, "open": 3}
	if rank[strings.ToLower(b)] > rank[strings.ToLower(a)] {
		return strings.ToLower(b)
	}
	return strings.ToLower(a)
}

// lag fills consumer lag per partition from Kafka, when brokers are known.
func (s *Service) lag(ctx context.Context, byName map[string]*IntegrationStatus, groups map[string]string) {
	if len(groups) == 0 {
		return
	}
	if len(s.Kafka.Brokers) == 0 {
		for name := range groups {
			byName[name].LagError = "no Kafka brokers given (--brokers or FERRY_KAFKA_BROKERS): lag unknown"
		}
		return
	}
	cl, err := kgo.NewClient(s.Kafka.Opts()...)
	if err != nil {
		for name := range groups {
			byName[name].LagError = err.Error()
		}
		return
	}
	defer cl.Close()
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	names := make([]string, 0, len(groups))
	for _, g := range groups {
		names = append(names, g)
	}
	lags, err := kadm.NewClient(cl).Lag(lctx, names...)
	err = s.Kafka.Explain(lctx, err) // rejected credentials: name SASL and the mechanism
	for name, group := range groups {
		st := byName[name]
		if err != nil {
			st.LagError = fmt.Sprintf("cannot reach Kafka %v: %v", s.Kafka.Brokers, err)
			continue
		}
		l, ok := lags[group]
		if !ok || l.Error() != nil {
			st.LagError = fmt.Sprintf("group %s: %v", group, l.Error())
			continue
		}
		for _, tl := range l.Lag.Sorted() {
			if tl.Err != nil {
				continue
			}
			st.Lag = append(st.Lag, PartitionLag{Topic: tl.Topic, Partition: tl.Partition, Committed: tl.Commit.At, End: tl.End.Offset, Lag: tl.Lag})
			st.LagTotal += tl.Lag
		}
	}
}

// Failures lists problem deliveries, one page at a time (next is the
// cursor of the following page, "" at the end).
func (s *Service) Failures(ctx context.Context, f delivery.Filter) ([]delivery.Failure, string, error) {
	for _, st := range f.States {
		switch st {
		case delivery.Pending, delivery.InFlight, delivery.Succeeded, delivery.Failed, delivery.Rejected, delivery.Waiting,
			delivery.Skipped, delivery.Compensating, delivery.Compensated, delivery.Expired, delivery.CompensationFailed:
		default:
			return nil, "", bad("unknown state %q: use pending, in_flight, succeeded, failed, rejected, waiting, skipped, compensating, compensated, expired or compensation_failed", st)
		}
	}
	if f.Limit < 0 || f.Limit > 10000 {
		return nil, "", bad("limit %d: give 1 to 10000", f.Limit)
	}
	rows, next, err := s.Log.Failures(ctx, f)
	if errors.Is(err, delivery.ErrCursor) {
		return nil, "", bad("cursor %q: %v", f.Cursor, err)
	}
	if rows == nil && err == nil {
		rows = []delivery.Failure{}
	}
	return rows, next, err
}

// RetryRequest selects what to redrive: one event, or a bulk selection
// of an integration's deliveries (tenant, states, since; All for no
// filter but the default states).
type RetryRequest struct {
	Integration string   `json:"integration"`
	Event       string   `json:"event"`
	Tenant      string   `json:"tenant"`
	All         bool     `json:"all"`
	States      []string `json:"states"`
	// Since is how far back (a duration such as 1h) or from when (an
	// RFC 3339 time) the deliveries were last updated.
	Since  string `json:"since"`
	Reason string `json:"reason"`
}

// RedriveOrder says where a redriven delivery goes in its tenant's
// order: the CLI prints it and the API returns it, so the operator sees
// the choice made.
const RedriveOrder = "each is delivered again from its stored copy through its tenant's lane, AFTER the events that lane has " +
	"already delivered, not at its original place in the tenant's order (that is the operator's choice); " +
	"a lane still parked or backing off on it delivers it in place, at once"

// RetryResult is what a retry took.
type RetryResult struct {
	Count  int                 `json:"retrying"`
	Events []delivery.Redriven `json:"events"`
	Order  string              `json:"order"`
}

// Retry redrives the selected deliveries (delivery.Log.Redrive): it
// fails with a 409 when nothing matches.
func (s *Service) Retry(ctx context.Context, r RetryRequest) (RetryResult, error) {
	if r.Integration == "" {
		return RetryResult{}, bad("retry: integration is required")
	}
	sel := delivery.Selection{Integration: r.Integration, EventID: r.Event, TenantID: r.Tenant}
	bulk := r.Tenant != "" || r.All || len(r.States) > 0 || r.Since != ""
	switch {
	case r.Event != "" && bulk:
		return RetryResult{}, bad("retry: give either one event, or a selection (tenant, states, since, all), not both")
	case r.Event == "" && !bulk:
		return RetryResult{}, bad("retry: give exactly one of event, or a selection: tenant, states, since, or all")
	}
	allowed := delivery.BulkRetryable
	if r.Event != "" {
		allowed = delivery.Retryable
	}
	for _, st := range r.States {
		if !slices.Contains(delivery.Retryable, delivery.State(st)) {
			return RetryResult{}, bad("retry: state %q cannot be retried: use %v", st, delivery.Retryable)
		}
		sel.States = append(sel.States, delivery.State(st))
	}
	if r.Since != "" {
		t, err := parseSince(r.Since, time.Now())
		if err != nil {
			return RetryResult{}, bad("retry: %v", err)
		}
		sel.Since = t
	}
	took, err := s.Log.Redrive(ctx, sel, r.Reason)
	if err != nil {
		return RetryResult{}, conflict(err)
	}
	if len(took) == 0 {
		states := sel.States
		if len(states) == 0 {
			states = allowed
		}
		return RetryResult{}, &InputError{Status: 409, Msg: fmt.Sprintf("retry: no delivery of %s is %v with a stored copy%s: nothing to retry",
			Target(r.Integration, r.Tenant), states, sinceText(sel.Since))}
	}
	return RetryResult{Count: len(took), Events: took, Order: RedriveOrder}, nil
}

func sinceText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return " updated since " + t.UTC().Format(time.RFC3339)
}

// parseSince reads a duration back from now (1h, 15m) or an RFC 3339
// time.
func parseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("since %q: give a duration such as 1h or an RFC 3339 time such as 2026-12-01T10:00:00Z", v)
}

// WaitRedriven waits up to wait for the running sinks to act on the
// redriven events, and returns each one's state then and how many
// they have not acted on yet: still pending or in flight (or, for one
// that was compensating, still compensating).
func (s *Service) WaitRedriven(ctx context.Context, integration string, took []delivery.Redriven, wait time.Duration) (map[string]delivery.State, int, error) {
	ids := make([]string, len(took))
	for i, r := range took {
		ids[i] = r.EventID
	}
	deadline := time.Now().Add(wait)
	for {
		states, err := s.Log.States(ctx, integration, ids)
		if err != nil {
			return nil, 0, err
		}
		waiting := 0
		for _, r := range took {
			st := states[r.EventID]
			if st == delivery.Pending || st == delivery.InFlight || (r.From == delivery.Compensating && st == delivery.Compensating) {
				waiting++
			}
		}
		if waiting == 0 || !time.Now().Before(deadline) {
			return states, waiting, nil
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Prune removes finished deliveries (and their kept attempts) last
// updated longer than olderThan ago; never an unfinished one.
func (s *Service) Prune(ctx context.Context, olderThan time.Duration) (delivery.Pruned, error) {
	if olderThan <= 0 {
		return delivery.Pruned{}, bad("prune: give older_than, a duration such as 720h (30 days)")
	}
	return s.Log.Prune(ctx, time.Now().Add(-olderThan))
}

// Skip skips one delivery, with a reason.
func (s *Service) Skip(ctx context.Context, integration, event, reason string) error {
	switch {
	case integration == "" || event == "":
		return bad("skip: integration and event are required")
	case strings.TrimSpace(reason) == "":
		return bad("skip: a reason is required (it is recorded)")
	}
	if err := s.Log.Skip(ctx, integration, event, reason); err != nil {
		return conflict(err)
	}
	return nil
}

// Pause pauses an integration, or one tenant of it.
func (s *Service) Pause(ctx context.Context, integration, tenant, reason string) error {
	if integration == "" {
		return bad("pause: integration is required")
	}
	if err := s.Log.Pause(ctx, integration, tenant, reason); err != nil {
		return conflict(err)
	}
	return nil
}

// Resume lifts a pause.
func (s *Service) Resume(ctx context.Context, integration, tenant, reason string) error {
	if integration == "" {
		return bad("resume: integration is required")
	}
	if err := s.Log.Resume(ctx, integration, tenant, reason); err != nil {
		return conflict(err)
	}
	return nil
}

// Tenants lists tenants.
func (s *Service) Tenants(ctx context.Context, integration string) ([]delivery.Tenant, error) {
	ts, err := s.Log.Tenants(ctx, integration)
	if ts == nil && err == nil {
		ts = []delivery.Tenant{}
	}
	return ts, err
}

// Enabled is what enabling a tenant did.
type Enabled struct {
	Request int64 `json:"resync_request"`
	// Events is how many events the resync emitted, or -1 while cdc has
	// not served the request yet. cdc publishes them, minus those of
	// objects that changed meanwhile (their own events are newer).
	Events int `json:"events"`
	// Error is why cdc could not serve the request (a failing
	// outbox.resync_queries query), or "".
	Error string `json:"error,omitempty"`
}

// Enable switches a tenant on and files its resync; it waits up to wait
// for cdc to serve it.
func (s *Service) Enable(ctx context.Context, integration, tenant, reason string, wait time.Duration) (Enabled, error) {
	if integration == "" || tenant == "" {
		return Enabled{}, bad("enable: integration and tenant are required")
	}
	id, err := s.Log.SetTenant(ctx, integration, tenant, true, reason)
	if err != nil {
		return Enabled{}, err
	}
	res := Enabled{Request: id, Events: -1}
	deadline := time.Now().Add(wait)
	for {
		var n *int
		var why *string
		if err := s.Pool.QueryRow(ctx, `SELECT events, error FROM ferry.resync_request WHERE id = $1`, id).Scan(&n, &why); err != nil {
			return res, fmt.Errorf("read resync request %d: %w", id, err)
		}
		if n != nil {
			res.Events = *n
			if why != nil {
				res.Error = *why
			}
			return res, nil
		}
		if !time.Now().Before(deadline) {
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Disable switches a tenant off and, unless rollback is false, waits for
// running sinks to notice and finish what they have in flight, then
// deletes at the partner everything the tenant's mappings hold.
func (s *Service) Disable(ctx context.Context, integration, tenant, reason string, rollback bool) (consume.RollbackResult, error) {
	if integration == "" || tenant == "" {
		return consume.RollbackResult{}, bad("disable: integration and tenant are required")
	}
	in, ok := s.Integrations[integration]
	if rollback && (!ok || in.Connector == nil) {
		return consume.RollbackResult{}, bad("disable: integration %q is not in the --config file: the rollback needs its connector (or pass --no-rollback)", integration)
	}
	if !rollback {
		off, err := s.Log.Disabled(ctx, integration)
		if err != nil {
			return consume.RollbackResult{}, &NotSwitched{Err: err}
		}
		if off[tenant] {
			return consume.RollbackResult{}, &InputError{Status: 409, Msg: fmt.Sprintf("disable: %s tenant %s is already disabled: nothing to do", integration, tenant)}
		}
	}
	if _, err := s.Log.SetTenant(ctx, integration, tenant, false, reason); err != nil {
		return consume.RollbackResult{}, &NotSwitched{Err: err}
	}
	if !rollback {
		return consume.RollbackResult{}, nil
	}
	// Running sinks re-read the switch every park_recheck; a delivery
	// already in flight finishes before the rollback reads the mappings.
	settle := time.Now().Add(2 * in.ParkRecheck)
	deadline := settle.Add(in.Timeout)
	for {
		n, err := s.Log.InFlight(ctx, integration, tenant)
		if err != nil {
			return consume.RollbackResult{}, err
		}
		if n == 0 && time.Now().After(settle) {
			break
		}
		if time.Now().After(deadline) {
			return consume.RollbackResult{}, fmt.Errorf("disable: %d deliveries of %s are still in flight after %s; run the disable again", n, tenant, in.Timeout)
		}
		select {
		case <-ctx.Done():
			return consume.RollbackResult{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	maps, err := mapping.New(s.Pool, 1)
	if err != nil {
		return consume.RollbackResult{}, err
	}
	return consume.Rollback(ctx, integration, tenant, in.Connector, s.Log, maps, in.Timeout)
}

// NotSwitched wraps an error that left the tenant's switch as it was.
type NotSwitched struct{ Err error }

func (e *NotSwitched) Error() string { return e.Err.Error() }
func (e *NotSwitched) Unwrap() error { return e.Err }

// Switched reports whether a Disable that returned err still switched
// the tenant off (its rollback may have failed).
func Switched(err error) bool {
	var ns *NotSwitched
	return err == nil || !(IsInput(err) || errors.As(err, &ns))
}

// IsInput reports whether err is an operator mistake.
func IsInput(err error) bool {
	var ie *InputError
	return errors.As(err, &ie)
}
