package delivery

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/internal/groupcommit"
	"github.com/ferry-cdc/ferry/internal/safe"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// State is a delivery's state.
type State string

// Delivery states.
const (
	Pending   State = "pending"
	InFlight  State = "in_flight"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Rejected  State = "rejected"
	Waiting   State = "waiting"
	Skipped   State = "skipped"
	// Compensating: rejected after some steps succeeded, and their undo
	// is in progress (or waits to be retried).
	Compensating State = "compensating"
	// Compensated: rejected, and the completed steps were undone.
	Compensated State = "compensated"
	// Expired: given up (retry.max_attempts, retry.max_age, or the
	// event's own deadline); never attempted again unless an operator
	// retries it.
	Expired State = "expired"
	// CompensationFailed: rejected, and the partner refused the undo too.
	CompensationFailed State = "compensation_failed"
)

// Final reports whether a delivery in state s is never sent again by the
// engine (an operator may still retry a rejected one). Each final state
// produces an outcome record (outcome.go).
func (s State) Final() bool {
	switch s {
	case Succeeded, Rejected, Skipped, Compensated, Expired, CompensationFailed:
		return true
	}
	return false
}

// ErrMovedOn means a delivery changed since the attempt began (another
// process took it over, or an operator acted): the attempt's write was
// not applied. It is not a database problem.
var ErrMovedOn = errors.New("the delivery moved on since (another process, or an operator)")

// ErrState means an operator act does not apply to the delivery (or
// pause) as it stands: nothing to skip, retry or resume.
var ErrState = errors.New("state does not allow it")

// Source is where the event came from in Kafka.
type Source struct {
	Topic     string
	Partition int32
	Offset    int64
	// Key is the record key: the tenant's lane (tenant, or
	// tenant/aggregate), kept with the stored copy for a redrive.
	Key string
}

// MaxCallBytes bounds each request and response body kept in the log.
const MaxCallBytes = 4096

// Log is the delivery log.
type Log struct {
	pool     *pgxpool.Pool
	b        *groupcommit.Batcher
	timeout  time.Duration
	holder   string
	outcomes map[string]string
	keep     int
}

// Options configure a Log.
type Options struct {
	// StatementTimeout bounds each of the log's statements on the client
	// side (0: unbounded, for operator commands): a statement that has
	// not answered by then fails, so a stalled connection cannot freeze
	// a lane or shutdown. The server-side bound is the pool's
	// statement_timeout runtime parameter (see internal/sinkapp), which the
	// write connections inherit.
	StatementTimeout time.Duration
	// Holder names this process in the deliveries it claims (Begin); it
	// is the process_id whose lease in ferry.sink_process (LeaseUntil)
	// keeps other processes from taking them over. "" claims without a
	// holder: anyone may take such a delivery over (operator commands).
	Holder string
	// Outcomes is the Kafka topic of each integration's outcome records
	// (outcome.go); an integration that is absent, or maps to "", writes
	// none. Operator commands need it too: a skip is a final state.
	Outcomes map[string]string
	// AttemptsKept is how many attempts of each delivery are kept in
	// ferry.delivery_attempt at each end: the first N and the last N
	// (0: DefaultAttemptsKept).
	AttemptsKept int
}

// DefaultAttemptsKept is Options.AttemptsKept's default.
const DefaultAttemptsKept = 5

// New returns a Log on pool (migrations applied). The log's hot writes
// run in group commits (package groupcommit) on two connections of
// their own, to the same database. Close the Log to stop its batchers.
func New(pool *pgxpool.Pool, opts Options) (*Log, error) {
	if opts.StatementTimeout < 0 {
		return nil, fmt.Errorf("delivery: statement timeout %s is negative", opts.StatementTimeout)
	}
	if opts.AttemptsKept < 0 {
		return nil, fmt.Errorf("delivery: attempts kept %d is negative", opts.AttemptsKept)
	}
	b, err := groupcommit.New(pool, opts.StatementTimeout)
	if err != nil {
		return nil, fmt.Errorf("delivery: %w", err)
	}
	keep := opts.AttemptsKept
	if keep == 0 {
		keep = DefaultAttemptsKept
	}
	return &Log{pool: pool, b: b, timeout: opts.StatementTimeout, holder: opts.Holder,
		outcomes: opts.Outcomes, keep: keep}, nil
}

// Bound returns ctx limited to the log's statement timeout (ctx itself,
// with a no-op cancel, when there is none): for the engine's own
// statements on the log's pool (parked queue, live report).
func (l *Log) Bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if l.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, l.timeout)
}

// Close waits for writes in progress and stops the batchers.
func (l *Log) Close() {
	l.b.Close()
}

// GroupCommit is the batcher the log's hot writes run on. Other hot
// writes of the sink (the mapping store's) join its batches: fewer round
// trips and commits than batches of their own.
func (l *Log) GroupCommit() *groupcommit.Batcher { return l.b }

// Attempt is one claimed delivery attempt: Finish must be called with its
// outcome.
type Attempt struct {
	Integration string
	EventID     string
	// Number counts from 1; it fences Finish.
	Number int
	// Steps are the steps earlier attempts completed (multi-step
	// operations).
	Steps []connector.Step
	// Compensating is set when the attempt is to finish undoing Steps
	// after a rejection, not to deliver.
	Compensating bool
	// Base is the attempt count when an operator last redrove the
	// delivery (0: never), and Redriven when: retry.max_attempts counts
	// the attempts after Base, retry.max_age runs from Redriven, and the
	// event's own deadline no longer applies.
	Base     int
	Redriven time.Time
	// KeyGeneration counts the redrives from a state in which the
	// partner applied nothing (rejected, compensated); see IdempotencyKey.
	KeyGeneration int
	event         connector.Event // stored with a failure or rejection
	laneKey       string          // stored with it, for a redrive
}

