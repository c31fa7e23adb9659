#!/bin/sh
# Two sidecars on loopback: client app -> productpage sidecar -> mTLS + metadata
# exchange -> ratings sidecar -> echo app. Prints both sidecars' istio_tcp_* metrics.
# Needs: weir (on PATH, or WEIR=path/to/weir), socat, curl. No root, no iptables.
set -eu
cd "$(dirname "$0")"
WEIR=${WEIR:-weir}
work=$(mktemp -d)
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" certs
}
trap cleanup EXIT INT TERM

"$WEIR" ca init --dir "$work/ca" >/dev/null
"$WEIR" ca issue --ca-dir "$work/ca" --namespace default --service-account bookinfo-ratings --out certs/ratings >/dev/null
"$WEIR" ca issue --ca-dir "$work/ca" --namespace default --service-account bookinfo-productpage --out certs/productpage >/dev/null

socat TCP-LISTEN:9080,bind=127.0.0.1,reuseaddr,fork EXEC:cat & pids="$pids $!"
"$WEIR" proxy --config server.yaml --log-level warn & pids="$pids $!"
"$WEIR" proxy --config client.yaml --log-level warn & pids="$pids $!"

for port in 15221 15121; do
  i=0
  until curl -sf "http://127.0.0.1:$port/healthz/ready" >/dev/null; do
    i=$((i + 1)); [ "$i" -lt 100 ] || { echo "sidecar on :$port not ready" >&2; exit 1; }
    sleep 0.1
  done
done

echo "hello through the mesh" | socat -t 2 - TCP:127.0.0.1:19080
sleep 0.5
for port in 15190 15290; do
  echo "--- 127.0.0.1:$port/stats/prometheus"
  curl -s "http://127.0.0.1:$port/stats/prometheus" | grep '^istio_tcp_connections_closed_total'
done
