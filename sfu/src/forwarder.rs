//! Per-subscription rewriting of sequence numbers and timestamps.
//!
//! A subscriber sees one continuous RTP stream on its outgoing SSRC, whatever happens at the
//! source: the publisher restarts (new SSRC), the subscription is moved to another publication,
//! or packets before the first keyframe are withheld. The forwarder keeps an offset for the
//! sequence number and the timestamp and re-bases both when the source changes.

use std::time::Instant;

use crate::vp8::{Fields, Numbers, PictureIds};

/// The rewritten position of one packet in the outgoing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended outgoing sequence number (its rollover counter starts at 0).
    pub seq_no: u64,
    pub timestamp: u32,
}

/// The outgoing time of the first replayed frame, from [`Forwarder::begin_replay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStart {
    first_timestamp: u32,
}

/// Why the forwarder held a packet back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Video starts only on a keyframe; the caller should ask the publisher for one.
    AwaitingKeyframe,
    /// The packet belongs to the source before the last switch, or precedes the re-base point.
    Stale,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    /// Incoming extended sequence number that maps to `seq_base_out`.
    seq_base_in: u64,
    seq_base_out: u64,
    ts_offset: u32,
}

/// Rewrites one publication's packets for one subscriber.
#[derive(Debug)]
pub struct Forwarder {
    clock_rate: u32,
    is_video: bool,
    source: Option<Source>,
    /// The source replaced by the last automatic switch: its late packets are stale, so that
    /// reordering around a switch cannot flip the stream back.
    retired_ssrc: Option<u32>,
    awaiting_keyframe: bool,
    /// Highest outgoing sequence number written so far.
    last_seq_out: Option<u64>,
    last_ts_out: u32,
    last_sent_at: Option<Instant>,
    /// VP8 picture ids and TL0PICIDX, re-based with everything else.
    picture_ids: PictureIds,
}

impl Forwarder {
    /// `initial_seq` is where the outgoing sequence starts; it must be below 2^16 so the
    /// receiver's SRTP rollover counter starts at 0.
    pub fn new(clock_rate: u32, is_video: bool, initial_seq: u16) -> Self {
        Self {
            clock_rate,
            is_video,
            source: None,
            retired_ssrc: None,
            awaiting_keyframe: is_video,
            last_seq_out: initial_seq.checked_sub(1).map(u64::from),
            last_ts_out: u32::from(initial_seq).wrapping_mul(2_654_435_761),
            last_sent_at: None,
            picture_ids: PictureIds::default(),
        }
    }

    /// The VP8 counters of the packet just rewritten (by [`Forwarder::rewrite`] or
    /// [`Forwarder::rewrite_replayed`]), continuous across every re-base, and whether they
    /// differ from the source's.
    pub fn vp8_numbers(&mut self, fields: Fields) -> (Numbers, bool) {
        self.picture_ids.rewrite(fields)
    }

    /// Forgets the current source: the next packet re-bases the stream, and video waits for
    /// a keyframe. Used when the subscription is moved to another publication.
    pub fn reset_source(&mut self) {
        self.source = None;
        self.retired_ssrc = None;
        self.awaiting_keyframe = self.is_video;
    }

    /// Where the outgoing stream is: the last sequence number and timestamp written, and when
    /// (for logs).
    pub fn position(&self) -> (Option<u64>, u32, Option<Instant>) {
        (self.last_seq_out, self.last_ts_out, self.last_sent_at)
    }

    /// Whether the forwarder is withholding video until a keyframe arrives.
    pub fn awaiting_keyframe(&self) -> bool {
        self.awaiting_keyframe
    }

    /// Decides where an incoming packet goes in the outgoing stream.
    ///
    /// `seq_no` is the incoming extended sequence number, `timestamp` the incoming RTP time.
    pub fn rewrite(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq_no: u64,
        timestamp: u32,
        keyframe: bool,
    ) -> Result<Rewritten, Hold> {
        let same_source = self.source.is_some_and(|s| s.ssrc == ssrc);
        if !same_source && self.retired_ssrc == Some(ssrc) {
            return Err(Hold::Stale);
        }
        if !same_source {
            if self.awaiting_keyframe && !keyframe {
                return Err(Hold::AwaitingKeyframe);
            }
            self.rebase(now, ssrc, seq_no, timestamp);
        } else if self.awaiting_keyframe {
            if !keyframe {
                return Err(Hold::AwaitingKeyframe);
            }
            // The same source resumed after a hold: re-base so the gap does not show.
            self.rebase(now, ssrc, seq_no, timestamp);
        }
        self.awaiting_keyframe = false;

        let Some(source) = self.source else {
            return Err(Hold::Stale);
        };
        if seq_no < source.seq_base_in {
            return Err(Hold::Stale);
        }
        // Extended numbers come from the transport; one far beyond any stream's life is not
        // forwarded rather than overflowing the outgoing count.
        let Some(seq_out) = source.seq_base_out.checked_add(seq_no - source.seq_base_in) else {
            return Err(Hold::Stale);
        };
        Ok(self.emit(now, seq_out, timestamp.wrapping_add(source.ts_offset)))
    }

