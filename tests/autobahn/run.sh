#!/usr/bin/env bash
# Autobahn|Testsuite (wstest -m fuzzingclient) against the server's echo route.
#
# Runs every case except 12.* and 13.* (permessage-deflate, which the server
# does not negotiate) over ws://, then over wss:// when the server has TLS
# flags and tls/gencert.sh exists. Each pass fails when
#   - the server dies or stops answering,
#   - any case's behavior is not OK, NON-STRICT or INFORMATIONAL, or its
#     behaviorClose is not OK or INFORMATIONAL,
#   - any case's result is worse than in the committed baseline
#     (tests/autobahn/expected.tsv), or is missing; every difference from the
#     baseline, better or worse, is named case by case.
#
# Usage: tests/autobahn/run.sh [--update-baseline] [--ws-only | --wss-only]
# Environment:
#   CHAT_SERVER       server binary to test (default: build it with cargo, debug profile)
#   AUTOBAHN_PROFILE  cargo profile for that build: dev (default) or release
#   WSTEST            wstest to use (default: a Python 2.7 virtualenv made under
#                     target/autobahn/venv, or kosoku on Python 3 where 2.7 is missing)
#   PYTHON27          Python 2.7 interpreter (default: python2.7 on PATH, else pyenv's 2.7.18)
#   AUTOBAHN_OUT      where reports go (default: target/autobahn)
#   AUTOBAHN_CASES    cases to run, comma-separated wstest patterns (default: *);
#                     with a subset only those cases are compared to the baseline
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

update=0
passes="ws wss"
for arg in "$@"; do
  case "$arg" in
    --update-baseline) update=1 ;;
    --ws-only) passes="ws" ;;
    --wss-only) passes="wss" ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
out="${AUTOBAHN_OUT:-$repo/target/autobahn}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cases="${AUTOBAHN_CASES:-*}"

log() { echo "autobahn: $*" >&2; }

# quiet LOG CMD...: runs CMD with its output in LOG, shown only if it fails.
quiet() {
  local logfile="$1"; shift
  if ! "$@" > "$logfile" 2>&1; then
    log "FAIL: $* (output below, also in $logfile)"
    grep -v DEPRECATION "$logfile" | tail -n 30 >&2
    exit 1
  fi
}

# --- the server binary -------------------------------------------------------
if [ -z "${CHAT_SERVER:-}" ]; then
  profile="${AUTOBAHN_PROFILE:-dev}"
  log "building chat-server (profile $profile)"
  cargo build --quiet --profile "$profile" --bin chat-server
  dir="$profile"; [ "$profile" = dev ] && dir=debug
  CHAT_SERVER="$target_dir/$dir/chat-server"
fi
[ -x "$CHAT_SERVER" ] || { log "no server binary at $CHAT_SERVER"; exit 1; }

# --- the test client ---------------------------------------------------------
# wstest (autobahntestsuite 25.10.1) needs Python 2.7; kosoku is the Python 3
# fallback that drives the same case files.
runner=""
if [ -n "${WSTEST:-}" ]; then
  runner=wstest
  case "$(basename "$WSTEST")" in kosoku*) runner=kosoku ;; esac
elif command -v wstest >/dev/null 2>&1; then
  WSTEST="$(command -v wstest)"; runner=wstest
else
  py27="${PYTHON27:-}"
  if [ -z "$py27" ]; then
    for candidate in "$(command -v python2.7 || true)" /root/.pyenv/versions/2.7.18/bin/python2.7 \
      "${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python2.7"; do
      # (a pyenv shim is on PATH even where 2.7 is not selected: try each one)
      if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' \
        >/dev/null 2>&1; then py27="$candidate"; break; fi
    done
  fi
  venv="$out/venv"
  if [ -n "$py27" ]; then
    if [ ! -x "$venv/bin/wstest" ]; then
      log "installing autobahntestsuite 25.10.1 into $venv (Python 2.7: $py27)"
      rm -rf "$venv" "$out/virtualenv-pkg"
      quiet "$out/install.log" "$py27" -m pip install --disable-pip-version-check \
        --target "$out/virtualenv-pkg" 'virtualenv<20.22'
      quiet "$out/install.log" env PYTHONPATH="$out/virtualenv-pkg" "$py27" -m virtualenv "$venv"
      quiet "$out/install.log" "$venv/bin/pip" install --disable-pip-version-check \
        'autobahntestsuite==25.10.1'
    fi
    WSTEST="$venv/bin/wstest"; runner=wstest
  else
    kvenv="$out/kosoku-venv"
    if [ ! -x "$kvenv/bin/kosoku" ]; then
      log "no Python 2.7: installing kosoku (Python 3) into $kvenv"
      quiet "$out/install.log" python3 -m venv "$kvenv"
      quiet "$out/install.log" "$kvenv/bin/pip" install --disable-pip-version-check kosoku
    fi
    WSTEST="$kvenv/bin/kosoku"; runner=kosoku
  fi
fi
[ -x "$WSTEST" ] || { log "test client not found at $WSTEST"; exit 1; }
# One baseline for both clients: they run the same case files and, against a
# conforming server, agree case by case.
baseline="$here/expected.tsv"
log "client: $runner ($WSTEST)"

