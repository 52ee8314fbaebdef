-- One index on ferry.mapping instead of two: the primary key leads with
-- (integration, tenant_id), so it also serves a tenant's rollback (all
-- its mappings of one integration), which mapping_tenant served. Every
-- intent a create writes inserted an entry into both.
--
-- The key is rebuilt under an exclusive lock on the table: on a table of
-- millions of mappings the sink's start waits for it (seconds).
ALTER TABLE ferry.mapping DROP CONSTRAINT mapping_pkey,
    ADD PRIMARY KEY (integration, tenant_id, entity_type, local_id);
DROP INDEX ferry.mapping_tenant;
