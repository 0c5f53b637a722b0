#!/usr/bin/env bash
# The standard benchmark run: chat-server ("ours") against three others, each
# server pinned to core 0 and the load tool (chat-bench) to core 1:
#   go     the Go gorilla/websocket tutorial server (bench/peers/go-gorilla)
#   tokio  the idiomatic Rust one, axum + tokio + a broadcast channel per room
#          (bench/peers/rust-tokio), its runtime as users build it
#   floor  the least a mio server must do per delivery (bench/floor)
# Writes bench/results/REPORT.md, latency.png and the raw JSON lines
# (results.jsonl); the load tool's tables go to results/logs/.
#
#   bash bench/run.sh                 # the standard set, about 12-15 minutes
#   QUICK=1 bash bench/run.sh         # a scaled-down pass to try the script
#
# Environment: OUT (results dir), CARGO_TARGET_DIR, SKIP_INSTALL=1 (no apt-get),
# SERVERS (which to run, default "ours go tokio floor"), OURS_BIN (a chat-server
# binary to measure instead of building this tree's, e.g. an older commit's),
# SERVER_MEM_LIMIT_KIB (address-space cap per server, default 8 GiB: a runaway
# server fails its run instead of taking the machine down).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bench=$root/bench
target=${CARGO_TARGET_DIR:-$root/target}
out=${OUT:-$bench/results}
quick=${QUICK:-0}
mem_limit=${SERVER_MEM_LIMIT_KIB:-8388608}

# ---- the standard set ----
rooms=10
members=100
senders=5
fanout_rate=6          # msgs/s per sender: 50 senders -> 300 msgs/s -> 30,000 deliveries/s
fanout_time=10s
write_delays="50ms 100ms" # the same fanout again, ours with each --write-delay: CPU vs latency
fanout_rounds=3        # each fanout runs this often; the report takes the median
ramp_start=5           # msgs/s per sender; x1.5 per step
ramp_step=4s
ramp_batch=4           # a ramp bound by the load tool runs again with this many messages per client write
idle_conns=10000
idle_big=19000         # ours and tokio: connections held
idle_hold=10s          # with pings every 2s: about 5 heartbeat rounds
servers=${SERVERS:-"ours go tokio floor"}
if [ "$quick" = 1 ]; then
  rooms=4 members=25 fanout_time=3s fanout_rounds=1 ramp_step=1s idle_conns=500 idle_big=1000 idle_hold=5s ramp_start=20
fi

log() { printf '\n=== %s\n' "$*" >&2; }

# ---- prerequisites ----
ulimit -n 20000 || { echo "run.sh: cannot raise the file limit to 20000 (ulimit -n)" >&2; exit 1; }
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  need=()
  command -v go >/dev/null || need+=(golang-go)
  [ -d /usr/share/gocode/src/github.com/gorilla/websocket ] || need+=(golang-github-gorilla-websocket-dev)
  command -v gnuplot >/dev/null || need+=(gnuplot-nox)
  command -v taskset >/dev/null || need+=(util-linux)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${need[@]}" >&2
  fi
fi
command -v python3 >/dev/null || { echo "run.sh: python3 is needed for the report" >&2; exit 1; }

if [ "$(nproc)" -ge 2 ]; then
  server_cpu=(taskset -c 0)
  client_cpu=(taskset -c 1)
else
  echo "run.sh: fewer than 2 cores; running unpinned (numbers will not be comparable)" >&2
  server_cpu=()
  client_cpu=()
fi

# ---- build ----
log "building chat-server and chat-bench (release)"
cargo build --release -q -p chat-server -p chat-bench
ours_bin=${OURS_BIN:-$target/release/chat-server}
bench_bin=$target/release/chat-bench
go_bin=$target/go-gorilla-chat
log "building the Go baseline (GOPATH mode, Debian's gorilla/websocket)"
if [[ " $servers " == *" go "* ]]; then
  (cd "$bench/peers/go-gorilla" &&
    GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOCACHE=${GOCACHE:-$target/go-cache} \
      go build -o "$go_bin" .)
