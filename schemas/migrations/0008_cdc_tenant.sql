-- Per tenant, the newest event cdc has published (Kafka acknowledged) and
-- how many: written by the running cdc every few seconds, read by
-- `cdc status` and cdc's admin API.
CREATE TABLE ferry.cdc_tenant (
    slot_name      text        NOT NULL,
    tenant_id      text        NOT NULL,
    last_commit_at timestamptz NOT NULL,
    events         bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot_name, tenant_id)
);