// IdempotencyKey is the key the partner sees for the attempt:
// <integration>:<event id>, the same on every attempt and redelivery, so
// a partner applies the event once; after a redrive of a rejected or
// compensated delivery, with ":r<n>" added, as the partner applied
// nothing under the old key and may replay its refusal for it.
func (a Attempt) IdempotencyKey() string {
	if a.KeyGeneration == 0 {
		return a.Integration + ":" + a.EventID
	}
	return a.Integration + ":" + a.EventID + ":r" + strconv.Itoa(a.KeyGeneration)
}

// ErrNotClaimed means the delivery is final, or another process moved it
// since, or holds it: the engine must not send it. Held reports the
// last: the delivery is in flight (or compensating) in another process
// whose lease has not expired; look again later.
type ErrNotClaimed struct {
	State  State
	Holder string // the process holding it, when Held
}

// Held reports whether another live process holds the delivery.
func (e *ErrNotClaimed) Held() bool { return e.Holder != "" }

func (e *ErrNotClaimed) Error() string {
	if e.Held() {
		return fmt.Sprintf("delivery not claimed: it is %s in process %s, whose lease has not expired", e.State, e.Holder)
	}
	return fmt.Sprintf("delivery not claimed: it is %s", e.State)
}

// The log's hot writes, each over arrays so that a batch runs all
// writes of one kind as one statement (see batch.go).
var (
	// A claimed delivery names its holder. in_flight → in_flight takes
	// over an attempt only from this process, or from a holder that is
	// gone: no row in ferry.sink_process, or a lease that expired
	// (migration 0009; Finish clears the holder). A compensating
	// delivery stays compensating: its undo goes on.
	beginStmt = &groupcommit.Stmt{Name: "begin", Keys: 2, SQL: `INSERT INTO ferry.delivery AS d (integration, event_id, tenant_id, event_type,
			aggregate_type, aggregate_id, topic, kafka_partition, kafka_offset, state, attempts, holder, last_attempt_at)
		SELECT u.integration, u.event_id, u.tenant_id, u.event_type, u.aggregate_type, u.aggregate_id, u.topic,
			u.kafka_partition, u.kafka_offset, 'in_flight', 1, NULLIF(u.holder, ''), now()
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
			$7::text[], $8::int[], $9::bigint[], $10::text[]) AS u(integration, event_id, tenant_id, event_type,
			aggregate_type, aggregate_id, topic, kafka_partition, kafka_offset, holder)
		ON CONFLICT (integration, event_id) DO UPDATE
			SET state = CASE WHEN d.state = 'compensating' THEN 'compensating' ELSE 'in_flight' END,
				attempts = d.attempts + 1, updated_at = now(), holder = EXCLUDED.holder, last_attempt_at = now()
			WHERE d.state IN ('pending', 'failed', 'in_flight', 'waiting', 'compensating')
				AND (d.holder IS NULL OR d.holder = EXCLUDED.holder OR NOT EXISTS (
					SELECT 1 FROM ferry.sink_process p
					WHERE p.process_id = d.holder AND p.integration = d.integration AND p.lease_until > now()))
		RETURNING d.integration, d.event_id, d.attempts, d.state, d.steps, d.attempts_base, d.redriven_at, d.key_generation`, Args: beginArgs}
	checkpointStmt = &groupcommit.Stmt{Name: "record step", Keys: 2, SQL: `UPDATE ferry.delivery AS d
		SET steps = COALESCE(d.steps, '[]'::jsonb) || u.step, updated_at = now()
		FROM unnest($1::text[], $2::text[], $3::int[], $4::jsonb[]) AS u(integration, event_id, attempts, step)
		WHERE d.integration = u.integration AND d.event_id = u.event_id AND d.attempts = u.attempts AND d.state = 'in_flight'
		RETURNING d.integration, d.event_id`, Args: checkpointArgs}
	// A waiting outcome gives back the attempt Begin counted. A final
	// state writes its outcome record in the same statement (a
	// transactional outbox: outcome.go), when the integration has an
	// outcome topic (otopic).
	finishStmt = &groupcommit.Stmt{Name: "finish", Keys: 2, SQL: `WITH f AS (UPDATE ferry.delivery AS d
		SET state = u.state, last_status = u.status, reason = NULLIF(u.reason, ''), calls = u.calls,
			next_attempt_at = u.next, event = COALESCE(u.event, d.event), updated_at = now(), holder = NULL,
			lane_key = COALESCE(NULLIF(u.lane_key, ''), d.lane_key),
			problem_at = CASE WHEN u.state = 'succeeded' THEN d.problem_at ELSE now() END,
			attempts = CASE WHEN u.state = 'waiting' THEN d.attempts - 1 ELSE d.attempts END
		FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::int[], $6::text[], $7::jsonb[],
			$8::timestamptz[], $9::jsonb[], $10::text[], $11::text[], $12::jsonb[], $13::text[], $14::int[])
			AS u(integration, event_id, attempts, state, status, reason, calls, next, event, otopic, remote_id, remote_ids, lane_key, keep)
		WHERE d.integration = u.integration AND d.event_id = u.event_id AND d.attempts = u.attempts
			AND d.state IN ('in_flight', 'compensating')
		RETURNING d.*, u.otopic, u.remote_id, u.remote_ids, u.keep),
	o AS (INSERT INTO ferry.outcome (` + outcomeColumns + `)
		SELECT ` + outcomeValues("f", "f.otopic", "f.remote_id", "f.remote_ids") + ` FROM f
		WHERE f.otopic <> '' AND f.state IN ` + finalStates + `),
	-- Every attempt but a first-attempt success, the first and last
	-- keep of them (0011_redrive.sql).
	a AS (INSERT INTO ferry.delivery_attempt (integration, event_id, attempt, state, status, reason, calls, started_at)
		SELECT f.integration, f.event_id, f.attempts, f.state, f.last_status, COALESCE(f.reason, ''), f.calls, f.last_attempt_at FROM f
		WHERE f.state <> 'waiting' AND (f.state <> 'succeeded' OR f.attempts > 1)
		ON CONFLICT (integration, event_id, attempt) DO NOTHING),
	t AS (DELETE FROM ferry.delivery_attempt AS x USING f
		WHERE f.attempts > 2 * f.keep AND x.integration = f.integration AND x.event_id = f.event_id AND x.attempt = f.attempts - f.keep)
	SELECT integration, event_id FROM f`, Args: finishArgs}
)

