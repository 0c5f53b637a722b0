#!/usr/bin/env bash
# The failover row (issue 24, "Redis without a single point of failure"):
# two chat-server processes on a Redis master with one replica, found through
# three Sentinels; 1,000 members chatting at a steady rate across both; the
# master is SIGKILLed a few seconds into the measured traffic. Reports:
#   - seconds from the kill until POST /login answers 200 again, per process
#     (a login is polled every 50 ms on each; "back" is the first 200 after
#     the last refusal that followed the kill);
#   - messages sent, deliveries made, made late (later than LATE after the
#     send) and never made (a member of the room when the message was sent
#     never got it: chat-bench fanout --each), and per message;
#   - each process's chat_redis_failovers_total, chat_redis_last_outage_seconds
#     and the rest of its chat_redis_* counters.
# Everything it starts (two redis-servers, three sentinels, two chat-servers,
# the load tool, the login poller) runs on free loopback ports, persistence
# off, and is stopped by its PID when the script exits.
#
#   bash bench/failover.sh             # about a minute
#   QUICK=1 bash bench/failover.sh     # smaller and shorter, to try it
#
# Environment: OUT (results dir: a JSON line goes to OUT/results.jsonl, logs
# to OUT/logs/failover-*), OURS_BIN / BENCH_BIN (binaries; default this tree's
# target/release, built unless SKIP_BUILD=1), ROOMS MEMBERS SENDERS RATE
# (the fan-out: default 10 x 100 members, 5 senders per room at 6 msgs/s,
# run.sh's standard 30,000 deliveries/s), DURATION (measured traffic, 30s),
# KILL_AFTER (seconds into it, 5), LATE (1s), DRAIN (after the traffic, 10s).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh
root=$PWD
bench=$root/bench
target=${CARGO_TARGET_DIR:-$root/target}
out=${OUT:-$bench/results}
quick=${QUICK:-0}

rooms=${ROOMS:-10}
members=${MEMBERS:-100}
senders=${SENDERS:-5}
rate=${RATE:-6}
duration=${DURATION:-30s}
kill_after=${KILL_AFTER:-5}
late=${LATE:-1s}
drain=${DRAIN:-10s}
if [ "$quick" = 1 ]; then
  rooms=${ROOMS:-4} members=${MEMBERS:-25} duration=${DURATION:-12s} kill_after=${KILL_AFTER:-3}
fi
master_name=benchmaster
poll_interval=0.05

log() { printf '\n=== failover: %s\n' "$*" >&2; }
die() {
  echo "failover.sh: $*" >&2
  exit 1
}

if [[ ${duration%s} =~ ^[0-9]+$ && $kill_after =~ ^[0-9]+$ ]] && [ "$kill_after" -ge "${duration%s}" ]; then
  die "KILL_AFTER ($kill_after s) must fall within DURATION ($duration)"
fi
for tool in redis-server redis-cli python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done
ulimit -n 20000 2>/dev/null || ulimit -n 4096 || die "cannot raise the file limit"

if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${OURS_BIN:-}" ]; then
  log "building chat-server and chat-bench (release)"
  cargo build --release -q -p chat-server -p chat-bench
fi
ours_bin=${OURS_BIN:-$target/release/chat-server}
bench_bin=${BENCH_BIN:-$target/release/chat-bench}
"$ours_bin" --help 2>&1 | grep -q -- '--redis-sentinel' ||
  die "$ours_bin has no --redis-sentinel"
"$bench_bin" --help 2>&1 | grep -q -- '--each' || die "$bench_bin has no fanout --each"

pin_cores failover.sh

mkdir -p "$out/logs"
results=$out/results.jsonl
logs=$out/logs
tmp=$(mktemp -d)
pids=()   # everything started, stopped by PID at exit
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

# Polls `cond ARGS...` every 50 ms until it holds or SECONDS pass.
wait_for() { # what seconds cond args...
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${seconds}s waiting for $what"
    sleep 0.05
  done
}

redis_ping() { [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ]; }

replica_synced() {
  redis-cli -p "$1" INFO replication 2>/dev/null | tr -d '\r' | grep -qx 'master_link_status:up'
}

