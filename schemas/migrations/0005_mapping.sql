-- Which partner object each of our objects is, for every integration.
-- A create writes an intent (creating, with its idempotency key) before the
-- partner call and the partner id after it, so a crash in between is
-- recovered with the same key instead of creating a second object.
CREATE TABLE ferry.mapping (
    integration     text        NOT NULL,
    entity_type     text        NOT NULL,
    tenant_id       text        NOT NULL,
    local_id        text        NOT NULL,
    remote_id       text,
    state           text        NOT NULL CHECK (state IN ('creating', 'active', 'deleting', 'deleted')),
    idempotency_key text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, entity_type, tenant_id, local_id)
);
-- Rollback of a tenant reads all its mappings.
CREATE INDEX mapping_tenant ON ferry.mapping (tenant_id, integration);
