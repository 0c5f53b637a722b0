#!/usr/bin/env bash
# The standard benchmark run: chat-server ("ours") against three others, each
# server pinned to core 0 and the load tool (chat-bench) to core 1:
#   go     the Go gorilla/websocket tutorial server (bench/peers/go-gorilla)
#   tokio  the idiomatic Rust one, axum + tokio + a broadcast channel per room
#          (bench/peers/rust-tokio), its runtime as users build it
#   floor  the least a mio server must do per delivery (bench/floor)
# and ours scaled out:
#   ours-redis  two chat-server processes sharing a redis-server of the run's
#               own (--redis), all three pinned to core 0 like the one process
#               they are compared with: what the Redis path costs on equal
#               hardware (see bench/README.md for why this split of the cores)
# and ours against itself: with history off (--history 0) in the fixed-rate
# fanout, and restarted under 19,000 clients who come back with their
# sessions, then with passwords (the reconnect scenario); and the failover
# row (bench/failover.sh): two processes on a Redis master, a replica and
# three Sentinels, the master killed under 1,000 members' chat; and the
# presence rows (bench/presence.sh): the fan-out with every member watching
# its room's presence against none, and the join storm; and the server API
# row (bench/api.sh): the fan-out's messages posted through the API against
# the same messages sent by members; and the TLS row (bench/tls.sh): idle
# bytes per WSS connection, fan-out CPU per delivery and session reconnects
# over TLS against plain.
# Writes bench/results/REPORT.md, latency.png and the raw JSON lines
# (results.jsonl); the load tool's tables go to results/logs/.
#
#   bash bench/run.sh                 # the standard set, about 15-20 minutes
#   QUICK=1 bash bench/run.sh         # a scaled-down pass to try the script
#
# Environment: OUT (results dir), CARGO_TARGET_DIR, SKIP_INSTALL=1 (no apt-get),
# SERVERS (which to run, default "ours ours-redis go tokio floor"), OURS_BIN (a chat-server
# binary to measure instead of building this tree's, e.g. an older commit's),
# SERVER_MEM_LIMIT_KIB (address-space cap per server, default 8 GiB: a runaway
# server fails its run instead of taking the machine down), FAILOVER (1: run
# the failover row, 0: skip it; default: run it when redis-server and redis-cli
# are installed, so Sentinel is, and chat-server has --redis-sentinel),
# PRESENCE (1: run the presence rows, 0: skip them; default: run them when
# chat-server has --presence-max-users), API (1: run the server API row, 0:
# skip it; default: run it when chat-server has --api-key), TLS (1: run the
# TLS row, 0: skip it; default: run it when openssl is installed).
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
history_off=1          # and ours with --history 0 (ours-no-history): what keeping history costs
no_ping=1              # and ours with no ping during the run (ours-no-ping): what the heartbeat costs
floor_ping=1           # and the floor with ours' 9 s heartbeat (floor-ping): the same, seen on the floor
fanout_rounds=3        # each fanout runs this often; the report takes the median
ramp_start=5           # msgs/s per sender; x1.5 per step
ramp_step=4s
ramp_batch=4           # a ramp bound by the load tool runs again with this many messages per client write
idle_conns=10000
idle_big=19000         # ours and tokio: connections held
idle_hold=10s          # with pings every 2s: about 5 heartbeat rounds
redis_procs=2          # ours-redis: chat-server processes on one Redis
reconnect_conns=19000  # ours restarted under this many clients in rooms ...
reconnect_members=100  # ... of this many each
reconnect_via=session,password # coming back with their sessions, then (another restart) with passwords
servers=${SERVERS:-"ours ours-redis go tokio floor"}
failover=${FAILOVER:-auto} # the failover row (bench/failover.sh)
presence=${PRESENCE:-auto} # the presence rows (bench/presence.sh)
api=${API:-auto}           # the server API row (bench/api.sh)
tls=${TLS:-auto}           # the TLS row (bench/tls.sh)
if [ "$quick" = 1 ]; then
  rooms=4 members=25 fanout_time=3s fanout_rounds=1 ramp_step=1s idle_conns=500 idle_big=1000 idle_hold=5s ramp_start=20
  reconnect_conns=300
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
  if [[ " $servers " == *" ours-redis "* ]] || [ "$failover" = 1 ]; then
    command -v redis-server >/dev/null || need+=(redis-server)
    command -v redis-cli >/dev/null || need+=(redis-tools)
  fi
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
grep -q -- '--history ' <<<"$ours_help" || history_off=0
grep -q -- '--ping-interval' <<<"$ours_help" || no_ping=0
reconnect=1
if [[ " $servers " != *" ours "* ]]; then
  reconnect=0
