//! chat-bench: load generator for chat-server (and anything speaking its protocol).
//!
//! `chat-bench SCENARIO [--flag value ...]`; each scenario prints one JSON line
//! on stdout and a human-readable table on stderr. Exit status 1 when the
//! scenario saw errors (or delivered nothing), 2 for bad usage.

mod apipost;
mod args;
mod engine;
mod joinstorm;
mod ledger;
mod presence;
mod procfs;
mod reconnect;
mod redisinfo;
mod resumeflood;
mod scenarios;
mod servermetrics;
mod sourceport;
mod stream;
mod wire;

use std::process::ExitCode;

const HELP: &str = "\
chat-bench: load generator for chat-server (WebSocket chat over one event loop)

USAGE:
    chat-bench fanout [FLAGS]   R rooms x M members, S senders per room at a fixed rate
    chat-bench ramp   [FLAGS]   raise the fan-out rate until p99 or delivery fails
    chat-bench idle   [FLAGS]   hold N connections open through heartbeats
    chat-bench reconnect [FLAGS] N clients in rooms, the server restarted, the
                                time until all are back (sessions or passwords)
    chat-bench resume-flood [FLAGS] N clients resuming into one room over and
                                over while a probe chats in another: the probe's
                                round trip with and without the flood, Redis's
                                output bytes per resume
    chat-bench join-storm [FLAGS] M members of one room, all watching its
                                presence, cut off and back at once: presence
                                frames per watcher and per join, and the time
                                until every roster is whole again

Each scenario prints one JSON line on stdout and a table on stderr.
Durations take a unit: 500ms, 10s, 1m.