// Begin claims the next attempt of ev for integration: inserts the row
// (pending → in_flight) or moves failed/in_flight → in_flight. It returns
// *ErrNotClaimed when the delivery is already final (a redelivery).
// The writes with run after the claim, in its transaction (a create's
// intent: mapping.Deferred.IntendOnClaim), and see the claimed row: a
// batch runs its statements in order of first appearance, and every
// unit that holds such a write starts with its claim.
func (l *Log) Begin(ctx context.Context, integration string, ev connector.Event, src Source, with ...*groupcommit.Op) (Attempt, error) {
	var r begun
	o := beginOp(integration, ev, src, l.holder, &r)
	if err := l.b.Do(ctx, append([]*groupcommit.Op{o}, with...)...); err != nil {
		return Attempt{}, fmt.Errorf("delivery: begin %s: %w", ev.ID, err)
	}
	if !o.Applied {
		var state State
		var holder *string
		ctx, cancel := l.Bound(ctx)
		defer cancel()
		if err := l.pool.QueryRow(ctx, `SELECT state, holder FROM ferry.delivery WHERE integration = $1 AND event_id = $2`,
			integration, ev.ID).Scan(&state, &holder); err != nil {
			return Attempt{}, fmt.Errorf("delivery: read %s: %w", ev.ID, err)
		}
		nc := &ErrNotClaimed{State: state}
		if !state.Final() && holder != nil {
			nc.Holder = *holder
		}
		return Attempt{}, nc
	}
	a := Attempt{Integration: integration, EventID: ev.ID, Number: r.n, Compensating: r.state == Compensating, event: ev,
		Base: r.base, KeyGeneration: r.keyGen, laneKey: src.Key}
	if r.redriven.Valid {
		a.Redriven = r.redriven.Time
	}
	if len(r.steps) > 0 {
		if err := json.Unmarshal(r.steps, &a.Steps); err != nil {
			return Attempt{}, fmt.Errorf("delivery: decode steps of %s: %w", ev.ID, err)
		}
	}
	return a, nil
}

// begun is what a claimed Begin returns.
type begun struct {
	n        int
	state    State
	steps    []byte
	base     int
	redriven pgtype.Timestamptz
	keyGen   int
}

// beginRow is a Begin's values after the key.
type beginRow struct {
	tenant, eventType, aggregateType, aggregateID, holder string
	src                                                   Source
}

func beginOp(integration string, ev connector.Event, src Source, holder string, r *begun) *groupcommit.Op {
	return &groupcommit.Op{Stmt: beginStmt, Key: []string{integration, ev.ID}, Row: &beginRow{tenant: ev.TenantID, eventType: ev.EventType, aggregateType: ev.AggregateType, aggregateID: ev.AggregateID, holder: holder, src: src},
		Out: []any{&r.n, &r.state, &r.steps, &r.base, &r.redriven, &r.keyGen}}
}

func beginArgs(ops []*groupcommit.Op) []any {
	n := len(ops)
	tenant, typ, aggType, aggID, topic := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	part, off, holder := make([]int32, n), make([]int64, n), make([]string, n)
	for i, o := range ops {
		r := o.Row.(*beginRow)
		tenant[i], typ[i], aggType[i], aggID[i], holder[i] = r.tenant, r.eventType, r.aggregateType, r.aggregateID, r.holder
		topic[i], part[i], off[i] = r.src.Topic, r.src.Partition, r.src.Offset
	}
	return []any{groupcommit.KeyColumn(ops, 0), groupcommit.KeyColumn(ops, 1), tenant, typ, aggType, aggID, topic, part, off, holder}
}

// checkpointRow is a Checkpoint's values after the key.
type checkpointRow struct {
	attempt int32
	step    []byte // a JSON array of one step
}

func checkpointArgs(ops []*groupcommit.Op) []any {
	att, step := make([]int32, len(ops)), make([][]byte, len(ops))
	for i, o := range ops {
		r := o.Row.(*checkpointRow)
		att[i], step[i] = r.attempt, r.step
	}
	return []any{groupcommit.KeyColumn(ops, 0), groupcommit.KeyColumn(ops, 1), att, step}
}

