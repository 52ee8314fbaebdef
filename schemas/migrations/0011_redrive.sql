-- Redrive and the operator record (issue 13 item 3).
--
-- A redrive delivers a final (or failed) delivery again from its stored
-- copy (ferry.delivery.event), through its tenant's lane, after the
-- events that lane already delivered. The operator's retry sets the row
-- pending and files a redrive request here; the sink that owns the
-- delivery's partition appends it to the lane (lane_key: the record key,
-- tenant or tenant/aggregate) and deletes the request once the lane is
-- done with it. A request outlives a crash or a rebalance: the next owner
-- of the partition picks it up.
CREATE TABLE ferry.redrive (
    integration     text        NOT NULL,
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    event_id        text        NOT NULL,
    tenant_id       text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition int         NOT NULL,
    lane_key        text        NOT NULL,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, seq)
);
-- One open request per delivery: a second retry renews it (requested_at),
-- which wakes the lane again.
CREATE UNIQUE INDEX redrive_event ON ferry.redrive (event_id, integration);

-- The record key of the delivery's lane (kept with the stored copy of a
-- delivery that did not succeed; NULL: the tenant, as before 0011), and
-- the give-up budget of a redriven delivery: retry.max_attempts counts
-- the attempts after attempts_base, retry.max_age runs from redriven_at,
-- and the event's own deadline no longer applies (the operator chose to
-- deliver it late).
ALTER TABLE ferry.delivery ADD COLUMN lane_key text,
    ADD COLUMN redriven_at timestamptz,
    ADD COLUMN attempts_base int NOT NULL DEFAULT 0;

-- How many redrives started from a state in which the partner applied
-- nothing (rejected, compensated): each gives the delivery a new
-- Idempotency-Key (<integration>:<event id>:r<n>), since a partner may
-- keep its refusal under the old key and replay it. A failed or expired
-- delivery keeps its key: an attempt whose answer was lost may have been
-- applied.
ALTER TABLE ferry.delivery ADD COLUMN key_generation int NOT NULL DEFAULT 0;

-- Who made each operator act: the OS user (CLI) or the admin token's
-- name (API).
ALTER TABLE ferry.operator_action ADD COLUMN actor text NOT NULL DEFAULT '';
CREATE INDEX operator_action_at ON ferry.operator_action (at);

-- Every attempt kept (issue 13 item 4): each attempt's outcome, status,
-- reason, partner calls (bodies bounded as in ferry.delivery.calls) and
-- duration (started_at: the claim; finished_at: the recorded outcome),
-- written with the outcome in the same statement. Bounded per delivery:
-- the first and the last N attempts (attempts_kept, default 5). A
-- delivery that succeeds at its first attempt writes none (its status
-- and times are in ferry.delivery): the hot path stays one row.
CREATE TABLE ferry.delivery_attempt (
    integration text        NOT NULL,
    event_id    text        NOT NULL,
    attempt     int         NOT NULL,
    state       text        NOT NULL,
    status      int,
    reason      text        NOT NULL DEFAULT '',
    calls       jsonb,
    started_at  timestamptz,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, event_id, attempt)
);

-- When the delivery last had a problem (any outcome but success, a skip,
-- a redrive); NULL for a delivery that only ever succeeded. The failure
-- listings read this partial index newest first and page through it by
-- key (problem_at, integration, event_id). problem_at never changes on
-- the hot path (in_flight → succeeded at the first attempt), so that
-- update stays HOT (see 0002_sink.sql).
ALTER TABLE ferry.delivery ADD COLUMN problem_at timestamptz;
UPDATE ferry.delivery SET problem_at = updated_at WHERE state NOT IN ('succeeded', 'in_flight');
CREATE INDEX delivery_problem ON ferry.delivery (problem_at DESC, integration DESC, event_id DESC) WHERE problem_at IS NOT NULL;
