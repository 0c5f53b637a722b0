//! The reconnect scenario: N clients logged in and in their rooms, the
//! server restarted under them, and how long until all N are back.
//!
//! The tool does not restart the server itself: whoever started it does
//! (`bench/run.sh`, or a person at a shell), when the tool says it is ready.
//! The tool then sees every connection dropped, waits until the old process
//! is gone (`--pid`: its listening socket may accept until it exits), and
//! probes the address until a connect succeeds: that instant is "the new
//! process listening", where the clock starts. Every client then reconnects
//! as fast as the tool can (`--concurrency` handshakes in flight), through
//! `POST /session/otp` with the cookie its login set (`--via session`) or a
//! password login (`--via password`), then `GET /ws?otp=...&room=R&since=ID`
//! (ID the last message it saw). A client is back when its room's first
//! event arrives: the `history_gap` a restarted server sends a client
//! resuming from an id it no longer has (or a message; or the pong to a ping
//! when the client had no id). The clock stops at the last client back.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::args::Args;
use crate::engine::Engine;
use crate::procfs;
use crate::scenarios::{
    Common, Outcome, SYNC_ATTEMPTS, TOOL_LIMIT, common, fmt_num, ms, print_table, round, rss_sum,
    server_row,
};

/// How a client gets its OTP when it comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// `POST /session/otp` with its session cookie: no password, no hash.
    Session,
    /// `POST /login` with the password again.
    Password,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Session => "session",
            Via::Password => "password",
        }
    }
}

/// `session`, `password`, or both in order (`session,password`): one restart each.
fn parse_via(list: &str) -> Result<Vec<Via>, String> {
    let rounds: Vec<Via> = list
        .split(',')
        .map(|item| match item.trim() {
            "session" => Ok(Via::Session),
            "password" => Ok(Via::Password),
            other => Err(format!("--via {other}: session or password")),
        })
        .collect::<Result<_, _>>()?;
    if rounds.is_empty() || rounds.len() > 10 {
        return Err("--via: one to ten of session, password (comma-separated)".into());
    }
    Ok(rounds)
}

/// What one restart needs to know.
struct Restart<'a> {
    number: usize,
    of: usize,
    via: Via,
    /// The process that is about to go away.
    old_pid: u32,
    ready_file: Option<&'a str>,
    pid_file: Option<&'a str>,
    restart_timeout: Duration,
    back_timeout: Duration,
    attempts: u8,
}

