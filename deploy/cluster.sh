#!/usr/bin/env bash
# A cluster on this machine: nats-server (JetStream on) and NODES meet-server nodes (default 3)
# sharing one database and one cluster secret, on https://127.0.0.1:8443, :8444, … with media
# on UDP 10000, 10001, …. Ctrl-C stops them all. See docs/cluster.md.
#
#   bash deploy/cluster.sh [NODES]
#
# MEET_SERVER: the binary (default target/release/meet-server, else target/debug/meet-server).
# MEET_DATABASE_URL: a shared PostgreSQL, as nodes on several machines need (default: one
# SQLite file in the state directory, which nodes on one machine can share).
# CLUSTER_DIR: the state directory (default ./data-cluster). NATS_PORT (default 4222).
set -euo pipefail
nodes="${1:-3}"
dir="${CLUSTER_DIR:-data-cluster}"
nats_port="${NATS_PORT:-4222}"
bin="${MEET_SERVER:-}"
if [ -z "$bin" ]; then
  for candidate in target/release/meet-server target/debug/meet-server; do
    if [ -x "$candidate" ]; then bin="$candidate"; break; fi
  done
fi
if [ -z "$bin" ]; then
  echo "build the server first: cargo build --release -p signaling --bin meet-server" >&2
  exit 1
fi
nats="$(command -v nats-server || true)"
[ -n "$nats" ] || [ ! -x /usr/sbin/nats-server ] || nats=/usr/sbin/nats-server
if [ -z "$nats" ]; then
  echo "nats-server is missing: apt-get install nats-server" >&2
  exit 1
fi

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ ! -s "$dir/cluster.secret" ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/cluster.secret")
fi
database="${MEET_DATABASE_URL:-sqlite://$dir/meet.db}"

pids=()
stop() {
  trap - EXIT INT TERM
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait
}
trap stop EXIT INT TERM

# Waits until something listens on TCP 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

"$nats" -a 127.0.0.1 -p "$nats_port" -js -sd "$dir/nats" >"$dir/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats_port"

for i in $(seq 0 $((nodes - 1))); do
  "$bin" --data-dir "$dir/node-$i" --database-url "$database" \
    --http-addr "127.0.0.1:$((8443 + i))" --media-addr "127.0.0.1:$((10000 + i))" \
    --links-addr "127.0.0.1:$((11000 + i))" \
    --cluster "nats://127.0.0.1:$nats_port" --cluster-secret-file "$dir/cluster.secret" \
    --node-id "node-$i" >"$dir/node-$i.log" 2>&1 &
  pids+=($!)
  # One after another: the first creates the database the others open.
  wait_port "$((8443 + i))"
  echo "node-$i: https://127.0.0.1:$((8443 + i))  (log: $dir/node-$i.log)"
done
echo "an administrator: $bin admin create --data-dir $dir/node-0 --database-url $database --username admin --display-name Admin"
echo "Ctrl-C stops the cluster."
wait -n
