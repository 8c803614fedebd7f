//! Property tests for the [`Forwarder`], the per-subscription rewriter of sequence numbers and
//! timestamps: whatever the source does (arbitrary starting numbers, wraps, gaps, reordering,
//! duplicates, a publisher restarting with a new SSRC), however the subscription moves
//! (simulcast layer switches on keyframes, hiding and showing, fast starts from a cached GOP),
//! the subscriber's outgoing stream stays one contiguous, monotonic RTP stream.
//!
//! Two generators:
//!
//! - [`engine_like`] drives the forwarder the way `engine.rs` does (only the current layer's
//!   packets reach it; a switch is `reset_source` then the new layer's keyframe; a fast start is
//!   `reset_source`, `begin_replay`, the cached packets in order, then live packets of that
//!   layer) and checks the stream's invariants exactly, against the source's own numbering.
//! - [`arbitrary_calls`] calls the public API in any order with any arguments (within the
//!   48-bit range of an extended RTP sequence number) and checks what must hold whatever the
//!   caller does: no panic, no output before a keyframe, no output sequence number shared by
//!   two different input packets, a position that never moves backwards.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sfu::forwarder::{Forwarder, Hold, Rewritten};

const VIDEO_CLOCK: u32 = 90_000;
const AUDIO_CLOCK: u32 = 48_000;
const LAYERS: usize = 3;

/// RTP timestamps compare in wrapping arithmetic: `a` is after `b` when `a - b` is in
/// `[1, 2^31)`.
fn ts_forward(from: u32, to: u32) -> u32 {
    to.wrapping_sub(from)
}

/// What the forwarder adds to the outgoing clock across a re-base: the wall time since the
/// newest packet sent, in ticks, at least one.
fn elapsed_ticks(clock: u32, since: Option<Instant>, now: Instant) -> u32 {
    let ticks = since.map_or(0, |at| {
        let elapsed = now.saturating_duration_since(at);
        (elapsed.as_micros() as u64 * u64::from(clock) / 1_000_000) as u32
    });
    ticks.max(1)
}

/// One packet as the publisher sent it; `seq` is its extended sequence number as the receiving
/// transport (str0m) extends it: the 16-bit number plus 65536 × rollovers, from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packet {
    ssrc: u32,
    seq: u64,
    timestamp: u32,
    keyframe: bool,
}

/// One simulcast layer (or the one stream of a plain publication) of the publisher.
#[derive(Debug)]
struct Layer {
    ssrc: u32,
    next_seq: u64,
    timestamp: u32,
    /// Every packet sent on the current SSRC, lost or delivered: late arrivals,
    /// retransmissions and duplicates come from here.
    history: Vec<Packet>,
    /// The SSRC and packets before the last restart.
    retired: Option<(u32, Vec<Packet>)>,
}

impl Layer {
    fn new(ssrc: u32, first_seq: u16, timestamp: u32) -> Self {
        Self {
            ssrc,
            next_seq: u64::from(first_seq),
            timestamp,
            history: Vec::new(),
            retired: None,
        }
    }

    /// The next packet; `gap` packets before it are lost (sent, never delivered live).
    fn send(&mut self, gap: u16, new_frame: bool, keyframe: bool, frame_ticks: u32) -> Packet {
        for _ in 0..gap {
            let lost = Packet {
                ssrc: self.ssrc,
                seq: self.next_seq,
                timestamp: self.timestamp,
                keyframe: false,
            };
            self.history.push(lost);
            self.next_seq += 1;
        }
        // A keyframe is the first packet of a new frame.
        if new_frame || keyframe {
            self.timestamp = self.timestamp.wrapping_add(frame_ticks.max(1));
        }
        let packet = Packet {
            ssrc: self.ssrc,
            seq: self.next_seq,
            timestamp: self.timestamp,
            keyframe,
        };
        self.next_seq += 1;
        self.history.push(packet);
        packet
    }

    /// The publisher restarted this layer: a new SSRC with new numbering.
    fn restart(&mut self, first_seq: u16, timestamp: u32) {
        let history = std::mem::take(&mut self.history);
        self.retired = Some((self.ssrc, history));
        self.ssrc = self.ssrc.wrapping_add(0x0100_0000);
        self.next_seq = u64::from(first_seq);
        self.timestamp = timestamp;
    }

