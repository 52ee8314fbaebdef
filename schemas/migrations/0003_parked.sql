-- Durable parking: the queued events of a tenant lane blocked longer than
-- park_after, in order (seq). Their Kafka offsets are committed, so the
-- partition moves on and memory stays flat; the lane drains this queue in
-- order once unblocked. Rows are deleted as they are delivered.
CREATE TABLE ferry.parked_event (
    integration     text        NOT NULL,
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id       text        NOT NULL,
    event_id        text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition int         NOT NULL,
    kafka_offset    bigint      NOT NULL,
    lane_key        text        NOT NULL,
    record          jsonb       NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, seq)
);
-- Not led by integration, so the per-row lookups (integration, seq) always
-- use the primary key (see 0002_sink.sql).
CREATE INDEX parked_event_partition ON ferry.parked_event (topic, kafka_partition, integration, seq);
CREATE INDEX parked_event_tenant ON ferry.parked_event (tenant_id, integration, seq);
