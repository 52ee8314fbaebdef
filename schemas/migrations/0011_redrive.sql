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

-- Who made each operator act: the OS user (CLI) or the admin token's
-- name (API).
ALTER TABLE ferry.operator_action ADD COLUMN actor text NOT NULL DEFAULT '';
CREATE INDEX operator_action_at ON ferry.operator_action (at);
