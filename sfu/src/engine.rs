//! The sans-IO media engine: rooms, participants, publications, subscriptions and forwarders
//! on top of one `str0m::Rtc` per participant.
//!
//! Time is always an argument and the engine never touches a socket. The driver feeds it
//! datagrams, commands and timeouts, and drains datagrams to send ([`Engine::poll_transmit`])
//! and events for signaling ([`Engine::poll_event`]).

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::{
    ErrorCode, MAX_SIMULCAST_LAYERS, MAX_VIDEO_SIZES, MediaKind, ParticipantId, PublicationId,
    Quality, RoomId, TrackSource, VideoSize,
};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::PayloadParams;
use str0m::ice::StunMessage;
use str0m::media::{Direction, KeyframeRequestKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::allocator::{self, DEFAULT_LAYER_BITRATES, Demand};
use crate::api::{PublicationAnnouncement, SfuCommand, SfuEvent};
use crate::codec::{self, VideoCodec};
use crate::forwarder::{Forwarder, Hold};
use crate::gop::{CachedPacket, GopCache, GopLimits};
use crate::recording::{RecordedCodec, RecordedMedia};
use crate::speaker::{self, LevelMeter};
use crate::stats::EngineStats;

/// Largest datagram accepted on the media port. Anything bigger is not WebRTC traffic we sent
/// an MTU for.
pub const MAX_DATAGRAM: usize = 1500;

/// How often each transport reports its statistics (NACK counts, loss, RTT).
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// Source addresses remembered per participant.
const MAX_ADDRS_PER_PARTICIPANT: usize = 4;

/// How often rooms' speakers and loudest audio are re-evaluated.
const TICK: Duration = Duration::from_millis(250);

/// Ticks between two measures of each layer's bitrate and a reallocation of everyone.
const TICKS_PER_MEASURE: u32 = 4;

/// The egress estimate a transport starts from, before feedback arrives: enough for the
/// middle layer of a main video, and quickly corrected either way.
const INITIAL_ESTIMATE: Bitrate = Bitrate::kbps(1_000);

/// Share of the estimate the allocator hands out: the rest absorbs estimate error, RTCP and
/// retransmissions.
const ESTIMATE_SHARE: f64 = 0.9;

/// What one forwarded audio stream is assumed to cost when splitting the estimate.
const AUDIO_BITRATE: u64 = 50_000;

/// Video sizes remembered per participant (its subscriptions, plus a few reported before
/// their offer was answered).
const MAX_SIZES_PER_PARTICIPANT: usize = 2 * MAX_VIDEO_SIZES;

/// How long a recording waits for a simulcast publication's top layer (resumed for it at the
/// publisher) before it settles for the highest layer that arrives.
const RECORDING_LAYER_GRACE: Duration = Duration::from_secs(3);

/// The shortest interval between two `SimulcastLayers` events for one publication: a
/// publisher reconfigures its encoder at most this often.
const LAYERS_EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a fast start waits, after a subscriber's transport connects, for the proof that
/// the subscriber has installed its SRTP keys (see [`Participant::peer_keyed`]) before it goes
/// ahead anyway. A subscriber that sends nothing (no media of its own, no receiver report)
/// would otherwise never be fast-started; one that is slower than this drops the replay and
/// asks for a keyframe, as without fast start.
const PEER_KEYED_TIMEOUT: Duration = Duration::from_millis(250);

/// How long after a fast start a keyframe request from the subscriber is taken for a dropped
/// replay and answered from the cache (see [`Engine::restart_from_cache`]): enough for a
/// browser to apply the answer and notice it has no keyframe.
const FAST_START_REPAIR_WINDOW: Duration = Duration::from_secs(2);

/// How long a subscriber's bandwidth estimate takes to be more than the initial guess: the
/// estimator needs feedback on real media, and overuse takes a second or two to show.
const ESTIMATE_SETTLED: Duration = Duration::from_secs(2);

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The address put in the server's ICE candidate: the media socket's address, or the
    /// public address in front of it.
    pub candidate_addr: SocketAddr,
    /// The shortest interval between two keyframe requests sent to one publication.
    pub keyframe_request_interval: Duration,
    /// Participants allowed in one room.
    pub max_participants_per_room: usize,
    /// Sent video packets kept per subscription to answer NACKs, and for how long. A second
    /// covers several round trips of the links this server serves (a retransmission later
    /// than that arrives after the receiver gave the frame up), and 128 packets are 1.2 s of
    /// a 1 Mbit/s layer. Each kept packet costs ~340 bytes of str0m's bookkeeping per
    /// subscription (the payload itself is shared by all subscribers of the layer), so this
    /// bounds a large part of the memory per subscriber: 256 packets held ~87 KiB.
    pub rtx_cache_packets: usize,
    pub rtx_cache_age: Duration,
    /// In a room with more audio publications than this, each subscriber receives only
    /// this many, the loudest. `None` forwards every audio publication.
    pub max_audio_streams: Option<usize>,
    /// Estimate each subscriber's bandwidth (transport-wide congestion control) and send
    /// each video subscription the simulcast layer that fits. Without it, subscriptions get
    /// the layer their size asks for.
    pub bandwidth_estimation: bool,
    /// Fast start: keep each video layer's packets since its last keyframe (a GOP cache, see
    /// [`crate::gop`]) and start a new video subscription with them at once, rather than
    /// waiting for the publisher's next keyframe (which the keyframe request throttle may
    /// delay by a second). Without a usable cache a subscription waits and asks for a
    /// keyframe, as it always does with this off.
    pub fast_start: bool,
    /// The GOP cache's bounds per layer: packets and payload bytes from the keyframe on, and
    /// the keyframe's age. Beyond any of them the layer's cache is dropped until its next
    /// keyframe (a subscription then starts from a lower layer's cache, or waits). The packet
    /// bound also sizes the slots allocated per layer; the payloads are shared with the
    /// forwarding path. A replay is written at once, so the byte bound is the burst a new
    /// subscriber's link must take (paced by the bandwidth estimator's pacer when it runs, at
    /// line rate otherwise): 64 KiB is half a second of a 1 Mbit/s layer, and well within a
    /// receiver's socket buffer. The age bound keeps the replayed picture recent.
    pub fast_start_max_packets: usize,
    pub fast_start_max_bytes: usize,
    pub fast_start_max_age: Duration,
}

impl EngineConfig {
    pub fn new(candidate_addr: SocketAddr) -> Self {
        Self {
            candidate_addr,
            keyframe_request_interval: Duration::from_secs(1),
            max_participants_per_room: 1_000,
            rtx_cache_packets: 128,
            rtx_cache_age: Duration::from_secs(1),
            max_audio_streams: Some(5),
            bandwidth_estimation: true,
            fast_start: true,
            fast_start_max_packets: 512,
            fast_start_max_bytes: 64 * 1024,
            fast_start_max_age: Duration::from_secs(2),
        }
    }

    /// The highest layer a subscription to `target` may be fast-started on. Until the
    /// estimator has watched a subscriber's link for a while, the target is a guess (before any
    /// estimate the allocator aims at the layer the tile wants; the first estimates start from
    /// a fixed initial rate), and a layer, once started, is left only on another keyframe: a
    /// replayed top layer flooded a 300 kbit/s link for seconds in the simulation. So a
    /// subscriber connected less than [`ESTIMATE_SETTLED`] ago starts on the lowest layer,
    /// whose GOP is small, and the allocator raises it like any subscription. Without
    /// bandwidth estimation the operator vouches for the links: the target itself.
    fn fast_start_ceiling(
        &self,
        estimate: Option<u64>,
        connected_at: Option<Instant>,
        now: Instant,
        target: u8,
    ) -> u8 {
        let settled =
            estimate.is_some() && connected_at.is_some_and(|at| now >= at + ESTIMATE_SETTLED);
        if self.bandwidth_estimation && !settled {
            0
        } else {
            target
        }
    }

    fn gop_limits(&self) -> GopLimits {
        GopLimits {
            max_packets: self.fast_start_max_packets,
            max_bytes: self.fast_start_max_bytes,
            max_age: self.fast_start_max_age,
        }
    }
}

/// Errors creating the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the crypto provider could not generate a DTLS certificate")]
    DtlsCertificate,
}

/// One inbound track.
#[derive(Debug)]
struct Publication {
    owner: ParticipantId,
    room: RoomId,
    mid: Mid,
    kind: MediaKind,
    muted: bool,
    /// Subscribers as (participant, their send mid).
    subscribers: Vec<(ParticipantId, Mid)>,
    last_keyframe_request: Option<Instant>,
    keyframe_request_pending: bool,
    /// Layers (bit per index) a keyframe is wanted for, sent with the next request.
    keyframe_layers: u8,
    /// Its room is being recorded: its packets also go to the recording tap.
    recorded: bool,
    /// The one layer the recording takes, kept for the whole file since a switch would
    /// change the resolution and the RTP time base mid-file: the top layer (resumed at the
    /// publisher for the recording), or the highest arriving if the top does not come within
    /// [`RECORDING_LAYER_GRACE`] of the start.
    recorded_layer: Option<u8>,
    /// When the recording of this publication started.
    recorded_since: Option<Instant>,
    source: TrackSource,
    /// Simulcast layers, lowest first; a plain stream has one, without a rid.
    layers: Vec<Layer>,
    /// Audio: loudness from the packets' audio levels.
    level: LevelMeter,
    /// Audio: among its room's loudest, so forwarded.
    audible: bool,
    /// Simulcast: the layers last told to the owner as wanted, and when.
    told_layers: Option<(u8, Instant)>,
}

/// One simulcast encoding of a publication (or its only stream).
#[derive(Debug)]
struct Layer {
    rid: Option<Rid>,
    /// Declared size; 0 × 0 when unknown.
    width: u32,
    height: u32,
    /// Payload bytes since the last measure, and the bitrate measured (0: never seen).
    window_bytes: u64,
    bitrate: u64,
    /// Packets arrived within the last second.
    available: bool,
    /// Video with fast start: the packets since the layer's last keyframe.
    gop: GopCache,
}

impl Layer {
    fn plain() -> Self {
        Self {
            rid: None,
            width: 0,
            height: 0,
            window_bytes: 0,
            bitrate: 0,
            available: false,
            gop: GopCache::default(),
        }
    }
}

/// One outbound track to one participant.
#[derive(Debug)]
struct Subscription {
    publication: Option<PublicationId>,
    tx_ssrc: Option<Ssrc>,
    forwarder: Forwarder,
    /// Publisher payload type to this subscriber's payload type.
    pt_map: Vec<(Pt, Pt)>,
    /// NACKs counted from this subscription's egress statistics so far.
    nacks_seen: u64,
    is_video: bool,
    /// Video: the layer to send (`None`: nothing, hidden or no bandwidth) and the layer sent
    /// now; they differ until the target layer's next keyframe.
    target: Option<u8>,
    current: Option<u8>,
    /// Video: the highest layer its tile needs, from the last allocation.
    max_layer: Option<u8>,
    /// Video: until when a keyframe request from the subscriber is answered by replaying the
    /// GOP cache once more (see [`Engine::restart_from_cache`]); set by a fast start.
    repairable_until: Option<Instant>,
}

