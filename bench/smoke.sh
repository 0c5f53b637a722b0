#!/usr/bin/env bash
# CI smoke test of the load tool: builds chat-server and chat-bench (debug),
# starts a server on an ephemeral port and runs a seconds-long fanout, ramp and
# idle against it. No timing is asserted; a scenario fails the smoke if it
# reports errors, delivers nothing, or its output is not one JSON line.
# Needs only cargo (no Go, no taskset). Takes well under a minute once built.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/debug

cargo build -q -p chat-server -p chat-bench

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Short heartbeats so the idle scenario sees a few rounds in seconds; the
# ramp sends faster than a person, so the per-client event budget is lifted.
"$bin/chat-server" --listen 127.0.0.1:0 --www "$root/www" --log-level info \
  --ping-interval 1s --pong-wait 2s --event-rate 1000000 --event-burst 1000000 \
  2>"$work/server.log" &
server_pid=$!

addr=
for _ in $(seq 1 100); do
  addr=$(sed -n 's|.*listening on http://\([0-9.:]*\).*|\1|p' "$work/server.log" | head -n1)
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "smoke: the server did not report its address" >&2
  cat "$work/server.log" >&2
  exit 1
fi
echo "smoke: server pid $server_pid on $addr"
common=(--url "http://$addr" --pid "$server_pid" --label smoke)

passed=0
failed=0
run() {
  local name=$1
  shift
  local status=0
  "$bin/chat-bench" "$name" "${common[@]}" "$@" >"$work/$name.json" 2>"$work/$name.txt" || status=$?
  local lines
  lines=$(grep -c '^{.*}$' "$work/$name.json" || true)
  if [ "$status" -eq 0 ] && [ "$lines" -eq 1 ]; then
    passed=$((passed + 1))
    echo "smoke: $name ok"
  else
    failed=$((failed + 1))
    echo "smoke: $name FAILED (exit $status)" >&2
    cat "$work/$name.txt" "$work/$name.json" >&2
  fi
}

run fanout --rooms 2 --members 5 --senders 2 --rate 20 --duration 2s --warmup 500ms --drain 3s
run ramp --rooms 2 --members 5 --senders 1 --start-rate 20 --factor 2 --step 1s \
  --max-steps 3 --refine 0 --warmup 200ms --drain 2s --p99 10s
run idle --connections 50 --hold 3s

# The server must still be up and must shut down cleanly.
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "smoke: the server died during the run" >&2
  tail -n 20 "$work/server.log" >&2
  failed=$((failed + 1))
else
  kill -TERM "$server_pid"
  wait "$server_pid" || { echo "smoke: server exit status $? on SIGTERM" >&2; failed=$((failed + 1)); }
  server_pid=
fi

echo "smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
