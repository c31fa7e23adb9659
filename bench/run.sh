#!/usr/bin/env bash
# shellcheck disable=SC2317 # the test_* functions are called by name
# Per-hop benchmark of weir against a direct connection and HAProxy, in network
# namespaces this script creates and removes:
#
#   client ns (10.249.1.2) <-veth-> proxy ns (10.249.1.1 | 10.249.2.1) <-veth-> server ns (10.249.2.2)
#
# The proxy namespace routes, so every variant crosses the same two veth pairs:
#   direct          client -> server (routed by the proxy namespace's kernel)
#   haproxy-copy    HAProxy `mode tcp` in the proxy namespace, splicing off
#   haproxy-splice  the same with splice-request/splice-response
#   weir-forward    `weir proxy forward` in the proxy namespace
#   weir-pair-plain a client-side sidecar (client ns) and a server-side sidecar (server ns)
#   weir-pair-mtls  the same pair speaking mutual TLS with metadata exchange
#   *-notel         weir variants with telemetry off, when the binary has the switch
#
# Load generators (iperf3 and bench/loadgen) run on CPU 0, proxies on CPU 1.
# Usage: bench/run.sh [--short] [--weir-bin PATH] [--repeat N] [--out FILE]
#                     [--seconds S] [--idle N] [--variants a,b,...] [--loadgen-bin PATH] [--keep]
# Needs root, ip (iproute2), iperf3, haproxy, taskset, python3 and cargo (to build).
# Exit status: 0 when every variant passed traffic, 1 when one did not, 2 on a setup
# error. Figures never change the exit status.
set -uo pipefail

usage() {
  sed -n '/^# Usage:/,/^# error/p' "$0" | sed 's/^# \{0,1\}//'
}

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

REPO="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="$REPO/bench"
CMDLINE="bench/run.sh $*"

SHORT=0
WEIR_BIN=""
LOADGEN_BIN=""
REPEAT=""
OUT=""
SECONDS_PER_TEST=""
IDLE_COUNT=""
VARIANTS_ARG=""
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --short) SHORT=1 ;;
    --weir-bin) WEIR_BIN="${2:?--weir-bin needs a path}"; shift ;;
    --loadgen-bin) LOADGEN_BIN="${2:?--loadgen-bin needs a path}"; shift ;;
    --repeat) REPEAT="${2:?--repeat needs a number}"; shift ;;
    --out) OUT="${2:?--out needs a file}"; shift ;;
    --seconds) SECONDS_PER_TEST="${2:?--seconds needs a number}"; shift ;;
    --idle) IDLE_COUNT="${2:?--idle needs a number}"; shift ;;
    --variants) VARIANTS_ARG="${2:?--variants needs a comma-separated list}"; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'; see --help" ;;
  esac
  shift
done

if [ "$SHORT" = 1 ]; then
  : "${REPEAT:=1}" "${SECONDS_PER_TEST:=2}" "${IDLE_COUNT:=200}"
  SETTLE=1.5
else
  : "${REPEAT:=3}" "${SECONDS_PER_TEST:=5}" "${IDLE_COUNT:=9900}"
  SETTLE=2.5
  [ -n "$OUT" ] || OUT="$REPO/BENCHMARKS.md"
fi
[[ "$REPEAT" =~ ^[1-9][0-9]?$ ]] || die "--repeat $REPEAT: give 1 to 99"
[[ "$SECONDS_PER_TEST" =~ ^[1-9][0-9]*$ ]] || die "--seconds $SECONDS_PER_TEST: give a whole number of seconds, e.g. 5"
[[ "$IDLE_COUNT" =~ ^[1-9][0-9]*$ ]] || die "--idle $IDLE_COUNT: give a positive number of connections"

# A proxy holds two sockets per connection and the open-file hard limit is per process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
if [ "$NOFILE" != unlimited ] && [ $((IDLE_COUNT * 2 + 200)) -gt "$NOFILE" ]; then
  die "--idle $IDLE_COUNT needs $((IDLE_COUNT * 2 + 200)) open files per proxy but the limit is $NOFILE; use --idle $(((NOFILE - 200) / 2)) or raise the hard limit (ulimit -Hn)"
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (it creates network namespaces); try: sudo $0"
for tool in ip iperf3 haproxy taskset python3 ss; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] \
    || die "$tool not found; run scripts/install-deps.sh (Debian packages iproute2, iperf3, haproxy, util-linux, python3)"
