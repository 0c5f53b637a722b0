//! Counters the loop keeps about itself, rendered for `GET /metrics` in the
//! Prometheus text format (version 0.0.4). Single-threaded: plain integers.

use std::fmt::Write;

use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    pub messages_received: u64,
    pub messages_delivered: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub slow_consumer_disconnects: u64,
    pub heartbeat_timeouts: u64,
    pub logins_succeeded: u64,
    pub logins_failed: u64,
    pub logins_rate_limited: u64,
    /// Server API calls refused for a wrong or missing key (or too many).
    pub api_refused: u64,
    /// Server API calls made (authorized).
    pub api_calls: u64,
    /// OTPs given for a session (no password).
    pub session_otps: u64,
    /// Members told they passed their event budget (input paused).
    pub rate_limited: u64,
    /// Connections cut off because the memory budget was passed.
    pub memory_cutoffs: u64,
    /// Connections refused because their address held too many.
    pub refused_per_address: u64,
    /// Bytes buffered for clients now (what `--max-memory` bounds).
    pub buffered_bytes: usize,
    /// Bytes of room history kept (without `--redis`).
    pub history_bytes: usize,
    /// With `--redis`: its link's state and counters.
    pub redis: Option<RedisStats>,
    pub loop_iterations: u64,
    /// The longest time one loop iteration spent working between polls.
    pub longest_loop_pause: Duration,
    /// Gauges, kept current by whoever owns what they count.
    pub websocket_connections: u64,
    pub connections: usize,
    pub rooms: usize,
    pub otps_outstanding: usize,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ws = self.websocket_connections;
        let http = (self.connections as u64).saturating_sub(ws);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "chat_connections",
            "gauge",
            "Open connections by phase.",
            &[
                ("{phase=\"http\"}", http as f64),
                ("{phase=\"websocket\"}", ws as f64),
            ],
        );
        metric(
            "chat_rooms",
            "gauge",
            "Rooms with at least one member.",
            &[("", self.rooms as f64)],
        );
        metric(
            "chat_otps_outstanding",
            "gauge",
            "One-time passwords issued and not yet used or expired.",
            &[("", self.otps_outstanding as f64)],
        );
        metric(
            "chat_buffered_bytes",
            "gauge",
            "Bytes buffered for clients (queued output, partial requests); bounded by --max-memory.",
            &[("", self.buffered_bytes as f64)],
        );
        metric(
            "chat_history_bytes",
            "gauge",
            "Bytes of room history kept in memory; bounded by --history-max-bytes.",
            &[("", self.history_bytes as f64)],
        );
        let counters: [(&str, &str, u64); 15] = [
            (
                "chat_session_otps_total",
                "One-time passwords given for a session cookie (no password checked).",
                self.session_otps,
            ),
            (
                "chat_messages_received_total",
                "Chat messages accepted from clients.",
                self.messages_received,
            ),
            (
                "chat_messages_delivered_total",
                "Chat messages queued to room members.",
                self.messages_delivered,
            ),
            (
                "chat_received_bytes_total",
                "Bytes read from sockets.",
                self.bytes_received,
            ),
            (
                "chat_sent_bytes_total",
                "Bytes written to sockets.",
                self.bytes_sent,
            ),
            (
                "chat_slow_consumer_disconnects_total",
                "Clients cut off because their outbound queue passed the bound.",
                self.slow_consumer_disconnects,
            ),
            (
                "chat_heartbeat_timeouts_total",
                "Clients dropped for not answering pings.",
                self.heartbeat_timeouts,
            ),
            (
                "chat_logins_succeeded_total",
                "Successful logins.",
                self.logins_succeeded,
            ),
            (
                "chat_logins_failed_total",
                "Logins refused for wrong credentials.",
                self.logins_failed,
            ),
            (
                "chat_logins_rate_limited_total",
                "Logins refused with 429.",
                self.logins_rate_limited,
            ),
            (
                "chat_api_refused_total",
                "Server API calls refused for a wrong or missing key, or too many of those.",
                self.api_refused,
            ),
            (
                "chat_api_calls_total",
                "Server API calls made with the right key.",
                self.api_calls,
            ),
            (
                "chat_event_rate_limited_total",
                "Times a client passed its event budget and its input paused.",
                self.rate_limited,
            ),
            (
                "chat_memory_cutoffs_total",
                "Connections cut off because --max-memory was passed.",
                self.memory_cutoffs,
            ),
            (
                "chat_connections_refused_per_address_total",
                "Connections refused because their address held --max-connections-per-ip.",
                self.refused_per_address,
            ),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, &[("", value as f64)]);
        }
        if let Some(redis) = &self.redis {
            let master = format!("{{master=\"{}\"}}", redis.master.escape_debug());
            metric(
                "chat_redis_up",
                "gauge",
                "1 while both Redis links are connected to the master (labelled host:port).",
                &[(&master, f64::from(u8::from(redis.up)))],
            );
            metric(
                "chat_redis_last_outage_seconds",
                "gauge",
                "How long the last Redis outage (a failover, say) kept logins at 503.",
                &[("", redis.last_outage.as_secs_f64())],
            );
            metric(
                "chat_redis_subscriptions",
                "gauge",
                "Rooms this process is subscribed to (it has members in them).",
                &[("", redis.subscriptions as f64)],
            );
            let redis_counters: [(&str, &str, u64); 10] = [
                (
                    "chat_redis_published_late_total",
                    "Messages said here while Redis was away, published to the other processes when it was back.",
                    redis.published_late,
                ),
                (
                    "chat_redis_unconfirmed_total",
                    "Messages in flight to Redis when its link failed: sent again unless Redis holds them (with history kept), never twice.",
                    redis.unconfirmed,
                ),
                (
                    "chat_redis_failovers_total",
                    "Times the master changed: a failover, or a Redis that came back as a new one.",
                    redis.failovers,
                ),
                (
                    "chat_redis_published_total",
                    "Chat messages published to Redis.",
                    redis.published,
                ),
                (
                    "chat_redis_received_total",
                    "Chat messages received from Redis.",
                    redis.received,
                ),
                (
                    "chat_redis_reconnects_total",
                    "Redis links lost and reconnected.",
                    redis.reconnects,
                ),
                (
                    "chat_redis_sequence_gaps_total",
                    "Room messages lost: neither heard from Redis nor kept in the room's stream.",
                    redis.gaps,
                ),
                (
                    "chat_redis_recovered_total",
                    "Room messages not heard live but read from the room's stream and delivered.",
                    redis.recovered,
                ),
                (
                    "chat_redis_dropped_total",
                    "Commands dropped: the buffer toward Redis was full.",
                    redis.dropped,
                ),
                (
                    "chat_redis_local_only_total",
                    "Messages delivered to local members only, Redis being away.",
                    redis.local_only,
                ),
            ];
            for (name, help, value) in redis_counters {
                metric(name, "counter", help, &[("", value as f64)]);
            }
        }
        metric(
            "chat_loop_iterations_total",
            "counter",
            "Event loop iterations.",
            &[("", self.loop_iterations as f64)],
        );
        metric(
            "chat_loop_longest_pause_seconds",
            "gauge",
            "Longest time one loop iteration worked between polls.",
            &[("", self.longest_loop_pause.as_secs_f64())],
        );
        out
    }
}

