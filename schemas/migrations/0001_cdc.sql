-- cdc's record of each replication slot it owns. confirmed_lsn is written
-- *before* cdc confirms a position to the slot, so the slot's
-- confirmed_flush_lsn can never be ahead of it. A slot that is missing, or
-- ahead of this record, was dropped or recreated: WAL was skipped.
CREATE TABLE ferry.cdc_slot (
    slot_name             text        PRIMARY KEY,
    created_lsn           pg_lsn      NOT NULL,
    confirmed_lsn         pg_lsn      NOT NULL,
    confirmed_commit_time timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
