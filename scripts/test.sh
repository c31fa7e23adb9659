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
echo "== cargo build (release binary for end-to-end tests)"
cargo build --quiet --release -p weir
echo "== tests"
# The end-to-end tests create network namespaces; give them the freshly built binary.
export WEIR_BIN="$PWD/target/release/weir"
exec cargo nextest run --workspace --no-fail-fast --profile ci
