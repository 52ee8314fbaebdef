-- The sink's delivery log: one row per (integration, event). Transitions
-- are conditional UPDATEs fenced by the attempt number, so two processes
-- can never both move one delivery forward; a redelivered event whose row
-- is final (succeeded, rejected, skipped) is not sent again.
CREATE TABLE ferry.delivery (
    integration     text        NOT NULL,
    event_id        text        NOT NULL,
    tenant_id       text        NOT NULL,
    event_type      text        NOT NULL,
    aggregate_type  text        NOT NULL DEFAULT '',
    aggregate_id    text        NOT NULL DEFAULT '',
    topic           text        NOT NULL DEFAULT '',
    kafka_partition int         NOT NULL DEFAULT -1,
    kafka_offset    bigint      NOT NULL DEFAULT -1,
    state           text        NOT NULL CHECK (state IN ('pending', 'in_flight', 'succeeded', 'failed', 'rejected',
                                    'waiting', 'skipped', 'compensating', 'compensated')),
    attempts        int         NOT NULL DEFAULT 0,
    last_status     int,
    reason          text,
    -- The partner calls of the last attempt (method, URL, bodies bounded).
    calls           jsonb,
    -- The event itself, so an operator retry needs nothing else.
    event           jsonb       NOT NULL,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, event_id)
);
CREATE INDEX delivery_problems ON ferry.delivery (integration, state, updated_at) WHERE state NOT IN ('succeeded');
CREATE INDEX delivery_tenant ON ferry.delivery (integration, tenant_id, updated_at);

-- Operator acts (retry, skip, pause, resume) are recorded too.
CREATE TABLE ferry.operator_action (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integration text        NOT NULL,
    tenant_id   text        NOT NULL DEFAULT '',
    event_id    text        NOT NULL DEFAULT '',
    action      text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT now()
);
