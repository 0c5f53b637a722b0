#!/usr/bin/env python3
"""Turns bench/run.sh's results.jsonl into REPORT.md and a gnuplot script for
latency.png (latency vs delivered rate, from the ramp steps of every server).

Usage: report.py RESULTS_DIR   (standard library only)
"""
import json
import os
import sys

TARGETS = {
    "ramp_ratio": 3.0,  # ours / go, best deliveries/s at p99 <= bound
    "cpu_ratio": 0.3,  # ours / go, server CPU per delivered message, with --write-delay batching (the kernel's floor is above it without)
    "user_ratio": 0.15,  # ours / go, server user-space CPU per delivered message
    "floor_ratio": 1.1,  # ours / floor, server CPU per delivered message
    "rss_per_conn": 600,  # bytes per idle connection at 10,000 (uWebSockets: ~595 here)
    "held": 19000,  # connections held by ours
    "redis_cpu_ratio": 1.2,  # ours-redis / ours, chat-server CPU per delivery (both processes summed)
    "publishes_per_message": 1.0,  # Redis PUBLISH calls per chat message sent: once, never per recipient
    "history_cpu_ratio": 1.1,  # ours with history on / off (--history 0), server CPU per delivery
    "reconnect_s": 3.0,  # seconds from the restarted server listening to every client back in its room (sessions)
    "reconnect_clients": 19000,  # ... with this many clients
}
TOOL_LIMIT = 0.9  # share of its core above which the load tool may be the limit

# Columns, in order: label in results.jsonl -> heading.
SERVERS = [("ours", "ours"), ("floor", "floor"), ("tokio", "tokio (axum)"), ("go", "Go (gorilla)")]
# Ours scaled out: several chat-server processes on one Redis (--redis), compared with ours.
REDIS = ("ours-redis", "2 processes + Redis")
COLORS = {"ours": "#1f77b4", "go": "#d62728", "tokio": "#ff7f0e", "floor": "#2ca02c", "ours-redis": "#9467bd"}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def env(path):
    values = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition("=")
                values[key] = value
    return values


def get(row, *path):
    for key in path:
        if row is None:
            return None
        row = row.get(key) if isinstance(row, dict) else None
    return row


def cpu_of(row):
    return get(row, "step", "server_cpu_us_per_delivery")


def fanout_runs(rows, label):
    """Every fanout run of `label` that produced a CPU figure, by that figure."""
    runs = [r for r in rows if r.get("label") == label and r.get("scenario") == "fanout" and cpu_of(r) is not None]
    return sorted(runs, key=cpu_of)


