//! The packets of one video layer since its most recent keyframe (a "GOP cache"), kept so that
//! a new subscriber can start on that keyframe at once instead of waiting for the next one.
//!
//! A keyframe is expensive for the publisher and requests for one are throttled (one round a
//! second per publication), so without the cache a viewer joining mid-GOP waits up to a second
//! for its first picture. With it, the engine replays the cached keyframe and the frames after
//! it, then continues live (see [`crate::forwarder::Forwarder::begin_replay`]).
//!
//! The cache is a window of slots indexed by the incoming sequence number's distance from the
//! keyframe's first packet: packets that arrive out of order (retransmissions from the
//! publisher) land in their place, duplicates overwrite themselves, and a hole the publisher
//! never repaired is visible, so that a stream that would not decode is never replayed. The
//! slots are allocated once, at the layer's first keyframe, and reused: the per-packet work is
//! a slot write and a reference count increment on the shared payload.
//!
//! The cache is bounded in packets, in payload bytes and in age. A GOP that outgrows any bound
//! is dropped until the next keyframe; a subscriber then starts from a lower simulcast layer's
//! cache, or waits for a keyframe (asking for one through the throttle) as without fast start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::Pt;
use str0m::rtp::VideoOrientation;

/// One cached packet: what is needed to write it again to a subscriber.
#[derive(Debug, Clone)]
pub struct CachedPacket {
    /// Incoming extended sequence number.
    pub seq_no: u64,
    /// Incoming RTP timestamp.
    pub timestamp: u32,
    pub marker: bool,
    /// The publisher's payload type.
    pub pt: Pt,
    pub video_orientation: Option<VideoOrientation>,
    /// Shared with the live forwarding path and the subscribers' retransmission buffers.
    pub payload: Arc<[u8]>,
    /// When the packet arrived at the server.
    pub arrival: Instant,
    /// The video codec of its payload (VP8's picture ids are re-based per subscriber, see
    /// [`crate::vp8`]).
    pub codec: Option<crate::codec::VideoCodec>,
}

/// Where the cache stands.
#[derive(Debug, Clone, Copy)]
struct Window {
    ssrc: u32,
    /// Sequence number of the keyframe's first packet: slot 0.
    base_seq: u64,
    /// RTP timestamp of the keyframe, so that further packets of the same keyframe (an H.264
    /// SPS and its IDR slice both count as keyframe packets) do not restart the window.
    keyframe_timestamp: u32,
    started_at: Instant,
    /// Slots in use: one past the highest offset written.
    len: usize,
    /// Slots holding a packet; fewer than `len` means a hole.
    filled: usize,
    /// Bytes of payload held.
    bytes: usize,
}

/// What a replay needs to know before writing the first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPlan {
    pub ssrc: u32,
    /// Incoming sequence number of the keyframe's first packet.
    pub first_seq: u64,
    /// Incoming RTP timestamp of the newest cached frame.
    pub last_timestamp: u32,
    /// Distinct frames (RTP timestamps) cached, at least 1.
    pub frames: u32,
    /// When the newest cached packet arrived.
    pub last_arrival: Instant,
    pub packets: usize,
}

/// The limits of one layer's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GopLimits {
    /// Packets from the keyframe on; also the number of slots allocated per layer.
    pub max_packets: usize,
    /// Payload bytes from the keyframe on. A replay is written to the subscriber at once: this
    /// bounds the burst its link and socket buffer must absorb (unpaced without bandwidth
    /// estimation) and how long the pacer holds live packets behind it.
    pub max_bytes: usize,
    /// Age of the keyframe beyond which the cache is dropped: replaying a longer GOP would
    /// cost the subscriber's link more than a keyframe wait saves.
    pub max_age: Duration,
}

/// One layer's packets since its last keyframe.
#[derive(Debug, Default)]
pub struct GopCache {
    slots: Vec<Option<CachedPacket>>,
    window: Option<Window>,
    /// The newest packet seen, (SSRC, sequence number), kept across drops so that a late
    /// retransmission of an older keyframe does not restart the window in the past.
    newest: Option<(u32, u64)>,
}

impl GopCache {
    /// Adds a packet of this layer. `keyframe` marks a packet that starts a keyframe.
    pub fn push(
        &mut self,
        limits: GopLimits,
        ssrc: u32,
        packet: CachedPacket,
        keyframe: bool,
        now: Instant,
    ) {
        let seq = packet.seq_no;
        let newer = self.newest.is_none_or(|(s, n)| s != ssrc || seq > n);
        if newer {
            self.newest = Some((ssrc, seq));
        }
        let same_keyframe = self
            .window
            .is_some_and(|w| w.ssrc == ssrc && w.keyframe_timestamp == packet.timestamp);
        if keyframe && newer && !same_keyframe {
            self.restart(limits, ssrc, &packet, now);
        }
        let Some(window) = self.window.as_mut() else {
            return;
        };
        if window.ssrc != ssrc {
            // The publisher restarted its stream without a keyframe first: nothing after this
            // point decodes from the cached keyframe.
            self.clear();
            return;
        }
        let Some(offset) = seq.checked_sub(window.base_seq) else {
            // A late packet of the previous GOP.
            return;
        };
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let expired = now.saturating_duration_since(window.started_at) > limits.max_age;
        if offset >= limits.max_packets.min(self.slots.len()) || expired {
            self.clear();
            return;
        }
        let size = packet.payload.len();
        let slot = &mut self.slots[offset];
        match slot.replace(packet) {
            Some(old) => window.bytes = window.bytes + size - old.payload.len(),
            None => {
                window.filled += 1;
                window.bytes += size;
            }
        }
        window.len = window.len.max(offset + 1);
        if window.bytes > limits.max_bytes {
            self.clear();
        }
    }