# A sentinel knows the replica and the other two sentinels.
sentinel_ready() { # port
  redis-cli -p "$1" SENTINEL master "$master_name" 2>/dev/null | tr -d '\r' | awk '
    prev == "num-slaves" { slaves = $0 }
    prev == "num-other-sentinels" { others = $0 }
    { prev = $0 }
    END { exit !(slaves >= 1 && others >= 2) }'
}

healthy() { # port
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/healthz")" = 200 ]
}

# ---- Redis: a master, a replica, three sentinels ----
master_port=$(free_port)
replica_port=$(free_port)
redis_common=(--bind 127.0.0.1 --save '' --appendonly no --daemonize no --logfile '')
log "redis-server master on $master_port, replica on $replica_port, 3 sentinels (core 0)"
(exec "${server_cpu[@]}" redis-server --port "$master_port" "${redis_common[@]}") \
  >"$logs/failover-redis-master-$master_port.log" 2>&1 &
master_pid=$!
pids+=("$master_pid")
wait_for "the master" 10 redis_ping "$master_port"
(exec "${server_cpu[@]}" redis-server --port "$replica_port" "${redis_common[@]}" \
  --replicaof 127.0.0.1 "$master_port" --repl-diskless-load on-empty-db) \
  >"$logs/failover-redis-replica-$replica_port.log" 2>&1 &
pids+=($!)
wait_for "the replica in sync" 30 replica_synced "$replica_port"

sentinel_ports=()
for i in 1 2 3; do
  port=$(free_port)
  conf=$tmp/sentinel-$i.conf # each its own: a sentinel rewrites its file
  cat >"$conf" <<EOF
port $port
bind 127.0.0.1
daemonize no
logfile ""
dir $tmp
sentinel monitor $master_name 127.0.0.1 $master_port 2
sentinel down-after-milliseconds $master_name 1000
sentinel failover-timeout $master_name 2000
EOF
  (exec "${server_cpu[@]}" redis-server "$conf" --sentinel) >"$logs/failover-sentinel-$port.log" 2>&1 &
  pids+=($!)
  sentinel_ports+=("$port")
done
for port in "${sentinel_ports[@]}"; do
  wait_for "sentinel $port to know the replica and the other sentinels" 60 sentinel_ready "$port"
done

# ---- two chat-servers on the sentinels ----
sentinel_flags=()
for port in "${sentinel_ports[@]}"; do sentinel_flags+=(--redis-sentinel "127.0.0.1:$port"); done
chat_ports=()
chat_pids=()
prefix="bench-failover-$$:"
for i in 1 2; do
  port=$(free_port)
  (exec "${server_cpu[@]}" "$ours_bin" --listen "127.0.0.1:$port" --www "$root/www" --log-level info \
    --max-connections 19500 --max-queue 1048576 --max-connections-per-ip 0 \
    --event-rate 1000000 --event-burst 1000000 \
    "${sentinel_flags[@]}" --redis-master "$master_name" --redis-prefix "$prefix") \
    2>"$logs/failover-server-$port.log" &
  pids+=($!)
  chat_pids+=($!)
  chat_ports+=("$port")
done
for port in "${chat_ports[@]}"; do
  wait_for "chat-server $port to answer /healthz with 200" 30 healthy "$port"
done

# ---- the login poller: POST /login on each process every 50 ms ----
stop_file=$tmp/stop
logins=$tmp/logins.txt
python3 - "$stop_file" "$logins" "$poll_interval" "${chat_ports[@]}" <<'PY' &
import http.client, sys, threading, time
stop, path, interval, ports = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
body = b'{"username":"percy","password":"123"}'
lock = threading.Lock()
out = open(path, "w")

def poll(port):
    while True:
        try:
            open(stop).close()
            return
        except FileNotFoundError:
            pass
        start = time.time()
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=2)
            c.request("POST", "/login", body, {"Content-Type": "application/json"})
            status = c.getresponse().status
            c.close()
        except Exception as e:  # refused, reset, timed out: not a 200
            status = type(e).__name__
        end = time.time()
        with lock:
            out.write(f"{port} {start:.6f} {end:.6f} {status}\n")
            out.flush()
        time.sleep(max(0.0, start + interval - time.time()))

threads = [threading.Thread(target=poll, args=(p,)) for p in ports]
for t in threads:
    t.start()
for t in threads:
    t.join()
PY
pids+=($!)