def median_run(runs):
    """The run with the median CPU per delivery (the lower middle for an even count)."""
    return runs[(len(runs) - 1) // 2] if runs else None


def ramp_of(rows, label, batched=False):
    """The plain ramp of `label`, or with `batched` its rerun with several messages per client write."""
    for row in rows:
        if row.get("label") == label and row.get("scenario") == "ramp":
            if ((row.get("client_batch") or 1) > 1) == batched:
                return row
    return None


def idle_of(rows, label, connections):
    for row in rows:
        if row.get("label") == label and row.get("scenario") == "idle" and row.get("connections") == connections:
            return row
    return None


def num(value, digits=0):
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def ratio(a, b, digits=2):
    if a is None or b in (None, 0):
        return "-", None
    r = a / b
    return f"{r:.{digits}f}x", r


def verdict(ok, note=""):
    if ok is None:
        return "-"
    return ("met" if ok else "**not met**") + (f", {note}" if note else "")


def redis_section(w, rows, info, fan, ramps, batched, idle, small):
    """Two chat-server processes on one Redis (ours-redis) against one process (ours)."""
    one, two = "ours", REDIS[0]
    w("### Two processes + Redis vs one process")
    w("")
    w(f"`ours-redis`: {info.get('redis_procs', '2')} chat-server processes with `--redis` on a redis-server "
      f"{info.get('redis', '')} of the run's own (persistence off, a key prefix per run), every room with members "
      "on every process (the load tool spreads members round-robin over the processes), each message published "
      "once by the Lua script and delivered by every process from what Redis sends back.")
    w("")
    w(f"**How the cores were shared: {info.get('redis_cores', '?')}**, against one process alone on core 0. "
      "Both configurations get the same hardware for the server side, one core, and the load tool keeps a core "
      "of its own, so this measures what the Redis path costs, not what a second core would give: on 2 cores, "
      "a chat-server on each core would put the load tool (which needs most of a core at high rates) on a "
      "server's core, taking CPU from what is measured and charging its loopback TCP work to whichever process "
      "runs there. Scale-out across cores needs a machine with a core each for the processes, Redis and the "
      "tool (see bench/README.md).")
    w("")
    w(f"| measure | one process (ours) | {REDIS[1]} | {REDIS[1]} vs one | target | verdict |")
    w("| --- | ---: | ---: | ---: | --- | --- |")

    def line(measure, a, b, versus="", target="", verdict_=""):
        w(f"| {measure} | {a} | {b} | {versus} | {target} | {verdict_} |")

    r1, r2 = ramps.get(one), ramps.get(two)
    b1, b2 = get(r1, "best_deliveries_per_s"), get(r2, "best_deliveries_per_s")
    shape = f"{get(r2, 'rooms')}x{get(r2, 'members')}" if r2 else "?"
    line(f"ramp {shape}: highest deliveries/s with p99 <= {num(get(r2, 'p99_bound_ms'))} ms "
         f"and >= {get(r2, 'min_delivery')} delivered (stopped by)",
         f"{num(b1)} ({get(r1, 'bound_by') or '-'})",
         f"{num(b2)} ({get(r2, 'bound_by') or '-'})",
         ratio(b2, b1)[0])
    bb1, bb2 = batched.get(one), batched.get(two)
    if bb1 or bb2:
        n = get(bb2, "client_batch") or get(bb1, "client_batch")
        line(f"the same ramp again, {n} messages per client write (run where the tool bound the first)",
             num(get(bb1, "best_deliveries_per_s")), num(get(bb2, "best_deliveries_per_s")),
             ratio(get(bb2, "best_deliveries_per_s"), get(bb1, "best_deliveries_per_s"))[0])
    best2 = get(r2, "best")
    if best2:
        line("the ramp's best step: Redis CPU µs per message; Redis and the whole server side's share of the core",
             "-", f"{num(best2.get('redis_cpu_us_per_message'), 1)}; {num(best2.get('redis_cpu_util'), 2)} and "
             f"{num(best2.get('server_side_util'), 2)}")

    f1, f2 = fan.get(one), fan.get(two)
    rate = get(f2, "step", "offered_deliveries_per_s")
    for key, label in (("p50", "p50"), ("p99", "p99")):
        a, b = get(f1, "step", "latency_ms", key), get(f2, "step", "latency_ms", key)
        added = f"+{b - a:.3f} ms added" if a is not None and b is not None else "-"
        if a is not None and b is not None and b < a:
            added = f"{b - a:.3f} ms (none added)"
        line(f"fanout at {num(rate)} deliveries/s: latency {label}, ms (the Redis round trip adds the difference)",
             num(a, 3), num(b, 3), added)
    c1, c2 = cpu_of(f1), cpu_of(f2)
    text, value = ratio(c2, c1)
    line(f"fanout at {num(rate)} deliveries/s: chat-server CPU µs per delivery (both processes summed)",
         num(c1, 3), num(c2, 3), text, f"<= {TARGETS['redis_cpu_ratio']}x one process",
         verdict(None if value is None else value <= TARGETS["redis_cpu_ratio"]))
    line("the same: user + system µs per delivery",
         f"{num(get(f1, 'step', 'server_user_us_per_delivery'), 3)} + "
         f"{num(get(f1, 'step', 'server_system_us_per_delivery'), 3)}",
         f"{num(get(f2, 'step', 'server_user_us_per_delivery'), 3)} + "
         f"{num(get(f2, 'step', 'server_system_us_per_delivery'), 3)}",
         " / ".join(ratio(get(f2, "step", k), get(f1, "step", k))[0]
                    for k in ("server_user_us_per_delivery", "server_system_us_per_delivery")))
    if len(fanout_runs(rows, two)) > 1:
        line("chat-server CPU µs per delivery, every round (the median is used above)",
             ", ".join(num(cpu_of(r), 2) for r in fanout_runs(rows, one)),
             ", ".join(num(cpu_of(r), 2) for r in fanout_runs(rows, two)))
    each = get(f2, "step", "server_cpu_s_each")
    if each:
        line("the same fanout: CPU seconds of each chat-server process", "-", " + ".join(num(x, 2) for x in each))
    redis_msg = get(f2, "step", "redis_cpu_us_per_message")
    line(f"fanout at {num(rate)} deliveries/s: Redis CPU µs per message sent (per delivery), "
         f"from {get(f2, 'step', 'redis_cpu_from') or '-'}",
         "-", f"{num(redis_msg, 1)} ({num(get(f2, 'step', 'redis_cpu_us_per_delivery'), 3)})")
    redis_s = get(f2, "step", "redis_cpu_s")
    d2 = get(f2, "step", "delivered")
    server_s = get(f2, "step", "server_cpu_s")
    side = (server_s + redis_s) * 1e6 / d2 if None not in (server_s, redis_s) and d2 else None
    line("the same: the whole server side (chat-servers + Redis) CPU µs per delivery", num(c1, 3), num(side, 3),
         ratio(side, c1)[0])

    commands = [r for r in rows if r.get("scenario") == "redis-commands" and r.get("label") == two
                and r.get("messages_sent")]
    if commands:
        ratios_ = [r.get("publishes_per_message") for r in commands]
        ok = all(x is not None and abs(x - TARGETS["publishes_per_message"]) <= 0.0005 for x in ratios_)
        every = "; ".join(f"{r.get('run')}: {num(r.get('publish'))} / {num(r.get('messages_sent'))}"
                          for r in commands)
        pubs = sum(r.get("publish") or 0 for r in commands)
        sent = sum(r.get("messages_sent") or 0 for r in commands)
        line("PUBLISH calls per chat message sent (Redis INFO commandstats around each scenario, room markers "
             f"and warm-up included; the Lua script's PUBLISH counts as cmdstat_publish): {every}",
             "-", num(pubs / sent, 4) if sent else "-", "",
             f"{TARGETS['publishes_per_message']}, never one per recipient", verdict(ok))
        scripts = sum((r.get("evalsha") or 0) + (r.get("eval") or 0) for r in commands)
        line("EVALSHA + EVAL calls per chat message sent (EVAL only after a NOSCRIPT)", "-",
             f"{num(scripts / sent, 4) if sent else '-'} "
             f"({num(sum(r.get('eval') or 0 for r in commands))} EVAL)")
    steps = [get(f, "step") for f in fanout_runs(rows, two)]
    steps += [s for r in (r2, bb2) if r for s in r.get("steps", [])]
    per_step = [s.get("publishes_per_message") for s in steps if s and s.get("publishes_per_message") is not None]
    if per_step:
        line(f"the same, in each measured step alone (every fanout round and ramp step, {len(per_step)} steps): "
             "lowest - highest", "-", f"{min(per_step):.4f} - {max(per_step):.4f}")
    i1, i2 = idle.get(one), idle.get(two)
    if i1 or i2:
        line(f"idle {num(small)}: server RSS per connection, bytes (both processes summed); connect rate/s",
             f"{num(get(i1, 'server_rss_per_conn_bytes'))}; {num(get(i1, 'connect_per_s'))}",
             f"{num(get(i2, 'server_rss_per_conn_bytes'))}; {num(get(i2, 'connect_per_s'))}",
             ratio(get(i2, "server_rss_per_conn_bytes"), get(i1, "server_rss_per_conn_bytes"))[0])
    w("")
    w("The latency rows are the median fanout rounds of each (by CPU per delivery). A message on the Redis path "
      "goes load tool -> one chat-server -> EVALSHA to Redis -> PUBLISH to both chat-servers -> their members, "
      "three processes taking turns on one core. CPU per delivery counts utime + stime of both chat-server "
      "processes (Redis apart); Redis's CPU is its own `used_cpu_user + used_cpu_sys` (INFO cpu, to the "
      "microsecond) where the load tool could ask it, else /proc.")
    w("")


def history_section(w, rows, runs, fan):
    """ours (history on, the default --history 100) against ours-no-history (--history 0)."""
    on_runs, off_runs = runs.get("ours") or [], fanout_runs(rows, "ours-no-history")
    if not off_runs:
        return
    on, off = fan.get("ours"), median_run(off_runs)
    w("### History on vs off")
    w("")
    w("The fixed-rate fanout again with ours started with `--history 0` (`ours-no-history`: no message kept "
      "for members who resume or join), in the same rounds as the others, right after ours with its default "
      "(`--history 100`: each room keeps its last 100 messages, as the frames already encoded for live "
      "delivery). What keeping history costs per delivery is the difference.")
    w("")
    w("| measure | history on (ours) | history off (`--history 0`) | on ÷ off | target | verdict |")
    w("| --- | ---: | ---: | ---: | --- | --- |")

    def line(measure, a, b, versus="", target="", verdict_=""):
        w(f"| {measure} | {a} | {b} | {versus} | {target} | {verdict_} |")

    rate = get(on, "step", "offered_deliveries_per_s") or get(off, "step", "offered_deliveries_per_s")
    c_on, c_off = cpu_of(on), cpu_of(off)
    text, value = ratio(c_on, c_off)
    line(f"fanout at {num(rate)} deliveries/s: server CPU µs per delivery (median round)",
         num(c_on, 3), num(c_off, 3), text, f"<= {TARGETS['history_cpu_ratio']}x off",
         verdict(None if value is None else value <= TARGETS["history_cpu_ratio"]))
    line("the same: user + system µs per delivery",
         f"{num(get(on, 'step', 'server_user_us_per_delivery'), 3)} + "
         f"{num(get(on, 'step', 'server_system_us_per_delivery'), 3)}",
         f"{num(get(off, 'step', 'server_user_us_per_delivery'), 3)} + "
         f"{num(get(off, 'step', 'server_system_us_per_delivery'), 3)}",
         " / ".join(ratio(get(on, "step", k), get(off, "step", k))[0]
                    for k in ("server_user_us_per_delivery", "server_system_us_per_delivery")))
    if len(on_runs) > 1 or len(off_runs) > 1:
        line("server CPU µs per delivery, every round (the median is used above)",
             ", ".join(num(cpu_of(r), 2) for r in on_runs), ", ".join(num(cpu_of(r), 2) for r in off_runs))
    for key in ("p50", "p99"):
        a, b = get(on, "step", "latency_ms", key), get(off, "step", "latency_ms", key)
        line(f"the same fanout: latency {key}, ms", num(a, 3), num(b, 3), ratio(a, b)[0])
    rss_on, rss_off = get(on, "server_rss_end_kib"), get(off, "server_rss_end_kib")
    line("server RSS at the end of the fanout's traffic, KiB (growth since every member was connected)",
         f"{num(rss_on)} (+{num(delta(rss_on, get(on, 'server_rss_connected_kib')))})",
         f"{num(rss_off)} (+{num(delta(rss_off, get(off, 'server_rss_connected_kib')))})",
         f"{delta(rss_on, rss_off):+,} KiB" if delta(rss_on, rss_off) is not None else "-")
    metrics = get(on, "server_metrics") or {}
    per_room = get(on, "history_bytes_per_room")
    messages = get(on, "step", "sent")
    line("memory per room with history on: bytes of history kept ÷ rooms (the server's own "
         "`chat_history_bytes` ÷ `chat_rooms` from `GET /metrics` at the end of the fanout's traffic)",
         f"{num(per_room)} ({num(metrics.get('chat_history_bytes'))} B in {num(metrics.get('chat_rooms'))} rooms)",
         f"{num(get(off, 'history_bytes_per_room'))}")
    w("")
    w("*Memory per room* is the bytes of the message frames a room keeps as its history: at the end of the "
      f"fanout every room is at its cap (100 messages; {num(messages)} messages were sent over "
      f"{num(get(on, 'rooms'))} rooms in the measured step alone), so this is what a busy room holds, the "
      "WebSocket frames as sent (each message's JSON with its id and time, about the size of a `new_message` "
      "event; shared with the live delivery, not copied). It leaves out the bookkeeping around them: a "
      "sequence number and a pointer per kept message in the room's ring (24 bytes) and each frame's reference "
      "count (16 bytes), about 4 KiB more per full room, and the allocator's rounding. RSS at the end of the "
      "traffic, history on and off, shows all of it together with everything else, at the resolution of "
      "pages; a few rooms' history is small beside the connections' memory. CPU per delivery is the server's "
      "utime + stime over the measured step ÷ deliveries, as in the fanout above. With `--history 0` each "
      "message still gets its id (the frames are the same size); what history adds is keeping each frame in "
      "its room's ring (a push, and the oldest frame freed there rather than right after its delivery): "
      "work per message, not per delivery.")
    w("")


def delta(a, b):
    return None if a is None or b is None else a - b


def reconnect_section(w, rows, info):
    """ours restarted under N clients: back with their sessions, then with passwords."""
    runs = [r for r in rows if r.get("scenario") == "reconnect" and r.get("label") == "ours"]
    failed = [r for r in rows if r.get("scenario") == "reconnect" and r.get("failed")]
    if not runs and not failed:
        return
    w("### Reconnect after a restart: sessions vs passwords")
    w("")
    if not runs:
        w(f"The reconnect run printed no result (exit {failed[0].get('exit')}); see logs/.")
        w("")
        return
    r = runs[-1]
    n = r.get("connections")
    rounds = {x.get("via"): x for x in r.get("rounds", [])}
    vias = [v for v in ("session", "password") if v in rounds]
    w(f"{num(n)} clients (`chat-bench reconnect`), each logged in once with a password (so each has a session "
      f"cookie of its own, one account for all) and in its room ({num(r.get('rooms'))} rooms of "
      f"{num(r.get('members_per_room'))}); ours started with `--session-key` (a fresh 32-byte key for the run). "
      "When the tool is ready, run.sh restarts the server under them: SIGTERM (every client gets close 1001), "
      "wait for the process to exit, start the same command on the same port with the same key. The tool "
      "waits for the old process to be gone, then probes the port every millisecond: the first connect "
      "accepted is **the new process listening, where the clock starts**. Every client then comes back "
      f"as fast as the tool can ({num(r.get('concurrency'))} handshakes in flight): an OTP from "
      "`POST /session/otp` with its cookie (sessions), or from `POST /login` with the password (passwords), "
      "then `GET /ws?otp=...&room=R&since=ID` with the last message id it saw. A client is **back** when "
      "its room's first event arrives: the `history_gap` the restarted server sends it (the id it resumes "
      "from is from the old process), which the server sends once the member is in room R. The clock stops "
      "at the last client back. Then every room's first member sends a message and every member must see "
      "it (\"in their rooms\"). Both ways run in one tool run, one restart each (sessions first): the "
      "setup's logins happen once.")
    w("")
    w("| measure | " + " | ".join(f"back with {'sessions' if v == 'session' else 'passwords'}" for v in vias)
      + " | target | verdict |")
    w("| --- | " + " | ".join("---:" for _ in vias) + " | --- | --- |")

    def line(measure, cells, target="", verdict_=""):
        w(f"| {measure} | " + " | ".join(cells) + f" | {target} | {verdict_} |")

    s = rounds.get("session")
    all_back = get(s, "all_back_s")
    full = n is not None and n >= TARGETS["reconnect_clients"]
    ok = None
    if s is not None:
        ok = all_back is not None and all_back <= TARGETS["reconnect_s"] and get(s, "verified") is True
    note = "" if full or ok is None else f"at {num(n)} clients, not the target's {num(TARGETS['reconnect_clients'])}"
    if ok is None:
        judged = "-"
    elif full:
        judged = verdict(ok)
    else:
        judged = f"- ({note}: {'within' if ok else 'not within'} {TARGETS['reconnect_s']:.0f} s)"
    line("time from the new process listening to every client back in its room, s",
         [num(get(rounds[v], "all_back_s"), 3) if get(rounds[v], "all_back_s") is not None
          else f"not all back ({num(get(rounds[v], 'last_back_s'), 3)} for those back)" for v in vias],
         f"sessions: <= {TARGETS['reconnect_s']:.0f} s for {num(TARGETS['reconnect_clients'])} clients",
         judged)
    if "session" in rounds and "password" in rounds:
        text, _ = ratio(get(rounds["password"], "all_back_s"), get(rounds["session"], "all_back_s"), 1)
        line("passwords ÷ sessions", ["", text])
    line("clients back / reconnecting (retried attempts)",
         [f"{num(get(rounds[v], 'back'))} / {num(get(rounds[v], 'reconnecting'))} "
          f"({num(get(rounds[v], 'retried_attempts'))})" for v in vias])
    line("clients back per second", [num(get(rounds[v], "back_per_s")) for v in vias])
    line("each client's reconnect, ms, p50 / p99 / max (from its first connect attempt to back in its room)",
         [" / ".join(num(get(rounds[v], "reconnect_ms", k), 1) for k in ("p50", "p99", "max")) for v in vias])
    line("when each client was back, ms after the new process listened, p50 / p99",
         [" / ".join(num(get(rounds[v], "back_after_listening_ms", k), 1) for k in ("p50", "p99")) for v in vias])
    line("in their rooms afterwards (a message in each room seen by every member)",
         ["yes" if get(rounds[v], "verified") else "**no**" for v in vias])
    line("server CPU µs per client (the new process's CPU from its start to the last client back ÷ clients)",
         [num(get(rounds[v], "server_cpu_us_per_client"), 1) for v in vias])
    line(f"load tool CPU while they came back (share of its core; † at {TOOL_LIMIT:.0%} or more: the tool may "
         "have been the limit, the time an upper bound for the server)",
         [num(get(rounds[v], "client_cpu_util"), 2) + (" †" if get(rounds[v], "tool_limited") else "")
          for v in vias])
    line("the restart itself (not timed): every client dropped, s after ready; listening again, s after that",
         [f"{num(get(rounds[v], 'ready_to_dropped_s'), 2)}; {num(get(rounds[v], 'dropped_to_listening_s'), 2)}"
          for v in vias])
    w("")
    w(f"Setup (before the first restart, not timed): {num(r.get('opened'))} password logins in "
      f"{num(r.get('setup_s'), 1)} s ({num(r.get('setup_logins_per_s'))}/s; argon2id, a few milliseconds of the one thread each, "
      "is what bounds a password login, and what the session path skips: an HMAC check and an OTP). "
      "Handshakes in flight are the tool's, not a browser's: 19,000 browsers would all try at once; the tool "
      "keeps a fixed number going, each next one starting as one finishes.")
    if r.get("errors"):
        kinds = ", ".join(f"{k}: {v}" for k, v in (r.get("error_kinds") or {}).items())
        w("")
        w(f"Errors: {r['errors']} ({kinds}).")
    w("")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
    rows = load(os.path.join(out, "results.jsonl"))
    info = env(os.path.join(out, "env.txt"))
    labels = [label for label, _ in SERVERS]
    heads = [head for _, head in SERVERS]
    # The detail sections also show ours-redis when it ran.
    with_redis = any(r.get("label") == REDIS[0] for r in rows)
    detail = labels + ([REDIS[0]] if with_redis else [])
    detail_heads = heads + ([REDIS[1]] if with_redis else [])

    delay_prefix = "ours-write-delay-"
    delays = sorted(
        {r["label"][len(delay_prefix):] for r in rows if r.get("label", "").startswith(delay_prefix)},
        key=lambda d: float(d.rstrip("ms")) / (1 if d.endswith("ms") else 0.001),
    )
    runs = {label: fanout_runs(rows, label) for label in detail + [delay_prefix + d for d in delays]}
    for heartbeat_kind in ("ours-no-ping", "floor-ping"):
        if fanout_runs(rows, heartbeat_kind):
            runs[heartbeat_kind] = fanout_runs(rows, heartbeat_kind)
    fan = {label: median_run(runs[label]) for label in detail}
    ramps = {label: ramp_of(rows, label) for label in detail}
    batched = {label: ramp_of(rows, label, batched=True) for label in detail}
    idle_counts = sorted({r["connections"] for r in rows if r.get("scenario") == "idle"})
    small = idle_counts[0] if idle_counts else None
    big = idle_counts[-1] if len(idle_counts) > 1 else None
    idle = {label: idle_of(rows, label, small) for label in detail}
    idle_big = {label: idle_of(rows, label, big) for label in labels} if big else {}

    lines = []
    w = lines.append

    def row(measure, values, digits=0, extra=()):
        """A summary row: the measure, one cell per server, then ratio/target cells."""
        cells = [num(v, digits) if not isinstance(v, str) else v for v in values]
        w("| " + " | ".join([measure] + cells + list(extra)) + " |")

    w("# chat-server vs the floor, the idiomatic axum/tokio server and the Go tutorial server")
    w("")
    w(
        f"Run {info.get('date', '?')} at commit `{info.get('commit', '?')}` on {info.get('cpu', '?')} "
        f"({info.get('cores', '?')} cores), Linux {info.get('kernel', '?')}; {info.get('rustc', '?')}; "
        f"axum {info.get('axum', '?')} with tokio {info.get('tokio', '?')}; "
        f"Go {info.get('go', '?')} with gorilla/websocket {info.get('gorilla', '?')}."
    )
    w("Each server runs pinned to core 0 (`taskset -c 0`: Go therefore runs with GOMAXPROCS=1 and tokio's "
      "`#[tokio::main]` runtime with one worker thread), the load tool (`chat-bench`) on core 1. Every scenario "
      "starts a fresh server. Produced by `bench/run.sh`.")
    if with_redis:
        w(f"{REDIS[1]} (`ours-redis`): {info.get('redis_cores', '?')}; Redis {info.get('redis', '?')} "
          "(see [below](#two-processes--redis-vs-one-process)).")
    flags = info.get("ours_flags") or ""
    ramp_flags = info.get("ours_ramp_flags") or ""
    if flags or ramp_flags:
        w(f"Ours ran with `{flags}`" + (f", and in the ramp also `{ramp_flags}`" if ramp_flags else "") +
          " (see bench/README.md).")
    if info.get("quick") == "1":
        w("")
        w("**QUICK=1: a scaled-down trial run, not the standard set.**")
    w("")
    w("- **floor**: `bench/floor/`, a minimal mio server that per `send_message` reads one frame and writes one "
      "prebuilt frame per room member (writes coalesced per loop iteration), and nothing else: no JSON parser, "
      "no WebSocket library, no timers. Its CPU per delivery is the floor of this kernel and machine.")
    w("- **tokio**: `bench/peers/rust-tokio/`, axum + tokio with a `tokio::sync::broadcast` channel per room, "
      "as axum's chat example, untuned.")
    w("- **Go**: `bench/peers/go-gorilla/`, the gorilla/websocket chat tutorial's server.")
    w("")

    # ---- headline table ----
    w("## Summary")
    w("")
    w("| measure | " + " | ".join(heads) + " | ours ÷ floor | ours ÷ tokio | ours ÷ Go | target | verdict |")
    w("| --- | " + " | ".join("---:" for _ in heads) + " | ---: | ---: | ---: | --- | --- |")

    def ratios(values, digits=2):
        o = values[0]
        return [ratio(o, v, digits)[0] for v in values[1:]]

    # ramp
    best = [get(ramps[l], "best_deliveries_per_s") for l in labels]
    shape_row = next((r for r in ramps.values() if r), None)
    shape = f"{get(shape_row, 'rooms')}x{get(shape_row, 'members')}" if shape_row else "?"
    _, vs_go = ratio(best[0], best[3], 1)
    _, vs_tokio = ratio(best[0], best[2])
    bounds = [get(ramps[l], "bound_by") for l in labels]
    marks = {"load tool": " (tool-bound)", "other load": " (other load)"}
    cells = [num(b) + marks.get(bound, "") for b, bound in zip(best, bounds)]
    row(
        f"ramp {shape}: highest deliveries/s with p99 <= {num(get(shape_row, 'p99_bound_ms'))} ms "
        f"and >= {get(shape_row, 'min_delivery')} delivered",
        cells,
        extra=ratios(best, 1) + [
            f">= {TARGETS['ramp_ratio']:.0f}x Go; ahead of tokio",
            verdict(None if vs_go is None else vs_go >= TARGETS["ramp_ratio"])
            + "; " + verdict(None if vs_tokio is None else vs_tokio > 1),
        ],
    )
    if any(batched.values()):
        best_b = [get(batched[l], "best_deliveries_per_s") for l in labels]
        n = next(get(b, "client_batch") for b in batched.values() if b)
        row(f"the same ramp again, {n} messages per client write (run where the tool bound the first)",
            [num(b) if b is not None else "-" for b in best_b], extra=ratios(best_b, 1) + ["", ""])

    # CPU per delivery at the fixed rate
    rate = next((get(fan[l], "step", "offered_deliveries_per_s") for l in labels if fan[l]), None)
    total = [cpu_of(fan[l]) for l in labels]
    user = [get(fan[l], "step", "server_user_us_per_delivery") for l in labels]
    system = [get(fan[l], "step", "server_system_us_per_delivery") for l in labels]
    _, r_floor = ratio(total[0], total[1])
    _, r_tokio = ratio(total[0], total[2])
    row(
        f"fanout at {num(rate)} deliveries/s: server CPU µs per delivered message (user + system)",
        total, 3,
        extra=ratios(total) + [
            f"<= {TARGETS['floor_ratio']}x floor; ahead of tokio",
            verdict(None if r_floor is None else r_floor <= TARGETS["floor_ratio"]) + "; "
            + verdict(None if r_tokio is None else r_tokio < 1),
        ],
    )
    _, u_go = ratio(user[0], user[3])
    row("the same: user-space CPU µs per delivered message", user, 3,
        extra=ratios(user) + [f"<= {TARGETS['user_ratio']}x Go",
                              verdict(None if u_go is None else u_go <= TARGETS["user_ratio"])])
    row("the same: system (kernel) CPU µs per delivered message", system, 3, extra=ratios(system) + ["", ""])
    for key, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")):
        values = [get(fan[l], "step", "latency_ms", key) for l in labels]
        row(f"fanout latency {label}, ms", values, 3, extra=ratios(values) + ["", ""])
    row("fanout delivery ratio", [num(get(fan[l], "step", "delivery_ratio"), 4) for l in labels],
        extra=["", "", "", "", ""])
    if any(len(runs[l]) > 1 for l in labels):
        spread = "; ".join(
            f"{label}: " + ", ".join(num(cpu_of(r), 2) for r in runs[label]) for label in runs if runs[label]
        )
        w(f"| fanout CPU µs per delivery, every round (the median is used above) | {spread} "
          + "| " * (len(labels) + 4) + "|")
    for delay in delays:
        f_delay = median_run(runs[delay_prefix + delay])
        cpu_d = cpu_of(f_delay)
        text, value = ratio(cpu_d, total[3])
        w(
            f"| the same fanout, ours with `--write-delay {delay}`: server CPU µs per delivered message "
            f"(user + system) | {num(cpu_d, 3)} ({num(get(f_delay, 'step', 'server_user_us_per_delivery'), 3)} + "
            f"{num(get(f_delay, 'step', 'server_system_us_per_delivery'), 3)}) | | | "
            f"| {ratio(cpu_d, total[1])[0]} | {ratio(cpu_d, total[2])[0]} | {text} "
            f"| <= {TARGETS['cpu_ratio']}x Go | {verdict(None if value is None else value <= TARGETS['cpu_ratio'], 'trading latency')} |"
        )
        a, b = get(f_delay, "step", "latency_ms", "p50"), get(f_delay, "step", "latency_ms", "p99")
        w(
            f"| the same, with `--write-delay {delay}`: latency p50 / p99, ms; delivery ratio "
            f"| {num(a, 3)} / {num(b, 3)}; {get(f_delay, 'step', 'delivery_ratio')} | | | | | | | | |"
        )

    # the heartbeat on both sides or on neither (explained below the table)
    quiet = median_run(runs.get("ours-no-ping") or [])
    if quiet:
        cpu_q = cpu_of(quiet)
        w(
            "| the same fanout, ours with no ping during the run (`--ping-interval 1h`; see below): server CPU µs "
            f"per delivered message (user + system) | {num(cpu_q, 3)} "
            f"({num(get(quiet, 'step', 'server_user_us_per_delivery'), 3)} + "
            f"{num(get(quiet, 'step', 'server_system_us_per_delivery'), 3)}) | | | "
            f"| {ratio(cpu_q, total[1])[0]} | {ratio(cpu_q, total[2])[0]} | {ratio(cpu_q, total[3])[0]} "
            "| (no target: neither pings) | |"
        )
    pinged_floor = median_run(runs.get("floor-ping") or [])
    cpu_p = cpu_of(pinged_floor) if pinged_floor else None
    if pinged_floor:
        text, value = ratio(total[0], cpu_p)
        w(
            "| the same fanout, the floor with ours' 9 s heartbeat (`chat-floor --ping-interval 9`; see below) "
            f"beside ours at default flags: server CPU µs per delivered message (user + system) | {num(total[0], 3)} "
            f"| {num(cpu_p, 3)} ({num(get(pinged_floor, 'step', 'server_user_us_per_delivery'), 3)} + "
            f"{num(get(pinged_floor, 'step', 'server_system_us_per_delivery'), 3)}) | | | {text} | | "
            f"| (both ping: like for like) <= {TARGETS['floor_ratio']}x "
            f"| {verdict(None if value is None else value <= TARGETS['floor_ratio'])} |"
        )

    # history on vs off, and the restart (ours against itself; sections below)
    off = median_run(fanout_runs(rows, "ours-no-history"))
    if off:
        c_on, c_off = total[0], cpu_of(off)
        text, value = ratio(c_on, c_off)
        w(f"| history on vs off (`--history 0`): server CPU µs per delivered message, the same fanout "
          f"| {num(c_on, 3)} vs {num(c_off, 3)}: {text} | | | | | | | <= {TARGETS['history_cpu_ratio']}x off "
          f"| {verdict(None if value is None else value <= TARGETS['history_cpu_ratio'])} |")
        w(f"| the same: history kept per room at the end of the fanout (see below), bytes "
          f"| {num(get(fan['ours'], 'history_bytes_per_room'))} | | | | | | | | |")
    restart = next((r for r in rows if r.get("scenario") == "reconnect" and r.get("label") == "ours"), None)
    if restart:
        n = restart.get("connections")
        by = {x.get("via"): x for x in restart.get("rounds", [])}
        s_back, p_back = get(by.get("session"), "all_back_s"), get(by.get("password"), "all_back_s")
        ok = None if "session" not in by else (
            s_back is not None and s_back <= TARGETS["reconnect_s"] and get(by["session"], "verified") is True)
        judged = verdict(ok) if n is not None and n >= TARGETS["reconnect_clients"] else (
            f"- (only {num(n)} clients)" if ok is not None else "-")
        w(f"| reconnect {num(n)} clients after a restart: sessions vs passwords, time from listening to all "
          f"back, s | {num(s_back, 2) if s_back is not None else 'not all back'} vs "
          f"{num(p_back, 2) if p_back is not None else ('not all back' if 'password' in by else '-')} "
          f"| | | | | | | sessions: <= {TARGETS['reconnect_s']:.0f} s for {num(TARGETS['reconnect_clients'])} "
          f"| {judged} |")

    # idle
    rss = [get(idle[l], "server_rss_per_conn_bytes") for l in labels]
    _, r_tokio = ratio(rss[0], rss[2])
    row(
        f"idle {num(small)}: server RSS per connection, bytes", rss,
        extra=ratios(rss) + [
            f"<= {TARGETS['rss_per_conn']}; ahead of tokio",
            verdict(None if rss[0] is None else rss[0] <= TARGETS["rss_per_conn"]) + "; "
            + verdict(None if r_tokio is None else r_tokio < 1),
        ],
    )
    connect = [get(idle[l], "connect_per_s") for l in labels]
    row(f"idle {num(small)}: connect rate (login + upgrade)/s", connect, extra=ratios(connect) + ["", ""])
    row(
        f"idle {num(small)}: held / dropped",
        [f"{num(get(idle[l], 'held'))} / {num(get(idle[l], 'dropped'))}" if idle[l] else "-" for l in labels],
        extra=["", "", "", "", ""],
    )
    if big:
        held = [get(idle_big.get(l), "held") for l in labels]
        o, t = held[0], held[2]
        ok_ours = None
        r = idle_big.get("ours")
        if r:
            ok_ours = o is not None and o >= TARGETS["held"] and r.get("dropped") == 0 and r.get("errors") == 0
        ahead = None if o is None or t is None else o >= t
        note = "a tie: both held all" if ahead and o == t == big else ""
        row(
            f"idle {num(big)}: held / dropped, RSS per connection",
            [f"{num(get(idle_big.get(l), 'held'))} / {num(get(idle_big.get(l), 'dropped'))}, "
             f"{num(get(idle_big.get(l), 'server_rss_per_conn_bytes'))} B" if idle_big.get(l) else "-"
             for l in labels],
            extra=["", "", "", f"{num(TARGETS['held'])} held; ahead of tokio",
                   verdict(ok_ours) + "; " + verdict(ahead, note)],
        )
    w("")
    w("Ratios are ours ÷ the column's server: below 1 is less (CPU, latency, memory), above 1 is more "
      "(throughput, connect rate). \"tool-bound\": the ramp's first failing step had the load tool above "
      f"{TOOL_LIMIT:.0%} of its core while the server had headroom, so that figure is a lower bound "
      "for the server; \"other load\": at that step neither used its core but other processes (or the "
      "hypervisor) kept one of their cores busy, so that figure is uncertain (see Warnings).")
    w("")
    if runs.get("ours-no-ping") or runs.get("floor-ping"):
        floor_ping_sentence = " "
        if pinged_floor and total[1]:
            floor_ping_sentence = (
                f" Given the same heartbeat, the floor itself costs {num(cpu_p, 2)} µs per delivery against "
                f"{num(total[1], 2)} without it ({ratio(cpu_p, total[1])[0]}), with the same code per delivery. ")
        w("*The heartbeat and the floor* (`ours-no-ping` and `floor-ping`, in the same rounds): ours pings "
          "every connection every 9 s, as DESIGN.md requires, and the floor never does. The ping and its pong "
          "cost the server well under 0.1 µs per delivery at this rate, yet they change how the load tool's "
          "sockets ACK. A client socket that has just answered a ping is in Linux's interactive (\"pingpong\") "
          "mode: it no longer ACKs each small message when it reads it, but every ~536 bytes from within the "
          "receive path, and it leaves that mode only when a gap in the traffic lets its delayed-ACK timer fire. "
          "On loopback the receive path runs inside the server's own `write()`, so those ACKs are made and "
          "processed on the server's core (`tcp_ack`, the socket backlog in `__release_sock`, the retransmit "
          "queue), where a client that ACKs when it reads charges that work to the load tool's core. "
          "`ss -tni` in the middle of the fanout shows it (bench/README.md): with pings most of the server's "
          "sockets hold unACKed data and their smoothed RTT is tens of ms; without, it is microseconds."
          + floor_ping_sentence +
          "On a real network a server's machine processes every ACK, pinged or not (and pinged clients send "
          "fewer of them), so the like-for-like rows are the fair comparison; the default row's verdict is "
          "still judged against the floor without timers.")
        w("")

    if with_redis:
        redis_section(w, rows, info, fan, ramps, batched, idle, small)
    history_section(w, rows, runs, fan)
    reconnect_section(w, rows, info)

    # ---- warnings ----
    notes = []
    for r in rows:
        if r.get("scenario") == "server-died":
            notes.append(f"The {r['label']} server died during a run (port {r.get('port')}); see logs/.")
        elif r.get("failed"):
            notes.append(f"{r['label']} {r['scenario']}: the load tool printed no result (exit {r.get('exit')}).")
        elif r.get("errors") and r["scenario"] == "ramp" and not any(
            s.get("errors") for s in r.get("steps", []) if s.get("pass")
        ):
            kinds = ", ".join(f"{k}: {v}" for k, v in r.get("error_kinds", {}).items())
            notes.append(
                f"{r['label']} ramp: {r['errors']} errors, all in the failing (overload) step(s): {kinds}. "
                "A 1008 'slow consumer' close means the server cut a client whose queue filled up; a "
                "'connection closed by server' from tokio is a receiver that lagged its room's channel."
            )
        elif r.get("errors"):
            kinds = ", ".join(f"{k}: {v}" for k, v in r.get("error_kinds", {}).items())
            what = r["scenario"] + (f" {r['connections']}" if r["scenario"] == "idle" else "")
            notes.append(f"{r['label']} {what}: {r['errors']} errors ({kinds}).")
    for label in detail:
        r = ramps[label]
        if not r:
            continue
        if r.get("bound_by") == "load tool":
            b = batched[label]
            again = (
                f" Run again with {b.get('client_batch')} messages per client write: "
                f"{num(b.get('best_deliveries_per_s'))} deliveries/s (bound by: {b.get('bound_by')})."
                if b else ""
            )
            notes.append(
                f"{label} ramp: the load tool, not the server, stopped it (the tool above {TOOL_LIMIT:.0%} of "
                f"its core, the server below): {num(r.get('best_deliveries_per_s'))} deliveries/s is a lower "
                f"bound for this server.{again}"
            )
        if r.get("bound_by") == "other load":
            notes.append(
                f"{label} ramp: at its first failing step neither the server nor the load tool used its core, "
                "but other processes or the hypervisor kept one of their cores busy: "
                f"{num(r.get('best_deliveries_per_s'))} deliveries/s is uncertain on this shared machine."
            )
        limited = [s for s in r.get("steps", []) if s.get("tool_limited")]
        if limited and r.get("bound_by") != "load tool":
            notes.append(
                f"{label} ramp: the load tool was above {TOOL_LIMIT:.0%} of its core in {len(limited)} step(s) "
                f"(marked † below); the ramp was stopped by: {r.get('bound_by')}."
            )
    for r in rows:
        if r.get("scenario") == "redis-commands" and r.get("messages_sent"):
            ppm = r.get("publishes_per_message")
            if ppm is None or abs(ppm - TARGETS["publishes_per_message"]) > 0.0005:
                notes.append(
                    f"{r['label']} {r.get('run')}: {num(r.get('publish'))} PUBLISHes for {num(r['messages_sent'])} "
                    f"messages sent ({ppm} per message; the target is {TARGETS['publishes_per_message']})."
                )
    for label in detail:
        step = get(fan[label], "step")
        util = get(step, "client_cpu_util")
        if util is not None and util >= TOOL_LIMIT:
            notes.append(f"{label} fanout: the load tool used {util:.0%} of its core.")
        for who, mine, core in (("server", "server_cpu_util", "server_core_busy"),
                                ("load tool", "client_cpu_util", "client_core_busy")):
            own, busy = get(step, mine), get(step, core)
            if who == "server" and own is not None and get(step, "redis_cpu_util") is not None:
                own += get(step, "redis_cpu_util")  # ours-redis: Redis shares the servers' core
            if own is not None and busy is not None and busy - own >= 0.25:
                notes.append(
                    f"{label} fanout (median round): other processes kept the {who}'s core busy "
                    f"{busy - own:.0%} of the time beside the {who}'s own {own:.0%}: on a shared core, CPU per "
                    "delivery and latency come out higher than on a quiet one."
                )
    if notes:
        w("## Warnings")
        w("")
        for note in notes:
            w(f"- {note}")
        w("")

    # ---- details ----
    w("## Latency vs delivered rate (ramp steps)")
    w("")
    w("![latency vs delivered rate](latency.png)")
    w("")
    for label in detail:
        for r in (ramps[label], batched[label]):
            if not r:
                continue
            redis_cols = any(s.get("redis_cpu_util") is not None for s in r.get("steps", []))
            batch = r.get("client_batch") or 1
            w(
                f"### ramp, {r['label']}: {r['rooms']} rooms x {r['members']} members, "
                f"{r['senders_per_room']} senders/room, {r['message_bytes']} B messages"
                + (f", {batch} messages per client write" if batch > 1 else "")
            )
            w("")
            w(f"Stopped by: {r.get('bound_by', '?')}. Server and load tool CPU are shares of one core, with how "
              f"busy that core was with anything in brackets; † marks steps where the load tool was above "
              f"{TOOL_LIMIT:.0%} of its core."
              + (" Server CPU is both chat-server processes summed; Redis CPU is redis-server's share of the "
                 "same core; with the servers it decides whether the server side was saturated "
                 "(`server_side_util`). PUBLISH/msg: Redis's PUBLISH calls in the step per message sent."
                 if redis_cols else ""))
            w("")
            w("| msgs/s per sender | offered deliveries/s | delivered/s | ratio | p50 ms | p99 ms | p99.9 ms | max ms "
              "| server µs/delivery (user + sys) | server CPU | "
              + ("Redis CPU | Redis µs/message | PUBLISH/msg | " if redis_cols else "") + "load tool CPU | pass |")
            w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
              + ("---: | ---: | ---: | " if redis_cols else "") + "---: | --- |")
            for s in r.get("steps", []):
                lat = s.get("latency_ms") or {}
                tool = (f"{num(s.get('client_cpu_util'), 2)} ({num(s.get('client_core_busy'), 2)})"
                        + (" †" if s.get("tool_limited") else ""))
                server = f"{num(s.get('server_cpu_util'), 2)} ({num(s.get('server_core_busy'), 2)})"
                w(
                    f"| {s['rate_per_sender']} | {num(s['offered_deliveries_per_s'])} | {num(s['delivered_per_s'])} "
                    f"| {s['delivery_ratio']:.5f} | {lat.get('p50', '-')} | {lat.get('p99', '-')} "
                    f"| {lat.get('p999', '-')} | {lat.get('max', '-')} "
                    f"| {num(s.get('server_cpu_us_per_delivery'), 3)} ({num(s.get('server_user_us_per_delivery'), 3)}"
                    f" + {num(s.get('server_system_us_per_delivery'), 3)}) "
                    f"| {server} | "
                    + (f"{num(s.get('redis_cpu_util'), 2)} | {num(s.get('redis_cpu_us_per_message'), 1)} "
                       f"| {num(s.get('publishes_per_message'), 3)} | " if redis_cols else "")
                    + f"{tool} | {'yes' if s.get('pass') else 'no, passed when run again' if s.get('retried') else 'no'} |"
                )
            w("")

    w("### fanout at a fixed load (the median round of each)")
    w("")
    w("| | " + " | ".join(detail_heads) + " |")
    w("| --- | " + " | ".join("---:" for _ in detail_heads) + " |")
    redis_keys = (
        ("server_cpu_s_each", "server CPU seconds, each process"),
        ("server_side_util", "server side (servers + Redis) CPU, share of its cores"),
        ("redis_cpu_s", "Redis CPU seconds"),
        ("redis_cpu_us_per_message", "Redis CPU µs per message sent"),
        ("redis_cpu_us_per_delivery", "Redis CPU µs per delivery"),
        ("redis_cpu_util", "Redis CPU (share of a core)"),
        ("redis_script_us_per_call", "Redis µs inside the publish script per call (commandstats usec: wall time)"),
        ("redis_calls", "Redis calls in the step"),
        ("publishes_per_message", "PUBLISH per message sent"),
    ) if with_redis else ()
    for key, label in (
        ("offered_msgs_per_s", "offered messages/s"),
        ("offered_deliveries_per_s", "offered deliveries/s"),
        ("delivered_per_s", "delivered/s"),
        ("delivery_ratio", "delivery ratio"),
        ("server_cpu_s", "server CPU seconds"),
        ("server_user_s", "server user seconds"),
        ("server_system_s", "server system seconds"),
        ("server_cpu_us_per_delivery", "server CPU µs per delivery"),
        ("server_user_us_per_delivery", "server user µs per delivery"),
        ("server_system_us_per_delivery", "server system µs per delivery"),
        ("server_cpu_util", "server CPU (share of its core)"),
        ("server_core_busy", "server's core busy with anything"),
        ("client_cpu_util", "load tool CPU (share of its core)"),
        ("client_core_busy", "load tool's core busy with anything"),
    ) + redis_keys:
        cells = []
        for l in detail:
            v = get(fan[l], "step", key)
            if isinstance(v, dict):
                v = ", ".join(f"{k} {n}" for k, n in v.items())
            elif isinstance(v, list):
                v = " + ".join(str(x) for x in v)
            cells.append("-" if v is None else str(v))
        w(f"| {label} | " + " | ".join(cells) + " |")
    w("| connect rate/s | " + " | ".join(num(get(fan[l], "connect_per_s")) for l in detail) + " |")
    w("")
    w("### idle connections")
    w("")
    w("| server | connections | held | dropped | connect/s | RSS before KiB | RSS after KiB | bytes/conn "
      "| pings answered per conn (min) | load tool RSS KiB |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    order = {label: i for i, label in enumerate(detail)}
    for r in sorted((r for r in rows if r.get("scenario") == "idle" and not r.get("failed")),
                    key=lambda r: (order.get(r.get("label"), 9), r["connections"])):
        w(
            f"| {r['label']} | {num(r['connections'])} | {num(r['held'])} | {r['dropped']} | {num(r['connect_per_s'])} "
            f"| {num(r['server_rss_before_kib'])} | {num(r['server_rss_after_kib'])} "
            f"| {num(r['server_rss_per_conn_bytes'])} | {r['pings_min']} | {num(r['client_rss_kib'])} |"
        )
    w("")
    w("## How it was measured")
    w("")
    w("- Protocol as a browser uses it: `POST /login` (percy/123) -> OTP -> `GET /ws?otp=` upgrade with the "
      "server's own Origin -> `change_room` -> `send_message`; every member of the room, the sender included, "
      "must receive each `new_message`. The floor skips the account, OTP and Origin checks.")
    w("- fanout/ramp: open loop. Send times are fixed by the clock and staggered across senders; each message "
      "carries its send time (taken as it is queued), and latency is sender -> each recipient on one clock. "
      "A step's deliveries are counted until all arrive or the drain time passes. The ramp multiplies the rate "
      "by 1.5 per step until p99 exceeds the bound or fewer than 99.9% arrive, then bisects twice.")
    w("- Server CPU: utime (user) and stime (system) from /proc/PID/stat, every thread of the process, across "
      "the measured step (sending and drain), divided by deliveries. The kernel's TCP work for loopback "
      "traffic is charged to whichever process is running when it happens, mostly the sender's `write()`: "
      "system time per delivery includes most of the receiving side's TCP work too, alike for every server. "
      "CPU share = CPU seconds / wall seconds of the step, of one core.")
    w("- The ramp's stopping step is judged: `server` if the server used >= 90% of its core, `load tool` if "
      "the tool did and the server did not (the best rate is then a lower bound for that server and the "
      "ramp runs again with several messages per client write), `other load` if neither did but either core "
      "was >= 90% busy with anything (/proc/stat, steal included: other processes on this shared machine), "
      "else `neither saturated`.")
    if with_redis:
        w("- 2 processes + Redis: the load tool gets every process's URL and PID and spreads connections "
          "round-robin over them (login and upgrade on the same process), so every room has members on both; "
          "CPU and RSS are summed over the processes. Around each measured step it reads Redis's `INFO cpu "
          "commandstats` (PUBLISH, EVALSHA, EVAL calls and Redis's own CPU) and /proc for redis-server; run.sh "
          "also reads `INFO commandstats` with redis-cli before and after each whole scenario. A ramp's "
          "`server` verdict there means the chat-servers and Redis together used >= 90% of the core they share.")
    w("- idle: RSS from /proc/PID/status (VmRSS) of a fresh server before connecting and after holding "
      "every connection through the heartbeat rounds (pings every 2 s, `--ping-interval 2s --pong-wait 3s`; "
      "the floor never pings). Per-connection RSS = (after - before) / held; it includes whatever the logins "
      "left behind.")
    w("- The tokio peer is written as axum's chat example is: per connection a task that forwards the room's "
      "broadcasts to the socket and pings, and a task that reads; one JSON serialisation per message, a "
      "`String` clone and a `write` per recipient; axum's default WebSocket buffers. See "
      "bench/peers/rust-tokio/README.md.")
    w("- The Go baseline keeps the tutorial's design: two goroutines per connection, an unbuffered egress "
      "channel per client, a broadcast that ranges over every client, one JSON marshal and one `write` per "
      "recipient per message, and a plain-text password check (chat-server verifies an argon2id hash, a few "
      "ms per login, which bounds its connect rate; tokio and the floor check in plain text or not at all). "
      "See bench/peers/go-gorilla/README.md.")
    w("")

    with open(os.path.join(out, "REPORT.md"), "w") as f:
        f.write("\n".join(lines))

    # ---- plot data and script ----
    series = []
    for label in detail:
        r = ramps[label]
        if not r:
            continue
        path = os.path.join(out, f"latency-{label}.dat")
        steps = sorted(
            (s for s in r.get("steps", []) if s.get("latency_ms") and s.get("delivered_per_s")),
            key=lambda s: s["delivered_per_s"],
        )
        with open(path, "w") as f:
            f.write("# delivered_per_s p50_ms p99_ms\n")
            for s in steps:
                f.write(f"{s['delivered_per_s']} {s['latency_ms']['p50']} {s['latency_ms']['p99']}\n")
        if steps:
            series.append((label, os.path.basename(path)))
    bound = get(ramps["ours"], "p99_bound_ms") or 50
    plots = []
    for label, path in series:
        color = COLORS.get(label, "#555555")
        plots.append(f"'{path}' using 1:3 with linespoints lw 2 pt 7 lc rgb '{color}' title '{label} p99'")
        plots.append(f"'{path}' using 1:2 with linespoints lw 1 dt 2 pt 6 lc rgb '{color}' title '{label} p50'")
    plots.append(f"{bound} with lines lc rgb '#888888' dt 3 title 'p99 bound'")
    script = f"""# generated by report.py; run from anywhere
cd '{os.path.abspath(out)}'
set terminal pngcairo size 900,560 font ',10'
set output 'latency.png'
set title 'Fan-out latency vs delivered rate (ramp steps, server on one core)'
set xlabel 'delivered messages/s'
set ylabel 'latency, ms'
set logscale xy
set grid
set key top left
set format x '%.0s%c'
plot {', '.join(plots)}
"""
    with open(os.path.join(out, "latency.gp"), "w") as f:
        f.write(script)


if __name__ == "__main__":
    main()