    fn restart(&mut self, limits: GopLimits, ssrc: u32, keyframe: &CachedPacket, now: Instant) {
        self.clear();
        if self.slots.len() != limits.max_packets {
            // The layer's first keyframe (or changed limits): the only allocation.
            self.slots.clear();
            self.slots.resize_with(limits.max_packets, || None);
        }
        self.window = Some(Window {
            ssrc,
            base_seq: keyframe.seq_no,
            keyframe_timestamp: keyframe.timestamp,
            started_at: now,
            len: 0,
            filled: 0,
            bytes: 0,
        });
    }

    /// Drops every cached packet until the next keyframe.
    pub fn clear(&mut self) {
        if let Some(window) = self.window.take() {
            for slot in &mut self.slots[..window.len] {
                *slot = None;
            }
        }
    }

    /// Whether a replay could start a subscriber now: a keyframe within the age limit, and no
    /// hole after it. Constant time, so it may be asked for every packet.
    pub fn ready(&self, limits: GopLimits, now: Instant) -> bool {
        self.window.is_some_and(|w| {
            w.len > 0
                && w.filled == w.len
                && now.saturating_duration_since(w.started_at) <= limits.max_age
        })
    }

    /// Whether the cache is ready and its keyframe at most half the age limit old: it will
    /// still serve joiners for a while.
    pub fn fresh(&self, limits: GopLimits, now: Instant) -> bool {
        self.ready(limits, now)
            && self
                .window
                .is_some_and(|w| now.saturating_duration_since(w.started_at) <= limits.max_age / 2)
    }

    /// Whether the cache is ready but its keyframe exceeds the age limit within `margin`: a
    /// subscription that will start from it later must have the next keyframe asked for now.
    pub fn expires_within(&self, limits: GopLimits, now: Instant, margin: Duration) -> bool {
        self.ready(limits, now)
            && self.window.is_some_and(|w| {
                now.saturating_duration_since(w.started_at) + margin > limits.max_age
            })
    }

    /// The replay's parameters, when [`GopCache::ready`].
    pub fn plan(&self, limits: GopLimits, now: Instant) -> Option<ReplayPlan> {
        if !self.ready(limits, now) {
            return None;
        }
        let window = self.window?;
        let mut frames = 0u32;
        let mut last: Option<&CachedPacket> = None;
        for packet in self.packets() {
            if last.is_none_or(|l| l.timestamp != packet.timestamp) {
                frames += 1;
            }
            last = Some(packet);
        }
        let last = last?;
        Some(ReplayPlan {
            ssrc: window.ssrc,
            first_seq: window.base_seq,
            last_timestamp: last.timestamp,
            frames,
            last_arrival: last.arrival,
            packets: window.len,
        })
    }

    /// The cached packets in sequence order, from the keyframe's first packet on.
    pub fn packets(&self) -> impl Iterator<Item = &CachedPacket> {
        let len = self.window.map_or(0, |w| w.len);
        self.slots[..len].iter().flatten()
    }

