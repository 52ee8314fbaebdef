-- Fencing between sink processes (design.md guarantee 3: an in_flight
-- delivery is taken over only when its holder is known to be gone).
-- An in_flight (or compensating, while its undo runs) delivery names the
-- process that claimed it; Finish clears it. Each process holds a lease
-- per integration in ferry.sink_process, renewed with its live report
-- every 2 s. Begin takes over a delivery held by another process only
-- once that process's lease has expired (or its row is gone: a clean
-- stop deletes it), so two processes never call the partner for one
-- event at once, and a new partition owner never starts a lane the
-- previous owner may still be running.
ALTER TABLE ferry.delivery ADD COLUMN holder text;
-- A process restarted under the same instance id on the same host ends
-- the lease of its dead previous run at start (its pid is gone).
ALTER TABLE ferry.sink_process ADD COLUMN lease_until timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN instance_id text NOT NULL DEFAULT '';