/// What the engine knows of one published stream's codec, by payload type.
#[derive(Debug, Clone, Copy)]
struct PtInfo {
    pt: Pt,
    video: Option<VideoCodec>,
}

#[derive(Debug)]
struct Participant {
    room: RoomId,
    rtc: Rtc,
    local_ufrag: String,
    addrs: Vec<SocketAddr>,
    /// Publications by their receive mid.
    published: Vec<(Mid, PublicationId)>,
    /// Known incoming SSRCs with their publication and layer, so the per-packet lookup
    /// avoids str0m's stream table.
    ssrc_cache: Vec<(Ssrc, PublicationId, u8)>,
    /// Codec of each payload type this participant sends, filled after each offer.
    pt_info: Vec<PtInfo>,
    subscriptions: FxHashMap<Mid, Subscription>,
    next_timeout: Instant,
    connected: bool,
    /// When its transport connected (DTLS done on the server's side).
    connected_at: Option<Instant>,
    /// Whether an SRTP or SRTCP packet has come from it since its transport connected. The
    /// server's side of DTLS completes when it sends its last handshake flight; the client
    /// installs its SRTP keys when it has processed that flight, and one that does so on
    /// another task (webrtc-rs) drops the packets that overtake it, a replayed keyframe first
    /// among them. A protected packet from the client proves it has its keys: a publisher's
    /// first media, a receiver's first report or congestion feedback (sent tens of
    /// milliseconds after its first audio).
    peer_keyed: bool,
    disconnected_reported: bool,
    /// The client closed the transport itself.
    closed_by_peer: bool,
    /// Whether the participant is in the engine's list of transports to drain this pass.
    queued: bool,
    /// Whether its send m-lines become publications (false for viewers).
    may_publish: bool,
    /// The last quality label told to signaling.
    quality: Option<Quality>,
    /// The egress bandwidth estimate (bits per second), once the estimator produced one.
    estimate: Option<u64>,
    /// Whether its layers must be allocated again (estimate, sizes or subscriptions changed).
    reallocate: bool,
    /// The size each subscribed video is shown at, by publication.
    video_sizes: FxHashMap<PublicationId, (u32, u32)>,
    /// The (minimum, desired) bitrates last given to its estimator.
    bwe_bitrates: (u64, u64),
}

#[derive(Debug, Default)]
struct Room {
    participants: Vec<ParticipantId>,
    /// The participant whose voice is loudest, as last announced.
    speaker: Option<ParticipantId>,
}

/// Work found while draining one participant's `Rtc`, handled once the borrow ends.
#[derive(Debug)]
// Boxing the packet would allocate once per packet on the hot path; the buffer holding these
// is reused, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Found {
    Rtp(RtpPacket),
    KeyframeRequest(Mid, KeyframeRequestKind),
    /// Cumulative NACKs received on one of this participant's send m-lines.
    Nacks(Mid, u64),
    /// The egress bandwidth estimate changed.
    Estimate(u64),
    Connected,
    Disconnected,
    /// The transport's quality label changed.
    Quality(Quality),
}

/// Labels a transport from the loss it reports each way and its round-trip time: the
/// thresholds where calls stay clean (under 2% loss, 300 ms), degrade, or break up.
pub fn classify_quality(loss: Option<f32>, rtt: Option<Duration>) -> Option<Quality> {
    if loss.is_none() && rtt.is_none() {
        return None;
    }
    let loss = loss.unwrap_or(0.0);
    let rtt = rtt.unwrap_or_default();
    Some(if loss < 0.02 && rtt < Duration::from_millis(300) {
        Quality::Good
    } else if loss < 0.08 && rtt < Duration::from_millis(600) {
        Quality::Fair
    } else {
        Quality::Poor
    })
}