elif ! grep -q -- '--session-key' <<<"$ours_help"; then
  echo "run.sh: $ours_bin has no --session-key; the reconnect run is left out" >&2
  reconnect=0
fi
# The failover row needs Sentinel (redis-server --sentinel, in every
# redis-server) and chat-server's --redis-sentinel; by default it runs when
# both are there, and FAILOVER=1 insists.
if [ "$failover" = auto ]; then
  failover=0
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null &&
    grep -q -- '--redis-sentinel' <<<"$ours_help"; then
    failover=1
  fi
  [ "$failover" = 1 ] || echo "run.sh: no redis-server or no --redis-sentinel; the failover row is left out" >&2
fi
# The presence rows need a chat-server that speaks presence.
if [ "$presence" = auto ]; then
  presence=0
  grep -q -- '--presence-max-users' <<<"$ours_help" && presence=1
  [ "$presence" = 1 ] || echo "run.sh: $ours_bin has no --presence-max-users; the presence rows are left out" >&2
fi
# The server API row needs a chat-server with the API.
if [ "$api" = auto ]; then
  api=0
  grep -q -- '--api-key' <<<"$ours_help" && api=1
  [ "$api" = 1 ] || echo "run.sh: $ours_bin has no --api-key; the server API row is left out" >&2
fi
# The TLS row needs openssl for its certificate (tls/gencert.sh).
if [ "$tls" = auto ]; then
  tls=0
  command -v openssl >/dev/null && tls=1
  [ "$tls" = 1 ] || echo "run.sh: no openssl; the TLS row is left out" >&2
