-- Multi-step operations record each completed step, so a retry resumes
-- after the last one and compensation knows what to undo.
ALTER TABLE ferry.delivery ADD COLUMN steps jsonb;

-- The per-tenant switch: a tenant with no row is enabled. Disabling
-- rolls the tenant back at the partner; enabling resyncs it.
CREATE TABLE ferry.tenant_switch (
    integration text        NOT NULL,
    tenant_id   text        NOT NULL,
    enabled     boolean     NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, tenant_id)
);

-- Resyncs asked for by enabling a tenant. cdc, when it shares this
-- database, publishes each of the tenant's aggregates' latest event
-- (marked for the integration) and stamps done_at.
CREATE TABLE ferry.resync_request (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integration  text        NOT NULL,
    tenant_id    text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    done_at      timestamptz,
    events       int
);
CREATE INDEX resync_request_open ON ferry.resync_request (id) WHERE done_at IS NULL;
