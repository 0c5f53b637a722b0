#!/usr/bin/env bash
# CI smoke test of the load tool: builds chat-server and chat-bench (debug),
# starts a server on an ephemeral port and runs a seconds-long fanout, ramp,
# idle and resume flood against it; then a restart under a handful of clients (the reconnect
# scenario: back with their sessions, then with passwords, this script
# restarting the server as run.sh does); then, where redis-server is
# installed, a fanout against two servers sharing a Redis of the smoke's own
# (members spread over both, every PUBLISH counted) and a resume flood through
# one of them (Redis's output bytes per resume counted); and, where the server
# speaks presence, a fanout with every member watching and a join storm
# against a server with a users file of the smoke's own; and, where it has
# the server API, a fanout whose messages are posted through the API, and
# posts with a wrong key counted as errors. No timing is asserted; a scenario fails the smoke if it
# reports errors, delivers nothing, or its output is not one JSON line.
# Needs only cargo (no Go, no taskset). Takes well under a minute once built.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/debug

cargo build -q -p chat-server -p chat-bench

work=$(mktemp -d)
server_pid=
extra_pids=() # the Redis run's redis-server and servers
cleanup() {
  local pid
  for pid in "$server_pid" ${extra_pids[@]+"${extra_pids[@]}"}; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Short heartbeats so the idle scenario sees a few rounds in seconds; the
# ramp sends faster than a person, so the per-client event budget is lifted.
"$bin/chat-server" --listen 127.0.0.1:0 --www "$root/www" --log-level info \
  --ping-interval 1s --pong-wait 2s --event-rate 1000000 --event-burst 1000000 \
  2>"$work/server.log" &
server_pid=$!

# The address a server logged, once it has: server_addr LOG PID.
server_addr() {
  local addr=
  for _ in $(seq 1 100); do
    addr=$(sed -n 's|.*listening on http://\([0-9.:]*\).*|\1|p' "$1" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    echo "smoke: the server did not report its address" >&2
    cat "$1" >&2
    return 1
  fi
  echo "$addr"
}
addr=$(server_addr "$work/server.log" "$server_pid")
echo "smoke: server pid $server_pid on $addr"
common=(--url "http://$addr" --pid "$server_pid" --label smoke)

passed=0
failed=0
run() {
  local name=$1
  shift
  local status=0
  "$bin/chat-bench" "$name" "${common[@]}" "$@" >"$work/$name.json" 2>"$work/$name.txt" || status=$?
  local lines
  lines=$(grep -c '^{.*}$' "$work/$name.json" || true)
  if [ "$status" -eq 0 ] && [ "$lines" -eq 1 ]; then
    passed=$((passed + 1))
    echo "smoke: $name ok"
  else
    failed=$((failed + 1))
    echo "smoke: $name FAILED (exit $status)" >&2
    cat "$work/$name.txt" "$work/$name.json" >&2
  fi
}

run fanout --rooms 2 --members 5 --senders 2 --rate 20 --duration 2s --warmup 500ms --drain 3s
run ramp --rooms 2 --members 5 --senders 1 --start-rate 20 --factor 2 --step 1s \
  --max-steps 3 --refine 0 --warmup 200ms --drain 2s --p99 10s
run idle --connections 50 --hold 3s
run resume-flood --resumers 5 --fill 20 --duration 1s --baseline 1s --warmup 200ms --drain 3s

# A server with a session key, restarted twice on the same address under six
# clients in two rooms: each time chat-bench says it is ready (a line in the
# ready file), SIGTERM, wait, start it again; the clients come back with their
# sessions, then with their password.
reconnect_smoke() {
  head -c 32 /dev/urandom >"$work/session.key"
  local flags=(--www "$root/www" --log-level info --session-key "$work/session.key")
  "$bin/chat-server" --listen 127.0.0.1:0 "${flags[@]}" 2>"$work/server-reconnect-0.log" &
  local pid=$!
  extra_pids+=("$pid")
  local addr
  addr=$(server_addr "$work/server-reconnect-0.log" "$pid") || return 1
  echo "$pid" >"$work/reconnect.pid"
  "$bin/chat-bench" reconnect --url "http://$addr" --pid "$pid" --label smoke --connections 6 --members 3 \
    --via session,password --ready-file "$work/ready" --new-pid-file "$work/reconnect.pid" \
    --restart-timeout 20s --back-timeout 20s >"$work/reconnect.json" 2>"$work/reconnect.txt" &
  local tool=$! round seen status=0
  for round in 1 2; do
    while :; do
      seen=0
      [ -f "$work/ready" ] && seen=$(grep -c '^ready' "$work/ready" || true)
      [ "$seen" -ge "$round" ] && break
      kill -0 "$tool" 2>/dev/null || break 2
      sleep 0.05
    done
    kill -TERM "$pid"
    wait "$pid" || true
    "$bin/chat-server" --listen "$addr" "${flags[@]}" 2>"$work/server-reconnect-$round.log" &
    pid=$!
    extra_pids+=("$pid")
    echo "$pid" >"$work/reconnect.pid"
  done
  wait "$tool" || status=$?
  if [ "$status" -eq 0 ] && [ "$(grep -c '^{.*}$' "$work/reconnect.json")" -eq 1 ] &&
    [ "$(grep -o '"verified":true' "$work/reconnect.json" | wc -l)" -eq 2 ]; then
    echo "smoke: reconnect after a restart (sessions, then passwords) ok"
  else
    echo "smoke: reconnect after a restart FAILED (exit $status)" >&2
    cat "$work/reconnect.txt" "$work/reconnect.json" >&2
    return 1
  fi
}
if reconnect_smoke; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi

# Two servers on one Redis: chat-bench spreads the members over both (--url
# twice), sums their CPU (--pid twice) and counts Redis's PUBLISHes per step.
redis_smoke() {
  local rport='' rpid=''
  for _ in 1 2 3 4 5; do
    rport=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && continue # taken
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
    rpid=$!
    extra_pids+=("$rpid")
    for _ in $(seq 1 50); do
      [ "$(redis-cli -p "$rport" PING 2>/dev/null)" = PONG ] && break 2
      sleep 0.1
    done
  done
  if [ "$(redis-cli -p "$rport" PING 2>/dev/null)" != PONG ]; then
    echo "smoke: redis-server did not start" >&2
    cat "$work/redis.log" >&2
    return 1
  fi
  local urls=() pids=() i addr pid
  for i in 1 2; do
    "$bin/chat-server" --listen 127.0.0.1:0 --www "$root/www" --log-level info \
      --event-rate 1000000 --event-burst 1000000 --redis "redis://127.0.0.1:$rport" --redis-prefix "smoke:" \
      2>"$work/server-redis-$i.log" &
    pid=$!
    extra_pids+=("$pid")
    addr=$(server_addr "$work/server-redis-$i.log" "$pid") || return 1
    # Logins answer 503 until both Redis links are up: wait for /healthz.
    for _ in $(seq 1 50); do
      (
        exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"
        printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3
        IFS= read -r -t 2 status <&3
        [[ $status == "HTTP/1.1 200"* ]]
      ) 2>/dev/null && break
      sleep 0.1
    done
    urls+=(--url "http://$addr")
    pids+=(--pid "$pid")
  done
  local status=0
  "$bin/chat-bench" fanout "${urls[@]}" "${pids[@]}" --redis-pid "$rpid" --redis "redis://127.0.0.1:$rport" \
    --label smoke-redis --rooms 2 --members 5 --senders 2 --rate 20 --duration 2s --warmup 500ms --drain 3s \
    >"$work/fanout-redis.json" 2>"$work/fanout-redis.txt" || status=$?
  if [ "$status" -eq 0 ] && [ "$(grep -c '^{.*}$' "$work/fanout-redis.json")" -eq 1 ] &&
    grep -q '"publishes_per_message":1.0[,}]' "$work/fanout-redis.json" &&
    grep -q '"opened_per_server":\[5,5\]' "$work/fanout-redis.json"; then
    echo "smoke: fanout over two servers and Redis ok"
  else
    echo "smoke: fanout over two servers and Redis FAILED (exit $status)" >&2
    cat "$work/fanout-redis.txt" "$work/fanout-redis.json" >&2
    return 1
  fi
  # The resume flood through the first server: Redis's bytes are counted.
  status=0
  "$bin/chat-bench" resume-flood "${urls[@]:0:2}" "${pids[@]:0:2}" --redis "redis://127.0.0.1:$rport" \
    --label smoke-redis --resumers 5 --fill 20 --duration 1s --baseline 1s --warmup 200ms --drain 3s \
    >"$work/resume-flood-redis.json" 2>"$work/resume-flood-redis.txt" || status=$?
  if [ "$status" -eq 0 ] && [ "$(grep -c '^{.*}$' "$work/resume-flood-redis.json")" -eq 1 ] &&
    grep -q '"redis_output_bytes_per_resume":[0-9]' "$work/resume-flood-redis.json"; then
    echo "smoke: resume flood through Redis ok"
  else
    echo "smoke: resume flood through Redis FAILED (exit $status)" >&2
    cat "$work/resume-flood-redis.txt" "$work/resume-flood-redis.json" >&2
    return 1
  fi
}
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  if redis_smoke; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
else
  echo "smoke: no redis-server; the two-server fanout is skipped"
fi

# Presence: ten users (u0 .. u9, one hash), a fanout with every member
# watching (no presence frame counted as a delivery, every roster complete)
# and a join storm of 20 members (two tabs per user) cut and back at once.
presence_smoke() {
  local hash
  hash=$(echo 123 | "$bin/chat-server" hash-password) || return 1
  for i in $(seq 0 9); do echo "u$i:$hash"; done >"$work/users"
  "$bin/chat-server" --listen 127.0.0.1:0 --www "$root/www" --log-level info --users "$work/users" \
    --event-rate 1000000 --event-burst 1000000 2>"$work/server-presence.log" &
  local pid=$!
  extra_pids+=("$pid")
  local addr status=0
  addr=$(server_addr "$work/server-presence.log" "$pid") || return 1
  "$bin/chat-bench" fanout --url "http://$addr" --pid "$pid" --label smoke-presence --user u --user-count 10 \
    --presence 1 --rooms 2 --members 5 --senders 2 --rate 20 --duration 2s --warmup 500ms --drain 3s \
    >"$work/fanout-presence.json" 2>"$work/fanout-presence.txt" || status=$?
  if [ "$status" -ne 0 ] || [ "$(grep -c '^{.*}$' "$work/fanout-presence.json")" -ne 1 ] ||
    ! grep -q '"presence_rosters_complete":true' "$work/fanout-presence.json"; then
    echo "smoke: fanout with presence FAILED (exit $status)" >&2
    cat "$work/fanout-presence.txt" "$work/fanout-presence.json" >&2
    return 1
  fi
  "$bin/chat-bench" join-storm --url "http://$addr" --pid "$pid" --label smoke-presence --user u --user-count 10 \
    --members 20 --quiet 300ms --timeout 20s --metrics "http://$addr/metrics" \
    >"$work/join-storm.json" 2>"$work/join-storm.txt" || status=$?
  if [ "$status" -eq 0 ] && [ "$(grep -c '^{.*}$' "$work/join-storm.json")" -eq 1 ] &&
    grep -q '"stable_s":[0-9]' "$work/join-storm.json"; then
    echo "smoke: fanout with presence and join storm ok"
  else
    echo "smoke: join storm FAILED (exit $status)" >&2
    cat "$work/join-storm.txt" "$work/join-storm.json" >&2
    return 1
  fi
}
if "$bin/chat-server" --help 2>&1 | grep -q -- '--presence-max-users'; then
  if presence_smoke; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
else
  echo "smoke: chat-server has no presence; the presence smoke is skipped"
fi

# The server API: a server with a key of the smoke's own; a fanout whose
# messages are posted through the API (every answer a 202, every post
# answered), then a few posts with another key, which must come back 401 and
# be counted as errors (exit 1), not as deliveries.
api_smoke() {
  local key=$work/api.key wrong=$work/wrong.key
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$key" && echo >>"$key")
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$wrong" && echo >>"$wrong")
  "$bin/chat-server" --listen 127.0.0.1:0 --www "$root/www" --log-level info --api-key "$key" \
    --event-rate 1000000 --event-burst 1000000 2>"$work/server-api.log" &
  local pid=$!
  extra_pids+=("$pid")
  local addr status=0
  addr=$(server_addr "$work/server-api.log" "$pid") || return 1
  "$bin/chat-bench" fanout --url "http://$addr" --pid "$pid" --label smoke-api --post-via api --api-key "$key" \
    --rooms 2 --members 5 --senders 2 --rate 20 --duration 2s --warmup 500ms --drain 3s \
    >"$work/fanout-api.json" 2>"$work/fanout-api.txt" || status=$?
  if [ "$status" -ne 0 ] || [ "$(grep -c '^{.*}$' "$work/fanout-api.json")" -ne 1 ] ||
    ! grep -q '"post_via":"api"' "$work/fanout-api.json" ||
    ! grep -q '"answered_202":[1-9]' "$work/fanout-api.json" ||
    grep -q '"answered_other":[1-9]\|"unanswered":[1-9]' "$work/fanout-api.json"; then
    echo "smoke: fanout posted through the API FAILED (exit $status)" >&2
    cat "$work/fanout-api.txt" "$work/fanout-api.json" >&2
    return 1
  fi
  status=0
  "$bin/chat-bench" fanout --url "http://$addr" --pid "$pid" --label smoke-api-wrong-key --post-via api \
    --api-key "$wrong" --rooms 1 --members 2 --senders 1 --rate 2 --duration 1s --warmup 0s --drain 1s \
    >"$work/fanout-api-wrong.json" 2>"$work/fanout-api-wrong.txt" || status=$?
  if [ "$status" -eq 1 ] && [ "$(grep -c '^{.*}$' "$work/fanout-api-wrong.json")" -eq 1 ] &&
    grep -q '"api: HTTP 401":[1-9]' "$work/fanout-api-wrong.json"; then
    echo "smoke: fanout posted through the API, and a wrong key refused, ok"
  else
    echo "smoke: posts with a wrong key were not counted as refused (exit $status)" >&2
    cat "$work/fanout-api-wrong.txt" "$work/fanout-api-wrong.json" >&2
    return 1
  fi
}
if "$bin/chat-server" --help 2>&1 | grep -q -- '--api-key'; then
  if api_smoke; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
else
  echo "smoke: chat-server has no server API; the API smoke is skipped"
fi

# The server must still be up and must shut down cleanly.
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "smoke: the server died during the run" >&2
  tail -n 20 "$work/server.log" >&2
  failed=$((failed + 1))
else
  kill -TERM "$server_pid"
  wait "$server_pid" || { echo "smoke: server exit status $? on SIGTERM" >&2; failed=$((failed + 1)); }
  server_pid=
fi

echo "smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
