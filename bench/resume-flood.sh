#!/usr/bin/env bash
# The resume flood (chat-bench resume-flood) against one chat-server alone
# and one on a Redis of its own, with the same flags, ROUNDS times each,
# interleaved: the probe's p50/p99 with no flood and during it, and Redis's
# output per resume. Server and Redis on core 0, the tool on core 1.
#
#   bash bench/resume-flood.sh [ROUNDS] [chat-bench flags...]
#   bash bench/resume-flood.sh 3 --duration 30s --resume-history 10
#
# Prints one summary line per run; the JSON lines go to
# $OUT/resume-flood.jsonl (default target/resume-flood/).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
[ $# -gt 0 ] && shift
out=${OUT:-$PWD/target/resume-flood}
mkdir -p "$out"
results=$out/resume-flood.jsonl
: >"$results"
ulimit -n 20000
cargo build --release -q -p chat-server -p chat-bench
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
server_bin=${OURS_BIN:-$bin/chat-server}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT

run() { # memory|redis, then chat-bench flags
  local mode=$1
  shift
  local port redis_flags=() server_flags=()
  port=$(free_port)
  if [ "$mode" = redis ]; then
    local redis_port
    redis_port=$(free_port)
    taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
      --logfile '' >/dev/null 2>&1 &
    pids+=("$!")
    redis_flags=(--redis-pid "$!" --redis "redis://127.0.0.1:$redis_port")
    for _ in $(seq 1 100); do [ "$(redis-cli -p "$redis_port" PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
    server_flags=(--redis "redis://127.0.0.1:$redis_port")
  fi
  taskset -c 0 "$server_bin" --listen "127.0.0.1:$port" --event-rate 1000000 --event-burst 1000000 \
    --log-level warn "${server_flags[@]}" 2>>"$out/server-$mode.log" &
  local server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  taskset -c 1 "$bin/chat-bench" resume-flood --url "http://127.0.0.1:$port" --pid "$server_pid" \
    "${redis_flags[@]}" --label "$mode" "$@" 2>>"$out/bench.log" | grep '^{' >>"$results"
  cleanup
}

for round in $(seq 1 "$rounds"); do
  for mode in memory redis; do
    echo "round $round: $mode" >&2
    run "$mode" "$@"
  done
done

python3 - "$results" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    base, flood = r["no_flood"]["probe_rtt_ms"], r["flood"]["probe_rtt_ms"]
    text = (f"{r['label']:6} probe p50/p99 {base['p50']}/{base['p99']} -> {flood['p50']}/{flood['p99']} ms"
            f" (p99 {r['probe_p99_ratio']}x); replayed {r['replayed_bytes_per_resume']} B/resume")
    if r.get("redis_output_bytes_per_resume_net") is not None:
        text += (f"; redis {r['redis_output_bytes_per_resume_net']} B/resume"
                 f" ({r['redis_excess_bytes_per_resume']} over the replay),"
                 f" {r['redis_cpu_us_per_resume']} us CPU/resume")
    print(text)
PY