    /// Time passed on a layer nobody received: its numbering moved on.
    fn skip_ahead(&mut self, packets: u16, ticks: u32) {
        self.next_seq += u64::from(packets);
        self.timestamp = self.timestamp.wrapping_add(ticks);
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// The current layer's next packet arrives; `gap` packets before it were lost.
    Live {
        gap: u16,
        new_frame: bool,
        keyframe: bool,
        frame_ticks: u32,
        after_ms: u32,
    },
    /// A packet of the current layer sent earlier arrives (again): reordering, a
    /// retransmission of a lost packet, or a duplicate. `back` counts from the newest.
    Late { back: usize },
    /// The allocator moved the subscription to `layer`: the engine resets the forwarder on
    /// that layer's keyframe and forwards the keyframe.
    Switch {
        layer: usize,
        skipped: u16,
        skipped_ticks: u32,
        after_ms: u32,
    },
    /// The publisher restarted the current layer: a new SSRC and numbering, forwarded as they
    /// come (an automatic switch, no reset).
    Restart {
        first_seq: u16,
        timestamp: u32,
        keyframe: bool,
    },
    /// A late packet of the SSRC that the last restart replaced.
    LateRetired { back: usize },
    /// The subscription was hidden (or not loudest), then shown again: a reset; video waits
    /// for a keyframe.
    Reset { after_ms: u32 },
    /// Fast start: a reset, then the cached GOP of `layer` (a keyframe, then frames of
    /// `frames[i]` packets each) replayed, then live packets of that layer.
    Replay {
        layer: usize,
        frames: Vec<u8>,
        frame_ticks: u32,
        after_ms: u32,
    },
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let gap = prop_oneof![8 => Just(0u16), 1 => 1u16..4];
    let live = (
        gap,
        prop::bool::weighted(0.4),
        prop::bool::weighted(0.15),
        1u32..6_000,
        0u32..100,
    )
        .prop_map(
            |(gap, new_frame, keyframe, frame_ticks, after_ms)| Step::Live {
                gap,
                new_frame,
                keyframe,
                frame_ticks,
                after_ms,
            },
        );
    prop_oneof![
        12 => live,
        3 => (0usize..12).prop_map(|back| Step::Late { back }),
        2 => (0..LAYERS, 0u16..2_000, any::<u32>(), 0u32..3_000).prop_map(
            |(layer, skipped, skipped_ticks, after_ms)| Step::Switch {
                layer,
                skipped,
                skipped_ticks,
                after_ms,
            }
        ),
        1 => (any::<u16>(), any::<u32>(), any::<bool>()).prop_map(
            |(first_seq, timestamp, keyframe)| Step::Restart {
                first_seq,
                timestamp,
                keyframe,
            }
        ),
        1 => (0usize..12).prop_map(|back| Step::LateRetired { back }),
        1 => (0u32..60_000).prop_map(|after_ms| Step::Reset { after_ms }),
        2 => (
            0..LAYERS,
            prop::collection::vec(1u8..4, 1..6),
            1u32..6_000,
            0u32..3_000
        )
            .prop_map(|(layer, frames, frame_ticks, after_ms)| Step::Replay {
                layer,
                frames,
                frame_ticks,
                after_ms,
            }),
    ]
}

/// The outgoing stream as the subscriber sees it, tracked independently of the forwarder.
#[derive(Debug)]
struct Outgoing {
    initial_seq: u16,
    /// The highest sequence number sent, the timestamp of that packet and when it was sent.
    newest: Option<(u64, u32, Instant)>,
    /// The input packet behind every outgoing sequence number.
    origin: HashMap<u64, (u32, u64)>,
}

impl Outgoing {
    fn next_seq(&self) -> u64 {
        self.newest
            .map_or(u64::from(self.initial_seq), |(seq, _, _)| seq + 1)
    }

    /// Records one forwarded packet and checks that its sequence number does not already
    /// stand for another input packet.
    fn record(&mut self, now: Instant, input: (u32, u64), out: Rewritten) {
        if let Some(previous) = self.origin.insert(out.seq_no, input) {
            assert_eq!(
                previous, input,
                "outgoing sequence number {} given to two different input packets",
                out.seq_no
            );
        }
        if self.newest.is_none_or(|(seq, _, _)| out.seq_no > seq) {
            self.newest = Some((out.seq_no, out.timestamp, now));
        }
    }
}

/// The mapping of one source onto the outgoing stream, from the packet that started it.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    ssrc: u32,
    first_in: u64,
    first_out: u64,
    /// An input timestamp and the outgoing timestamp live packets map it to.
    ts_in: u32,
    ts_out: u32,
}

