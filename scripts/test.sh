#!/usr/bin/env bash
# Runs every Ambit test on a fresh Debian machine (as root), installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

# System packages (only when missing, so reruns are quick) and a Rust toolchain check.
source scripts/packages.sh
# Helm and kubectl for the chart tests (only when missing).
bash scripts/helm.sh

# A one-off build (CI, a fresh machine) gains nothing from incremental state but gigabytes of disk.
if [[ -n ${CI:-} ]]; then export CARGO_INCREMENTAL=0; fi

say "cargo test --workspace"
cargo test --workspace --locked --all-targets