/// The SFU's media core.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    dtls_cert: DtlsCert,
    // Ids are generated by the server, so a fast non-keyed hash is safe for these maps; maps
    // keyed by what a remote peer chooses (addresses, ufrags) keep the DoS-resistant default.
    participants: FxHashMap<ParticipantId, Participant>,
    rooms: HashMap<RoomId, Room>,
    publications: FxHashMap<PublicationId, Publication>,
    by_ufrag: HashMap<String, ParticipantId>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    next_publication: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SfuEvent>,
    found: Vec<Found>,
    touched: Vec<ParticipantId>,
    scratch_ids: Vec<ParticipantId>,
    stats: EngineStats,
    /// Rooms being recorded, with their recording ids.
    recordings: FxHashMap<RoomId, String>,
    /// The recording tap's queue (see [`crate::recording`]).
    recorded: VecDeque<RecordedMedia>,
    /// When the next speaker/loudness evaluation is due (from the first input on), and how
    /// many ticks ran.
    next_tick: Option<Instant>,
    ticks: u32,
    /// Participants whose layers must be allocated at the end of this pass.
    to_allocate: Vec<ParticipantId>,
    /// Publications whose set of arriving layers changed.
    layer_changes: Vec<PublicationId>,
    /// When the layers' bitrates were last measured.
    measured_at: Option<Instant>,
    /// Reused buffers for the allocator.
    /// Per video subscription: (priority, its mid, the layer its tile wants, its demand).
    demand_rows: Vec<(u8, Mid, Option<u8>, Demand)>,
    demands: Vec<Demand>,
    allocation: Vec<Option<u8>>,
    /// This packet's VP8 copies with re-based picture ids, shared by the subscribers whose
    /// numbering matches.
    vp8_patches: crate::vp8::Patches,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        // One certificate for every transport: generating a key pair per participant would
        // make joins cost milliseconds of CPU each.
        let provider = str0m::crypto::from_feature_flags();
        let dtls_cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or(EngineError::DtlsCertificate)?;
        Ok(Self {
            config,
            dtls_cert,
            participants: FxHashMap::default(),
            rooms: HashMap::new(),
            publications: FxHashMap::default(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            next_publication: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            found: Vec::new(),
            touched: Vec::new(),
            scratch_ids: Vec::new(),
            stats: EngineStats::default(),
            recordings: FxHashMap::default(),
            recorded: VecDeque::new(),
            next_tick: None,
            ticks: 0,
            to_allocate: Vec::new(),
            layer_changes: Vec::new(),
            measured_at: None,
            demand_rows: Vec::new(),
            demands: Vec::new(),
            allocation: Vec::new(),
            vp8_patches: crate::vp8::Patches::default(),
        })
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Counts of live objects: (rooms, participants, publications, subscriptions).
    pub fn census(&self) -> (usize, usize, usize, usize) {
        let subscriptions = self
            .publications
            .values()
            .map(|p| p.subscribers.len())
            .sum();
        (
            self.rooms.len(),
            self.participants.len(),
            self.publications.len(),
            subscriptions,
        )
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for signaling.
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let participants = self.participants.values().map(|p| p.next_timeout);
        let keyframes = self.publications.values().filter_map(|p| {
            p.last_keyframe_request
                .filter(|_| p.keyframe_request_pending)
                .map(|t| t + self.config.keyframe_request_interval)
        });
        participants
            .chain(keyframes)
            .chain(self.next_tick)
            .min()
            .unwrap_or_else(|| Instant::now() + TICK)
    }

    /// Advances every participant whose timer is due, and sends keyframe requests that were
    /// held back by the throttle.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.scratch_ids);
        due.extend(
            self.participants
                .iter()
                .filter(|(_, p)| p.next_timeout <= now)
                .map(|(id, _)| *id),
        );
        for &id in &due {
            if let Some(p) = self.participants.get_mut(&id)
                && let Err(err) = p.rtc.handle_input(Input::Timeout(now))
            {
                tracing::debug!(participant = %id, %err, "timeout input failed");
            }
            self.drain(id, now);
        }
        due.clear();
        self.scratch_ids = due;
        let pending: Vec<PublicationId> = self
            .publications
            .iter()
            .filter(|(_, p)| {
                p.keyframe_request_pending
                    && p.last_keyframe_request
                        .is_none_or(|t| now >= t + self.config.keyframe_request_interval)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            self.request_keyframe(id, 0, now);
        }
        if self.next_tick.is_none_or(|t| now >= t) {
            self.next_tick = Some(now + TICK);
            self.tick(now);
        }
        self.allocate_pending();
        self.flush_touched(now);
    }

    /// Feeds one datagram received on the media port.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        if data.len() > MAX_DATAGRAM {
            self.stats.dropped_oversize += 1;
            return;
        }
        let Ok(contents) = data.try_into() else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if crate::stun::is_stun(data) && !crate::stun::fingerprint_ok(data) {
            self.stats.dropped_malformed += 1;
            return;
        }
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let Some(id) = self.route(source, data, &input) else {
            self.stats.dropped_unknown_source += 1;
            return;
        };
        let rtp_ssrc = rtp_ssrc(data);
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        let known_before = rtp_ssrc.is_some_and(|ssrc| {
            participant
                .rtc
                .direct_api()
                .stream_rx(&ssrc.into())
                .is_some()
        });
        if let Err(err) = participant.rtc.handle_input(input) {
            self.stats.dropped_malformed += 1;
            tracing::debug!(participant = %id, %err, "input refused by the transport");
        }
        if let Some(ssrc) = rtp_ssrc
            && !known_before
            && participant
                .rtc
                .direct_api()
                .stream_rx(&ssrc.into())
                .is_none()
        {
            self.stats.dropped_unknown_ssrc += 1;
        }
        self.drain(id, now);
        if rtp_or_rtcp(data)
            && let Some(participant) = self.participants.get_mut(&id)
            && participant.connected
            && !participant.peer_keyed
        {
            participant.peer_keyed = true;
            if self.config.fast_start {
                self.fast_start_waiting(id, now);
            }
        }
        if !self.to_allocate.is_empty() || !self.layer_changes.is_empty() {
            self.allocate_pending();
        }
        self.flush_touched(now);
    }

    /// Finds the participant a datagram belongs to: by source address once ICE has bound it,
    /// or by the STUN username for a new address.
    fn route(&mut self, source: SocketAddr, data: &[u8], input: &Input) -> Option<ParticipantId> {
        if let Some(id) = self.by_addr.get(&source) {
            return Some(*id);
        }
        // Only a STUN binding request may introduce a new address, and only one that proves
        // it knows the transport's ICE password (MESSAGE-INTEGRITY): an address is bound only
        // to a peer that could have completed the check, never to a guess of the ufrag.
        let stun = StunMessage::parse(data).ok()?;
        let (local_ufrag, _) = stun.split_username()?;
        let id = *self.by_ufrag.get(local_ufrag)?;
        let participant = self.participants.get_mut(&id)?;
        if !participant.rtc.accepts(input) {
            return None;
        }
        let password = participant.rtc.direct_api().local_ice_credentials().pass;
        if !stun.verify(password.as_bytes(), crate::stun::hmac_sha1) {
            return None;
        }
        if !participant.addrs.contains(&source) {
            // A peer changes address rarely (NAT rebinding, network switch). Bound the list so
            // that spoofed sources cannot grow it, forgetting the oldest address first.
            if participant.addrs.len() >= MAX_ADDRS_PER_PARTICIPANT {
                let oldest = participant.addrs.remove(0);
                if self.by_addr.get(&oldest) == Some(&id) {
                    self.by_addr.remove(&oldest);
                }
            }
            participant.addrs.push(source);
        }
        self.by_addr.insert(source, id);
        Some(id)
    }

    /// Applies one command from signaling.
    pub fn handle_command(&mut self, now: Instant, command: SfuCommand) {
        let participant = command.participant();
        let result = match command {
            SfuCommand::AddParticipant { participant, room } => {
                self.add_participant(now, participant, room)
            }
            SfuCommand::Offer {
                participant,
                sdp,
                publish,
                subscribe,
            } => self.handle_offer(now, participant, &sdp, publish, subscribe),
            SfuCommand::RemoteCandidate {
                participant,
                candidate,
            } => self.add_remote_candidate(participant, &candidate),
            SfuCommand::SetMuted {
                participant,
                publication,
                muted,
            } => self.set_muted(now, participant, publication, muted),
            SfuCommand::RemoveParticipant { participant } => {
                self.remove_participant(participant);
                Ok(())
            }
            SfuCommand::SetPublishing {
                participant,
                allowed,
            } => {
                self.set_publishing(participant, allowed);
                Ok(())
            }
            SfuCommand::Unsubscribe {
                participant,
                publications,
            } => {
                let mids: Vec<Mid> = self
                    .participants
                    .get(&participant)
                    .map(|p| {
                        p.subscriptions
                            .iter()
                            .filter(|(_, s)| {
                                s.publication.is_some_and(|id| publications.contains(&id))
                            })
                            .map(|(mid, _)| *mid)
                            .collect()
                    })
                    .unwrap_or_default();
                for mid in mids {
                    self.unbind(participant, mid);
                }
                Ok(())
            }
            SfuCommand::StartRecording {
                room,
                recording_id,
                e2ee,
            } => {
                self.start_recording(now, room, recording_id, e2ee);
                Ok(())
            }
            SfuCommand::StopRecording { room } => {
                self.stop_recording(now, &room);
                Ok(())
            }
            SfuCommand::SetVideoSizes { participant, sizes } => {
                self.set_video_sizes(participant, &sizes);
                Ok(())
            }
            // The driver ends its thread; the engine itself has nothing to do.
            SfuCommand::Shutdown => Ok(()),
        };
        if let (Err((code, message)), Some(participant)) = (result, participant) {
            self.events.push_back(SfuEvent::Refused {
                participant,
                code,
                message,
            });
        }
        self.allocate_pending();
        self.flush_touched(now);
    }

    fn add_participant(
        &mut self,
        now: Instant,
        id: ParticipantId,
        room: RoomId,
    ) -> Result<(), (ErrorCode, String)> {
        if self.participants.contains_key(&id) {
            return Err((
                ErrorCode::AlreadyJoined,
                format!("participant {id} already has a transport"),
            ));
        }
        let members = self.rooms.get(&room).map_or(0, |r| r.participants.len());
        if members >= self.config.max_participants_per_room {
            return Err((ErrorCode::RoomFull, format!("room {room} is full")));
        }
        let mut builder = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(self.dtls_cert.clone())
            .set_stats_interval(Some(STATS_INTERVAL));
        if self.config.bandwidth_estimation {
            builder = builder.enable_bwe(Some(INITIAL_ESTIMATE));
        }
        let mut rtc = builder.build(now);
        let candidate = Candidate::host(self.config.candidate_addr, "udp").map_err(|err| {
            (
                ErrorCode::MediaUnavailable,
                format!("bad server candidate: {err}"),
            )
        })?;
        rtc.add_local_candidate(candidate);
        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        self.by_ufrag.insert(local_ufrag.clone(), id);
        self.rooms
            .entry(room.clone())
            .or_default()
            .participants
            .push(id);
        self.participants.insert(
            id,
            Participant {
                room,
                rtc,
                local_ufrag,
                addrs: Vec::new(),
                published: Vec::new(),
                ssrc_cache: Vec::new(),
                pt_info: Vec::new(),
                subscriptions: FxHashMap::default(),
                next_timeout: now,
                connected: false,
                connected_at: None,
                peer_keyed: false,
                disconnected_reported: false,
                closed_by_peer: false,
                queued: false,
                may_publish: true,
                quality: None,
                estimate: None,
                reallocate: false,
                video_sizes: FxHashMap::default(),
                bwe_bitrates: (0, 0),
            },
        );
        Ok(())
    }

    fn handle_offer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: &str,
        publish: Vec<protocol::PublishTrack>,
        subscribe: Vec<protocol::SubscribeTrack>,
    ) -> Result<(), (ErrorCode, String)> {
        let media_sections = sdp.lines().filter(|l| l.starts_with("m=")).count();
        if media_sections > protocol::MAX_MEDIA_SECTIONS {
            return Err((
                ErrorCode::BadSdp,
                format!(
                    "offer has {media_sections} media sections; the limit is {}",
                    protocol::MAX_MEDIA_SECTIONS
                ),
            ));
        }
        if !sdp.lines().any(|l| l.starts_with("a=fingerprint:")) {
            return Err((ErrorCode::BadSdp, "offer has no DTLS fingerprint".into()));
        }
        let sdp = &*without_weak_fingerprints(sdp).ok_or((
            ErrorCode::BadSdp,
            "offer has no SHA-256, SHA-384 or SHA-512 DTLS fingerprint (SHA-1 is refused)".into(),
        ))?;
        let sdp = &*without_unpairable_candidates(sdp, self.config.candidate_addr);
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|err| {
            // The parser's own text names positions in memory; the client gets none of it.
            tracing::debug!(participant = %id, %err, "unparsable offer");
            (ErrorCode::BadSdp, "the offer is not valid SDP".to_owned())
        })?;
        let participant = self.participants.get_mut(&id).ok_or((
            ErrorCode::NotJoined,
            format!("participant {id} has no transport"),
        ))?;
        let answer = participant
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|err| (ErrorCode::BadSdp, format!("offer not acceptable: {err}")))?;
        let answer_sdp = answer.to_sdp_string();

        let mids: Vec<Mid> = sdp
            .lines()
            .filter_map(|l| l.strip_prefix("a=mid:"))
            .map(|m| Mid::from(m.trim()))
            .collect();
        self.reconcile(now, id, &mids, &publish, &subscribe);
        self.events.push_back(SfuEvent::Answer {
            participant: id,
            sdp: answer_sdp,
        });
        self.drain(id, now);
        Ok(())
    }

    /// Brings publications and subscriptions in line with the m-lines just negotiated.
    fn reconcile(
        &mut self,
        now: Instant,
        id: ParticipantId,
        mids: &[Mid],
        publish: &[protocol::PublishTrack],
        subscribe: &[protocol::SubscribeTrack],
    ) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        participant.pt_info = participant
            .rtc
            .codec_config()
            .params()
            .iter()
            .map(|p| PtInfo {
                pt: p.pt(),
                video: VideoCodec::from_str0m(p.spec().codec),
            })
            .collect();
        let room = participant.room.clone();

        // Decide per m-line first, then apply, so that the participant borrow ends.
        let mut to_publish = Vec::new();
        let mut to_unpublish = Vec::new();
        let mut to_bind = Vec::new();
        let mut to_unbind = Vec::new();
        let mut refused_publications = 0;
        for mid in mids {
            let Some(media) = participant.rtc.media(*mid) else {
                continue;
            };
            let direction = media.direction();
            let receiving = matches!(direction, Direction::RecvOnly | Direction::SendRecv);
            let sending = matches!(direction, Direction::SendOnly | Direction::SendRecv);
            let published = participant.published.iter().find(|(m, _)| m == mid);
            match (receiving, published) {
                (true, None) if !participant.may_publish => refused_publications += 1,
                (true, None) => {
                    let kind = match media.kind() {
                        str0m::media::MediaKind::Audio => MediaKind::Audio,
                        str0m::media::MediaKind::Video => MediaKind::Video,
                    };
                    let track = publish.iter().find(|p| p.mid == mid.to_string());
                    let source = track.map(|p| p.source).unwrap_or(match kind {
                        MediaKind::Audio => TrackSource::Microphone,
                        MediaKind::Video => TrackSource::Camera,
                    });
                    let layers = match (kind, track) {
                        (MediaKind::Video, Some(track)) => declared_layers(&track.layers),
                        _ => vec![Layer::plain()],
                    };
                    to_publish.push((*mid, kind, source, layers));
                }
                (false, Some((_, publication))) => to_unpublish.push(*publication),
                _ => {}
            }
            let wanted = subscribe
                .iter()
                .find(|s| s.mid == mid.to_string())
                .map(|s| s.publication_id)
                .filter(|_| sending);
            let current = participant
                .subscriptions
                .get(mid)
                .and_then(|s| s.publication);
            if wanted != current {
                if current.is_some() {
                    to_unbind.push(*mid);
                }
                if let Some(publication) = wanted {
                    to_bind.push((*mid, publication));
                }
            }
        }

        self.stats.refused_publications += refused_publications;
        for (mid, kind, source, layers) in to_publish {
            let publication = PublicationId(self.next_publication);
            self.next_publication += 1;
            self.publications.insert(
                publication,
                Publication {
                    owner: id,
                    room: room.clone(),
                    mid,
                    kind,
                    muted: false,
                    subscribers: Vec::new(),
                    last_keyframe_request: None,
                    keyframe_request_pending: false,
                    keyframe_layers: 0,
                    recorded: false,
                    recorded_layer: None,
                    recorded_since: None,
                    source,
                    layers,
                    level: LevelMeter::default(),
                    audible: true,
                    told_layers: None,
                },
            );
            if self.recordings.contains_key(&room) {
                self.record_publication(now, publication);
            }
            if let Some(p) = self.participants.get_mut(&id) {
                p.published.push((mid, publication));
            }
            self.events.push_back(SfuEvent::PublicationAdded {
                participant: id,
                publication: PublicationAnnouncement {
                    id: publication,
                    kind,
                    source,
                },
            });
        }
        for publication in to_unpublish {
            self.remove_publication(publication);
        }
        for mid in to_unbind {
            self.unbind(id, mid);
        }
        for (mid, publication) in to_bind {
            self.bind(now, id, mid, publication);
        }
    }

    /// Points the subscriber's send m-line at a publication of its own room.
    fn bind(&mut self, now: Instant, id: ParticipantId, mid: Mid, publication_id: PublicationId) {
        let Some(publication) = self.publications.get(&publication_id) else {
            // A publication that ended while the offer was in flight: the m-line stays idle.
            return;
        };
        let Some(subscriber) = self.participants.get(&id) else {
            return;
        };
        // Streams never cross rooms, and nobody subscribes to itself.
        if publication.room != subscriber.room || publication.owner == id {
            self.stats.refused_subscriptions += 1;
            return;
        }
        let Some(publisher) = self.participants.get(&publication.owner) else {
            return;
        };
        let publisher_params = media_params(&publisher.rtc, publication.mid);
        let pub_kind = publication.kind;
        let Some(subscriber) = self.participants.get_mut(&id) else {
            return;
        };
        let subscriber_params = media_params(&subscriber.rtc, mid);
        let pt_map = map_payload_types(&publisher_params, &subscriber_params);
        let Some(media) = subscriber.rtc.media(mid) else {
            return;
        };
        let sub_kind = match media.kind() {
            str0m::media::MediaKind::Audio => MediaKind::Audio,
            str0m::media::MediaKind::Video => MediaKind::Video,
        };
        if sub_kind != pub_kind || pt_map.is_empty() {
            self.stats.refused_subscriptions += 1;
            return;
        }
        let clock_rate = subscriber_params
            .first()
            .map_or(90_000, |p| p.spec().clock_rate.get());
        let is_video = pub_kind == MediaKind::Video;
        let (cache_packets, cache_age) = if is_video {
            (self.config.rtx_cache_packets, self.config.rtx_cache_age)
        } else {
            // Audio is not retransmitted: a late audio packet is useless.
            (0, Duration::ZERO)
        };
        let tx_ssrc = subscriber
            .rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .map(|s| {
                s.set_rtx_cache(cache_packets, cache_age, Some(0.15));
                s.ssrc()
            });
        let initial_seq = tx_ssrc.map_or(1, |s| (*s & 0x3fff) as u16);
        let subscription = subscriber
            .subscriptions
            .entry(mid)
            .or_insert_with(|| Subscription {
                publication: None,
                tx_ssrc,
                forwarder: Forwarder::new(clock_rate, is_video, initial_seq),
                pt_map: Vec::new(),
                nacks_seen: 0,
                is_video,
                target: None,
                current: None,
                max_layer: None,
                repairable_until: None,
            });
        let (last_seq, last_ts, last_sent) = subscription.forwarder.position();
        tracing::debug!(
            participant = %id,
            %mid,
            publication = %publication_id,
            ?tx_ssrc,
            ?pt_map,
            ?last_seq,
            last_ts,
            idle_ms = last_sent.map(|at| now.saturating_duration_since(at).as_millis()),
            "subscription bound"
        );
        subscription.publication = Some(publication_id);
        subscription.pt_map = pt_map;
        subscription.tx_ssrc = tx_ssrc;
        subscription.forwarder.reset_source();
        subscription.current = None;
        if let Some(publication) = self.publications.get_mut(&publication_id) {
            publication.subscribers.push((id, mid));
        }
        if is_video {
            // The layer follows from the allocation at the end of this pass; its first packet
            // asks the publisher for a keyframe, so a late joiner does not wait for the next
            // periodic one.
            self.mark_for_allocation(id);
        }
    }

    fn unbind(&mut self, id: ParticipantId, mid: Mid) {
        let Some(subscriber) = self.participants.get_mut(&id) else {
            return;
        };
        let Some(subscription) = subscriber.subscriptions.get_mut(&mid) else {
            return;
        };
        subscription.target = None;
        subscription.current = None;
        if let Some(publication) = subscription.publication.take()
            && let Some(p) = self.publications.get_mut(&publication)
        {
            p.subscribers.retain(|(s, m)| !(*s == id && *m == mid));
        }
        // What it no longer receives frees bandwidth for its other subscriptions.
        self.mark_for_allocation(id);
    }

    fn mark_for_allocation(&mut self, id: ParticipantId) {
        if let Some(p) = self.participants.get_mut(&id)
            && !p.reallocate
        {
            p.reallocate = true;
            self.to_allocate.push(id);
        }
    }

    fn set_video_sizes(&mut self, id: ParticipantId, sizes: &[VideoSize]) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        for size in sizes.iter().take(MAX_VIDEO_SIZES) {
            // Larger than any screen means "as large as possible", and bounds the arithmetic.
            let clamp = |v: u32| v.min(16_384);
            participant
                .video_sizes
                .insert(size.publication_id, (clamp(size.width), clamp(size.height)));
        }
        if participant.video_sizes.len() > MAX_SIZES_PER_PARTICIPANT {
            // Forget sizes of publications that ended; a client cannot grow the map further
            // than the publications that exist.
            let publications = &self.publications;
            participant
                .video_sizes
                .retain(|p, _| publications.contains_key(p));
        }
        self.mark_for_allocation(id);
    }

    /// Allocates layers for every participant marked since the last pass.
    fn allocate_pending(&mut self) {
        while let Some(publication) = self.layer_changes.pop() {
            let subscribers = self
                .publications
                .get(&publication)
                .map(|p| p.subscribers.iter().map(|(s, _)| *s).collect::<Vec<_>>())
                .unwrap_or_default();
            for subscriber in subscribers {
                self.mark_for_allocation(subscriber);
            }
        }
        let mut pending = std::mem::take(&mut self.to_allocate);
        for id in pending.drain(..) {
            self.allocate(id);
        }
        self.to_allocate = pending;
    }

    /// Splits one subscriber's bandwidth estimate across its video subscriptions (see
    /// [`crate::allocator`]): screen shares first, then the active speaker, then the rest.
    fn allocate(&mut self, id: ParticipantId) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        participant.reallocate = false;
        let speaker = self.rooms.get(&participant.room).and_then(|r| r.speaker);
        let mut rows = std::mem::take(&mut self.demand_rows);
        let mut demands = std::mem::take(&mut self.demands);
        let mut allocation = std::mem::take(&mut self.allocation);
        rows.clear();
        let mut audio_streams = 0u64;
        for (mid, sub) in &participant.subscriptions {
            let Some(publication) = sub.publication.and_then(|p| self.publications.get(&p)) else {
                continue;
            };
            if !sub.is_video {
                audio_streams += u64::from(publication.audible);
                continue;
            }
            let mut sizes = [(0, 0); MAX_SIMULCAST_LAYERS];
            let mut bitrates = [0; 3];
            let n = publication.layers.len().min(MAX_SIMULCAST_LAYERS);
            let mut highest_arriving = None;
            for (i, layer) in publication.layers.iter().take(n).enumerate() {
                sizes[i] = (layer.width, layer.height);
                // A layer not measured yet is assumed to cost what browsers send; a plain
                // stream offers no choice, so it costs what it measures (nothing to probe for).
                let assumed = if n > 1 {
                    DEFAULT_LAYER_BITRATES[(3 - n + i).min(2)]
                } else {
                    0
                };
                bitrates[i] = if layer.bitrate > 0 {
                    layer.bitrate
                } else {
                    assumed
                };
                if layer.available {
                    highest_arriving = Some(i as u8);
                }
            }
            // Before any layer arrives (and always for a plain stream) every layer counts as
            // available: the first keyframes are on their way, and the target must be set
            // when they come.
            let top = n.saturating_sub(1) as u8;
            let available = if n == 1 {
                top
            } else {
                highest_arriving.unwrap_or(top)
            };
            let tile = sub
                .publication
                .and_then(|p| participant.video_sizes.get(&p))
                .copied();
            let wanted = allocator::layer_for_size(&sizes[..n], tile);
            let priority = if publication.source == TrackSource::Screen {
                0
            } else if Some(publication.owner) == speaker {
                1
            } else {
                2
            };
            let demand = Demand {
                bitrates,
                layers: n as u8,
                // Only layers that arrive can be sent; a paused one is asked for below.
                max_layer: wanted.map(|w| w.min(available)),
                current: sub.current,
            };
            rows.push((priority, *mid, wanted, demand));
        }
        rows.sort_by_key(|(priority, ..)| *priority);
        demands.clear();
        demands.extend(rows.iter().map(|(.., demand)| *demand));
        let budget = match (self.config.bandwidth_estimation, participant.estimate) {
            (true, Some(estimate)) => ((estimate as f64 * ESTIMATE_SHARE) as u64)
                .saturating_sub(audio_streams * AUDIO_BITRATE),
            _ => u64::MAX,
        };
        allocator::allocate(budget, &demands, &mut allocation);
        let (mut allocated, mut desired) = (0u64, 0u64);
        for ((_, mid, wanted, demand), target) in rows.iter().zip(&allocation) {
            let cost = |layer: Option<u8>| layer.map_or(0, |l| demand.bitrates[usize::from(l)]);
            allocated += cost(*target);
            desired += cost(wanted.map(|w| w.min(demand.layers.saturating_sub(1))));
            let Some(sub) = participant.subscriptions.get_mut(mid) else {
                continue;
            };
            sub.max_layer = *wanted;
            if sub.target != *target {
                sub.target = *target;
                if target.is_none() {
                    sub.current = None;
                }
            }
        }
        // The estimator probes up to what the tiles want, so a subscriber on a low layer finds
        // out that its link has room, or recovered. It is not asked to sustain more than the
        // media with padding: padding every viewer of a large broadcast toward its next layer
        // would cost the server more than the layers themselves (measured: 400 viewers went
        // from 0% loss to freezes on this machine).
        let minimum = allocated;
        let desired = desired.max(minimum);
        if self.config.bandwidth_estimation && participant.bwe_bitrates != (minimum, desired) {
            participant.bwe_bitrates = (minimum, desired);
            participant
                .rtc
                .bwe()
                .set_bitrate(Bitrate::bps(minimum), Bitrate::bps(desired));
        }
        self.demand_rows = rows;
        self.demands = demands;
        self.allocation = allocation;
    }

    /// A few times a second: the rooms' active speakers and loudest audio, and once a second
    /// the layers' bitrates, everyone's allocation and the layers publishers should send.
    fn tick(&mut self, now: Instant) {
        self.ticks = self.ticks.wrapping_add(1);
        self.update_speakers(now);
        self.choose_recorded_layers(now);
        if self.ticks.is_multiple_of(TICKS_PER_MEASURE) {
            let elapsed = self
                .measured_at
                .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
            self.measured_at = Some(now);
            for (id, publication) in &mut self.publications {
                let mut changed = false;
                for layer in &mut publication.layers {
                    if layer.window_bytes > 0 && elapsed > 0.0 {
                        let measured = (layer.window_bytes as f64 * 8.0 / elapsed) as u64;
                        layer.bitrate = if layer.bitrate == 0 {
                            measured
                        } else {
                            (layer.bitrate + measured) / 2
                        };
                    } else if layer.available {
                        // Nothing for a whole second: paused by its publisher, or gone.
                        layer.available = false;
                        changed = true;
                    }
                    layer.window_bytes = 0;
                }
                if changed {
                    self.layer_changes.push(*id);
                }
            }
            let ids: Vec<ParticipantId> = self
                .participants
                .iter()
                .filter(|(_, p)| p.subscriptions.values().any(|s| s.target.is_some()))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.mark_for_allocation(id);
            }
        }
        self.allocate_pending();
        self.update_simulcast_layers(now);
    }

    /// Picks the layer of recorded simulcast publications that have none yet: the top one as
    /// soon as it arrives, or after a grace period the highest one arriving.
    fn choose_recorded_layers(&mut self, now: Instant) {
        let mut chosen = Vec::new();
        for (id, publication) in &mut self.publications {
            if !publication.recorded || publication.recorded_layer.is_some() {
                continue;
            }
            let waited = publication
                .recorded_since
                .is_some_and(|since| now >= since + RECORDING_LAYER_GRACE);
            publication.recorded_layer = recordable_layer(&publication.layers, waited);
            if let Some(layer) = publication.recorded_layer {
                chosen.push((*id, layer));
            }
        }
        for (id, layer) in chosen {
            // The file starts on a keyframe of that layer.
            self.request_keyframe(id, 1 << layer, now);
        }
    }

    /// Tells publishers which of their simulcast layers anyone wants: the lowest always,
    /// the top one while recording, and every layer a subscriber receives, is switching to
    /// or would receive with more bandwidth.
    fn update_simulcast_layers(&mut self, now: Instant) {
        for (id, publication) in &mut self.publications {
            let n = publication.layers.len().min(MAX_SIMULCAST_LAYERS);
            if n < 2 {
                continue;
            }
            let mut mask = 1u8;
            if publication.recorded {
                let layer = publication.recorded_layer.map_or(n - 1, usize::from);
                mask |= 1 << layer.min(n - 1);
            }
            for (subscriber, mid) in &publication.subscribers {
                let Some(sub) = self
                    .participants
                    .get(subscriber)
                    .and_then(|p| p.subscriptions.get(mid))
                else {
                    continue;
                };
                for layer in [sub.target, sub.current, sub.max_layer]
                    .into_iter()
                    .flatten()
                {
                    mask |= 1 << layer.min(n as u8 - 1);
                }
            }
            let changed = publication.told_layers.is_none_or(|(told, _)| told != mask);
            let due = publication
                .told_layers
                .is_none_or(|(_, at)| now >= at + LAYERS_EVENT_INTERVAL);
            if changed && due {
                publication.told_layers = Some((mask, now));
                self.events.push_back(SfuEvent::SimulcastLayers {
                    participant: publication.owner,
                    publication: *id,
                    active: (0..n).map(|i| mask & (1 << i) != 0).collect(),
                });
            }
        }
    }

    /// Re-evaluates each room's active speaker and, in rooms with more audio publications
    /// than [`EngineConfig::max_audio_streams`], which are loud enough to be forwarded.
    fn update_speakers(&mut self, now: Instant) {
        let mut audio: Vec<(PublicationId, ParticipantId, f32)> = Vec::new();
        let mut resumed: Vec<PublicationId> = Vec::new();
        for (room_id, room) in &mut self.rooms {
            audio.clear();
            for participant in &room.participants {
                let Some(p) = self.participants.get(participant) else {
                    continue;
                };
                for (_, publication_id) in &p.published {
                    if let Some(publication) = self.publications.get(publication_id)
                        && publication.kind == MediaKind::Audio
                        && !publication.muted
                    {
                        audio.push((
                            *publication_id,
                            publication.owner,
                            publication.level.loudness(now),
                        ));
                    }
                }
            }
            let speaker = speaker::choose(room.speaker, audio.iter().map(|(_, o, l)| (*o, *l)));
            if speaker != room.speaker {
                room.speaker = speaker;
                self.events.push_back(SfuEvent::ActiveSpeaker {
                    room: room_id.clone(),
                    participant: speaker,
                });
            }
            let limit = self.config.max_audio_streams.filter(|k| audio.len() > *k);
            if limit.is_some() {
                // Loudest first; ties keep a stable order so the chosen set does not churn.
                audio.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            }
            for (rank, (publication_id, _, _)) in audio.iter().enumerate() {
                let audible = limit.is_none_or(|k| rank < k);
                if let Some(publication) = self.publications.get_mut(publication_id)
                    && publication.audible != audible
                {
                    publication.audible = audible;
                    if audible {
                        resumed.push(*publication_id);
                    }
                }
            }
        }
        // A stream forwarded again restarts contiguous for its subscribers: the skipped
        // stretch is not loss.
        for publication_id in resumed {
            let Some(publication) = self.publications.get(&publication_id) else {
                continue;
            };
            for (subscriber, mid) in &publication.subscribers {
                if let Some(sub) = self
                    .participants
                    .get_mut(subscriber)
                    .and_then(|p| p.subscriptions.get_mut(mid))
                {
                    sub.forwarder.reset_source();
                }
            }
        }
    }

    /// What the recording tap has queued, oldest first.
    pub fn poll_recorded(&mut self) -> Option<RecordedMedia> {
        self.recorded.pop_front()
    }

    fn start_recording(&mut self, now: Instant, room: RoomId, recording_id: String, e2ee: bool) {
        if self.recordings.contains_key(&room) {
            return;
        }
        self.recordings.insert(room.clone(), recording_id.clone());
        self.recorded.push_back(RecordedMedia::Started {
            room: room.clone(),
            recording_id,
            e2ee,
            at: now,
        });
        let publications: Vec<PublicationId> = self
            .publications
            .iter()
            .filter(|(_, p)| p.room == room)
            .map(|(id, _)| *id)
            .collect();
        for publication in publications {
            self.record_publication(now, publication);
        }
    }

    fn record_publication(&mut self, now: Instant, id: PublicationId) {
        let Some(publication) = self.publications.get_mut(&id) else {
            return;
        };
        if publication.recorded {
            return;
        }
        publication.recorded = true;
        publication.recorded_since = Some(now);
        publication.recorded_layer = recordable_layer(&publication.layers, false);
        let kind = publication.kind;
        let layer = publication.recorded_layer;
        self.recorded.push_back(RecordedMedia::Track {
            room: publication.room.clone(),
            publication: id,
            participant: publication.owner,
            kind,
            source: publication.source,
            at: now,
        });
        // A video file must start on a keyframe; waiting for the next periodic one could
        // lose seconds.
        if kind == MediaKind::Video
            && let Some(layer) = layer
        {
            self.request_keyframe(id, 1 << layer, now);
        }
    }

    fn stop_recording(&mut self, now: Instant, room: &RoomId) {
        if self.recordings.remove(room).is_none() {
            return;
        }
        for publication in self.publications.values_mut() {
            if publication.room == *room {
                publication.recorded = false;
                publication.recorded_layer = None;
                publication.recorded_since = None;
            }
        }
        self.recorded.push_back(RecordedMedia::Stopped {
            room: room.clone(),
            at: now,
        });
    }

    fn set_publishing(&mut self, id: ParticipantId, allowed: bool) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        participant.may_publish = allowed;
        if allowed {
            return;
        }
        let published: Vec<PublicationId> = participant.published.iter().map(|(_, p)| *p).collect();
        for publication in published {
            self.remove_publication(publication);
        }
    }

    fn remove_publication(&mut self, publication_id: PublicationId) {
        let Some(publication) = self.publications.remove(&publication_id) else {
            return;
        };
        if publication.recorded {
            self.recorded.push_back(RecordedMedia::TrackEnded {
                publication: publication_id,
            });
        }
        for (subscriber, mid) in &publication.subscribers {
            if let Some(s) = self.participants.get_mut(subscriber)
                && let Some(sub) = s.subscriptions.get_mut(mid)
            {
                sub.publication = None;
            }
        }
        if let Some(owner) = self.participants.get_mut(&publication.owner) {
            owner.published.retain(|(_, p)| *p != publication_id);
            owner.ssrc_cache.retain(|(_, p, _)| *p != publication_id);
        }
        self.events.push_back(SfuEvent::PublicationRemoved {
            participant: publication.owner,
            publication: publication_id,
        });
    }

    fn remove_participant(&mut self, id: ParticipantId) {
        let Some(participant) = self.participants.get(&id) else {
            return;
        };
        let published: Vec<PublicationId> = participant.published.iter().map(|(_, p)| *p).collect();
        let subscribed: Vec<Mid> = participant.subscriptions.keys().copied().collect();
        for publication in published {
            self.remove_publication(publication);
        }
        for mid in subscribed {
            self.unbind(id, mid);
        }
        let Some(mut participant) = self.participants.remove(&id) else {
            return;
        };
        participant.rtc.disconnect();
        self.by_ufrag.remove(&participant.local_ufrag);
        for addr in &participant.addrs {
            if self.by_addr.get(addr) == Some(&id) {
                self.by_addr.remove(addr);
            }
        }
        if let Some(room) = self.rooms.get_mut(&participant.room) {
            room.participants.retain(|p| *p != id);
            if room.participants.is_empty() {
                self.rooms.remove(&participant.room);
            }
        }
    }

    fn add_remote_candidate(
        &mut self,
        id: ParticipantId,
        candidate: &str,
    ) -> Result<(), (ErrorCode, String)> {
        let participant = self.participants.get_mut(&id).ok_or((
            ErrorCode::NotJoined,
            format!("participant {id} has no transport"),
        ))?;
        let line = candidate.trim().trim_start_matches("a=");
        if line.is_empty() {
            // End of candidates: nothing to do for an ICE-lite server.
            return Ok(());
        }
        // Browsers without media permission hide their address behind an mDNS name. The
        // server cannot resolve it and does not need to: the client's STUN checks reveal the
        // address as a peer-reflexive candidate.
        if line
            .split_whitespace()
            .nth(4)
            .is_some_and(|a| a.ends_with(".local"))
        {
            return Ok(());
        }
        let candidate = Candidate::from_sdp_string(line)
            .map_err(|err| (ErrorCode::BadCandidate, format!("bad candidate: {err}")))?;
        if pairable(&candidate, self.config.candidate_addr) {
            participant.rtc.add_remote_candidate(candidate);
        }
        Ok(())
    }

    fn set_muted(
        &mut self,
        now: Instant,
        id: ParticipantId,
        publication_id: PublicationId,
        muted: bool,
    ) -> Result<(), (ErrorCode, String)> {
        let publication = self
            .publications
            .get_mut(&publication_id)
            .filter(|p| p.owner == id)
            .ok_or((
                ErrorCode::UnknownPublication,
                format!("{publication_id} is not a publication of {id}"),
            ))?;
        let unmuted_video = publication.muted && !muted && publication.kind == MediaKind::Video;
        if muted && !publication.muted {
            // Muted packets are dropped before the cache, and the publisher's encoder goes on:
            // after the mute, the cached frames no longer lead to the live ones.
            for layer in &mut publication.layers {
                layer.gop.clear();
            }
        }
        publication.muted = muted;
        if unmuted_video {
            // Each subscriber restarts on a keyframe of its layer, so nobody decodes deltas
            // against a picture from before the mute.
            let mut layers = 0u8;
            for (subscriber, mid) in &publication.subscribers {
                if let Some(sub) = self
                    .participants
                    .get_mut(subscriber)
                    .and_then(|s| s.subscriptions.get_mut(mid))
                {
                    sub.current = None;
                    if let Some(target) = sub.target {
                        layers |= 1 << target;
                    }
                }
            }
            self.request_keyframe(publication_id, layers, now);
        }
        Ok(())
    }

    /// Asks the publisher for a keyframe on `layers` (a bit per simulcast layer; 0: only
    /// those already pending), at most once per interval per publication. A request inside
    /// the interval is remembered, for every layer asked meanwhile, and sent when it ends.
    fn request_keyframe(&mut self, publication_id: PublicationId, layers: u8, now: Instant) {
        let interval = self.config.keyframe_request_interval;
        let Some(publication) = self.publications.get_mut(&publication_id) else {
            return;
        };
        if publication.kind != MediaKind::Video {
            return;
        }
        publication.keyframe_layers |= layers;
        if publication.keyframe_layers == 0 {
            publication.keyframe_request_pending = false;
            return;
        }
        if publication
            .last_keyframe_request
            .is_some_and(|t| now < t + interval)
        {
            publication.keyframe_request_pending = true;
            self.stats.keyframe_requests_throttled += 1;
            return;
        }
        let limits = self.config.gop_limits();
        if self.config.fast_start
            && publication.layers.len() > 1
            && publication.layers[0].available
            && !publication.layers[0].gop.fresh(limits, now)
        {
            // A round goes out anyway: it also asks for the lowest layer's keyframe when that
            // layer's cache, where new subscribers start, is stale or soon will be. A small
            // keyframe, and no extra round, so that joiners keep starting at once through a
            // join storm rather than waiting for the throttle.
            publication.keyframe_layers |= 1;
        }
        let wanted = std::mem::take(&mut publication.keyframe_layers);
        publication.keyframe_request_pending = false;
        publication.last_keyframe_request = Some(now);
        let (owner, mid) = (publication.owner, publication.mid);
        let mut rids: [Option<Option<Rid>>; MAX_SIMULCAST_LAYERS] = [None; MAX_SIMULCAST_LAYERS];
        for (index, layer) in publication
            .layers
            .iter()
            .enumerate()
            .take(MAX_SIMULCAST_LAYERS)
        {
            if wanted & (1 << index) != 0 {
                rids[index] = Some(layer.rid);
            }
        }
        let Some(publisher) = self.participants.get_mut(&owner) else {
            return;
        };
        let mut api = publisher.rtc.direct_api();
        for rid in rids.into_iter().flatten() {
            // A layer without packets yet needs no request: its first keyframe is on its way.
            if let Some(stream) = api.stream_rx_by_mid(mid, rid) {
                stream.request_keyframe(KeyframeRequestKind::Pli);
                self.stats.keyframe_requests_sent += 1;
            }
        }
        if !publisher.queued {
            publisher.queued = true;
            self.touched.push(owner);
        }
    }

    /// Drains every output of one participant's transport until it asks for a timeout.
    fn drain(&mut self, id: ParticipantId, now: Instant) {
        let mut found = std::mem::take(&mut self.found);
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        let mut timeouts_handled = 0;
        loop {
            match participant.rtc.poll_output() {
                Ok(Output::Transmit(transmit)) => {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += transmit.contents.len() as u64;
                    self.transmits.push_back(transmit);
                }
                Ok(Output::Timeout(at)) => {
                    // The pacer asks for a timeout at "now" after a write; honour it here so
                    // packets leave in this pass instead of on the next timer tick.
                    if at <= now && timeouts_handled < 4 {
                        timeouts_handled += 1;
                        if participant.rtc.handle_input(Input::Timeout(now)).is_err() {
                            break;
                        }
                        continue;
                    }
                    participant.next_timeout = at;
                    break;
                }
                Ok(Output::Event(event)) => match event {
                    Event::RtpPacket(packet) => found.push(Found::Rtp(packet)),
                    Event::KeyframeRequest(req) => {
                        found.push(Found::KeyframeRequest(req.mid, req.kind));
                    }
                    Event::MediaEgressStats(stats) => {
                        found.push(Found::Nacks(stats.mid, stats.nacks));
                    }
                    Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                        found.push(Found::Estimate(estimate.as_u64()));
                    }
                    Event::PeerStats(stats) => {
                        let loss = match (stats.egress_loss_fraction, stats.ingress_loss_fraction) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            (a, b) => a.or(b),
                        };
                        if let Some(quality) = classify_quality(loss, stats.rtt)
                            && participant.quality != Some(quality)
                        {
                            participant.quality = Some(quality);
                            found.push(Found::Quality(quality));
                        }
                    }
                    Event::Connected => found.push(Found::Connected),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        found.push(Found::Disconnected);
                    }
                    // The client closed its connection itself (DTLS close_notify), which it
                    // does right after saying goodbye. That is a departure, not a timeout:
                    // signaling learns the reason from the `leave` or the socket closing.
                    Event::Closed => participant.closed_by_peer = true,
                    _ => {}
                },
                Err(err) => {
                    tracing::debug!(participant = %id, %err, "transport failed");
                    participant.next_timeout = now + Duration::from_secs(3600);
                    found.push(Found::Disconnected);
                    break;
                }
            }
        }
        if !participant.rtc.is_alive() && !participant.disconnected_reported {
            found.push(Found::Disconnected);
        }
        for item in found.drain(..) {
            match item {
                Found::Rtp(packet) => self.forward(id, now, packet),
                Found::KeyframeRequest(mid, _kind) => {
                    self.stats.keyframe_requests_received += 1;
                    if self.restart_from_cache(id, mid, now) {
                        continue;
                    }
                    let wanted = self
                        .participants
                        .get(&id)
                        .and_then(|p| p.subscriptions.get(&mid))
                        .and_then(|s| Some((s.publication?, s.current.or(s.target)?)));
                    if let Some((publication, layer)) = wanted {
                        self.request_keyframe(publication, 1 << layer, now);
                    }
                }
                Found::Nacks(mid, total) => {
                    if let Some(sub) = self
                        .participants
                        .get_mut(&id)
                        .and_then(|p| p.subscriptions.get_mut(&mid))
                    {
                        self.stats.nacks_received += total.saturating_sub(sub.nacks_seen);
                        sub.nacks_seen = sub.nacks_seen.max(total);
                    }
                }
                Found::Estimate(estimate) => {
                    if let Some(p) = self.participants.get_mut(&id) {
                        p.estimate = Some(estimate);
                    }
                    self.mark_for_allocation(id);
                }
                Found::Quality(quality) => {
                    self.events.push_back(SfuEvent::QualityChanged {
                        participant: id,
                        quality,
                    });
                }
                Found::Connected => {
                    if let Some(p) = self.participants.get_mut(&id)
                        && !p.connected
                    {
                        p.connected = true;
                        p.connected_at = Some(now);
                        self.events
                            .push_back(SfuEvent::MediaConnected { participant: id });
                    }
                }
                Found::Disconnected => {
                    if let Some(p) = self.participants.get_mut(&id)
                        && !p.disconnected_reported
                    {
                        p.disconnected_reported = true;
                        p.next_timeout = now + Duration::from_secs(3600);
                        if !p.closed_by_peer {
                            self.events
                                .push_back(SfuEvent::MediaDisconnected { participant: id });
                        }
                    }
                }
            }
        }
        self.found = found;
    }

    /// Sends one received packet to every subscriber of its publication.
    fn forward(&mut self, publisher_id: ParticipantId, now: Instant, packet: RtpPacket) {
        self.stats.rtp_in += 1;
        let Some(publisher) = self.participants.get_mut(&publisher_id) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let (publication_id, layer) = match publisher.ssrc_cache.iter().find(|(s, _, _)| *s == ssrc)
        {
            Some(&(_, publication, layer)) => (publication, layer),
            None => {
                let stream = publisher
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()));
                let Some((mid, rid)) = stream else {
                    self.stats.dropped_unknown_ssrc += 1;
                    return;
                };
                let Some(&(_, publication)) = publisher.published.iter().find(|(m, _)| *m == mid)
                else {
                    self.stats.dropped_unknown_ssrc += 1;
                    return;
                };
                let Some(layer) = self
                    .publications
                    .get_mut(&publication)
                    .and_then(|p| layer_index(&mut p.layers, rid))
                else {
                    self.stats.dropped_unknown_ssrc += 1;
                    return;
                };
                publisher.ssrc_cache.push((ssrc, publication, layer));
                (publication, layer)
            }
        };
        let pt = packet.header.payload_type;
        let video_codec = publisher
            .pt_info
            .iter()
            .find(|i| i.pt == pt)
            .and_then(|i| i.video);
        let Some(publication) = self.publications.get_mut(&publication_id) else {
            return;
        };
        if publication.muted {
            self.stats.dropped_muted += 1;
            return;
        }
        if let Some(l) = publication.layers.get_mut(usize::from(layer)) {
            l.window_bytes += packet.payload.len() as u64;
            if !l.available {
                // A layer (re)appeared: its subscribers may now receive it.
                l.available = true;
                self.layer_changes.push(publication_id);
            }
        }
        if let Some(level) = packet.header.ext_vals.audio_level {
            publication.level.update(now, level);
        }
        let keyframe = video_codec.is_some_and(|c| codec::is_keyframe(c, &packet.payload));
        let is_video = publication.kind == MediaKind::Video;
        let fast_start = is_video && self.config.fast_start;
        let limits = self.config.gop_limits();
        if fast_start && let Some(l) = publication.layers.get_mut(usize::from(layer)) {
            l.gop.push(
                limits,
                *ssrc,
                CachedPacket {
                    seq_no: *packet.seq_no,
                    timestamp: packet.header.timestamp,
                    marker: packet.header.marker,
                    pt,
                    video_orientation: packet.header.ext_vals.video_orientation,
                    payload: packet.payload.clone(),
                    arrival: packet.timestamp,
                    vp8: video_codec == Some(VideoCodec::Vp8),
                },
                keyframe,
                now,
            );
        }
        if publication.recorded && publication.recorded_layer == Some(layer) {
            let codec = match video_codec {
                None => RecordedCodec::Opus,
                Some(VideoCodec::Vp8) => RecordedCodec::Vp8,
                Some(VideoCodec::Vp9) => RecordedCodec::Vp9,
                Some(VideoCodec::H264) => RecordedCodec::H264,
                Some(VideoCodec::Av1) => RecordedCodec::Av1,
            };
            self.recorded.push_back(RecordedMedia::Packet {
                publication: publication_id,
                codec,
                clock_rate: if is_video { 90_000 } else { 48_000 },
                seq: *packet.seq_no as u16,
                timestamp: packet.header.timestamp,
                marker: packet.header.marker,
                payload: packet.payload.clone(),
                at: now,
            });
        }
        if !is_video && !publication.audible {
            self.stats.dropped_not_loudest += 1;
            return;
        }
        let ext_vals = ExtensionValues {
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            video_orientation: packet.header.ext_vals.video_orientation,
            ..Default::default()
        };
        // VP8's picture ids are re-based per subscriber; read where they sit once per packet.
        let vp8 = match video_codec {
            Some(VideoCodec::Vp8) => crate::vp8::Fields::read(&packet.payload),
            _ => None,
        };
        self.vp8_patches.clear();
        let mut wanted_keyframes = 0u8;
        for &(subscriber_id, mid) in &publication.subscribers {
            let Some(subscriber) = self.participants.get_mut(&subscriber_id) else {
                continue;
            };
            let Some(subscription) = subscriber.subscriptions.get_mut(&mid) else {
                continue;
            };
            // A video subscription that receives nothing yet starts from a cached keyframe
            // (which holds this packet too, when it is of that layer) instead of waiting for
            // the target layer's next one; a live keyframe of the target starts it as always.
            if fast_start
                && subscription.current.is_none()
                && let Some(target) = subscription.target
                && layer <= target
                && !(layer == target && keyframe)
                && let Some(start) = fast_start_layer(
                    &publication.layers,
                    self.config.fast_start_ceiling(
                        subscriber.estimate,
                        subscriber.connected_at,
                        now,
                        target,
                    ),
                    limits,
                    now,
                )
            {
                if !subscriber.peer_keyed
                    && subscriber
                        .connected_at
                        .is_none_or(|at| now < at + PEER_KEYED_TIMEOUT)
                {
                    // It starts once the subscriber proves it has its SRTP keys (see
                    // `fast_start_waiting`), from what the caches hold then: replayed before,
                    // the packets would wait behind the handshake and grow stale, or reach a
                    // client still installing its keys.
                    self.stats.dropped_other_layer += 1;
                    continue;
                }
                let gop = &publication.layers[usize::from(start)].gop;
                if let Some(written) =
                    fast_start_from(now, subscription, &mut subscriber.rtc, gop, limits, start)
                {
                    self.stats.fast_starts += 1;
                    self.stats.fast_start_packets += written;
                    self.stats.rtp_forwarded += written;
                    if !subscriber.queued {
                        subscriber.queued = true;
                        self.touched.push(subscriber_id);
                    }
                    // Replayed if it was of `start`; of another layer otherwise. A start below
                    // the target moves up on the target's next keyframe, asked for by its
                    // next packet.
                    continue;
                }
            }
            if is_video {
                match layer_step(subscription.target, subscription.current, layer, keyframe) {
                    LayerStep::Forward => {}
                    LayerStep::Switch => {
                        // Re-base on the keyframe so the outgoing stream stays contiguous.
                        subscription.forwarder.reset_source();
                        subscription.current = Some(layer);
                        self.stats.layer_switches += 1;
                    }
                    LayerStep::AwaitKeyframe => {
                        wanted_keyframes |= 1 << layer;
                        if fast_start && subscription.current.is_none() {
                            // No cache could start it (above). The same throttled request
                            // round also asks for the lowest layer's keyframe: a small one,
                            // which refills the cache the next joiners start from.
                            wanted_keyframes |= 1;
                        }
                        self.stats.dropped_other_layer += 1;
                        continue;
                    }
                    LayerStep::Skip => {
                        self.stats.dropped_other_layer += 1;
                        continue;
                    }
                }
            }
            let Some(&(_, out_pt)) = subscription.pt_map.iter().find(|(p, _)| *p == pt) else {
                self.stats.dropped_unmapped_pt += 1;
                continue;
            };
            let rewritten = match subscription.forwarder.rewrite(
                now,
                *ssrc,
                *packet.seq_no,
                packet.header.timestamp,
                keyframe,
            ) {
                Ok(r) => r,
                Err(Hold::AwaitingKeyframe) => {
                    wanted_keyframes |= 1 << layer;
                    self.stats.held_awaiting_keyframe += 1;
                    continue;
                }
                Err(Hold::Stale) => {
                    self.stats.dropped_stale += 1;
                    continue;
                }
            };
            let Some(tx_ssrc) = subscription.tx_ssrc else {
                continue;
            };
            let payload = match vp8 {
                Some(fields) => match subscription.forwarder.vp8_numbers(fields) {
                    (numbers, true) => self.vp8_patches.get(&packet.payload, fields, numbers),
                    (_, false) => packet.payload.clone(),
                },
                None => packet.payload.clone(),
            };
            let mut api = subscriber.rtc.direct_api();
            let Some(stream) = api.stream_tx(&tx_ssrc) else {
                continue;
            };
            stream.write_rtp(
                RtpWrite::new(
                    out_pt,
                    rewritten.seq_no.into(),
                    rewritten.timestamp,
                    packet.timestamp,
                    payload,
                )
                .marker(packet.header.marker)
                .ext_vals(ext_vals.clone())
                .nackable(is_video),
            );
            self.stats.rtp_forwarded += 1;
            // A flag, not a search of the list: with a thousand subscribers a search per
            // write would make fan-out quadratic.
            if !subscriber.queued {
                subscriber.queued = true;
                self.touched.push(subscriber_id);
            }
        }
        if wanted_keyframes != 0 {
            self.request_keyframe(publication_id, wanted_keyframes, now);
        }
    }

    /// Starts, from the GOP caches, the video subscriptions of a participant that has just
    /// proved it holds its SRTP keys and that receive nothing yet, rather than on their next
    /// packet (up to a frame interval later).
    fn fast_start_waiting(&mut self, id: ParticipantId, now: Instant) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        let Participant {
            subscriptions,
            rtc,
            estimate,
            connected_at,
            queued,
            ..
        } = participant;
        let mut started = false;
        for subscription in subscriptions.values_mut() {
            if subscription.current.is_some() {
                continue;
            }
            if let Some(written) = start_from_cache(
                &self.config,
                &self.publications,
                (*estimate, *connected_at),
                subscription,
                rtc,
                now,
            ) {
                self.stats.fast_starts += 1;
                self.stats.fast_start_packets += written;
                self.stats.rtp_forwarded += written;
                started = true;
            }
        }
        if started && !*queued {
            *queued = true;
            self.touched.push(id);
        }
    }

    /// Repairs a fast start the client could not take: a subscription added by a
    /// renegotiation is replayed when the server answers, and a browser that applies the
    /// answer after the replay arrived has dropped it and asks for a keyframe. A request
    /// within [`FAST_START_REPAIR_WINDOW`] of a fast start is answered by replaying the cache
    /// once more, without asking the publisher. Only then, and only once: any other request
    /// (a receiver that lost packets, most often on a congested link) goes to the publisher,
    /// because a replayed GOP is a burst that a congested link would drop.
    fn restart_from_cache(&mut self, id: ParticipantId, mid: Mid, now: Instant) -> bool {
        if !self.config.fast_start {
            return false;
        }
        let Some(participant) = self.participants.get_mut(&id) else {
            return false;
        };
        let Participant {
            subscriptions,
            rtc,
            estimate,
            connected_at,
            queued,
            ..
        } = participant;
        let Some(subscription) = subscriptions
            .get_mut(&mid)
            .filter(|s| s.repairable_until.is_some_and(|until| now < until))
        else {
            return false;
        };
        let Some(written) = start_from_cache(
            &self.config,
            &self.publications,
            (*estimate, *connected_at),
            subscription,
            rtc,
            now,
        ) else {
            return false;
        };
        subscription.repairable_until = None;
        self.stats.keyframe_requests_from_cache += 1;
        self.stats.fast_start_packets += written;
        self.stats.rtp_forwarded += written;
        if !*queued {
            *queued = true;
            self.touched.push(id);
        }
        true
    }

    /// Lets every transport written to in this pass send what was queued. Draining is enough:
    /// after a write the pacer asks for a timeout at "now", which the drain loop feeds back.
    fn flush_touched(&mut self, now: Instant) {
        while let Some(id) = self.touched.pop() {
            if let Some(p) = self.participants.get_mut(&id) {
                p.queued = false;
            }
            self.drain(id, now);
        }
    }
}

