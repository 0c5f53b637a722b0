//! The fan-out scenarios and idle (reconnect and resume-flood have modules
//! of their own). Each returns one JSON object (printed as one line on
//! stdout) and prints a human table on stderr.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::apipost;
use crate::args::Args;
use crate::engine::{Engine, Step, Target};
use crate::presence::Kind;
use crate::procfs;
use crate::redisinfo::{Reading, RedisInfo};
use crate::servermetrics;
use crate::stream;

/// Bytes of a `send_message` event around the message text and user name.
const ENVELOPE: usize = r#"{"type":"send_message","payload":{"message":"","from":""}}"#.len();
/// The server's message limit (the whole frame payload).
const MAX_MESSAGE: usize = 512;
/// Room-membership check rounds before giving up.
pub(crate) const SYNC_ATTEMPTS: u32 = 5;

pub struct Outcome {
    pub json: Value,
    pub ok: bool,
}

/// Flags every scenario takes.
pub(crate) struct Common {
    /// Every `--url`, space-separated (one URL: as given).
    pub(crate) url: String,
    urls: Vec<String>,
    pub(crate) label: String,
    /// One per `--url`; connections are spread round-robin over them.
    pub(crate) targets: Vec<Target>,
    /// Every `--pid`: the server processes whose CPU (and RSS) is summed.
    pub(crate) pids: Vec<u32>,
    /// `--redis-pid`: Redis's process, for its CPU and core.
    pub(crate) redis_pid: Option<u32>,
    /// `--redis`: the Redis to ask for its command counts and CPU.
    pub(crate) redis: Option<RedisInfo>,
    pub(crate) concurrency: usize,
}

impl Common {
    fn user(&self) -> &str {
        &self.targets[0].user
    }

    /// Every process of the server side: the servers, then Redis.
    fn server_side_pids(&self) -> Vec<u32> {
        self.pids.iter().copied().chain(self.redis_pid).collect()
    }

    /// More than one process serves the chat: the servers' CPU share is
    /// judged together with Redis's, over the cores they share.
    fn several_processes(&self) -> bool {
        self.server_side_pids().len() > 1
    }
}

