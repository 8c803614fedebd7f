//! The sans-IO media engine: rooms, participants, publications, subscriptions and forwarders
//! on top of one `str0m::Rtc` per participant.
//!
//! Time is always an argument and the engine never touches a socket. The driver feeds it
//! datagrams, commands and timeouts, and drains datagrams to send ([`Engine::poll_transmit`])
//! and events for signaling ([`Engine::poll_event`]).

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{
    ErrorCode, MAX_SIMULCAST_LAYERS, MAX_VIDEO_SIZES, MediaKind, ParticipantId, PublicationId,
    Quality, RoomId, TrackSource, VideoSize,
};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::error::RtcError;
use str0m::format::PayloadParams;
use str0m::ice::StunMessage;
use str0m::media::{Direction, KeyframeRequestKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::allocator::{self, DEFAULT_LAYER_BITRATES, Demand};
use crate::api::{PublicationAnnouncement, SfuCommand, SfuEvent, TransportFailure};
use crate::codec::{self, VideoCodec};
use crate::forwarder::{Forwarder, Hold};
use crate::gop::{CachedPacket, GopCache, GopLimits};
use crate::recording::{RecordedCodec, RecordedMedia};
pub use crate::relay::{MAX_WORKERS, MediaPacket, MirrorInfo, Relay, WorkerId, is_link};
use crate::speaker::{self, LevelMeter};
use crate::stats::EngineStats;

mod mirror;
mod publication;
mod sdp;
mod subscription;

use sdp::*;

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

/// How long before the cache that a subscription waiting for its subscriber's keys would start
/// from ages out, that subscription asks for the publisher's next keyframe: a keyframe's round
/// trip, with room. A handshake that outlasts the cache then finds the next keyframe's GOP
/// cached, rather than nothing to replay until a keyframe asked for at its expiry comes.
const FAST_START_REFRESH_MARGIN: Duration = Duration::from_millis(500);

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
    /// This engine's worker (0 coordinates rooms, see [`crate::relay`]) and how many there
    /// are. With one worker nothing is mirrored.
    pub worker: WorkerId,
    pub workers: WorkerId,
    /// Where this server's publication ids start: in a cluster each server numbers its own
    /// from a base of its own, so that a mirrored publication keeps its id on every server.
    pub publication_ids_from: u64,
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
            worker: 0,
            workers: 1,
            publication_ids_from: 0,
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
    #[error(transparent)]
    DtlsCertificateUnusable(#[from] crate::dtls::CertificateUnusable),
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
    /// The publisher's payload types (its m-line's parameters), mapped onto each
    /// subscriber's when it binds.
    params: Vec<PayloadParams>,
    /// `None`: owned here (its publisher's transport is on this engine). `Some(worker)`: a
    /// mirror of the publication that worker owns, or that arrives over that link from
    /// another server (see [`crate::relay`]).
    origin: Option<WorkerId>,
    /// Owner, or the gateway's mirror: the workers and links whose mirrors want its packets
    /// (a bit each).
    mirrors: u64,
    /// Owner, or the gateway's mirror: the simulcast layers each of those mirrors' subscribers
    /// want.
    remote_layers: Vec<(WorkerId, u8)>,
    /// Mirror: whether the owner was asked for its packets.
    wanted: bool,
    /// A link's mirror: when its owner's server last announced it (it ends unless announced
    /// again within [`LINK_MIRROR_LIFETIME`]).
    announced_at: Option<Instant>,
}

/// What a new publication is: who publishes it, where, and what it carries.
#[derive(Debug)]
struct NewPublication {
    owner: ParticipantId,
    room: RoomId,
    mid: Mid,
    kind: MediaKind,
    source: TrackSource,
    muted: bool,
    layers: Vec<Layer>,
    params: Vec<PayloadParams>,
    /// `None` when owned here; the owner's worker for a mirror.
    origin: Option<WorkerId>,
}

impl Publication {
    fn new(new: NewPublication) -> Self {
        Self {
            owner: new.owner,
            room: new.room,
            mid: new.mid,
            kind: new.kind,
            muted: new.muted,
            subscribers: Vec::new(),
            last_keyframe_request: None,
            keyframe_request_pending: false,
            keyframe_layers: 0,
            recorded: false,
            recorded_layer: None,
            recorded_since: None,
            source: new.source,
            layers: new.layers,
            level: LevelMeter::default(),
            audible: true,
            told_layers: None,
            params: new.params,
            origin: new.origin,
            mirrors: 0,
            remote_layers: Vec::new(),
            wanted: false,
            announced_at: None,
        }
    }
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
    /// The SSRC the layer arrives on now, and those it replaced: a publisher that restarts
    /// an encoder sends on a new SSRC, and a late packet or retransmission of the old one
    /// must not turn subscribers back to a stream that has ended.
    source: Option<u32>,
    retired: [Option<u32>; RETIRED_SOURCES],
}

/// The replaced SSRCs remembered per layer.
const RETIRED_SOURCES: usize = 4;

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
            source: None,
            retired: [None; RETIRED_SOURCES],
        }
    }

    /// Whether a packet on `ssrc` belongs to the layer's current stream: a new SSRC replaces
    /// the current one, a replaced one is refused for good.
    fn accepts_source(&mut self, ssrc: u32) -> bool {
        match self.source {
            Some(current) if current == ssrc => true,
            _ if self.retired.contains(&Some(ssrc)) => false,
            Some(current) => {
                self.retired.rotate_right(1);
                self.retired[0] = Some(current);
                self.source = Some(ssrc);
                true
            }
            None => {
                self.source = Some(ssrc);
                true
            }
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
    /// Why its DTLS handshake failed, found in a call into its transport; the next drain
    /// sends what is left (OpenSSL's alert) and ends the transport with this reason.
    handshake_failed: Option<String>,
    /// Whether the participant is in the engine's list of transports to drain this pass.
    queued: bool,
    /// Whether it was told that media it sent matched none of its m-lines (once).
    told_unroutable: bool,
    /// Whether its send m-lines become publications (false for viewers).
    may_publish: bool,
    /// The last quality label told to signaling.
    quality: Option<Quality>,
    /// The egress bandwidth estimate (bits per second), once the estimator produced one.
    estimate: Option<u64>,
    /// Whether its layers must be allocated again (estimate, sizes or subscriptions changed).
    reallocate: bool,
    /// Its RTP streams' sequence numbers, checked before str0m extends them
    /// ([`crate::seqguard`]), and the extension id of the transport-wide number.
    seq_guard: crate::seqguard::SeqGuard,
    transport_cc: Option<u8>,
    /// The size each subscribed video is shown at, by publication.
    video_sizes: FxHashMap<PublicationId, (u32, u32)>,
    /// The (minimum, desired) bitrates last given to its estimator.
    bwe_bitrates: (u64, u64),
    /// When its estimator is next asked to probe for a demand that stays unmet.
    reprobe: allocator::Reprobe,
}

#[derive(Debug, Default)]
struct Room {
    participants: Vec<ParticipantId>,
}

/// Runs one call into a participant's transport, catching a panic.
///
/// str0m parses everything a participant sends (DTLS, SRTCP, RTCP feedback, SDP) inside these
/// calls. A panic there is a defect of a library this project uses as it is (str0m 0.25's
/// transport-wide congestion feedback panics on a run chunk of length zero followed by a large
/// delta, which any connected participant can send), and it must cost the participant whose
/// input caused it, not the worker and everyone on it. `catch_unwind` costs nothing until
/// something panics. After a panic the transport's state is unknown, so the caller ends it
/// ([`Engine::fail_transport`]) and never calls it again; asserting unwind safety is sound
/// because nothing observes that state afterwards.
fn contained<R>(rtc: &mut Rtc, call: impl FnOnce(&mut Rtc) -> R) -> Option<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(rtc))).ok()
}

