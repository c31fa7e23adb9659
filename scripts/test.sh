#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, runs every
# test (unit, integration, network-namespace end-to-end). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

# A one-off build gains nothing from incremental state; it only costs disk and time.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== fuzz targets build"
# cargo-fuzz needs nightly to run them; a plain check keeps them from rotting.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
echo "== benchmark harness (short mode)"
# Keeps bench/ working end to end (namespaces, HAProxy, every weir variant). Its figures
# are printed, never checked: performance is not asserted by tests. The build is the test
# build (the whole workspace, so features unify the same way and nothing compiles twice).
cargo nextest run --workspace --profile ci --no-run --cargo-quiet
bench_log="$(mktemp)"
if ! bash bench/run.sh --short --seconds 1 --weir-bin "${CARGO_TARGET_DIR:-target}/debug/weir" >"$bench_log" 2>&1; then
  cat "$bench_log"
  rm -f "$bench_log"
  echo "bench/run.sh --short failed (its log is above)" >&2
  exit 1
fi
grep -v '^\[bench ' "$bench_log" || true
rm -f "$bench_log"
echo "== tests"
# Unit, integration and end-to-end tests; the end-to-end ones build network namespaces
# and drive the real `weir` binary that cargo builds for them.
exec cargo nextest run --workspace --no-fail-fast --profile ci
