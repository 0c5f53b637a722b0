#!/usr/bin/env bash
# What GET /api/rooms costs Redis: src/redis/rooms.lua is run step by step (as
# chat-server does, one SCAN step per call, cursor to cursor) over a Redis of
# this script's own filled with N keys, a tenth of them rooms' presence hashes
# (three users each); SLOWLOG gives each step's time inside Redis, which is
# how long Redis serves nobody else.
#
#   bash bench/api-rooms-walk.sh      # 10,000 and 100,000 keys, under a minute
set -euo pipefail
cd "$(dirname "$0")/.."
script_file=$PWD/src/redis/rooms.lua
# shellcheck source=bench/common.sh
. bench/common.sh
port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pid=$!
trap 'kill $pid; wait $pid 2>/dev/null' EXIT
for _ in $(seq 50); do redis-cli -p "$port" PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null || { echo "api-rooms-walk.sh: redis-server did not start on $port" >&2; exit 1; }
cli() { redis-cli -p $port "$@"; }
script=$(cat "$script_file")
for keys in 10000 100000; do
  cli FLUSHALL >/dev/null
  rooms=$((keys / 10))
  cli EVAL "for r = 0, $rooms - 1 do redis.call('HSET', 'chat:{room:r' .. r .. '}:presence', 'p1', '1', 'p1:u1', '1', 'p1:u2', '2', 'p2:u1', '1') end for k = 1, $keys - $rooms do redis.call('SET', 'chat:other:' .. k, 'x') end return 1" 0 >/dev/null
  cli CONFIG SET slowlog-log-slower-than 0 >/dev/null
  cli CONFIG SET slowlog-max-len 100000 >/dev/null
  cli SLOWLOG RESET >/dev/null
  cursor=0; steps=0
  while :; do
    out=$(cli --no-raw EVAL "$script" 0 'chat:{room:*}:presence' "$cursor")
    cursor=$(echo "$out" | head -1 | sed -E 's/^1\) "?([0-9]+)"?$/\1/')
    steps=$((steps + 1))
    [ "$cursor" = 0 ] && break
  done
  python3 - "$keys" "$rooms" "$steps" <<PY
import subprocess, sys, json, statistics
keys, rooms, steps = sys.argv[1:4]
raw = subprocess.run(["redis-cli","-p","$port","--json","SLOWLOG","GET","100000"],capture_output=True,text=True).stdout
entries = json.loads(raw)
d = [e[2] for e in entries if e[3][0].upper()=="EVAL"]
print(f"keys={keys} rooms={rooms}: {steps} steps, per step µs median {statistics.median(d):.0f} max {max(d)}, total {sum(d)} µs")
PY
done