/// Why a transport's DTLS handshake failed, when an error str0m returned says so: an error of
/// the DTLS connection itself (OpenSSL's reason, which [`crate::dtls`] leaves on this thread),
/// or str0m's check of the client's certificate against the offer's `a=fingerprint`, which it
/// reports as an error of the remote SDP. Only before the transport connected: afterwards SRTP
/// has its keys whatever DTLS does, and such an error is refused input as any other.
fn handshake_failure(connected: bool, err: &RtcError) -> Option<String> {
    // Taken whatever the error, so that a reason never outlives the call that left it.
    let reason = crate::dtls::take_failure();
    if connected {
        return None;
    }
    match err {
        RtcError::Dtls(_) => Some(reason.unwrap_or_else(|| err.to_string())),
        RtcError::RemoteSdp(message) => Some(format!(
            "the certificate does not match the offer's a=fingerprint ({message})"
        )),
        _ => None,
    }
}

/// A receive stream declared for an SSRC by its payload type alone.
#[derive(Debug, Clone, Copy)]
enum Routed {
    /// The m-line's main stream, replacing the one on another SSRC if any.
    Main { replaces: Option<Ssrc> },
    /// The repair (RTX) stream of the m-line's main stream.
    Repair,
}

/// What becomes of a removed participant's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Closed properly (DTLS close_notify).
    Disconnect,
    /// Dropped without another call: it panicked ([`contained`]).
    Drop,
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

