//! The join storm: every member of one big room watching its presence, all
//! cut off at once and all back at once, and what that costs in presence
//! frames.
//!
//! Setup: `--members` connections, connection `i` logged in as user `i mod
//! --user-count` (a users file on the server), enter `--room` through the
//! upgrade (`/ws?otp=...&room=R&presence=1`), so every member watches; the
//! run waits until every watcher's roster (its snapshot, then the joins and
//! leaves after it, see `presence`) holds every user of the room, and until
//! no presence frame has come for `--quiet`.
//!
//! The storm: the tool drops every socket in one loop turn (no close frame,
//! as a network cut), then brings every member back as fast as it can
//! (`--concurrency` handshakes in flight; an OTP from the session cookie,
//! `--via session`, or a password login, `--via password`), into the same
//! room, watching again. `--observers K` more members (the last K
//! connections) stay through it: they see every leave and every join,
//! where a member who was cut sees only the joins after its own snapshot.
//! Measured from the cut: when the last member was
//! back, when every watcher's roster was complete again (stable), and when
//! the last presence frame came (settled: none for `--quiet` after it);
//! every presence frame in between, per watcher, and per join (each user
//! left and came back once). A server that batches sends a watcher at most
//! one frame of each kind per loop turn, so frames per join stay small
//! while N grows; one frame per join per watcher makes them N. With
//! `--metrics`, each server's `chat_loop_iterations_total` around the storm
//! turns that into frames per watcher per loop turn (target: at most 1 of
//! each kind).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::args::Args;
use crate::engine::Engine;
use crate::presence::{Kind, Tally};
use crate::procfs;
use crate::scenarios::{
    Outcome, Times, common, cpu_now, cpu_spent, fmt_num, print_table, round, sum_times,
};
use crate::servermetrics;

/// The engine's room number of the storm's room (0 is the server's default).
const ROOM: u32 = 1;
/// The server's loop counter (chat-server's `/metrics`).
const ITERATIONS: &str = "chat_loop_iterations_total";

