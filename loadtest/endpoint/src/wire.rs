//! Passive measurements on a bot's datagrams, read from the clear parts of SRTP and STUN.
//!
//! SRTP encrypts the payload but leaves the RTP header readable, so sequence numbers, timestamps
//! and SSRCs give packet loss and interarrival jitter (RFC 3550) without touching the decrypted
//! media. The ICE consent checks the bot sends (STUN binding requests, answered by the ICE-lite
//! server) give the round-trip time through the server's media thread. Per packet this is a
//! header read and one small map lookup, so it stays cheap for thousands of bots.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A video stream with no new frame for longer than this counts as frozen.
pub const FREEZE_THRESHOLD: Duration = Duration::from_millis(500);

/// STUN requests remembered while waiting for their responses; older ones are forgotten.
const MAX_PENDING_STUN: usize = 16;

/// The STUN magic cookie (RFC 5389), which tells STUN apart from other datagrams.
const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// What a negotiated payload type carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PayloadType {
    clock_rate: u32,
    video: bool,
}

/// One received RTP stream (one SSRC of a primary codec).
#[derive(Debug, Clone)]
struct Stream {
    clock_rate: u32,
    video: bool,
    /// Extended (wrap-counting) sequence numbers.
    first_seq: u64,
    max_seq: u64,
    received: u64,
    last_timestamp: u32,
    last_arrival: Instant,
    /// RFC 3550 interarrival jitter in RTP timestamp units.
    jitter: f64,
    /// When the newest frame (a new RTP timestamp) started to arrive.
    last_frame_at: Instant,
}

/// Totals over every stream a bot received, and its round-trip times.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireSummary {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    /// RTP packets the streams' sequence numbers say were sent (first to newest).
    pub packets_expected: u64,
    /// Distinct-or-not RTP packets that arrived on those streams (retransmissions excluded).
    pub packets_received: u64,
    /// The largest interarrival jitter among the audio streams, in milliseconds.
    pub audio_jitter_ms: Option<f64>,
    /// The largest interarrival jitter among the video streams, in milliseconds.
    pub video_jitter_ms: Option<f64>,
    /// Round trips of answered STUN consent checks.
    pub rtt_samples: u64,
    pub rtt_sum: Duration,
    pub rtt_max: Duration,
    /// Gaps between video frames longer than [`FREEZE_THRESHOLD`].
    pub freezes: u64,
    pub freeze_time: Duration,
    /// Video streams whose last frame is older than [`FREEZE_THRESHOLD`] right now.
    pub stalled_video_streams: u64,
}

impl WireSummary {
    /// Packets that never arrived, as a count (duplicates can make `received` exceed
    /// `expected`; that is not negative loss).
    pub fn packets_lost(&self) -> u64 {
        self.packets_expected.saturating_sub(self.packets_received)
    }

    pub fn rtt_mean(&self) -> Option<Duration> {
        (self.rtt_samples > 0).then(|| self.rtt_sum / self.rtt_samples as u32)
    }
}

/// The per-bot measuring state. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct WireStats {
    payload_types: HashMap<u8, PayloadType>,
    streams: HashMap<u32, Stream>,
    pending_stun: VecDeque<([u8; 12], Instant)>,
    datagrams_in: u64,
    bytes_in: u64,
    rtt_samples: u64,
    rtt_sum: Duration,
    rtt_max: Duration,
    freezes: u64,
    freeze_time: Duration,
}

impl WireStats {
    /// Learns the payload types of the primary codecs from an SDP (`a=rtpmap` lines).
    /// Retransmission, redundancy and FEC formats are left out: their packets carry their own
    /// sequence numbers and would blur the loss of the streams they repair.
    pub fn learn_payload_types(&mut self, sdp: &str) {
        for line in sdp.lines() {
            let Some(rest) = line.trim().strip_prefix("a=rtpmap:") else {
                continue;
            };
            let Some((pt, format)) = rest.split_once(' ') else {
                continue;
            };
            let Ok(pt) = pt.parse::<u8>() else {
                continue;
            };
            let mut parts = format.split('/');
            let name = parts.next().unwrap_or_default().to_ascii_lowercase();
            let Some(clock_rate) = parts.next().and_then(|c| c.parse::<u32>().ok()) else {
                continue;
            };
            if clock_rate == 0 || matches!(name.as_str(), "rtx" | "red" | "ulpfec" | "flexfec-03") {
                continue;
            }
            let video = matches!(name.as_str(), "vp8" | "vp9" | "h264" | "h265" | "av1");
            self.payload_types
                .insert(pt, PayloadType { clock_rate, video });
        }
    }

