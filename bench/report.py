#!/usr/bin/env python3
"""Turns bench/run.sh's results.jsonl into REPORT.md and a gnuplot script for
latency.png (latency vs delivered rate, from the ramp steps).

Usage: report.py RESULTS_DIR   (standard library only)
"""
import json
import os
import sys

TARGETS = {
    "ramp_ratio": 3.0,  # ours / go, best deliveries/s at p99 <= bound
    "cpu_ratio": 0.3,  # ours / go, server CPU per delivered message
    "rss_per_conn": 1024,  # bytes per idle connection at 10,000
    "held": 19000,  # connections held by ours
}


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


def pick(rows, label, scenario, connections=None):
    for row in rows:
        if row.get("label") == label and row.get("scenario") == scenario:
            if connections is None or row.get("connections") == connections:
                return row
    return None


def cpu_of(row):
    return get(row, "step", "server_cpu_us_per_delivery")


def fanout_runs(rows, label):
    """Every fanout run of `label` that produced a CPU figure, by that figure."""
    runs = [r for r in rows if r.get("label") == label and r.get("scenario") == "fanout" and cpu_of(r) is not None]
    return sorted(runs, key=cpu_of)


def median_run(runs):
    """The run with the median CPU per delivery (the lower middle for an even count)."""
    return runs[(len(runs) - 1) // 2] if runs else None


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


def verdict(ok):
    return "-" if ok is None else ("met" if ok else "**not met**")


def get(row, *path):
    for key in path:
        if row is None:
            return None
        row = row.get(key) if isinstance(row, dict) else None
    return row


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
    rows = load(os.path.join(out, "results.jsonl"))
    info = env(os.path.join(out, "env.txt"))

    delay_prefix = "ours-write-delay-"
    delays = sorted(
        {r["label"][len(delay_prefix):] for r in rows if r.get("label", "").startswith(delay_prefix)},
        key=lambda d: float(d.rstrip("ms")) / (1 if d.endswith("ms") else 0.001),
    )
    labels = ["ours", "go"] + [delay_prefix + d for d in delays]
    runs = {label: fanout_runs(rows, label) for label in labels}
    f_ours, f_go = median_run(runs["ours"]), median_run(runs["go"])
    r_ours, r_go = pick(rows, "ours", "ramp"), pick(rows, "go", "ramp")
    idles = sorted(
        (r for r in rows if r.get("scenario") == "idle"), key=lambda r: (r.get("label") != "ours", r["connections"])
    )
    small = min((r["connections"] for r in idles), default=None)
    i_ours, i_go = pick(rows, "ours", "idle", small), pick(rows, "go", "idle", small)
    big = max((r["connections"] for r in idles if r.get("label") == "ours"), default=None)
    i_big = pick(rows, "ours", "idle", big) if big != small else None

    lines = []
    w = lines.append
    w("# chat-server vs the Go gorilla/websocket tutorial server")
    w("")
    w(
        f"Run {info.get('date', '?')} at commit `{info.get('commit', '?')}` on {info.get('cpu', '?')} "
        f"({info.get('cores', '?')} cores), Linux {info.get('kernel', '?')}; {info.get('rustc', '?')}, "
        f"Go {info.get('go', '?')} with gorilla/websocket {info.get('gorilla', '?')}."
    )
    w("Each server runs pinned to core 0 (`taskset -c 0`; Go therefore runs with GOMAXPROCS=1), the load tool "
      "(`chat-bench`) on core 1. Every scenario starts a fresh server. Produced by `bench/run.sh`.")
    if info.get("quick") == "1":
        w("")
        w("**QUICK=1: a scaled-down trial run, not the standard set.**")
    w("")

    # ---- headline table ----
    w("## Summary")
    w("")
    w("| measure | ours | Go baseline | ours / Go | target | verdict |")
    w("| --- | ---: | ---: | ---: | --- | --- |")
    best_o, best_g = get(r_ours, "best_deliveries_per_s"), get(r_go, "best_deliveries_per_s")
    text, value = ratio(best_o, best_g, 1)
    shape = f"{get(r_ours, 'rooms')}x{get(r_ours, 'members')}" if r_ours else "?"
    w(
        f"| ramp {shape}: highest deliveries/s with p99 <= {num(get(r_ours, 'p99_bound_ms'))} ms "
        f"and >= {get(r_ours, 'min_delivery')} delivered | {num(best_o)} | {num(best_g)} | {text} "
        f"| >= {TARGETS['ramp_ratio']:.0f}x | {verdict(None if value is None else value >= TARGETS['ramp_ratio'])} |"
    )
    cpu_o, cpu_g = get(f_ours, "step", "server_cpu_us_per_delivery"), get(f_go, "step", "server_cpu_us_per_delivery")
    text, value = ratio(cpu_o, cpu_g)
    rate = get(f_ours, "step", "offered_deliveries_per_s")
    w(
        f"| fanout at {num(rate)} deliveries/s: server CPU µs per delivered message | {num(cpu_o, 3)} "
        f"| {num(cpu_g, 3)} | {text} | <= {TARGETS['cpu_ratio']}x "
        f"| {verdict(None if value is None else value <= TARGETS['cpu_ratio'])} |"
    )
    for key, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")):
        a, b = get(f_ours, "step", "latency_ms", key), get(f_go, "step", "latency_ms", key)
        text, _ = ratio(a, b)
        w(f"| fanout latency {label}, ms | {num(a, 3)} | {num(b, 3)} | {text} | | |")
    a, b = get(f_ours, "step", "delivery_ratio"), get(f_go, "step", "delivery_ratio")
    w(f"| fanout delivery ratio | {a} | {b} | | | |")
    if len(runs["ours"]) > 1 or len(runs["go"]) > 1:
        spread = "; ".join(
            f"{label}: " + ", ".join(num(cpu_of(r), 2) for r in runs[label]) for label in runs if runs[label]
        )
        w(f"| fanout CPU µs per delivery, every round (the median is used above) | {spread} | | | | |")
    for delay in delays:
        f_delay = median_run(runs[delay_prefix + delay])
        cpu_d = cpu_of(f_delay)
        text, value = ratio(cpu_d, cpu_g)
        w(
            f"| the same fanout, ours with `--write-delay {delay}`: server CPU µs per delivered message "
            f"| {num(cpu_d, 3)} | {num(cpu_g, 3)} | {text} | <= {TARGETS['cpu_ratio']}x "
            f"| {verdict(None if value is None else value <= TARGETS['cpu_ratio'])}, trading latency |"
        )
        a, b = get(f_delay, "step", "latency_ms", "p50"), get(f_delay, "step", "latency_ms", "p99")
        w(
            f"| the same, with `--write-delay {delay}`: latency p50 / p99, ms; delivery ratio "
            f"| {num(a, 3)} / {num(b, 3)}; {get(f_delay, 'step', 'delivery_ratio')} | | | | |"
        )
    a, b = get(i_ours, "server_rss_per_conn_bytes"), get(i_go, "server_rss_per_conn_bytes")
    text, _ = ratio(a, b)
    w(
        f"| idle {num(small)}: server RSS per connection, bytes | {num(a)} | {num(b)} | {text} "
        f"| <= {TARGETS['rss_per_conn']} | {verdict(None if a is None else a <= TARGETS['rss_per_conn'])} |"
    )
    a, b = get(i_ours, "connect_per_s"), get(i_go, "connect_per_s")
    text, _ = ratio(a, b)
    w(f"| idle {num(small)}: connect rate (login + upgrade)/s | {num(a)} | {num(b)} | {text} | | |")
    a, b = get(i_ours, "held"), get(i_go, "held")
    w(f"| idle {num(small)}: held / dropped | {num(a)} / {num(get(i_ours, 'dropped'))} "
      f"| {num(b)} / {num(get(i_go, 'dropped'))} | | | |")
    if i_big:
        held = i_big.get("held")
        ok = held is not None and held >= big and i_big.get("dropped") == 0 and i_big.get("errors") == 0
        w(
            f"| idle {num(big)} (ours only): held / dropped, RSS per connection | {num(held)} / "
            f"{num(i_big.get('dropped'))}, {num(i_big.get('server_rss_per_conn_bytes'))} B | | "
            f"| {num(TARGETS['held'])} held | {verdict(ok)} |"
        )
    w("")

    # ---- warnings ----
    notes = []
    for row in rows:
        if row.get("scenario") == "server-died":
            notes.append(f"The {row['label']} server died during a run (port {row.get('port')}); see logs/.")
        elif row.get("failed"):
            notes.append(f"{row['label']} {row['scenario']}: the load tool printed no result (exit {row.get('exit')}).")
        elif row.get("errors") and row["scenario"] == "ramp" and not any(
            s.get("errors") for s in row.get("steps", []) if s.get("pass")
        ):
            kinds = ", ".join(f"{k}: {v}" for k, v in row.get("error_kinds", {}).items())
            notes.append(
                f"{row['label']} ramp: {row['errors']} errors, all in the failing (overload) step(s): {kinds}. "
                "A 1008 'slow consumer' close means the server cut a client whose queue filled up."
            )
        elif row.get("errors"):
            kinds = ", ".join(f"{k}: {v}" for k, v in row.get("error_kinds", {}).items())
            what = row["scenario"] + (f" {row['connections']}" if row["scenario"] == "idle" else "")
            notes.append(f"{row['label']} {what}: {row['errors']} errors ({kinds}).")
    for row in (r_ours, r_go):
        best = get(row, "best")
        if best and (best.get("client_cpu_util") or 0) >= 0.9:
            notes.append(
                f"{row['label']} ramp: the load tool used {best['client_cpu_util']:.0%} of its core at the best "
                "step, so that figure may be bounded by the load tool, not the server."
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
    for row in (r_ours, r_go):
        if not row:
            continue
        w(
            f"### ramp, {row['label']}: {row['rooms']} rooms x {row['members']} members, "
            f"{row['senders_per_room']} senders/room, {row['message_bytes']} B messages"
        )
        w("")
        w("| msgs/s per sender | offered deliveries/s | delivered/s | ratio | p50 ms | p99 ms | p99.9 ms | max ms "
          "| server µs/delivery | load tool CPU | pass |")
        w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for s in row.get("steps", []):
            lat = s.get("latency_ms") or {}
            w(
                f"| {s['rate_per_sender']} | {num(s['offered_deliveries_per_s'])} | {num(s['delivered_per_s'])} "
                f"| {s['delivery_ratio']:.5f} | {lat.get('p50', '-')} | {lat.get('p99', '-')} | {lat.get('p999', '-')} "
                f"| {lat.get('max', '-')} | {num(s.get('server_cpu_us_per_delivery'), 3)} "
                f"| {num(s.get('client_cpu_util'), 2)} | {'yes' if s.get('pass') else 'no'} |"
            )
        w("")

    w("### fanout at a fixed load")
    w("")
    w("| | ours | Go |")
    w("| --- | ---: | ---: |")
    for key, label in (
        ("offered_msgs_per_s", "offered messages/s"),
        ("offered_deliveries_per_s", "offered deliveries/s"),
        ("delivered_per_s", "delivered/s"),
        ("delivery_ratio", "delivery ratio"),
        ("server_cpu_s", "server CPU seconds"),
        ("server_cpu_us_per_delivery", "server CPU µs per delivery"),
        ("client_cpu_util", "load tool CPU (share of its core)"),
    ):
        w(f"| {label} | {get(f_ours, 'step', key)} | {get(f_go, 'step', key)} |")
    w(f"| connect rate/s | {num(get(f_ours, 'connect_per_s'))} | {num(get(f_go, 'connect_per_s'))} |")
    w("")
    w("### idle connections")
    w("")
    w("| server | connections | held | dropped | connect/s | RSS before KiB | RSS after KiB | bytes/conn "
      "| pings answered per conn (min) | load tool RSS KiB |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in idles:
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
      "must receive each `new_message`.")
    w("- fanout/ramp: open loop. Send times are fixed by the clock and staggered across senders; each message "
      "carries its send time (taken as it is queued), and latency is sender -> each recipient on one clock. "
      "A step's deliveries are counted until all arrive or the drain time passes. The ramp multiplies the rate "
      "by 1.5 per step until p99 exceeds the bound or fewer than 99.9% arrive, then bisects twice.")
    w("- Server CPU: utime + stime from /proc/PID/stat across the measured step (sending and drain), "
      "divided by deliveries.")
    w("- idle: RSS from /proc/PID/status (VmRSS) of a fresh server before connecting and after holding "
      "every connection through the heartbeat rounds (pings every 2 s, `--ping-interval 2s --pong-wait 3s` "
      "on both servers). Per-connection RSS = (after - before) / held; it includes whatever the logins left "
      "behind.")
    w("- The Go baseline keeps the tutorial's design: two goroutines per connection, an unbuffered egress "
      "channel per client, a broadcast that ranges over every client, one JSON marshal and one `write` per "
      "recipient per message, and a plain-text password check (chat-server verifies an argon2id hash, a few "
      "ms per login, which bounds its connect rate). See bench/peers/go-gorilla/README.md.")
    w("")

    with open(os.path.join(out, "REPORT.md"), "w") as f:
        f.write("\n".join(lines))

    # ---- plot data and script ----
    series = []
    for row in (r_ours, r_go):
        if not row:
            continue
        path = os.path.join(out, f"latency-{row['label']}.dat")
        steps = sorted(
            (s for s in row.get("steps", []) if s.get("latency_ms") and s.get("delivered_per_s")),
            key=lambda s: s["delivered_per_s"],
        )
        with open(path, "w") as f:
            f.write("# delivered_per_s p50_ms p99_ms\n")
            for s in steps:
                f.write(f"{s['delivered_per_s']} {s['latency_ms']['p50']} {s['latency_ms']['p99']}\n")
        if steps:
            series.append((row["label"], os.path.basename(path)))
    bound = get(r_ours, "p99_bound_ms") or 50
    colors = {"ours": "#1f77b4", "go": "#d62728"}
    plots = []
    for label, path in series:
        color = colors.get(label, "#555555")
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