pub fn reconnect(args: &mut Args) -> Result<Outcome, String> {
    let common = common(args)?;
    let connections: usize = args.get("connections", 1000usize)?;
    let members: usize = args.get("members", 100usize)?;
    let rounds = parse_via(&args.string("via", "session"))?;
    let ready_file = args.opt::<String>("ready-file")?;
    let pid_file = args.opt::<String>("new-pid-file")?;
    let restart_timeout = args.duration("restart-timeout", "60s")?;
    let back_timeout = args.duration("back-timeout", "300s")?;
    let attempts: u8 = args.get("attempts", 3u8)?;
    args.finish()?;
    if connections == 0 || members == 0 || attempts == 0 {
        return Err("--connections, --members and --attempts must be at least 1".into());
    }
    if common.targets.len() != 1 || common.pids.len() != 1 {
        return Err(
            "reconnect takes one --url and its server's --pid (the process to be restarted: \
             its address counts as the new one listening only once it is gone)"
                .into(),
        );
    }
    if rounds.len() > 1 && pid_file.is_none() {
        return Err(
            "several --via rounds need --new-pid-file (each round waits for the \
                    process the last one started to go)"
                .into(),
        );
    }

    let rooms = connections.div_ceil(members);
    let mut names = vec!["general".to_string()];
    names.extend((1..=rooms).map(|r| format!("room-{r}")));
    let mut engine = Engine::new(common.targets.clone(), names, common.concurrency, 32)
        .map_err(|err| format!("cannot start the event loop: {err}"))?;
    engine.keep_sessions = true;
    engine.room_in_url = true;
    engine.track_ids = true;

    eprintln!(
        "reconnect: logging in {connections} clients ({rooms} rooms of up to {members}) to {}",
        common.url
    );
    let setup = engine.connect(connections, |i| 1 + (i / members) as u32, true);
    let setup_rate = engine.connect_rate();
    let setup_errors = engine.errors.total;
    if engine.open_now == 0 {
        return Err(format!(
            "no connection could be opened: {}",
            engine.errors.to_json()
        ));
    }
    let synced = engine.sync_rooms(SYNC_ATTEMPTS);
    if !synced {
        engine
            .errors
            .add("room sync: some members never saw their room's marker".into());
    }
    let in_rooms = engine.open_now;
    let without_session = engine.without_session();
    let without_id = engine.without_id();
    eprintln!(
        "{in_rooms} in their rooms after {:.1}s ({setup_rate:.0} logins/s); \
         {without_session} without a session cookie, {without_id} without a message id",
        setup.as_secs_f64()
    );

    let mut results = Vec::new();
    let mut old_pid = Some(common.pids[0]);
    for (at, &via) in rounds.iter().enumerate() {
        let Some(pid) = old_pid else {
            engine.errors.add(format!(
                "round {}: no pid of the server the last round started (--new-pid-file)",
                at + 1
            ));
            break;
        };
        let plan = Restart {
            number: at + 1,
            of: rounds.len(),
            via,
            old_pid: pid,
            ready_file: ready_file.as_deref(),
            pid_file: pid_file.as_deref(),
            restart_timeout,
            back_timeout,
            attempts,
        };
        let (json, new_pid) = restart(&mut engine, &common, &plan)?;
        results.push(json);
        old_pid = new_pid;
    }
    engine.close_all(Duration::from_secs(5));

    let all_ok = results.len() == rounds.len()
        && results
            .iter()
            .all(|r| r["all_back_s"].is_number() && r["verified"].as_bool() == Some(true));
    let json = json!({
        "scenario": "reconnect",
        "label": common.label,
        "url": common.url,
        "connections": connections,
        "members_per_room": members,
        "rooms": rooms,
        "concurrency": common.concurrency,
        "attempts": attempts,
        "opened": in_rooms,
        "setup_s": round(setup.as_secs_f64(), 2),
        "setup_logins_per_s": round(setup_rate, 1),
        "setup_errors": setup_errors,
        "without_session": without_session,
        "without_id": without_id,
        "rounds": results,
        "errors": engine.errors.total,
        "error_kinds": engine.errors.to_json(),
        "client_peak_rss_kib": procfs::peak_rss_kib(None),
        "sent_total": engine.chats_sent,
    });
    table(&json);
    let ok = engine.errors.total == 0 && all_ok;
    Ok(Outcome { json, ok })
}