struct Driver {
    forwarder: Forwarder,
    is_video: bool,
    clock: u32,
    now: Instant,
    layers: Vec<Layer>,
    current: usize,
    out: Outgoing,
    epoch: Option<Epoch>,
    /// Video after a reset: nothing may be forwarded before a keyframe.
    gate_closed: bool,
    /// The next packet forwarded starts a new epoch (a reset or a new SSRC came before it).
    boundary: bool,
    /// A replay's packets, their outgoing positions and frame indices, for checking live
    /// copies of the same packets.
    replayed: HashMap<(u32, u64), (Rewritten, bool)>,
    /// The SSRC the last restart of the current layer replaced, if the forwarder was
    /// forwarding it then and has not been reset since (see [`Step::LateRetired`]).
    retired_live: Option<u32>,
}

impl Driver {
    fn new(is_video: bool, initial_seq: u16, starts: &[(u16, u32)]) -> Self {
        let clock = if is_video { VIDEO_CLOCK } else { AUDIO_CLOCK };
        let layers = starts
            .iter()
            .enumerate()
            .map(|(i, &(seq, ts))| Layer::new(0x1000 + i as u32, seq, ts))
            .collect();
        Self {
            forwarder: Forwarder::new(clock, is_video, initial_seq),
            is_video,
            clock,
            now: Instant::now(),
            layers,
            current: 0,
            out: Outgoing {
                initial_seq,
                newest: None,
                origin: HashMap::new(),
            },
            epoch: None,
            gate_closed: is_video,
            boundary: true,
            replayed: HashMap::new(),
            retired_live: None,
        }
    }

    fn advance(&mut self, ms: u32) {
        self.now += Duration::from_millis(u64::from(ms));
    }

    /// Hands one live packet to the forwarder and checks the outcome.
    fn forward(&mut self, packet: Packet) {
        // Audio has no keyframes: the engine passes `false`.
        let keyframe = packet.keyframe && self.is_video;
        let before = self.out.newest;
        let result = self.forwarder.rewrite(
            self.now,
            packet.ssrc,
            packet.seq,
            packet.timestamp,
            keyframe,
        );
        if self.gate_closed && !keyframe {
            assert_eq!(
                result,
                Err(Hold::AwaitingKeyframe),
                "video forwarded before a keyframe: {packet:?}"
            );
            assert!(self.forwarder.awaiting_keyframe());
            return;
        }
        if self.boundary {
            // The first packet of a new source (or after a reset) re-bases the stream: it
            // follows the newest packet sent, one sequence number on, and later in time by
            // the wall time since (at least one tick).
            let out = result.unwrap_or_else(|hold| {
                panic!("the first packet after a switch was held ({hold:?}): {packet:?}")
            });
            assert_eq!(
                out.seq_no,
                self.out.next_seq(),
                "the stream is not contiguous across a switch"
            );
            if let Some((_, ts, at)) = before {
                let forward = ts_forward(ts, out.timestamp);
                assert_eq!(
                    forward,
                    elapsed_ticks(self.clock, Some(at), self.now),
                    "the timestamp across a switch does not follow the wall time"
                );
                assert!(
                    forward < 1 << 31,
                    "the timestamp went backwards across a switch"
                );
            }
            self.epoch = Some(Epoch {
                ssrc: packet.ssrc,
                first_in: packet.seq,
                first_out: out.seq_no,
                ts_in: packet.timestamp,
                ts_out: out.timestamp,
            });
            self.boundary = false;
            self.gate_closed = false;
            self.replayed.clear();
            self.out.record(self.now, (packet.ssrc, packet.seq), out);
            return;
        }
        let epoch = self.epoch.expect("an epoch once the boundary passed");
        assert_eq!(
            packet.ssrc, epoch.ssrc,
            "the driver feeds the current source"
        );
        if packet.seq < epoch.first_in {
            // From before the keyframe (or replay) the stream restarted on.
            assert_eq!(
                result,
                Err(Hold::Stale),
                "a packet from before the re-base point was forwarded: {packet:?}"
            );
            return;
        }
        let out =
            result.unwrap_or_else(|hold| panic!("a live packet was held ({hold:?}): {packet:?}"));
        // Sequence numbers keep the source's distances: contiguous input stays contiguous,
        // a loss stays a gap the receiver can NACK, and no two input packets collide.
        assert_eq!(
            out.seq_no - epoch.first_out,
            packet.seq - epoch.first_in,
            "sequence numbers within one source are not the source's, shifted"
        );
        if let Some((seq, _, _)) = before
            && packet.seq - epoch.first_in == seq + 1 - epoch.first_out
        {
            assert_eq!(
                out.seq_no,
                seq + 1,
                "the next packet is not the next number"
            );
        }
        // Timestamps keep the source's spacing.
        assert_eq!(
            ts_forward(epoch.ts_out, out.timestamp),
            ts_forward(epoch.ts_in, packet.timestamp),
            "timestamps within one source are not the source's, shifted"
        );
        // A packet both replayed and seen live lands on the same number (and, in the last
        // replayed frame, the same time).
        if let Some(&(replayed, last_frame)) = self.replayed.get(&(packet.ssrc, packet.seq)) {
            assert_eq!(out.seq_no, replayed.seq_no, "a replayed packet moved");
            if last_frame {
                assert_eq!(out.timestamp, replayed.timestamp);
            }
        }
        self.out.record(self.now, (packet.ssrc, packet.seq), out);
    }

