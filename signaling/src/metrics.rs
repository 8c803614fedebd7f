//! Prometheus metrics at `GET /metrics`.
//!
//! The SFU keeps plain counters on its own thread and publishes a snapshot ten times a second;
//! a scrape copies that snapshot and the process's CPU and memory into a recorder private to
//! this server (not the global one, so that several servers can live in one test process)
//! and renders it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{counter, describe_counter, describe_gauge, gauge, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use sfu::SfuHandle;

/// Renders the server's metrics.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    process: Arc<metrics_process::Collector>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let process = metrics_process::Collector::default();
        with_local_recorder(&recorder, || {
            process.describe();
            describe();
        });
        Self {
            recorder: Arc::new(recorder),
            handle,
            process: Arc::new(process),
        }
    }

    /// The Prometheus text exposition of the current values.
    pub fn render(&self, sfu: &SfuHandle, cluster: Option<&crate::cluster::Cluster>) -> String {
        let snapshot = sfu.snapshot();
        with_local_recorder(self.recorder.as_ref(), || {
            self.process.collect();
            if let Some(seconds) = process_cpu_seconds() {
                gauge!(CPU_SECONDS).set(seconds);
            }
            gauge!("meet_rooms").set(snapshot.rooms as f64);
            gauge!("meet_media_workers", "state" => "running").set(snapshot.workers_running as f64);
            gauge!("meet_media_workers", "state" => "stopped")
                .set((snapshot.workers - snapshot.workers_running) as f64);
            counter!("meet_media_worker_failures_total").absolute(snapshot.worker_failures);
            counter!("meet_rtp_relayed_total").absolute(snapshot.stats.rtp_relayed_out);
            counter!("meet_transport_failures_total").absolute(snapshot.stats.transport_failures);
            counter!("meet_dtls_failures_total").absolute(snapshot.stats.dtls_failures);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                gauge!("meet_tokio_tasks").set(runtime.metrics().num_alive_tasks() as f64);
            }
            gauge!("meet_participants").set(snapshot.participants as f64);
            gauge!("meet_publications").set(snapshot.publications as f64);
            gauge!("meet_subscriptions").set(snapshot.subscriptions as f64);
            let s = &snapshot.stats;
            counter!("meet_datagrams_total", "direction" => "in").absolute(s.datagrams_in);
            counter!("meet_datagrams_total", "direction" => "out").absolute(s.datagrams_out);
            counter!("meet_bytes_total", "direction" => "in").absolute(s.bytes_in);
            counter!("meet_bytes_total", "direction" => "out").absolute(s.bytes_out);
            counter!("meet_rtp_packets_total", "direction" => "in").absolute(s.rtp_in);
            counter!("meet_rtp_packets_total", "direction" => "forwarded")
                .absolute(s.rtp_forwarded);
            for (reason, value) in [
                ("oversize", s.dropped_oversize),
                ("malformed", s.dropped_malformed),
                ("unknown_source", s.dropped_unknown_source),
                ("unknown_ssrc", s.dropped_unknown_ssrc),
                ("muted", s.dropped_muted),
                ("unmapped_payload_type", s.dropped_unmapped_pt),
                ("stale", s.dropped_stale),
                ("awaiting_keyframe", s.held_awaiting_keyframe),
                ("other_layer", s.dropped_other_layer),
                ("not_loudest", s.dropped_not_loudest),
                ("send_queue_full", s.dropped_send_queue_full),
            ] {
                counter!("meet_dropped_packets_total", "reason" => reason).absolute(value);
            }
            counter!("meet_keyframe_requests_total", "direction" => "received")
                .absolute(s.keyframe_requests_received);
            counter!("meet_keyframe_requests_total", "direction" => "sent")
                .absolute(s.keyframe_requests_sent);
            counter!("meet_keyframe_requests_total", "direction" => "throttled")
                .absolute(s.keyframe_requests_throttled);
            counter!("meet_nacks_received_total").absolute(s.nacks_received);
            counter!("meet_refused_subscriptions_total").absolute(s.refused_subscriptions);
            counter!("meet_refused_publications_total").absolute(s.refused_publications);
            counter!("meet_recording_dropped_total").absolute(s.recording_dropped);
            counter!("meet_layer_switches_total").absolute(s.layer_switches);
            counter!("meet_fast_starts_total").absolute(s.fast_starts);
            counter!("meet_fast_start_packets_total").absolute(s.fast_start_packets);
            counter!("meet_keyframe_requests_from_cache_total")
                .absolute(s.keyframe_requests_from_cache);
            let keys = crate::hub::key_relay_totals();
            counter!("meet_e2ee_key_messages_total", "direction" => "in")
                .absolute(keys.messages_in);
            counter!("meet_e2ee_key_messages_total", "direction" => "out")
                .absolute(keys.messages_out);
            counter!("meet_e2ee_key_deliveries_total").absolute(keys.deliveries_in);
            counter!("meet_e2ee_key_bytes_total", "direction" => "in").absolute(keys.blob_bytes_in);
            counter!("meet_e2ee_key_bytes_total", "direction" => "out").absolute(keys.bytes_out);
            for refusal in Refusal::ALL {
                counter!("meet_refused_total", "reason" => refusal.name())
                    .absolute(refusal.total());
            }
            if let Some(cluster) = cluster {
                let c = cluster.snapshot();
                gauge!("meet_cluster_nodes").set(c.nodes as f64);
                gauge!("meet_cluster_connected").set(if c.connected { 1.0 } else { 0.0 });
                counter!("meet_cluster_heartbeat_failures_total").absolute(c.heartbeat_failures);
                for (reason, value) in c.rejected {
                    counter!("meet_cluster_rejected_total", "reason" => reason).absolute(value);
                }
                let l = &snapshot.links;
                for (direction, datagrams, bytes, packets) in [
                    ("in", l.datagrams_in, l.bytes_in, l.packets_in),
                    ("out", l.datagrams_out, l.bytes_out, l.packets_out),
                ] {
                    counter!("meet_links_datagrams_total", "direction" => direction)
                        .absolute(datagrams);
                    counter!("meet_links_bytes_total", "direction" => direction).absolute(bytes);
                    counter!("meet_links_packets_total", "direction" => direction)
                        .absolute(packets);
                }
                for (reason, value) in [
                    ("unknown_source", l.refused_unknown_source),
                    ("forged", l.refused_forged),
                    ("replayed", l.refused_replayed),
                    ("malformed", l.refused_malformed),
                ] {
                    counter!("meet_links_refused_total", "reason" => reason).absolute(value);
                }
                counter!("meet_links_dropped_total").absolute(l.dropped_out);
            }
        });
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's CPU time as a float: `process_cpu_seconds_total` (metrics-process) is an
/// integer counter, so it moves in whole seconds and a CPU figure from a short measurement
/// scatters by a second over its length.
pub const CPU_SECONDS: &str = "meet_process_cpu_seconds";