    /// Records one datagram that arrived at `now`.
    pub fn on_receive(&mut self, now: Instant, data: &[u8]) {
        self.datagrams_in += 1;
        self.bytes_in += data.len() as u64;
        match data.first() {
            // RFC 7983 demultiplexing: 0–3 is STUN, 128–191 is RTP or RTCP.
            Some(0..=3) => self.on_stun_in(now, data),
            Some(128..=191) => self.on_rtp_in(now, data),
            _ => {}
        }
    }

    /// Records one datagram the bot sends at `now` (only STUN requests matter).
    pub fn on_send(&mut self, now: Instant, data: &[u8]) {
        if let Some(id) = stun_transaction(data, [0x00, 0x01]) {
            if self.pending_stun.len() >= MAX_PENDING_STUN {
                self.pending_stun.pop_front();
            }
            self.pending_stun.push_back((id, now));
        }
    }

    fn on_stun_in(&mut self, now: Instant, data: &[u8]) {
        let Some(id) = stun_transaction(data, [0x01, 0x01]) else {
            return;
        };
        if let Some(index) = self.pending_stun.iter().position(|(t, _)| *t == id)
            && let Some((_, sent_at)) = self.pending_stun.remove(index)
        {
            let rtt = now.saturating_duration_since(sent_at);
            self.rtt_samples += 1;
            self.rtt_sum += rtt;
            self.rtt_max = self.rtt_max.max(rtt);
        }
    }

    fn on_rtp_in(&mut self, now: Instant, data: &[u8]) {
        let Some(header) = data.get(..12) else {
            return;
        };
        // RTCP packet types 192–223 occupy the second byte where RTP has marker + PT.
        if (192..=223).contains(&header[1]) {
            return;
        }
        let pt = header[1] & 0x7f;
        let Some(format) = self.payload_types.get(&pt).copied() else {
            return;
        };
        let seq = u16::from_be_bytes([header[2], header[3]]);
        let timestamp = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let Some(stream) = self.streams.get_mut(&ssrc) else {
            self.streams.insert(
                ssrc,
                Stream {
                    clock_rate: format.clock_rate,
                    video: format.video,
                    first_seq: u64::from(seq),
                    max_seq: u64::from(seq),
                    received: 1,
                    last_timestamp: timestamp,
                    last_arrival: now,
                    jitter: 0.0,
                    last_frame_at: now,
                },
            );
            return;
        };
        stream.received += 1;
        let extended = extend_seq(stream.max_seq, seq);
        if extended <= stream.max_seq {
            // Reordered or duplicated: counted, but it says nothing about timing.
            stream.first_seq = stream.first_seq.min(extended);
            return;
        }
        stream.max_seq = extended;
        let arrival = now
            .saturating_duration_since(stream.last_arrival)
            .as_secs_f64();
        let transit = arrival * f64::from(stream.clock_rate)
            - f64::from(timestamp.wrapping_sub(stream.last_timestamp) as i32);
        stream.jitter += (transit.abs() - stream.jitter) / 16.0;
        if timestamp != stream.last_timestamp {
            let gap = now.saturating_duration_since(stream.last_frame_at);
            if stream.video && gap > FREEZE_THRESHOLD {
                self.freezes += 1;
                self.freeze_time += gap;
            }
            stream.last_frame_at = now;
        }
        stream.last_timestamp = timestamp;
        stream.last_arrival = now;
    }

    /// Totals at `now` (which decides which video streams count as stalled).
    pub fn summary(&self, now: Instant) -> WireSummary {
        let mut summary = WireSummary {
            datagrams_in: self.datagrams_in,
            bytes_in: self.bytes_in,
            rtt_samples: self.rtt_samples,
            rtt_sum: self.rtt_sum,
            rtt_max: self.rtt_max,
            freezes: self.freezes,
            freeze_time: self.freeze_time,
            ..WireSummary::default()
        };
        for stream in self.streams.values() {
            summary.packets_expected += stream.max_seq - stream.first_seq + 1;
            summary.packets_received += stream.received;
            let jitter_ms = stream.jitter / f64::from(stream.clock_rate) * 1_000.0;
            let slot = if stream.video {
                &mut summary.video_jitter_ms
            } else {
                &mut summary.audio_jitter_ms
            };
            *slot = Some(slot.map_or(jitter_ms, |j: f64| j.max(jitter_ms)));
            if stream.video
                && now.saturating_duration_since(stream.last_frame_at) > FREEZE_THRESHOLD
            {
                summary.stalled_video_streams += 1;
            }
        }
        summary
    }
}

