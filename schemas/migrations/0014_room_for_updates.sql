-- Room on each page for the update that follows an insert, so that it
-- stays on the page (a HOT update: no new entry in any index).
--
-- A delivery is inserted by its claim and updated by its outcome; at
-- fillfactor 80, 39% of those updates went to another page and wrote a
-- new entry in each of its three indexes (sinkbench -only mapped -pg-stats:
-- 61,414 of 99,271 HOT; at 50, all of them).
--
-- A create inserts its mapping (the intent) and, once the partner answers,
-- updates the same row (partner id, state): with full pages about half
-- of those went to another page (24,850 of 50,000 HOT; at 70, 88%).
--
-- Pages written before this migration keep their fill; new ones leave
-- the room.
ALTER TABLE ferry.delivery SET (fillfactor = 50);
ALTER TABLE ferry.mapping SET (fillfactor = 70);