/// The layer a video subscription that receives nothing yet can start from now: the highest
/// layer up to `highest` (its target, or lower, see [`EngineConfig::fast_start_ceiling`]) whose
/// cache holds a complete GOP within the bounds. A layer below the target is a smaller GOP: a
/// thumbnail at once, then the target on its next keyframe, rather than nothing until then.
/// Only layers that arrive count: a paused layer's cache would start a picture that does not
/// move.
fn fast_start_layer(layers: &[Layer], highest: u8, limits: GopLimits, now: Instant) -> Option<u8> {
    let top = usize::from(highest).min(layers.len().checked_sub(1)?);
    (0..=top)
        .rev()
        .find(|&i| layers[i].available && layers[i].gop.ready(limits, now))
        .map(|i| i as u8)
}

/// Starts a video subscription from its publication's caches: on the layer
/// [`fast_start_layer`] picks under the subscriber's ceiling (see
/// [`EngineConfig::fast_start_ceiling`]; `link` is its bandwidth estimate and when its
/// transport connected). Returns the packets written, or `None` when nothing could start it.
fn start_from_cache(
    config: &EngineConfig,
    publications: &FxHashMap<PublicationId, Publication>,
    link: (Option<u64>, Option<Instant>),
    subscription: &mut Subscription,
    rtc: &mut Rtc,
    now: Instant,
) -> Option<u64> {
    let (true, Some(publication), Some(target)) = (
        subscription.is_video,
        subscription.publication,
        subscription.target,
    ) else {
        return None;
    };
    let publication = publications.get(&publication).filter(|p| !p.muted)?;
    let limits = config.gop_limits();
    let highest = config.fast_start_ceiling(link.0, link.1, now, target);
    let start = fast_start_layer(&publication.layers, highest, limits, now)?;
    let gop = &publication.layers[usize::from(start)].gop;
    fast_start_from(now, subscription, rtc, gop, limits, start)
}

