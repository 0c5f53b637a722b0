//! The resume flood: N clients resuming into one room over and over while a
//! probe chats in a room of its own, and what that does to the probe's round
//! trip, with Redis's output bytes per resume when the servers share one.
//!
//! Setup: a probe alone in `probe-T`, a keeper in `done-T` (its one message
//! `d1` is what ends the flood, below) and the resumers in `flood-T` (T: this
//! process's id, so every run starts with rooms of its own). One resumer fills
//! the flood room with `--fill` messages of `--fill-size` bytes and every
//! resumer sees all of them; the newest id is kept.
//!
//! Then two phases, one after the other in the same run, the probe sending a
//! stamped message every `--probe-interval` through both and timing its own
//! message's return: no flood (`--baseline`), then the flood (`--duration`):
//! each resumer sends `change_room` to the flood room, which it is already
//! in, asking to resume (`{"since": NEWEST}`: nothing to replay; or with
//! `--resume-history K`, `{"history": K}`), `--resume-rate` times a second,
//! open loop (staggered over the resumers; the send times are fixed by the
//! clock, never by the answers, so a slow server shows as the probe's latency
//! and the same resumes are asked of every server). After the last resume,
//! each resumer moves to the keeper's room with `{"history": 1}` and waits
//! for `d1`: through Redis the replays travel on one pipelined command
//! connection whose replies come in order, and without Redis each request is
//! answered as it is read, so `d1` arriving means every earlier resume of that
//! resumer was answered. Only then is Redis asked for its counters.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::args::Args;
use crate::engine::{Engine, Flood};
use crate::procfs;
use crate::scenarios::{
    Common, CpuNow, Outcome, SYNC_ATTEMPTS, TOOL_LIMIT, common, cpu_now, cpu_spent, fmt_num,
    latency_json, ms, print_table, round, server_row, sum_times,
};

/// Text bytes of each probe message (a stamp and padding).
const PROBE_SIZE: usize = 64;
/// The longest fill message the server takes with its envelope.
const MAX_FILL: usize = 400;

/// Connections: the probe, the keeper of the end marker, then the resumers.
const PROBE: usize = 0;
const KEEPER: usize = 1;
const FIRST_RESUMER: usize = 2;

/// Room numbers in the engine (0 is the server's default room, unused).
const PROBE_ROOM: u32 = 1;
const DONE_ROOM: u32 = 2;
const FLOOD_ROOM: u32 = 3;

