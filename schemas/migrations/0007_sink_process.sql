-- Each running sink reports its live state per integration every few
-- seconds (and removes it on a clean stop), so `sink status`, the admin
-- API and the web page show lanes, breaker and throughput of every
-- process without reaching them over the network.
CREATE TABLE ferry.sink_process (
    process_id  text             NOT NULL,
    integration text             NOT NULL,
    consumer_group text          NOT NULL,
    host        text             NOT NULL DEFAULT '',
    started_at  timestamptz      NOT NULL,
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    partitions  jsonb            NOT NULL DEFAULT '[]',
    lanes       jsonb            NOT NULL DEFAULT '{}',
    breaker     text             NOT NULL DEFAULT '',
    finished    bigint           NOT NULL DEFAULT 0,
    rate        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (process_id, integration)
);