done
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
[ "$(nproc)" -ge 2 ] || log "warning: fewer than 2 CPUs; proxies and load generators share one"

# ---------------------------------------------------------------- build

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
if [ -z "$WEIR_BIN" ]; then
  log "building weir (release)"
  (cd "$REPO" && cargo build --release -p weir --quiet) || die "cargo build --release -p weir failed"
  WEIR_BIN="$TARGET_DIR/release/weir"
fi
[ -x "$WEIR_BIN" ] || die "--weir-bin $WEIR_BIN is not an executable"
WEIR_BIN="$(cd "$(dirname "$WEIR_BIN")" && pwd)/$(basename "$WEIR_BIN")"
# Proxies run as sidecars do: `weir-proxy` (the data plane alone) when it was built
# beside weir, else `weir proxy`.
PROXY=("$WEIR_BIN" proxy)
[ -x "$(dirname "$WEIR_BIN")/weir-proxy" ] && PROXY=("$(dirname "$WEIR_BIN")/weir-proxy")
if [ -z "$LOADGEN_BIN" ]; then
  log "building bench/loadgen (release)"
  CARGO_TARGET_DIR="$TARGET_DIR/bench-loadgen" cargo build --release --quiet \
    --manifest-path "$BENCH/loadgen/Cargo.toml" || die "building bench/loadgen failed"
  LOADGEN_BIN="$TARGET_DIR/bench-loadgen/release/loadgen"
fi
[ -x "$LOADGEN_BIN" ] || die "--loadgen-bin $LOADGEN_BIN is not an executable"

# ---------------------------------------------------------------- namespaces and cleanup

PREFIX="weir-bench"
NS_C="$PREFIX-$$-client"
NS_P="$PREFIX-$$-proxy"
NS_S="$PREFIX-$$-server"
C_IP=10.249.1.2 P_IP_C=10.249.1.1 P_IP_S=10.249.2.1 S_IP=10.249.2.2
IPERF_PORT=5201 ECHO_PORT=7000 CLOSE_PORT=7001 SIDECAR_IN_PORT=15006
CPU_LOAD=0 CPU_PROXY=1
[ "$(nproc)" -ge 2 ] || CPU_PROXY=0
CLK_TCK="$(getconf CLK_TCK)"

WORK="$(mktemp -d /tmp/weir-bench.XXXXXX)" || die "cannot create a work directory under /tmp"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
STARTED=()

nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

# Removes one namespace and anything still running in it (processes a run of this
# script started there).
drop_ns() {
  local ns="$1" pid
  ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" || return 0
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null || log "warning: could not delete namespace $ns"
}

cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  drop_ns "$NS_C"; drop_ns "$NS_P"; drop_ns "$NS_S"
  if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# Namespaces of an earlier run that died without cleaning up.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-[0-9]+-(client|proxy|server)\$"); do
  owner="${ns#"$PREFIX"-}"; owner="${owner%%-*}"
  if ! kill -0 "$owner" 2>/dev/null; then
    log "removing stale namespace $ns"
    drop_ns "$ns"
  fi
done

setup_netns() {
  local ns
  for ns in "$NS_C" "$NS_P" "$NS_S"; do
    ip netns add "$ns" || return 1
    nsx "$ns" ip link set lo up || return 1
    # Connection loops must not run out of ports: wide range, reuse of TIME_WAIT.
    nsx "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1 \
      net.core.somaxconn=8192 net.ipv4.tcp_max_syn_backlog=8192 >/dev/null || return 1
  done
  ip link add c0 netns "$NS_C" type veth peer name c1 netns "$NS_P" || return 1
  ip link add s0 netns "$NS_S" type veth peer name s1 netns "$NS_P" || return 1
  nsx "$NS_C" ip addr add "$C_IP/24" dev c0 && nsx "$NS_C" ip link set c0 up \
    && nsx "$NS_C" ip route add default via "$P_IP_C" || return 1
  nsx "$NS_S" ip addr add "$S_IP/24" dev s0 && nsx "$NS_S" ip link set s0 up \
    && nsx "$NS_S" ip route add default via "$P_IP_S" || return 1
  nsx "$NS_P" ip addr add "$P_IP_C/24" dev c1 && nsx "$NS_P" ip link set c1 up || return 1
  nsx "$NS_P" ip addr add "$P_IP_S/24" dev s1 && nsx "$NS_P" ip link set s1 up || return 1
  nsx "$NS_P" sysctl -qw net.ipv4.ip_forward=1 >/dev/null || return 1
}
setup_netns || die "creating the network namespaces failed (see the messages above)"