pub(crate) fn common(args: &mut Args) -> Result<Common, String> {
    let mut urls = args.all("url");
    if urls.is_empty() {
        urls.push("http://127.0.0.1:8080".to_string());
    }
    let user = args.string("user", "percy");
    let password = args.string("password", "123");
    let label = args.string("label", "");
    let pids = args.all_of::<u32>("pid")?;
    let redis_pid = args.opt::<u32>("redis-pid")?;
    let redis = args.opt::<String>("redis")?;
    let concurrency = args.get("concurrency", 64usize)?;
    let ca = args
        .opt::<String>("ca")?
        .map(|path| stream::client_config(&path))
        .transpose()?;
    let targets = urls
        .iter()
        .map(|url| Target::from_url(url, &user, &password, ca.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    if targets.len() > 1000 {
        return Err("at most 1000 --url".into());
    }
    for (flag, pid) in pids
        .iter()
        .map(|&p| ("--pid", p))
        .chain(redis_pid.map(|p| ("--redis-pid", p)))
    {
        procfs::cpu_seconds(Some(pid)).ok_or_else(|| format!("{flag} {pid}: no such process"))?;
    }
    let redis = redis.as_deref().map(RedisInfo::parse).transpose()?;
    if let Some(redis) = &redis {
        redis.read()?;
    }
    Ok(Common {
        url: urls.join(" "),
        urls,
        label,
        targets,
        pids,
        redis_pid,
        redis,
        concurrency,
    })
}

/// Shape of the fan-out shared by `fanout` and `ramp`.
struct Fanout {
    rooms: usize,
    members: usize,
    senders: usize,
    size: usize,
    /// Messages per sender per write.
    batch: usize,
    /// Distinct users the members log in as (`--user-count`; 0: all as `--user`).
    users: usize,
    /// Every member watches its room's presence.
    presence: bool,
}

fn fanout_shape(args: &mut Args, user: &str) -> Result<Fanout, String> {
    let shape = Fanout {
        rooms: args.get("rooms", 10usize)?,
        members: args.get("members", 100usize)?,
        senders: args.get("senders", 5usize)?,
        size: args.get("size", 64usize)?,
        batch: args.get("batch", 1usize)?,
        users: args.get("user-count", 0usize)?,
        presence: args.switch("presence", false)?,
    };
    if shape.rooms == 0 || shape.members == 0 || shape.senders == 0 {
        return Err("--rooms, --members and --senders must be at least 1".into());
    }
    if shape.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if shape.senders > shape.members {
        return Err("--senders cannot exceed --members".into());
    }
    let largest = MAX_MESSAGE - ENVELOPE - user.len();
    if shape.size < 32 || shape.size > largest {
        return Err(format!(
            "--size must be 32..={largest} bytes (the event must fit in {MAX_MESSAGE})"
        ));
    }
    Ok(shape)
}

/// Connects `rooms x members` clients, puts member `i` in room `1 + i / members`,
/// checks every member is in its room, and picks the senders.
fn setup_fanout(common: &Common, shape: &Fanout) -> Result<(Engine, Vec<usize>), String> {
    let mut names = vec!["general".to_string()];
    names.extend((1..=shape.rooms).map(|r| format!("room-{r}")));
    let mut engine = Engine::new(
        common.targets.clone(),
        names,
        common.concurrency,
        shape.size,
    )
    .map_err(|err| format!("cannot start the event loop: {err}"))?;
    engine.batch = shape.batch;
    engine.set_users(shape.users);
    engine.presence = shape.presence;
    // Room r's members are connections (r-1)M .. rM, user i mod U each.
    let in_room = shape.members.min(engine.users().len());
    for room in 1..=shape.rooms as u32 {
        engine.expect_presence(room, in_room);
    }
    let total = shape.rooms * shape.members;
    eprintln!(
        "connecting {total} clients ({} rooms x {} members) to {}{}",
        shape.rooms,
        shape.members,
        common.url,
        if common.targets.len() > 1 {
            " (round-robin: every room has members on every server)"
        } else {
            ""
        }
    );
    let members = shape.members;
    engine.connect(total, |i| 1 + (i / members) as u32, true);
    if engine.open_now == 0 {
        return Err(format!(
            "no connection could be opened: {}",
            engine.errors.to_json()
        ));
    }
    if !engine.sync_rooms(SYNC_ATTEMPTS) {
        engine
            .errors
            .add("room sync: some members never saw their room's marker".into());
    }
    let per_room: Vec<Vec<usize>> = (1..=shape.rooms as u32)
        .map(|room| engine.room_members(room))
        .collect();
    let senders = interleave_senders(&per_room, shape.senders);
    Ok((engine, senders))
}

/// The JSON line of a fanout-shaped scenario: what was asked, what the
/// connections and the load tool went through, and the scenario's own `fields`.
fn fanout_result(
    scenario: &str,
    common: &Common,
    shape: &Fanout,
    engine: &Engine,
    connect_rate: f64,
    fields: Value,
) -> Value {
    let mut json = json!({
        "scenario": scenario,
        "label": common.label,
        "url": common.url,
        "rooms": shape.rooms,
        "members": shape.members,
        "senders_per_room": shape.senders,
        "message_bytes": shape.size,
        "client_batch": shape.batch,
        "connections": shape.rooms * shape.members,
        "opened": engine.opened,
        "connect_per_s": round(connect_rate, 1),
        "connections_lost": engine.lost,
        "errors": engine.errors.total,
        "error_kinds": engine.errors.to_json(),
        "client_peak_rss_kib": procfs::peak_rss_kib(None),
        "sent_total": engine.chats_sent,
        "user_count": shape.users,
        "presence": shape.presence,
        "presence_frames": engine.presence_tally.total(),
    });
    if let (Some(all), Value::Object(own)) = (json.as_object_mut(), fields) {
        all.extend(own);
    }
    several_servers(&mut json, common, engine);
    json
}

/// `--post-via member|api` (and `--api-key FILE` with `api`): the key
/// when measured messages go through the server API, none when members send
/// them.
fn post_via(args: &mut Args) -> Result<Option<String>, String> {
    let via = args.string("post-via", "member");
    let key_file = args.opt::<String>("api-key")?;
    match (via.as_str(), key_file) {
        ("member", None) => Ok(None),
        ("member", Some(_)) => Err("--api-key goes with --post-via api".into()),
        ("api", Some(path)) => apipost::read_key(&path).map(Some),
        ("api", None) => Err("--post-via api needs --api-key FILE (the server's key)".into()),
        (other, _) => Err(format!("--post-via {other}: expected member or api")),
    }
}

/// Presence is opt-in: a run that did not ask for it must see none (an
/// error if it did: the tutorial's page would get an event it never asked for).
fn unasked_presence(engine: &mut Engine, asked: bool) {
    let frames = engine.presence_tally.total();
    if !asked && frames > 0 {
        engine
            .errors
            .add(format!("{frames} presence frames without asking"));
    }
}

/// With more than one server: the URLs and how many connections each opened.
fn several_servers(json: &mut Value, common: &Common, engine: &Engine) {
    if common.targets.len() > 1 {
        json["servers"] = common.targets.len().into();
        json["urls"] = common.urls.clone().into();
        json["opened_per_server"] = engine.opened_per_server.clone().into();
    }
}

/// The first `senders` members of each room, ordered round-robin over the
/// rooms: `run_load` staggers send times in this order, so each room's
/// messages come evenly spread instead of in one burst per interval.
fn interleave_senders(per_room: &[Vec<usize>], senders: usize) -> Vec<usize> {
    (0..senders)
        .flat_map(|k| {
            per_room
                .iter()
                .filter_map(move |members| members.get(k).copied())
        })
        .collect()
}

pub(crate) fn ms(micros: u64) -> f64 {
    (micros as f64 / 1000.0 * 1000.0).round() / 1000.0
}

pub(crate) fn latency_json(step: &Step) -> Value {
    let h = &step.latency;
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// Deliveries of a step later than `late_us` (to the histogram's
/// resolution, duplicates included).
fn late_count(step: &Step, late_us: u64) -> u64 {
    let h = &step.latency;
    if h.is_empty() || h.max() <= late_us {
        return 0;
    }
    h.len() - h.count_between(0, late_us)
}

fn ratio(delivered: u64, expected: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        delivered as f64 / expected as f64
    }
}

pub(crate) fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// CPU seconds (user, system) of a process, if known.
pub(crate) type Times = Option<(f64, f64)>;

/// CPU times at one moment: each server, Redis (its process with
/// `--redis-pid`; its commands and own CPU figures with `--redis`), and this
/// process.
pub(crate) struct CpuNow {
    pub(crate) servers: Vec<Times>,
    pub(crate) redis: Times,
    pub(crate) redis_info: Option<Reading>,
    pub(crate) client: Times,
}

pub(crate) fn cpu_now(common: &Common) -> CpuNow {
    let redis_info = common.redis.as_ref().and_then(|redis| match redis.read() {
        Ok(reading) => Some(reading),
        Err(err) => {
            eprintln!("chat-bench: {err}");
            None
        }
    });
    CpuNow {
        servers: common
            .pids
            .iter()
            .map(|&p| procfs::cpu_times(Some(p)))
            .collect(),
        redis: common.redis_pid.and_then(|p| procfs::cpu_times(Some(p))),
        redis_info,
        client: procfs::cpu_times(None),
    }
}

/// Sum of (user, system) over every server; none if a reading is missing.
pub(crate) fn sum_times(each: &[Times]) -> Times {
    if each.is_empty() {
        return None;
    }
    each.iter()
        .try_fold((0.0, 0.0), |(u, s), t| t.map(|(tu, ts)| (u + tu, s + ts)))
}

/// The cores of the server side (every server and Redis, if known) and of
/// this process, as busy and total ticks: how busy a core was with anything,
/// the measured processes or not.
struct Cores {
    server: Option<Vec<usize>>,
    client: Option<Vec<usize>>,
}

type Ticks = Option<(u64, u64)>;

impl Cores {
    fn of(pids: &[u32]) -> Cores {
        let mut server: Option<Vec<usize>> = None;
        for &pid in pids {
            if let Some(cpus) = procfs::allowed_cpus(Some(pid)) {
                let all = server.get_or_insert_with(Vec::new);
                all.extend(cpus);
                all.sort_unstable();
                all.dedup();
            }
        }
        Cores {
            server,
            client: procfs::allowed_cpus(None),
        }
    }

    fn now(&self) -> (Ticks, Ticks) {
        let busy = |cpus: &Option<Vec<usize>>| cpus.as_deref().and_then(procfs::cpus_busy);
        (busy(&self.server), busy(&self.client))
    }
}

/// Busy share of some cores between two readings.
fn busy_share(before: Ticks, after: Ticks) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = before.zip(after)?;
    (t1 > t0).then(|| b1.saturating_sub(b0) as f64 / (t1 - t0) as f64)
}

/// CPU (user, system) seconds spent between two readings.
pub(crate) fn cpu_spent(before: Times, after: Times) -> Option<(f64, f64)> {
    before
        .zip(after)
        .map(|((u0, s0), (u1, s1))| ((u1 - u0).max(0.0), (s1 - s0).max(0.0)))
}

/// Share of its core above which the load tool, not the server, may be the
/// limit of a step.
pub(crate) const TOOL_LIMIT: f64 = 0.9;

/// One measured step of traffic: runs it, drains it, and summarises it.
fn measure(
    engine: &mut Engine,
    common: &Common,
    senders: &[usize],
    rate: f64,
    duration: Duration,
    drain: Duration,
) -> Value {
    let lost_before = engine.lost;
    let errors_before = engine.errors.total;
    let api_before = engine.api().map(|api| api.tally);
    let side = common.server_side_pids();
    let cores = Cores::of(&side);
    let before = cpu_now(common);
    let (server_core0, client_core0) = cores.now();
    let started = Instant::now();
    let step = engine.begin_step();
    engine.run_load(senders, rate, duration, step);
    let drained = engine.drain(step, drain);
    let wall = started.elapsed().as_secs_f64();
    let after = cpu_now(common);
    let (server_core1, client_core1) = cores.now();
    let stats = &engine.steps[step];
    let secs = duration.as_secs_f64();
    let late_ms = engine.late_us as f64 / 1000.0;
    let server_each: Vec<Times> = before
        .servers
        .iter()
        .zip(&after.servers)
        .map(|(&b, &a)| cpu_spent(b, a))
        .collect();
    let server = sum_times(&server_each);
    let client = cpu_spent(before.client, after.client);
    let per_delivery = |seconds: f64| {
        (stats.delivered > 0).then(|| round(seconds * 1e6 / stats.delivered as f64, 4))
    };
    let server_total = server.map(|(u, s)| u + s);
    let client_util = client.map(|(u, s)| (u + s) / wall);
    let server_util = server_total.map(|t| t / wall);
    let mut json = json!({
        "rate_per_sender": round(rate, 3),
        "senders": senders.len(),
        "duration_s": round(secs, 3),
        "wall_s": round(wall, 3),
        "sent": stats.sent,
        "offered_msgs_per_s": round(stats.sent as f64 / secs, 1),
        "expected": stats.expected,
        "offered_deliveries_per_s": round(stats.expected as f64 / secs, 1),
        "delivered": stats.delivered,
        "delivered_per_s": round(stats.delivered as f64 / secs, 1),
        "delivery_ratio": round(ratio(stats.delivered, stats.expected), 6),
        "drained": drained,
        "latency_ms": latency_json(stats),
        "late_after_ms": late_ms,
        "deliveries_late": late_count(stats, engine.late_us),
        "send_lag_ms": {
            "p99": ms(stats.lag.value_at_quantile(0.99)),
            "max": ms(stats.lag.max()),
        },
        "connections_lost": engine.lost - lost_before,
        "errors": engine.errors.total - errors_before,
        "server_cpu_s": server_total.map(|s| round(s, 3)),
        "server_user_s": server.map(|(u, _)| round(u, 3)),
        "server_system_s": server.map(|(_, s)| round(s, 3)),
        "server_cpu_us_per_delivery": server_total.and_then(per_delivery),
        "server_user_us_per_delivery": server.and_then(|(u, _)| per_delivery(u)),
        "server_system_us_per_delivery": server.and_then(|(_, s)| per_delivery(s)),
        "server_cpu_util": server_util.map(|u| round(u, 3)),
        "client_cpu_util": client_util.map(|u| round(u, 3)),
        "client_user_util": client.map(|(u, _)| round(u / wall, 3)),
        "client_system_util": client.map(|(_, s)| round(s / wall, 3)),
        "tool_limited": client_util.map(|u| u >= TOOL_LIMIT),
        "server_core_busy": busy_share(server_core0, server_core1).map(|u| round(u, 3)),
        "client_core_busy": busy_share(client_core0, client_core1).map(|u| round(u, 3)),
    });
    if let Some(ledger) = &stats.ledger {
        json["each"] = ledger.tally().to_json(late_ms);
    }
    if let Some((api, before)) = engine.api().zip(api_before) {
        let mut posts = api.tally.minus(&before).to_json();
        let answers = &api.answer_time;
        posts["answer_ms"] = (!answers.is_empty())
            .then(|| {
                json!({
                    "p50": ms(answers.value_at_quantile(0.50)),
                    "p99": ms(answers.value_at_quantile(0.99)),
                    "max": ms(answers.max()),
                })
            })
            .into();
        json["api"] = posts;
    }
    if server_each.len() > 1 {
        json["server_cpu_s_each"] = server_each
            .iter()
            .map(|t| t.map(|(u, s)| round(u + s, 3)))
            .collect::<Vec<_>>()
            .into();
    }
    // Redis: its CPU as it reports it (getrusage, to the microsecond) with
    // --redis, else from /proc with --redis-pid (to the clock tick).
    let info = before.redis_info.as_ref().zip(after.redis_info.as_ref());
    let (redis, source) = match info.and_then(|(b, a)| cpu_spent(b.cpu, a.cpu)) {
        Some(times) => (Some(times), "INFO cpu"),
        None => (cpu_spent(before.redis, after.redis), "/proc"),
    };
    if let Some((user, system)) = redis {
        let total = user + system;
        json["redis_cpu_s"] = round(total, 4).into();
        json["redis_user_s"] = round(user, 4).into();
        json["redis_system_s"] = round(system, 4).into();
        json["redis_cpu_from"] = source.into();
        json["redis_cpu_util"] = round(total / wall, 3).into();
        json["redis_cpu_us_per_message"] = (stats.sent > 0)
            .then(|| round(total * 1e6 / stats.sent as f64, 3))
            .into();
        json["redis_cpu_us_per_delivery"] = per_delivery(total).into();
    }
    if let Some((b, a)) = info {
        let publish = a.calls_since(b, "publish");
        json["redis_calls"] = json!({
            "evalsha": a.calls_since(b, "evalsha"),
            "eval": a.calls_since(b, "eval"),
            "publish": publish,
        });
        json["publishes_per_message"] = (stats.sent > 0)
            .then(|| round(publish as f64 / stats.sent as f64, 4))
            .into();
        // Time Redis spent running the publish script, as commandstats has it
        // (wall time, the script's PUBLISH included): the rest of its CPU is
        // I/O and events.
        let scripts = a.calls_since(b, "evalsha") + a.calls_since(b, "eval");
        let usec = a.usec_since(b, "evalsha") + a.usec_since(b, "eval");
        json["redis_script_us_per_call"] = (scripts > 0)
            .then(|| round(usec as f64 / scripts as f64, 3))
            .into();
    }
    if common.several_processes() {
        // Every server and Redis together, as a share of the cores they may
        // run on: what says whether the server side was saturated.
        let cores_n = cores.server.as_ref().map_or(0, Vec::len);
        let side_cpu = server_total.zip(redis.map(|(u, s)| u + s).or(Some(0.0)));
        json["server_side_util"] = side_cpu
            .filter(|_| cores_n > 0)
            .map(|(s, r)| round((s + r) / wall / cores_n as f64, 3))
            .into();
        json["server_side_cores"] = cores_n.into();
    }
    json
}

pub(crate) fn fmt_num(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if n.is_u64() || n.is_i64() || f.abs() >= 1000.0 {
                format!("{:.0}", f)
            } else {
                format!("{f}")
            }
        }
        other => other.to_string(),
    }
}

