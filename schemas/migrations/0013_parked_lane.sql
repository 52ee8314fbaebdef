-- A lane with parked events reads them back a page at a time (issue 14:
-- a parked lane keeps its position, not its records): its next rows by
-- (integration, topic, partition, lane_key) after a seq. Not led by
-- integration, for the reason 0003_parked.sql gives.
CREATE INDEX parked_event_lane ON ferry.parked_event (topic, kafka_partition, lane_key, integration, seq);