fi
if [[ " $servers " == *" ours-redis "* ]] && ! grep -q -- '--redis-prefix' <<<"$ours_help"; then
  echo "run.sh: $ours_bin has no --redis; ours-redis is left out" >&2
  servers=${servers//ours-redis/}
fi

mkdir -p "$out/logs"
results=$out/results.jsonl
: >"$results"

# ---- servers ----
port=18600
server_pids=()  # one process, or ours-redis's processes
server_ports=()
server_name=
fixed_port= # start_server: this port instead of a fresh one (a restart)
pid_file=   # start_server: write each PID here as soon as it is started
redis_pid=
redis_port=
redis_runs=0

# ours-redis's Redis: one redis-server for the whole run, on a free port, on
# the servers' core, persistence off; every ours-redis run gets a key prefix
# of its own, so no room counter or OTP carries over from one run to the next.
start_redis() {
  redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local logfile=$out/logs/redis-$redis_port.log
  (exec "${server_cpu[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile '') >"$logfile" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do
    if [ "$(redis-cli -p "$redis_port" PING 2>/dev/null)" = PONG ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "run.sh: redis-server did not start; see $logfile" >&2
  return 1
}

stop_redis() {
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  redis_pid=
}

# A chat-server with --redis takes logins only once both its Redis links are up.
healthy() { # port
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" >&3
    IFS= read -r -t 2 status <&3
    [[ $status == "HTTP/1.1 200"* ]]
  ) 2>/dev/null
}

start_server() { # ours|ours-redis|go|tokio|floor, then extra flags (for each process)
  local kind=$1
  shift
  server_pids=()
  server_ports=()
  server_name=$kind
  local count=1 prefix=''
  if [ "$kind" = ours-redis ]; then
    count=$redis_procs
    redis_runs=$((redis_runs + 1))
    prefix="bench-$$-$redis_runs:"
  fi
  local i
  for i in $(seq 1 "$count"); do
    local logfile this_port
    if [ -n "$fixed_port" ]; then
      this_port=$fixed_port
      logfile=$out/logs/server-$kind-$fixed_port-restarted-$(date +%s%N).log
    else
      port=$((port + 1)) # a fresh port per run: no TIME_WAIT left over from the last one
      this_port=$port
      logfile=$out/logs/server-$kind-$port.log
    fi
    local cmd
    case $kind in
      ours | ours-redis)
        cmd=("$ours_bin" --listen "127.0.0.1:$this_port" --www "$root/www" --log-level warn --max-connections 19500
          --max-queue 1048576 ${ours_flags[@]+"${ours_flags[@]}"})
        [ "$kind" = ours-redis ] && cmd+=(--redis "redis://127.0.0.1:$redis_port" --redis-prefix "$prefix")
        cmd+=("$@")
        ;;
      go) cmd=("$go_bin" --listen "127.0.0.1:$this_port" --www "$root/www" "$@") ;;
      tokio) cmd=("$tokio_bin" --listen "127.0.0.1:$this_port" --www "$root/www" "$@") ;;
      floor) cmd=("$floor_bin" --listen "127.0.0.1:$this_port" "$@") ;;
      *)
        echo "run.sh: unknown server $kind" >&2
        return 1
        ;;
    esac
    (ulimit -v "$mem_limit" && exec "${server_cpu[@]}" "${cmd[@]}") 2>"$logfile" &
    server_pids+=($!)
    server_ports+=("$this_port")
    [ -z "$pid_file" ] || echo "$!" >"$pid_file"
  done
  local ready
  for i in "${!server_ports[@]}"; do
    ready=0
    for _ in $(seq 1 100); do
      if [ "$kind" = ours-redis ]; then
        healthy "${server_ports[$i]}" && ready=1
      elif (exec 3<>"/dev/tcp/127.0.0.1/${server_ports[$i]}") 2>/dev/null; then
        ready=1
      fi
      [ "$ready" = 1 ] && break
      sleep 0.1
    done
    if [ "$ready" != 1 ]; then
      echo "run.sh: $kind server on port ${server_ports[$i]} did not start; see $out/logs/" >&2
      return 1
    fi
  done
}

stop_server() {
  local i pid
  for i in "${!server_pids[@]}"; do
    pid=${server_pids[$i]}
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: the $server_name server (pid $pid) was already gone" >&2
      echo "{\"scenario\":\"server-died\",\"label\":\"$server_name\",\"port\":${server_ports[$i]}}" >>"$results"
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  server_pids=()
  server_ports=()
}
trap 'stop_server; stop_redis' EXIT

# Calls of PUBLISH, EVALSHA and EVAL so far (the Lua script's PUBLISH counts
# as cmdstat_publish too).
redis_counts() {
  redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' | awk -F'[:=,]' '
    $1 == "cmdstat_publish" { p = $3 }
    $1 == "cmdstat_evalsha" { s = $3 }
    $1 == "cmdstat_eval" { e = $3 }
    END { printf "%d %d %d\n", p, s, e }'
}

# The JSON line a run of the load tool left in logs/NAME.json goes to
# results.jsonl; if there is none, a line saying it failed.
collect() { # name scenario status
  if grep -q '^{' "$out/logs/$1.json"; then
    grep '^{' "$out/logs/$1.json" >>"$results"
  else
    echo "{\"scenario\":\"$2\",\"label\":\"$server_name\",\"failed\":true,\"exit\":$3}" >>"$results"
  fi
}