/// The first row of a report: which server (its label and URL), read
/// back from the report's JSON.
pub(crate) fn server_row(json: &Value) -> (&'static str, String) {
    let field = |key: &str| json[key].as_str().unwrap_or("").to_string();
    ("server", format!("{} {}", field("label"), field("url")))
}

pub(crate) fn print_table(title: &str, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    eprintln!("\n{title}");
    for (key, value) in rows {
        eprintln!("  {key:<width$}  {value}");
    }
}

fn step_rows(step: &Value) -> Vec<(&'static str, String)> {
    let lat = &step["latency_ms"];
    let mut rows = vec![
        ("offered messages/s", fmt_num(&step["offered_msgs_per_s"])),
        (
            "offered deliveries/s",
            fmt_num(&step["offered_deliveries_per_s"]),
        ),
        ("delivered/s", fmt_num(&step["delivered_per_s"])),
        ("delivery ratio", fmt_num(&step["delivery_ratio"])),
        (
            "latency ms p50/p90/p99/p99.9/max",
            format!(
                "{} / {} / {} / {} / {}",
                fmt_num(&lat["p50"]),
                fmt_num(&lat["p90"]),
                fmt_num(&lat["p99"]),
                fmt_num(&lat["p999"]),
                fmt_num(&lat["max"])
            ),
        ),
        (
            "send lag ms p99/max",
            format!(
                "{} / {}",
                fmt_num(&step["send_lag_ms"]["p99"]),
                fmt_num(&step["send_lag_ms"]["max"])
            ),
        ),
        (
            "server CPU s (user + system)",
            format!(
                "{} ({} + {})",
                fmt_num(&step["server_cpu_s"]),
                fmt_num(&step["server_user_s"]),
                fmt_num(&step["server_system_s"])
            ),
        ),
        (
            "server CPU us/delivery (user + system)",
            format!(
                "{} ({} + {})",
                fmt_num(&step["server_cpu_us_per_delivery"]),
                fmt_num(&step["server_user_us_per_delivery"]),
                fmt_num(&step["server_system_us_per_delivery"])
            ),
        ),
        (
            "server CPU (of one core; its core busy)",
            format!(
                "{} ({})",
                fmt_num(&step["server_cpu_util"]),
                fmt_num(&step["server_core_busy"])
            ),
        ),
    ];
    if !step["deliveries_late"].is_null() {
        rows.push((
            "deliveries late (after ms, histogram)",
            format!(
                "{} ({})",
                fmt_num(&step["deliveries_late"]),
                fmt_num(&step["late_after_ms"])
            ),
        ));
    }
    let each = &step["each"];
    if !each.is_null() {
        rows.push((
            "never delivered (messages: to some / to all)",
            format!(
                "{} deliveries ({} / {} of {} messages)",
                fmt_num(&each["deliveries_never"]),
                fmt_num(&each["messages_never_delivered_to_some"]),
                fmt_num(&each["messages_never_delivered_to_any"]),
                fmt_num(&each["messages"])
            ),
        ));
        rows.push((
            "late (messages), duplicates, strays",
            format!(
                "{} ({}), {}, {}",
                fmt_num(&each["deliveries_late"]),
                fmt_num(&each["messages_late"]),
                fmt_num(&each["duplicates"]),
                fmt_num(&each["strays"])
            ),
        ));
    }
    if let Some(each) = step["server_cpu_s_each"].as_array() {
        let each: Vec<String> = each.iter().map(fmt_num).collect();
        rows.push(("server CPU s, each process", each.join(" + ")));
    }
    if !step["redis_cpu_s"].is_null() {
        rows.push((
            "Redis CPU s (us/message; of one core)",
            format!(
                "{} ({}; {}) from {}",
                fmt_num(&step["redis_cpu_s"]),
                fmt_num(&step["redis_cpu_us_per_message"]),
                fmt_num(&step["redis_cpu_util"]),
                step["redis_cpu_from"].as_str().unwrap_or("?")
            ),
        ));
    }
    if !step["redis_calls"].is_null() {
        let calls = &step["redis_calls"];
        rows.push((
            "Redis PUBLISH per message (EVALSHA, EVAL, PUBLISH calls)",
            format!(
                "{} ({}, {}, {} for {} messages)",
                fmt_num(&step["publishes_per_message"]),
                fmt_num(&calls["evalsha"]),
                fmt_num(&calls["eval"]),
                fmt_num(&calls["publish"]),
                fmt_num(&step["sent"])
            ),
        ));
    }
    if !step["server_side_util"].is_null() {
        rows.push((
            "server side (servers + Redis) CPU, of its cores",
            format!(
                "{} of {}",
                fmt_num(&step["server_side_util"]),
                fmt_num(&step["server_side_cores"])
            ),
        ));
    }
    rows.extend([(
        "load tool CPU (of one core)",
        format!(
            "{}{}",
            fmt_num(&step["client_cpu_util"]),
            if step["tool_limited"].as_bool() == Some(true) {
                "  (the load tool may be the limit)"
            } else {
                ""
            }
        ),
    )]);
    rows
}