pub fn resume_flood(args: &mut Args) -> Result<Outcome, String> {
    let common = common(args)?;
    let resumers: usize = args.get("resumers", 50usize)?;
    let resume_rate: f64 = args.get("resume-rate", 10.0)?;
    let resume_history: Option<u32> = args.opt("resume-history")?;
    let fill: usize = args.get("fill", 100usize)?;
    let fill_size: usize = args.get("fill-size", 100usize)?;
    let probe_interval = args.duration("probe-interval", "10ms")?;
    let duration = args.duration("duration", "10s")?;
    let baseline = match args.opt::<String>("baseline")? {
        Some(_) => args.duration("baseline", "10s")?,
        None => duration,
    };
    let warmup = args.duration("warmup", "1s")?;
    let drain = args.duration("drain", "5s")?;
    let baseline_pings: bool = args.get("baseline-pings", false)?;
    args.finish()?;
    if resumers == 0 || fill == 0 {
        return Err("--resumers and --fill must be at least 1".into());
    }
    if !(resume_rate > 0.0 && resume_rate <= 10_000.0) {
        return Err("--resume-rate must be above 0 and at most 10000 per resumer".into());
    }
    if !(8..=MAX_FILL).contains(&fill_size) {
        return Err(format!("--fill-size must be 8..={MAX_FILL} bytes"));
    }
    if probe_interval < Duration::from_millis(1) || duration.is_zero() || baseline.is_zero() {
        return Err(
            "--probe-interval must be at least 1ms, --duration and --baseline above zero".into(),
        );
    }

    let tag = std::process::id();
    let flood = format!("flood-{tag}");
    let done = format!("done-{tag}");
    let names = vec![
        "general".to_string(),
        format!("probe-{tag}"),
        done.clone(),
        flood.clone(),
    ];
    let mut engine = Engine::new(
        common.targets.clone(),
        names,
        common.concurrency,
        PROBE_SIZE,
    )
    .map_err(|err| format!("cannot start the event loop: {err}"))?;
    engine.track_ids = true;
    eprintln!(
        "resume-flood: connecting a probe, a keeper and {resumers} resumers to {}",
        common.url
    );
    engine.connect(FIRST_RESUMER + resumers, room_of, true);
    let connect_rate = engine.connect_rate();
    if !engine.is_open(PROBE) || !engine.is_open(KEEPER) {
        return Err(format!(
            "the probe or the keeper could not connect: {}",
            engine.errors.to_json()
        ));
    }
    let resumer_ids: Vec<usize> = (FIRST_RESUMER..FIRST_RESUMER + resumers)
        .filter(|&i| engine.is_open(i))
        .collect();
    let Some(&filler) = resumer_ids.first() else {
        return Err(format!(
            "no resumer could connect: {}",
            engine.errors.to_json()
        ));
    };
    if !engine.sync_rooms(SYNC_ATTEMPTS) {
        engine
            .errors
            .add("room sync: some members never saw their room's marker".into());
    }

    // The end marker, and the flood room's history.
    engine.send_text(KEEPER, b"d1");
    if !engine.wait_until(Duration::from_secs(5), |e| e.marks(KEEPER) >= 1) {
        engine
            .errors
            .add("setup: the keeper's marker never came back".into());
    }
    let (seen0, bytes0) = (engine.fill_seen, engine.fill_bytes);
    let mut text = Vec::with_capacity(fill_size);
    for n in 0..fill {
        text.clear();
        text.extend_from_slice(format!("f{n} ").as_bytes());
        text.resize(fill_size.max(text.len()), b'x');
        engine.send_text(filler, &text);
    }
    let want = (fill * resumer_ids.len()) as u64;
    let filled = engine.wait_until(Duration::from_secs(10) + drain, |e| {
        e.fill_seen - seen0 >= want
    });
    if !filled {
        engine.errors.add(format!(
            "setup: {} of {want} fill deliveries arrived",
            engine.fill_seen - seen0
        ));
    }
    let fill_frame_bytes = (engine.fill_seen > seen0)
        .then(|| (engine.fill_bytes - bytes0) as f64 / (engine.fill_seen - seen0) as f64);
    let newest = engine.last_id(filler).map(str::to_string);
    engine.track_ids = false;
    let request = match (resume_history, &newest) {
        (Some(k), _) => {
            json!({"type": "change_room", "payload": {"name": flood, "history": k}}).to_string()
        }
        (None, Some(id)) => {
            json!({"type": "change_room", "payload": {"name": flood, "since": id}}).to_string()
        }
        (None, None) => {
            return Err(format!(
                "the flood room's messages carry no id (a server without history?): {}",
                engine.errors.to_json()
            ));
        }
    };
    let asked = match resume_history {
        Some(k) => json!({ "history": k }),
        None => json!({ "since": newest }),
    };
    let setup_errors = engine.errors.total;
    eprintln!(
        "{} resumers in {flood} ({fill} messages of {} B each as sent to clients); \
         each resume: {request}",
        resumer_ids.len(),
        fill_frame_bytes.map_or("?".into(), |b| format!("{b:.0}"))
    );

    let probe_rate = 1.0 / probe_interval.as_secs_f64();
    engine.run_load(&[PROBE], probe_rate, warmup, 0);
    engine.settle(Duration::from_millis(100), drain);

    // No flood (with --baseline-pings, the resumers ping instead).
    eprintln!(
        "baseline: the probe for {baseline:?}{}",
        if baseline_pings {
            ", the resumers pinging at the flood's rate"
        } else {
            " alone"
        }
    );
    let before = Mark::now(&common, &engine);
    let quiet = engine.begin_step();
    if baseline_pings {
        let plan = Flood {
            probe: PROBE,
            probe_interval,
            resumers: &resumer_ids,
            resume_rate,
            request: b"",
            ping: true,
            duration: baseline,
        };
        engine.run_flood(&plan, quiet);
    } else {
        engine.run_load(&[PROBE], probe_rate, baseline, quiet);
    }
    engine.drain(quiet, drain);
    let after = Mark::now(&common, &engine);
    let base = Phase::between(&before, &after, &engine, quiet);

    // The flood, then the barrier.
    eprintln!(
        "flood: {} resumers x {resume_rate}/s for {duration:?}",
        resumer_ids.len()
    );
    let before = Mark::now(&common, &engine);
    let busy = engine.begin_step();
    let plan = Flood {
        probe: PROBE,
        probe_interval,
        resumers: &resumer_ids,
        resume_rate,
        request: request.as_bytes(),
        ping: false,
        duration,
    };
    let (resumes, lag) = engine.run_flood(&plan, busy);
    let sent_for = before.at.elapsed();
    let barrier = json!({"type": "change_room", "payload": {"name": done, "history": 1}})
        .to_string()
        .into_bytes();
    let mut barriers = 0u64;
    for &r in &resumer_ids {
        barriers += u64::from(engine.send_event(r, &barrier));
    }
    let barrier_ok = engine.wait_until(Duration::from_secs(10) + drain, |e| {
        resumer_ids
            .iter()
            .all(|&r| !e.is_open(r) || e.marks(r) >= 1)
    });
    if !barrier_ok {
        engine.errors.add(format!(
            "end of flood: {} of {} resumers never saw the keeper's marker",
            resumer_ids
                .iter()
                .filter(|&&r| engine.is_open(r) && engine.marks(r) == 0)
                .count(),
            resumer_ids.len()
        ));
    }
    engine.drain(busy, drain);
    let after = Mark::now(&common, &engine);
    let load = Phase::between(&before, &after, &engine, busy);
    let resumers_open = resumer_ids.iter().filter(|&&r| engine.is_open(r)).count();
    engine.close_all(Duration::from_secs(3));

    let json = result(Report {
        common: &common,
        engine: &engine,
        base: &base,
        load: &load,
        resumes,
        barriers,
        resume_lag: &lag,
        sent_for,
        fill_frame_bytes,
        asked,
        resume_rate,
        fill,
        baseline_pings,
        connect_rate,
        resumers_open,
        setup_errors,
    });
    table(&json);
    let ok = engine.errors.total == 0
        && base.delivered > 0
        && load.delivered > 0
        && barrier_ok
        && resumes > 0;
    if engine
        .errors
        .kinds
        .keys()
        .any(|kind| kind.contains("rate limit"))
    {
        eprintln!(
            "  the server's event budget stopped clients: start it with \
             --event-rate 1000000 --event-burst 1000000 for this scenario (see bench/README.md)"
        );
    }
    Ok(Outcome { json, ok })
}

