#!/usr/bin/env bash
# Ferry demo, no Docker: a throwaway PostgreSQL (devpg), a Kafka-protocol
# broker (devbroker on 127.0.0.1:${KAFKA_PORT}), cdc, the partner API
# simulator and sink. It writes events for several tenants into the outbox,
# in mixed transactions; reads them back per tenant with kcat, in order;
# and shows what reached the partner per tenant, in order — including a
# tenant whose partner calls fail for a while and then catch up. Then it
# closes the loop: an order service (examples/orderservice) writes orders
# and their order.placed events in one transaction, a payment partner
# authorizes or declines them, and the order service consumes the outcome
# records (ferry.outcomes) and moves each order to paid or declined.
# Everything is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
KAFKA_PORT=${KAFKA_PORT:-9092}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:9464}
SINK_ADMIN_ADDR=${SINK_ADMIN_ADDR:-127.0.0.1:9465}
PARTNER_ADDR=${PARTNER_ADDR:-127.0.0.1:8089}
DEMO=.demo
rm -rf "$DEMO" && mkdir -p "$DEMO"
BROKER=127.0.0.1:$KAFKA_PORT

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DEMO"
}
trap cleanup EXIT

start() { # name, command...: start in the background, pid recorded is the server's own
  local name=$1; shift
  "$@" >"$DEMO/$name.log" 2>&1 &
  pids+=($!)
}
wait_for() { # description, command: poll up to 30 s
  local what=$1; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "demo: timed out waiting for $what; logs in $DEMO:" >&2; tail -n 20 "$DEMO"/*.log >&2; exit 1
}

echo "== starting PostgreSQL (throwaway cluster, wal_level=logical)"
start devpg bin/devpg --url-file "$DEMO/pg.url"
wait_for "PostgreSQL" test -s "$DEMO/pg.url"
PG=$(cat "$DEMO/pg.url")

echo "== starting the dev broker on $BROKER"
start devbroker bin/devbroker --port "$KAFKA_PORT" --data-dir "$DEMO/kafka" --topics outbox.product,outbox.order,ferry.outcomes
wait_for "the broker" kcat -b "$BROKER" -L

echo "== starting cdc"
start cdc bin/cdc run --postgres-url "$PG" --brokers "$BROKER" --admin-addr "$ADMIN_ADDR" --log-format text
wait_for "cdc to stream" curl -sf "http://$ADMIN_ADDR/readyz"

echo "== starting the partner API simulator on $PARTNER_ADDR; tenant globex's calls will fail 6 times (HTTP 503)"
start partnersim bin/partnersim -addr "$PARTNER_ADDR"
wait_for "the partner simulator" curl -sf "http://$PARTNER_ADDR/healthz"
curl -sf -X POST "http://$PARTNER_ADDR/_sim/rules" -d '{"tenant":"globex","status":503,"reason":"globex backend down","times":6}'

echo "== starting sink (integration 'shop': the declarative HTTP connector, items at the partner; 'payments': order authorizations)"
export DEMO_PARTNER_TOKEN=demo-secret PAYMENTS_API_KEY=demo-payments-key
cat > "$DEMO/sink.yaml" <<YAML
postgres_url: $PG
kafka:
  brokers: [$BROKER]
admin_addr: $SINK_ADMIN_ADDR
log_format: text
integrations:
  - name: shop
    topics: [outbox.product]
    retry: {initial: 200ms, max: 2s}
    park_recheck: 500ms
    connector:
      type: http
      base_url: http://$PARTNER_ADDR
      timeout: 5s
      auth: {type: bearer, token_env: DEMO_PARTNER_TOKEN}
      entities:
        product:
          lookup: {path: "/v1/items?external_id={{.local_id}}", id: "\$.data[0].id"}
          create: {path: /v1/items, body: '{"external_id": {{.local_id}}, "product": {{.payload}}}', id: \$.id}
          update: {path: "/v1/items/{{.remote_id}}", body: '{"external_id": {{.local_id}}, "product": {{.payload}}}'}
          delete: {path: "/v1/items/{{.remote_id}}"}
  # examples/payments.yaml: each placed order is authorized once; a
  # declined card is final for that order (on_reject: skip), and every
  # final state goes to ferry.outcomes (the default) for the order service.
  - name: payments
    topics: [outbox.order]
    event_types: ["order.placed", "order.cancelled"]
    on_reject: skip
    retry: {initial: 200ms, max: 2s}
    connector:
      type: http
      base_url: http://$PARTNER_ADDR
      timeout: 5s
      auth: {type: header, header: X-Api-Key, value_env: PAYMENTS_API_KEY}
      reject_statuses: [400, 402, 409, 422]
      operations: {order.placed: create, order.cancelled: delete}
      no_upsert: true
      entities:
        order:
          create:
            path: /v1/authorizations
            body: '{"external_id": {{.local_id}}, "amount": {{.payload.total}}, "currency": {{.payload.currency}}, "card": {{.payload.card}}}'
            id: \$.id
          update:
            path: "/v1/authorizations/{{.remote_id}}"
            body: '{"amount": {{.payload.total}}}'
          delete:
            path: "/v1/authorizations/{{.remote_id}}"
YAML
start sink bin/sink run --config "$DEMO/sink.yaml"
wait_for "sink" curl -sf "http://$SINK_ADMIN_ADDR/readyz"

echo "== writing outbox events: three tenants, mixed transactions, one table-less message"
psql -q "$PG" <<'SQL'
BEGIN;
INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload) VALUES
  ('acme',    'product', 'sku-1', 'product.created', '{"sku":"sku-1","name":"Anvil","price":100}'),
  ('globex',  'product', 'sku-9', 'product.created', '{"sku":"sku-9","name":"Hammock","price":35}');
COMMIT;
BEGIN;
INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload) VALUES
  ('acme',    'product', 'sku-1', 'product.updated', '{"sku":"sku-1","price":120}'),
  ('initech', 'product', 'tps-1', 'product.created', '{"sku":"tps-1","name":"TPS report cover"}');
COMMIT;
INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload) VALUES
  ('globex',  'product', 'sku-9', 'product.updated', '{"sku":"sku-9","price":30}');
DO $$ BEGIN PERFORM pg_logical_emit_message(true, 'ferry.outbox',
  '{"id":"7d1c2a4e-0000-4000-8000-000000000001","tenant_id":"acme","aggregate_type":"product","aggregate_id":"sku-1","event_type":"product.deleted","payload":{"sku":"sku-1"}}'); END $$;
-- A bad row: no tenant. It goes to the dead-letter topic with the reason.
INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload) VALUES
  (NULL, 'product', 'sku-0', 'product.created', '{"sku":"sku-0"}');
SQL

echo "== reading outbox.product with kcat, per tenant, in order"
wait_for "6 events in Kafka" bash -c "[ \$(kcat -b $BROKER -C -t outbox.product -o beginning -e -q | wc -l) -ge 6 ]"
kcat -b "$BROKER" -C -t outbox.product -o beginning -e -q -f '%k\t%p\t%o\t%h\t%s\n' > "$DEMO/records.tsv"
for tenant in acme globex initech; do
  echo "-- tenant $tenant"
  awk -F'\t' -v t="$tenant" '$1 == t { split($4, h, ","); for (i in h) if (h[i] ~ /^event_type=/) et = substr(h[i], 12); printf "   partition %s offset %s  %-16s %s\n", $2, $3, et, $5 }' "$DEMO/records.tsv"
done

echo "== dead-letter topic"
wait_for "the dead letter" bash -c "[ \$(kcat -b $BROKER -C -t ferry.cdc.dead_letter -o beginning -e -q | wc -l) -ge 1 ]"
kcat -b "$BROKER" -C -t ferry.cdc.dead_letter -o beginning -e -q -f '   %h\n' | tr ',' '\n' | grep -E 'ferry_error|event_id' | sed 's/^/   /'

echo "== what reached the partner, per tenant, in arrival order (globex fails, backs off, then catches up in order)"
wait_for "6 events applied at the partner" bash -c "curl -sf http://$PARTNER_ADDR/_sim/report | grep -q '^applied 6\$'"
curl -sf "http://$PARTNER_ADDR/_sim/report" | tail -n +2

echo "== ID mappings (ferry.mapping): our product → the partner's item"
psql -q "$PG" -c "SELECT tenant_id, entity_type, local_id, remote_id, state FROM ferry.mapping ORDER BY tenant_id, local_id"

echo "== tenant switch: disable initech (rollback deletes its item at the partner), then enable it (cdc resyncs it)"
bin/sink tenants disable --integration shop --tenant initech --reason "demo" --config "$DEMO/sink.yaml"
bin/sink tenants enable --integration shop --tenant initech --reason "demo" --config "$DEMO/sink.yaml"
wait_for "initech's item back at the partner" bash -c "curl -sf 'http://$PARTNER_ADDR/_sim/objects?entity=items' | grep -q tps-1"
bin/sink tenants --config "$DEMO/sink.yaml"

echo "== closing the loop: the order service consumes ferry.outcomes and moves orders to paid or declined"
start orderservice bin/orderservice --brokers "$BROKER" --postgres-url "$PG" --integration payments
wait_for "the orders table" psql -q "$PG" -c "SELECT 1 FROM orders"
curl -sf -X POST "http://$PARTNER_ADDR/_sim/rules" -d '{"entity":"authorizations","body_contains":"4000000000000002","status":402,"reason":"card declined"}'
psql -q "$PG" <<'SQL'
-- The application writes the order and its event in one transaction.
BEGIN;
INSERT INTO orders (tenant_id, id, total) VALUES ('acme', 'o-1', 42.50);
INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload) VALUES
  ('acme', 'order', 'o-1', 'order.placed', '{"total": 42.50, "currency": "EUR", "card": "4242424242424242"}');
COMMIT;
BEGIN;
INSERT INTO orders (tenant_id, id, total) VALUES ('acme', 'o-2', 990.00), ('globex', 'o-7', 12.00);
INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload) VALUES
  ('acme',   'order', 'o-2', 'order.placed', '{"total": 990.00, "currency": "EUR", "card": "4000000000000002"}'),
  ('globex', 'order', 'o-7', 'order.placed', '{"total": 12.00, "currency": "USD", "card": "5555555555554444"}');
COMMIT;
SQL
wait_for "every order paid or declined" bash -c "[ \$(psql -tAq '$PG' -c \"SELECT count(*) FROM orders WHERE status <> 'authorizing'\") -eq 3 ]"
sed 's/^/   /' "$DEMO/orderservice.log"
psql -q "$PG" -c "SELECT tenant_id, id, total, status, payment_id, reason FROM orders ORDER BY tenant_id, id"
echo "-- the outcome records, as kcat reads them (key, headers, value)"
kcat -b "$BROKER" -C -t ferry.outcomes -o beginning -e -q -f '%k\t%h\t%s\n' | grep '"integration":"payments"' | sed 's/^/   /'

echo "== delivery log (ferry.delivery)"
psql -q "$PG" -c "SELECT tenant_id, event_type, state, attempts, last_status, left(coalesce(reason, ''), 60) AS reason FROM ferry.delivery ORDER BY tenant_id, created_at"

echo "== cdc status"
bin/cdc status --postgres-url "$PG" --brokers "$BROKER"
echo "== metrics (excerpt)"
curl -sf "http://$ADMIN_ADDR/metrics" | grep -E '^ferry_cdc_(events_total|transactions_total|slot_lag_bytes|confirmed_lsn)' | sed 's/^/   /'
curl -sf "http://$SINK_ADMIN_ADDR/metrics" | grep -E '^ferry_sink_deliveries_total' | sed 's/^/   /'
echo "== done; cleaning up"
