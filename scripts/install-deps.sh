#!/usr/bin/env bash
# Installs what weir's demo and test suite need on a Debian machine, as root.
# Idempotent and quiet when everything is already there.
set -euo pipefail

die() { echo "install-deps: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, iptables and apt need it); try: sudo $0"

# command -> Debian package
declare -A need=(
  [prometheus]=prometheus
  [promtool]=prometheus
  [mariadbd]=mariadb-server
  [mariadb]=mariadb-client
  [iptables]=iptables
  [ip]=iproute2
  [haproxy]=haproxy
  [iperf3]=iperf3
  [redis-server]=redis-server
  [curl]=curl
)
missing=()
for cmd in "${!need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    missing+=("${need[$cmd]}")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "install-deps: installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed; check the package mirror configuration"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed; run it by hand to see why"
fi

# The packaged services must not hold the ports the tests use: weir starts its own
# instances (in network namespaces) and never the system ones.
for svc in prometheus prometheus-node-exporter mariadb redis-server haproxy; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" >/dev/null 2>&1 || true
  fi
done

# Python's protobuf package is the non-Rust peer of the MX interop test.
if ! python3 -c 'import google.protobuf' >/dev/null 2>&1; then
  echo "install-deps: installing python protobuf (pip)"
  python3 -m pip install --quiet --disable-pip-version-check 'protobuf>=4' \
    || die "pip install protobuf failed; the MX interop test needs it"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-nextest (cargo)"
  cargo install --quiet --locked cargo-nextest || die "cargo install cargo-nextest failed"
fi