// Checkpoint records a completed step of the attempt, before the next
// step starts.
func (l *Log) Checkpoint(ctx context.Context, a Attempt, s connector.Step) error {
	s.Response = truncate(s.Response)
	b, err := json.Marshal([]connector.Step{s})
	if err != nil {
		return fmt.Errorf("delivery: encode step: %w", err)
	}
	cp := &groupcommit.Op{Stmt: checkpointStmt, Key: []string{a.Integration, a.EventID}, Row: &checkpointRow{attempt: int32(a.Number), step: b}}
	if err := l.b.Do(ctx, cp); err != nil {
		return fmt.Errorf("delivery: record step %s of %s: %w", s.Name, a.EventID, err)
	}
	if !cp.Applied {
		return fmt.Errorf("delivery: record step %s of %s: %w", s.Name, a.EventID, ErrMovedOn)
	}
	return nil
}

// Outcome is what an attempt ended with.
type Outcome struct {
	// State is Succeeded, Failed, Rejected, Waiting (the attempt is not
	// counted), Compensating or Compensated.
	State     State
	Status    int
	Reason    string
	Calls     []connector.Call
	NextRetry time.Time // for Failed
	// RemoteID and RemoteIDs are the partner ids a success produced
	// (connector.Result), for the outcome record.
	RemoteID  string
	RemoteIDs map[string]string
}

// OutcomeOf is what a connector's answer means for the log: the state
// (succeeded, failed, rejected or waiting), the partner's status (of the
// refusing or failing call, else of the last call), the calls, and the
// reason (the error, or the result's note). Retry times and
// compensation are the caller's.
func OutcomeOf(res connector.Result, err error) Outcome {
	o := Outcome{Calls: res.Calls, Reason: res.Note, RemoteID: res.RemoteID, RemoteIDs: res.RemoteIDs}
	var rej *connector.Rejection
	var fail *connector.Failure
	switch {
	case errors.As(err, &rej):
		o.Status, o.Calls = rej.Status, rej.Calls
	case errors.As(err, &fail):
		o.Status, o.Calls = fail.Status, fail.Calls
	case len(res.Calls) > 0:
		o.Status = res.Calls[len(res.Calls)-1].Status
	}
	switch out, _ := connector.Classify(err); out {
	case connector.Succeeded:
		o.State = Succeeded
	case connector.Failed:
		o.State = Failed
	case connector.Rejected:
		o.State = Rejected
	case connector.Waits:
		o.State = Waiting
	}
	if err != nil {
		// A connector's error may quote a URL with a token in it; the
		// reason is stored, shown and logged.
		o.Reason = safe.Text(err.Error())
	}
	return o
}

// Finish records the attempt's outcome. It fails when the delivery moved
// since Begin (fenced by the attempt number).
//
// The writes given as with (the partner ids a create recorded: see
// mapping.Deferred) commit in the same transaction as the outcome, or
// not at all; the caller reads their results from the ops.
func (l *Log) Finish(ctx context.Context, a Attempt, o Outcome, with ...*groupcommit.Op) error {
	fin, err := l.finishOp(a, o)
	if err != nil {
		return err
	}
	if err := l.b.Do(ctx, append([]*groupcommit.Op{fin}, with...)...); err != nil {
		return fmt.Errorf("delivery: finish %s: %w", a.EventID, err)
	}
	if !fin.Applied {
		return fmt.Errorf("delivery: finish %s attempt %d: %w", a.EventID, a.Number, ErrMovedOn)
	}
	return nil
}

func (l *Log) finishOp(a Attempt, o Outcome) (*groupcommit.Op, error) {
	// Calls (bounded bodies) and the event are kept for failures and
	// rejections, which operators inspect and retry; a success keeps its
	// status code.
	var calls, event []byte
	laneKey := ""
	if o.State != Succeeded || a.Number > 1 {
		// (A success after earlier attempts keeps its calls too: its
		// attempt row holds them.)
		var err error
		if calls, err = json.Marshal(bound(o.Calls)); err != nil {
			return nil, fmt.Errorf("delivery: encode calls: %w", err)
		}
	}
	if o.State != Succeeded {
		laneKey = a.laneKey
		var err error
		if event, err = json.Marshal(a.event); err != nil {
			return nil, fmt.Errorf("delivery: encode event %s: %w", a.EventID, err)
		}
	}
	r := &finishRow{attempt: int32(a.Number), state: string(o.State), reason: o.Reason, calls: calls, event: event,
		otopic: l.outcomes[a.Integration], remoteID: o.RemoteID, laneKey: laneKey, keep: int32(l.keep)}
	if len(o.RemoteIDs) > 0 {
		var err error
		if r.remoteIDs, err = json.Marshal(o.RemoteIDs); err != nil {
			return nil, fmt.Errorf("delivery: encode partner ids: %w", err)
		}
	}
	r.status = pgtype.Int4{Int32: int32(o.Status), Valid: o.Status != 0}
	r.next = pgtype.Timestamptz{Time: o.NextRetry, Valid: !o.NextRetry.IsZero()}
	return &groupcommit.Op{Stmt: finishStmt, Key: []string{a.Integration, a.EventID}, Row: r}, nil
}

// finishRow is a Finish's values after the key; nil calls and event,
// and invalid status and next, are NULL.
type finishRow struct {
	attempt          int32
	state, reason    string
	status           pgtype.Int4
	calls, event     []byte
	next             pgtype.Timestamptz
	otopic, remoteID string // the outcome topic ("" = none), the partner id
	remoteIDs        []byte // named partner ids (JSON), or nil
	laneKey          string // kept with the stored event ("" = keep)
	keep             int32  // attempts kept at each end (Options.AttemptsKept)
}

