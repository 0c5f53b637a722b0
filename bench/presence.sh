#!/usr/bin/env bash
# Presence (members who watch who is in their room: change_room with
# "presence": true) and what it costs the server:
#   (a) the standard fan-out (run.sh's: 10 rooms x 100 members, 5 senders per
#       room at 6 msgs/s, 10 s measured after 2 s of warm-up) with presence
#       off and with every member watching, on the same server binary, in
#       interleaved rounds, a fresh server each run: the server's CPU per
#       delivery (utime + stime from /proc, chat-bench's
#       server_cpu_us_per_delivery), the medians and on ÷ off (target
#       <= 1.05x). Every member is a user of its own (u0 .. u999, a users file
#       made for the run), both ways, so the rooms' rosters are real.
#   (b) the join storm (chat-bench join-storm): 1,000 members of one room, all
#       watching, every socket dropped at once and every member back at once
#       (an OTP from its session cookie), while 10 more members (observers,
#       users of their own) stay and see every leave and join: presence
#       frames in total, per watcher, per observer, per join and per server
#       loop iteration, and the seconds from the cut until all are back and
#       every roster is whole again; one process, then two processes on a
#       redis-server of the script's own.
# Everything server-side on core 0, the load tool on core 1, as in run.sh.
# Each run's JSON line goes to OUT/results.jsonl (labels presence-off,
# presence-on, presence-storm, presence-storm-redis), then a summary line
# ("scenario": "presence") and OUT/presence.md, which run.sh appends to
# REPORT.md.
#
#   bash bench/presence.sh            # about 5 minutes
#   QUICK=1 bash bench/presence.sh    # smaller and shorter, to try it
#
# Environment: OUT (results dir; default target/presence-results), OURS_BIN /
# BENCH_BIN (binaries; default this tree's target/release, built unless
# SKIP_BUILD=1), ROUNDS (fan-out rounds each way, 3), STORM_MEMBERS (1000),
# STORM_ROUNDS (storms each way, 3), STORM_OBSERVERS (10), REDIS (1: the storm on two processes and
# Redis too, 0: not; default: when redis-server is installed), SERVER_FLAGS
# (more chat-server flags, e.g. --presence-max-users 500).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
root=$PWD
bench=$root/bench
target=${CARGO_TARGET_DIR:-$root/target}
out=${OUT:-$target/presence-results}
quick=${QUICK:-0}

rooms=10
members=100
senders=5
rate=6
duration=10s
rounds=${ROUNDS:-3}
storm_members=${STORM_MEMBERS:-1000}
storm_rounds=${STORM_ROUNDS:-3}
storm_observers=${STORM_OBSERVERS:-10}
if [ "$quick" = 1 ]; then
  rooms=4 members=25 duration=3s rounds=${ROUNDS:-1}
  storm_members=${STORM_MEMBERS:-200} storm_rounds=${STORM_ROUNDS:-1}
fi
storm_users=$((storm_members + storm_observers))
users=$((rooms * members > storm_users ? rooms * members : storm_users))
redis=${REDIS:-auto}
read -r -a server_flags <<<"${SERVER_FLAGS:-}"

log() { printf '\n=== presence: %s\n' "$*" >&2; }
die() {
  echo "presence.sh: $*" >&2
  exit 1
}

command -v python3 >/dev/null || die "python3 is needed"
ulimit -n 20000 2>/dev/null || ulimit -n 4096 || die "cannot raise the file limit"
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${OURS_BIN:-}" ]; then
  log "building chat-server and chat-bench (release)"
  cargo build --release -q -p chat-server -p chat-bench
fi
ours_bin=${OURS_BIN:-$target/release/chat-server}
bench_bin=${BENCH_BIN:-$target/release/chat-bench}
ours_help=$("$ours_bin" --help 2>&1 || true)
grep -q -- '--presence-max-users' <<<"$ours_help" || die "$ours_bin has no --presence-max-users (no presence)"
"$bench_bin" --help 2>&1 | grep -q -- 'join-storm' || die "$bench_bin has no join-storm"
if [ "$redis" = auto ]; then
  redis=0
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && redis=1
  [ "$redis" = 1 ] || echo "presence.sh: no redis-server; the storm runs on one process only" >&2
fi

pin_cores presence.sh