fi
# The Rust peer and the floor are crates of their own (not workspace members),
# built from their committed Cargo.lock into target/peers.
log "building the tokio peer and the floor (release)"
for crate in peers/rust-tokio floor; do
  case " $servers " in
    *" ${crate#peers/rust-} "*) ;;
    *) continue ;;
  esac
  cargo build --release -q --locked --manifest-path "$bench/$crate/Cargo.toml" --target-dir "$target/peers"
done
tokio_bin=$target/peers/release/chat-tokio
floor_bin=$target/peers/release/chat-floor

# Flags chat-server may or may not have yet: passed only if --help lists them.
ours_flags=()
ours_ramp_flags=()
ours_help=$("$ours_bin" --help 2>&1 || true)
if grep -q -- '--max-connections-per-ip' <<<"$ours_help"; then
  ours_flags+=(--max-connections-per-ip 0) # every bench connection comes from 127.0.0.1
fi
if grep -q -- '--event-rate' <<<"$ours_help"; then
  # The ramp measures raw throughput, not the per-connection abuse limit.
  ours_ramp_flags+=(--event-rate 1000000 --event-burst 1000000)
fi

mkdir -p "$out/logs"
results=$out/results.jsonl
: >"$results"

# ---- servers ----
port=18600
server_pid=
server_name=

start_server() { # ours|go|tokio|floor, then extra flags
  local kind=$1
  shift
  port=$((port + 1)) # a fresh port per run: no TIME_WAIT left over from the last one
  local logfile=$out/logs/server-$kind-$port.log
  local cmd
  case $kind in
    ours)
      cmd=("$ours_bin" --listen "127.0.0.1:$port" --www "$root/www" --log-level warn --max-connections 19500
        --max-queue 1048576 ${ours_flags[@]+"${ours_flags[@]}"} "$@")
      ;;
    go) cmd=("$go_bin" --listen "127.0.0.1:$port" --www "$root/www" "$@") ;;
    tokio) cmd=("$tokio_bin" --listen "127.0.0.1:$port" --www "$root/www" "$@") ;;
    floor) cmd=("$floor_bin" --listen "127.0.0.1:$port" "$@") ;;
    *)
      echo "run.sh: unknown server $kind" >&2
      return 1
      ;;
  esac
  (ulimit -v "$mem_limit" && exec "${server_cpu[@]}" "${cmd[@]}") 2>"$logfile" &
  server_pid=$!
  server_name=$kind
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "run.sh: $kind server did not start; see $logfile" >&2
  return 1
}

stop_server() {
  if [ -n "$server_pid" ]; then
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "run.sh: the $server_name server (pid $server_pid) was already gone" >&2
      echo "{\"scenario\":\"server-died\",\"label\":\"$server_name\",\"port\":$port}" >>"$results"
    fi
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=
}
trap 'stop_server' EXIT

# Runs one scenario against the running server; its JSON line goes to results.jsonl.
bench() { # name scenario flags...
  local name=$1
  shift
  local status=0
  "${client_cpu[@]}" "$bench_bin" "$@" --url "http://127.0.0.1:$port" --pid "$server_pid" --label "$server_name" \
    >"$out/logs/$name.json" 2> >(tee "$out/logs/$name.txt" >&2) || status=$?
  if grep -q '^{' "$out/logs/$name.json"; then
    grep '^{' "$out/logs/$name.json" >>"$results"
  else
    echo "{\"scenario\":\"$1\",\"label\":\"$server_name\",\"failed\":true,\"exit\":$status}" >>"$results"
  fi
  [ "$status" -eq 0 ] || echo "run.sh: $name exited $status (kept in the report)" >&2
}

fanout_flags=(--rooms "$rooms" --members "$members" --senders "$senders")

