#!/usr/bin/env bash
# The two-sidecar example, end to end on one machine: Bookinfo's `ratings-v2-mysql` workload
# queries the `mysqldb` database (a real MariaDB) through two weir sidecars (mutual TLS and
# Istio's peer-metadata exchange), and a real Prometheus scrapes both sidecars. At the end
# the seed's queries, `istio_tcp_connections_opened_total` and `_closed_total`, are printed.
#
# Every pod is a network namespace on a private bridge; nothing touches the host's network.
#
#   sudo scripts/demo.sh           run, print the results, clean up
#   sudo scripts/demo.sh --keep    leave everything running to explore (see the last lines)
#   sudo scripts/demo.sh --down    remove what a --keep run left behind
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

prefix=weir-demo
work=/run/weir-demo
subnet=10.44.0
vip=10.96.0.20          # the mysqldb service's virtual IP
ratings_ip=$subnet.11
mysqldb_ip=$subnet.21
prom_ip=$subnet.100
connections=${WEIR_DEMO_CONNECTIONS:-10}

keep=false
case "${1:-}" in
  --keep) keep=true ;;
  --down) ;;
  "") ;;
  -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "demo: unknown option '$1'; use --keep, --down or nothing" >&2; exit 2 ;;
esac

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root to create network namespaces and iptables rules; run: sudo $0"

