//! Counters the engine keeps. They are plain integers: the engine runs on one thread, and the
//! driver publishes a copy for metrics.

use serde::Serialize;

/// What the engine has seen and done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// RTP packets received from publishers (after SRTP).
    pub rtp_in: u64,
    /// RTP packets written to subscribers.
    pub rtp_forwarded: u64,
    /// Datagrams larger than [`crate::engine::MAX_DATAGRAM`].
    pub dropped_oversize: u64,
    /// Datagrams that are none of STUN, DTLS, RTP or RTCP, or that a transport refused.
    pub dropped_malformed: u64,
    /// Datagrams from an address no transport knows, that were not a valid STUN request for
    /// one.
    pub dropped_unknown_source: u64,
    /// RTP with an SSRC the sender's transport has not negotiated.
    pub dropped_unknown_ssrc: u64,
    /// Packets of a muted publication.
    pub dropped_muted: u64,
    /// Packets whose payload type the subscriber did not negotiate.
    pub dropped_unmapped_pt: u64,
    /// Packets from before a source switch.
    pub dropped_stale: u64,
    /// Video packets withheld from a subscriber until a keyframe.
    pub held_awaiting_keyframe: u64,
    /// Keyframe requests (PLI/FIR) received from subscribers.
    pub keyframe_requests_received: u64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests_sent: u64,
    /// Keyframe requests folded into one already sent within the interval.
    pub keyframe_requests_throttled: u64,
    /// NACK feedback received from subscribers (answered from the retransmission buffer).
    pub nacks_received: u64,
    /// Subscriptions refused: another room, oneself, or a kind or codec mismatch.
    pub refused_subscriptions: u64,
    /// Send m-lines of participants not allowed to publish (viewers), ignored.
    pub refused_publications: u64,
    /// Video packets of a simulcast layer (or a hidden subscription) not sent to a
    /// subscriber, which receives another layer or none.
    pub dropped_other_layer: u64,
    /// Audio packets not forwarded because their publication was not among the room's
    /// loudest.
    pub dropped_not_loudest: u64,
    /// Simulcast layer switches made for subscribers (on keyframes).
    pub layer_switches: u64,
    /// Video subscriptions started from a GOP cache (fast start) instead of waiting for a
    /// keyframe, and the cached packets that replayed (also counted in `rtp_forwarded`).
    pub fast_starts: u64,
    pub fast_start_packets: u64,
    /// Subscribers' keyframe requests answered from a GOP cache, not sent to the publisher.
    pub keyframe_requests_from_cache: u64,
    /// Recorded packets lost because the recorder fell behind (its queue was full).
    pub recording_dropped: u64,
    /// Datagrams dropped because the send thread was behind (its queue of batches was full),
    /// like datagrams a full socket buffer refuses.
    pub dropped_send_queue_full: u64,
    /// Packets handed to other workers' mirrors (once per packet and worker), and received
    /// from the owners of the mirrored publications here.
    pub rtp_relayed_out: u64,
    pub rtp_relayed_in: u64,
    /// Transports that panicked on their participant's input and were closed
    /// (`SfuEvent::TransportFailed`).
    pub transport_failures: u64,
    /// Transports whose DTLS handshake failed (`SfuEvent::TransportFailed` with
    /// `TransportFailure::Dtls`).
    pub dtls_failures: u64,
}

impl EngineStats {
    /// Adds another engine's counters (the workers' sum).
    pub fn add(&mut self, other: &EngineStats) {
        self.datagrams_in += other.datagrams_in;
        self.bytes_in += other.bytes_in;
        self.datagrams_out += other.datagrams_out;
        self.bytes_out += other.bytes_out;
        self.rtp_in += other.rtp_in;
        self.rtp_forwarded += other.rtp_forwarded;
        self.dropped_oversize += other.dropped_oversize;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_unknown_source += other.dropped_unknown_source;
        self.dropped_unknown_ssrc += other.dropped_unknown_ssrc;
        self.dropped_muted += other.dropped_muted;
        self.dropped_unmapped_pt += other.dropped_unmapped_pt;
        self.dropped_stale += other.dropped_stale;
        self.held_awaiting_keyframe += other.held_awaiting_keyframe;
        self.keyframe_requests_received += other.keyframe_requests_received;
        self.keyframe_requests_sent += other.keyframe_requests_sent;
        self.keyframe_requests_throttled += other.keyframe_requests_throttled;
        self.nacks_received += other.nacks_received;
        self.refused_subscriptions += other.refused_subscriptions;
        self.refused_publications += other.refused_publications;
        self.dropped_other_layer += other.dropped_other_layer;
        self.dropped_not_loudest += other.dropped_not_loudest;
        self.layer_switches += other.layer_switches;
        self.fast_starts += other.fast_starts;
        self.fast_start_packets += other.fast_start_packets;
        self.keyframe_requests_from_cache += other.keyframe_requests_from_cache;
        self.recording_dropped += other.recording_dropped;
        self.dropped_send_queue_full += other.dropped_send_queue_full;
        self.rtp_relayed_out += other.rtp_relayed_out;
        self.rtp_relayed_in += other.rtp_relayed_in;
        self.transport_failures += other.transport_failures;
        self.dtls_failures += other.dtls_failures;
    }
}
