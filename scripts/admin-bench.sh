#!/bin/bash
# The admin views on a large delivery log (issue 14, bounded admin): ROWS
# deliveries over TENANTS tenants, one of them (tenant-0000000) with BIG,
# and one in PROBLEM_EVERY a rejected problem. Times each command as a
# whole process (start-up included), 3 rounds: sink status (deliveries by
# state), the tenants view's first page of 100 (it holds the big tenant)
# and the next, the failures listing's first page of 100 and the next;
# with BEFORE, an older sink's status and first tenants page too.
# Run under the CPU lock on a shared machine:
#   BIN=bin BEFORE=old-bin flock /tmp/ferry-cpu.lock scripts/admin-bench.sh
set -e
BIN=${BIN:-bin}                    # this branch's binaries (sink, devpg)
BEFORE=${BEFORE:-}                 # optional: a folder with an older sink
ROWS=${ROWS:-10000000}
TENANTS=${TENANTS:-200000}
BIG=${BIG:-2000000}
PROBLEM_EVERY=${PROBLEM_EVERY:-100}
T=${TMPDIR:-/tmp}
rm -f $T/adminbench-pgurl
bash -c 'echo $$ > '$T'/adminbench-devpg.pid; exec '$BIN'/devpg --url-file '$T'/adminbench-pgurl' > $T/adminbench-devpg.log 2>&1 &
[ -n "$KEEP" ] || trap 'kill $(cat $T/adminbench-devpg.pid) 2>/dev/null' EXIT  # KEEP=1 leaves the server running
for i in $(seq 100); do [ -s $T/adminbench-pgurl ] && break; sleep 0.2; done
URL=$(cat $T/adminbench-pgurl)
$BIN/sink status --postgres-url "$URL" > /dev/null # migrations
start=$(date +%s)
psql "$URL" -q -c "INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, state, problem_at)
  SELECT 'shop', 'e' || g, 'tenant-' || lpad((1 + g % ($TENANTS - 1))::text, 7, '0'), 'product.updated',
    CASE WHEN g % $PROBLEM_EVERY = 0 THEN 'rejected' ELSE 'succeeded' END,
    CASE WHEN g % $PROBLEM_EVERY = 0 THEN now() - make_interval(secs => g % 86400) END
  FROM generate_series(1, $ROWS - $BIG) g"
psql "$URL" -q -c "INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, state)
  SELECT 'shop', 'big' || g, 'tenant-0000000', 'product.updated', 'succeeded' FROM generate_series(1, $BIG) g"
psql "$URL" -q -c "VACUUM ANALYZE ferry.delivery"
echo "rows: $(psql "$URL" -Atc 'SELECT count(*) FROM ferry.delivery'), $(psql "$URL" -Atc "SELECT pg_size_pretty(pg_total_relation_size('ferry.delivery'))") with indexes, loaded in $(( $(date +%s) - start )) s"
timed() { # label, command...
  local label=$1; shift
  local s e
  s=$(date +%s.%N); "$@" > $T/adminbench-out.txt; e=$(date +%s.%N)
  printf '%s: %.3f s\n' "$label" "$(echo "$e - $s" | bc)"
}
echo "server: $URL"
for i in $(seq ${ROUNDS:-3}); do
  timed "sink status" $BIN/sink status --postgres-url "$URL"
  grep '^shop' $T/adminbench-out.txt | head -1
  timed "tenants, first page of 100 (holds the $BIG-delivery tenant)" $BIN/sink tenants --postgres-url "$URL" --limit 100
  after=$(tail -1 $T/adminbench-out.txt | sed 's/more: --after //')
  timed "tenants, second page of 100" $BIN/sink tenants --postgres-url "$URL" --limit 100 --after "$after"
  timed "failures, first page of 100" $BIN/sink failures --postgres-url "$URL" --limit 100
  cursor=$(grep '^more: --cursor' $T/adminbench-out.txt | sed 's/more: --cursor //')
  timed "failures, second page of 100" $BIN/sink failures --postgres-url "$URL" --limit 100 --cursor "$cursor"
  if [ -n "$BEFORE" ]; then
    timed "before ($BEFORE/sink status)" $BEFORE/sink status --postgres-url "$URL"
    timed "before ($BEFORE/sink tenants, first page of 100)" $BEFORE/sink tenants --postgres-url "$URL" --limit 100
  fi
done
