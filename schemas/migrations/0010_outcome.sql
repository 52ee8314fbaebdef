-- Closing the loop (design.md guarantee 6): every delivery that reaches a
-- final state produces one outcome record to Kafka. The outcome is written
-- here in the same statement as the final state (a transactional outbox),
-- so a crash between the delivery-log write and the produce cannot lose
-- it; each sink's relay produces the pending rows of its integration in
-- seq order (per tenant: the order the tenant's lane finished them) and
-- deletes them once Kafka acknowledged them. A row produced twice (a crash
-- after the produce, before the delete) carries the same event id and
-- state.
CREATE TABLE ferry.outcome (
    seq              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integration      text        NOT NULL,
    -- The Kafka topic, fixed when the final state was written.
    topic            text        NOT NULL,
    event_id         text        NOT NULL,
    tenant_id        text        NOT NULL,
    event_type       text        NOT NULL DEFAULT '',
    aggregate_type   text        NOT NULL DEFAULT '',
    aggregate_id     text        NOT NULL DEFAULT '',
    state            text        NOT NULL,
    -- The partner ids the delivery produced: the entity's own (remote_id)
    -- and named ones (remote_ids, {"price": "pr_1"}).
    remote_id        text        NOT NULL DEFAULT '',
    remote_ids       jsonb,
    last_status      int,
    reason           text        NOT NULL DEFAULT '',
    attempts         int         NOT NULL DEFAULT 0,
    first_attempt_at timestamptz,
    last_attempt_at  timestamptz,
    at               timestamptz NOT NULL DEFAULT now()
);
-- The relay reads one integration's rows in seq order.
CREATE INDEX outcome_integration ON ferry.outcome (integration, seq);

-- When the last attempt began (Begin sets it); created_at is the first's.
ALTER TABLE ferry.delivery ADD COLUMN last_attempt_at timestamptz;

-- Give-up (expired) and a rejected undo (compensation_failed) are final
-- states too.
ALTER TABLE ferry.delivery DROP CONSTRAINT delivery_state_check;
ALTER TABLE ferry.delivery ADD CONSTRAINT delivery_state_check CHECK (state IN ('pending', 'in_flight', 'succeeded',
    'failed', 'rejected', 'waiting', 'skipped', 'compensating', 'compensated', 'expired', 'compensation_failed'));

-- Each integration's outcome topic ('' = switched off), as its running
-- sink last configured it: operator commands run without the sink's
-- config file still write the outcome of a skip.
CREATE TABLE ferry.outcome_route (
    integration text        PRIMARY KEY,
    topic       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