pub fn join_storm(args: &mut Args) -> Result<Outcome, String> {
    let common = common(args)?;
    let members: usize = args.get("members", 1000usize)?;
    let observers: usize = args.get("observers", 0usize)?;
    let room = args.string("room", "storm");
    let user_count: usize = args.get("user-count", 0usize)?;
    let via = args.string("via", "session");
    let timeout = args.duration("timeout", "60s")?;
    let quiet = args.duration("quiet", "1s")?;
    let attempts: u8 = args.get("attempts", 3u8)?;
    let metrics = args.all("metrics");
    args.finish()?;
    if members == 0 || attempts == 0 {
        return Err("--members and --attempts must be at least 1".into());
    }
    let via_session = match via.as_str() {
        "session" => true,
        "password" => false,
        other => return Err(format!("--via {other}: session or password")),
    };
    if !metrics.is_empty() && metrics.len() != common.targets.len() {
        return Err("--metrics: one per --url, in the same order".into());
    }

    let mut engine = Engine::new(
        common.targets.clone(),
        vec!["general".into(), room.clone()],
        common.concurrency,
        32,
    )
    .map_err(|err| format!("cannot start the event loop: {err}"))?;
    engine.set_users(user_count);
    engine.presence = true;
    engine.room_in_url = true;
    engine.keep_sessions = via_session;
    let everyone = members + observers;
    let users = everyone.min(engine.users().len());
    // The users who leave and come back: those of the members cut, but
    // for any with an observer's tab still open.
    let user_of = |i: usize| engine.users().of_connection(i);
    let staying: HashSet<usize> = (members..everyone).map(user_of).collect();
    let joins = (0..members)
        .map(user_of)
        .filter(|u| !staying.contains(u))
        .collect::<HashSet<_>>()
        .len();
    engine.expect_presence(ROOM, users);
    if users == 1 && everyone > 1 {
        eprintln!(
            "join-storm: every member logs in as {}: one user, so no joins to batch \
             (--user-count N with a users file of {}0 .. {}N-1 makes them distinct)",
            engine.users().name(0),
            common.targets[0].user,
            common.targets[0].user,
        );
    }

    // ---- everyone in, watching ----
    eprintln!(
        "join-storm: {members} members and {observers} observers ({users} users) into {room} \
         watching presence, at {}",
        common.url
    );
    let started = Instant::now();
    let connect = engine.connect(everyone, |_| ROOM, true);
    let connect_rate = engine.connect_rate();
    if engine.open_now == 0 {
        return Err(format!(
            "no connection could be opened: {}",
            engine.errors.to_json()
        ));
    }
    let opened = engine.open_now;
    let complete = engine.wait_until(timeout, |e| e.presence_complete().is_some());
    let connect_stable_s = engine
        .presence_complete()
        .map(|ns| secs_between(engine.ns_at(started), ns));
    settle(&mut engine, quiet, timeout);
    let connect_tally = engine.presence_tally.clone();
    let connect_each = engine.presence_frames_each(None);
    if !complete {
        engine.errors.add(format!(
            "before the storm: {} rosters never complete",
            engine.presence_incomplete()
        ));
    }
    eprintln!(
        "{opened} open in {:.1}s ({connect_rate:.0}/s), rosters complete: {}, {} presence frames",
        connect.as_secs_f64(),
        fmt_s(connect_stable_s),
        connect_tally.total()
    );

    // ---- the storm ----
    let iterations_before = iterations(&metrics);
    let cpu_before = cpu_now(&common);
    engine.reset_presence_frames();
    let cut_at = Instant::now();
    let cut_ns = engine.ns_at(cut_at);
    let cut = engine.cut(members);
    engine.via_session = via_session;
    eprintln!("storm: {cut} members cut off; all back at once");
    let want = engine.reconnect(attempts, timeout, true);
    let back = engine.back;
    let last_back_ns = engine.comebacks().map(|(_, back)| back).max();
    let left = timeout.saturating_sub(cut_at.elapsed());
    engine.wait_until(left, |e| e.presence_complete().is_some());
    settle(&mut engine, quiet, timeout);
    let iterations_after = iterations(&metrics);
    let cpu_after = cpu_now(&common);
    // After the quiet: what every roster says now, and since when.
    let stable_ns = engine.presence_complete();
    let storm = engine.presence_tally.minus(&connect_tally);
    let each = engine.presence_frames_each(None);
    let observed = |kind: Option<Kind>| spread(&engine.presence_frames_each(kind)[members..]);
    let observer_frames = json!({
        "all": observed(None),
        "joins": observed(Some(Kind::Join)),
        "leaves": observed(Some(Kind::Leave)),
        "snapshots": observed(Some(Kind::Snapshot)),
    });
    let settled_ns = engine.last_presence.map(|at| engine.ns_at(at));
    let incomplete = engine.presence_incomplete();
    engine.close_all(Duration::from_secs(5));

    let loop_turns: Option<Vec<f64>> = iterations_before
        .zip(iterations_after)
        .map(|(b, a)| b.iter().zip(&a).map(|(b, a)| (a - b).max(0.0)).collect());
    let servers = common.targets.len();
    let per_turn: Option<Vec<f64>> = loop_turns.as_ref().map(|turns| {
        each.iter()
            .enumerate()
            .map(|(i, &f)| f64::from(f) / turns[i % servers].max(1.0))
            .collect()
    });
    // The servers' CPU from the cut to the end of the quiet (reconnects,
    // logins or session OTPs included).
    let cpu_each: Vec<Times> = cpu_before
        .servers
        .iter()
        .zip(&cpu_after.servers)
        .map(|(&b, &a)| cpu_spent(b, a))
        .collect();
    let server_cpu_s = sum_times(&cpu_each).map(|(u, s)| round(u + s, 3));
    let all_back = back == want && want == members;
    let stable_s = stable_ns
        .filter(|_| all_back)
        .map(|ns| secs_between(cut_ns, ns));
    let mut json = json!({
        "scenario": "join-storm",
        "label": common.label,
        "url": common.url,
        "room": room,
        "members": members,
        "observers": observers,
        "user_count": user_count,
        "users_in_room": users,
        "via": via,
        "concurrency": common.concurrency,
        "quiet_s": round(quiet.as_secs_f64(), 3),
        "connect": {
            "opened": opened,
            "connect_s": round(connect.as_secs_f64(), 3),
            "connect_per_s": round(connect_rate, 1),
            "stable_s": connect_stable_s.map(|s| round(s, 3)),
            "presence": connect_tally.to_json(),
            "frames_per_watcher": spread(&connect_each),
            "frames_per_join": per(connect_tally.total(), users),
        },
        "cut": cut,
        "back": back,
        "gave_up": engine.gave_up,
        "all_back_s": last_back_ns.filter(|_| all_back).map(|ns| round(secs_between(cut_ns, ns), 3)),
        "stable_s": stable_s.map(|s| round(s, 3)),
        "settled_s": settled_ns.map(|ns| round(secs_between(cut_ns, ns), 3)),
        "rosters_incomplete": incomplete,
        "presence": storm.to_json(),
        "frames": storm.total(),
        "frames_per_watcher": spread(&each),
        // Each user cut left and came back once: frames per join is the
        // storm's frames over them (N when every join is a frame to every
        // watcher).
        "joins": joins,
        "frames_per_join": per(storm.total(), joins),
        "observer_frames": observer_frames,
        "names_per_join_frame": per(storm.names_joined, storm.of(Kind::Join) as usize),
        "loop_iterations": loop_turns.clone(),
        "server_cpu_s": server_cpu_s,
        // The tool's own: a slow tool (parsing 1,000 snapshots) would make
        // the storm look slower than the server is.
        "client_cpu_s": cpu_spent(cpu_before.client, cpu_after.client).map(|(u, s)| round(u + s, 3)),
        "frames_per_watcher_per_iteration": per_turn.as_deref().map(spread_f),
        "errors": engine.errors.total,
        "error_kinds": engine.errors.to_json(),
        "retried": engine.retried.to_json(),
        "client_peak_rss_kib": procfs::peak_rss_kib(None),
        "sent_total": engine.chats_sent,
    });
    if servers > 1 {
        json["server_cpu_s_each"] = cpu_each
            .iter()
            .map(|t| t.map(|(u, s)| round(u + s, 3)))
            .collect::<Vec<_>>()
            .into();
        json["servers"] = servers.into();
        json["opened_per_server"] = engine.opened_per_server.clone().into();
    }
    table(&json, &storm);
    let odd = &storm.odd;
    let ok = engine.errors.total == 0
        && all_back
        && stable_s.is_some()
        && incomplete == 0
        && odd.malformed + odd.wrong_room + odd.joins_of_present + odd.leaves_of_absent == 0;
    Ok(Outcome { json, ok })
}

