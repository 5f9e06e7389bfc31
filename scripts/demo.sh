#!/usr/bin/env bash
# The whole demo on a fresh machine: start Kafka, FerretDB and MariaDB
# locally, build the plugins and sluice, produce sample order events, run
# the pipeline until it has drained the topic, then show what landed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: scripts/demo.sh [--secure] [EVENTS]   run the demo pipeline end to end (default 2000 events)"
  echo "  --secure   through the secure profile (config/secure.toml): SASL_SSL/SCRAM to Kafka,"
  echo "             TLS to MariaDB and FerretDB, sensitive fields encrypted by sluice"
  exit 0
fi
SECURE=0
if [[ "${1:-}" == "--secure" ]]; then SECURE=1; shift; fi
EVENTS="${1:-2000}"
cd "$ROOT"
"$ROOT/scripts/prereqs.sh"
KAFKA="127.0.0.1:${SLUICE_KAFKA_PORT:-9092}"

"$ROOT/scripts/services.sh" up
"$ROOT/scripts/build-plugins.sh"
echo "==> building sluice"
cargo build --quiet --bin sluice

if ((SECURE)); then
  echo "==> producing $EVENTS order events to demo.orders"
  python3 - "$EVENTS" <<'PY' | kcat -P -b "$KAFKA" -t demo.orders -K '|'
import json, sys
for i in range(int(sys.argv[1])):
    e = {"id": f"o-{i}", "customer": f"customer-{i % 37}", "total": round(5 + (i * 7.31) % 250, 2),
         "created_at": "2026-11-30T10:00:00Z", "status": "paid"}
    print(f"o-{i}|{json.dumps(e)}")
print("broken|{this is not json")
PY
  echo "==> one run over SASL_SSL (SCRAM-SHA-512) into MariaDB and FerretDB over TLS"
  ./target/debug/sluice run --config config/secure.toml --until-drained
  echo "==> MariaDB (TLS, encrypted at rest): the customer column holds ciphertext"
  mariadb -h127.0.0.1 -P"${SLUICE_MYSQL_SECURE_PORT:-3307}" -usluice -p"$(cat .services/secrets/mysql.password)" \
    --ssl-ca=.services/tls/ca.pem --ssl-verify-server-cert sluice -t -e \
    "SELECT order_id, LEFT(customer, 40) AS customer, total FROM orders ORDER BY order_id LIMIT 3;"
  sealed="$(mariadb -h127.0.0.1 -P"${SLUICE_MYSQL_SECURE_PORT:-3307}" -usluice -p"$(cat .services/secrets/mysql.password)" \
    --ssl-ca=.services/tls/ca.pem --ssl-verify-server-cert sluice -N -e "SELECT customer FROM orders LIMIT 1;")"
  echo "==> read back through sluice: sluice decrypt orders.customer ..."
  ./target/debug/sluice decrypt --config config/secure.toml orders.customer "$sealed"
  echo "==> dead letters (stored encrypted, shown decrypted)"
  ./target/debug/sluice dlq list orders_secure --config config/secure.toml --limit 3
  exit 0
fi

echo "==> producing $EVENTS order events (and a few bad ones) to demo.orders with kcat"
python3 - "$EVENTS" <<'PY' | kcat -P -b "$KAFKA" -t demo.orders -K '|' -z lz4
import json, sys
n = int(sys.argv[1])
for i in range(n):
    e = {"id": f"o-{i}", "customer": f"customer-{i % 37}", "total": round(5 + (i * 7.31) % 250, 2),
         "created_at": f"2026-11-30T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}Z",
         "status": ["paid", "shipped", "refunded"][i % 3], "items": [{"sku": f"sku-{i % 11}", "qty": 1 + i % 4}]}
    print(f"o-{i}|{json.dumps(e)}")
print("broken|{this is not json")
print("no-id|" + json.dumps({"customer": "x", "total": 1, "created_at": "2026-11-30T00:00:00Z"}))
print("bad-time|" + json.dumps({"id": "bad-time", "customer": "x", "total": 1, "created_at": "soon"}))
PY

echo "==> one run of the pipeline over what the topic holds"
./target/debug/sluice run --config config/demo.toml --until-drained

echo "==> MariaDB: sluice.orders"
mariadb -h127.0.0.1 -P"${SLUICE_MYSQL_PORT:-3306}" -usluice -psluice sluice -t -e \
  "SELECT COUNT(*) AS orders, COUNT(DISTINCT order_id) AS distinct_ids, SUM(total) AS revenue FROM orders;
   SELECT status, COUNT(*) AS n FROM orders GROUP BY status;
   SELECT * FROM orders ORDER BY created_at DESC LIMIT 3;"

echo "==> FerretDB: sluice.order_events and dead letters"
VENV="$ROOT/.services/venv"
[[ -x "$VENV/bin/python" ]] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet pymongo; }
"$VENV/bin/python" - "${SLUICE_MONGO_PORT:-27017}" <<'PY'
import sys, pymongo
db = pymongo.MongoClient(f"mongodb://127.0.0.1:{sys.argv[1]}")["sluice"]
print(f"order_events: {db.order_events.count_documents({})} documents, "
      f"{db.order_events.count_documents({'big_spender': True})} big spenders")
print("one document:", db.order_events.find_one({"_id": "o-1"}))
print(f"dead letters: {db.sluice_dead_letters.count_documents({'pipeline': 'orders'})}")
for d in db.sluice_dead_letters.find({"pipeline": "orders"}).sort("offset", -1).limit(3):
    print(f"  {d['topic']}/{d['partition']}@{d['offset']} key={d.get('key')!r} [{d['stage']}] {d['reason']}")
PY

echo "==> the scheduler: sluice serving, 100 more events, a manual trigger"
./target/debug/sluice run --config config/demo.toml > .sluice/demo-host.log 2>&1 &
HOST_PID=$!
trap 'kill $HOST_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  ./target/debug/sluice pipelines --config config/demo.toml > /dev/null 2>&1 && break
  sleep 0.2
done
python3 - <<'PY' | kcat -P -b "$KAFKA" -t demo.orders -K '|'
import json
for i in range(100000, 100100):
    print(f"o-{i}|" + json.dumps({"id": f"o-{i}", "customer": "late", "total": 10, "created_at": "2026-11-30T12:00:00Z"}))
PY
./target/debug/sluice trigger orders --config config/demo.toml
sleep 3
./target/debug/sluice pipelines --config config/demo.toml
echo
./target/debug/sluice runs --config config/demo.toml --limit 5
kill -TERM $HOST_PID && wait $HOST_PID || true
trap - EXIT