fn room_of(i: usize) -> u32 {
    match i {
        PROBE => PROBE_ROOM,
        KEEPER => DONE_ROOM,
        _ => FLOOD_ROOM,
    }
}

/// The counters at the edge of a phase.
struct Mark {
    at: Instant,
    cpu: CpuNow,
    fill_seen: u64,
    fill_bytes: u64,
    gaps: u64,
}

impl Mark {
    fn now(common: &Common, engine: &Engine) -> Mark {
        Mark {
            at: Instant::now(),
            cpu: cpu_now(common),
            fill_seen: engine.fill_seen,
            fill_bytes: engine.fill_bytes,
            gaps: engine.gaps_seen,
        }
    }
}

/// What one phase cost and what the probe saw.
struct Phase {
    wall: f64,
    sent: u64,
    delivered: u64,
    latency: Value,
    /// The server processes, summed: CPU seconds.
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    /// Redis: CPU seconds (INFO with --redis, else /proc), bytes it wrote.
    redis_cpu: Option<f64>,
    redis_output: Option<u64>,
    replayed: u64,
    replayed_bytes: u64,
    gaps: u64,
}

impl Phase {
    fn between(before: &Mark, after: &Mark, engine: &Engine, step: usize) -> Phase {
        let stats = &engine.steps[step];
        let server_each: Vec<_> = before
            .cpu
            .servers
            .iter()
            .zip(&after.cpu.servers)
            .map(|(&b, &a)| cpu_spent(b, a))
            .collect();
        let info = before
            .cpu
            .redis_info
            .as_ref()
            .zip(after.cpu.redis_info.as_ref());
        let redis_cpu = info
            .and_then(|(b, a)| cpu_spent(b.cpu, a.cpu))
            .or_else(|| cpu_spent(before.cpu.redis, after.cpu.redis))
            .map(|(u, s)| u + s);
        Phase {
            wall: (after.at - before.at).as_secs_f64(),
            sent: stats.sent,
            delivered: stats.delivered,
            latency: latency_json(stats),
            server_cpu: sum_times(&server_each).map(|(u, s)| u + s),
            client_cpu: cpu_spent(before.cpu.client, after.cpu.client).map(|(u, s)| u + s),
            redis_cpu,
            redis_output: info.and_then(|(b, a)| a.output_since(b)),
            replayed: after.fill_seen - before.fill_seen,
            replayed_bytes: after.fill_bytes - before.fill_bytes,
            gaps: after.gaps - before.gaps,
        }
    }