/// Runs the loop until no presence frame has come for `quiet` (at most `timeout`).
fn settle(engine: &mut Engine, quiet: Duration, timeout: Duration) {
    engine.wait_until(timeout, |e| {
        e.last_presence.is_none_or(|at| at.elapsed() >= quiet)
    });
}

/// Each server's loop iterations so far (none without `--metrics`, or if
/// one cannot be read).
fn iterations(urls: &[String]) -> Option<Vec<f64>> {
    if urls.is_empty() {
        return None;
    }
    urls.iter()
        .map(
            |url| match servermetrics::read_all(std::slice::from_ref(url)) {
                Ok(samples) => samples.get(ITERATIONS).copied(),
                Err(err) => {
                    eprintln!("chat-bench: {err}");
                    None
                }
            },
        )
        .collect()
}

fn secs_between(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}

fn per(total: u64, of: usize) -> Option<f64> {
    (of > 0).then(|| round(total as f64 / of as f64, 3))
}

/// Mean, least, median, 99th percentile and most of per-watcher counts.
fn spread(each: &[u32]) -> Value {
    spread_f(&each.iter().map(|&f| f64::from(f)).collect::<Vec<_>>())
}

fn spread_f(each: &[f64]) -> Value {
    if each.is_empty() {
        return Value::Null;
    }
    let mut sorted = each.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    json!({
        "mean": round(sorted.iter().sum::<f64>() / sorted.len() as f64, 3),
        "min": round(sorted[0], 3),
        "p50": round(at(0.5), 3),
        "p99": round(at(0.99), 3),
        "max": round(sorted[sorted.len() - 1], 3),
    })
}

fn fmt_s(s: Option<f64>) -> String {
    s.map_or_else(|| "never".into(), |s| format!("{s:.3}s"))
}