# ---------------------------------------------------------------- processes

# spawn NS CPU LOG CMD...: starts CMD in the background; its pid is in SPAWNED.
# `ip netns exec` and `taskset` both exec, so the pid is the command's own.
spawn() {
  local ns="$1" cpu="$2" logf="$3"; shift 3
  ip netns exec "$ns" taskset -c "$cpu" "$@" >"$logf" 2>&1 &
  SPAWNED=$!
  STARTED+=("$SPAWNED")
}

# stop PID: SIGTERM, up to 5 s to exit, then SIGKILL.
stop() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

# wait_listen NS PORT PID LOG: until something listens on PORT in NS (10 s).
wait_listen() {
  local ns="$1" port="$2" pid="$3" logf="$4" i
  for ((i = 0; i < 200; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "process $pid exited before listening on :$port; its log:"
      sed 's/^/    /' "$logf" >&2
      return 1
    fi
    [ -n "$(nsx "$ns" ss -Hltn "sport = :$port" 2>/dev/null)" ] && return 0
    sleep 0.05
  done
  log "nothing listens on :$port in $ns after 10 s; log $logf:"
  sed 's/^/    /' "$logf" >&2
  return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2; found=1} END {if (!found) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }

cpu_ticks() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
  stat="${stat##*) }"
  # shellcheck disable=SC2086
  set -- $stat
  echo $(( ${12} + ${13} ))
}

ROUND=0
rec() { printf '%s\t%s\t%s\t%s\n' "$ROUND" "$1" "$2" "$3" >>"$RESULTS"; }

# json_get JSON KEY: a number from loadgen's flat one-line JSON.
json_get() {
  if [[ "$1" =~ \"$2\":(-?[0-9.]+) ]]; then echo "${BASH_REMATCH[1]}"; else echo "missing-$2"; fi
}

# calc EXPR: floating-point arithmetic (awk starts far faster than python).
calc() { awk "BEGIN { printf \"%.6g\n\", $1 }"; }

# ---------------------------------------------------------------- certificates and telemetry switches

CERTS="$WORK/certs"
mkdir -p "$CERTS"
if ! { "$WEIR_BIN" ca init --dir "$CERTS/ca" \
  && "$WEIR_BIN" ca issue --ca-dir "$CERTS/ca" --namespace bench --service-account client --out "$CERTS/client" \
  && "$WEIR_BIN" ca issue --ca-dir "$CERTS/ca" --namespace bench --service-account server --out "$CERTS/server"; } >"$WORK/ca.log" 2>&1; then
  sed 's/^/    /' "$WORK/ca.log" >&2
  die "weir ca could not make the benchmark certificates"
fi

# Telemetry off: `weir proxy forward --no-telemetry` and `telemetry: {enabled: false}`
# in a sidecar configuration, when this binary has them.
NOTEL_FORWARD=0 NOTEL_SIDECAR=0
"${PROXY[@]}" forward --help 2>/dev/null | grep -q -- '--no-telemetry' && NOTEL_FORWARD=1

# sidecar_config SIDE PORT TLS TELEMETRY > file
sidecar_config() {
  local side="$1" port="$2" tls="$3" tel="$4"
  cat <<EOF
node:
  namespace: bench
  workloadName: $side
  serviceAccount: $side
  labels: {app: $side, version: v1}
admin: {listen: "127.0.0.1:15000"}
stats: {listen: "127.0.0.1:15090"}
readiness: {listen: "127.0.0.1:15021"}
limits: {drainTimeout: 1s}
EOF
  [ "$tls" = mtls ] && printf 'tls: {certDir: "%s"}\n' "$CERTS/$side"
  [ "$tel" = off ] && printf 'telemetry: {enabled: false}\n'
  if [ "$side" = client ]; then
    local etls="tls: DISABLE"
    [ "$tls" = mtls ] && etls="tls: ISTIO_MUTUAL, identity: \"spiffe://cluster.local/ns/bench/sa/server\""
    cat <<EOF
inbound: {mode: DISABLE}
outbound:
  services:
    - name: server
      namespace: bench
      ports:
        - port: $port
          listen: "127.0.0.1:$port"
          endpoints:
            - {address: "$S_IP:$SIDECAR_IN_PORT", $etls}
EOF
  else
    local mode=DISABLE
    [ "$tls" = mtls ] && mode=STRICT
    cat <<EOF
inbound:
  mode: $mode
  ports:
    - port: $port
      target: "127.0.0.1:$port"
      listen: "$S_IP:$SIDECAR_IN_PORT"
      service: {name: server, namespace: bench}
EOF
  fi
}

sidecar_config client "$ECHO_PORT" plain off >"$WORK/notel-probe.yaml"
"${PROXY[@]}" --config "$WORK/notel-probe.yaml" --check >/dev/null 2>&1 && NOTEL_SIDECAR=1

ALL_VARIANTS=(direct haproxy-copy haproxy-splice weir-forward)
[ "$NOTEL_FORWARD" = 1 ] && ALL_VARIANTS+=(weir-forward-notel)
ALL_VARIANTS+=(weir-pair-plain)
[ "$NOTEL_SIDECAR" = 1 ] && ALL_VARIANTS+=(weir-pair-plain-notel)
ALL_VARIANTS+=(weir-pair-mtls)
[ "$NOTEL_SIDECAR" = 1 ] && ALL_VARIANTS+=(weir-pair-mtls-notel)
if [ -n "$VARIANTS_ARG" ]; then
  IFS=, read -r -a VARIANTS <<<"$VARIANTS_ARG"
  for v in "${VARIANTS[@]}"; do
    [[ " ${ALL_VARIANTS[*]} " == *" $v "* ]] || die "--variants: unknown or unavailable variant '$v'; choose from: ${ALL_VARIANTS[*]}"
  done
else
  VARIANTS=("${ALL_VARIANTS[@]}")
fi

# ---------------------------------------------------------------- variants

# start_variant VARIANT PORT: starts the proxies for traffic to the server's PORT and
# sets TARGET (where clients connect, in the client namespace) and VPIDS (the proxies).
start_variant() {
  local v="$1" port="$2" logf="$WORK/$1-$2.log" cfg
  VPIDS=()
  case "$v" in
    direct)
      TARGET="$S_IP:$port"
      ;;
    haproxy-copy|haproxy-splice)
      cfg="$WORK/haproxy-$v-$port.cfg"
      {
        printf 'global\n  maxconn %s\n' "$((IDLE_COUNT + 50))"
        [ "$v" = haproxy-copy ] && printf '  nosplice\n'
        # Splice pipes count against the open-file limit too (default maxconn/4 of them);
        # a few suffice for the throughput test's 4 streams.
        [ "$v" = haproxy-splice ] && printf '  maxpipes 32\n'
        printf 'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n'
        [ "$v" = haproxy-splice ] && printf '  option splice-request\n  option splice-response\n'
        printf 'listen fwd\n  bind %s:%s\n  maxconn %s\n  server s1 %s:%s\n' \
          "$P_IP_C" "$port" "$((IDLE_COUNT + 50))" "$S_IP" "$port"
      } >"$cfg"
      spawn "$NS_P" "$CPU_PROXY" "$logf" "$HAPROXY" -db -f "$cfg"
      VPIDS=("$SPAWNED")
      wait_listen "$NS_P" "$port" "$SPAWNED" "$logf" || return 1
      TARGET="$P_IP_C:$port"
      ;;
    weir-forward|weir-forward-notel)
      local extra=()
      [ "$v" = weir-forward-notel ] && extra=(--no-telemetry)
      spawn "$NS_P" "$CPU_PROXY" "$logf" "${PROXY[@]}" forward \
        --listen "$P_IP_C:$port" --upstream "$S_IP:$port" \
        --workload client --namespace bench --label app=client --service server \
        --stats 127.0.0.1:15090 --admin 127.0.0.1:15000 --readiness 127.0.0.1:15021 \
        --drain-timeout 1s --log-level warn "${extra[@]}"
      VPIDS=("$SPAWNED")
      wait_listen "$NS_P" "$port" "$SPAWNED" "$logf" || return 1
      TARGET="$P_IP_C:$port"
      ;;
    weir-pair-*)
      local tls=plain tel=on
      [[ "$v" == *mtls* ]] && tls=mtls
      [[ "$v" == *notel ]] && tel=off
      sidecar_config server "$port" "$tls" "$tel" >"$WORK/$v-$port-server.yaml"
      sidecar_config client "$port" "$tls" "$tel" >"$WORK/$v-$port-client.yaml"
      spawn "$NS_S" "$CPU_PROXY" "$logf.server" "${PROXY[@]}" --log-level warn \
        --config "$WORK/$v-$port-server.yaml"
      VPIDS=("$SPAWNED")
      wait_listen "$NS_S" "$SIDECAR_IN_PORT" "$SPAWNED" "$logf.server" || return 1
      spawn "$NS_C" "$CPU_PROXY" "$logf.client" "${PROXY[@]}" --log-level warn \
        --config "$WORK/$v-$port-client.yaml"
      VPIDS=("$SPAWNED" "${VPIDS[@]}")
      wait_listen "$NS_C" "$port" "$SPAWNED" "$logf.client" || return 1
      TARGET="127.0.0.1:$port"
      ;;
    *) log "unknown variant $v"; return 1 ;;
  esac
  return 0
}