    fn json(&self) -> Value {
        let util = |cpu: Option<f64>| cpu.map(|c| round(c / self.wall, 3));
        json!({
            "wall_s": round(self.wall, 3),
            "probe_sent": self.sent,
            "probe_received": self.delivered,
            "probe_rtt_ms": self.latency,
            "server_cpu_s": self.server_cpu.map(|c| round(c, 3)),
            "server_cpu_util": util(self.server_cpu),
            "client_cpu_util": util(self.client_cpu),
            "tool_limited": util(self.client_cpu).map(|u| u >= TOOL_LIMIT),
            "redis_cpu_s": self.redis_cpu.map(|c| round(c, 4)),
            "redis_cpu_util": util(self.redis_cpu),
            "redis_output_bytes": self.redis_output,
            "redis_output_bytes_per_s": self.redis_output.map(|b| round(b as f64 / self.wall, 1)),
        })
    }
}

/// Everything the JSON line is made of.
struct Report<'a> {
    common: &'a Common,
    engine: &'a Engine,
    base: &'a Phase,
    load: &'a Phase,
    resumes: u64,
    barriers: u64,
    resume_lag: &'a Histogram<u64>,
    sent_for: Duration,
    fill_frame_bytes: Option<f64>,
    asked: Value,
    resume_rate: f64,
    fill: usize,
    baseline_pings: bool,
    connect_rate: f64,
    resumers_open: usize,
    setup_errors: u64,
}

/// A phase's cost beyond the no-flood phase's rate, per resume: what the
/// flood itself cost (the probe's own traffic, pings and the like removed).
fn extra_per_resume(flood: Option<f64>, quiet: Option<f64>, r: &Report) -> Option<f64> {
    beyond_rate(flood?, r.load.wall, quiet?, r.base.wall, r.resumes)
}

/// `flood` spent over `flood_wall` seconds, less what `quiet_wall` seconds
/// of no flood spent at the rate they did, per each of `count`.
fn beyond_rate(
    flood: f64,
    flood_wall: f64,
    quiet: f64,
    quiet_wall: f64,
    count: u64,
) -> Option<f64> {
    (count > 0 && quiet_wall > 0.0)
        .then(|| (flood - quiet / quiet_wall * flood_wall) / count as f64)
}