# Runs one scenario against the running server(s); its JSON line goes to
# results.jsonl. Against ours-redis: every process by URL and PID, Redis by
# PID and URL, and Redis's command counts around the whole scenario, against
# every chat message the tool sent (room markers and warm-up included), as a
# "redis-commands" line.
bench() { # name scenario flags...
  local name=$1
  shift
  local status=0 p counts_before=
  local servers_flags=()
  for p in "${server_ports[@]}"; do servers_flags+=(--url "http://127.0.0.1:$p"); done
  for p in "${server_pids[@]}"; do servers_flags+=(--pid "$p"); done
  if [ "$server_name" = ours-redis ]; then
    servers_flags+=(--redis-pid "$redis_pid" --redis "redis://127.0.0.1:$redis_port")
    counts_before=$(redis_counts)
  fi
  # One chat-server process: its own count of the history it keeps, and of
  # its rooms, at the end of a fanout's traffic.
  if [ "$1" = fanout ] && [[ $server_name == ours* ]] && [ "$server_name" != ours-redis ]; then
    servers_flags+=(--metrics "http://127.0.0.1:${server_ports[0]}/metrics")
  fi
  "${client_cpu[@]}" "$bench_bin" "$@" "${servers_flags[@]}" --label "$server_name" \
    >"$out/logs/$name.json" 2> >(tee "$out/logs/$name.txt" >&2) || status=$?
  collect "$name" "$1" "$status"
  if [ -n "$counts_before" ]; then
    local counts_after
    counts_after=$(redis_counts)
    # shellcheck disable=SC2086 # three numbers each
    python3 - "$out/logs/$name.json" "$server_name" "$1" "$name" $counts_before $counts_after >>"$results" <<'PY'
import json, sys
path, label, scenario, run = sys.argv[1:5]
before, after = sys.argv[5:8], sys.argv[8:11]
delta = {k: int(a) - int(b) for k, b, a in zip(("publish", "evalsha", "eval"), before, after)}
sent = None
for line in open(path):
    if line.startswith("{"):
        sent = json.loads(line).get("sent_total")
print(json.dumps({"scenario": "redis-commands", "label": label, "of": scenario, "run": run,
                  "messages_sent": sent, **delta,
                  "publishes_per_message": round(delta["publish"] / sent, 4) if sent else None}))
PY
  fi
  [ "$status" -eq 0 ] || echo "run.sh: $name exited $status (kept in the report)" >&2
}

fanout_flags=(--rooms "$rooms" --members "$members" --senders "$senders")

if [[ " $servers " == *" ours-redis "* ]]; then
  log "starting redis-server for ours-redis (core 0 with the servers, persistence off)"
  start_redis
fi

# The fixed-rate fanout is short and the machine noisy: it runs in rounds, the
# servers taking turns, and the report takes each one's median.
fanout_kinds=()
for kind in $servers; do
  fanout_kinds+=("$kind")
  # History off right after ours, so the two are measured as close in time as can be.
  [ "$kind" = ours ] && [ "$history_off" = 1 ] && fanout_kinds+=(ours-no-history)
  [ "$kind" = ours ] && [ "$no_ping" = 1 ] && fanout_kinds+=(ours-no-ping)
  [ "$kind" = floor ] && [ "$floor_ping" = 1 ] && fanout_kinds+=(floor-ping)
done
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
      ours-no-history)
        start_server ours --history 0
        server_name=$kind
        ;;
      ours-no-ping)
        start_server ours --ping-interval 1h --pong-wait 2h
        server_name=$kind
        ;;
      floor-ping)
        start_server floor --ping-interval 9
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
  case $kind in ours | ours-redis) extra=(${ours_ramp_flags[@]+"${ours_ramp_flags[@]}"}) ;; esac
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

