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
