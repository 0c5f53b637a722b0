#!/usr/bin/env bash
# What the publish script costs Redis per message, at saturation.
#
# Starts a redis-server of its own on a free port (persistence off), two
# `redis-cli SUBSCRIBE` subscribers on the room's channel (what two server
# processes with members in the room are to Redis), loads the script and
# runs `redis-benchmark` calling it with EVALSHA for one room, pipelined, so
# Redis's one thread is the bottleneck. Prints each run's calls/s and
# µs per call (1e6 / rps), then the median of the runs, and for comparison
# the same for a bare PUBLISH of the same event.
#
#   bash bench/redis-script.sh                      # src/redis/publish.lua
#   LUA=old.lua KEYS="k:seq k:history k:epoch" bash bench/redis-script.sh
#
# LUA: the script; KEYS: the keys it is called with (space-separated; the
# ARGV are always: channel, event JSON without its closing `}}`, messages
# kept, key lifetime in ms, then EXTRA: for ours "0 <the master's
# replication id>", i.e. no refresh of the lifetime, which a process asks
# for once a quarter ttl per room, and the master hint a process passes
# once it knows it; EXTRA=0 measures a process that does not yet). RUNS (5), N (200000 calls a run), CLIENTS (50),
# PIPELINE (16), HISTORY (100), TTL_MS (600000).
# Needs redis-server, redis-cli and redis-benchmark (Debian: redis-server,
# redis-tools). The machine being shared, compare medians, run close together.
set -euo pipefail
cd "$(dirname "$0")/.."

lua=${LUA:-src/redis/publish.lua}
keys=${KEYS:-"bench:{room:r}:epoch bench:{room:r}:log"}
runs=${RUNS:-5}
n=${N:-200000}
clients=${CLIENTS:-50}
pipeline=${PIPELINE:-16}
history=${HISTORY:-100}
ttl_ms=${TTL_MS:-600000}
channel="bench:room:r"
event='{"type":"new_message","payload":{"message":"hello there, how is everyone today?","from":"percy","sent":"2026-12-03T10:00:00.000Z"'

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
cleanup() {
  local i pid
  # Subscribers first, then redis-server (the first started).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
  --loglevel warning >/dev/null &
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$port" PING >/dev/null 2>&1 && break
  sleep 0.05
done
# Subscribers that read and discard raw bytes (cheaper than redis-cli,
# which formats every message): the cost measured is Redis's.
for _ in 1 2; do
  bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"; printf "SUBSCRIBE %s\r\n" "$1" >&3; exec cat <&3 >/dev/null' \
    "$port" "$channel" &
  pids+=($!)
done
until [ "$(redis-cli -p "$port" PUBSUB NUMSUB "$channel" | tail -1)" = 2 ]; do
  sleep 0.05
done

sha=$(redis-cli -p "$port" SCRIPT LOAD "$(cat "$lua")")
replid=$(redis-cli -p "$port" INFO replication | tr -d '\r' | sed -n 's/^master_replid://p')
read -r -a extra <<<"${EXTRA-0 $replid}"
read -r -a key_list <<<"$keys"

# One run: calls/s of `redis-benchmark ... <command>`.
rate() {
  redis-benchmark -p "$port" -n "$n" -c "$clients" -P "$pipeline" -q "$@" |
    tr '\r' '\n' | awk '/requests per second/ { for (i = 1; i <= NF; i++) if ($(i+1) == "requests") print $i }' | tail -1
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

measure() {
  local label=$1
  shift
  local all=() r
  for _ in $(seq "$runs"); do
    r=$(rate "$@")
    all+=("$r")
    awk -v r="$r" -v l="$label" 'BEGIN { printf "%s: %.0f calls/s, %.2f µs per call\n", l, r, 1e6 / r }'
  done
  printf '%s\n' "${all[@]}" | median | awk -v l="$label" -v runs="$runs" \
    '{ printf "%s median of %d: %.0f calls/s, %.2f µs per call\n", l, runs, $1, 1e6 / $1 }'
}

echo "script $lua (sha $sha), keys: $keys; $n calls a run, $clients clients, pipeline $pipeline, 2 subscribers"
# One call first: a script that fails would be measured failing (fast).
first=$(redis-cli -p "$port" EVALSHA "$sha" "${#key_list[@]}" "${key_list[@]}" "$channel" "$event" "$history" "$ttl_ms" ${extra[@]+"${extra[@]}"})
case $first in
  '' | *ERR* | *rror*) echo "the script failed: $first" >&2; exit 1 ;;
esac
measure "EVALSHA" EVALSHA "$sha" "${#key_list[@]}" "${key_list[@]}" "$channel" "$event" "$history" "$ttl_ms" ${extra[@]+"${extra[@]}"}
last=$(redis-cli -p "$port" EVALSHA "$sha" "${#key_list[@]}" "${key_list[@]}" "$channel" "$event" "$history" "$ttl_ms" ${extra[@]+"${extra[@]}"})
echo "the script's first call returned $first, its last $last ($((runs * n + 2)) calls)"
redis-cli -p "$port" DEL "${key_list[@]}" >/dev/null
measure "PUBLISH" PUBLISH "$channel" "$event}}"
echo "subscribers still there at the end: $(redis-cli -p "$port" PUBSUB NUMSUB "$channel" | tail -1)"