fn result(r: Report) -> Value {
    let (base, load) = (r.base, r.load);
    let p = |phase: &Phase, q: &str| phase.latency[q].as_f64();
    let ratio = |q: &str| {
        p(load, q)
            .zip(p(base, q))
            .filter(|&(_, b)| b > 0.0)
            .map(|(l, b)| round(l / b, 2))
    };
    let per_resume = |value: f64| (r.resumes > 0).then(|| value / r.resumes as f64);
    let replayed_per_resume = per_resume(load.replayed_bytes as f64);
    let redis_per_resume = load
        .redis_output
        .and_then(|b| per_resume(b as f64))
        .map(|b| round(b, 1));
    let redis_net = extra_per_resume(
        load.redis_output.map(|b| b as f64),
        base.redis_output.map(|b| b as f64),
        &r,
    );
    let micros = |v: Option<f64>| v.map(|s| round(s * 1e6, 2));
    let p99_ratio = ratio("p99");
    let sent_s = r.sent_for.as_secs_f64();
    let mut json = json!({
        "scenario": "resume-flood",
        "label": r.common.label,
        "url": r.common.url,
        "resumers": r.resumers_open,
        "resume_rate_per_resumer": r.resume_rate,
        "resume_request": r.asked,
        "fill_messages": r.fill,
        "fill_frame_bytes": r.fill_frame_bytes.map(|b| round(b, 1)),
        "connect_per_s": round(r.connect_rate, 1),
        "no_flood": base.json(),
        "baseline_pings": r.baseline_pings,
        "flood": load.json(),
        "resumes": r.resumes,
        "resumes_per_s": (sent_s > 0.0).then(|| round(r.resumes as f64 / sent_s, 1)),
        "resume_send_lag_ms": {
            "p99": ms(r.resume_lag.value_at_quantile(0.99)),
            "max": ms(r.resume_lag.max()),
        },
        "end_of_flood_resumes": r.barriers,
        "replayed_messages": load.replayed,
        "replayed_bytes": load.replayed_bytes,
        "replayed_bytes_per_resume": replayed_per_resume.map(|b| round(b, 1)),
        "history_gaps": load.gaps,
        "redis_output_bytes_per_resume": redis_per_resume,
        "redis_output_bytes_per_resume_net": redis_net.map(|b| round(b, 1)),
        "redis_excess_bytes_per_resume": redis_net
            .zip(replayed_per_resume)
            .map(|(n, rep)| round(n - rep, 1)),
        "redis_cpu_us_per_resume": micros(extra_per_resume(load.redis_cpu, base.redis_cpu, &r)),
        // With --baseline-pings the baseline's pongs cost the server too (and
        // the tool): only Redis's figures stay the flood's own.
        "server_cpu_us_per_resume": micros(extra_per_resume(load.server_cpu, base.server_cpu, &r))
            .filter(|_| !r.baseline_pings),
        "probe_p50_ratio": ratio("p50"),
        "probe_p99_ratio": p99_ratio,
        "probe_p99_within_2x": p99_ratio.map(|x| x <= 2.0),
        "connections_lost": r.engine.lost,
        "setup_errors": r.setup_errors,
        "errors": r.engine.errors.total,
        "error_kinds": r.engine.errors.to_json(),
        "client_peak_rss_kib": procfs::peak_rss_kib(None),
        "sent_total": r.engine.chats_sent,
    });
    if r.common.targets.len() > 1 {
        json["servers"] = r.common.targets.len().into();
        json["opened_per_server"] = r.engine.opened_per_server.clone().into();
    }
    json
}

