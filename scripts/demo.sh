#!/usr/bin/env bash
# The main job: Istio's "Collecting Metrics for TCP Services" task, end to end on this
# machine with no Kubernetes. Installs what is missing, builds weir (release), then runs
# `weir demo`: the local cluster, Bookinfo with ratings v2 reading a real MariaDB, mutual
# TLS, virtual services, traffic through the ingress gateway, and the seed's PromQL
# answered by a real Prometheus. The cluster stays up to explore; `weir cluster down`
# removes it. Arguments are passed to `weir demo` (e.g. --down, --requests 50).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "demo: needs root for network namespaces, iptables and apt; run: sudo $0" >&2; exit 1; }

bash scripts/install-deps.sh
if [ -n "${WEIR_BIN:-}" ]; then
  weir=$WEIR_BIN # a prebuilt binary, e.g. from a development build
else
  echo "demo: building weir (release; a few minutes the first time)"
  cargo build --release --quiet -p weir || { echo "demo: cargo build failed; see the errors above" >&2; exit 1; }
  weir=target/release/weir
fi
exec "$weir" demo "$@"