# ---- the load, and the kill ----
name=failover
urls=()
for port in "${chat_ports[@]}"; do urls+=(--url "http://127.0.0.1:$port"); done
for pid in "${chat_pids[@]}"; do urls+=(--pid "$pid"); done
log "chat-bench: $rooms rooms x $members members over both processes, $senders senders/room at $rate/s" \
  "for $duration; the master (pid $master_pid) is killed ${kill_after}s in"
"${client_cpu[@]}" "$bench_bin" fanout "${urls[@]}" --rooms "$rooms" --members "$members" \
  --senders "$senders" --rate "$rate" --duration "$duration" --warmup 2s --drain "$drain" \
  --late "$late" --each true --label ours-sentinel \
  >"$logs/$name.json" 2> >(tee "$logs/$name.txt" >&2) &
tool=$!
pids+=("$tool")
measuring() { grep -q '^measuring for' "$logs/$name.txt" 2>/dev/null || ! kill -0 "$tool" 2>/dev/null; }
wait_for "chat-bench to start measuring" 300 measuring
kill -0 "$tool" 2>/dev/null || die "chat-bench ended before measuring; see $logs/$name.txt"
sleep "$kill_after" # the kill is scheduled a fixed time into the measured traffic
killed_at=$(date +%s.%N)
kill -KILL "$master_pid"
{ wait "$master_pid"; } 2>/dev/null || true # reaped here, so bash does not report the kill
for i in "${!pids[@]}"; do [ "${pids[$i]}" != "$master_pid" ] || unset 'pids[i]'; done
log "master killed (SIGKILL) at $killed_at"
tool_status=0
wait "$tool" || tool_status=$?
touch "$stop_file"

# ---- what each process says ----
for port in "${chat_ports[@]}"; do
  curl -s --max-time 5 "http://127.0.0.1:$port/metrics" >"$tmp/metrics-$port.txt" || true
done
new_master=$(redis-cli -p "${sentinel_ports[0]}" SENTINEL get-master-addr-by-name "$master_name" 2>/dev/null |
  tr -d '\r' | tail -n 1)

python3 - "$logs/$name.json" "$logins" "$killed_at" "$tmp" "$tool_status" "$master_port" "$replica_port" \
  "$new_master" "$logs" "$out/failover.md" "$kill_after" "${chat_ports[@]}" >>"$results" <<'PY'
import datetime, glob, json, os, re, sys, time
(tool_json, logins_path, killed, tmp, tool_status, master_port, replica_port, new_master, logs, md,
 kill_after, *ports) = sys.argv[1:]
killed = float(killed)

# Logins: per process, the first 200 after the last refusal that followed the kill.
polls = {p: [] for p in ports}
for line in open(logins_path):
    port, start, end, status = line.split()
    polls[port].append((float(start), float(end), status))
logins = {}
for port, rows in polls.items():
    after = [r for r in rows if r[1] >= killed]  # answered after the kill
    refused = [r for r in after if r[2] != "200"]
    if not refused:
        back = 0.0 if after else None
        first_refused = None
    else:
        last_refused = refused[-1]
        back_row = next((r for r in after if r[0] > last_refused[0] and r[2] == "200"), None)
        back = None if back_row is None else back_row[1] - killed
        first_refused = refused[0][1] - killed
    statuses = {}
    for r in refused:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    logins[port] = {
        "back_s": None if back is None else round(back, 3),
        "first_refused_s": None if first_refused is None else round(first_refused, 3),
        "refused": len(refused),
        "refused_by_status": statuses,
        "polls_after_kill": len(after),
    }

# When the sentinels switched (the earliest +switch-master in their logs).
switched = None
for path in glob.glob(os.path.join(logs, "failover-sentinel-*.log")):
    for line in open(path, errors="replace"):
        if "+switch-master" in line:
            m = re.search(r"(\d+ \w{3} \d{4} \d\d:\d\d:\d\d\.\d{3})", line)
            if m:
                t = datetime.datetime.strptime(m.group(1), "%d %b %Y %H:%M:%S.%f")
                at = time.mktime(t.timetuple()) + t.microsecond / 1e6
                if at >= killed - 1 and (switched is None or at < switched):
                    switched = at