/// User plus system CPU time of every thread of this process, in seconds, with sub-microsecond
/// resolution (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, the sum getrusage(RUSAGE_SELF) reports
/// in microseconds).
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_time::ProcessTime::try_now()
        .ok()
        .map(|t| t.as_duration().as_secs_f64())
}

fn describe() {
    describe_gauge!(
        CPU_SECONDS,
        metrics::Unit::Seconds,
        "User and system CPU time of the server process (all threads) since it started, with \
         sub-microsecond resolution; process_cpu_seconds_total moves in whole seconds."
    );
    describe_gauge!("meet_rooms", "Rooms with at least one participant.");
    describe_gauge!(
        "meet_cluster_nodes",
        "Nodes of this server's cluster whose lease is current, this one included (cluster mode)."
    );
    describe_gauge!(
        "meet_cluster_connected",
        "1 while this node's connection to NATS is up (cluster mode)."
    );
    describe_counter!(
        "meet_cluster_heartbeat_failures_total",
        "Renewals of this node's cluster lease that failed (NATS or JetStream unreachable)."
    );
    describe_counter!(
        "meet_cluster_rejected_total",
        "Cluster messages refused, by reason: bad_mac (another cluster secret, or forged), \
         stale (a replay), bad_node, malformed, truncated, bad_magic, oversize."
    );
    describe_counter!(
        "meet_links_datagrams_total",
        "Sealed datagrams over the media links to other nodes, in and out (cluster mode)."
    );
    describe_counter!(
        "meet_links_bytes_total",
        "Bytes of those datagrams, in and out (cluster mode)."
    );
    describe_counter!(
        "meet_links_packets_total",
        "Media packets carried over the links, in and out: each crosses once per node that \
         wants it, whatever the number of its viewers there (cluster mode)."
    );
    describe_counter!(
        "meet_links_refused_total",
        "Datagrams refused on the link port, by reason: unknown_source (not a member's \
         address), forged (not sealed with the link's key), replayed, malformed."
    );
    describe_counter!(
        "meet_links_dropped_total",
        "Relays for a node with no link, and datagrams the kernel would not take."
    );
    describe_gauge!(
        "meet_media_workers",
        "Media workers (threads), running and stopped."
    );
    describe_counter!(
        "meet_media_worker_failures_total",
        "Media workers stopped by a panic or a failed socket since the start."
    );
    describe_counter!(
        "meet_transport_failures_total",
        "Participants' transports closed because the WebRTC stack panicked on their input \
         (only that participant is affected)."
    );
    describe_counter!(
        "meet_dtls_failures_total",
        "Participants' transports closed because their DTLS handshake failed (no cipher suite \
         in common, an alert from the client, a certificate that does not match its offer)."
    );
    describe_counter!(
        "meet_rtp_relayed_total",
        "Packets handed from a publication's worker to another worker's mirror of it."
    );
    describe_gauge!(
        "meet_tokio_tasks",
        "Tasks alive in the server's async runtime (sessions, connections, the hub)."
    );
    describe_gauge!("meet_participants", "Participants with a media transport.");
    describe_gauge!("meet_publications", "Tracks being published.");
    describe_gauge!(
        "meet_subscriptions",
        "Publications forwarded to a participant."
    );
    describe_counter!("meet_datagrams_total", "UDP datagrams on the media port.");
    describe_counter!("meet_bytes_total", "Bytes on the media port.");
    describe_counter!(
        "meet_rtp_packets_total",
        "RTP packets received from publishers and forwarded to subscribers."
    );
    describe_counter!(
        "meet_dropped_packets_total",
        "Datagrams or packets not forwarded, by reason."
    );
    describe_counter!(
        "meet_keyframe_requests_total",
        "Keyframe requests from subscribers, sent to publishers, and folded by the throttle."
    );
    describe_counter!(
        "meet_layer_switches_total",
        "Simulcast layer switches made for subscribers, on keyframes."
    );
    describe_counter!(
        "meet_refused_total",
        "Connections, sign-ins and messages refused by a limit (docs/security.md), by reason."
    );
    describe_counter!(
        "meet_fast_starts_total",
        "Video subscriptions started from the packets since the last keyframe, without waiting."
    );
    describe_counter!(
        "meet_fast_start_packets_total",
        "Cached packets replayed to start video subscriptions (also counted as forwarded)."
    );
    describe_counter!(
        "meet_keyframe_requests_from_cache_total",
        "Subscribers' keyframe requests answered from the packets since the last keyframe, not sent to the publisher."
    );
    describe_counter!(
        "meet_nacks_received_total",
        "NACK feedback received from subscribers."
    );
    describe_counter!(
        "meet_refused_subscriptions_total",
        "Subscriptions refused (another room, oneself, kind or codec mismatch)."
    );
    describe_counter!(
        "meet_recording_dropped_total",
        "Recorded packets lost because the recorder fell behind."
    );
    describe_counter!(
        "meet_e2ee_key_messages_total",
        "End-to-end key messages: e2ee_keys taken in from senders, e2ee_key relayed out to \
         recipients."
    );
    describe_counter!(
        "meet_e2ee_key_deliveries_total",
        "Wrapped keys and key requests named in the e2ee_keys messages taken in."
    );
    describe_counter!(
        "meet_e2ee_key_bytes_total",
        "End-to-end key bytes: the blobs taken in, the e2ee_key messages (JSON text) relayed \
         out."
    );
    describe_counter!(
        "meet_refused_publications_total",
        "Send m-lines ignored because the participant may not publish (viewers)."
    );
}

