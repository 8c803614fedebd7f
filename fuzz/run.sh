#!/usr/bin/env bash
# Builds every fuzz target once and runs each for SECONDS_PER_TARGET seconds (default 20),
# starting from the committed seed corpus (fuzz/corpus/<target>/, never written to: new
# inputs go to a temporary working corpus). Exits non-zero if any target crashed, leaked,
# hung on one input or ran out of memory; the reproducers are in fuzz/artifacts/<target>/,
# each target's log in fuzz/artifacts/logs/.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs only the Rust toolchain and a C++ compiler (libFuzzer is built from source by
# libfuzzer-sys); see env.sh for the build. Targets run FUZZ_JOBS at a time (default: the
# number of CPUs). FUZZ_TARGET_DIR: where to build (see env.sh).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < targets.txt
fi
source ./env.sh
jobs="${FUZZ_JOBS:-$(nproc)}"

start=$(date +%s)
fuzz_build
built=$(date +%s)
echo "fuzz: built the targets in $((built - start)) s"

bin="$FUZZ_BIN"
mkdir -p artifacts/logs
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The recorder's targets write a directory per input: memory is faster than a disk.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi

run_one() {
  local target="$1"
  mkdir -p "$work/corpus/$target" "artifacts/$target"
  # The first corpus directory receives new inputs; the committed seeds are only read.
  "$bin/$target" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
    "$work/corpus/$target" "corpus/$target" >"artifacts/logs/$target.log" 2>&1
}

failed=()
running=0
pids=()
names=()
for target in "${targets[@]}"; do
  run_one "$target" &
  pids+=($!)
  names+=("$target")
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait "${pids[0]}" || failed+=("${names[0]}")
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
    running=$((running - 1))
  fi
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed+=("${names[$i]}")
done

printf '%-18s %10s %8s %8s %s\n' target execs exec/s cov result
for target in "${targets[@]}"; do
  log="artifacts/logs/$target.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)
  result=ok
  for f in "${failed[@]:-}"; do
    if [ "$f" = "$target" ]; then result=FAILED; fi
  done
  printf '%-18s %10s %8s %8s %s\n' "$target" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$result"
done
echo "fuzz: ran ${#targets[@]} targets for ${seconds} s each in $(($(date +%s) - built)) s"

if [ "${#failed[@]}" -gt 0 ]; then
  for target in "${failed[@]}"; do
    echo "==== $target failed; the end of its log:" >&2
    tail -n 60 "artifacts/logs/$target.log" >&2
    echo "reproducers: $(ls "artifacts/$target/" 2>/dev/null | tr '\n' ' ')" >&2
    echo "reproduce: (cd fuzz && $bin/$target artifacts/$target/<file>)" >&2
  done
  exit 1
fi
