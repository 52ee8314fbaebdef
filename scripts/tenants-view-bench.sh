#!/bin/bash
# The tenants view on 2,500,000 deliveries over 200,000 tenants (one with
# 500,000): a page of 100, the next page, and optionally an older sink
# listing every tenant. Run under the CPU lock on a shared machine:
#   flock /tmp/ferry-cpu.lock scripts/tenants-view-bench.sh
set -e
BIN=${BIN:-bin}        # this branch's binaries
BEFORE=${BEFORE:-}      # optional: a folder with an older sink to compare
rm -f ${TMPDIR:-/tmp}/tenantsview-pgurl
bash -c 'echo $$ > ${TMPDIR:-/tmp}/tenantsview-devpg.pid; exec '$BIN'/devpg --url-file ${TMPDIR:-/tmp}/tenantsview-pgurl' > ${TMPDIR:-/tmp}/tenantsview-devpg.log 2>&1 &
for i in $(seq 100); do [ -s ${TMPDIR:-/tmp}/tenantsview-pgurl ] && break; sleep 0.2; done
URL=$(cat ${TMPDIR:-/tmp}/tenantsview-pgurl)
$BIN/sink status --postgres-url "$URL" > /dev/null
psql "$URL" -q -c "INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, state)
  SELECT 'shop', 'e' || g, 'tenant-' || lpad((g % 200000)::text, 7, '0'), 'product.updated', 'succeeded' FROM generate_series(1, 2000000) g"
psql "$URL" -q -c "INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, state)
  SELECT 'shop', 'big' || g, 'tenant-0000000', 'product.updated', 'succeeded' FROM generate_series(1, 500000) g"
psql "$URL" -q -c "VACUUM ANALYZE ferry.delivery"
echo "rows: $(psql "$URL" -Atc 'SELECT count(*) FROM ferry.delivery')"
for i in 1 2 3; do
  s=$(date +%s.%N); $BIN/sink tenants --postgres-url "$URL" --limit 100 > ${TMPDIR:-/tmp}/tenantsview-page1.txt; e=$(date +%s.%N)
  echo "first page of 100 (includes the 500,010-delivery tenant): $(echo "$e - $s" | bc) s (whole CLI process)"
  after=$(tail -1 ${TMPDIR:-/tmp}/tenantsview-page1.txt | sed 's/more: --after //')
  s=$(date +%s.%N); $BIN/sink tenants --postgres-url "$URL" --limit 100 --after "$after" > /dev/null; e=$(date +%s.%N)
  echo "second page of 100: $(echo "$e - $s" | bc) s"
  [ -n "$BEFORE" ] && { s=$(date +%s.%N); $BEFORE/sink tenants --postgres-url "$URL" > /dev/null; e=$(date +%s.%N)
  echo "before ($BEFORE/sink tenants, every tenant): $(echo "$e - $s" | bc) s"; }
done
kill $(cat ${TMPDIR:-/tmp}/tenantsview-devpg.pid)