pub fn fanout(args: &mut Args) -> Result<Outcome, String> {
    let common = common(args)?;
    let shape = fanout_shape(args, common.user())?;
    let rate: f64 = args.get("rate", 20.0)?;
    let duration = args.duration("duration", "10s")?;
    let warmup = args.duration("warmup", "2s")?;
    let drain = args.duration("drain", "5s")?;
    let metrics_urls = args.all("metrics");
    let late = args.duration("late", "1s")?;
    let each: bool = args.get("each", false)?;
    let api_key = post_via(args)?;
    args.finish()?;
    if rate <= 0.0 || duration.is_zero() {
        return Err("--rate and --duration must be above zero".into());
    }

    let (mut engine, senders) = setup_fanout(&common, &shape)?;
    let via = if api_key.is_some() { "api" } else { "member" };
    if let Some(key) = api_key {
        eprintln!("posting through the server API, a connection per sender slot");
        engine.post_via_api(key);
    }
    engine.late_us = late.as_micros().try_into().unwrap_or(u64::MAX);
    engine.each = each;
    let rss_connected = rss_sum(&common.pids);
    let connect_rate = engine.connect_rate();
    eprintln!(
        "{} open ({:.0}/s); warming up for {:?}",
        engine.open_now, connect_rate, warmup
    );
    engine.run_load(&senders, rate, warmup, 0);
    engine.settle(Duration::from_millis(200), drain);
    let presence_setup = engine.presence_tally.clone();
    let rosters_complete = engine.presence_incomplete() == 0;
    eprintln!("measuring for {duration:?}");
    let step = measure(&mut engine, &common, &senders, rate, duration, drain);
    let presence_step = engine.presence_tally.minus(&presence_setup);
    // Memory at the end of the traffic, every member still in its room.
    let rss_end = rss_sum(&common.pids);
    let server_metrics = (!metrics_urls.is_empty()).then(|| servermetrics::read_all(&metrics_urls));
    engine.close_all(Duration::from_secs(3));
    unasked_presence(&mut engine, shape.presence);

    let delivered = step["delivered"].as_u64().unwrap_or(0);
    let mut json = fanout_result(
        "fanout",
        &common,
        &shape,
        &engine,
        connect_rate,
        json!({
            "step": step,
            "server_rss_connected_kib": rss_connected,
            "server_rss_end_kib": rss_end,
            // Presence frames apart from chat: until the measured step
            // (the joins of setting up) and during it.
            "presence_setup": presence_setup.to_json(),
            "presence_step": presence_step.to_json(),
            "presence_rosters_complete": shape.presence.then_some(rosters_complete),
            "post_via": via,
            "api_connections": engine.api().map(|api| api.connections()),
            "api_posts": engine.api().map(|api| api.tally.to_json()),
        }),
    );
    match server_metrics {
        Some(Ok(samples)) => {
            let sample = |name: &str| samples.get(name).copied();
            json["history_bytes_per_room"] = sample("chat_history_bytes")
                .zip(sample("chat_rooms"))
                .filter(|&(_, rooms)| rooms > 0.0)
                .map(|(bytes, rooms)| round(bytes / rooms, 1))
                .into();
            json["server_metrics"] = json!(samples);
        }
        Some(Err(err)) => json["server_metrics_error"] = err.into(),
        None => {}
    }
    let mut rows = vec![
        ("server", format!("{} {}", common.label, common.url)),
        (
            "shape",
            format!(
                "{} rooms x {} members, {} senders/room at {}/s, {} B, posted by {}",
                shape.rooms,
                shape.members,
                shape.senders,
                rate,
                shape.size,
                if via == "api" {
                    "the server API"
                } else {
                    "members"
                }
            ),
        ),
    ];
    rows.extend(step_rows(&json["step"]));
    let api = &json["step"]["api"];
    if !api.is_null() {
        rows.push((
            "API posts: 202 / other / unanswered of posted (answer ms p50/p99)",
            format!(
                "{} / {} / {} of {} ({} / {})",
                fmt_num(&api["answered_202"]),
                fmt_num(&api["answered_other"]),
                fmt_num(&api["unanswered"]),
                fmt_num(&api["posted"]),
                fmt_num(&api["answer_ms"]["p50"]),
                fmt_num(&api["answer_ms"]["p99"])
            ),
        ));
    }
    rows.push((
        "server RSS KiB connected / end of traffic",
        format!(
            "{} / {}",
            fmt_num(&json["server_rss_connected_kib"]),
            fmt_num(&json["server_rss_end_kib"])
        ),
    ));
    if let Some(samples) = json["server_metrics"].as_object() {
        rows.push((
            "server: history bytes / rooms (per room)",
            format!(
                "{} / {} ({})",
                fmt_num(samples.get("chat_history_bytes").unwrap_or(&Value::Null)),
                fmt_num(samples.get("chat_rooms").unwrap_or(&Value::Null)),
                fmt_num(&json["history_bytes_per_room"])
            ),
        ));
    }
    if let Some(err) = json["server_metrics_error"].as_str() {
        rows.push(("server metrics", err.to_string()));
    }
    rows.push((
        "presence frames: setting up / measured (joins; names joined)",
        format!(
            "{} / {} ({}; {}){}",
            presence_setup.total(),
            presence_step.total(),
            presence_step.of(Kind::Join),
            presence_step.names_joined,
            match (shape.presence, rosters_complete) {
                (false, _) => "  (not asked for)",
                (true, true) => "  (every roster complete)",
                (true, false) => "  (some roster incomplete)",
            }
        ),
    ));
    rows.push(("connections lost", engine.lost.to_string()));
    rows.push((
        "errors",
        format!("{} {}", engine.errors.total, engine.errors.to_json()),
    ));
    print_table("fanout", &rows);
    let ok = engine.errors.total == 0 && delivered > 0;
    Ok(Outcome { json, ok })
}