fn table(json: &Value) {
    let (base, load) = (&json["no_flood"], &json["flood"]);
    let rtt = |phase: &Value| {
        let l = &phase["probe_rtt_ms"];
        format!(
            "{} / {} / {}",
            fmt_num(&l["p50"]),
            fmt_num(&l["p99"]),
            fmt_num(&l["max"])
        )
    };
    let both = |key: &str| format!("{} -> {}", fmt_num(&base[key]), fmt_num(&load[key]));
    let mut rows = vec![
        server_row(json),
        (
            "flood",
            format!(
                "{} resumers x {}/s, each {}; room of {} messages ({} B each to a client)",
                fmt_num(&json["resumers"]),
                fmt_num(&json["resume_rate_per_resumer"]),
                json["resume_request"],
                fmt_num(&json["fill_messages"]),
                fmt_num(&json["fill_frame_bytes"])
            ),
        ),
        (
            "resumes (per s; tool late p99/max ms)",
            format!(
                "{} ({}; {} / {}), then {} to end the flood",
                fmt_num(&json["resumes"]),
                fmt_num(&json["resumes_per_s"]),
                fmt_num(&json["resume_send_lag_ms"]["p99"]),
                fmt_num(&json["resume_send_lag_ms"]["max"]),
                fmt_num(&json["end_of_flood_resumes"])
            ),
        ),
        (
            if json["baseline_pings"].as_bool() == Some(true) {
                "probe RTT ms p50 / p99 / max, no flood (pings)"
            } else {
                "probe RTT ms p50 / p99 / max, no flood"
            },
            rtt(base),
        ),
        ("probe RTT ms p50 / p99 / max, flood", rtt(load)),
        (
            "probe flood / no flood, p50 and p99",
            format!(
                "x{} and x{} (target p99 <= x2: {})",
                fmt_num(&json["probe_p50_ratio"]),
                fmt_num(&json["probe_p99_ratio"]),
                match json["probe_p99_within_2x"].as_bool() {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "-",
                }
            ),
        ),
        (
            "probe messages sent / back",
            format!(
                "{} / {} -> {} / {}",
                fmt_num(&base["probe_sent"]),
                fmt_num(&base["probe_received"]),
                fmt_num(&load["probe_sent"]),
                fmt_num(&load["probe_received"])
            ),
        ),
        (
            "replayed per resume (messages in all)",
            format!(
                "{} B ({}; history_gap {})",
                fmt_num(&json["replayed_bytes_per_resume"]),
                fmt_num(&json["replayed_messages"]),
                fmt_num(&json["history_gaps"])
            ),
        ),
    ];
    if !load["redis_output_bytes"].is_null() {
        rows.push((
            "Redis output per resume, all / less no-flood rate",
            format!(
                "{} B / {} B (over what was replayed: {} B)",
                fmt_num(&json["redis_output_bytes_per_resume"]),
                fmt_num(&json["redis_output_bytes_per_resume_net"]),
                fmt_num(&json["redis_excess_bytes_per_resume"])
            ),
        ));
        rows.push(("Redis output bytes/s", both("redis_output_bytes_per_s")));
    }
    if !load["redis_cpu_s"].is_null() {
        rows.push((
            "Redis CPU, of one core (us per resume)",
            format!(
                "{} ({})",
                both("redis_cpu_util"),
                fmt_num(&json["redis_cpu_us_per_resume"])
            ),
        ));
    }
    rows.push((
        "server CPU, of one core (us per resume)",
        format!(
            "{} ({})",
            both("server_cpu_util"),
            fmt_num(&json["server_cpu_us_per_resume"])
        ),
    ));
    rows.push((
        "load tool CPU, of one core",
        format!(
            "{}{}",
            both("client_cpu_util"),
            if load["tool_limited"].as_bool() == Some(true) {
                "  (the load tool may be the limit)"
            } else {
                ""
            }
        ),
    ));
    rows.push(("connections lost", fmt_num(&json["connections_lost"])));
    rows.push((
        "errors",
        format!("{} {}", fmt_num(&json["errors"]), json["error_kinds"]),
    ));
    print_table("resume-flood", &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flood_pays_only_for_what_the_quiet_phase_did_not() {
        // 1,000 B/s with no flood; 2 s of flood wrote 52,000 B in 100 resumes.
        assert_eq!(beyond_rate(52_000.0, 2.0, 10_000.0, 10.0, 100), Some(500.0));
        assert_eq!(beyond_rate(52_000.0, 2.0, 10_000.0, 10.0, 0), None);
        assert_eq!(beyond_rate(52_000.0, 2.0, 10_000.0, 0.0, 100), None);
    }

    #[test]
    fn connections_have_their_rooms() {
        assert_eq!(room_of(PROBE), PROBE_ROOM);
        assert_eq!(room_of(KEEPER), DONE_ROOM);
        assert_eq!(room_of(FIRST_RESUMER), FLOOD_ROOM);
        assert_eq!(room_of(FIRST_RESUMER + 49), FLOOD_ROOM);
    }
}