/// The transaction id of a STUN message of the given type, if `data` is one.
fn stun_transaction(data: &[u8], message_type: [u8; 2]) -> Option<[u8; 12]> {
    let header = data.get(..20)?;
    if header[..2] != message_type || header[4..8] != STUN_MAGIC {
        return None;
    }
    header[8..20].try_into().ok()
}

/// Extends a 16-bit sequence number to the wrap count nearest the newest one seen.
fn extend_seq(max: u64, seq: u16) -> u64 {
    let cycle = max & !0xffff;
    let candidates = [
        cycle.wrapping_sub(0x1_0000) | u64::from(seq),
        cycle | u64::from(seq),
        (cycle + 0x1_0000) | u64::from(seq),
    ];
    candidates
        .into_iter()
        .filter(|c| *c <= max + 0x8000 && *c + 0x8000 >= max)
        .min_by_key(|c| c.abs_diff(max))
        .unwrap_or(cycle | u64::from(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:96 VP8/90000\r\n\
                       a=rtpmap:97 rtx/90000\r\n";

    fn rtp(pt: u8, seq: u16, timestamp: u32, ssrc: u32) -> Vec<u8> {
        let mut packet = vec![0x80, pt];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&timestamp.to_be_bytes());
        packet.extend_from_slice(&ssrc.to_be_bytes());
        packet.extend_from_slice(&[0; 20]);
        packet
    }

    #[test]
    fn counts_loss_from_sequence_gaps_and_ignores_retransmissions() {
        let mut wire = WireStats::default();
        wire.learn_payload_types(SDP);
        let start = Instant::now();
        for seq in [65_534u16, 65_535, 0, 2, 3] {
            let at = start + Duration::from_millis(20 * u64::from(seq.wrapping_add(2)));
            wire.on_receive(at, &rtp(111, seq, u32::from(seq) * 960, 7));
        }
        wire.on_receive(start, &rtp(97, 1, 0, 8));
        let summary = wire.summary(start);
        assert_eq!(summary.packets_expected, 6);
        assert_eq!(summary.packets_received, 5);
        assert_eq!(summary.packets_lost(), 1);
        assert!(summary.audio_jitter_ms.is_some());
        assert_eq!(summary.datagrams_in, 6);
    }

    #[test]
    fn a_long_gap_between_video_frames_is_a_freeze() {
        let mut wire = WireStats::default();
        wire.learn_payload_types(SDP);
        let start = Instant::now();
        wire.on_receive(start, &rtp(96, 1, 0, 9));
        wire.on_receive(start + Duration::from_millis(33), &rtp(96, 2, 3_000, 9));
        wire.on_receive(start + Duration::from_millis(900), &rtp(96, 3, 6_000, 9));
        let summary = wire.summary(start + Duration::from_millis(900));
        assert_eq!(summary.freezes, 1);
        assert_eq!(summary.stalled_video_streams, 0);
        let later = wire.summary(start + Duration::from_secs(2));
        assert_eq!(later.stalled_video_streams, 1);
    }

    #[test]
    fn stun_round_trips_are_matched_by_transaction() {
        let mut wire = WireStats::default();
        let mut request = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(&[5; 12]);
        let mut response = request.clone();
        response[0] = 0x01;
        let start = Instant::now();
        wire.on_send(start, &request);
        wire.on_receive(start + Duration::from_millis(3), &response);
        let summary = wire.summary(start);
        assert_eq!(summary.rtt_samples, 1);
        assert_eq!(summary.rtt_max, Duration::from_millis(3));
    }

    #[test]
    fn garbage_is_ignored() {
        let mut wire = WireStats::default();
        wire.learn_payload_types("a=rtpmap:x y\r\na=rtpmap:5\r\na=rtpmap:7 opus/zero");
        let start = Instant::now();
        for data in [
            &[][..],
            &[0x80][..],
            &[0x01, 0x01, 0, 0][..],
            &[0x90; 40][..],
        ] {
            wire.on_receive(start, data);
        }
        assert_eq!(wire.summary(start).packets_expected, 0);
    }
}