teardown() {
  for pidfile in "$work"/*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  # Sidecars flush their metrics on SIGTERM; give everything a moment before the namespaces go.
  sleep 0.5
  for pidfile in "$work"/*.pid; do
    [ -f "$pidfile" ] || continue
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  done
  for ns in ratings mysqldb prometheus net; do
    ip netns del "$prefix-$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$prefix-$ns"
  done
  rm -rf "$work"
}

if [ "${1:-}" = "--down" ]; then
  teardown
  echo "demo: removed"
  exit 0
fi

step "Installing what the demo needs (quiet when already there)"
bash scripts/install-deps.sh

if [ -n "${WEIR_BIN:-}" ]; then
  weir=$WEIR_BIN   # a prebuilt binary, e.g. from a development build
else
  step "Building weir (release; a few minutes the first time)"
  cargo build --release --quiet -p weir || die "cargo build failed; see the errors above"
  weir=$repo/target/release/weir
fi

teardown
mkdir -p "$work/logs"
finish() {
  status=$?
  if [ "$keep" = false ] || [ "$status" -ne 0 ]; then
    if [ "$status" -ne 0 ]; then
      echo "demo: failed; the last lines of each log:" >&2
      for log in "$work"/logs/*.log; do
        [ -f "$log" ] && { echo "--- $log" >&2; tail -n 15 "$log" >&2; }
      done
    fi
    teardown
  fi
}
trap finish EXIT

step "Creating the pod network: a bridge and three pods as network namespaces"
ip netns add "$prefix-net"
ip -n "$prefix-net" link add br0 type bridge
ip -n "$prefix-net" link set br0 up
ip -n "$prefix-net" link set lo up
pod() { # name ip
  local ns=$prefix-$1
  ip netns add "$ns"
  ip link add "veth-$1" netns "$prefix-net" type veth peer name eth0 netns "$ns"
  ip -n "$prefix-net" link set "veth-$1" master br0 up
  ip -n "$ns" addr add "$2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  # Service VIPs are not on any interface; a default route lets connections to them start
  # so that the sidecar's capture rule can take them.
  ip -n "$ns" route add default dev eth0
  mkdir -p "/etc/netns/$ns"
  printf '127.0.0.1 localhost\n%s %s\n%s mysqldb mysqldb.default mysqldb.default.svc.cluster.local\n' \
    "$2" "$1" "$vip" >"/etc/netns/$ns/hosts"
  echo "    pod $1: $2"
}
pod ratings "$ratings_ip"
pod mysqldb "$mysqldb_ip"
pod prometheus "$prom_ip"

step "Issuing workload certificates (SPIFFE identities) from a fresh local CA"
"$weir" ca init --dir "$work/ca" >/dev/null
"$weir" ca issue --ca-dir "$work/ca" --namespace default --service-account default \
  --out "$work/certs/ratings" >/dev/null
"$weir" ca issue --ca-dir "$work/ca" --namespace default --service-account default \
  --out "$work/certs/mysqldb" >/dev/null
echo "    spiffe://cluster.local/ns/default/sa/default for both workloads (Bookinfo gives neither a service account)"

step "Starting MariaDB in the mysqldb pod (Istio's ratings table)"
mkdir -p "$work/mysql" "$work/mysql-tmp"
mariadb-install-db --no-defaults --user=root --datadir="$work/mysql" --tmpdir="$work/mysql-tmp" --skip-test-db \
  --auth-root-authentication-method=normal >"$work/logs/mariadb-install.log" 2>&1 \
  || die "mariadb-install-db failed; see $work/logs/mariadb-install.log"
ip netns exec "$prefix-mysqldb" mariadbd --no-defaults --user=root --datadir="$work/mysql" --tmpdir="$work/mysql-tmp" \
  --socket="$work/mysql.sock" --pid-file="$work/mysql/mariadb.pid" --port=3306 \
  --bind-address=0.0.0.0 --skip-name-resolve --skip-log-bin --innodb-buffer-pool-size=16M \
  >"$work/logs/mariadb.log" 2>&1 &
echo $! >"$work/mariadb.pid"
for _ in $(seq 1 100); do
  mariadb --no-defaults --socket="$work/mysql.sock" -uroot -e 'select 1' >/dev/null 2>&1 && break
  sleep 0.2
done
mariadb --no-defaults --socket="$work/mysql.sock" -uroot >/dev/null <<'SQL' || die "MariaDB did not come up; see $work/logs/mariadb.log"
-- Bookinfo's credentials (root / password, from the mysql-credentials Secret). The sidecar
-- reaches MariaDB from 127.0.0.1, so the install's password-less TCP root accounts must go.
DELETE FROM mysql.global_priv WHERE User = 'root' AND Host NOT IN ('localhost');
DELETE FROM mysql.global_priv WHERE User = '';
FLUSH PRIVILEGES;
CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY 'password';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%';
CREATE DATABASE IF NOT EXISTS test;
USE test;
CREATE TABLE IF NOT EXISTS ratings (ReviewID INT NOT NULL, Rating INT, PRIMARY KEY (ReviewID));
INSERT IGNORE INTO ratings (ReviewID, Rating) VALUES (1, 5), (2, 4);
SQL
echo "    mysqldb-v1 serves 10.44.0.21:3306 (service mysqldb, VIP $vip)"

step "Starting the sidecars (traffic captured by iptables, as Istio's init container does)"
cat >"$work/ratings.yaml" <<EOF
node:
  podName: ratings-v2-mysql-0
  namespace: default
  workloadName: ratings-v2-mysql
  ip: $ratings_ip
  labels: {app: ratings, version: v2-mysql}
tls: {certDir: $work/certs/ratings}
inbound:
  listen: 0.0.0.0:15006
  ports:
    - port: 9080
      service: {name: ratings, namespace: default}
outbound:
  listen: 127.0.0.1:15001
  services:
    - name: mysqldb
      namespace: default
      addresses: [$vip]
      ports:
        - port: 3306
          endpoints:
            - address: $mysqldb_ip:3306
              tls: ISTIO_MUTUAL
              identity: spiffe://cluster.local/ns/default/sa/default
reporting: {interval: 5s}
capture: {mark: 1337}
EOF
cat >"$work/mysqldb.yaml" <<EOF
node:
  podName: mysqldb-v1-0
  namespace: default
  workloadName: mysqldb-v1
  ip: $mysqldb_ip
  labels: {app: mysqldb, version: v1}
tls: {certDir: $work/certs/mysqldb}
inbound:
  listen: 0.0.0.0:15006
  mode: STRICT
  ports:
    - port: 3306
      service: {name: mysqldb, namespace: default}
outbound:
  listen: 127.0.0.1:15001
reporting: {interval: 5s}
capture: {mark: 1337}
EOF
for p in ratings mysqldb; do
  ip netns exec "$prefix-$p" "$weir" proxy init --proxy-mark 1337 >"$work/logs/$p-init.log" 2>&1 \
    || die "capture rules for $p failed; see $work/logs/$p-init.log"
  ip netns exec "$prefix-$p" "$weir" proxy --config "$work/$p.yaml" >"$work/logs/$p-sidecar.log" 2>&1 &
  echo $! >"$work/$p-sidecar.pid"
done
for p in ratings mysqldb; do
  ready=false
  for _ in $(seq 1 100); do
    if ip netns exec "$prefix-$p" curl -fsS -o /dev/null "http://127.0.0.1:15021/healthz/ready" 2>/dev/null; then
      ready=true; break
    fi
    sleep 0.1
  done
  [ "$ready" = true ] || die "the $p sidecar did not become ready; see $work/logs/$p-sidecar.log"
  echo "    $p sidecar ready"
done

step "Starting Prometheus in its own pod, scraping both sidecars every 2s"
cat >"$work/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - job_name: envoy-stats
    metrics_path: /stats/prometheus
    static_configs:
      - targets: ['$ratings_ip:15090', '$mysqldb_ip:15090']
EOF
ip netns exec "$prefix-prometheus" prometheus --config.file="$work/prometheus.yml" \
  --storage.tsdb.path="$work/tsdb" --web.listen-address="$prom_ip:9090" \
  >"$work/logs/prometheus.log" 2>&1 &
echo $! >"$work/prometheus.pid"
prom() { ip netns exec "$prefix-prometheus" curl -fsS "$@"; }
for _ in $(seq 1 100); do
  prom "http://$prom_ip:9090/-/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
prom "http://$prom_ip:9090/-/ready" >/dev/null || die "Prometheus did not start; see $work/logs/prometheus.log"

step "Sending traffic: $connections queries from ratings-v2-mysql to mysqldb:3306"
for i in $(seq 1 "$connections"); do
  out=$(ip netns exec "$prefix-ratings" mariadb --no-defaults -h mysqldb -P 3306 -uroot -ppassword \
    --batch --skip-column-names test -e 'SELECT ReviewID, Rating FROM ratings ORDER BY ReviewID' 2>&1) \
    || die "query $i failed: $out"
  [ "$i" -eq 1 ] && printf '    ratings from the database: %s\n' "$(echo "$out" | tr '\t\n' ': ' | sed 's/ $//')"
done
echo "    $connections connections made and closed"

step "Waiting for Prometheus to scrape the counters"
query() {
  prom --get "http://$prom_ip:9090/api/v1/query" --data-urlencode "query=$1"
}
expected=$((connections * 2))
for _ in $(seq 1 60); do
  got=$(query 'sum(istio_tcp_connections_closed_total{destination_workload="mysqldb-v1"})' |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)')
  [ "$got" -ge "$expected" ] && break
  sleep 1
done
[ "$got" -ge "$expected" ] || die "Prometheus saw $got of $expected closed connections; see $work/logs/"

table() {
  query "$1" | python3 -c '
import json, sys
rows = json.load(sys.stdin)["data"]["result"]
cols = ["reporter", "source_workload", "source_canonical_service", "source_canonical_revision",
        "source_principal", "destination_service_name", "destination_workload", "destination_version",
        "connection_security_policy", "response_flags"]
print("  " + sys.argv[1])
width = {c: max([len(c)] + [len(r["metric"].get(c, "")) for r in rows]) for c in cols}
print("    " + "  ".join(c.ljust(width[c]) for c in cols) + "  value")
for r in sorted(rows, key=lambda r: r["metric"].get("reporter", "")):
    print("    " + "  ".join(r["metric"].get(c, "").ljust(width[c]) for c in cols) + "  " + r["value"][1])
' "$1"
}
step "Results (Prometheus HTTP API, the seed's queries)"
table 'istio_tcp_connections_opened_total{destination_service_name="mysqldb"}'
echo
table 'istio_tcp_connections_closed_total{destination_service_name="mysqldb"}'
echo
table 'istio_tcp_received_bytes_total{destination_service_name="mysqldb"}'

if [ "$keep" = true ]; then
  cat <<EOF

Everything is still running. Explore:
  ip netns exec $prefix-prometheus curl -s 'http://$prom_ip:9090/api/v1/query?query=istio_tcp_connections_opened_total'
  ip netns exec $prefix-ratings curl -s http://127.0.0.1:15000/connections      # a sidecar's admin API
  ip netns exec $prefix-ratings mariadb -h mysqldb -uroot -ppassword test -e 'select * from ratings'
  logs: $work/logs/
Remove it all with: sudo $0 --down
EOF
else
  echo
  echo "Done; everything the demo created has been removed. Run with --keep to explore."
fi