fn table(json: &Value, storm: &Tally) {
    let spread_row = |v: &Value| {
        format!(
            "mean {} / p50 {} / p99 {} / max {}",
            fmt_num(&v["mean"]),
            fmt_num(&v["p50"]),
            fmt_num(&v["p99"]),
            fmt_num(&v["max"])
        )
    };
    let c = &json["connect"];
    let mut rows = vec![
        (
            "server",
            format!(
                "{} {}",
                json["label"].as_str().unwrap_or(""),
                json["url"].as_str().unwrap_or("")
            ),
        ),
        (
            "members + observers (users) in the room",
            format!(
                "{} + {} ({}) in {}",
                fmt_num(&json["members"]),
                fmt_num(&json["observers"]),
                fmt_num(&json["users_in_room"]),
                json["room"].as_str().unwrap_or("")
            ),
        ),
        (
            "connect: s, rosters complete after, frames",
            format!(
                "{} s, {} s, {} ({} per join)",
                fmt_num(&c["connect_s"]),
                fmt_num(&c["stable_s"]),
                fmt_num(&c["presence"]["frames"]),
                fmt_num(&c["frames_per_join"])
            ),
        ),
        (
            "storm: cut / back / gave up",
            format!(
                "{} / {} / {} (via {})",
                fmt_num(&json["cut"]),
                fmt_num(&json["back"]),
                fmt_num(&json["gave_up"]),
                json["via"].as_str().unwrap_or("")
            ),
        ),
        (
            "after the cut: all back / rosters stable / last frame, s",
            format!(
                "{} / {} / {}",
                fmt_num(&json["all_back_s"]),
                fmt_num(&json["stable_s"]),
                fmt_num(&json["settled_s"])
            ),
        ),
        (
            "presence frames (snapshots, joins, leaves, counts)",
            format!(
                "{} ({}, {}, {}, {})",
                storm.total(),
                storm.of(Kind::Snapshot),
                storm.of(Kind::Join),
                storm.of(Kind::Leave),
                storm.of(Kind::Count)
            ),
        ),
        (
            "frames per watcher",
            spread_row(&json["frames_per_watcher"]),
        ),
        (
            "frames per observer (joins, leaves: most)",
            format!(
                "{} ({}, {})",
                spread_row(&json["observer_frames"]["all"]),
                fmt_num(&json["observer_frames"]["joins"]["max"]),
                fmt_num(&json["observer_frames"]["leaves"]["max"])
            ),
        ),
        (
            "frames per join; names per join frame",
            format!(
                "{}; {}",
                fmt_num(&json["frames_per_join"]),
                fmt_num(&json["names_per_join_frame"])
            ),
        ),
    ];
    if let Some(turns) = json["loop_iterations"].as_array() {
        let turns: Vec<String> = turns.iter().map(fmt_num).collect();
        rows.push(("server loop iterations in the storm", turns.join(" + ")));
        rows.push((
            "frames per watcher per iteration",
            spread_row(&json["frames_per_watcher_per_iteration"]),
        ));
    }
    rows.push((
        "CPU s from the cut to the end: servers, load tool",
        format!(
            "{}, {}",
            fmt_num(&json["server_cpu_s"]),
            fmt_num(&json["client_cpu_s"])
        ),
    ));
    let odd = &storm.odd;
    rows.push((
        "odd: joins of present, leaves of absent, strangers, malformed",
        format!(
            "{}, {}, {}, {}",
            odd.joins_of_present, odd.leaves_of_absent, odd.strangers, odd.malformed
        ),
    ));
    rows.push((
        "rosters incomplete at the end",
        fmt_num(&json["rosters_incomplete"]),
    ));
    rows.push((
        "errors",
        format!("{} {}", fmt_num(&json["errors"]), json["error_kinds"]),
    ));
    print_table("join-storm", &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_ratios() {
        let s = spread(&[1, 2, 3, 4, 100]);
        assert_eq!(s["mean"], 22.0);
        assert_eq!(
            (s["min"].clone(), s["p50"].clone()),
            (json!(1.0), json!(3.0))
        );
        assert_eq!(s["max"], 100.0);
        assert_eq!(spread(&[]), Value::Null);
        assert_eq!(per(3000, 1000), Some(3.0));
        assert_eq!(per(5, 0), None);
        assert_eq!(secs_between(2_000_000_000, 1), 0.0);
        assert_eq!(secs_between(1_000_000_000, 3_500_000_000), 2.5);
    }
}