/// The file in the data directory that keeps the metrics token between starts.
pub const TOKEN_FILE: &str = "metrics-token";

/// The bearer token for `GET /metrics` kept in `data_dir` (owner-only), generated on first
/// start: the page tells an attacker the server's load, its rooms' sizes and its build, so it
/// is not public. Operators give it to their scraper (`--metrics-token` overrides it).
pub fn load_or_generate_token(data_dir: &Path) -> Result<String, (PathBuf, std::io::Error)> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        Ok(_) => {
            let empty = std::io::Error::new(std::io::ErrorKind::InvalidData, "empty");
            return Err((path, empty));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err((path, err)),
    }
    let token = crate::store::hex(&rand::random::<[u8; 32]>());
    crate::auth::write_private(&path, format!("{token}\n").as_bytes())
        .map_err(|e| (path.clone(), e))?;
    Ok(token)
}

/// Why the server refused someone before or beside any meeting logic: each limit of
/// docs/security.md that trips is counted here, and shown as `meet_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A TCP connection from an address that held its limit already.
    ConnectionsPerIp,
    /// A WebSocket that sent no `join` in time.
    JoinTimeout,
    /// A sign-in refused for its source's (or its username's from that source) failures.
    SignInThrottled,
    /// A sign-in refused because password hashing was at its bound.
    SignInBusy,
    /// Wrapped keys not relayed: the recipient got too many from that sender, or its queue
    /// was half full.
    RelayHeldBack,
    /// A socket's messages over its rate limit.
    MessagesRateLimited,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::ConnectionsPerIp,
        Refusal::JoinTimeout,
        Refusal::SignInThrottled,
        Refusal::SignInBusy,
        Refusal::RelayHeldBack,
        Refusal::MessagesRateLimited,
    ];

    fn name(self) -> &'static str {
        match self {
            Refusal::ConnectionsPerIp => "connections_per_ip",
            Refusal::JoinTimeout => "join_timeout",
            Refusal::SignInThrottled => "sign_in_throttled",
            Refusal::SignInBusy => "sign_in_busy",
            Refusal::RelayHeldBack => "relay_held_back",
            Refusal::MessagesRateLimited => "messages_rate_limited",
        }
    }

    /// Counts one refusal; true when it should also be logged: the first, then one in a
    /// hundred, so that a flood cannot flood the log as well.
    pub fn count(self) -> bool {
        REFUSALS[self as usize]
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(100)
    }

    /// Refusals of this kind so far, in this process.
    pub fn total(self) -> u64 {
        REFUSALS[self as usize].load(Ordering::Relaxed)
    }
}

/// Process-wide, like the limits they count (several servers in one test process share them).
static REFUSALS: [AtomicU64; Refusal::ALL.len()] =
    [const { AtomicU64::new(0) }; Refusal::ALL.len()];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_has_sub_second_resolution() {
        let before = process_cpu_seconds().expect("the process CPU clock");
        // Burn a little CPU: the clock moves by far less than a second and still moves.
        let mut x = 0u64;
        while process_cpu_seconds().is_some_and(|now| now - before < 0.002) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = process_cpu_seconds().expect("the process CPU clock");
        assert!(after > before);
        assert!(after - before < 1.0, "{before} → {after}");
    }
}