pub fn ramp(args: &mut Args) -> Result<Outcome, String> {
    let common = common(args)?;
    let shape = fanout_shape(args, common.user())?;
    let start_rate: f64 = args.get("start-rate", 10.0)?;
    let factor: f64 = args.get("factor", 1.5)?;
    let step_time = args.duration("step", "5s")?;
    let bound = args.duration("p99", "50ms")?;
    let min_ratio: f64 = args.get("min-delivery", 0.999)?;
    let max_steps: usize = args.get("max-steps", 20usize)?;
    let refine: usize = args.get("refine", 2usize)?;
    let retry_failed: bool = args.get("retry-failed", true)?;
    let warmup = args.duration("warmup", "2s")?;
    let drain = args.duration("drain", "3s")?;
    args.finish()?;
    if start_rate <= 0.0 || factor <= 1.0 || step_time.is_zero() {
        return Err("--start-rate and --step must be above zero and --factor above 1".into());
    }
    let bound_ms = bound.as_secs_f64() * 1000.0;

    let (mut engine, senders) = setup_fanout(&common, &shape)?;
    let connect_rate = engine.connect_rate();
    let setup_errors = engine.errors.total;
    eprintln!(
        "{} open ({:.0}/s); warming up",
        engine.open_now, connect_rate
    );
    engine.run_load(&senders, start_rate, warmup, 0);
    engine.settle(Duration::from_millis(200), drain);

    let passes = |step: &Value| {
        let p99 = step["latency_ms"]["p99"].as_f64().unwrap_or(f64::INFINITY);
        p99 <= bound_ms
            && step["delivery_ratio"].as_f64().unwrap_or(0.0) >= min_ratio
            && step["connections_lost"].as_u64() == Some(0)
    };
    let mut steps: Vec<Value> = Vec::new();
    let run_step = |engine: &mut Engine, rate: f64, steps: &mut Vec<Value>| -> bool {
        let mut step = measure(engine, &common, &senders, rate, step_time, drain);
        let pass = passes(&step);
        step["pass"] = pass.into();
        eprintln!(
            "  rate {:>9.2}/sender: delivered {:>10}/s, ratio {:.5}, p99 {} ms, load tool CPU {} -> {}",
            rate,
            fmt_num(&step["delivered_per_s"]),
            step["delivery_ratio"].as_f64().unwrap_or(0.0),
            fmt_num(&step["latency_ms"]["p99"]),
            fmt_num(&step["client_cpu_util"]),
            if pass { "pass" } else { "FAIL" }
        );
        steps.push(step);
        engine.settle(Duration::from_millis(300), Duration::from_secs(10));
        pass
    };

    // A step that fails on the way up runs once more at the same rate: one
    // scheduling hiccup on this shared machine must not end the ramp. The
    // failed try stays in the steps, marked `retried`, and decides nothing.
    let confirmed_step = |engine: &mut Engine, rate: f64, steps: &mut Vec<Value>| -> bool {
        if run_step(engine, rate, steps) {
            return true;
        }
        if !retry_failed || engine.lost > 0 {
            return false;
        }
        let failed = steps.len() - 1;
        let pass = run_step(engine, rate, steps);
        if pass {
            steps[failed]["retried"] = true.into();
        }
        pass
    };
    let mut rate = start_rate;
    let mut last_pass: Option<f64> = None;
    let mut first_fail: Option<f64> = None;
    for _ in 0..max_steps {
        if confirmed_step(&mut engine, rate, &mut steps) {
            last_pass = Some(rate);
            rate *= factor;
        } else {
            first_fail = Some(rate);
            break;
        }
    }
    if let (Some(mut lo), Some(mut hi)) = (last_pass, first_fail) {
        for _ in 0..refine {
            if engine.lost > 0 {
                break; // members are gone; further steps would not be comparable
            }
            let mid = (lo * hi).sqrt();
            if confirmed_step(&mut engine, mid, &mut steps) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    engine.close_all(Duration::from_secs(3));
    unasked_presence(&mut engine, shape.presence);

    let best = steps
        .iter()
        .filter(|s| s["pass"].as_bool() == Some(true))
        .max_by(|a, b| {
            let a = a["delivered_per_s"].as_f64().unwrap_or(0.0);
            let b = b["delivered_per_s"].as_f64().unwrap_or(0.0);
            a.total_cmp(&b)
        })
        .cloned();
    let bound_by = bound_by(&steps);
    let tool_limited_steps = steps
        .iter()
        .filter(|s| s["tool_limited"].as_bool() == Some(true))
        .count();
    let delivered_any = steps
        .iter()
        .any(|s| s["delivered"].as_u64().unwrap_or(0) > 0);
    let json = fanout_result(
        "ramp",
        &common,
        &shape,
        &engine,
        connect_rate,
        json!({
            "p99_bound_ms": bound_ms,
            "min_delivery": min_ratio,
            "best_deliveries_per_s": best.as_ref().map(|b| b["delivered_per_s"].clone()),
            "bound_by": bound_by,
            "tool_limited_steps": tool_limited_steps,
            "best": best,
            "steps": steps,
        }),
    );

    eprintln!(
        "\nramp: {} rooms x {} members, {} senders/room, p99 bound {bound_ms} ms",
        shape.rooms, shape.members, shape.senders
    );
    eprintln!(
        "  {:>10} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>8} {:>6}",
        "rate/snd",
        "offered/s",
        "delivered/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu us/d",
        "server",
        "redis",
        "tool",
        "pass"
    );
    for step in json["steps"].as_array().into_iter().flatten() {
        let tool = fmt_num(&step["client_cpu_util"]);
        eprintln!(
            "  {:>10} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>8} {:>6}",
            fmt_num(&step["rate_per_sender"]),
            fmt_num(&step["offered_deliveries_per_s"]),
            fmt_num(&step["delivered_per_s"]),
            format!("{:.5}", step["delivery_ratio"].as_f64().unwrap_or(0.0)),
            fmt_num(&step["latency_ms"]["p50"]),
            fmt_num(&step["latency_ms"]["p99"]),
            fmt_num(&step["latency_ms"]["max"]),
            fmt_num(&step["server_cpu_us_per_delivery"]),
            fmt_num(&step["server_cpu_util"]),
            fmt_num(&step["redis_cpu_util"]),
            if step["tool_limited"].as_bool() == Some(true) {
                format!("{tool}*")
            } else {
                tool
            },
            if step["pass"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
        );
    }
    eprintln!(
        "  server (every --pid summed), redis, tool: CPU share of one core; * the load tool was above {:.0}% of its core",
        TOOL_LIMIT * 100.0
    );
    eprintln!(
        "  best sustained deliveries/s: {} (the first failing step was bound by: {bound_by})",
        fmt_num(&json["best_deliveries_per_s"])
    );
    eprintln!(
        "  errors: {} {}",
        engine.errors.total,
        engine.errors.to_json()
    );
    // Overload errors past the last passing step are results, not failures.
    let ok = delivered_any && setup_errors == 0;
    Ok(Outcome { json, ok })
}

/// What stopped a ramp, judged at its failing step with the lowest rate:
/// `server` (it used its core; with several processes, the servers and Redis
/// together used the cores they share), `load tool` (the tool used its core and the
/// server did not: the best rate is a floor for the server, not its limit),
/// `other load` (neither did, but one of their cores was busy with other
/// processes or stolen by the hypervisor: the step says little about either),
/// `neither saturated` (latency or losses with both cores to spare), or
/// `not reached` (no step failed).
fn bound_by(steps: &[Value]) -> &'static str {
    let rate = |s: &&Value| s["rate_per_sender"].as_f64().unwrap_or(f64::INFINITY);
    let Some(deciding) = steps
        .iter()
        .filter(|s| s["pass"].as_bool() == Some(false) && s["retried"].as_bool() != Some(true))
        .min_by(|a, b| rate(a).total_cmp(&rate(b)))
    else {
        return "not reached";
    };
    let busy = |key: &str| deciding[key].as_f64().map(|u| u >= TOOL_LIMIT);
    // Several processes (servers and Redis): judged together, over their cores.
    let server = busy("server_side_util").or_else(|| busy("server_cpu_util"));
    match (server, busy("client_cpu_util")) {
        (Some(true), _) => "server",
        (_, Some(true)) => "load tool",
        _ if busy("server_core_busy") == Some(true) || busy("client_core_busy") == Some(true) => {
            "other load"
        }
        _ => "neither saturated",
    }
}

/// Resident memory of every server together, KiB; none if one is unreadable.
pub(crate) fn rss_sum(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| procfs::rss_kib(Some(p))).sum()
}

pub fn idle(args: &mut Args) -> Result<Outcome, String> {
    let common = common(args)?;
    let connections: usize = args.get("connections", 1000usize)?;
    let hold = args.duration("hold", "10s")?;
    args.finish()?;
    if connections == 0 {
        return Err("--connections must be at least 1".into());
    }

    let rss_before = rss_sum(&common.pids);
    let mut engine = Engine::new(
        common.targets.clone(),
        vec!["general".into()],
        common.concurrency,
        32,
    )
    .map_err(|err| format!("cannot start the event loop: {err}"))?;
    eprintln!("idle: opening {connections} connections to {}", common.url);
    let connect_time = engine.connect(connections, |_| 0, true);
    let connect_rate = engine.connect_rate();
    let opened = engine.opened;
    let rss_connected = rss_sum(&common.pids);
    eprintln!(
        "{opened} open in {:.1}s ({connect_rate:.0}/s); holding for {hold:?}",
        connect_time.as_secs_f64()
    );
    engine.reset_pings();
    engine.idle(hold);
    let rss_after = rss_sum(&common.pids);
    let held = engine.open_now;
    let (pings_min, pings_mean) = engine.pings();
    let client_rss = procfs::rss_kib(None);
    engine.close_all(Duration::from_secs(5));

    let per_conn = rss_before
        .zip(rss_after)
        .filter(|_| held > 0)
        .map(|(before, after)| {
            round(
                after.saturating_sub(before) as f64 * 1024.0 / held as f64,
                1,
            )
        });
    let mut json = json!({
        "scenario": "idle",
        "label": common.label,
        "url": common.url,
        "connections": connections,
        "opened": opened,
        "held": held,
        "dropped": engine.lost,
        "connect_s": round(connect_time.as_secs_f64(), 2),
        "connect_per_s": round(connect_rate, 1),
        "hold_s": round(hold.as_secs_f64(), 1),
        "pings_min": pings_min,
        "pings_mean": round(pings_mean, 2),
        "server_rss_before_kib": rss_before,
        "server_rss_connected_kib": rss_connected,
        "server_rss_after_kib": rss_after,
        "server_rss_per_conn_bytes": per_conn,
        "client_rss_kib": client_rss,
        "client_peak_rss_kib": procfs::peak_rss_kib(None),
        "errors": engine.errors.total,
        "error_kinds": engine.errors.to_json(),
        "sent_total": engine.chats_sent,
    });
    several_servers(&mut json, &common, &engine);
    let kib = |v: Option<u64>| {
        v.map(|v| format!("{v} KiB"))
            .unwrap_or_else(|| "- (no --pid)".into())
    };
    print_table(
        "idle",
        &[
            ("server", format!("{} {}", common.label, common.url)),
            (
                "connections asked / opened / held",
                format!("{connections} / {opened} / {held}"),
            ),
            (
                "connect rate (login + upgrade)",
                format!("{connect_rate:.0}/s"),
            ),
            (
                "hold",
                format!(
                    "{:.1}s, server pings answered per connection: min {pings_min}, mean {pings_mean:.1}",
                    hold.as_secs_f64()
                ),
            ),
            (
                "server RSS before / connected / after",
                format!(
                    "{} / {} / {}",
                    kib(rss_before),
                    kib(rss_connected),
                    kib(rss_after)
                ),
            ),
            (
                "server RSS per connection",
                per_conn
                    .map(|b| format!("{b:.0} B"))
                    .unwrap_or_else(|| "-".into()),
            ),
            ("load tool RSS", kib(client_rss)),
            ("dropped", engine.lost.to_string()),
            (
                "errors",
                format!("{} {}", engine.errors.total, engine.errors.to_json()),
            ),
        ],
    );
    let ok = engine.errors.total == 0 && held == connections;
    Ok(Outcome { json, ok })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_names_what_stopped_it() {
        let step = |rate: f64, pass: bool, server: f64, tool: f64| {
            json!({"rate_per_sender": rate, "pass": pass,
                   "server_cpu_util": server, "client_cpu_util": tool})
        };
        assert_eq!(bound_by(&[step(10.0, true, 0.5, 0.5)]), "not reached");
        let ramp = [
            step(10.0, true, 0.5, 0.5),
            step(20.0, false, 0.7, 0.95),
            step(15.0, false, 0.95, 0.8),
        ];
        assert_eq!(bound_by(&ramp), "server");
        assert_eq!(bound_by(&ramp[..2]), "load tool");
        assert_eq!(
            bound_by(&[step(20.0, false, 0.6, 0.6)]),
            "neither saturated"
        );
        // A failure that passed when run again decides nothing.
        let mut hiccup = step(12.0, false, 0.5, 0.95);
        hiccup["retried"] = json!(true);
        assert_eq!(bound_by(&[hiccup.clone(), ramp[2].clone()]), "server");
        assert_eq!(bound_by(&[hiccup]), "not reached");
        let mut crowded = step(20.0, false, 0.6, 0.6);
        crowded["server_core_busy"] = json!(0.98);
        assert_eq!(bound_by(&[crowded.clone()]), "other load");
        // Two servers and Redis on one core: 0.6 + Redis is that core, full.
        crowded["server_side_util"] = json!(0.97);
        assert_eq!(bound_by(&[crowded.clone()]), "server");
        crowded["server_side_util"] = json!(0.5);
        crowded["server_cpu_util"] = json!(0.95); // two servers on two cores
        assert_eq!(bound_by(&[crowded]), "other load");
    }

    #[test]
    fn senders_alternate_between_rooms() {
        let rooms: Vec<Vec<usize>> = vec![vec![10, 11, 12], vec![20, 21], vec![30, 31, 32]];
        assert_eq!(interleave_senders(&rooms, 2), vec![10, 20, 30, 11, 21, 31]);
        assert_eq!(
            interleave_senders(&rooms, 3),
            vec![10, 20, 30, 11, 21, 31, 12, 32]
        );
    }
}
