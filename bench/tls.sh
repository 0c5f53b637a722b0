#!/usr/bin/env bash
# TLS on small hosts (issue 28): what a WSS connection costs the server
# beside a plain one, on one server with both listeners (--listen plain,
# --tls-listen TLS, a certificate of tls/gencert.sh made for the run):
#   (a) idle: IDLE (2,000) connections held, the server's RSS per connection
#       (chat-bench idle's server_rss_per_conn_bytes), plain then TLS, each
#       on a fresh server; target <= 2 KB over TLS;
#   (b) the standard fan-out (run.sh's: 10 rooms x 100 members, 5 senders
#       per room at 6 msgs/s = 30,000 deliveries/s, 10 s measured after 2 s
#       of warm-up), plain and TLS in interleaved rounds, a fresh server each
#       run: server CPU µs per delivery, medians, TLS ÷ plain;
#   (c) connects with sessions: chat-bench join-storm, STORM (1,000) members
#       of one room cut off at once and back with their session cookies (no
#       password hash): the seconds until all are back, and the rate.
# Server on core 0, the load tool on core 1, as in run.sh. JSON lines go to
# OUT/results.jsonl (labels tls-plain-*, tls-tls-*), then a summary line
# ("scenario": "tls") and OUT/tls.md, which run.sh appends to REPORT.md.
#
#   bash bench/tls.sh            # about 4 minutes
#   QUICK=1 bash bench/tls.sh    # smaller and shorter, to try it
#
# Environment: OUT (results dir; default target/tls-results), OURS_BIN /
# BENCH_BIN (binaries; default this tree's target/release, built unless
# SKIP_BUILD=1), ROUNDS (fan-out rounds each way, 3), IDLE (2000), STORM (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
out=${OUT:-$target/tls-results}
quick=${QUICK:-0}

rooms=10
members=100
senders=5
rate=6
duration=10s
rounds=${ROUNDS:-3}
idle=${IDLE:-2000}
storm=${STORM:-1000}
hold=5s
if [ "$quick" = 1 ]; then
  rooms=4 members=25 duration=3s rounds=${ROUNDS:-1} idle=${IDLE:-200} storm=${STORM:-100} hold=2s
fi
users=$((rooms * members > storm ? rooms * members : storm))

log() { printf '\n=== tls: %s\n' "$*" >&2; }
die() {
  echo "tls.sh: $*" >&2
  exit 1
}

command -v python3 >/dev/null || die "python3 is needed"
command -v openssl >/dev/null || die "openssl is needed (tls/gencert.sh)"
ulimit -n 20000 2>/dev/null || ulimit -n 4096 || die "cannot raise the file limit"
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${OURS_BIN:-}" ]; then
  log "building chat-server and chat-bench (release)"
  cargo build --release -q -p chat-server -p chat-bench
fi
ours_bin=${OURS_BIN:-$target/release/chat-server}
bench_bin=${BENCH_BIN:-$target/release/chat-bench}
"$ours_bin" --help 2>&1 | grep -q -- '--tls-listen' || die "$ours_bin has no --tls-listen"

pin_cores tls.sh

mkdir -p "$out/logs"
results=$out/results.jsonl
logs=$out/logs
touch "$results"
first_line=$(($(wc -l <"$results") + 1)) # this run's lines start here
tmp=$(mktemp -d)
pids=()
server_pid=
plain_port=
tls_port=
cleanup() {
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---- a certificate, and the accounts u, u0 .. u(N-1), password 123 ----
bash tls/gencert.sh "$tmp" >/dev/null
users_file=$tmp/users
hash=$(echo 123 | "$ours_bin" hash-password) || die "chat-server hash-password failed"
python3 - "$users" "$hash" >"$users_file" <<'PY'
import sys
n, h = int(sys.argv[1]), sys.argv[2]
sys.stdout.write(f"u:{h}\n" + "".join(f"u{i}:{h}\n" for i in range(n)))
PY
(umask 077 && head -c 32 /dev/urandom >"$tmp/session.key")

runs=0
start_server() {
  runs=$((runs + 1))
  plain_port=$(free_port)
  tls_port=$(free_port)
  local cmd=("$ours_bin" --listen "127.0.0.1:$plain_port" --tls-listen "127.0.0.1:$tls_port"
    --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" --www "$root/www" --log-level warn
    --max-connections 19500 --max-queue 1048576 --max-connections-per-ip 0
    --users "$users_file" --session-key "$tmp/session.key"
    --allowed-origin "http://127.0.0.1:$plain_port" --allowed-origin "https://127.0.0.1:$tls_port")
  (exec "${server_cpu[@]}" "${cmd[@]}") 2>"$logs/tls-server-$runs.log" &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 1 100); do
    healthy "$plain_port" && return 0
    sleep 0.1
  done
  die "chat-server did not start; see $logs/tls-server-$runs.log"
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}

# Runs chat-bench over plain HTTP or TLS against the current server; its
# JSON line goes to results.jsonl (or a line saying it failed).
bench() { # name label over(plain|tls) scenario flags...
  local name=$1 label=$2 over=$3
  shift 3
  local url=(--url "http://127.0.0.1:$plain_port") status=0
  [ "$over" = tls ] && url=(--url "https://127.0.0.1:$tls_port" --ca "$tmp/cert.pem")
  "${client_cpu[@]}" "$bench_bin" "$@" "${url[@]}" --pid "$server_pid" --label "$label" --user u \
    --password 123 >"$logs/$name.json" 2> >(tee "$logs/$name.txt" >&2) || status=$?
  if grep -q '^{' "$logs/$name.json"; then
    grep '^{' "$logs/$name.json" >>"$results"
  else
    echo "{\"scenario\":\"$name\",\"label\":\"$label\",\"failed\":true,\"exit\":$status}" >>"$results"
  fi
  [ "$status" -eq 0 ] || echo "tls.sh: $name exited $status (kept in the results)" >&2
}

