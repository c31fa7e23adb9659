#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, runs every
# test (unit, integration, network-namespace end-to-end). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== fuzz targets build"
# cargo-fuzz needs nightly to run them; a plain check keeps them from rotting.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
echo "== tests"
# Unit, integration and end-to-end tests; the end-to-end ones build network namespaces
# and drive the real `weir` binary that cargo builds for them.
exec cargo nextest run --workspace --no-fail-fast --profile ci