stop_variant() {
  local pid
  for pid in "${VPIDS[@]}"; do stop "$pid"; done
  VPIDS=()
}

# Records METRIC as the sum over the proxies and, for a pair, per side (_client, _server).
rec_proxies() {
  local v="$1" metric="$2"; shift 2
  local values=("$@") sum=0 x
  for x in "${values[@]}"; do sum=$(calc "$sum + $x"); done
  rec "$v" "$metric" "$sum"
  if [ "${#values[@]}" = 2 ]; then
    rec "$v" "${metric}_client" "${values[0]}"
    rec "$v" "${metric}_server" "${values[1]}"
  fi
}

# check_labels VARIANT: while connections are open, the weir proxy must count them with
# the labels the variant claims (for the mTLS pair, the server side reports mutual TLS
# and the client's workload learnt over metadata exchange). A mismatch means the variant does not
# measure what its name says; it is logged and recorded, not fatal.
check_labels() {
  local v="$1" ns want=() text w
  case "$v" in
    weir-forward) ns="$NS_P"; want=('reporter="source"' 'destination_service_name="server"') ;;
    weir-pair-plain) ns="$NS_S"; want=('reporter="destination"' 'connection_security_policy="none"') ;;
    weir-pair-mtls) ns="$NS_S"; want=('connection_security_policy="mutual_tls"' 'source_workload="client"') ;;
    *) return 0 ;;
  esac
  text="$(nsx "$ns" timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/15090 &&
    printf "GET /stats/prometheus HTTP/1.0\r\nHost: bench\r\n\r\n" >&3 && cat <&3' 2>&1)" || { log "$v: could not scrape the stats endpoint: ${text:0:200}"; rec "$v" labels_ok 0; return 0; }
  for w in "${want[@]}"; do
    if ! grep -F 'istio_tcp_connections_opened_total' <<<"$text" | grep -qF "$w"; then
      log "$v: warning: istio_tcp_connections_opened_total has no series with $w"
      rec "$v" labels_ok 0
      return 0
    fi
  done
  rec "$v" labels_ok 1
}