    fn run(&mut self, step: &Step) {
        match *step {
            Step::Live {
                gap,
                new_frame,
                keyframe,
                frame_ticks,
                after_ms,
            } => {
                self.advance(after_ms);
                let packet = self.layers[self.current].send(gap, new_frame, keyframe, frame_ticks);
                self.forward(packet);
            }
            Step::Late { back } => {
                let history = &self.layers[self.current].history;
                if let Some(&packet) = history.len().checked_sub(back + 1).map(|i| &history[i]) {
                    self.forward(packet);
                }
            }
            Step::Switch {
                layer,
                skipped,
                skipped_ticks,
                after_ms,
            } => {
                self.advance(after_ms);
                if layer != self.current {
                    self.layers[layer].skip_ahead(skipped, skipped_ticks);
                }
                // The engine switches on the new layer's keyframe: reset, then forward it.
                let keyframe = self.layers[layer].send(0, true, true, 3_000);
                self.current = layer;
                self.forwarder.reset_source();
                self.retired_live = None;
                self.gate_closed = self.is_video;
                self.boundary = true;
                self.forward(keyframe);
            }
            Step::Restart {
                first_seq,
                timestamp,
                keyframe,
            } => {
                let replaced = self.layers[self.current].ssrc;
                self.layers[self.current].restart(first_seq, timestamp);
                // What the forwarder guarantees today: the SSRC it was forwarding when the
                // new one replaced it is stale from then on (until a reset).
                let forwarding = !self.boundary && self.epoch.is_some_and(|e| e.ssrc == replaced);
                self.retired_live = forwarding.then_some(replaced);
                self.boundary = true;
                let packet = self.layers[self.current].send(0, true, keyframe, 3_000);
                self.forward(packet);
            }
            Step::LateRetired { back } => {
                let layer = &self.layers[self.current];
                let Some((ssrc, history)) = &layer.retired else {
                    return;
                };
                // A late packet (or retransmission) of the SSRC a publisher restart replaced,
                // while the forwarder still forwards its successor, must never take the stream
                // back. After a reset the forwarder alone would be fooled; the engine refuses
                // such packets before it (a layer never turns back to a replaced SSRC, see
                // `engine::tests::a_layer_never_turns_back_to_a_replaced_ssrc`).
                let unreset = self.retired_live == Some(*ssrc);
                if self.boundary || *ssrc == layer.ssrc || !unreset {
                    return;
                }
                if let Some(&packet) = history.len().checked_sub(back + 1).map(|i| &history[i]) {
                    let result = self.forwarder.rewrite(
                        self.now,
                        packet.ssrc,
                        packet.seq,
                        packet.timestamp,
                        packet.keyframe && self.is_video,
                    );
                    assert!(
                        result.is_err(),
                        "a late packet of a replaced SSRC took the stream back: {result:?}"
                    );
                }
            }
            Step::Reset { after_ms } => {
                self.advance(after_ms);
                self.forwarder.reset_source();
                self.retired_live = None;
                self.gate_closed = self.is_video;
                self.boundary = true;
            }
            Step::Replay {
                layer,
                ref frames,
                frame_ticks,
                after_ms,
            } => {
                if !self.is_video {
                    return;
                }
                self.advance(after_ms);
                // The GOP the cache holds: sent while this subscriber was not receiving.
                let source = &mut self.layers[layer];
                let mut cached = Vec::new();
                for (index, &packets) in frames.iter().enumerate() {
                    for p in 0..packets {
                        let packet = source.send(0, p == 0, index == 0 && p == 0, frame_ticks);
                        cached.push((packet, index as u32));
                    }
                }
                let first = cached[0].0;
                let last = cached[cached.len() - 1];
                let before = self.out.newest;
                self.current = layer;
                self.forwarder.reset_source();
                self.retired_live = None;
                let start = self.forwarder.begin_replay(
                    self.now,
                    first.ssrc,
                    first.seq,
                    last.0.timestamp,
                    frames.len() as u32,
                );
                assert!(!self.forwarder.awaiting_keyframe());
                let first_out = self.out.next_seq();
                let first_ts = before.map(|(_, ts, at)| {
                    ts.wrapping_add(elapsed_ticks(self.clock, Some(at), self.now))
                });
                self.replayed.clear();
                let mut replay_first_ts = None;
                for &(packet, frame) in &cached {
                    let out = self
                        .forwarder
                        .rewrite_replayed(self.now, start, packet.seq, frame)
                        .expect("a cached packet replays");
                    assert_eq!(
                        out.seq_no,
                        first_out + (packet.seq - first.seq),
                        "the replay is not contiguous with what was sent before"
                    );
                    let base = *replay_first_ts.get_or_insert(out.timestamp);
                    if let Some(expected) = first_ts {
                        assert_eq!(base, expected, "the replay does not start after the stream");
                    }
                    // Replayed frames are one tick apart.
                    assert_eq!(ts_forward(base, out.timestamp), frame);
                    self.replayed.insert(
                        (packet.ssrc, packet.seq),
                        (out, frame as usize == frames.len() - 1),
                    );
                    self.out.record(self.now, (packet.ssrc, packet.seq), out);
                }
                let base = replay_first_ts.expect("at least one frame");
                // Live packets keep their spacing from the last replayed frame.
                self.epoch = Some(Epoch {
                    ssrc: first.ssrc,
                    first_in: first.seq,
                    first_out,
                    ts_in: last.0.timestamp,
                    ts_out: base.wrapping_add(frames.len() as u32 - 1),
                });
                self.gate_closed = false;
                self.boundary = false;
            }
        }
        // The forwarder's own account of where the stream is agrees.
        let (seq, ts, at) = self.forwarder.position();
        match self.out.newest {
            Some((newest, newest_ts, newest_at)) => {
                assert_eq!(seq, Some(newest));
                assert_eq!(ts, newest_ts);
                assert_eq!(at, Some(newest_at));
            }
            None => assert_eq!(seq, u64::from(self.out.initial_seq).checked_sub(1)),
        }
    }
}