    /// Packets and payload bytes held.
    pub fn size(&self) -> (usize, usize) {
        self.window.map_or((0, 0), |w| (w.filled, w.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: GopLimits = GopLimits {
        max_packets: 8,
        max_bytes: 1_000,
        max_age: Duration::from_secs(2),
    };

    fn packet(seq_no: u64, timestamp: u32, at: Instant) -> CachedPacket {
        CachedPacket {
            codec: None,
            seq_no,
            timestamp,
            marker: true,
            pt: Pt::from(96),
            video_orientation: None,
            payload: Arc::from(&[0u8; 10][..]),
            arrival: at,
        }
    }

    fn seqs(cache: &GopCache) -> Vec<u64> {
        cache.packets().map(|p| p.seq_no).collect()
    }

    #[test]
    fn the_window_starts_on_a_keyframe_and_restarts_on_the_next() {
        let t0 = Instant::now();
        let mut cache = GopCache::default();
        // Deltas before any keyframe are useless.
        cache.push(LIMITS, 1, packet(9, 0, t0), false, t0);
        assert!(!cache.ready(LIMITS, t0));
        cache.push(LIMITS, 1, packet(10, 3000, t0), true, t0);
        cache.push(LIMITS, 1, packet(11, 6000, t0), false, t0);
        assert_eq!(seqs(&cache), [10, 11]);
        let plan = cache.plan(LIMITS, t0).expect("ready");
        assert_eq!(
            (plan.first_seq, plan.frames, plan.last_timestamp),
            (10, 2, 6000)
        );
        cache.push(LIMITS, 1, packet(12, 9000, t0), true, t0);
        assert_eq!(seqs(&cache), [12]);
        assert_eq!(cache.size(), (1, 10));
    }

    #[test]
    fn packets_of_one_keyframe_frame_do_not_restart_it() {
        let t0 = Instant::now();
        let mut cache = GopCache::default();
        // An H.264 SPS and its IDR slice both look like keyframe starts.
        cache.push(LIMITS, 1, packet(10, 3000, t0), true, t0);
        cache.push(LIMITS, 1, packet(11, 3000, t0), true, t0);
        cache.push(LIMITS, 1, packet(12, 6000, t0), false, t0);
        assert_eq!(seqs(&cache), [10, 11, 12]);
        assert_eq!(cache.plan(LIMITS, t0).map(|p| p.frames), Some(2));
    }

    #[test]
    fn a_hole_blocks_replay_until_repaired_and_duplicates_are_harmless() {
        let t0 = Instant::now();
        let mut cache = GopCache::default();
        cache.push(LIMITS, 1, packet(10, 0, t0), true, t0);
        cache.push(LIMITS, 1, packet(12, 3000, t0), false, t0);
        assert!(!cache.ready(LIMITS, t0), "11 is missing");
        cache.push(LIMITS, 1, packet(11, 0, t0), false, t0);
        cache.push(LIMITS, 1, packet(11, 0, t0), false, t0);
        assert!(cache.ready(LIMITS, t0));
        assert_eq!(seqs(&cache), [10, 11, 12]);
        // A late packet from before the keyframe is ignored, and so is a late retransmission
        // of an older keyframe.
        cache.push(LIMITS, 1, packet(9, 0, t0), false, t0);
        cache.push(LIMITS, 1, packet(5, 100, t0), true, t0);
        assert_eq!(seqs(&cache), [10, 11, 12]);
    }

    #[test]
    fn a_gop_beyond_the_limits_is_dropped_until_the_next_keyframe() {
        let t0 = Instant::now();
        let mut cache = GopCache::default();
        cache.push(LIMITS, 1, packet(100, 0, t0), true, t0);
        for seq in 101..108 {
            cache.push(LIMITS, 1, packet(seq, 0, t0), false, t0);
        }
        assert!(cache.ready(LIMITS, t0));
        cache.push(LIMITS, 1, packet(108, 0, t0), false, t0);
        assert!(
            !cache.ready(LIMITS, t0),
            "nine packets exceed the eight slots"
        );
        cache.push(LIMITS, 1, packet(109, 0, t0), false, t0);
        assert!(!cache.ready(LIMITS, t0));
        assert_eq!(cache.size(), (0, 0));

        let t1 = t0 + Duration::from_secs(1);
        cache.push(LIMITS, 1, packet(110, 9, t1), true, t1);
        assert!(cache.ready(LIMITS, t1));
        assert!(cache.fresh(LIMITS, t1 + Duration::from_secs(1)));
        assert!(!cache.fresh(LIMITS, t1 + Duration::from_millis(1001)));
        assert!(cache.ready(LIMITS, t1 + Duration::from_millis(1001)));
        let late = t1 + Duration::from_millis(2001);
        assert!(!cache.ready(LIMITS, late), "too old to replay");
        cache.push(LIMITS, 1, packet(111, 9, late), false, late);
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn a_gop_beyond_the_byte_budget_is_dropped() {
        let t0 = Instant::now();
        let limits = GopLimits {
            max_bytes: 35,
            ..LIMITS
        };
        let mut cache = GopCache::default();
        for seq in 10..13 {
            cache.push(limits, 1, packet(seq, 0, t0), seq == 10, t0);
        }
        assert_eq!(cache.size(), (3, 30));
        assert!(cache.ready(limits, t0));
        cache.push(limits, 1, packet(13, 0, t0), false, t0);
        assert!(!cache.ready(limits, t0), "40 bytes exceed the 35 allowed");
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn a_new_ssrc_without_a_keyframe_drops_the_cache() {
        let t0 = Instant::now();
        let mut cache = GopCache::default();
        cache.push(LIMITS, 1, packet(10, 0, t0), true, t0);
        cache.push(LIMITS, 2, packet(500, 0, t0), false, t0);
        assert!(!cache.ready(LIMITS, t0));
        cache.push(LIMITS, 2, packet(501, 90, t0), true, t0);
        assert_eq!(cache.plan(LIMITS, t0).map(|p| p.ssrc), Some(2));
    }
}