# Latency, RSS at rest and idle connections, on one proxy start.
test_latency_idle() {
  local v="$1" out pid rest=() idle=() i open
  start_variant "$v" "$ECHO_PORT" || { stop_variant; return 1; }
  sleep 0.5
  for pid in "${VPIDS[@]}"; do rest+=("$(rss_kib "$pid")"); done
  [ "${#VPIDS[@]}" -gt 0 ] && rec_proxies "$v" rss_rest_kib "${rest[@]}"

  out="$(nsx "$NS_C" taskset -c "$CPU_LOAD" "$LOADGEN_BIN" rr --connect "$TARGET" --seconds "$SECONDS_PER_TEST")" \
    || { log "$v: request/response test failed"; stop_variant; return 1; }
  rec "$v" p50_us "$(json_get "$out" p50_us)"
  rec "$v" p99_us "$(json_get "$out" p99_us)"

  local idle_log="$WORK/$v-idle-$ROUND.json"
  spawn "$NS_C" "$CPU_LOAD" "$idle_log" "$LOADGEN_BIN" idle --connect "$TARGET" --count "$IDLE_COUNT" --hold 600
  local idle_pid="$SPAWNED"
  for ((i = 0; i < 2400; i++)); do
    grep -q '"open"' "$idle_log" 2>/dev/null && break
    kill -0 "$idle_pid" 2>/dev/null || break
    sleep 0.05
  done
  if ! grep -q '"open"' "$idle_log" 2>/dev/null; then
    log "$v: idle connections did not open; loadgen said:"; sed 's/^/    /' "$idle_log" >&2
    stop "$idle_pid"; stop_variant; return 1
  fi
  open="$(json_get "$(grep '"open"' "$idle_log")" open)"
  rec "$v" idle_open "$open"
  [ "$open" = "$IDLE_COUNT" ] || log "$v: only $open of $IDLE_COUNT idle connections opened: $(head -c 300 "$idle_log")"
  check_labels "$v"
  # Let read buffers that grew during the handshake shrink back.
  sleep "$SETTLE"
  if [ "${#VPIDS[@]}" -gt 0 ]; then
    for i in "${!VPIDS[@]}"; do
      idle+=("$(calc "int(($(rss_kib "${VPIDS[$i]}") - ${rest[$i]}) * 1024 / $open + 0.5)")")
    done
    rec_proxies "$v" idle_bytes_per_conn "${idle[@]}"
  fi
  stop "$idle_pid"
  stop_variant
  return 0
}

