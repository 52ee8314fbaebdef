-- Resync without locking the outbox (issue 14): a resync no longer holds
-- a SHARE lock while it reads a tenant's history. Between a low watermark
-- and the commit of its last chunk it reads the tenant's objects in chunks,
-- and cdc drops a resync event whose object changed inside that window
-- (its own event carries the newer state). The work set is the seq of each
-- object's latest event as read at the start of an attempt; it is rebuilt
-- by every attempt, so it need not survive a crash (unlogged: no WAL for
-- cdc to read past).
CREATE UNLOGGED TABLE ferry.resync_work (
    request_id bigint NOT NULL,
    seq        bigint NOT NULL,
    PRIMARY KEY (request_id, seq)
);
ALTER TABLE ferry.resync_request ADD COLUMN attempts int NOT NULL DEFAULT 0;