/// Chrome's usual header extensions (str0m's standard map) without the transport-wide
/// congestion control number.
fn extensions_without_transport_cc() -> str0m::rtp::ExtensionMap {
    use str0m::rtp::{Extension, ExtensionMap};
    let mut map = ExtensionMap::empty();
    for (id, extension) in ExtensionMap::standard().iter() {
        if *extension != Extension::TransportSequenceNumber {
            map.set(id, extension.clone());
        }
    }
    map
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

/// A peer address a transport took or let go: with several workers, the driver gives each
/// bound address a socket of its own (connected to it), so that the kernel delivers that
/// peer's datagrams straight to the worker holding its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressChange {
    Bound(SocketAddr),
    Released(SocketAddr),
}

/// The worker a STUN binding request is for, from the server's ufrag in its USERNAME (see
/// [`Engine`]'s ufrags: `w` and the worker in two hex digits); `None` for anything else.
pub fn ufrag_worker(data: &[u8]) -> Option<WorkerId> {
    let stun = StunMessage::parse(data).ok()?;
    let (local, _) = stun.split_username()?;
    let digits = local.strip_prefix('w')?.get(..2)?;
    WorkerId::from_str_radix(digits, 16).ok()
}

/// The SFU's media core.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    /// str0m's crypto with DTLS through OpenSSL ([`crate::dtls`]), shared by every transport.
    crypto: Arc<CryptoProvider>,
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
    /// Messages for other workers, oldest first.
    relays: VecDeque<(WorkerId, Relay)>,
    /// Peer addresses bound to a transport or released since the driver last looked.
    addresses: VecDeque<AddressChange>,
    /// Each room's loudest voice, as last announced: chosen here by the coordinator, told to
    /// the other workers (their allocations put the speaker's video first).
    speakers: HashMap<RoomId, Option<ParticipantId>>,
    /// This packet's VP8 copies with re-based picture ids, shared by the subscribers whose
    /// numbering matches.
    vp8_patches: crate::vp8::Patches,
    /// The gateway (worker 0): the links to other servers each room spans (a bit per link).
    links: HashMap<RoomId, u64>,
    /// Subscriptions to publications not known here yet: another server's publication whose
    /// mirror was announced after the subscriber's offer (signaling and the relay travel
    /// separately). Bound when the mirror arrives; at most [`MAX_AWAITING`].
    awaiting: Vec<(PublicationId, ParticipantId, Mid)>,
}

