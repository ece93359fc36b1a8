#!/usr/bin/env bash
# Runs every fuzz target under cargo-fuzz (libFuzzer, nightly) for FUZZ_SECONDS each (600 by
# default), FUZZ_JOBS at a time (the number of cores by default). Installs cargo-fuzz when
# missing. A crash stops the run with the target's name and the input under
# fuzz/artifacts/<target>/; the corpora grow under fuzz/corpus/<target>/ between runs.
#
#   scripts/fuzz.sh                      # all targets, 10 minutes each
#   FUZZ_SECONDS=60 scripts/fuzz.sh path_normalization
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-600}
jobs=${FUZZ_JOBS:-$(nproc)}
rustup toolchain list | grep -q '^nightly' || { echo "error: the nightly toolchain is needed (rustup toolchain install nightly)" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi
# Seeds: inputs the unit tests found interesting, so the fuzzer starts near the edges.
mkdir -p fuzz/corpus/path_normalization fuzz/corpus/hbone_connect
i=0
for seed in '/public/../admin' '/./admin' '/%61dmin' '//admin' '/a%2f%2e%2e/b?x=/../y' '\admin' '/a%00b' '*'; do
  printf '%s' "$seed" > "fuzz/corpus/path_normalization/seed-$i"; i=$((i + 1))
done
printf '10.0.0.1:8080\nk8s.namespace.name=shop,service.name=web' > fuzz/corpus/hbone_connect/seed-0
printf '[fd00::1]:15008\nk8s.cluster.name=c' > fuzz/corpus/hbone_connect/seed-1

for target in "${targets[@]}"; do
  cargo +nightly fuzz build --fuzz-dir fuzz "$target"
done
run() {
  local target=$1
  mkdir -p "fuzz/corpus/$target"
  echo "==> fuzzing $target for ${seconds}s"
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 > "fuzz/$target.log" 2>&1; then
    echo "FAILED: $target (input in fuzz/artifacts/$target/, log in fuzz/$target.log)" >&2
    tail -40 "fuzz/$target.log" >&2
    return 1
  fi
  grep -E '^stat::number_of_executed_units|^#[0-9]+ *DONE' "fuzz/$target.log" | sed "s/^/  $target: /"
}
status=0
pids=()
for target in "${targets[@]}"; do
  run "$target" & pids+=($!)
  if ((${#pids[@]} >= jobs)); then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
