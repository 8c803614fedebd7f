#!/usr/bin/env bash
# Soak test: a churn meeting (viewers leaving and being replaced all along) against a fresh
# server for SECONDS (default 3600). It fails (exit 1) when the server's resident memory, open
# descriptors or async tasks keep growing after the warm-up, or when the meeting's own SLOs
# fail. CI runs it for 180 s on a debug build: `SOAK_PROFILE=dev bash loadtest/soak.sh 180`.
#
#   bash loadtest/soak.sh [SECONDS]       # release build, one hour
#
# Environment: SOAK_PROFILE (release | dev), SOAK_VIEWERS (40), SOAK_CHURN (2 viewers/s),
# SOAK_RSS_GROWTH_MIB (32), SOAK_FD_GROWTH (40), SOAK_TASK_GROWTH (100), SOAK_REPORT (a JSON
# report path; default: beside the server's data, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-3600}
profile=${SOAK_PROFILE:-release}
viewers=${SOAK_VIEWERS:-40}
churn=${SOAK_CHURN:-2}
target_dir=${CARGO_TARGET_DIR:-target}
# The dev build is `cargo test`'s own (its integration tests need both binaries), so that after
# `cargo test` it compiles nothing (a bin-only build resolves other features and rebuilds ~110
# crates).
case "$profile" in
  release) build=(cargo build --release -p signaling --bin meet-server -p loadtest --bin loadtest); bin_dir="$target_dir/release" ;;
  dev) build=(cargo test --workspace --no-run); bin_dir="$target_dir/debug" ;;
  *) echo "SOAK_PROFILE must be release or dev" >&2; exit 2 ;;
esac
"${build[@]}" --locked

data=$(mktemp -d /tmp/meet-soak-XXXXXX)
report=${SOAK_REPORT:-$data/soak.json}
NO_COLOR=1 "$bin_dir/meet-server" --data-dir "$data" --http-addr 127.0.0.1:0 --media-addr 127.0.0.1:0 \
  --open-rooms --max-connections-per-ip 0 >"$data/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

# The server logs its address once it listens (certificate and metrics token written first).
for _ in $(seq 1 300); do
  addr=$(sed -e 's/\x1b\[[0-9;]*m//g' "$data/server.log" |
    sed -n 's/.*server started http_addr=\(127\.0\.0\.1:[0-9]*\).*/\1/p' | head -n 1)
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$data/server.log"; exit 1; }
  sleep 0.2
done
[ -n "${addr:-}" ] || { echo "the server did not start" >&2; cat "$data/server.log"; exit 1; }

status=0
"$bin_dir/loadtest" churn --url "wss://$addr/ws" --ca-cert "$data/tls/cert.pem" \
  --metrics-token-file "$data/metrics-token" \
  --viewers "$viewers" --churn-rate "$churn" --join-rate 20 --duration "$duration" \
  --slo-loss 0.5 --slo-max-failed "$((viewers / 10))" \
  --slo-rss-growth-mib "${SOAK_RSS_GROWTH_MIB:-32}" \
  --slo-fd-growth "${SOAK_FD_GROWTH:-40}" \
  --slo-task-growth "${SOAK_TASK_GROWTH:-100}" \
  --quiet --json "$report" || status=$?
echo "soak report: $report"
if ! kill -0 "$server" 2>/dev/null; then
  echo "the server died during the soak" >&2
  tail -n 50 "$data/server.log" >&2
  exit 1
fi
exit "$status"