/// Starts a video subscription on `layer`'s cached GOP: writes the cached packets, from the
/// keyframe on, to the subscriber's stream (see [`Forwarder::begin_replay`] for their sequence
/// numbers and timestamps) and makes `layer` the current one, so that live packets follow.
/// Returns the packets written, or `None`, having written nothing, when the cache cannot start
/// it: no complete GOP within the limits, a payload type the subscriber did not negotiate, or
/// no outgoing stream.
///
/// Per packet this is a reference count on the shared payload and a write into the stream's
/// queue, as for live forwarding; only a VP8 packet whose picture id must be re-based for this
/// subscriber is copied.
fn fast_start_from(
    now: Instant,
    subscription: &mut Subscription,
    rtc: &mut Rtc,
    gop: &GopCache,
    limits: GopLimits,
    layer: u8,
) -> Option<u64> {
    let plan = gop.plan(limits, now)?;
    let pt_map = &subscription.pt_map;
    let out_pt = |pt: Pt| pt_map.iter().find(|(p, _)| *p == pt).map(|(_, out)| *out);
    if gop.packets().any(|p| out_pt(p.pt).is_none()) {
        return None;
    }
    let tx_ssrc = subscription.tx_ssrc?;
    let mut api = rtc.direct_api();
    let stream = api.stream_tx(&tx_ssrc)?;
    let forwarder = &mut subscription.forwarder;
    forwarder.reset_source();
    let start = forwarder.begin_replay(
        now,
        plan.ssrc,
        plan.first_seq,
        plan.last_timestamp,
        plan.frames,
    );
    let mut frame = 0u32;
    let mut previous: Option<u32> = None;
    let mut written = 0;
    for packet in gop.packets() {
        if previous.is_some_and(|ts| ts != packet.timestamp) {
            frame += 1;
        }
        previous = Some(packet.timestamp);
        let (Some(pt), Ok(rewritten)) = (
            out_pt(packet.pt),
            forwarder.rewrite_replayed(now, start, packet.seq_no, frame),
        ) else {
            continue;
        };
        // A replay is one subscriber's: its numbering is its own, so a copy is its own too.
        let payload = match crate::vp8::Fields::read(&packet.payload).filter(|_| packet.vp8) {
            Some(fields) => match forwarder.vp8_numbers(fields) {
                (numbers, true) => crate::vp8::patched(&packet.payload, fields, numbers),
                (_, false) => packet.payload.clone(),
            },
            None => packet.payload.clone(),
        };
        // The wallclock of every replayed packet is that of the newest cached one, which is
        // where the compressed frames sit on the live timeline: sender reports stay true.
        stream.write_rtp(
            RtpWrite::new(
                pt,
                rewritten.seq_no.into(),
                rewritten.timestamp,
                plan.last_arrival,
                payload,
            )
            .marker(packet.marker)
            .ext_vals(ExtensionValues {
                video_orientation: packet.video_orientation,
                ..Default::default()
            })
            .nackable(true),
        );
        written += 1;
    }
    subscription.current = Some(layer);
    subscription.repairable_until = Some(now + FAST_START_REPAIR_WINDOW);
    Some(written)
}