/// The most subscriptions waiting for their publication's mirror at once.
const MAX_AWAITING: usize = 4_096;

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        // One certificate for every transport: generating a key pair per participant would
        // make joins cost milliseconds of CPU each.
        let crypto = Arc::new(crate::dtls::crypto_provider());
        let dtls_cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or(EngineError::DtlsCertificate)?;
        crate::dtls::check_certificate(&dtls_cert)?;
        // Publication ids are unique across workers: each numbers its own in a residue class
        // of the worker count.
        let first_publication = config.publication_ids_from + 1 + u64::from(config.worker);
        Ok(Self {
            config,
            crypto,
            dtls_cert,
            participants: FxHashMap::default(),
            rooms: HashMap::new(),
            publications: FxHashMap::default(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            next_publication: first_publication,
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
            relays: VecDeque::new(),
            addresses: VecDeque::new(),
            speakers: HashMap::new(),
            vp8_patches: crate::vp8::Patches::default(),
            links: HashMap::new(),
            awaiting: Vec::new(),
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
        let owned = self
            .publications
            .values()
            .filter(|p| p.origin.is_none())
            .count();
        (
            self.rooms.len(),
            self.participants.len(),
            owned,
            subscriptions,
        )
    }

    /// How many publications are mirrored here (owned by another worker or server).
    pub fn mirrored(&self) -> usize {
        self.publications
            .values()
            .filter(|p| p.origin.is_some())
            .count()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for signaling.
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next; `None` before anything is
    /// scheduled (the engine reads no clock, so it cannot say "a tick from now" itself).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let participants = self.participants.values().map(|p| p.next_timeout);
        let keyframes = self.publications.values().filter_map(|p| {
            p.last_keyframe_request
                .filter(|_| p.keyframe_request_pending)
                .map(|t| t + self.config.keyframe_request_interval)
        });
        participants.chain(keyframes).chain(self.next_tick).min()
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
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            match contained(&mut p.rtc, |rtc| rtc.handle_input(Input::Timeout(now))) {
                Some(Ok(())) => {}
                Some(Err(err)) => match handshake_failure(p.connected, &err) {
                    Some(reason) => p.handshake_failed = Some(reason),
                    None => tracing::debug!(participant = %id, %err, "timeout input failed"),
                },
                None => {
                    self.fail_transport(id, TransportFailure::Panicked);
                    continue;
                }
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
        if let Some((ssrc, seq, transport_seq)) =
            crate::seqguard::read(data, participant.transport_cc)
            && !participant.seq_guard.admits(ssrc, seq, transport_seq)
        {
            self.stats.dropped_malformed += 1;
            return;
        }
        let known_before = rtp_ssrc.is_some_and(|ssrc| {
            participant
                .rtc
                .direct_api()
                .stream_rx(&ssrc.into())
                .is_some()
        });
        match contained(&mut participant.rtc, |rtc| rtc.handle_input(input)) {
            Some(Ok(())) => {}
            Some(Err(err)) => match handshake_failure(participant.connected, &err) {
                // The drain below ends the transport, once OpenSSL's alert is out.
                Some(reason) => participant.handshake_failed = Some(reason),
                None => {
                    self.stats.dropped_malformed += 1;
                    tracing::debug!(participant = %id, %err, "input refused by the transport");
                }
            },
            None => {
                self.fail_transport(id, TransportFailure::Panicked);
                self.flush_touched(now);
                return;
            }
        }
        if let Some(ssrc) = rtp_ssrc
            && !known_before
            && !self.receives(id, ssrc)
        {
            self.demultiplex_unknown(now, id, ssrc, source, destination, data);
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

    /// Whether a participant's transport has a receive stream for `ssrc`, as a main stream
    /// or as the repair (RTX) stream of one of its publications' layers.
    fn receives(&mut self, id: ParticipantId, ssrc: u32) -> bool {
        let Some(participant) = self.participants.get_mut(&id) else {
            return true;
        };
        let ssrc = Ssrc::from(ssrc);
        let mut api = participant.rtc.direct_api();
        if api.stream_rx(&ssrc).is_some() {
            return true;
        }
        for (mid, publication) in &participant.published {
            let Some(publication) = self.publications.get(publication) else {
                continue;
            };
            for layer in &publication.layers {
                if api
                    .stream_rx_by_mid(*mid, layer.rid)
                    .is_some_and(|s| s.rtx() == Some(ssrc))
                {
                    return true;
                }
            }
        }
        false
    }

    /// An RTP packet on an SSRC that neither the offer's `a=ssrc` lines nor str0m's mid and
    /// rid header extensions mapped to a receive stream: routed by its payload type when
    /// exactly one of the participant's send m-lines has it (RFC 8843 §9.2), as clients whose
    /// offer has no `a=ssrc` and no mid extension require (GStreamer's webrtcbin). Anything
    /// else is dropped, counted, and told to its sender once.
    fn demultiplex_unknown(
        &mut self,
        now: Instant,
        id: ParticipantId,
        ssrc: u32,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let routed = self.route_by_payload_type(id, ssrc, data);
        if routed.is_some()
            && let Ok(contents) = data.try_into()
            && let Some(participant) = self.participants.get_mut(&id)
        {
            // str0m dropped the packet before decrypting it, having no stream for it; with the
            // stream declared, the same packet is taken as the stream's first.
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination,
                    contents,
                },
            );
            match contained(&mut participant.rtc, |rtc| rtc.handle_input(input)) {
                Some(Ok(())) => {}
                Some(Err(_)) => self.stats.dropped_malformed += 1,
                None => {
                    self.fail_transport(id, TransportFailure::Panicked);
                    return;
                }
            }
            // A stream is replaced only by one whose packet authenticated: a datagram forged
            // from the client's address (it has no SRTP keys) must not unmap its media.
            if let Some(Routed::Main { replaces }) = routed {
                let mut api = participant.rtc.direct_api();
                let authentic = api
                    .stream_rx(&Ssrc::from(ssrc))
                    .is_some_and(|s| s.last_time().is_some());
                if !authentic {
                    api.remove_stream_rx(Ssrc::from(ssrc));
                } else if let Some(old) = replaces {
                    api.remove_stream_rx(old);
                }
            }
        }
        if self.receives(id, ssrc) {
            return;
        }
        self.stats.dropped_unknown_ssrc += 1;
        // Padding (bandwidth probes, RTX padding before its main stream is known) carries no
        // media that could be lost, so only media makes the sender hear of it.
        let padding = data.first().is_some_and(|b| b & 0x20 != 0);
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        if padding || participant.told_unroutable {
            return;
        }
        participant.told_unroutable = true;
        let pt = data.get(1).map_or(0, |b| b & 0x7f);
        self.events.push_back(SfuEvent::Refused {
            participant: id,
            code: ErrorCode::UnroutableMedia,
            message: format!(
                "RTP on SSRC {ssrc} with payload type {pt} matches none of your m-lines and is \
                 dropped: announce it with a=ssrc, send the mid (and rid) header extension, or \
                 use a payload type that only one sending m-line has"
            ),
        });
    }

    /// Declares a receive stream for `ssrc` on the one send m-line of the participant whose
    /// payload types include the packet's, as its main stream or, for an RTX payload type, as
    /// the repair stream of the main stream already there. A simulcast m-line is never chosen:
    /// its layer cannot be told without the rid extension.
    fn route_by_payload_type(
        &mut self,
        id: ParticipantId,
        ssrc: u32,
        data: &[u8],
    ) -> Option<Routed> {
        let participant = self.participants.get_mut(&id)?;
        let pt = data.get(1).map(|b| Pt::from(b & 0x7f))?;
        let mut found: Option<(Mid, bool)> = None;
        for (mid, _) in &participant.published {
            let Some(media) = participant.rtc.media(*mid) else {
                continue;
            };
            let pts = media.remote_pts();
            let simulcast = matches!(media.rids_rx(), str0m::media::Rids::Specific(_));
            for params in participant.rtc.codec_config().params() {
                if !pts.contains(&params.pt()) {
                    continue;
                }
                let repair = params.resend() == Some(pt);
                if params.pt() != pt && !repair {
                    continue;
                }
                if simulcast || found.is_some_and(|(m, _)| m != *mid) {
                    return None;
                }
                found = Some((*mid, repair));
            }
        }
        let (mid, repair) = found?;
        let ssrc = Ssrc::from(ssrc);
        let mut api = participant.rtc.direct_api();
        let main = api.stream_rx_by_mid(mid, None).map(|s| s.ssrc());
        if repair {
            api.expect_stream_rx(main?, Some(ssrc), mid, None);
            return Some(Routed::Repair);
        }
        api.expect_stream_rx(ssrc, None, mid, None);
        // A new SSRC on the m-line replaces its stream (an encoder restart), so that streams
        // stay one per m-line whatever SSRCs a client cycles through.
        Some(Routed::Main {
            replaces: main.filter(|old| *old != ssrc),
        })
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
                    self.addresses.push_back(AddressChange::Released(oldest));
                }
            }
            participant.addrs.push(source);
        }
        if self.by_addr.insert(source, id).is_none() {
            self.addresses.push_back(AddressChange::Bound(source));
        }
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
                self.remove_participant(participant, Transport::Disconnect);
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
        // The ufrag names the worker, so that a binding request from a new address, arriving
        // on any worker's socket, finds the worker that holds the transport (`ufrag_worker`).
        let mut creds = str0m::IceCreds::new();
        creds.ufrag = format!("w{:02x}{}", self.config.worker, creds.ufrag);
        let mut builder = Rtc::builder()
            .set_crypto_provider(Arc::clone(&self.crypto))
            .set_local_ice_credentials(creds)
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(self.dtls_cert.clone())
            .set_stats_interval(Some(STATS_INTERVAL));
        if self.config.bandwidth_estimation {
            builder = builder.enable_bwe(Some(INITIAL_ESTIMATE));
        } else {
            // Without estimation the transport-wide sequence numbers feed nothing: not
            // negotiating them spares each packet its extension and each client its feedback.
            builder = builder.set_extension_map(extensions_without_transport_cc());
        }
        // str0m cannot report a DTLS instance it failed to create, and panics instead; the
        // certificate was checked at start, so only a failed allocation inside OpenSSL is left,
        // and it must cost this join, not the worker.
        let mut rtc = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.build(now)))
            .map_err(|_| {
                (
                    ErrorCode::MediaUnavailable,
                    "the media transport could not be created".to_string(),
                )
            })?;
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
                handshake_failed: None,
                queued: false,
                told_unroutable: false,
                may_publish: true,
                quality: None,
                estimate: None,
                reallocate: false,
                video_sizes: FxHashMap::default(),
                bwe_bitrates: (0, 0),
                reprobe: allocator::Reprobe::default(),
                seq_guard: crate::seqguard::SeqGuard::default(),
                transport_cc: None,
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
        let Some(answer) = contained(&mut participant.rtc, |rtc| {
            rtc.sdp_api().accept_offer(offer)
        }) else {
            self.fail_transport(id, TransportFailure::Panicked);
            return Err((
                ErrorCode::BadSdp,
                "the offer broke the media connection, which is closed".into(),
            ));
        };
        let answer =
            answer.map_err(|err| (ErrorCode::BadSdp, format!("offer not acceptable: {err}")))?;
        let answer_sdp = with_candidates_in_every_section(answer.to_sdp_string());
        participant.transport_cc = crate::seqguard::transport_cc_id(&answer_sdp);

        let mids: Vec<Mid> = sdp
            .lines()
            .filter_map(|l| l.strip_prefix("a=mid:"))
            .map(|m| Mid::from(m.trim()))
            .collect();
        let refusals = self.reconcile(now, id, &mids, &answer_sdp, &publish, &subscribe);
        self.events.push_back(SfuEvent::Answer {
            participant: id,
            sdp: answer_sdp,
        });
        // After the answer: the offer itself was taken, and a client that reads any error
        // while its offer is in flight as a refusal of the offer must not roll it back.
        for (code, message) in refusals {
            self.events.push_back(SfuEvent::Refused {
                participant: id,
                code,
                message,
            });
        }
        self.drain(id, now);
        Ok(())
    }

    /// A few times a second: the rooms' active speakers and loudest audio, and once a second
    /// the layers' bitrates, everyone's allocation and the layers publishers should send.
    fn tick(&mut self, now: Instant) {
        self.ticks = self.ticks.wrapping_add(1);
        self.update_speakers(now);
        self.choose_recorded_layers(now);
        if self.ticks.is_multiple_of(TICKS_PER_MEASURE) {
            self.refresh_links(now);
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

    /// Ends a participant whose transport failed on its input: its publications end for
    /// everyone, and signaling is told, so that its session is closed with the reason. Every
    /// other participant keeps its media. A transport that panicked is dropped without another
    /// call; one whose DTLS handshake failed has already sent what it had (OpenSSL's alert).
    fn fail_transport(&mut self, id: ParticipantId, failure: TransportFailure) {
        if !self.participants.contains_key(&id) {
            return;
        }
        let transport = match failure {
            TransportFailure::Panicked => {
                self.stats.transport_failures += 1;
                Transport::Drop
            }
            TransportFailure::Dtls { .. } => {
                self.stats.dtls_failures += 1;
                Transport::Disconnect
            }
        };
        self.remove_participant(id, transport);
        self.events.push_back(SfuEvent::TransportFailed {
            participant: id,
            failure,
        });
    }

    fn remove_participant(&mut self, id: ParticipantId, transport: Transport) {
        let Some(participant) = self.participants.get(&id) else {
            return;
        };
        let published: Vec<PublicationId> = participant.published.iter().map(|(_, p)| *p).collect();
        let subscribed: Vec<Mid> = participant.subscriptions.keys().copied().collect();
        self.awaiting.retain(|(_, p, _)| *p != id);
        for publication in published {
            self.remove_publication(publication);
        }
        for mid in subscribed {
            self.unbind(id, mid);
        }
        let Some(mut participant) = self.participants.remove(&id) else {
            return;
        };
        if transport == Transport::Disconnect {
            participant.rtc.disconnect();
        }
        self.by_ufrag.remove(&participant.local_ufrag);
        for addr in &participant.addrs {
            if self.by_addr.get(addr) == Some(&id) {
                self.by_addr.remove(addr);
                self.addresses.push_back(AddressChange::Released(*addr));
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

    /// Drains every output of one participant's transport until it asks for a timeout.
    fn drain(&mut self, id: ParticipantId, now: Instant) {
        let mut found = std::mem::take(&mut self.found);
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        let mut timeouts_handled = 0;
        let mut failed = false;
        loop {
            let Some(output) = contained(&mut participant.rtc, Rtc::poll_output) else {
                failed = true;
                break;
            };
            match output {
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
                        match contained(&mut participant.rtc, |rtc| {
                            rtc.handle_input(Input::Timeout(now))
                        }) {
                            Some(Ok(())) => continue,
                            Some(Err(err)) => {
                                if let Some(reason) = handshake_failure(participant.connected, &err)
                                {
                                    participant.handshake_failed = Some(reason);
                                }
                                break;
                            }
                            None => {
                                failed = true;
                                break;
                            }
                        }
                    }
                    participant.next_timeout = at;
                    break;
                }
                Ok(Output::Event(event)) => match event {
                    Event::RtpPacket(packet) => {
                        participant.seq_guard.accepted(
                            *packet.header.ssrc,
                            *packet.seq_no,
                            packet.header.ext_vals.transport_cc,
                        );
                        found.push(Found::Rtp(packet));
                    }
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
                    match handshake_failure(participant.connected, &err) {
                        Some(reason) => participant.handshake_failed = Some(reason),
                        None => {
                            tracing::debug!(participant = %id, %err, "transport failed");
                            found.push(Found::Disconnected);
                        }
                    }
                    participant.next_timeout = now + Duration::from_secs(3600);
                    break;
                }
            }
        }
        if failed {
            // What it sent before the failure is dropped with it: its publications end.
            found.clear();
            self.found = found;
            self.fail_transport(id, TransportFailure::Panicked);
            return;
        }
        // A failed handshake is reported as such, not as the transport going quiet.
        let handshake_failed = participant.handshake_failed.take();
        if handshake_failed.is_some() {
            found.retain(|item| !matches!(item, Found::Disconnected));
        } else if !participant.rtc.is_alive() && !participant.disconnected_reported {
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
        if let Some(reason) = handshake_failed {
            self.fail_transport(id, TransportFailure::Dtls { reason });
        }
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

/// Whether a datagram is SRTP or SRTCP by its first byte (RFC 7983), which only a peer that
/// has its keys sends. Its authenticity is not checked here: a forged one from the peer's
/// address only makes a fast start early, and a client that drops it asks for a keyframe.
fn rtp_or_rtcp(data: &[u8]) -> bool {
    data.first().is_some_and(|b| (128..=191).contains(b))
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
    fn answers_carry_the_candidate_in_every_section_but_rejected_ones() {
        let answer = "v=0\r\ns=-\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=candidate:1 1 udp 2130706175 127.0.0.1 3478 typ host\r\na=end-of-candidates\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\n";
        assert_eq!(
            with_candidates_in_every_section(answer.to_owned()),
            "v=0\r\ns=-\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=candidate:1 1 udp 2130706175 127.0.0.1 3478 typ host\r\na=end-of-candidates\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
            a=candidate:1 1 udp 2130706175 127.0.0.1 3478 typ host\r\na=end-of-candidates\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\n"
        );
        let complete =
            "v=0\r\nm=audio 9 X 111\r\na=candidate:1 1 udp 1 127.0.0.1 3478 typ host\r\n";
        assert_eq!(
            with_candidates_in_every_section(complete.to_owned()),
            complete
        );
        let none = "v=0\r\nm=audio 9 X 111\r\nm=video 9 X 96\r\n";
        assert_eq!(with_candidates_in_every_section(none.to_owned()), none);
    }

    /// A publisher restarts a layer's encoder on a new SSRC: late packets and retransmissions
    /// of the old one are refused for good, whatever happens to the subscriptions meanwhile
    /// (the forwarder alone would re-base onto the dead stream; found by property tests).
    #[test]
    fn a_layer_never_turns_back_to_a_replaced_ssrc() {
        let mut layer = Layer::plain();
        assert!(layer.accepts_source(1));
        assert!(layer.accepts_source(1));
        assert!(layer.accepts_source(2), "a restart");
        assert!(!layer.accepts_source(1), "a late packet of the old stream");
        assert!(layer.accepts_source(2));
        for ssrc in 3..=7 {
            assert!(layer.accepts_source(ssrc));
        }
        assert!(!layer.accepts_source(6));
        assert!(layer.accepts_source(7));
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
    fn the_first_payload_type_of_an_answer_section_is_the_codec_sent() {
        let answer = "v=0\r\ns=-\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 102 103 96\r\na=mid:1\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF\r\na=mid:2\r\n";
        assert_eq!(
            first_payload_type(answer, Mid::from("0")),
            Some(Pt::from(111))
        );
        assert_eq!(
            first_payload_type(answer, Mid::from("1")),
            Some(Pt::from(102))
        );
        assert_eq!(first_payload_type(answer, Mid::from("2")), None);
        assert_eq!(first_payload_type(answer, Mid::from("9")), None);
        assert_eq!(first_payload_type("garbage", Mid::from("0")), None);
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