    /// Records an outgoing packet (the newest one sets where the stream is) and returns it.
    fn emit(&mut self, now: Instant, seq_no: u64, timestamp: u32) -> Rewritten {
        if self.last_seq_out.is_none_or(|last| seq_no > last) {
            self.last_seq_out = Some(seq_no);
            self.last_ts_out = timestamp;
            self.last_sent_at = Some(now);
        }
        Rewritten { seq_no, timestamp }
    }

    /// Starts the stream on cached packets (a keyframe and the frames after it, see
    /// [`crate::gop`]) instead of waiting for a live keyframe. The caller then writes each
    /// cached packet with [`Forwarder::rewrite_replayed`], in sequence order, and goes on with
    /// [`Forwarder::rewrite`] for the live packets of the same source.
    ///
    /// Sequence numbers are re-based as on any switch: the keyframe's first packet
    /// (`first_seq`) follows the last packet sent, and every later packet of the source,
    /// replayed or live, keeps its distance from it. The stream is therefore contiguous across
    /// the replay → live boundary, and a packet the replay and the live path both see (the
    /// one being forwarded when the replay starts, or a late retransmission) lands on the same
    /// outgoing number either way.
    ///
    /// Timestamps are compressed. The cached frames are old: the keyframe up to about the
    /// cache's age limit ago. A receiver's jitter buffer maps RTP time to its own clock from
    /// the frames it sees; given the frames with their original spacing, all arriving at
    /// once, it would schedule each at its original distance from the keyframe and play the
    /// stream that far (up to the GOP's length) behind live, shrinking that delay only slowly.
    /// So the replayed frames are placed one tick apart, starting where a switch would start
    /// (the last timestamp sent plus the wall time since): the decoder decodes them at once
    /// (each is needed as a reference) and shows the newest. Live frames then keep their
    /// original spacing from the last replayed frame (`last_timestamp`, which is mapped to
    /// the first replayed frame's time plus `frames - 1`), so the timeline stays monotonic
    /// and correctly paced from there on: the replay only shifts the stream's RTP clock
    /// forward by less than the GOP's duration, which is what any re-base does. `frames` is
    /// the number of distinct cached frames (RTP timestamps), at least 1.
    pub fn begin_replay(
        &mut self,
        now: Instant,
        ssrc: u32,
        first_seq: u64,
        last_timestamp: u32,
        frames: u32,
    ) -> ReplayStart {
        self.rebase(now, ssrc, first_seq, last_timestamp);
        self.awaiting_keyframe = false;
        let compressed = frames.saturating_sub(1);
        let mut first_timestamp = 0;
        if let Some(source) = self.source.as_mut() {
            // `rebase` mapped the last frame where the first must go; move the live mapping on
            // by the replayed frames' ticks.
            first_timestamp = last_timestamp.wrapping_add(source.ts_offset);
            source.ts_offset = source.ts_offset.wrapping_add(compressed);
        }
        ReplayStart { first_timestamp }
    }

    /// Where the replayed packet `seq_no`, of the `frame`-th cached frame (0 for the keyframe),
    /// goes in the outgoing stream. See [`Forwarder::begin_replay`].
    pub fn rewrite_replayed(
        &mut self,
        now: Instant,
        start: ReplayStart,
        seq_no: u64,
        frame: u32,
    ) -> Result<Rewritten, Hold> {
        let Some(source) = self.source else {
            return Err(Hold::Stale);
        };
        let Some(distance) = seq_no.checked_sub(source.seq_base_in) else {
            return Err(Hold::Stale);
        };
        Ok(self.emit(
            now,
            source
                .seq_base_out
                .checked_add(distance)
                .ok_or(Hold::Stale)?,
            start.first_timestamp.wrapping_add(frame),
        ))
    }

