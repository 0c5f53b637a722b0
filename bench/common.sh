# Shell helpers the row scripts share (presence.sh, api.sh, tls.sh,
# failover.sh): sourced, never run. Each script keeps its own log prefix,
# servers and summary; this holds only what is the same in all of them.

# A TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Whether the chat-server on PORT answers /healthz with 200 (with --redis:
# both links up).
healthy() { # port
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" >&3
    IFS= read -r -t 2 status <&3
    [[ $status == "HTTP/1.1 200"* ]]
  ) 2>/dev/null
}

# Sets server_cpu and client_cpu, the commands that pin the servers to core 0
# and the load tool to core 1 (as run.sh does); empty, with a note naming
# SCRIPT, on a machine with fewer than 2 cores.
pin_cores() { # script name
  if [ "$(nproc)" -ge 2 ]; then
    server_cpu=(taskset -c 0)
    client_cpu=(taskset -c 1)
  else
    echo "$1: fewer than 2 cores; running unpinned (numbers will not be comparable)" >&2
    server_cpu=()
    client_cpu=()
  fi
}
