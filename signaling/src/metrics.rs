//! Prometheus metrics at `GET /metrics`.
//!
//! The SFU keeps plain counters on its own thread and publishes a snapshot once a second;
//! a scrape copies that snapshot and the process's CPU and memory into a recorder private to
//! this server (not the global one, so that several servers can live in one test process)
//! and renders it.

use std::sync::Arc;

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
    pub fn render(&self, sfu: &SfuHandle) -> String {
        let snapshot = sfu.snapshot();
        with_local_recorder(self.recorder.as_ref(), || {
            self.process.collect();
            gauge!("meet_rooms").set(snapshot.rooms as f64);
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
        });
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn describe() {
    describe_gauge!("meet_rooms", "Rooms with at least one participant.");
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
        "meet_refused_publications_total",
        "Send m-lines ignored because the participant may not publish (viewers)."
    );
}
