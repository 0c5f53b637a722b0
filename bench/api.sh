#!/usr/bin/env bash
# The server API's bench row (issue 26): messages posted through the API
# (POST /api/rooms/{room}/messages, a keep-alive connection per sender slot,
# chat-bench fanout --post-via api) against the same messages sent by members
# on their WebSockets, into the standard fan-out (run.sh's: 10 rooms x 100
# members, 5 senders per room at 6 msgs/s, 10 s measured after 2 s of
# warm-up). The senders stay members of their rooms either way, so every
# message has the same 100 deliveries; the text is the same stamped text, so
# the receiving members time it the same way. On one server binary, a fresh
# server (with --api-key, a key made for the run) each run, ROUNDS (3)
# interleaved rounds each way: the server's CPU per delivery (utime + stime
# from /proc, chat-bench's server_cpu_us_per_delivery) and the latency p50
# and p99, the medians and api ÷ members (target: within 1.1x).
# Server on core 0, the load tool on core 1, as in run.sh. Each run's JSON
# line goes to OUT/results.jsonl (labels api-members, api-posted), then a
# summary line ("scenario": "api") and OUT/api.md, which run.sh appends to
# REPORT.md.
#
#   bash bench/api.sh            # about 2 minutes
#   QUICK=1 bash bench/api.sh    # 4 rooms x 25 members, 3 s, one round
#
# Environment: OUT (results dir; default target/api-results), OURS_BIN /
# BENCH_BIN (binaries; default this tree's target/release, built unless
# SKIP_BUILD=1), ROUNDS (rounds each way, 3), SERVER_FLAGS (more chat-server
# flags).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
out=${OUT:-$target/api-results}
quick=${QUICK:-0}

rooms=10
members=100
senders=5
rate=6
duration=10s
rounds=${ROUNDS:-3}
if [ "$quick" = 1 ]; then
  rooms=4 members=25 duration=3s rounds=${ROUNDS:-1}
fi
read -r -a server_flags <<<"${SERVER_FLAGS:-}"