proptest! {
    #[test]
    fn engine_like(
        is_video in any::<bool>(),
        initial_seq in any::<u16>(),
        starts in prop::collection::vec((any::<u16>(), any::<u32>()), LAYERS),
        steps in prop::collection::vec(step_strategy(), 1..200),
    ) {
        let mut driver = Driver::new(is_video, initial_seq, &starts);
        for step in &steps {
            driver.run(step);
        }
        // On the wire the numbers are 16 bits: consecutive extended numbers stay
        // consecutive modulo 2^16 through the wrap.
        let mut sent: Vec<u64> = driver.out.origin.keys().copied().collect();
        sent.sort_unstable();
        for pair in sent.windows(2) {
            if pair[1] == pair[0] + 1 {
                prop_assert_eq!(pair[1] as u16, (pair[0] as u16).wrapping_add(1));
            }
        }
        if let Some(&first) = sent.first() {
            prop_assert!(first >= u64::from(initial_seq));
            prop_assert_eq!(first as u16, initial_seq, "the stream starts where it was told to");
        }
    }
}

/// One call of the forwarder's API with arbitrary arguments.
#[derive(Debug, Clone)]
enum Call {
    Rewrite {
        ssrc: u32,
        seq: u64,
        timestamp: u32,
        keyframe: bool,
        after_ms: u32,
    },
    Reset,
    BeginReplay {
        ssrc: u32,
        first_seq: u64,
        last_timestamp: u32,
        frames: u32,
        after_ms: u32,
    },
    /// `rewrite_replayed` with the start of the last replay begun, as long as no live packet
    /// or reset came after it (the API's contract: the cached packets first, then live ones).
    Replayed {
        seq: u64,
        frame: u32,
    },
}