def metrics(port):
    found = {}
    try:
        text = open(os.path.join(tmp, f"metrics-{port}.txt")).read()
    except OSError:
        return found
    for line in text.splitlines():
        if line.startswith("chat_redis_"):
            key, _, value = line.rpartition(" ")
            try:
                found[key] = float(value)
            except ValueError:
                pass
    return found

bench = {}
for line in open(tool_json):
    if line.startswith("{"):
        bench = json.loads(line)
step = bench.get("step", {})
each = step.get("each", {})
row = {
    "scenario": "failover",
    "label": "ours-sentinel",
    "processes": len(ports),
    "rooms": bench.get("rooms"),
    "members": bench.get("members"),
    "connections": bench.get("connections"),
    "rate_per_sender": step.get("rate_per_sender"),
    "senders": step.get("senders"),
    "duration_s": step.get("duration_s"),
    "kill_after_s": float(kill_after),
    "killed_master": f"127.0.0.1:{master_port}",
    "new_master": f"127.0.0.1:{new_master}" if new_master else None,
    "promoted_replica": new_master == replica_port,
    "sentinels_switched_s": None if switched is None else round(switched - killed, 3),
    "logins_back_s": {f"127.0.0.1:{p}": logins[p]["back_s"] for p in ports},
    "logins_back_s_max": (None if any(logins[p]["back_s"] is None for p in ports)
                          else max(logins[p]["back_s"] for p in ports)),
    "logins": {f"127.0.0.1:{p}": logins[p] for p in ports},
    "messages_sent": step.get("sent"),
    "deliveries_expected": each.get("deliveries_expected"),
    "deliveries_received": each.get("deliveries_received"),
    "late_after_ms": each.get("late_after_ms"),
    "deliveries_late": each.get("deliveries_late"),
    "messages_late": each.get("messages_late"),
    "deliveries_never": each.get("deliveries_never"),
    "messages_never_delivered_to_some": each.get("messages_never_delivered_to_some"),
    "messages_never_delivered_to_any": each.get("messages_never_delivered_to_any"),
    "duplicates": each.get("duplicates"),
    # When the messages some member never got were sent, seconds after the kill.
    "never_delivered_sent_s": [
        None if each.get(k) is None else round(each[k] - killed, 3)
        for k in ("never_delivered_sent_first_unix_s", "never_delivered_sent_last_unix_s")],
    "never_delivered_to_any_sent_s": [round(t - killed, 3)
                                      for t in each.get("never_delivered_to_any_sent_unix_s", [])],
    "latency_ms": step.get("latency_ms"),
    "connections_lost": bench.get("connections_lost"),
    "errors": bench.get("errors"),
    "error_kinds": bench.get("error_kinds"),
    "load_tool_exit": int(tool_status),
    "server_metrics": {f"127.0.0.1:{p}": metrics(p) for p in ports},
}
print(json.dumps(row))

def n(v):
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

def say(text):
    print(text, file=sys.stderr)

lat = row["latency_ms"] or {}
say(f"""
failover: {n(row['connections'])} members in {n(row['rooms'])} rooms over {len(ports)} processes, \
{n(row['senders'])} senders at {n(row['rate_per_sender'])}/s for {n(row['duration_s'])} s
  master {row['killed_master']} SIGKILLed; now {row['new_master']} (the replica: {row['promoted_replica']}); \
the sentinels switched {n(row['sentinels_switched_s'])} s after the kill""")
for p in ports:
    l = logins[p]
    m = row["server_metrics"][f"127.0.0.1:{p}"]
    g = lambda k: n(None if m.get(k) is None else round(m[k], 3))
    say(f"  127.0.0.1:{p}: logins 200 again {n(l['back_s'])} s after the kill (refused from "
        f"{n(l['first_refused_s'])} s: {l['refused']} polls {l['refused_by_status']}); "
        f"chat_redis_failovers_total {g('chat_redis_failovers_total')}, "
        f"last_outage_seconds {g('chat_redis_last_outage_seconds')}, local_only {g('chat_redis_local_only_total')}, "
        f"recovered {g('chat_redis_recovered_total')}, gaps {g('chat_redis_sequence_gaps_total')}")
