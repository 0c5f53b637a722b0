#!/usr/bin/env bash
# How the heartbeat changes the load tool's ACKs: for ours and the floor, each
# with and without a 9 s heartbeat, runs the standard fanout and, in the middle
# of it, reads the server's sockets with `ss -tni`: how many hold data the
# client has not ACKed yet, and their median smoothed RTT. A client that ACKs
# each message when it reads it leaves almost none unACKed and an RTT of
# microseconds; one in delayed-ACK mode leaves most unACKed for tens of ms.
#
#   bash bench/ack-mode.sh     (after bench/run.sh, or the two cargo builds below)
#
# Needs target/release/{chat-server,chat-bench} and target/peers/release/chat-floor:
#   cargo build --release --bins
#   cargo build --release --locked --manifest-path bench/floor/Cargo.toml --target-dir target/peers
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ours=$root/target/release/chat-server
floor=$root/target/peers/release/chat-floor
bench=$root/target/release/chat-bench
for bin in "$ours" "$floor" "$bench"; do
  [ -x "$bin" ] || { echo "ack-mode.sh: $bin is missing; build it first (see the top of this file)" >&2; exit 1; }
done
command -v ss >/dev/null || { echo "ack-mode.sh: needs ss (Debian: iproute2)" >&2; exit 1; }
snapshot=$(mktemp)
trap 'rm -f "$snapshot"' EXIT

printf '%-30s %8s %14s %16s\n' server sockets "with unACKed" "median srtt, ms"
for kind in ours ours-no-ping floor floor-ping; do
  port=$((20000 + RANDOM % 20000))
  case $kind in
    ours) cmd=("$ours" --www "$root/www" --log-level warn --max-connections-per-ip 0 --max-queue 1048576) ;;
    ours-no-ping) cmd=("$ours" --www "$root/www" --log-level warn --max-connections-per-ip 0 --max-queue 1048576
      --ping-interval 1h --pong-wait 2h) ;;
    floor) cmd=("$floor") ;;
    floor-ping) cmd=("$floor" --ping-interval 9) ;;
  esac
  taskset -c 0 "${cmd[@]}" --listen "127.0.0.1:$port" 2>/dev/null &
  server=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  taskset -c 1 "$bench" fanout --rooms 10 --members 100 --senders 5 --rate 6 --duration 25s --warmup 2s \
    --url "http://127.0.0.1:$port" --pid "$server" >/dev/null 2>&1 &
  load=$!
  # Past the connect phase and the warmup, and at least one full 9 s ping round.
  sleep 18
  ss -tni state established "( sport = :$port )" >"$snapshot"
  wait "$load" || true
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  python3 - "$snapshot" "$kind" <<'PY'
import re, statistics, sys
srtt, unacked = [], 0
for line in open(sys.argv[1]):
    m = re.search(r" rtt:([\d.]+)/", line)
    if m:
        srtt.append(float(m.group(1)))
        unacked += "unacked:" in line
label = sys.argv[2]
if not srtt:
    print(f"{label:<30} no sockets seen")
else:
    print(f"{label:<30} {len(srtt):>8} {unacked:>14} {statistics.median(srtt):>16.3f}")
PY
done
