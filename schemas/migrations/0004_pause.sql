-- Operator pauses: a whole integration (tenant_id = '') or one tenant of it.
-- Persisted, so they survive restarts; sinks re-read them every
-- park_recheck. A paused lane waits without calling the partner.
CREATE TABLE ferry.pause (
    integration text        NOT NULL,
    tenant_id   text        NOT NULL DEFAULT '',
    reason      text        NOT NULL DEFAULT '',
    paused_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, tenant_id)
);