func finishArgs(ops []*groupcommit.Op) []any {
	n := len(ops)
	att, state, reason := make([]int32, n), make([]string, n), make([]string, n)
	status, next, calls, event := make([]pgtype.Int4, n), make([]pgtype.Timestamptz, n), make([][]byte, n), make([][]byte, n)
	otopic, remoteID, remoteIDs, laneKey := make([]string, n), make([]string, n), make([][]byte, n), make([]string, n)
	keep := make([]int32, n)
	for i, o := range ops {
		r := o.Row.(*finishRow)
		att[i], state[i], reason[i], status[i], next[i], calls[i], event[i] = r.attempt, r.state, r.reason, r.status, r.next, r.calls, r.event
		otopic[i], remoteID[i], remoteIDs[i], laneKey[i], keep[i] = r.otopic, r.remoteID, r.remoteIDs, r.laneKey, r.keep
	}
	return []any{groupcommit.KeyColumn(ops, 0), groupcommit.KeyColumn(ops, 1), att, state, status, reason, calls, next, event, otopic, remoteID, remoteIDs, laneKey, keep}
}

// Skip marks a delivery skipped by an operator, with a reason, and
// records the act.
func (l *Log) Skip(ctx context.Context, integration, eventID, reason string) error {
	if reason == "" {
		return errors.New("delivery: skip needs a reason")
	}
	return pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		var tenant string
		err := tx.QueryRow(ctx, `UPDATE ferry.delivery SET state = 'skipped', reason = $3, updated_at = now(), problem_at = now()
			WHERE integration = $1 AND event_id = $2 AND state IN ('rejected', 'failed', 'pending', 'waiting', 'compensating', 'expired', 'compensation_failed') RETURNING tenant_id`,
			integration, eventID, "skipped by operator: "+reason).Scan(&tenant)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("delivery: %s/%s is not rejected, failed, pending, waiting, compensating, expired or compensation_failed: nothing to skip: %w", integration, eventID, ErrState)
		}
		if err != nil {
			return err
		}
		if err := l.writeOutcome(ctx, tx, integration, eventID); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO ferry.operator_action (integration, tenant_id, event_id, action, reason, actor) VALUES ($1, $2, $3, 'skip', $4, $5)`,
			integration, tenant, eventID, reason, ActorOf(ctx))
		return err
	})
}

// Record is one row of the log, for inspection.
type Record struct {
	EventID   string
	TenantID  string
	State     State
	Attempts  int
	Status    *int
	Reason    *string
	Calls     []connector.Call
	UpdatedAt time.Time
}

// Get returns one delivery.
func (l *Log) Get(ctx context.Context, integration, eventID string) (Record, error) {
	var r Record
	var calls []byte
	err := l.pool.QueryRow(ctx, `SELECT event_id, tenant_id, state, attempts, last_status, reason, calls, updated_at
		FROM ferry.delivery WHERE integration = $1 AND event_id = $2`, integration, eventID).
		Scan(&r.EventID, &r.TenantID, &r.State, &r.Attempts, &r.Status, &r.Reason, &calls, &r.UpdatedAt)
	if err != nil {
		return r, fmt.Errorf("delivery: get %s/%s: %w", integration, eventID, err)
	}
	if len(calls) > 0 {
		if err := json.Unmarshal(calls, &r.Calls); err != nil {
			return r, fmt.Errorf("delivery: decode calls: %w", err)
		}
	}
	return r, nil
}

func bound(calls []connector.Call) []connector.Call {
	out := make([]connector.Call, len(calls))
	for i, c := range calls {
		c.RequestBody, c.ResponseBody = truncate(c.RequestBody), truncate(c.ResponseBody)
		// Any connector's calls, not only the built-in ones, are stored
		// without credentials in their URL or error.
		c.URL, c.Error = safe.URL(c.URL), safe.Text(c.Error)
		out[i] = c
	}
	return out
}

func truncate(s string) string {
	if len(s) <= MaxCallBytes {
		return s
	}
	return s[:MaxCallBytes] + "…(truncated)"
}

// Ignore records an event the integration does not handle (or a
// switched-off tenant's) as skipped, with the reason, so it is visible
// rather than silently dropped. A row not yet succeeded or skipped
// becomes skipped: a tenant switched off while its lane was parked on a
// rejection moves on, and the row says why.
func (l *Log) Ignore(ctx context.Context, integration string, ev connector.Event, src Source, reason string) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("delivery: encode event %s: %w", ev.ID, err)
	}
	ctx, cancel := l.Bound(ctx)
	defer cancel()
	// One statement writes the skipped state and its outcome.
	_, err = l.pool.Exec(ctx, `WITH d AS (INSERT INTO ferry.delivery AS x (integration, event_id, tenant_id, event_type, aggregate_type,
			aggregate_id, topic, kafka_partition, kafka_offset, state, reason, event, lane_key, problem_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'skipped', $10, $11, NULLIF($13, ''), now()) ON CONFLICT (integration, event_id) DO UPDATE
			SET state = 'skipped', reason = $10, event = $11, updated_at = now(), lane_key = COALESCE(NULLIF($13, ''), x.lane_key), problem_at = now()
			WHERE x.state IN ('pending', 'failed', 'waiting', 'in_flight', 'rejected', 'compensated', 'expired')
		RETURNING x.*)
		INSERT INTO ferry.outcome (`+outcomeColumns+`) SELECT `+outcomeValues("d", "$12", "''", "NULL")+` FROM d WHERE $12 <> ''`,
		integration, ev.ID, ev.TenantID, ev.EventType, ev.AggregateType, ev.AggregateID, src.Topic, src.Partition, src.Offset, reason, body,
		l.outcomes[integration], src.Key)
	if err != nil {
		return fmt.Errorf("delivery: record ignored %s: %w", ev.ID, err)
	}
	return nil
}

// Pool is the log's connection pool, for the engine's parked queue.
func (l *Log) Pool() *pgxpool.Pool { return l.pool }

// Filter selects deliveries for Failures.
type Filter struct {
	Integration string    // "" = all
	TenantID    string    // "" = all
	States      []State   // empty = failed, rejected, waiting, compensating, compensated, expired, compensation_failed
	Since       time.Time // zero = any time; else a problem at or after
	Limit       int       // 0 = 100
	// Cursor continues a listing where the previous page ended (its
	// Next); "" starts at the newest.
	Cursor string
	// History loads every kept attempt of each delivery (Failure.History).
	History bool
}

// Failure is one problem delivery, for operators.
type Failure struct {
	Integration string           `json:"integration"`
	EventID     string           `json:"event_id"`
	TenantID    string           `json:"tenant_id"`
	EventType   string           `json:"event_type"`
	State       State            `json:"state"`
	Attempts    int              `json:"attempts"`
	LastStatus  *int             `json:"last_status"`
	Reason      string           `json:"reason"`
	Calls       []connector.Call `json:"calls,omitempty"`
	// Steps are the completed steps of a multi-step operation.
	Steps     []connector.Step `json:"steps,omitempty"`
	Topic     string           `json:"topic"`
	Partition int32            `json:"partition"`
	Offset    int64            `json:"offset"`
	UpdatedAt time.Time        `json:"updated_at"`
	// ProblemAt is when it last had a problem: the listing's order.
	ProblemAt time.Time `json:"problem_at"`
	// History is every kept attempt, oldest first (Filter.History).
	History []AttemptRecord `json:"history,omitempty"`
}

// AttemptRecord is one kept attempt of a delivery.
type AttemptRecord struct {
	Attempt    int              `json:"attempt"`
	State      State            `json:"state"`
	Status     *int             `json:"status"`
	Reason     string           `json:"reason"`
	Calls      []connector.Call `json:"calls,omitempty"`
	StartedAt  *time.Time       `json:"started_at"`
	FinishedAt time.Time        `json:"finished_at"`
	// DurationMS is from the claim to the recorded outcome.
	DurationMS *float64 `json:"duration_ms"`
}

// cursor is a page boundary of the failure listing: the last row's key
// in the listing's order (delivery_problem index).
type cursor struct {
	At          time.Time `json:"t"`
	Integration string    `json:"i"`
	EventID     string    `json:"e"`
}

// ErrCursor means a cursor that no listing gave.
var ErrCursor = errors.New("not a cursor this listing gave (pass the next_cursor of the previous page)")

func decodeCursor(c string) (*cursor, error) {
	if c == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, ErrCursor
	}
	var k cursor
	if err := json.Unmarshal(b, &k); err != nil || k.At.IsZero() {
		return nil, ErrCursor
	}
	return &k, nil
}

func (k cursor) encode() string {
	b, _ := json.Marshal(k) // a struct of strings and a time: cannot fail
	return base64.RawURLEncoding.EncodeToString(b)
}

// Failures lists problem deliveries, the most recent problem first, one
// page at a time: next is the cursor of the following page ("" at the
// end). It reads the delivery_problem index (migration 0011) and stops
// after Limit rows, whatever the log's size.
func (l *Log) Failures(ctx context.Context, f Filter) (rows []Failure, next string, err error) {
	states := f.States
	if len(states) == 0 {
		states = []State{Failed, Rejected, Waiting, Compensating, Compensated, Expired, CompensationFailed}
	}
	if f.Limit == 0 {
		f.Limit = 100
	}
	var since *time.Time
	if !f.Since.IsZero() {
		since = &f.Since
	}
	after, err := decodeCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	var at *time.Time
	var ain, aev string
	if after != nil {
		at, ain, aev = &after.At, after.Integration, after.EventID
	}
	// The planner misjudges the cursor's row comparison as very
	// selective and, for a later page, reads every problem delivery
	// older than the cursor through a bitmap to sort them (0.8 s on
	// 80,000 problems): without bitmaps it reads the index in order and
	// stops after the page (about 1 ms), as for the first page.
	tx, err := l.pool.Begin(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("delivery: list failures: %w", err)
	}
	defer tx.Rollback(ctx) // read only: nothing to keep
	if _, err := tx.Exec(ctx, `SET LOCAL enable_bitmapscan = off`); err != nil {
		return nil, "", fmt.Errorf("delivery: list failures: %w", err)
	}
	q, err := tx.Query(ctx, `SELECT integration, event_id, tenant_id, event_type, state, attempts, last_status,
			COALESCE(reason, ''), calls, steps, topic, kafka_partition, kafka_offset, updated_at, problem_at
		FROM ferry.delivery
		WHERE problem_at IS NOT NULL AND ($1 = '' OR integration = $1) AND ($2 = '' OR tenant_id = $2) AND state = ANY($3)
			AND ($4::timestamptz IS NULL OR problem_at >= $4)
			AND ($6::timestamptz IS NULL OR (problem_at, integration, event_id) < ($6, $7, $8))
		ORDER BY problem_at DESC, integration DESC, event_id DESC LIMIT $5`, f.Integration, f.TenantID, states, since, f.Limit+1, at, ain, aev)
	if err != nil {
		return nil, "", fmt.Errorf("delivery: list failures: %w", err)
	}
	defer q.Close()
	for q.Next() {
		var x Failure
		var calls, steps []byte
		if err := q.Scan(&x.Integration, &x.EventID, &x.TenantID, &x.EventType, &x.State, &x.Attempts, &x.LastStatus,
			&x.Reason, &calls, &steps, &x.Topic, &x.Partition, &x.Offset, &x.UpdatedAt, &x.ProblemAt); err != nil {
			return nil, "", fmt.Errorf("delivery: read failures: %w", err)
		}
		if len(steps) > 0 {
			if err := json.Unmarshal(steps, &x.Steps); err != nil {
				return nil, "", fmt.Errorf("delivery: decode steps of %s: %w", x.EventID, err)
			}
		}
		if len(calls) > 0 {
			if err := json.Unmarshal(calls, &x.Calls); err != nil {
				return nil, "", fmt.Errorf("delivery: decode calls of %s: %w", x.EventID, err)
			}
		}
		rows = append(rows, x)
	}
	if err := q.Err(); err != nil {
		return nil, "", fmt.Errorf("delivery: list failures: %w", err)
	}
	// The connection goes back to the pool before history takes one: a
	// listing never holds two (a pool of one would wait forever).
	q.Close()
	_ = tx.Rollback(ctx)
	if len(rows) > f.Limit {
		rows = rows[:f.Limit]
		last := rows[len(rows)-1]
		next = cursor{At: last.ProblemAt, Integration: last.Integration, EventID: last.EventID}.encode()
	}
	if f.History && len(rows) > 0 {
		if err := l.history(ctx, rows); err != nil {
			return nil, "", err
		}
	}
	return rows, next, nil
}

// history loads the kept attempts of rows.
func (l *Log) history(ctx context.Context, rows []Failure) error {
	ins, ids := make([]string, len(rows)), make([]string, len(rows))
	at := make(map[[2]string]int, len(rows))
	for i, r := range rows {
		ins[i], ids[i] = r.Integration, r.EventID
		at[[2]string{r.Integration, r.EventID}] = i
	}
	q, err := l.pool.Query(ctx, `SELECT a.integration, a.event_id, a.attempt, a.state, a.status, a.reason, a.calls, a.started_at, a.finished_at,
			EXTRACT(epoch FROM a.finished_at - a.started_at) * 1000
		FROM unnest($1::text[], $2::text[]) AS k(integration, event_id)
		JOIN ferry.delivery_attempt a ON a.integration = k.integration AND a.event_id = k.event_id
		ORDER BY a.integration, a.event_id, a.attempt`, ins, ids)
	if err != nil {
		return fmt.Errorf("delivery: read attempts: %w", err)
	}
	defer q.Close()
	for q.Next() {
		var in, id string
		var a AttemptRecord
		var calls []byte
		if err := q.Scan(&in, &id, &a.Attempt, &a.State, &a.Status, &a.Reason, &calls, &a.StartedAt, &a.FinishedAt, &a.DurationMS); err != nil {
			return fmt.Errorf("delivery: read attempts: %w", err)
		}
		if len(calls) > 0 {
			if err := json.Unmarshal(calls, &a.Calls); err != nil {
				return fmt.Errorf("delivery: decode calls of %s attempt %d: %w", id, a.Attempt, err)
			}
		}
		i := at[[2]string{in, id}]
		rows[i].History = append(rows[i].History, a)
	}
	return q.Err()
}

// Count is the number of deliveries in one state, per integration.
type Count struct {
	Integration string `json:"integration"`
	State       State  `json:"state"`
	Deliveries  int64  `json:"deliveries"`
	// Estimated: read from the table's statistics, not counted (Counts).
	Estimated bool `json:"estimated,omitempty"`
}

// CountedBelow is how many rows (by the table's statistics) ferry.delivery
// may hold for Counts to count every delivery. Above it Counts counts
// only the deliveries that had a problem, through the delivery_problem
// index (every state but succeeded and a first attempt in flight has
// problem_at set, so those counts stay exact), and estimates the rest
// from the statistics: the status page asks every 5 s, and a count of a
// log of millions reads the whole table each time. A variable for tests.
var CountedBelow = 200_000.0

// counts returns the deliveries by integration and state: every one
// counted while the log is smaller than CountedBelow rows; above it, the
// deliveries that had a problem counted and the rest estimated (see
// CountedBelow). A first attempt still in flight is then in the
// succeeded estimate (live sinks report their lanes in flight).
func (l *Log) counts(ctx context.Context) ([]Count, error) {
	// The rows the planner reckons the table holds now: the last
	// ANALYZE's (or VACUUM's) rows per page times the pages it has now,
	// so the estimate follows the table's growth between them. -1 before
	// the table was first analyzed.
	var rowsEstimate float64
	if err := l.pool.QueryRow(ctx, `SELECT CASE WHEN reltuples < 0 OR relpages = 0 THEN reltuples
			ELSE reltuples / relpages * (pg_relation_size(oid) / current_setting('block_size')::int) END
		FROM pg_class WHERE oid = 'ferry.delivery'::regclass`).Scan(&rowsEstimate); err != nil {
		return nil, err
	}
	if rowsEstimate < CountedBelow {
		rows, err := l.pool.Query(ctx, `SELECT integration, state, count(*) FROM ferry.delivery GROUP BY 1, 2 ORDER BY 1, 2`)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(r pgx.CollectableRow) (c Count, err error) {
			return c, r.Scan(&c.Integration, &c.State, &c.Deliveries)
		})
	}
	// The problems counted through the partial index, and each
	// integration's share of the rows from the planner's statistics
	// (integration has few values: its most-common-values list holds
	// them all); succeeded is that share less the other states' counts.
	// An integration missing from the statistics gets no succeeded row
	// rather than a wrong one.
	rows, err := l.pool.Query(ctx, `WITH p AS (`+countProblems+`),
		s AS (SELECT u.integration, round($1 * u.freq)::bigint AS n
			FROM pg_stats, unnest(most_common_vals::text::text[], most_common_freqs) AS u(integration, freq)
			WHERE schemaname = 'ferry' AND tablename = 'delivery' AND attname = 'integration' AND NOT inherited)
		SELECT integration, state, n, false FROM p WHERE state <> 'succeeded'
		UNION ALL
		SELECT s.integration, 'succeeded', greatest(s.n - COALESCE((SELECT sum(n) FROM p
				WHERE p.integration = s.integration AND p.state <> 'succeeded'), 0), 0)::bigint, true FROM s
		ORDER BY 1, 2`, rowsEstimate)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (c Count, err error) {
		return c, r.Scan(&c.Integration, &c.State, &c.Deliveries, &c.Estimated)
	})
}

// countProblems counts the deliveries that had a problem, by
// integration and state, through the delivery_problem partial index.
const countProblems = `SELECT integration, state, count(*) AS n FROM ferry.delivery WHERE problem_at IS NOT NULL GROUP BY 1, 2`

// ParkedTop is how many tenants with parked events Counts names per
// integration (those with the most); `sink tenants` pages through all.
const ParkedTop = 20

// Counts returns delivery counts by integration and state, and the parked
// queue depth per integration of the ParkedTop tenants with the most
// parked events; tenant "" holds the integration's total and "#tenants"
// how many tenants have parked events.
func (l *Log) Counts(ctx context.Context) ([]Count, map[string]map[string]int64, error) {
	out, err := l.counts(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: counts: %w", err)
	}
	parked := map[string]map[string]int64{}
	prows, err := l.pool.Query(ctx, `WITH t AS (SELECT integration, tenant_id, count(*) AS n FROM ferry.parked_event GROUP BY 1, 2),
		r AS (SELECT *, row_number() OVER (PARTITION BY integration ORDER BY n DESC, tenant_id) AS rank FROM t)
		SELECT integration, tenant_id, n FROM r WHERE rank <= $1
		UNION ALL SELECT integration, '', sum(n)::bigint FROM t GROUP BY 1
		UNION ALL SELECT integration, '#tenants', count(*) FROM t GROUP BY 1`, ParkedTop)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: parked counts: %w", err)
	}
	defer prows.Close()
	for prows.Next() {
		var in, tenant string
		var n int64
		if err := prows.Scan(&in, &tenant, &n); err != nil {
			return nil, nil, err
		}
		if parked[in] == nil {
			parked[in] = map[string]int64{}
		}
		parked[in][tenant] = n
	}
	return out, parked, prows.Err()
}

// Pause pauses an integration (tenant "") or one tenant of it, and
// records the act. It fails when that is paused already.
func (l *Log) Pause(ctx context.Context, integration, tenant, reason string) error {
	return pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO ferry.pause (integration, tenant_id, reason) VALUES ($1, $2, $3)
			ON CONFLICT (integration, tenant_id) DO NOTHING`, integration, tenant, reason)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			var since time.Time
			var why string
			if err := tx.QueryRow(ctx, `SELECT paused_at, reason FROM ferry.pause WHERE integration = $1 AND tenant_id = $2`,
				integration, tenant).Scan(&since, &why); err != nil {
				return err
			}
			what := integration
			if tenant != "" {
				what += " tenant " + tenant
			}
			return fmt.Errorf("delivery: %s is already paused (since %s, reason %q): nothing to do: %w", what,
				since.UTC().Format(time.RFC3339), why, ErrState)
		}
		_, err = tx.Exec(ctx, `INSERT INTO ferry.operator_action (integration, tenant_id, action, reason, actor) VALUES ($1, $2, 'pause', $3, $4)`,
			integration, tenant, reason, ActorOf(ctx))
		return err
	})
}