FLAGS (all scenarios):
    --url URL              server to load [default: http://127.0.0.1:8080];
                           repeatable: connections are spread round-robin over
                           the servers (login and upgrade on the same one), so
                           every room has members on every server;
                           https://HOST:PORT speaks TLS (login and WebSocket)
    --ca FILE              PEM certificate(s) to verify https:// servers
                           against (a CA, or a self-signed server certificate)
    --user NAME            account to log in as [default: percy]
    --password PASS        its password [default: 123]
    --pid PID              server process: its CPU time (fanout, ramp) and RSS
                           (idle); repeatable: summed over the processes
    --redis-pid PID        Redis's process: its CPU time and core (fanout, ramp)
    --redis URL            redis://HOST:PORT the servers share: INFO cpu,
                           commandstats and stats per measured step (PUBLISH
                           per message, Redis CPU to the microsecond, bytes
                           written)
    --label TEXT           free text copied into the JSON (e.g. ours, go)
    --concurrency N        logins/upgrades in flight at once [default: 64]

fanout and ramp:
    --rooms R              rooms [default: 10]
    --members M            members per room [default: 100]
    --senders S            senders per room [default: 5]
    --size BYTES           message text length [default: 64]
    --batch N              messages per sender per write: N at once every
                           N/rate seconds, the same rate [default: 1]
    --warmup DURATION      unmeasured traffic first [default: 2s]
    --drain DURATION       longest wait for late deliveries after sending stops
    --presence BOOL        every member watches its room's presence
                           (change_room with \"presence\": true); presence
                           frames are counted apart from deliveries
                           (presence_setup, presence_step) [default: 0]
    --user-count N         member i logs in as USER followed by i mod N
                           (u0 .. u999 with --user u): a users file on the
                           server, every account with --password; 0: all as
                           --user [default: 0]

fanout:
    --rate N               messages per second per sender [default: 20]
    --duration DURATION    measured sending time [default: 10s]
    --drain                [default: 5s]
    --metrics URL          the server's Prometheus metrics (chat-server:
                           http://HOST:PORT/metrics), read at the end of the
                           traffic (history bytes, rooms); repeatable: summed
    --late DURATION        a delivery later than this after its send is late:
                           counted (deliveries_late) [default: 1s]
    --each BOOL            keep who got each measured message: deliveries never
                           made (a member of the room when it was sent never
                           got it), late and duplicated, per message; costs
                           connections/8 bytes per message [default: false]
    --post-via member|api  who posts the measured messages: the senders on
                           their WebSockets, or the server API (POST
                           /api/rooms/{room}/messages, a keep-alive connection
                           per sender slot, the same text from the same user);
                           the senders stay members either way, so each
                           message has as many deliveries; an answer other
                           than 202 is an error [default: member]
    --api-key FILE         the server's --api-key file (with --post-via api)

ramp:
    --start-rate N         first step's messages/s per sender [default: 10]
    --factor F             rate multiplier per step [default: 1.5]
    --step DURATION        sending time per step [default: 5s]
    --p99 DURATION         latency bound [default: 50ms]
    --min-delivery RATIO   delivery ratio bound [default: 0.999]
    --max-steps N          [default: 20]
    --refine N             bisection steps between last pass and first fail [default: 2]
    --retry-failed BOOL    run a failing step once more; only a second failure counts [default: true]
    --drain                [default: 3s]

idle:
    --connections N        connections to hold [default: 1000]
    --hold DURATION        time to hold them open [default: 10s]

reconnect (one --url and its server's --pid): logs in N clients, each
keeping its session cookie, puts them in rooms, says READY (stderr, and a
line in --ready-file), then waits for the server to drop them, for that
process to exit, and for the address to accept again (the new process
listening: the clock starts); every client comes back (OTP from its session,
or a password login; /ws?otp=..&room=R&since=ID) and is back at the first
event in its room. Someone else restarts the server (same address, same
--session-key), e.g. bench/run.sh.
    --connections N        clients [default: 1000]
    --members M            clients per room [default: 100]
    --via LIST             how clients come back, one restart each, in order:
                           session, password, or session,password [default: session]
    --ready-file FILE      append \"ready ROUND VIA\" here when ready for a restart
    --new-pid-file FILE    where the restarter writes the new server's PID
                           (its CPU; needed for more than one round)
    --attempts N           tries per client to come back [default: 3]
    --restart-timeout DURATION  ready to listening again, at most [default: 60s]
    --back-timeout DURATION     listening to all back, at most [default: 300s]

resume-flood: a probe alone in a room sends a message every --probe-interval
and times its return, first with no flood (--baseline), then while the
resumers each send change_room to the room they are in, asking to resume
(since the newest id: nothing to replay; or --resume-history K), open loop.
The probe sends 100 events a second: start the server with its event budget
lifted (--event-rate 1000000 --event-burst 1000000).
    --resumers N           clients resuming [default: 50]
    --resume-rate N        resumes per second per resumer [default: 10]
    --resume-history K     ask {\"history\": K} instead of {\"since\": NEWEST}
    --fill N               messages put in the flood room first [default: 100]
    --fill-size BYTES      their text length [default: 100]
    --probe-interval DURATION  [default: 10ms]
    --duration DURATION    the flood [default: 10s]
    --baseline DURATION    the probe alone first [default: --duration]
    --baseline-pings BOOL  during the baseline the resumers send WebSocket pings
                           at the flood's rate: the same wake-ups, no resumes
                           [default: false]
    --warmup DURATION      the probe alone, unmeasured [default: 1s]
    --drain DURATION       longest wait for late probe messages [default: 5s]

join-storm: M members of one room, each entering it through the upgrade
watching presence (/ws?otp=..&room=R&presence=1); once every roster holds
every user, every socket is dropped in one go and every member comes back
at once. Reports, from the cut: all back, every roster whole again
(stable_s), the last presence frame (settled_s); presence frames in total,
per watcher and per join; with --metrics, per server loop iteration.
    --members M            members cut and back [default: 1000]
    --observers K          more members who stay through the storm, seeing
                           every leave and join [default: 0]
    --room NAME            the room [default: storm]
    --user-count N         distinct users, as for fanout [default: 0: one]
    --via session|password how members come back [default: session]
    --metrics URL          each server's /metrics (one per --url, in order):
                           its loop iterations during the storm
    --quiet DURATION       settled: no presence frame for this long [default: 1s]
    --timeout DURATION     longest wait for the rosters [default: 60s]
    --attempts N           tries per member to come back [default: 3]
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = argv.first() else {
        eprint!("{HELP}");
        return ExitCode::from(2);
    };
    if scenario == "--help" || scenario == "-h" || scenario == "help" {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let mut args = match args::Args::parse(&argv[1..]) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("chat-bench: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = match scenario.as_str() {
        "fanout" => scenarios::fanout(&mut args),
        "ramp" => scenarios::ramp(&mut args),
        "idle" => scenarios::idle(&mut args),
        "reconnect" => reconnect::reconnect(&mut args),
        "resume-flood" => resumeflood::resume_flood(&mut args),
        "join-storm" => joinstorm::join_storm(&mut args),
        other => Err(format!(
            "unknown scenario '{other}' (fanout, ramp, idle, reconnect, resume-flood, join-storm; see --help)"
        )),
    };
    match outcome {
        Ok(outcome) => {
            println!("{}", outcome.json);
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("chat-bench: {err}");
            ExitCode::from(2)
        }
    }
}