    fn rebase(&mut self, now: Instant, ssrc: u32, seq_no: u64, timestamp: u32) {
        let seq_base_out = self.last_seq_out.map_or(0, |s| s.saturating_add(1));
        // Advance the outgoing clock by the wall time since the last packet, so that the
        // receiver's jitter buffer sees a plausible timeline across the switch.
        let elapsed_ticks = self.last_sent_at.map_or(0, |at| {
            let elapsed = now.saturating_duration_since(at);
            (elapsed.as_micros() as u64 * u64::from(self.clock_rate) / 1_000_000) as u32
        });
        let ts_base_out = self.last_ts_out.wrapping_add(elapsed_ticks.max(1));
        if let Some(old) = self.source.filter(|old| old.ssrc != ssrc) {
            self.retired_ssrc = Some(old.ssrc);
        }
        self.picture_ids.reset_source();
        self.source = Some(Source {
            ssrc,
            seq_base_in: seq_no,
            seq_base_out,
            ts_offset: ts_base_out.wrapping_sub(timestamp),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A VP8 packet's first bytes: a descriptor with a 15-bit picture id and a TL0PICIDX.
    fn vp8(picture_id: u16, tl0: u8) -> Vec<u8> {
        let [high, low] = picture_id.to_be_bytes();
        vec![0x90, 0xc0, 0x80 | high, low, tl0, 0x9d]
    }

    /// What a receiver reads from the copy it is sent.
    fn sent_numbers(f: &mut Forwarder, payload: &[u8]) -> (u16, u8) {
        let fields = Fields::read(payload).expect("fields");
        let (numbers, changed) = f.vp8_numbers(fields);
        let sent = if changed {
            crate::vp8::patched(payload, fields, numbers)
        } else {
            payload.into()
        };
        let [_, _, high, low, tl0, ..] = sent[..] else {
            panic!("short");
        };
        (u16::from_be_bytes([high & 0x7f, low]), tl0)
    }

    #[test]
    fn vp8_picture_ids_stay_continuous_across_a_switch_and_a_replay() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, true, 100);
        let mut seen = Vec::new();
        // Layer 0 (SSRC 1): frames 40, 41 (TL0 7, 8), one packet each.
        for (n, pid) in [40u16, 41].into_iter().enumerate() {
            f.rewrite(t0, 1, 1_000 + n as u64, 3_000 * n as u32, n == 0)
                .expect("forwarded");
            seen.push(sent_numbers(&mut f, &vp8(pid, 7 + n as u8)));
        }
        // A switch to layer 2 (SSRC 3), whose encoder counts elsewhere: a keyframe, then more.
        f.reset_source();
        for (n, pid) in [9_000u16, 9_001].into_iter().enumerate() {
            f.rewrite(t0, 3, 50 + n as u64, 10 * n as u32, n == 0)
                .expect("forwarded");
            seen.push(sent_numbers(&mut f, &vp8(pid, 200 + n as u8)));
        }
        // A replay from the cache of layer 1 (SSRC 2): its keyframe and the frame after.
        let start = f.begin_replay(t0, 2, 700, 3_000, 2);
        for (frame, pid) in [500u16, 501].into_iter().enumerate() {
            f.rewrite_replayed(t0, start, 700 + frame as u64, frame as u32)
                .expect("replayed");
            seen.push(sent_numbers(&mut f, &vp8(pid, 60 + frame as u8)));
        }
        assert_eq!(
            seen,
            [(40, 7), (41, 8), (42, 9), (43, 10), (44, 11), (45, 12)],
            "every frame follows the last one sent"
        );
    }

    #[test]
    fn video_waits_for_a_keyframe_then_is_contiguous() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, true, 100);
        assert_eq!(
            f.rewrite(t0, 1, 5000, 9000, false),
            Err(Hold::AwaitingKeyframe)
        );
        let a = f.rewrite(t0, 1, 5001, 9000, true).expect("keyframe passes");
        let b = f
            .rewrite(t0, 1, 5002, 12000, false)
            .expect("then deltas pass");
        assert_eq!(a.seq_no, 100);
        assert_eq!(b.seq_no, 101);
        assert_eq!(b.timestamp.wrapping_sub(a.timestamp), 3000);
    }

    #[test]
    fn switching_source_keeps_the_stream_continuous() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(48_000, false, 10);
        let a = f
            .rewrite(t0, 1, 70_000, 1_000_000, false)
            .expect("audio needs no keyframe");
        let _ = f.rewrite(t0, 1, 70_001, 1_000_960, false).expect("next");
        // A new source with unrelated numbering, 20 ms later.
        let t1 = t0 + Duration::from_millis(20);
        let c = f.rewrite(t1, 2, 3, 77, false).expect("new source");
        assert_eq!(c.seq_no, a.seq_no + 2);
        assert_eq!(c.timestamp.wrapping_sub(a.timestamp), 960 + 960);
        // A late packet from the old source is stale.
        assert_eq!(f.rewrite(t1, 1, 70_002, 1_001_920, false), Err(Hold::Stale));
        // Reordered packets of the new source before its base are stale too.
        assert_eq!(f.rewrite(t1, 2, 2, 0, false), Err(Hold::Stale));
    }

    #[test]
    fn a_replay_is_contiguous_compressed_and_hands_over_to_live_frames() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, true, 100);
        // Cached: a keyframe of two packets at 9000, then frames at 15000 and 21000 (15 fps).
        let cached = [(5000, 9000), (5001, 9000), (5002, 15_000), (5003, 21_000)];
        let start = f.begin_replay(t0, 7, 5000, 21_000, 3);
        assert!(!f.awaiting_keyframe());
        let mut frame = 0;
        let mut out = Vec::new();
        for (i, &(seq, ts)) in cached.iter().enumerate() {
            if i > 0 && ts != cached[i - 1].1 {
                frame += 1;
            }
            out.push(f.rewrite_replayed(t0, start, seq, frame).expect("replayed"));
        }
        let seqs: Vec<u64> = out.iter().map(|r| r.seq_no).collect();
        assert_eq!(seqs, [100, 101, 102, 103]);
        let first = out[0].timestamp;
        let ticks: Vec<u32> = out
            .iter()
            .map(|r| r.timestamp.wrapping_sub(first))
            .collect();
        assert_eq!(ticks, [0, 0, 1, 2], "replayed frames one tick apart");
        // The live frames that follow keep their spacing from the last replayed frame, and
        // the rest of a frame that was cut by the replay keeps that frame's time.
        let t1 = t0 + Duration::from_millis(30);
        let rest = f.rewrite(t1, 7, 5004, 21_000, false).expect("live");
        let next = f.rewrite(t1, 7, 5005, 27_000, false).expect("live");
        assert_eq!(rest.seq_no, 104);
        assert_eq!(rest.timestamp, out[3].timestamp);
        assert_eq!(next.seq_no, 105);
        assert_eq!(next.timestamp.wrapping_sub(out[3].timestamp), 6000);
        // A late retransmission of a replayed packet keeps its position.
        let again = f.rewrite(t1, 7, 5001, 9000, false).expect("late copy");
        assert_eq!(again.seq_no, 101);
    }

    #[test]
    fn a_replay_after_earlier_media_continues_the_stream() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, true, 10);
        let a = f.rewrite(t0, 1, 70, 1_000, true).expect("keyframe");
        // Hidden, then shown again half a second later from another source's cache.
        f.reset_source();
        let t1 = t0 + Duration::from_millis(500);
        let start = f.begin_replay(t1, 2, 900, 50_000, 2);
        let k = f.rewrite_replayed(t1, start, 900, 0).expect("keyframe");
        let d = f.rewrite_replayed(t1, start, 901, 1).expect("delta");
        assert_eq!((k.seq_no, d.seq_no), (a.seq_no + 1, a.seq_no + 2));
        assert_eq!(k.timestamp.wrapping_sub(a.timestamp), 45_000);
        assert_eq!(d.timestamp.wrapping_sub(k.timestamp), 1);
        let live = f.rewrite(t1, 2, 902, 53_000, false).expect("live");
        assert_eq!(live.seq_no, d.seq_no + 1);
        assert_eq!(live.timestamp.wrapping_sub(d.timestamp), 3_000);
        // Packets from before the replayed keyframe are stale.
        assert_eq!(f.rewrite_replayed(t1, start, 899, 0), Err(Hold::Stale));
        assert_eq!(f.rewrite(t1, 2, 899, 47_000, false), Err(Hold::Stale));
    }

    #[test]
    fn retransmissions_keep_their_position() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, true, 0);
        let first = f.rewrite(t0, 1, 10, 0, true).expect("keyframe");
        let _ = f.rewrite(t0, 1, 12, 0, false).expect("skip one");
        let late = f
            .rewrite(t0, 1, 11, 0, false)
            .expect("the missing one arrives");
        assert_eq!(late.seq_no, first.seq_no + 1);
    }
}
