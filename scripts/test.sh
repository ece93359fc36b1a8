#!/usr/bin/env bash
# Runs every Ambit test on a fresh Debian machine (as root), installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

# System packages (only when missing, so reruns are quick) and a Rust toolchain check.
source scripts/packages.sh

say "cargo test --workspace"
cargo test --workspace --locked --all-targets
