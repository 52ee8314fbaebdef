-- Resync without locking the outbox (issue 14): a resync no longer holds
-- a SHARE lock while it reads a tenant's history. Between a low watermark
-- and the commit of its last chunk it reads the tenant's objects in chunks,
-- and cdc drops a resync event whose object changed inside that window
-- (its own event carries the newer state). The work set is rebuilt by
-- every attempt, so it need not survive a crash (unlogged: no WAL for cdc
-- to read past): the seq of each object's latest outbox event, and the
-- state outbox.resync_queries read from the application's tables.
CREATE UNLOGGED TABLE ferry.resync_work (
    request_id bigint NOT NULL,
    seq        bigint NOT NULL,
    PRIMARY KEY (request_id, seq)
);
CREATE UNLOGGED TABLE ferry.resync_state (
    request_id     bigint NOT NULL,
    ord            bigint NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    event_type     text   NOT NULL,
    payload        jsonb,
    PRIMARY KEY (request_id, ord)
);
ALTER TABLE ferry.resync_request ADD COLUMN attempts int NOT NULL DEFAULT 0;
-- Why a request could not be served (a resync query that fails): it is
-- done, with this error, instead of being tried forever.
ALTER TABLE ferry.resync_request ADD COLUMN error text;
