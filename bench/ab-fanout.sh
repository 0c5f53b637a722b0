#!/usr/bin/env bash
# A/B of the standard fan-out (10 rooms of 100 members, 5 senders each at
# 6 msgs/s: 30,000 deliveries/s for 10 s) between two chat-server binaries,
# history on, one process alone and two processes on a Redis of their own,
# in interleaved rounds, so the machine's noise falls on both alike. Prints
# each run's server CPU per delivery (and Redis's CPU per message) and the
# medians, and writes the JSON lines to $OUT/ab-fanout.jsonl.
#
#   bash bench/ab-fanout.sh OLD_BIN NEW_BIN [ROUNDS]     # default 3 rounds
#
# MODES picks the runs (default "local redis"); "redis-tls" is the redis run
# with both processes on rediss:// (Redis also listens with TLS, on a
# certificate of tls/gencert.sh): `MODES="redis redis-tls" bash
# bench/ab-fanout.sh BIN BIN` prices TLS to Redis against plain.
#
# Servers and Redis on core 0, chat-bench on core 1, as in run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN [ROUNDS]" >&2; exit 2; }
bins=("$1" "$2")
names=(A B)
rounds=${3:-3}
modes=${MODES:-local redis}
out=${OUT:-$PWD/target/ab-fanout}
mkdir -p "$out"
results=$out/ab-fanout.jsonl
: >"$results"
ulimit -n 20000
cargo build --release -q -p chat-bench
bench_bin=${CARGO_TARGET_DIR:-$PWD/target}/release/chat-bench
server_cpu=(taskset -c 0)
client_cpu=(taskset -c 1)

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
healthy() { curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; }
wait_healthy() {
  for _ in $(seq 1 100); do healthy "$1" && return 0; sleep 0.1; done
  echo "ab-fanout: the server on $1 never became healthy" >&2
  return 1
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT

run() { # label bin mode(local|redis|redis-tls)
  local label=$1 bin=$2 mode=$3 redis_port='' redis_pid=''
  local urls=() pid_flags=() extra=() tls=()
  if [ "$mode" != local ]; then
    redis_port=$(free_port)
    if [ "$mode" = redis-tls ]; then
      local tls_port
      tls_port=$(free_port)
      [ -f "$out/tls/cert.pem" ] || bash tls/gencert.sh "$out/tls" >/dev/null
      tls=(--tls-port "$tls_port" --tls-cert-file "$out/tls/cert.pem"
        --tls-key-file "$out/tls/key.pem" --tls-ca-cert-file "$out/tls/cert.pem"
        --tls-auth-clients no)
      extra=(--redis "rediss://127.0.0.1:$tls_port" --redis-ca "$out/tls/cert.pem")
    else
      extra=(--redis "redis://127.0.0.1:$redis_port")
    fi
    # The load tool counts through the plain port either way.
    "${server_cpu[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
      --appendonly no --logfile '' ${tls[@]+"${tls[@]}"} >/dev/null 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    for _ in $(seq 1 100); do [ "$(redis-cli -p "$redis_port" PING 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  fi
  local count=1
  [ "$mode" != local ] && count=2
  for _ in $(seq 1 "$count"); do
    local port
    port=$(free_port)
    "${server_cpu[@]}" "$bin" --listen "127.0.0.1:$port" --max-connections-per-ip 0 \
      --log-level warn "${extra[@]}" 2>>"$out/server-$label-$mode.log" &
    pids+=("$!")
    pid_flags+=(--pid "$!")
    urls+=(--url "http://127.0.0.1:$port")
    wait_healthy "$port"
  done
  local redis_flags=()
  [ -n "$redis_pid" ] && redis_flags=(--redis-pid "$redis_pid" --redis "redis://127.0.0.1:$redis_port")
  "${client_cpu[@]}" "$bench_bin" fanout --rooms 10 --members 100 --senders 5 --rate 6 \
    --duration 10s "${urls[@]}" "${pid_flags[@]}" "${redis_flags[@]}" --label "$label-$mode" \
    2>>"$out/bench.log" | grep '^{' >>"$results"
  cleanup
}

for round in $(seq 1 "$rounds"); do
  for mode in $modes; do
    for i in 0 1; do
      echo "round $round: ${names[$i]} ($mode)" >&2
      run "${names[$i]}" "${bins[$i]}" "$mode"
    done
  done
done

python3 - "$results" "${bins[@]}" $modes <<'PY'
import json, statistics, sys
path, a, b = sys.argv[1:4]
modes = sys.argv[4:]
rows = [json.loads(line) for line in open(path)]
def field(row, key):
    step = row.get("step", {})
    return step.get(key, row.get(key))
print(f"A = {a}\nB = {b}")
by_mode = {}
for mode in modes:
    med = {}
    for who in ("A", "B"):
        runs = [r for r in rows if r.get("label") == f"{who}-{mode}"]
        cpu = [field(r, "server_cpu_us_per_delivery") for r in runs]
        rcpu = [field(r, "redis_cpu_us_per_message") for r in runs]
        cpu = [c for c in cpu if c is not None]
        rcpu = [c for c in rcpu if c is not None]
        med[who] = statistics.median(cpu) if cpu else float("nan")
        extra = f", redis us/message {statistics.median(rcpu):.2f} {rcpu}" if rcpu else ""
        print(f"{mode:5} {who}: server us/delivery median {med[who]:.2f} {cpu}{extra}")
    print(f"{mode:5} B/A: {med['B'] / med['A']:.3f}")
    by_mode[mode] = med
if "redis" in by_mode and "redis-tls" in by_mode:
    for who in ("A", "B"):
        ratio = by_mode["redis-tls"][who] / by_mode["redis"][who]
        print(f"{who}: server us/delivery, TLS to Redis / plain: {ratio:.3f}")
PY
