#!/usr/bin/env bash
# Regenerates the seed corpus (fuzz/corpus/<target>/) from the fuzz targets themselves: each
# target, started with MEET_FUZZ_WRITE_SEEDS=DIR, writes its seeds to DIR/<target>/ and exits.
# Seeds come from real traffic: the load tester's endpoint's offers, Opus and VP8 from its
# media sources, packets whose payload types and extension ids a live negotiation gave, a real
# recording's files. Usage: fuzz/seeds.sh (builds the targets first).
set -euo pipefail
cd "$(dirname "$0")"
source ./env.sh
fuzz_build
bin="$FUZZ_BIN"
while read -r target; do
  # Inputs a crash left (regression-*) stay: they are not generated.
  if [ -d "corpus/$target" ]; then
    find "corpus/$target" -maxdepth 1 -type f ! -name 'regression-*' -delete
  fi
  MEET_FUZZ_WRITE_SEEDS=corpus "$bin/$target" 2>&1 | grep -v '^WARNING: Failed to find function'
done < targets.txt
du -sh corpus