# ---- reconnect after a restart ----
# Ours under $reconnect_conns clients, each logged in with a session of its
# own and in its room, restarted (SIGTERM, then the same command on the same
# port with the same --session-key) each time the load tool says it is ready:
# once for clients coming back with their sessions, once with passwords. This
# script restarts the server, not the tool: the servers are this script's to
# start, pin, cap and stop, and the tool only needs to see the address go and
# come back (it times from the first connect the new process accepts, after
# the old one has exited, to the last client back in its room).
reconnect_run() {
  local name=ours-reconnect-$reconnect_conns
  local dir
  dir=$(mktemp -d)
  (umask 077 && head -c 32 /dev/urandom >"$dir/session.key")
  local rounds
  rounds=$(tr ',' '\n' <<<"$reconnect_via" | grep -c .)
  log "ours: reconnect, $reconnect_conns clients in rooms of $reconnect_members, the server restarted" \
    "$rounds times (via $reconnect_via)"
  pid_file=$dir/pid
  start_server ours --session-key "$dir/session.key"
  fixed_port=${server_ports[0]}
  local status=0
  "${client_cpu[@]}" "$bench_bin" reconnect --connections "$reconnect_conns" --members "$reconnect_members" \
    --via "$reconnect_via" --ready-file "$dir/ready" --new-pid-file "$dir/pid" \
    --url "http://127.0.0.1:$fixed_port" --pid "${server_pids[0]}" --label "$server_name" \
    >"$out/logs/$name.json" 2> >(tee "$out/logs/$name.txt" >&2) &
  local tool=$! round seen
  for round in $(seq 1 "$rounds"); do
    while :; do
      seen=0
      [ -f "$dir/ready" ] && seen=$(grep -c '^ready' "$dir/ready" || true)
      [ "$seen" -ge "$round" ] && break
      kill -0 "$tool" 2>/dev/null || break 2 # it gave up; its JSON says why
      sleep 0.05
    done
    log "ours: restarting the server under the clients (round $round of $rounds)"
    stop_server
    start_server ours --session-key "$dir/session.key"
  done
  wait "$tool" || status=$?
  collect "$name" reconnect "$status"
  stop_server
  fixed_port=
  pid_file=
  rm -rf "$dir"
  [ "$status" -eq 0 ] || echo "run.sh: $name exited $status (kept in the report)" >&2
}
[ "$reconnect" = 1 ] && reconnect_run

# ---- the rows with scripts of their own ----
# Each writes its JSON lines to results.jsonl and its section (NAME.md) to
# be appended to REPORT.md; a row that fails is kept in the report as such.
#   failover (issue 24): two processes on a Redis master, a replica and three
#     Sentinels of its own, the master SIGKILLed under chat: seconds until
#     logins answer 200 again, deliveries late and never made;
#   presence: the standard fan-out with every member watching its room's
#     presence against none (server CPU per delivery, on ÷ off), and the join
#     storm (one process, and two on a Redis of the script's own);
#   api: the standard fan-out's messages posted through the server API
#     against the same messages sent by members (CPU per delivery, latency);
#   tls: idle bytes per WSS connection, the standard fan-out's server CPU per
#     delivery and members reconnecting with their sessions, TLS against plain.
row_run() { # name label what
  local name=$1 label=$2 status=0
  rm -f "$out/$name.md"
  log "$3 (bench/$name.sh)"
  OUT=$out QUICK=$quick OURS_BIN=$ours_bin BENCH_BIN=$bench_bin SKIP_BUILD=1 \
    bash "$bench/$name.sh" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "run.sh: $name.sh exited $status (kept in the report)" >&2
    echo "{\"scenario\":\"$name\",\"label\":\"$label\",\"failed\":true,\"exit\":$status}" >>"$results"
  fi
}
rm -f "$out/failover.md" "$out/presence.md" "$out/api.md" "$out/tls.md"
[ "$failover" = 1 ] && row_run failover ours-sentinel "ours on Sentinel: the Redis master killed under chat"
[ "$presence" = 1 ] && row_run presence ours "ours with presence: the fan-out watched and unwatched, and the join storm"
[ "$api" = 1 ] && row_run api ours "ours with the server API: the fan-out posted through the API and by members"
[ "$tls" = 1 ] && row_run tls ours "ours over TLS against plain: idle bytes, fan-out, reconnects"

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
  echo "reconnect_via=$reconnect_via"
  echo "quick=$quick"
  if [[ " $servers " == *" ours-redis "* ]]; then
    echo "redis=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
    echo "redis_procs=$redis_procs"
    if [ ${#server_cpu[@]} -gt 0 ]; then
      echo "redis_cores=$redis_procs chat-server processes and redis-server on core 0, the load tool on core 1"
    else
      echo "redis_cores=unpinned (fewer than 2 cores)"
    fi
  fi
} >"$out/env.txt"
python3 "$bench/report.py" "$out"
for section in failover presence api tls; do
  if [ -f "$out/$section.md" ]; then
    { echo; cat "$out/$section.md"; } >>"$out/REPORT.md"
  fi
done
if command -v gnuplot >/dev/null && [ -f "$out/latency.gp" ]; then
  gnuplot "$out/latency.gp"
fi
log "report: $out/REPORT.md"