/// One restart: ready, dropped, the old process gone, the new one listening,
/// everyone back, checked. Returns the round's JSON and the new process's
/// PID (from `--new-pid-file`), the one the next round waits to go.
fn restart(
    engine: &mut Engine,
    common: &Common,
    plan: &Restart,
) -> Result<(Value, Option<u32>), String> {
    let via = plan.via;
    let clients = engine.open_now;
    engine.via_session = via == Via::Session;
    engine.dropped = 0;
    engine.expect_drop = true;
    if let Some(path) = plan.ready_file {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|err| format!("--ready-file {path}: {err}"))?;
        writeln!(file, "ready {} {}", plan.number, via.name())
            .map_err(|err| format!("--ready-file {path}: {err}"))?;
    }
    eprintln!(
        "reconnect: READY (round {} of {}, back via {}): {clients} clients in their rooms; \
         restart the server (pid {}) on the same address with the same --session-key",
        plan.number,
        plan.of,
        via.name(),
        plan.old_pid
    );
    let ready_at = Instant::now();
    let deadline = ready_at + plan.restart_timeout;
    let mut failure = None;
    if !engine.wait_until(plan.restart_timeout, Engine::all_down) {
        failure = Some(format!(
            "the server did not drop every client within {:?} ({} of {clients})",
            plan.restart_timeout, engine.dropped
        ));
    }
    let down_at = Instant::now();
    // Until the old process is gone its listening socket may still complete
    // connects (the kernel accepts into the backlog of a listener nobody
    // reads): only then does a successful connect mean the new process.
    while failure.is_none() && !procfs::gone(plan.old_pid) {
        if Instant::now() >= deadline {
            failure = Some(format!("pid {} did not exit", plan.old_pid));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let addr = common.targets[0].addr;
    let listening = loop {
        if failure.is_some() {
            break None;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            break Some(Instant::now());
        }
        if Instant::now() >= deadline {
            failure = Some(format!("nothing listened on {addr} again"));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let Some(t0) = listening else {
        engine.expect_drop = false;
        let why = failure.unwrap_or_default();
        engine.errors.add(format!("restart: {why}"));
        let json = json!({
            "via": via.name(), "clients": clients, "dropped": engine.dropped,
            "failed": why, "all_back_s": null, "verified": false,
        });
        return Ok((json, None));
    };
    eprintln!(
        "  dropped {} in {:.2}s; listening again {:.2}s later; reconnecting",
        engine.dropped,
        (down_at - ready_at).as_secs_f64(),
        (t0 - down_at).as_secs_f64()
    );

    let tool_before = procfs::cpu_times(None);
    let errors_before = engine.errors.total;
    let want = engine.reconnect(plan.attempts, plan.back_timeout, true);
    let ended = Instant::now();
    let tool_after = procfs::cpu_times(None);
    // The new process: its CPU from its start (startup included) to now.
    let new_pid = plan
        .pid_file
        .and_then(|path| new_pid(path, plan.old_pid, Duration::from_secs(5)));
    let server_cpu = new_pid.and_then(|pid| procfs::cpu_times(Some(pid)));
    let server_rss = new_pid.and_then(|pid| rss_sum(&[pid]));

    let t0_ns = engine.ns_at(t0);
    let mut own = histogram();
    let mut since_listening = histogram();
    let mut last_back_ns = None;
    for (attempt_ns, back_ns) in engine.comebacks() {
        if back_ns == 0 {
            continue;
        }
        own.saturating_record((back_ns.saturating_sub(attempt_ns) / 1000).max(1));
        since_listening.saturating_record((back_ns.saturating_sub(t0_ns) / 1000).max(1));
        last_back_ns = last_back_ns.max(Some(back_ns));
    }
    let back = engine.back;
    let last_back_s = last_back_ns.map(|ns| ns.saturating_sub(t0_ns) as f64 / 1e9);
    let all_back_s = last_back_s.filter(|_| back == want && want == clients);
    let wall = (ended - t0).as_secs_f64();
    let tool = tool_before
        .zip(tool_after)
        .map(|((u0, s0), (u1, s1))| ((u1 - u0) / wall, (s1 - s0) / wall));

    let verify_started = Instant::now();
    let verified = engine.sync_rooms(SYNC_ATTEMPTS) && engine.open_now == clients;
    let verify_ms = verify_started.elapsed().as_secs_f64() * 1000.0;

    let json = json!({
        "via": via.name(),
        "clients": clients,
        "dropped": engine.dropped,
        "ready_to_dropped_s": round_s(down_at - ready_at),
        "dropped_to_listening_s": round_s(t0 - down_at),
        "reconnecting": want,
        "back": back,
        "not_back": want - back,
        "all_back_s": all_back_s.map(|s| round(s, 3)),
        "last_back_s": last_back_s.map(|s| round(s, 3)),
        "back_per_s": last_back_s.filter(|&s| s > 0.0).map(|s| round(back as f64 / s, 1)),
        "reconnect_ms": latency(&own),
        "back_after_listening_ms": latency(&since_listening),
        "retried_attempts": engine.retried.total,
        "retry_kinds": engine.retried.to_json(),
        "errors": engine.errors.total - errors_before,
        "verified": verified,
        "verify_ms": round(verify_ms, 1),
        "new_pid": new_pid,
        "server_cpu_s": server_cpu.map(|(u, s)| round(u + s, 3)),
        "server_user_s": server_cpu.map(|(u, _)| round(u, 3)),
        "server_system_s": server_cpu.map(|(_, s)| round(s, 3)),
        "server_cpu_us_per_client": server_cpu
            .filter(|_| back > 0)
            .map(|(u, s)| round((u + s) * 1e6 / back as f64, 1)),
        "server_rss_kib": server_rss,
        "client_cpu_util": tool.map(|(u, s)| round(u + s, 3)),
        "client_user_util": tool.map(|(u, _)| round(u, 3)),
        "client_system_util": tool.map(|(_, s)| round(s, 3)),
        // The tool near its core's limit: the time is an upper bound for the server.
        "tool_limited": tool.map(|(u, s)| u + s >= TOOL_LIMIT),
    });
    eprintln!(
        "  {back} of {want} back in {} s; in their rooms (marker seen by all): {verified}",
        fmt_num(&json["last_back_s"])
    );
    Ok((json, new_pid))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn latency(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}

fn round_s(d: Duration) -> f64 {
    round(d.as_secs_f64(), 3)
}

/// The PID in `path` once it names a live process other than `old`, waiting
/// up to `wait` for it (whoever restarts the server writes it there).
fn new_pid(path: &str, old: u32, wait: Duration) -> Option<u32> {
    let deadline = Instant::now() + wait;
    loop {
        let pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
            .filter(|&pid| pid != old && !procfs::gone(pid));
        if pid.is_some() || Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn table(json: &Value) {
    let mut rows = vec![
        server_row(json),
        (
            "clients (rooms x members)",
            format!(
                "{} ({} x {})",
                fmt_num(&json["connections"]),
                fmt_num(&json["rooms"]),
                fmt_num(&json["members_per_room"])
            ),
        ),
        (
            "setup: password logins",
            format!(
                "{} in {} s ({}/s)",
                fmt_num(&json["opened"]),
                fmt_num(&json["setup_s"]),
                fmt_num(&json["setup_logins_per_s"])
            ),
        ),
    ];
    for each in json["rounds"].as_array().into_iter().flatten() {
        let via = each["via"].as_str().unwrap_or("?");
        let own = &each["reconnect_ms"];
        let listening = &each["back_after_listening_ms"];
        rows.push((
            "back via",
            format!(
                "{via}: {} of {} back in {} s from listening ({}/s); in rooms: {}",
                fmt_num(&each["back"]),
                fmt_num(&each["clients"]),
                fmt_num(&each["last_back_s"]),
                fmt_num(&each["back_per_s"]),
                fmt_num(&each["verified"])
            ),
        ));
        rows.push((
            "  each client's reconnect ms p50/p99/max",
            format!(
                "{} / {} / {}",
                fmt_num(&own["p50"]),
                fmt_num(&own["p99"]),
                fmt_num(&own["max"])
            ),
        ));
        rows.push((
            "  back after listening ms p50/p99",
            format!(
                "{} / {}",
                fmt_num(&listening["p50"]),
                fmt_num(&listening["p99"])
            ),
        ));
        rows.push((
            "  server CPU s from its start (us per client)",
            format!(
                "{} ({})",
                fmt_num(&each["server_cpu_s"]),
                fmt_num(&each["server_cpu_us_per_client"])
            ),
        ));
        rows.push((
            "  restart: dropped s, then listening s later",
            format!(
                "{} / {}",
                fmt_num(&each["ready_to_dropped_s"]),
                fmt_num(&each["dropped_to_listening_s"])
            ),
        ));
        rows.push((
            "  retried attempts; load tool CPU (user + system)",
            format!(
                "{} {}; {} ({} + {}){}",
                fmt_num(&each["retried_attempts"]),
                each["retry_kinds"],
                fmt_num(&each["client_cpu_util"]),
                fmt_num(&each["client_user_util"]),
                fmt_num(&each["client_system_util"]),
                if each["tool_limited"].as_bool() == Some(true) {
                    "  (the load tool may be the limit)"
                } else {
                    ""
                }
            ),
        ));
    }
    rows.push((
        "errors",
        format!("{} {}", fmt_num(&json["errors"]), json["error_kinds"]),
    ));
    print_table("reconnect", &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_named_in_order() {
        assert_eq!(parse_via("session"), Ok(vec![Via::Session]));
        assert_eq!(
            parse_via("session, password"),
            Ok(vec![Via::Session, Via::Password])
        );
        assert!(parse_via("cookie").is_err());
        assert!(parse_via("").is_err());
    }
}