# The fixed-rate fanout is short and the machine noisy: it runs in rounds, the
# servers taking turns, and the report takes each one's median.
read -r -a fanout_kinds <<<"$servers"
for delay in $write_delays; do
  fanout_kinds+=("ours-write-delay-$delay")
done
for round in $(seq 1 "$fanout_rounds"); do
  for kind in "${fanout_kinds[@]}"; do
    log "$kind: fanout at $fanout_rate msgs/s per sender (round $round of $fanout_rounds)"
    case $kind in
      ours-write-delay-*)
        start_server ours --write-delay "${kind#ours-write-delay-}"
        server_name=$kind
        ;;
      *) start_server "$kind" ;;
    esac
    bench "$kind-fanout-$round" fanout "${fanout_flags[@]}" --rate "$fanout_rate" --duration "$fanout_time" \
      --warmup 2s
    stop_server
  done
done

# True if a ramp's JSON line says its first failing step was bound by the load tool.
tool_bound() {
  python3 -c 'import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
sys.exit(0 if rows and rows[0].get("bound_by") == "load tool" else 1)' "$1" 2>/dev/null
}

ramp_flags=("${fanout_flags[@]}" --start-rate "$ramp_start" --factor 1.5 --step "$ramp_step" --p99 50ms
  --min-delivery 0.999 --refine 2)
for kind in $servers; do
  extra=()
  [ "$kind" = ours ] && extra=(${ours_ramp_flags[@]+"${ours_ramp_flags[@]}"})
  log "$kind: ramp"
  start_server "$kind" ${extra[@]+"${extra[@]}"}
  bench "$kind-ramp" ramp "${ramp_flags[@]}"
  stop_server
  # Two load processes would only share core 1 (or take the server's core 0):
  # when the tool's core is what stopped the ramp, the tool spends less per
  # message instead, several messages per client write, and both ramps are kept.
  if tool_bound "$out/logs/$kind-ramp.json"; then
    log "$kind: the ramp was bound by the load tool; again with $ramp_batch messages per client write"
    start_server "$kind" ${extra[@]+"${extra[@]}"}
    bench "$kind-ramp-batch-$ramp_batch" ramp "${ramp_flags[@]}" --batch "$ramp_batch"
    stop_server
  fi

  log "$kind: idle, $idle_conns connections"
  heartbeat=(--ping-interval 2s --pong-wait 3s)
  [ "$kind" = floor ] && heartbeat=() # the floor never pings
  start_server "$kind" ${heartbeat[@]+"${heartbeat[@]}"}
  bench "$kind-idle-$idle_conns" idle --connections "$idle_conns" --hold "$idle_hold"
  stop_server
done

for kind in ours tokio; do
  [[ " $servers " == *" $kind "* ]] || continue
  log "$kind: idle, $idle_big connections"
  start_server "$kind" --ping-interval 2s --pong-wait 3s
  bench "$kind-idle-$idle_big" idle --connections "$idle_big" --hold "$idle_hold"
  stop_server
done

# ---- report ----
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet HEAD -- src 2>/dev/null || echo '+dirty src')"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cores=$(nproc)"
  echo "kernel=$(uname -r)"
  echo "rustc=$(rustc --version)"
  echo "go=$(go version | cut -d' ' -f3)"
  echo "gorilla=$(dpkg-query -W -f '${Version}' golang-github-gorilla-websocket-dev 2>/dev/null || echo unknown)"
  lock=$bench/peers/rust-tokio/Cargo.lock
  echo "axum=$(grep -A1 '^name = "axum"$' "$lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
  echo "tokio=$(grep -A1 '^name = "tokio"$' "$lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
  echo "ours_flags=${ours_flags[*]-}"
  echo "ours_ramp_flags=${ours_ramp_flags[*]-}"
  echo "quick=$quick"
} >"$out/env.txt"
python3 "$bench/report.py" "$out"
if command -v gnuplot >/dev/null && [ -f "$out/latency.gp" ]; then
  gnuplot "$out/latency.gp"
fi
log "report: $out/REPORT.md"