mkdir -p "$out/logs"
results=$out/results.jsonl
logs=$out/logs
touch "$results"
first_line=$(($(wc -l <"$results") + 1)) # this run's lines start here
tmp=$(mktemp -d)
pids=()        # everything started, stopped by PID at exit
server_pids=() # the chat-servers of the current run
server_ports=()
cleanup() {
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---- the accounts: u0 .. u(N-1), every one with password 123 ----
# One argon2id hash (the server's own, default cost) serves every line: a
# login costs what the demo account's does.
users_file=$tmp/users
hash=$(echo 123 | "$ours_bin" hash-password) || die "chat-server hash-password failed"
python3 - "$users" "$hash" >"$users_file" <<'PY'
import sys
n, h = int(sys.argv[1]), sys.argv[2]
sys.stdout.write("".join(f"u{i}:{h}\n" for i in range(n)))
PY
(umask 077 && head -c 32 /dev/urandom >"$tmp/session.key") # shared by both processes of a pair

# ---- Redis (the storm's second half) ----
redis_port=
if [ "$redis" = 1 ]; then
  redis_port=$(free_port)
  (exec "${server_cpu[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile '') >"$logs/presence-redis-$redis_port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$redis_port" PING 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  [ "$(redis-cli -p "$redis_port" PING 2>/dev/null)" = PONG ] || die "redis-server did not start"
fi

runs=0
start_servers() { # count (1, or 2 on Redis), then extra flags
  local count=$1
  shift
  runs=$((runs + 1))
  server_pids=()
  server_ports=()
  local i port
  for i in $(seq 1 "$count"); do
    port=$(free_port)
    local cmd=("$ours_bin" --listen "127.0.0.1:$port" --www "$root/www" --log-level warn
      --max-connections 19500 --max-queue 1048576 --max-connections-per-ip 0
      --users "$users_file" --session-key "$tmp/session.key"
      ${server_flags[@]+"${server_flags[@]}"} "$@")
    [ "$count" -gt 1 ] && cmd+=(--redis "redis://127.0.0.1:$redis_port" --redis-prefix "presence-$$-$runs:")
    (exec "${server_cpu[@]}" "${cmd[@]}") 2>"$logs/presence-server-$runs-$port.log" &
    pids+=($!)
    server_pids+=($!)
    server_ports+=("$port")
  done
  for port in "${server_ports[@]}"; do
    local ready=0
    for _ in $(seq 1 100); do
      healthy "$port" && ready=1 && break
      sleep 0.1
    done
    [ "$ready" = 1 ] || die "chat-server on $port did not start; see $logs/presence-server-$runs-$port.log"
  done
}

stop_servers() {
  local pid
  for pid in "${server_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || echo "presence.sh: server $pid was already gone" >&2
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  server_pids=()
  server_ports=()
}

# Runs chat-bench against the current servers; its JSON line goes to
# results.jsonl (or a line saying it failed).
bench() { # name label scenario flags...
  local name=$1 label=$2
  shift 2
  local flags=() p status=0
  for p in "${server_ports[@]}"; do flags+=(--url "http://127.0.0.1:$p"); done
  for p in "${server_pids[@]}"; do flags+=(--pid "$p"); done
  "${client_cpu[@]}" "$bench_bin" "$@" "${flags[@]}" --label "$label" --user u \
    >"$logs/$name.json" 2> >(tee "$logs/$name.txt" >&2) || status=$?
  if grep -q '^{' "$logs/$name.json"; then
    grep '^{' "$logs/$name.json" >>"$results"
  else
    echo "{\"scenario\":\"$1\",\"label\":\"$label\",\"failed\":true,\"exit\":$status}" >>"$results"
  fi
  [ "$status" -eq 0 ] || echo "presence.sh: $name exited $status (kept in the results)" >&2
}

# ---- (a) the fan-out, presence off and on, interleaved ----
fanout_flags=(--rooms "$rooms" --members "$members" --senders "$senders" --rate "$rate"
  --duration "$duration" --warmup 2s --user-count "$((rooms * members))")
for round in $(seq 1 "$rounds"); do
  for mode in off on; do
    log "fan-out, presence $mode (round $round of $rounds)"
    start_servers 1
    presence=0
    [ "$mode" = on ] && presence=1
    bench "presence-$mode-fanout-$round" "presence-$mode" fanout "${fanout_flags[@]}" --presence "$presence" \
      --metrics "http://127.0.0.1:${server_ports[0]}/metrics"
    stop_servers
  done
done

# ---- (b) the join storm: one process, then two on Redis ----
storm_kinds=(1)
[ "$redis" = 1 ] && storm_kinds+=(2)
for round in $(seq 1 "$storm_rounds"); do
  for count in "${storm_kinds[@]}"; do
    label=presence-storm
    [ "$count" -gt 1 ] && label=presence-storm-redis
    log "join storm, $storm_members members, $count process(es) (round $round of $storm_rounds)"
    # The storm's room holds every member and observer: names, not only a
    # count, for every roster to be checked whole.
    start_servers "$count" --presence-max-users "$storm_users"
    metrics=()
    for p in "${server_ports[@]}"; do metrics+=(--metrics "http://127.0.0.1:$p/metrics"); done
    bench "$label-$round" "$label" join-storm --members "$storm_members" --room "storm-$round" \
      --observers "$storm_observers" --user-count "$storm_users" "${metrics[@]}"
    stop_servers
  done
done

# ---- the summary ----
python3 - "$results" "$first_line" "$out/presence.md" "$quick" "$rooms" "$members" "$senders" "$rate" \
  "$duration" "$storm_members" >>"$results" <<'PY'
import json, statistics, sys
path, first, md, quick, rooms, members, senders, rate, duration, storm_members = sys.argv[1:]
rows = [json.loads(l) for i, l in enumerate(open(path), 1) if i >= int(first) and l.startswith("{")]

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def get(row, *keys):
    for k in keys:
        row = row.get(k) if isinstance(row, dict) else None
    return row

def fanouts(label):
    return [r for r in rows if r.get("scenario") == "fanout" and r.get("label") == label and not r.get("failed")]

def n(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)

off, on = fanouts("presence-off"), fanouts("presence-on")
cpu = lambda runs, key="server_cpu_us_per_delivery": [get(r, "step", key) for r in runs]
off_cpu, on_cpu = med(cpu(off)), med(cpu(on))
ratio = round(on_cpu / off_cpu, 3) if off_cpu and on_cpu else None
target = 1.05
summary = {
    "scenario": "presence",
    "label": "ours",
    "fanout_rounds": len(off),
    "cpu_us_per_delivery_off": cpu(off),
    "cpu_us_per_delivery_on": cpu(on),
    "median_off": off_cpu,
    "median_on": on_cpu,
    "ratio_on_off": ratio,
    "target_ratio": target,
    "met": None if ratio is None else ratio <= target,
    "user_us_per_delivery_median": [med(cpu(off, "server_user_us_per_delivery")),
                                    med(cpu(on, "server_user_us_per_delivery"))],
    "system_us_per_delivery_median": [med(cpu(off, "server_system_us_per_delivery")),
                                      med(cpu(on, "server_system_us_per_delivery"))],
    "p99_ms_median": [med([get(r, "step", "latency_ms", "p99") for r in off]),
                      med([get(r, "step", "latency_ms", "p99") for r in on])],
    "delivery_ratio_min": [min([get(r, "step", "delivery_ratio") or 0 for r in off], default=None),
                           min([get(r, "step", "delivery_ratio") or 0 for r in on], default=None)],
    "presence_frames_setup_on": [get(r, "presence_setup", "frames") for r in on],
    "presence_frames_step_on": [get(r, "presence_step", "frames") for r in on],
    "presence_frames_off": [r.get("presence_frames") for r in off],
    "rosters_complete_on": [r.get("presence_rosters_complete") for r in on],
    "storms": {},
}
for label in ("presence-storm", "presence-storm-redis"):
    storms = [r for r in rows if r.get("scenario") == "join-storm" and r.get("label") == label]
    good = [r for r in storms if not r.get("failed")]
    if not storms:
        continue
    summary["storms"][label] = {
        "runs": len(storms),
        "failed": len(storms) - len(good),
        "errors": [r.get("errors") for r in good],
        "members": med([r.get("members") for r in good]),
        "frames": med([r.get("frames") for r in good]),
        "frames_per_watcher_mean": med([get(r, "frames_per_watcher", "mean") for r in good]),
        "frames_per_watcher_max": med([get(r, "frames_per_watcher", "max") for r in good]),
        "frames_per_join": med([r.get("frames_per_join") for r in good]),
        "observers": med([r.get("observers") for r in good]),
        "observer_frames_max": med([get(r, "observer_frames", "all", "max") for r in good]),
        "observer_join_frames_max": med([get(r, "observer_frames", "joins", "max") for r in good]),
        "observer_leave_frames_max": med([get(r, "observer_frames", "leaves", "max") for r in good]),
        "names_per_join_frame": med([r.get("names_per_join_frame") for r in good]),
        "frames_per_watcher_per_iteration_max": med(
            [get(r, "frames_per_watcher_per_iteration", "max") for r in good]),
        "loop_iterations": med([sum(r.get("loop_iterations") or [0]) or None for r in good]),
        "all_back_s": med([r.get("all_back_s") for r in good]),
        "stable_s": med([r.get("stable_s") for r in good]),
        "settled_s": med([r.get("settled_s") for r in good]),
        "server_cpu_s": med([r.get("server_cpu_s") for r in good]),
        "client_cpu_s": med([r.get("client_cpu_s") for r in good]),
        "connect_frames_per_join": med([get(r, "connect", "frames_per_join") for r in good]),
        "connect_stable_s": med([get(r, "connect", "stable_s") for r in good]),
        "odd": [{k: get(r, "presence", k) for k in ("joins_of_present", "leaves_of_absent", "malformed")}
                for r in good],
        "rosters_incomplete": [r.get("rosters_incomplete") for r in good],
    }
print(json.dumps(summary))

verdict = "-" if ratio is None else ("met" if ratio <= target else "MISSED")
lines = [
    "### Presence: what watching costs",
    "",
    f"`bench/presence.sh`{' (QUICK=1: scaled down)' if quick == '1' else ''}: the standard fan-out "
    f"({rooms} rooms x {members} members, {senders} senders per room at {rate} msgs/s, {duration} measured), "
    "every member a user of its own, with presence off and with every member watching its room "
    "(`change_room` with `\"presence\": true`), on one binary, a fresh server each run, interleaved rounds; "
    f"and the join storm: {storm_members} members of one room, all watching, every socket dropped at once "
    "and every member back at once with its session cookie, while a few observers (users of their own) stay "
    "through it. Server on core 0, the load tool on core 1.",
    "",
    "| measure | off | on | on ÷ off | target | verdict |",
    "| --- | ---: | ---: | ---: | --- | --- |",
    f"| server CPU µs per delivery, median of {len(off)} / {len(on)} "
    f"(each run: {', '.join(n(v) for v in cpu(off))} / {', '.join(n(v) for v in cpu(on))}) "
    f"| {n(off_cpu)} | {n(on_cpu)} | {n(ratio)} | <= {target} | {verdict} |",
    f"| user / system µs per delivery, medians | {n(summary['user_us_per_delivery_median'][0])} / "
    f"{n(summary['system_us_per_delivery_median'][0])} | {n(summary['user_us_per_delivery_median'][1])} / "
    f"{n(summary['system_us_per_delivery_median'][1])} | | | |",
    f"| latency p99 ms, median | {n(summary['p99_ms_median'][0])} | {n(summary['p99_ms_median'][1])} | | | |",
    f"| presence frames while setting up / while measured (each run) "
    f"| {', '.join(n(v) for v in summary['presence_frames_off'])} "
    f"| {', '.join(f'{n(a)} / {n(b)}' for a, b in zip(summary['presence_frames_setup_on'], summary['presence_frames_step_on']))} "
    "| | none when off | |",
    "",
]
if summary["storms"]:
    heads = list(summary["storms"])
    names = {"presence-storm": "one process", "presence-storm-redis": "two processes + Redis"}
    lines += [
        "| join storm (medians) | " + " | ".join(names[h] for h in heads) + " |",
        "| --- | " + " | ".join("---:" for _ in heads) + " |",
    ]
    def srow(title, key, digits=3):
        return f"| {title} | " + " | ".join(n(summary["storms"][h][key], digits) for h in heads) + " |"
    lines += [
        "| storms run (failed) | " + " | ".join(
            f"{summary['storms'][h]['runs']} ({summary['storms'][h]['failed']})" for h in heads) + " |",
        srow("presence frames in the storm", "frames", 0),
        srow("frames per watcher, mean", "frames_per_watcher_mean"),
        srow("frames per watcher, most", "frames_per_watcher_max"),
        srow("frames per join (N if every join were a frame to every watcher)", "frames_per_join"),
        srow("observers (stayed through the storm)", "observers", 0),
        srow("frames per observer, most", "observer_frames_max", 0),
        "| presence_join / presence_leave frames per observer, most | " + " | ".join(
            f"{n(summary['storms'][h]['observer_join_frames_max'], 0)} / "
            f"{n(summary['storms'][h]['observer_leave_frames_max'], 0)}" for h in heads) + " |",
        srow("names per presence_join frame", "names_per_join_frame"),
        srow("server loop iterations in the storm (summed)", "loop_iterations", 0),
        srow("frames per watcher per loop iteration, most (target: O(1))", "frames_per_watcher_per_iteration_max"),
        srow("s from the cut: all back", "all_back_s"),
        srow("s from the cut: every roster whole again", "stable_s"),
        srow("s from the cut: the last presence frame", "settled_s"),
        srow("server CPU s, cut to settled (both processes with Redis)", "server_cpu_s"),
        srow("load tool CPU s, cut to settled", "client_cpu_s"),
        srow("before the storm: frames per join while connecting", "connect_frames_per_join"),
        "",
    ]
with open(md, "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines), file=sys.stderr)
PY
log "JSON lines appended to $results; $out/presence.md; logs in $logs/"