log() { printf '\n=== api: %s\n' "$*" >&2; }
die() {
  echo "api.sh: $*" >&2
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
"$ours_bin" --help 2>&1 | grep -q -- '--api-key' || die "$ours_bin has no --api-key (no server API)"
"$bench_bin" --help 2>&1 | grep -q -- '--post-via' || die "$bench_bin has no --post-via"

pin_cores api.sh

mkdir -p "$out/logs"
results=$out/results.jsonl
logs=$out/logs
touch "$results"
first_line=$(($(wc -l <"$results") + 1)) # this run's lines start here
tmp=$(mktemp -d)
server_pid= # the chat-server of the current run
server_port=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---- the key: 32 random bytes in hex, as the README says to make one ----
key_file=$tmp/api.key
if command -v openssl >/dev/null; then
  (umask 077 && openssl rand -hex 32 >"$key_file")
else
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$key_file" && echo >>"$key_file")
fi

runs=0
start_server() {
  runs=$((runs + 1))
  server_port=$(free_port)
  local cmd=("$ours_bin" --listen "127.0.0.1:$server_port" --www "$root/www" --log-level warn
    --max-connections 19500 --max-queue 1048576 --max-connections-per-ip 0 --api-key "$key_file"
    ${server_flags[@]+"${server_flags[@]}"})
  (exec "${server_cpu[@]}" "${cmd[@]}") 2>"$logs/api-server-$runs-$server_port.log" &
  server_pid=$!
  local ready=0
  for _ in $(seq 1 100); do
    healthy "$server_port" && ready=1 && break
    sleep 0.1
  done
  [ "$ready" = 1 ] || die "chat-server on $server_port did not start; see $logs/api-server-$runs-$server_port.log"
}

stop_server() {
  kill -0 "$server_pid" 2>/dev/null || echo "api.sh: server $server_pid was already gone" >&2
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# Runs chat-bench fanout against the current server; its JSON line goes to
# results.jsonl (or a line saying it failed).
bench() { # name label flags...
  local name=$1 label=$2
  shift 2
  local status=0
  "${client_cpu[@]}" "$bench_bin" fanout "$@" --url "http://127.0.0.1:$server_port" --pid "$server_pid" \
    --label "$label" >"$logs/$name.json" 2> >(tee "$logs/$name.txt" >&2) || status=$?
  if grep -q '^{' "$logs/$name.json"; then
    grep '^{' "$logs/$name.json" >>"$results"
  else
    echo "{\"scenario\":\"fanout\",\"label\":\"$label\",\"failed\":true,\"exit\":$status}" >>"$results"
  fi
  [ "$status" -eq 0 ] || echo "api.sh: $name exited $status (kept in the results)" >&2
}

# ---- the fan-out, posted by members and through the API, interleaved ----
fanout_flags=(--rooms "$rooms" --members "$members" --senders "$senders" --rate "$rate"
  --duration "$duration" --warmup 2s)
for round in $(seq 1 "$rounds"); do
  for mode in members posted; do
    log "fan-out, $mode (round $round of $rounds)"
    start_server
    via=(--post-via member)
    [ "$mode" = posted ] && via=(--post-via api --api-key "$key_file")
    bench "api-$mode-fanout-$round" "api-$mode" "${fanout_flags[@]}" "${via[@]}"
    stop_server
  done
done

# ---- the summary ----
python3 - "$results" "$first_line" "$out/api.md" "$quick" "$rooms" "$members" "$senders" "$rate" \
  "$duration" >>"$results" <<'PY'
import json, statistics, sys
path, first, md, quick, rooms, members, senders, rate, duration = sys.argv[1:]
rows = [json.loads(l) for i, l in enumerate(open(path), 1) if i >= int(first) and l.startswith("{")]

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def get(row, *keys):
    for k in keys:
        row = row.get(k) if isinstance(row, dict) else None
    return row

def n(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}".rstrip("0").rstrip(".")
    return f"{v:,}" if isinstance(v, int) else str(v)

def fanouts(label):
    return [r for r in rows if r.get("scenario") == "fanout" and r.get("label") == label]

members_runs, api_runs = fanouts("api-members"), fanouts("api-posted")
good = lambda runs: [r for r in runs if not r.get("failed")]
each = lambda runs, *keys: [get(r, "step", *keys) for r in good(runs)]
target = 1.1

def ratio(a, b):
    return round(a / b, 3) if a and b else None

measures = {
    "cpu_us_per_delivery": ("server_cpu_us_per_delivery",),
    "user_us_per_delivery": ("server_user_us_per_delivery",),
    "system_us_per_delivery": ("server_system_us_per_delivery",),
    "p50_ms": ("latency_ms", "p50"),
    "p99_ms": ("latency_ms", "p99"),
}
summary = {
    "scenario": "api",
    "label": "ours",
    "rounds": [len(members_runs), len(api_runs)],
    "failed": [len(members_runs) - len(good(members_runs)), len(api_runs) - len(good(api_runs))],
    "target_ratio": target,
}
for name, keys in measures.items():
    m, a = each(members_runs, *keys), each(api_runs, *keys)
    summary[name] = {"members": m, "api": a, "median_members": med(m), "median_api": med(a),
                     "ratio_api_members": ratio(med(a), med(m))}
judged = ("cpu_us_per_delivery", "p50_ms", "p99_ms")
verdicts = {k: (None if summary[k]["ratio_api_members"] is None else summary[k]["ratio_api_members"] <= target)
            for k in judged}
summary["met"] = {k: v for k, v in verdicts.items()}
summary["all_met"] = None if None in verdicts.values() else all(verdicts.values())
summary["run_errors"] = [[r.get("errors") for r in members_runs], [r.get("errors") for r in api_runs]]
summary["delivery_ratio_min"] = [min([get(r, "step", "delivery_ratio") or 0 for r in good(members_runs)], default=None),
                                 min([get(r, "step", "delivery_ratio") or 0 for r in good(api_runs)], default=None)]
summary["deliveries_per_message"] = [
    med([(get(r, "step", "expected") or 0) / (get(r, "step", "sent") or 1) for r in good(members_runs)]),
    med([(get(r, "step", "expected") or 0) / (get(r, "step", "sent") or 1) for r in good(api_runs)]),
]
summary["api_posts"] = [get(r, "step", "api") for r in good(api_runs)]
# Other processes on the measured cores: a core busier than its process made
# it (server_core_busy against server_cpu_util, the same for the tool) was
# shared with something else, and latency says more about that than the server.
def crowding(r):
    step = r.get("step") or {}
    parts = [(step.get("server_core_busy"), step.get("server_cpu_util")),
             (step.get("client_core_busy"), step.get("client_cpu_util"))]
    gaps = [busy - own for busy, own in parts if busy is not None and own is not None]
    return max(0.0, round(max(gaps), 3)) if gaps else None  # below 0: the two readings' jitter
summary["other_load"] = [[crowding(r) for r in good(members_runs)], [crowding(r) for r in good(api_runs)]]
crowded = [v for runs in summary["other_load"] for v in runs if v is not None and v > 0.2]
summary["crowded_runs"] = len(crowded)
summary["api_answer_p99_ms_median"] = med([get(r, "step", "api", "answer_ms", "p99") for r in good(api_runs)])
print(json.dumps(summary))

def verdict(key):
    v = verdicts[key]
    return "-" if v is None else ("met" if v else "MISSED")

def row(title, key, judge=True):
    s = summary[key]
    runs = f"{', '.join(n(v) for v in s['members'])} / {', '.join(n(v) for v in s['api'])}"
    return (f"| {title} (each run: {runs}) | {n(s['median_members'])} | {n(s['median_api'])} "
            f"| {n(s['ratio_api_members'])} | {'<= ' + str(target) if judge else ''} "
            f"| {verdict(key) if judge else ''} |")

posts = summary["api_posts"]
other = sum((p or {}).get("answered_other", 0) for p in posts)
unanswered = sum((p or {}).get("unanswered", 0) for p in posts)
accepted = sum((p or {}).get("answered_202", 0) for p in posts)
lines = [
    "### Server API: messages posted through the API beside members' messages",
    "",
    f"`bench/api.sh`{' (QUICK=1: scaled down)' if quick == '1' else ''}: the standard fan-out "
    f"({rooms} rooms x {members} members, {senders} senders per room at {rate} msgs/s, {duration} measured "
    "after 2 s of warm-up), its messages sent by the senders on their WebSockets (members), or posted "
    "through the server API (`POST /api/rooms/{room}/messages`, a keep-alive HTTP/1.1 connection per "
    "sender slot, `chat-bench fanout --post-via api`): the same stamped text from the same user, and the "
    "senders still members of their rooms, so every message has the same deliveries. One binary, a fresh "
    "server with `--api-key` each run, interleaved rounds; server on core 0, the load tool on core 1.",
    "",
    "| measure, median (members / api) | members | api | api ÷ members | target | verdict |",
    "| --- | ---: | ---: | ---: | --- | --- |",
    row(f"server CPU µs per delivery, {len(good(members_runs))} / {len(good(api_runs))} runs", "cpu_us_per_delivery"),
    row("user µs per delivery", "user_us_per_delivery", judge=False),
    row("system µs per delivery", "system_us_per_delivery", judge=False),
    row("latency p50 ms", "p50_ms"),
    row("latency p99 ms", "p99_ms"),
    f"| deliveries per message | {n(summary['deliveries_per_message'][0])} "
    f"| {n(summary['deliveries_per_message'][1])} | | equal | |",
    f"| lowest delivery ratio | {n(summary['delivery_ratio_min'][0], 6)} "
    f"| {n(summary['delivery_ratio_min'][1], 6)} | | | |",
    f"| API answers in the measured steps: 202 / other / unanswered; answer p99 ms, median | "
    f"| {n(accepted)} / {n(other)} / {n(unanswered)}; {n(summary['api_answer_p99_ms_median'])} | | "
    "no other, none unanswered | " + ("met" if posts and other == 0 and unanswered == 0 else "MISSED") + " |",
    f"| errors, each run | {', '.join(n(e) for e in summary['run_errors'][0])} "
    f"| {', '.join(n(e) for e in summary['run_errors'][1])} | | none | |",
    f"| other load on the two cores, each run (core busy minus what the server or the tool used; most of the two) "
    f"| {', '.join(n(v, 2) for v in summary['other_load'][0])} "
    f"| {', '.join(n(v, 2) for v in summary['other_load'][1])} | | about 0 | |",
    "",
]
if crowded:
    lines += [
        f"**{len(crowded)} of the runs shared a core with other processes** (more than 0.2 of a core): their "
        "latency is mostly the machine's, and CPU per delivery (the server's own time) is the figure to trust.",
        "",
    ]
lines += [
    "Overall: " + ("-" if summary["all_met"] is None else
                   ("within 1.1x on CPU per delivery and latency" if summary["all_met"] else
                    "NOT within 1.1x on: " + ", ".join(k for k in judged if verdicts[k] is False))) + ".",
    "",
]
with open(md, "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines), file=sys.stderr)
PY
log "JSON lines appended to $results; $out/api.md; logs in $logs/"