say(f"""  messages sent {n(row['messages_sent'])}; deliveries owed {n(row['deliveries_expected'])}, \
made {n(row['deliveries_received'])}
  late (> {n(row['late_after_ms'])} ms): {n(row['deliveries_late'])} deliveries, {n(row['messages_late'])} messages
  never delivered: {n(row['deliveries_never'])} deliveries; {n(row['messages_never_delivered_to_some'])} messages \
missed by some member, {n(row['messages_never_delivered_to_any'])} by every member; duplicates {n(row['duplicates'])}
  the messages missed were sent from {n(row['never_delivered_sent_s'][0])} to {n(row['never_delivered_sent_s'][1])} s \
after the kill; those missed by all at {row['never_delivered_to_any_sent_s']} s
  latency ms p50 {n(lat.get('p50'))} p99 {n(lat.get('p99'))} max {n(lat.get('max'))}; \
connections lost {n(row['connections_lost'])}; errors {n(row['errors'])} {row['error_kinds'] or ''}""")

# The same as a section of REPORT.md (run.sh appends it).
each_p = [f"127.0.0.1:{p}" for p in ports]
metric = lambda key: " / ".join(n(None if row["server_metrics"][a].get(key) is None
                                   else round(row["server_metrics"][a][key], 3)) for a in each_p)
never = row["deliveries_never"]
ok = None if never is None else never == 0
lines = [
    "### Failover: the Redis master killed under chat (issue 24)",
    "",
    f"`bench/failover.sh`: a redis-server master, one replica and three Sentinels (down after 1 s, failover "
    f"timeout 2 s, quorum 2), two chat-server processes on the sentinels (`--redis-sentinel` x 3, "
    f"`--redis-master`), {n(row['connections'])} members in {n(row['rooms'])} rooms with members on both, "
    f"{n(row['senders'])} senders at {n(row['rate_per_sender'])} msgs/s for {n(row['duration_s'])} s; the master "
    f"is SIGKILLed {kill_after} s into the measured traffic while `POST /login` is polled every 50 ms on each process. "
    "Everything server-side on core 0, the load tool on core 1.",
    "",
    "| measure | value | target | verdict |",
    "| --- | --- | --- | --- |",
    f"| logins answer 200 again after the kill, s (each process: first 200 after the last refusal) "
    f"| {' / '.join(n(row['logins_back_s'][a]) for a in each_p)} | | |",
    f"| the sentinels switched the master after the kill, s (their log's `+switch-master`) "
    f"| {n(row['sentinels_switched_s'])} | | |",
    f"| `chat_redis_failovers_total`, each process | {metric('chat_redis_failovers_total')} | | |",
    f"| `chat_redis_last_outage_seconds`, each process | {metric('chat_redis_last_outage_seconds')} | | |",
    f"| messages sent; deliveries owed / made | {n(row['messages_sent'])}; {n(row['deliveries_expected'])} / "
    f"{n(row['deliveries_received'])} | | |",
    f"| delivered late (more than {n(row['late_after_ms'])} ms after the send): deliveries (messages) "
    f"| {n(row['deliveries_late'])} ({n(row['messages_late'])}) | | |",
    f"| never delivered: deliveries (messages missed by some member / by every member) "
    f"| {n(never)} ({n(row['messages_never_delivered_to_some'])} / {n(row['messages_never_delivered_to_any'])}) "
    f"| none | {'-' if ok is None else 'met' if ok else 'MISSED'} |",
    f"| when the messages never delivered were sent, s after the kill "
    f"| {n(row['never_delivered_sent_s'][0])} to {n(row['never_delivered_sent_s'][1])} | | |",
    f"| messages delivered to this process's members only (`chat_redis_local_only_total`), each "
    f"| {metric('chat_redis_local_only_total')} | | |",
    f"| latency ms p50 / p99 / max over the whole step | {n((row['latency_ms'] or {}).get('p50'))} / "
    f"{n((row['latency_ms'] or {}).get('p99'))} / {n((row['latency_ms'] or {}).get('max'))} | | |",
    "",
    "Per-delivery CPU over TLS to Redis against plain (the links only) is not part of this row: "
    "`MODES=\"local redis redis-tls\" bash bench/ab-fanout.sh BIN BIN` measures it (bench/README.md).",
    "",
]
with open(md, "w") as f:
    f.write("\n".join(lines))
PY
log "JSON line appended to $results; logs in $logs/failover-*"