test_cps() {
  local v="$1" out pid before=() cpu=() i n
  start_variant "$v" "$CLOSE_PORT" || { stop_variant; return 1; }
  for pid in "${VPIDS[@]}"; do before+=("$(cpu_ticks "$pid")"); done
  out="$(nsx "$NS_C" taskset -c "$CPU_LOAD" "$LOADGEN_BIN" cps --connect "$TARGET" --seconds "$SECONDS_PER_TEST" --concurrency 16)" \
    || { log "$v: connections-per-second test failed: $out"; stop_variant; return 1; }
  rec "$v" cps "$(json_get "$out" per_sec)"
  n="$(json_get "$out" ok)"
  if [ "${#VPIDS[@]}" -gt 0 ]; then
    for i in "${!VPIDS[@]}"; do
      cpu+=("$(calc "($(cpu_ticks "${VPIDS[$i]}") - ${before[$i]}) * 1e6 / $CLK_TCK / $n")")
    done
    rec_proxies "$v" cpu_us_per_conn "${cpu[@]}"
  fi
  local errors; errors="$(json_get "$out" errors)"
  [ "$errors" = 0 ] || log "$v: $errors failed connections: $out"
  stop_variant
  return 0
}

iperf() {
  local streams="$1" host="${TARGET%:*}" port="${TARGET##*:}"
  nsx "$NS_C" taskset -c "$CPU_LOAD" iperf3 -c "$host" -p "$port" -t "$SECONDS_PER_TEST" \
    -P "$streams" -J --connect-timeout 5000 2>&1
}

# Prints "bits_per_second bytes" of an iperf3 JSON report, or fails.
iperf_figures() {
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
if "error" in d:
    sys.exit("iperf3: " + d["error"])
e = d["end"]
print(e["sum_received"]["bits_per_second"], e["sum_sent"]["bytes"])
' "$1"
}

test_throughput() {
  local v="$1" out figs streams pid before=() cpu=() i bytes
  start_variant "$v" "$IPERF_PORT" || { stop_variant; return 1; }
  for streams in 1 4; do
    before=()
    for pid in "${VPIDS[@]}"; do before+=("$(cpu_ticks "$pid")"); done
    out="$(iperf "$streams")"
    figs="$(iperf_figures "$out" 2>&1)" \
      || { log "$v: iperf3 -P $streams failed: $figs"; stop_variant; return 1; }
    rec "$v" "tput${streams}_gbps" "$(calc "${figs% *} / 1e9")"
    if [ "$streams" = 1 ] && [ "${#VPIDS[@]}" -gt 0 ]; then
      bytes="${figs#* }"
      cpu=()
      for i in "${!VPIDS[@]}"; do
        cpu+=("$(calc "($(cpu_ticks "${VPIDS[$i]}") - ${before[$i]}) / $CLK_TCK / ($bytes / 1e9)")")
      done
      rec_proxies "$v" cpu_s_per_gb "${cpu[@]}"
    fi
  done
  stop_variant
  return 0
}

# ---------------------------------------------------------------- servers