/// The layers a publisher declared for a video m-line, bounded and checked; one plain layer
/// when it declared none.
fn declared_layers(declared: &[protocol::SimulcastLayer]) -> Vec<Layer> {
    let mut layers: Vec<Layer> = Vec::new();
    for layer in declared.iter().take(MAX_SIMULCAST_LAYERS) {
        let valid = !layer.rid.is_empty()
            && layer.rid.len() <= 16
            && layer
                .rid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let rid = Rid::from(layer.rid.as_str());
        if !valid || layers.iter().any(|l| l.rid == Some(rid)) {
            continue;
        }
        layers.push(Layer {
            rid: Some(rid),
            width: layer.width.min(16_384),
            height: layer.height.min(16_384),
            ..Layer::plain()
        });
    }
    if layers.is_empty() {
        layers.push(Layer::plain());
    }
    layers
}

/// The layer a recording takes: a plain stream's only one; for simulcast the top layer once
/// it arrives, or, when `settle` (the top did not come in time), the highest arriving.
fn recordable_layer(layers: &[Layer], settle: bool) -> Option<u8> {
    let top = layers.len().checked_sub(1)?;
    if top == 0 || layers[top].available {
        return Some(top as u8);
    }
    if !settle {
        return None;
    }
    layers.iter().rposition(|l| l.available).map(|i| i as u8)
}

