-- A lane with parked events reads them back a page at a time (issue 14:
-- a parked lane keeps its position, not its records): its next rows by
-- (integration, topic, partition, lane_key) after a seq. Not led by
-- integration, for the reason 0003_parked.sql gives.
CREATE INDEX parked_event_lane ON ferry.parked_event (topic, kafka_partition, lane_key, integration, seq);

-- The tenants view pages by (tenant_id, integration) (issue 14: bounded
-- admin): each source is read in that order and stops after a page.
-- ferry.delivery has delivery_tenant already; ferry.parked_event has
-- parked_event_tenant.
CREATE INDEX tenant_switch_tenant ON ferry.tenant_switch (tenant_id, integration);
CREATE INDEX pause_tenant ON ferry.pause (tenant_id, integration);

-- The engines re-read the pauses and the tenant switch every
-- park_recheck; with many tenants paused or switched off that is a large
-- read each time. Any change to either table bumps this version, so an
-- engine re-reads them only after one (issue 14: incremental refresh).
CREATE TABLE ferry.switch_version (
    id      int    PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO ferry.switch_version VALUES (1, 0);
CREATE FUNCTION ferry.bump_switch_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ferry.switch_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END $$;
CREATE TRIGGER pause_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ferry.pause
    FOR EACH STATEMENT EXECUTE FUNCTION ferry.bump_switch_version();
CREATE TRIGGER tenant_switch_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ferry.tenant_switch
    FOR EACH STATEMENT EXECUTE FUNCTION ferry.bump_switch_version();