spawn "$NS_S" "$CPU_LOAD" "$WORK/iperf3-server.log" iperf3 -s -p "$IPERF_PORT" --idle-timeout 30
IPERF_PID="$SPAWNED"
spawn "$NS_S" "$CPU_LOAD" "$WORK/loadgen-server.log" "$LOADGEN_BIN" serve \
  --echo "0.0.0.0:$ECHO_PORT" --close "0.0.0.0:$CLOSE_PORT"
LOADGEN_PID="$SPAWNED"
wait_listen "$NS_S" "$IPERF_PORT" "$IPERF_PID" "$WORK/iperf3-server.log" || die "iperf3 server did not start"
wait_listen "$NS_S" "$ECHO_PORT" "$LOADGEN_PID" "$WORK/loadgen-server.log" || die "loadgen server did not start"
wait_listen "$NS_S" "$CLOSE_PORT" "$LOADGEN_PID" "$WORK/loadgen-server.log" || die "loadgen server did not start"

# ---------------------------------------------------------------- run

mode=full; [ "$SHORT" = 1 ] && mode=short
log "$mode run: ${#VARIANTS[@]} variants x $REPEAT rounds, ${SECONDS_PER_TEST}s per test, $IDLE_COUNT idle connections"
log "weir: $WEIR_BIN; proxies run as: ${PROXY[*]}; telemetry-off switch: forward=$NOTEL_FORWARD sidecar=$NOTEL_SIDECAR"
START_TIME=$(date +%s)
FAILED=()
n="${#VARIANTS[@]}"
for ((ROUND = 1; ROUND <= REPEAT; ROUND++)); do
  # Rotate the order each round so no variant always runs first or last.
  for ((k = 0; k < n; k++)); do
    v="${VARIANTS[$(((k + ROUND - 1) % n))]}"
    log "round $ROUND/$REPEAT: $v"
    ok=1 took=""
    for t in throughput latency_idle cps; do
      t0=$(date +%s%N)
      "test_$t" "$v" || ok=0
      took+=" $t $(( ($(date +%s%N) - t0) / 1000000 ))ms"
    done
    log "  $v:$took"
    if [ "$ok" = 0 ]; then FAILED+=("$v (round $ROUND)"); rec "$v" failed 1; fi
  done
done
ELAPSED=$(($(date +%s) - START_TIME))

# ---------------------------------------------------------------- report

META="$WORK/meta.json"
python3 - "$META" <<EOF
import json, platform, subprocess, sys
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""
meta = {
    "date": sh("date -u '+%Y-%m-%d %H:%M UTC'"),
    "command": """$CMDLINE""".strip(),
    "mode": "$mode",
    "repeat": $REPEAT,
    "seconds": $SECONDS_PER_TEST,
    "idle": $IDLE_COUNT,
    "elapsed_s": $ELAPSED,
    "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
    "cpus": sh("nproc"),
    "mem": sh("free -g | awk '/^Mem:/ {print \$2 \" GiB\"}'"),
    "kernel": platform.release(),
    "weir": sh("'$WEIR_BIN' --version"),
    "weir_bin": "$WEIR_BIN",
    "commit": sh("git -C '$REPO' rev-parse --short HEAD") + (" (with uncommitted changes)" if sh("git -C '$REPO' status --porcelain --untracked-files=no") else ""),
    "haproxy": sh("'$HAPROXY' -v | head -1"),
    "iperf3": sh("iperf3 --version | head -1"),
    "notel_forward": $NOTEL_FORWARD,
    "notel_sidecar": $NOTEL_SIDECAR,
    "cpu_load": $CPU_LOAD,
    "cpu_proxy": $CPU_PROXY,
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF

if [ -n "$OUT" ]; then
  python3 "$BENCH/report.py" --results "$RESULTS" --meta "$META" --out "$OUT" || die "writing the report failed"
  log "wrote $OUT"
fi
python3 "$BENCH/report.py" --results "$RESULTS" --meta "$META" --summary || die "summarising failed"
[ "$KEEP" = 1 ] && log "raw results: $RESULTS"

if [ "${#FAILED[@]}" -gt 0 ]; then
  log "FAILED to pass traffic: ${FAILED[*]} (logs: rerun with --keep and look in the work directory)"
  exit 1
fi
log "all ${#VARIANTS[@]} variants passed traffic in ${ELAPSED}s"
exit 0