/// The layer index of a stream with `rid`. A rid the publisher did not declare takes the
/// plain layer's place or is appended (order of appearance, size unknown), up to the limit.
fn layer_index(layers: &mut Vec<Layer>, rid: Option<Rid>) -> Option<u8> {
    let Some(rid) = rid else {
        return Some(0);
    };
    if let Some(index) = layers.iter().position(|l| l.rid == Some(rid)) {
        return Some(index as u8);
    }
    if let [only] = layers.as_mut_slice()
        && only.rid.is_none()
    {
        only.rid = Some(rid);
        return Some(0);
    }
    if layers.len() >= MAX_SIMULCAST_LAYERS {
        return None;
    }
    layers.push(Layer {
        rid: Some(rid),
        ..Layer::plain()
    });
    Some(layers.len() as u8 - 1)
}

/// What to do with one packet of `layer` for a subscription that should receive `target`
/// and receives `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerStep {
    Forward,
    /// A keyframe of the target layer: switch to it now.
    Switch,
    /// The target layer, but not a keyframe: ask for one and keep the current layer.
    AwaitKeyframe,
    Skip,
}

fn layer_step(target: Option<u8>, current: Option<u8>, layer: u8, keyframe: bool) -> LayerStep {
    let Some(target) = target else {
        return LayerStep::Skip;
    };
    if layer == target && current != Some(target) {
        return if keyframe {
            LayerStep::Switch
        } else {
            LayerStep::AwaitKeyframe
        };
    }
    if current == Some(layer) {
        LayerStep::Forward
    } else {
        LayerStep::Skip
    }
}

