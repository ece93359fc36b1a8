#!/usr/bin/env bash
# Runs every Ambit test on a fresh Debian machine (as root), installing what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

# System packages the tests use. Installed only when missing, so reruns are quick.
# (gcc builds aws-lc's C code; iproute2, iptables and util-linux (nsenter) are for the
# network-namespace tests, which run as root; tcpdump checks what crosses the node link.)
PACKAGES=(gcc make iproute2 iptables procps util-linux tcpdump)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: missing packages ${missing[*]} and not root; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "error: cargo not found; install the Rust toolchain (rustup)" >&2; exit 1; }

say "cargo test --workspace"
cargo test --workspace --locked --all-targets