// Resume lifts a pause and records the act (reason may be ""). It
// fails when nothing was paused.
func (l *Log) Resume(ctx context.Context, integration, tenant, reason string) error {
	return pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM ferry.pause WHERE integration = $1 AND tenant_id = $2`, integration, tenant)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			what := integration
			if tenant != "" {
				what += " tenant " + tenant
			}
			return fmt.Errorf("delivery: %s is not paused: %w", what, ErrState)
		}
		_, err = tx.Exec(ctx, `INSERT INTO ferry.operator_action (integration, tenant_id, action, reason, actor) VALUES ($1, $2, 'resume', $3, $4)`,
			integration, tenant, reason, ActorOf(ctx))
		return err
	})
}

// Paused returns the paused tenants of an integration; the "" key means
// the whole integration is paused.
func (l *Log) Paused(ctx context.Context, integration string) (map[string]bool, error) {
	p, err := l.tenantSet(ctx, `SELECT tenant_id FROM ferry.pause WHERE integration = $1`, integration)
	if err != nil {
		return nil, fmt.Errorf("delivery: read pauses: %w", err)
	}
	return p, nil
}

// tenantSet runs a query of tenant ids for an integration.
func (l *Log) tenantSet(ctx context.Context, sql, integration string) (map[string]bool, error) {
	ctx, cancel := l.Bound(ctx)
	defer cancel()
	rows, err := l.pool.Query(ctx, sql, integration)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			return nil, err
		}
		out[t] = true
	}
	return out, rows.Err()
}