/// Whether a datagram is SRTP or SRTCP by its first byte (RFC 7983), which only a peer that
/// has its keys sends. Its authenticity is not checked here: a forged one from the peer's
/// address only makes a fast start early, and a client that drops it asks for a keyframe.
fn rtp_or_rtcp(data: &[u8]) -> bool {
    data.first().is_some_and(|b| (128..=191).contains(b))
}

/// Whether a client's candidate can pair with the server's one candidate (UDP, one address
/// family). The ICE agent counts every remote candidate it is given: one it can never pair
/// with, such as the TCP or IPv6 candidate a browser may trickle before its UDP IPv4 ones,
/// would make it declare the connection failed ("no possible pairs") before the client's
/// first check arrives.
fn pairable(candidate: &Candidate, local: SocketAddr) -> bool {
    candidate.proto() == Protocol::Udp && candidate.addr().is_ipv4() == local.is_ipv4()
}

/// The offer without its SHA-1 (or other weak) DTLS fingerprints, so that the transport is
/// authenticated by a strong one only; `None` when no strong one is left.
fn without_weak_fingerprints(sdp: &str) -> Option<std::borrow::Cow<'_, str>> {
    let weak = |line: &str| {
        line.trim()
            .strip_prefix("a=fingerprint:")
            .is_some_and(|value| {
                let algorithm = value.split_whitespace().next().unwrap_or_default();
                !["sha-256", "sha-384", "sha-512"]
                    .iter()
                    .any(|strong| algorithm.eq_ignore_ascii_case(strong))
            })
    };
    let strong = sdp
        .lines()
        .any(|l| l.trim().starts_with("a=fingerprint:") && !weak(l));
    if !strong {
        return None;
    }
    if !sdp.lines().any(weak) {
        return Some(std::borrow::Cow::Borrowed(sdp));
    }
    let mut kept = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n').filter(|l| !weak(l)) {
        kept.push_str(line);
    }
    Some(std::borrow::Cow::Owned(kept))
}

/// The offer without the candidate lines the server cannot pair with (see [`pairable`]).
/// A line str0m cannot read stays, for str0m to judge.
fn without_unpairable_candidates(sdp: &str, local: SocketAddr) -> std::borrow::Cow<'_, str> {
    let keep = |line: &str| {
        line.trim()
            .strip_prefix("a=")
            .filter(|l| l.starts_with("candidate:"))
            .and_then(|l| Candidate::from_sdp_string(l).ok())
            .is_none_or(|c| pairable(&c, local))
    };
    if sdp.lines().all(keep) {
        return std::borrow::Cow::Borrowed(sdp);
    }
    let mut kept = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n').filter(|l| keep(l)) {
        kept.push_str(line);
    }
    std::borrow::Cow::Owned(kept)
}

/// The SSRC of an RTP (not RTCP) datagram, read from its clear header.
fn rtp_ssrc(data: &[u8]) -> Option<u32> {
    let first = *data.first()?;
    let second = *data.get(1)?;
    // RFC 7983: 128..=191 is RTP or RTCP; RTCP payload types are 192..=223 (RFC 5761).
    if !(128..=191).contains(&first) || (192..=223).contains(&second) {
        return None;
    }
    Some(u32::from_be_bytes(data.get(8..12)?.try_into().ok()?))
}

/// The payload parameters negotiated on one m-line.
fn media_params(rtc: &Rtc, mid: Mid) -> Vec<PayloadParams> {
    let Some(media) = rtc.media(mid) else {
        return Vec::new();
    };
    let pts = media.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| pts.contains(&p.pt()))
        .cloned()
        .collect()
}

/// Pairs each publisher payload type with the subscriber's payload type for the same codec:
/// the exact same parameters when offered, otherwise the same codec.
fn map_payload_types(publisher: &[PayloadParams], subscriber: &[PayloadParams]) -> Vec<(Pt, Pt)> {
    publisher
        .iter()
        .filter_map(|p| {
            let spec = p.spec();
            subscriber
                .iter()
                .find(|s| s.spec() == spec)
                .or_else(|| subscriber.iter().find(|s| s.spec().codec == spec.codec))
                .map(|s| (p.pt(), s.pt()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_lose_only_the_candidates_the_server_cannot_pair_with() {
        let local: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let sdp = "v=0\r\n\
            a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n\
            a=candidate:2 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active\r\n\
            a=candidate:3 1 udp 2122262783 ::1 50001 typ host\r\n\
            a=candidate:4 1 udp 2122260223 abcd.local 50002 typ host\r\n\
            a=mid:0\r\n";
        let kept = without_unpairable_candidates(sdp, local);
        assert_eq!(
            kept,
            "v=0\r\n\
            a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n\
            a=candidate:4 1 udp 2122260223 abcd.local 50002 typ host\r\n\
            a=mid:0\r\n"
        );
        let usable = "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n";
        assert!(matches!(
            without_unpairable_candidates(usable, local),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn offers_keep_only_strong_dtls_fingerprints() {
        let only_sha1 = "v=0\r\na=fingerprint:sha-1 AB:CD\r\na=mid:0\r\n";
        assert!(without_weak_fingerprints(only_sha1).is_none());
        let both = "v=0\r\na=fingerprint:sha-1 AB:CD\r\na=fingerprint:SHA-256 EF:01\r\n";
        assert_eq!(
            without_weak_fingerprints(both).as_deref(),
            Some("v=0\r\na=fingerprint:SHA-256 EF:01\r\n")
        );
        let strong = "a=fingerprint:sha-384 AB\r\n";
        assert!(matches!(
            without_weak_fingerprints(strong),
            Some(std::borrow::Cow::Borrowed(_))
        ));
    }

    #[test]
    fn rtp_ssrc_reads_only_rtp() {
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 96;
        rtp[8..12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        let mut rtcp = rtp;
        rtcp[1] = 200;
        assert_eq!(rtp_ssrc(&rtcp), None);
        assert_eq!(rtp_ssrc(&rtp[..10]), None);
        assert_eq!(rtp_ssrc(&[0x00, 0x01]), None);
    }

    #[test]
    fn quality_follows_loss_and_rtt() {
        let ms = Duration::from_millis;
        assert_eq!(classify_quality(None, None), None);
        assert_eq!(
            classify_quality(Some(0.0), Some(ms(20))),
            Some(Quality::Good)
        );
        assert_eq!(
            classify_quality(Some(0.05), Some(ms(20))),
            Some(Quality::Fair)
        );
        assert_eq!(
            classify_quality(Some(0.0), Some(ms(450))),
            Some(Quality::Fair)
        );
        assert_eq!(classify_quality(Some(0.2), None), Some(Quality::Poor));
        assert_eq!(classify_quality(None, Some(ms(900))), Some(Quality::Poor));
    }
}