/// Sequence numbers near a few bases, so that calls hit each other's ranges, up to the 48
/// bits of an extended RTP sequence number (a 32-bit rollover counter and 16 bits).
fn seq_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..64),
        (65_500u64..65_600),
        (0u64..1 << 48),
        ((1u64 << 48) - 64..1 << 48),
    ]
}

fn call_strategy() -> impl Strategy<Value = Call> {
    let ssrc = 1u32..4;
    prop_oneof![
        6 => (ssrc.clone(), seq_strategy(), any::<u32>(), any::<bool>(), 0u32..10_000).prop_map(
            |(ssrc, seq, timestamp, keyframe, after_ms)| Call::Rewrite {
                ssrc,
                seq,
                timestamp,
                keyframe,
                after_ms,
            }
        ),
        1 => Just(Call::Reset),
        1 => (ssrc, seq_strategy(), any::<u32>(), 0u32..600, 0u32..10_000).prop_map(
            |(ssrc, first_seq, last_timestamp, frames, after_ms)| Call::BeginReplay {
                ssrc,
                first_seq,
                last_timestamp,
                frames,
                after_ms,
            }
        ),
        2 => (seq_strategy(), 0u32..600).prop_map(|(seq, frame)| Call::Replayed { seq, frame }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_calls(
        is_video in any::<bool>(),
        initial_seq in any::<u16>(),
        calls in prop::collection::vec(call_strategy(), 1..150),
    ) {
        let clock = if is_video { VIDEO_CLOCK } else { AUDIO_CLOCK };
        let mut forwarder = Forwarder::new(clock, is_video, initial_seq);
        let mut now = Instant::now();
        let mut origin: HashMap<u64, (u32, u64)> = HashMap::new();
        let mut starts = Vec::new();
        // The source of the last replay begun, for naming replayed packets.
        let mut replay_source = None;
        let mut gate_closed = is_video;
        let mut newest = u64::from(initial_seq).checked_sub(1);
        for call in &calls {
            let (result, input) = match *call {
                Call::Rewrite { ssrc, seq, timestamp, keyframe, after_ms } => {
                    now += Duration::from_millis(u64::from(after_ms));
                    let result = forwarder.rewrite(now, ssrc, seq, timestamp, keyframe);
                    // The replayed packets are written right after `begin_replay`, before any
                    // live packet (which may move the stream to another source).
                    replay_source = None;
                    if gate_closed && !keyframe {
                        prop_assert_eq!(result, Err(Hold::AwaitingKeyframe));
                    }
                    if result.is_ok() {
                        gate_closed = false;
                    }
                    (result, (ssrc, seq))
                }
                Call::Reset => {
                    forwarder.reset_source();
                    gate_closed = is_video;
                    replay_source = None;
                    prop_assert_eq!(forwarder.awaiting_keyframe(), is_video);
                    continue;
                }
                Call::BeginReplay { ssrc, first_seq, last_timestamp, frames, after_ms } => {
                    now += Duration::from_millis(u64::from(after_ms));
                    starts.push(forwarder.begin_replay(now, ssrc, first_seq, last_timestamp, frames));
                    replay_source = Some(ssrc);
                    gate_closed = false;
                    continue;
                }
                Call::Replayed { seq, frame } => {
                    let (Some(&start), Some(ssrc)) = (starts.last(), replay_source) else {
                        continue;
                    };
                    (forwarder.rewrite_replayed(now, start, seq, frame), (ssrc, seq))
                }
            };
            if let Ok(out) = result {
                if let Some(previous) = origin.insert(out.seq_no, input) {
                    prop_assert_eq!(
                        previous, input,
                        "outgoing sequence number {} given to two different input packets",
                        out.seq_no
                    );
                }
                newest = newest.max(Some(out.seq_no));
            }
            let (position, _, _) = forwarder.position();
            prop_assert_eq!(position, newest, "the stream's position moved backwards");
        }
    }
}