/// The Redis back end's counters and gauges (it fills them in).
#[derive(Debug, Default, Clone)]
pub struct RedisStats {
    pub up: bool,
    /// Where the master is (host:port), as the links were last sent.
    pub master: String,
    /// Times the master's replication id changed.
    pub failovers: u64,
    /// How long the last outage kept the links (and so logins) down.
    pub last_outage: std::time::Duration,
    pub published: u64,
    pub received: u64,
    pub reconnects: u64,
    /// Messages lost for good (neither heard nor kept in the stream).
    pub gaps: u64,
    /// Messages not heard live but read from the stream (a repair).
    pub recovered: u64,
    pub subscriptions: usize,
    /// Commands dropped because the buffer toward Redis was full.
    pub dropped: u64,
    /// Messages delivered to local members only, Redis being unreachable.
    pub local_only: u64,
    /// Messages in flight to Redis when a link failed: published or lost,
    /// nobody can tell.
    pub unconfirmed: u64,
    /// Messages said here while Redis was away, published when it was back.
    pub published_late: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics {
            messages_received: 3,
            websocket_connections: 2,
            connections: 5,
            rooms: 1,
            ..Metrics::default()
        };
        let text = metrics.render();
        assert!(text.contains(
            "# TYPE chat_messages_received_total counter\nchat_messages_received_total 3\n"
        ));
        assert!(text.contains("chat_connections{phase=\"http\"} 3\n"));
        assert!(text.contains("chat_connections{phase=\"websocket\"} 2\n"));
    }
}