# --- one pass ------------------------------------------------------------------
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

# start_server LOGFILE SCHEME FLAGS...: starts the server on an ephemeral port,
# sets server_pid and server_addr from its "listening on SCHEME://ADDR" line.
start_server() {
  local logfile="$1" scheme="$2"; shift 2
  : > "$logfile"
  "$CHAT_SERVER" --listen 127.0.0.1:0 --www "$repo/www" --echo-path /echo \
    --log-level info "$@" 2> "$logfile" &
  server_pid=$!
  server_addr=""
  for _ in $(seq 1 200); do
    server_addr="$(sed -n "s|.*listening on $scheme://\([0-9.:]*\).*|\1|p" "$logfile" | head -n1)"
    [ -n "$server_addr" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  log "server did not start; its log:"; cat "$logfile" >&2
  exit 1
}

run_pass() {
  local pass="$1" scheme="http"; shift
  [ "$pass" = wss ] && scheme="https"
  local dir="$out/$pass"
  rm -rf "$dir/reports"; mkdir -p "$dir/reports"
  start_server "$dir/server.log" "$scheme" "$@"
  local url="$pass://$server_addr/echo"
  log "$pass pass against $url (server log: $dir/server.log)"
  local started=$SECONDS status=0
  if [ "$runner" = wstest ]; then
    # No "hostname" in the spec: wstest then uses Twisted's ClientContextFactory,
    # which does not verify the certificate (the self-signed one is fine).
    python3 - "$dir" "$url" "$cases" > "$dir/fuzzingclient.json" <<'PY'
import json, sys
outdir, url, cases = sys.argv[1:]
print(json.dumps({
    "outdir": outdir + "/reports/servers",
    "servers": [{"agent": "chat-server", "url": url}],
    "cases": [c.strip() for c in cases.split(",")],
    "exclude-cases": ["12.*", "13.*"],
    "exclude-agent-cases": {},
}, indent=2))
PY
    (cd "$dir" && timeout 1200 "$WSTEST" -m fuzzingclient -s "$dir/fuzzingclient.json") \
      > "$dir/wstest.log" 2>&1 || status=$?
  else
    # kosoku takes a URL and writes the same index.json; it exits 1 when any
    # case is not OK, so its status is judged by check.py, not here.
    local args=(-m fuzzingclient "$url" -x '12.*' -x '13.*' -o "$dir/reports/servers") pattern patterns
    IFS=, read -r -a patterns <<< "$cases"
    for pattern in "${patterns[@]}"; do args+=(-i "$pattern"); done
    (cd "$dir" && timeout 1200 "$WSTEST" "${args[@]}") > "$dir/wstest.log" 2>&1 || true
    [ -f "$dir/reports/servers/index.json" ] || status=1
  fi
  log "$pass pass: client finished in $((SECONDS - started)) s (exit $status)"
  # Still alive, and still answering a fresh client?
  local alive=1
  if ! kill -0 "$server_pid" 2>/dev/null; then
    alive=0
    log "FAIL: the server died during the $pass pass; last log lines:"
    tail -n 30 "$dir/server.log" >&2
  elif ! python3 - "$scheme://$server_addr/" <<'PY'
import ssl, sys, urllib.request
context = ssl._create_unverified_context()
with urllib.request.urlopen(sys.argv[1], timeout=10, context=context) as response:
    sys.exit(0 if response.status == 200 else 1)
PY
  then
    alive=0
    log "FAIL: the server no longer answers GET / after the $pass pass"
  fi
  stop_server
  [ "$status" = 0 ] || { log "FAIL: the client failed; see $dir/wstest.log"; tail -n 20 "$dir/wstest.log" >&2; return 1; }
  local check=(python3 -u "$here/check.py" "$dir/reports/servers/index.json" "$baseline" --label "$pass")
  [ "$update" = 1 ] && check+=(--update)
  [ "$cases" != "*" ] && check+=(--subset)
  "${check[@]}" || return 1
  [ "$alive" = 1 ]
}

failed=0
for pass in $passes; do
  case "$pass" in
    ws) run_pass ws || failed=1 ;;
    wss)
      if ! "$CHAT_SERVER" --help 2>&1 | grep -q -- --tls-cert || [ ! -f "$repo/tls/gencert.sh" ]; then
        log "wss pass skipped: the server has no --tls-cert flag or tls/gencert.sh is missing"
        continue
      fi
      if [ "$runner" = kosoku ]; then
        log "wss pass skipped: kosoku is built without TLS (needs wstest on Python 2.7)"
        continue
      fi
      if ! command -v openssl >/dev/null; then
        log "FAIL: wss pass needs openssl for tls/gencert.sh"; failed=1; continue
      fi
      bash "$repo/tls/gencert.sh" "$out/tls" >/dev/null
      run_pass wss --tls-cert "$out/tls/cert.pem" --tls-key "$out/tls/key.pem" || failed=1
      ;;
  esac
done
if [ "$failed" = 0 ]; then log "all passes conform"; else log "FAILED"; fi
exit "$failed"