# ---- (a) idle ----
for over in plain tls; do
  log "idle, $idle connections over $over"
  start_server
  bench "tls-$over-idle" "tls-$over-idle" "$over" idle --connections "$idle" --hold "$hold"
  stop_server
done

# ---- (b) the fan-out, plain and TLS, interleaved ----
for round in $(seq 1 "$rounds"); do
  for over in plain tls; do
    log "fan-out over $over (round $round of $rounds)"
    start_server
    bench "tls-$over-fanout-$round" "tls-$over-fanout" "$over" fanout --rooms "$rooms" \
      --members "$members" --senders "$senders" --rate "$rate" --duration "$duration" --warmup 2s \
      --metrics "http://127.0.0.1:$plain_port/metrics"
    stop_server
  done
done

# ---- (c) connects with sessions ----
for over in plain tls; do
  log "join storm of $storm over $over: back with their sessions"
  start_server
  bench "tls-$over-storm" "tls-$over-storm" "$over" join-storm --members "$storm" --observers 0 \
    --room storm --user-count "$storm"
  stop_server
done

# ---- the summary ----
python3 - "$results" "$first_line" "$out/tls.md" "$idle" "$storm" "$rooms" "$members" "$senders" "$rate" "$duration" <<'PY'
import json, statistics, sys
path, first, md, idle, storm, rooms, members, senders, rate, duration = sys.argv[1:]
lines = open(path).read().splitlines()[int(first) - 1:]
runs = [json.loads(l) for l in lines if l.startswith("{")]
def of(label):
    return [r for r in runs if r.get("label") == label and not r.get("failed")]
def med(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(values), 3) if values else None
def each(label, *path):
    values = []
    for r in of(label):
        for key in path:
            r = r.get(key) if isinstance(r, dict) else None
        values.append(r)
    return values
summary = {"scenario": "tls", "label": "tls"}
rows = []
idle_plain = med(each("tls-plain-idle", "server_rss_per_conn_bytes"))
idle_tls = med(each("tls-tls-idle", "server_rss_per_conn_bytes"))
summary.update(idle_rss_per_conn_plain=idle_plain, idle_rss_per_conn_tls=idle_tls)
verdict = "met" if idle_tls is not None and idle_tls <= 2048 else "not met"
rows.append(f"| server RSS per idle connection, B ({idle} held) | {idle_plain} | {idle_tls} | <= 2048 over TLS | {verdict} |")
cpu_plain = each("tls-plain-fanout", "step", "server_cpu_us_per_delivery")
cpu_tls = each("tls-tls-fanout", "step", "server_cpu_us_per_delivery")
mp, mt = med(cpu_plain), med(cpu_tls)
ratio = round(mt / mp, 3) if mp and mt else None
summary.update(fanout_cpu_us_per_delivery_plain=mp, fanout_cpu_us_per_delivery_tls=mt, fanout_tls_over_plain=ratio)
rows.append(f"| server CPU µs per delivery, median (each run: {', '.join(map(str, cpu_plain))} / {', '.join(map(str, cpu_tls))}) | {mp} | {mt} | TLS ÷ plain {ratio} | |")
dp = med(each("tls-plain-fanout", "step", "delivered_per_s"))
dt = med(each("tls-tls-fanout", "step", "delivered_per_s"))
rows.append(f"| deliveries per second, median | {dp} | {dt} | | |")
lp = med(each("tls-plain-fanout", "step", "latency_ms", "p99"))
lt = med(each("tls-tls-fanout", "step", "latency_ms", "p99"))
rows.append(f"| latency p99 ms, median | {lp} | {lt} | | |")
bp = med(each("tls-plain-storm", "all_back_s"))
bt = med(each("tls-tls-storm", "all_back_s"))
rate_p = round(int(storm) / bp, 1) if bp else None
rate_t = round(int(storm) / bt, 1) if bt else None
summary.update(session_connects_per_s_plain=rate_p, session_connects_per_s_tls=rate_t)
rows.append(f"| {storm} members back with their sessions: s / per s | {bp} / {rate_p} | {bt} / {rate_t} | | |")
with open(md, "w") as f:
    f.write("### TLS: what a WSS connection costs\n\n")
    f.write(f"`bench/tls.sh`: one server with a plain and a TLS listener, a fresh one each run; {idle} idle connections held; "
            f"the standard fan-out ({rooms} rooms x {members} members, {senders} senders per room at {rate} msgs/s, {duration} measured) "
            f"in interleaved rounds; {storm} members of one room cut off and back at once with their session cookies. "
            "Server on core 0, the load tool on core 1.\n\n")
    f.write("| measure | plain | TLS | target | verdict |\n| --- | ---: | ---: | --- | --- |\n")
    f.write("\n".join(rows) + "\n")
with open(path, "a") as f:
    f.write(json.dumps(summary) + "\n")
print(open(md).read())
PY
log "JSON lines appended to $results; $out/tls.md; logs in $logs/"
