//! A sans-IO WebRTC client endpoint: one `str0m::Rtc` in frame mode that publishes a tone and
//! tagged video, subscribes to other participants' publications and measures what it receives.
//!
//! The endpoint owns no socket, no timer and no clock. Every input carries the time it happened
//! at, outputs are drained with [`Endpoint::poll_transmit`] and [`Endpoint::poll_timeout`] says
//! when to call [`Endpoint::handle_timeout`] next. The same type therefore drives the real load
//! bots (the `loadtest` crate's `bot`), the SFU's virtual-time scenario tests with a fake
//! network, the webrtc-rs interoperability kit and the fuzz harness.
//!
//! This crate is that test-side endpoint library, kept apart from the load tester's CLI: the
//! endpoint here, the identifiable synthetic media it sends ([`media`]), the SFrame end-to-end
//! encryption it can apply ([`sframe`]) and the passive measurements taken on its datagrams
//! ([`wire`]).
//!
//! Signaling follows the product's protocol: this side always offers and the ICE-lite SFU always
//! answers. Only one offer is in flight at a time; changes requested meanwhile are queued and
//! go out with the next [`Endpoint::create_offer`] after the answer arrived.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{
    ClientMessage, MediaKind, ParticipantId, PublicationId, PublicationInfo, PublishTrack,
    SimulcastLayer, SubscribeTrack, TrackSource,
};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, Frequency, KeyframeRequestKind, MediaData, MediaTime, Mid, Pt, Rid, Simulcast,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};
use thiserror::Error;

pub mod keys;
pub mod media;
pub mod sframe;
pub mod wire;

use crate::media::{
    AUDIO_FRAME_TICKS, MediaError, SyntheticCodec, ToneAnalyzer, ToneSource, VideoSource,
    frame_is_keyframe, frame_tag, layer_tag, split_tag, vp8_is_keyframe,
};
use crate::sframe::{BaseKey, MediaFormat, Opener, Sealer, SframeError, TAG_LEN};

/// Rids and declared sizes of simulcast layers, lowest first, as a browser configures them
/// (`scaleResolutionDownBy` 4, 2, 1 of 1280×720).
const SIMULCAST_LAYERS: [(&str, u32, u32); 3] =
    [("q", 320, 180), ("h", 640, 360), ("f", 1280, 720)];

/// Interval between two Opus packets.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);

/// RTP clock rate of VP8.
const VIDEO_CLOCK_RATE: u64 = 90_000;

/// How many consecutive already-due timeouts the drain loop feeds back into str0m before it
/// gives up on the current instant. The pacer asks for `Timeout(now)` after every write, so a
/// handful is normal; an endless stream would be a str0m bug and must not hang the caller.
const MAX_DUE_ROUNDS: u32 = 256;

/// How far behind schedule a media source may fall before it skips ahead instead of sending a
/// burst to catch up (a bot whose task was starved should not flood the SFU).
const MAX_CATCH_UP: u64 = 5;

/// Minimum time between two keyframe requests this endpoint sends for one subscription.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// A timeout far enough away to mean "nothing scheduled".
const IDLE_TIMEOUT: Duration = Duration::from_secs(3_600);

/// What an endpoint sends and how it identifies itself.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The address of the endpoint's UDP socket; advertised as its only host candidate.
    pub local_addr: SocketAddr,
    /// Frequency of the published tone.
    pub tone_hz: f32,
    /// Tag carried in every published video frame.
    pub video_tag: u64,
    pub publish_audio: bool,
    pub publish_video: bool,
    /// Video frames per second; 0 publishes a video m-line that never sends.
    pub video_fps: u32,
    /// Approximate size of each video frame in bytes, which sets the video bitrate.
    pub video_frame_bytes: usize,
    /// The codec the published video imitates.
    pub video_codec: SyntheticCodec,
    /// Periodic keyframe interval. Keyframes are also sent first and whenever the SFU asks.
    pub keyframe_interval: Option<Duration>,
    /// Decode received Opus to find its tone. Costs CPU per packet; load tests that only count
    /// packets can turn it off.
    pub analyze_audio: bool,
    /// Simulcast: the frame size of each layer, lowest first (at most three; the rids are
    /// `q`, `h`, `f` from the top down). Empty: one layer of `video_frame_bytes`.
    pub simulcast_frame_bytes: Vec<usize>,
    /// The audio level (RFC 6464, dBov: 0 loudest, -127 silence) each audio packet carries.
    pub audio_level: i8,
    /// End-to-end encryption of the media (`docs/e2ee.md`); `None` sends and expects plain
    /// frames.
    pub e2ee: Option<E2eeConfig>,
    /// A light receiver, for load tests with many viewers: str0m runs in RTP mode, so each
    /// packet is only authenticated and decrypted (SRTP), counted, checked for a sequence gap
    /// and, at the start of a VP8 frame, for a keyframe and the sender's tag; frames are never
    /// reassembled, decoded or opened (no end-to-end decryption). An endpoint that publishes
    /// cannot be light.
    pub light: bool,
}

/// How an endpoint encrypts what it publishes and decrypts what it receives, in the SFrame
/// format the web client uses in an encrypted meeting.
#[derive(Clone, PartialEq, Eq)]
pub struct E2eeConfig {
    /// The media key and its KID (`epoch × 65536 + generation`). Published frames are sealed
    /// with it; received frames are opened with it, or with a later generation of its epoch
    /// derived forward. `None`: a receiver that joined without the key, which receives the
    /// packets and can decode none of them (it cannot publish).
    pub key: Option<(u64, BaseKey)>,
    /// Corrupt one byte of every Nth sealed frame (0: never), so that tests can check that
    /// receivers drop frames that do not authenticate.
    pub tamper_every: u64,
    /// The participant this endpoint publishes as, once joined. Bots of a run share one key,
    /// so each sender seals under its own KID (`sender_kid`): the KID enters the derivation of
    /// the frame key and salt, so no two senders ever use the same key and nonce.
    pub sender: Option<ParticipantId>,
    /// Keys come from the key exchange ([`crate::keys`]) while the endpoint runs: a publisher
    /// sends nothing until [`Endpoint::set_send_key`], and each sender's ring starts empty and
    /// is filled by [`Endpoint::add_receive_key`].
    pub exchanged: bool,
}

impl E2eeConfig {
    /// Encrypts and decrypts with `key` under `kid`.
    pub fn with_key(kid: u64, key: BaseKey) -> Self {
        Self {
            key: Some((kid, key)),
            tamper_every: 0,
            sender: None,
            exchanged: false,
        }
    }

    /// Expects encrypted media without holding the key.
    pub fn keyless() -> Self {
        Self {
            key: None,
            tamper_every: 0,
            sender: None,
            exchanged: false,
        }
    }

    /// Gets its keys from the key exchange, as a browser does.
    pub fn exchanged() -> Self {
        Self {
            key: None,
            tamper_every: 0,
            sender: None,
            exchanged: true,
        }
    }

    /// The KID `participant` seals under: the run's epoch mixed with the participant's id, in
    /// the same generation.
    pub fn sender_kid(kid: u64, participant: ParticipantId) -> u64 {
        let (epoch, generation) = crate::sframe::split_kid(kid);
        let id = participant.0;
        // Truncations on purpose: the epoch field is 32 bits wide.
        let mixed = (epoch as u32) ^ (id as u32) ^ ((id >> 32) as u32);
        crate::sframe::kid(mixed, generation)
    }

    /// A key ring for `sender`, holding this config's key under the sender's KID (and under
    /// the shared KID, for endpoints that seal without knowing who they are).
    fn opener(&self, sender: ParticipantId) -> Opener {
        let mut opener = Opener::new();
        if let Some((kid, key)) = &self.key {
            opener.add_key(*kid, key);
            opener.add_key(Self::sender_kid(*kid, sender), key);
        }
        opener
    }
}

impl std::fmt::Debug for E2eeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log or a panic message.
        f.debug_struct("E2eeConfig")
            .field("kid", &self.key.as_ref().map(|(kid, _)| *kid))
            .field("tamper_every", &self.tamper_every)
            .field("sender", &self.sender)
            .field("exchanged", &self.exchanged)
            .finish()
    }
}

impl EndpointConfig {
    /// A config that publishes a 440 Hz tone and 15 fps of 1 kB video frames tagged 1.
    pub fn new(local_addr: SocketAddr) -> Self {
        Self {
            local_addr,
            tone_hz: 440.0,
            video_tag: 1,
            publish_audio: true,
            publish_video: true,
            video_fps: 15,
            video_frame_bytes: 1_000,
            video_codec: SyntheticCodec::Vp8,
            keyframe_interval: Some(Duration::from_secs(5)),
            analyze_audio: true,
            simulcast_frame_bytes: Vec::new(),
            audio_level: -30,
            e2ee: None,
            light: false,
        }
    }
}

#[derive(Debug, Error)]
pub enum EndpointError {
    #[error("media: {0}")]
    Media(#[from] MediaError),
    #[error("webrtc: {0}")]
    Rtc(#[from] RtcError),
    #[error("the answer is not valid SDP: {0}")]
    BadAnswer(String),
    #[error("an answer arrived while no offer was in flight")]
    UnexpectedAnswer,
    #[error("the local address cannot be a host candidate: {0}")]
    BadLocalAddr(String),
    #[error("end-to-end encryption: {0}")]
    E2ee(&'static str),
    #[error("a light endpoint only receives: it cannot publish")]
    LightPublisher,
    #[error("end-to-end encryption: {0}")]
    Sframe(#[from] SframeError),
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// What arrived for one subscribed publication. Counters only; the tone is found on demand by
/// [`Endpoint::dominant_frequency`] because that analysis is too costly to run per packet.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedStats {
    pub participant_id: ParticipantId,
    pub kind: MediaKind,
    /// The receive m-line carrying the publication, once an offer included it.
    pub mid: Option<String>,
    /// Whether the endpoint still wants this publication (false after unsubscribing).
    pub subscribed: bool,
    /// RTP packets that made up the received frames.
    pub rtp_packets: u64,
    /// Depacketized frames (one Opus packet or one video frame each).
    pub frames: u64,
    /// Payload bytes of the received frames.
    pub bytes: u64,
    /// Frames that did not follow on from the previous one (a gap in sequence numbers).
    pub discontinuities: u64,
    /// End-to-end encryption: frames that authenticated and were decrypted, and frames that
    /// did not (no key for their KID, a forged or damaged frame), which were dropped before
    /// any decoding or inspection.
    pub frames_decrypted: u64,
    pub decrypt_failures: u64,
    /// When the first frame decrypted, and how many failed because they were sealed under a
    /// key newer than every key of the sender this receiver could open: frames lost to a key
    /// change (the sender started using a key this receiver did not hold yet). Frames sealed
    /// under an older key than this receiver's (sent before it joined, replayed from the
    /// SFU's cache) fail by design and are not counted here.
    pub first_decrypted_at: Option<Instant>,
    pub decrypt_failures_newer_key: u64,
    pub audio_frames_decoded: u64,
    pub audio_decode_errors: u64,
    /// Video frames handed on to be decoded (with end-to-end encryption, only decrypted ones).
    pub video_frames: u64,
    pub keyframes: u64,
    /// The sender tag of the most recent tagged video frame (without its layer).
    pub video_tag: Option<u64>,
    /// The simulcast layer of the most recent tagged video frame (0 for plain video), and
    /// how often it changed.
    pub video_layer: Option<u8>,
    pub layer_changes: u64,
    /// Video frames without a tag (not made by [`VideoSource`]).
    pub untagged_frames: u64,
    /// How often the tag changed from one tagged frame to the next.
    pub tag_changes: u64,
    /// Keyframe requests this endpoint sent for the publication.
    pub keyframe_requests_sent: u64,
    pub first_media_at: Option<Instant>,
    pub first_keyframe_at: Option<Instant>,
    pub last_media_at: Option<Instant>,
}

impl ReceivedStats {
    /// Reads the sender's tag and simulcast layer from the start of a video frame, counting
    /// changes of either and frames without one.
    fn note_tag(&mut self, frame: &[u8]) {
        match frame_tag(frame).map(split_tag) {
            Some((tag, layer)) => {
                if self.video_tag.is_some_and(|old| old != tag) {
                    self.tag_changes += 1;
                }
                if self.video_layer.is_some_and(|old| old != layer) {
                    self.layer_changes += 1;
                }
                self.video_tag = Some(tag);
                self.video_layer = Some(layer);
            }
            None => self.untagged_frames += 1,
        }
    }
}

impl ReceivedStats {
    fn note_decrypted(&mut self, now: Instant) {
        self.frames_decrypted += 1;
        self.first_decrypted_at.get_or_insert(now);
    }

    fn note_decrypt_failure(&mut self, newer_key: bool) {
        self.decrypt_failures += 1;
        if newer_key {
            self.decrypt_failures_newer_key += 1;
        }
    }

    fn new(info: &PublicationInfo) -> Self {
        Self {
            participant_id: info.participant_id,
            kind: info.kind,
            mid: None,
            subscribed: true,
            rtp_packets: 0,
            frames: 0,
            bytes: 0,
            discontinuities: 0,
            frames_decrypted: 0,
            decrypt_failures: 0,
            first_decrypted_at: None,
            decrypt_failures_newer_key: 0,
            audio_frames_decoded: 0,
            audio_decode_errors: 0,
            video_frames: 0,
            keyframes: 0,
            video_tag: None,
            video_layer: None,
            layer_changes: 0,
            untagged_frames: 0,
            tag_changes: 0,
            keyframe_requests_sent: 0,
            first_media_at: None,
            first_keyframe_at: None,
            last_media_at: None,
        }
    }
}

/// What this endpoint sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentStats {
    pub audio_packets: u64,
    pub audio_bytes: u64,
    pub video_frames: u64,
    pub video_bytes: u64,
    pub keyframes: u64,
    /// PLI/FIR received from the SFU for the published video.
    pub keyframe_requests_received: u64,
    /// Writes str0m refused, Opus encodes that failed, or frames that could not be sealed
    /// (never sent in clear instead).
    pub write_errors: u64,
    /// End-to-end encryption: frames sealed (audio and video), and how many of them were
    /// deliberately corrupted ([`E2eeConfig::tamper_every`]).
    pub frames_sealed: u64,
    pub frames_tampered: u64,
    /// Frames not sent because the key exchange had not given a key yet (never sent in clear).
    pub frames_unsent: u64,
}

/// Where one subscription stands in the offer/answer exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// Not offered yet.
    Wanted,
    /// In the offer now in flight.
    Offered(Mid),
    /// Negotiated: media may flow.
    Active(Mid),
    /// To be stopped in the next offer.
    Stop(Mid),
    /// Stopped in the offer now in flight.
    Stopping(Mid),
}

#[derive(Debug)]
struct Subscription {
    info: PublicationInfo,
    state: SubState,
    /// Unsubscribed while its offer was in flight: stop it once answered.
    stop_when_answered: bool,
}

/// Receive-side state that is not part of the reported stats.
#[derive(Debug)]
struct Receiver {
    analyzer: Option<ToneAnalyzer>,
    last_keyframe_request: Option<Instant>,
    /// A frame was dropped because it did not decrypt: the decoder missed it, so the next
    /// video frame that is not a keyframe cannot be shown.
    decoder_gap: bool,
    /// Light receivers: the highest extended RTP sequence number seen, to find gaps.
    last_seq: Option<u64>,
}

/// The sending half of end-to-end encryption.
#[derive(Debug)]
struct SendCrypto {
    /// One counter for all streams, so no nonce repeats under the key. `None` until the key
    /// exchange gives a key.
    sealer: Option<Sealer>,
    tamper_every: u64,
}

impl SendCrypto {
    /// Seals `frame` in place (plain media passes through). False when the frame could not be
    /// sealed and must not be sent at all.
    fn seal(
        crypto: &mut Option<Self>,
        format: MediaFormat,
        frame: &mut Vec<u8>,
        sent: &mut SentStats,
    ) -> bool {
        let Some(crypto) = crypto else {
            return true;
        };
        let Some(sealer) = &mut crypto.sealer else {
            // Never in clear: until there is a key, frames are not sent (and not counted as
            // write errors: the browser drops them the same way).
            sent.frames_unsent += 1;
            return false;
        };
        if sealer.seal(format.clear_prefix_len(frame), frame).is_err() {
            return false;
        }
        sent.frames_sealed += 1;
        if crypto.tamper_every > 0 && sent.frames_sealed.is_multiple_of(crypto.tamper_every) {
            // The last ciphertext byte (of the tag, for a frame without a body): the clear
            // prefix stays intact, so the SFU forwards the frame as it would any other.
            let at = frame.len().saturating_sub(TAG_LEN + 1);
            if let Some(byte) = frame.get_mut(at) {
                *byte ^= 0x01;
                sent.frames_tampered += 1;
            }
        }
        true
    }
}

/// Epochs a [`SenderRing`] remembers having opened.
const MAX_EPOCHS_KEPT: usize = 4_096;

/// One sending participant's keys as this endpoint holds them, and when each of its epochs
/// first opened a frame here: the moment this receiver was "rekeyed".
#[derive(Debug)]
struct SenderRing {
    opener: Opener,
    /// Epochs (KID >> 16) in the order they first opened a frame, with the time.
    epochs: VecDeque<(u64, Instant)>,
    /// The newest KID that opened a frame.
    newest: Option<u64>,
}

/// Why a frame did not open: `newer_key` when it was sealed under a KID newer than any this
/// ring opened (the sender moved to a key this receiver lacks).
#[derive(Debug, Clone, Copy)]
struct NotOpened {
    newer_key: bool,
}

impl SenderRing {
    fn new(opener: Opener) -> Self {
        Self {
            opener,
            epochs: VecDeque::new(),
            newest: None,
        }
    }

    fn open(
        &mut self,
        now: Instant,
        format: MediaFormat,
        frame: &mut [u8],
    ) -> Result<crate::sframe::Opened, NotOpened> {
        let opened = match self.opener.open(format, frame) {
            Ok(opened) => opened,
            Err(SframeError::UnknownKid(kid)) => {
                return Err(NotOpened {
                    newer_key: self.newest.is_some_and(|newest| kid > newest),
                });
            }
            Err(_) => return Err(NotOpened { newer_key: false }),
        };
        self.newest = self.newest.max(Some(opened.header.kid));
        let (epoch, _) = crate::sframe::split_kid(opened.header.kid);
        // Looked up only when the epoch differs from the newest: around a key change.
        if self.epochs.back().is_none_or(|(e, _)| *e != epoch)
            && !self.epochs.iter().any(|(e, _)| *e == epoch)
        {
            if self.epochs.len() >= MAX_EPOCHS_KEPT {
                self.epochs.pop_front();
            }
            self.epochs.push_back((epoch, now));
        }
        Ok(opened)
    }
}

/// When a periodic media source sends next. A source that fell behind schedule sends at most
/// [`MAX_CATCH_UP`] overdue slots and skips the rest rather than burst.
#[derive(Debug)]
struct Timetable {
    interval: Duration,
    /// When the next slot is due, once the source started.
    next_at: Option<Instant>,
    /// Slots since the first one, skipped ones included: the RTP time counts them.
    slot: u64,
}

impl Timetable {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            next_at: None,
            slot: 0,
        }
    }

    /// Moves past every slot due at `now` (the first call starts the timetable at `now`) and
    /// returns the ones to send, oldest first.
    fn take_due(&mut self, now: Instant) -> Range<u64> {
        let first = self.slot;
        let mut next = *self.next_at.get_or_insert(now);
        while next <= now {
            self.slot += 1;
            next += self.interval;
        }
        self.next_at = Some(next);
        first..self.slot.min(first + MAX_CATCH_UP)
    }
}

#[derive(Debug)]
struct AudioSender {
    mid: Mid,
    pt: Option<Pt>,
    active: bool,
    paused: bool,
    source: ToneSource,
    timetable: Timetable,
}

#[derive(Debug)]
struct VideoSender {
    mid: Mid,
    pt: Option<Pt>,
    active: bool,
    paused: bool,
    fps: u64,
    timetable: Timetable,
    /// One plain layer, or the simulcast layers lowest first.
    layers: Vec<VideoLayer>,
}

#[derive(Debug)]
struct VideoLayer {
    rid: Option<Rid>,
    source: VideoSource,
    /// The SFU wants it (`simulcast_layers`); a paused layer sends nothing.
    wanted: bool,
    last_keyframe_at: Option<Instant>,
    force_keyframe: bool,
    frames: u64,
}

/// A WebRTC client endpoint for the SFU. See the module documentation.
#[derive(Debug)]
pub struct Endpoint {
    rtc: Rtc,
    config: EndpointConfig,
    candidate: Candidate,
    now: Instant,
    rtc_timeout: Instant,
    /// Whether the publish m-lines were negotiated (or are in the offer in flight).
    publish_offered: bool,
    audio: Option<AudioSender>,
    video: Option<VideoSender>,
    /// Audio and video sources made up front so that creating an offer cannot fail.
    spare_tone: Option<ToneSource>,
    subscriptions: BTreeMap<PublicationId, Subscription>,
    mid_to_publication: HashMap<Mid, PublicationId>,
    pending: Option<SdpPendingOffer>,
    stats: HashMap<PublicationId, ReceivedStats>,
    receivers: HashMap<PublicationId, Receiver>,
    /// End-to-end encryption: the sealer of what this endpoint publishes, and a key ring per
    /// sending participant (a publication is opened only with its owner's ring).
    send_crypto: Option<SendCrypto>,
    openers: HashMap<ParticipantId, SenderRing>,
    sent: SentStats,
    transmits: VecDeque<Datagram>,
    connected_at: Option<Instant>,
    ice_state: IceConnectionState,
    ice_disconnected_at: Option<Instant>,
    failure: Option<String>,
    /// [`Endpoint::close`] was called: no more offers or media.
    closing: bool,
    ignored_datagrams: u64,
    unrouted_frames: u64,
    /// A light receiver opens an audio packet here when str0m still shares its payload.
    scratch: Vec<u8>,
}

impl Endpoint {
    pub fn new(now: Instant, config: EndpointConfig) -> Result<Self, EndpointError> {
        if config.light && (config.publish_audio || config.publish_video) {
            return Err(EndpointError::LightPublisher);
        }
        // RTP mode hands over each packet as it arrives instead of depacketizing frames; str0m
        // still authenticates and decrypts it, sends receiver reports, NACKs and TWCC feedback.
        let mut rtc = Rtc::builder().set_rtp_mode(config.light).build(now);
        let candidate = Candidate::host(config.local_addr, "udp")
            .map_err(|err| EndpointError::BadLocalAddr(err.to_string()))?;
        let candidate = rtc
            .add_local_candidate(candidate)
            .cloned()
            .ok_or_else(|| EndpointError::BadLocalAddr(config.local_addr.to_string()))?;
        let spare_tone = if config.publish_audio {
            Some(ToneSource::new(config.tone_hz)?)
        } else {
            None
        };
        let publishes = config.publish_audio || config.publish_video;
        let send_crypto = match &config.e2ee {
            None => None,
            Some(e2ee) if publishes => {
                if config.publish_video && config.video_codec != SyntheticCodec::Vp8 {
                    return Err(EndpointError::E2ee(
                        "encrypted meetings send VP8 video only (docs/e2ee.md)",
                    ));
                }
                let sealer = match &e2ee.key {
                    Some((kid, key)) => {
                        let kid = e2ee
                            .sender
                            .map_or(*kid, |sender| E2eeConfig::sender_kid(*kid, sender));
                        Some(Sealer::new(key, kid)?)
                    }
                    None if e2ee.exchanged => None,
                    None => return Err(EndpointError::E2ee("a publisher needs the media key")),
                };
                Some(SendCrypto {
                    sealer,
                    tamper_every: e2ee.tamper_every,
                })
            }
            Some(_) => None,
        };
        Ok(Self {
            rtc,
            candidate,
            now,
            rtc_timeout: now,
            publish_offered: false,
            audio: None,
            video: None,
            spare_tone,
            subscriptions: BTreeMap::new(),
            mid_to_publication: HashMap::new(),
            pending: None,
            stats: HashMap::new(),
            receivers: HashMap::new(),
            send_crypto,
            openers: HashMap::new(),
            sent: SentStats::default(),
            transmits: VecDeque::new(),
            connected_at: None,
            ice_state: IceConnectionState::New,
            ice_disconnected_at: None,
            failure: None,
            closing: false,
            ignored_datagrams: 0,
            unrouted_frames: 0,
            scratch: Vec::new(),
            config,
        })
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.config.local_addr
    }

    /// The candidate messages to trickle after the first offer: the host candidate, then the
    /// end-of-candidates marker, as a browser sends them.
    pub fn local_candidates(&self) -> Vec<ClientMessage> {
        vec![
            ClientMessage::Candidate {
                candidate: self.candidate.to_sdp_string(),
            },
            ClientMessage::Candidate {
                candidate: String::new(),
            },
        ]
    }

    /// Asks for a publication. The m-line goes out with the next offer.
    pub fn subscribe(&mut self, publication: PublicationInfo) {
        let id = publication.id;
        if let Some(existing) = self.subscriptions.get_mut(&id) {
            // Subscribing again to a publication being torn down keeps its m-line.
            existing.stop_when_answered = false;
            if let SubState::Stop(mid) = existing.state {
                existing.state = SubState::Active(mid);
            }
            if let Some(stats) = self.stats.get_mut(&id) {
                stats.subscribed = true;
            }
            return;
        }
        let mut stats = ReceivedStats::new(&publication);
        // A publication seen before (unsubscribed, then offered again) keeps its totals.
        if let Some(old) = self.stats.remove(&id) {
            stats = ReceivedStats {
                mid: None,
                subscribed: true,
                ..old
            };
        }
        self.stats.insert(id, stats);
        let analyzer = if publication.kind == MediaKind::Audio && self.config.analyze_audio {
            // An Opus decoder for mono 48 kHz cannot fail to initialise short of memory
            // exhaustion; without one the publication is still counted, just not decoded.
            ToneAnalyzer::new().ok()
        } else {
            None
        };
        let receiver = self.receivers.entry(id).or_insert(Receiver {
            analyzer,
            last_keyframe_request: None,
            decoder_gap: false,
            last_seq: None,
        });
        // A new m-line starts a new sequence: the old one's last number is no reference.
        receiver.last_seq = None;
        if let Some(e2ee) = &self.config.e2ee {
            self.openers
                .entry(publication.participant_id)
                .or_insert_with(|| SenderRing::new(e2ee.opener(publication.participant_id)));
        }
        self.subscriptions.insert(
            id,
            Subscription {
                info: publication,
                state: SubState::Wanted,
                stop_when_answered: false,
            },
        );
    }

    /// Drops a publication. Its m-line is stopped with the next offer; the stats stay.
    pub fn unsubscribe(&mut self, publication: PublicationId) {
        let Some(subscription) = self.subscriptions.get_mut(&publication) else {
            return;
        };
        if let Some(stats) = self.stats.get_mut(&publication) {
            stats.subscribed = false;
        }
        match subscription.state {
            SubState::Wanted => {
                self.subscriptions.remove(&publication);
            }
            SubState::Offered(_) => subscription.stop_when_answered = true,
            SubState::Active(mid) => subscription.state = SubState::Stop(mid),
            SubState::Stop(_) | SubState::Stopping(_) => {}
        }
    }

    /// Publications subscribed to (negotiated or queued), with their info.
    pub fn subscriptions(&self) -> impl Iterator<Item = &PublicationInfo> {
        self.subscriptions
            .values()
            .filter(|s| !s.stop_when_answered)
            .filter(|s| {
                matches!(
                    s.state,
                    SubState::Wanted | SubState::Offered(_) | SubState::Active(_)
                )
            })
            .map(|s| &s.info)
    }

    /// Whether an offer awaits its answer.
    pub fn offer_in_flight(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether [`Endpoint::create_offer`] has something to offer once no offer is in flight.
    pub fn has_pending_changes(&self) -> bool {
        let publish =
            !self.publish_offered && (self.config.publish_audio || self.config.publish_video);
        !self.closing
            && (publish
                || self
                    .subscriptions
                    .values()
                    .any(|s| matches!(s.state, SubState::Wanted | SubState::Stop(_))))
    }

    /// The next offer, when there are changes to negotiate and no offer is in flight. The
    /// message lists every send m-line in `publish` and every live receive m-line in
    /// `subscribe`, so the server can reconcile the whole session from each offer.
    pub fn create_offer(&mut self) -> Option<ClientMessage> {
        if self.pending.is_some() || self.closing || !self.rtc.is_alive() {
            return None;
        }
        let mut api = self.rtc.sdp_api();
        if !self.publish_offered {
            let stream_id = Some(format!("meet-{}", self.config.video_tag));
            if self.config.publish_audio
                && let Some(source) = self.spare_tone.take()
            {
                let mid = api.add_media(
                    str0m::media::MediaKind::Audio,
                    Direction::SendOnly,
                    stream_id.clone(),
                    None,
                    None,
                );
                self.audio = Some(AudioSender {
                    mid,
                    pt: None,
                    active: false,
                    paused: false,
                    source,
                    timetable: Timetable::new(AUDIO_INTERVAL),
                });
            }
            if self.config.publish_video {
                let config = &self.config;
                let frame_bytes: Vec<usize> = if config.simulcast_frame_bytes.is_empty() {
                    vec![config.video_frame_bytes]
                } else {
                    config
                        .simulcast_frame_bytes
                        .iter()
                        .take(3)
                        .copied()
                        .collect()
                };
                let simulcast = frame_bytes.len() > 1;
                let rids: Vec<&str> = SIMULCAST_LAYERS[3 - frame_bytes.len()..]
                    .iter()
                    .map(|(rid, _, _)| *rid)
                    .collect();
                let layers: Vec<VideoLayer> = frame_bytes
                    .iter()
                    .zip(&rids)
                    .enumerate()
                    .map(|(index, (bytes, rid))| VideoLayer {
                        rid: simulcast.then(|| Rid::from(*rid)),
                        source: VideoSource::with_codec(
                            layer_tag(config.video_tag, index as u8),
                            *bytes,
                            config.video_codec,
                        ),
                        wanted: true,
                        last_keyframe_at: None,
                        force_keyframe: true,
                        frames: 0,
                    })
                    .collect();
                let simulcast = simulcast.then(|| {
                    let mut s = Simulcast::new();
                    for rid in &rids {
                        s.add_send_layer(str0m::media::SimulcastLayer::new(rid));
                    }
                    s
                });
                let mid = api.add_media(
                    str0m::media::MediaKind::Video,
                    Direction::SendOnly,
                    stream_id,
                    None,
                    simulcast,
                );
                let fps = u64::from(config.video_fps);
                self.video = Some(VideoSender {
                    mid,
                    pt: None,
                    active: false,
                    paused: false,
                    fps,
                    timetable: Timetable::new(
                        1_000_000_000_u64
                            .checked_div(fps)
                            .map_or(IDLE_TIMEOUT, Duration::from_nanos),
                    ),
                    layers,
                });
            }
            self.publish_offered = true;
        }
        for subscription in self.subscriptions.values_mut() {
            match subscription.state {
                SubState::Wanted => {
                    let mid = api.add_media(
                        to_str0m_kind(subscription.info.kind),
                        Direction::RecvOnly,
                        None,
                        None,
                        None,
                    );
                    subscription.state = SubState::Offered(mid);
                }
                SubState::Stop(mid) => {
                    api.stop_media(mid);
                    subscription.state = SubState::Stopping(mid);
                }
                SubState::Offered(_) | SubState::Active(_) | SubState::Stopping(_) => {}
            }
        }
        let Some((offer, pending)) = api.apply() else {
            // Nothing needed negotiating. Stops of m-lines str0m already considered stopped
            // are complete without an exchange.
            self.finish_stops();
            return None;
        };
        self.pending = Some(pending);
        for (id, subscription) in &self.subscriptions {
            if let SubState::Offered(mid) = subscription.state {
                self.mid_to_publication.insert(mid, *id);
                if let Some(stats) = self.stats.get_mut(id) {
                    stats.mid = Some(mid.to_string());
                }
            }
        }
        Some(ClientMessage::Offer {
            sdp: offer.to_sdp_string(),
            publish: self.publish_tracks(),
            subscribe: self.subscribe_tracks(),
        })
    }

    fn publish_tracks(&self) -> Vec<PublishTrack> {
        let audio = self.audio.as_ref().map(|a| PublishTrack {
            mid: a.mid.to_string(),
            source: TrackSource::Microphone,
            layers: Vec::new(),
        });
        let video = self.video.as_ref().map(|v| {
            let n = v.layers.len();
            let layers = if n > 1 {
                SIMULCAST_LAYERS[3 - n..]
                    .iter()
                    .map(|(rid, width, height)| SimulcastLayer {
                        rid: (*rid).to_string(),
                        width: *width,
                        height: *height,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            PublishTrack {
                mid: v.mid.to_string(),
                source: TrackSource::Camera,
                layers,
            }
        });
        audio.into_iter().chain(video).collect()
    }

    fn subscribe_tracks(&self) -> Vec<SubscribeTrack> {
        self.subscriptions
            .iter()
            .filter_map(|(id, s)| match s.state {
                SubState::Offered(mid) | SubState::Active(mid) => Some(SubscribeTrack {
                    mid: mid.to_string(),
                    publication_id: *id,
                }),
                _ => None,
            })
            .collect()
    }

    fn finish_stops(&mut self) {
        let stopped: Vec<(PublicationId, Mid)> = self
            .subscriptions
            .iter()
            .filter_map(|(id, s)| match s.state {
                SubState::Stopping(mid) => Some((*id, mid)),
                _ => None,
            })
            .collect();
        for (id, mid) in stopped {
            self.mid_to_publication.remove(&mid);
            let wanted_again = self.stats.get(&id).is_some_and(|s| s.subscribed);
            match self.subscriptions.get_mut(&id) {
                // Subscribed again while the stop was in flight: offer a fresh m-line.
                Some(subscription) if wanted_again => subscription.state = SubState::Wanted,
                _ => {
                    self.subscriptions.remove(&id);
                }
            }
        }
    }

    /// Applies the server's answer to the offer in flight.
    pub fn handle_answer(&mut self, now: Instant, sdp: &str) -> Result<(), EndpointError> {
        self.advance(now);
        let Some(pending) = self.pending.take() else {
            return Err(EndpointError::UnexpectedAnswer);
        };
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(answer) => answer,
            Err(err) => {
                self.roll_back();
                return Err(EndpointError::BadAnswer(err.to_string()));
            }
        };
        if let Err(err) = self.rtc.sdp_api().accept_answer(pending, answer) {
            self.roll_back();
            return Err(err.into());
        }
        self.commit();
        self.drain()
    }

    /// The server refused the offer in flight (it answered with an error). The changes it
    /// carried are rolled back; subscriptions it added are queued for the next offer.
    pub fn offer_refused(&mut self) {
        if self.pending.take().is_some() {
            self.roll_back();
        }
    }

    fn commit(&mut self) {
        for subscription in self.subscriptions.values_mut() {
            if let SubState::Offered(mid) = subscription.state {
                subscription.state = if subscription.stop_when_answered {
                    subscription.stop_when_answered = false;
                    SubState::Stop(mid)
                } else {
                    SubState::Active(mid)
                };
            }
        }
        self.finish_stops();
        if let Some(audio) = &mut self.audio
            && !audio.active
        {
            audio.active = true;
            audio.pt = find_pt(&mut self.rtc, audio.mid, Codec::Opus);
        }
        if let Some(video) = &mut self.video
            && !video.active
        {
            video.active = true;
            let codec = match self.config.video_codec {
                SyntheticCodec::Vp8 => Codec::Vp8,
                SyntheticCodec::H264 => Codec::H264,
            };
            video.pt = find_pt(&mut self.rtc, video.mid, codec);
        }
    }

    fn roll_back(&mut self) {
        let mut dropped = Vec::new();
        for (id, subscription) in &mut self.subscriptions {
            match subscription.state {
                SubState::Offered(mid) => {
                    self.mid_to_publication.remove(&mid);
                    if subscription.stop_when_answered {
                        dropped.push(*id);
                    } else {
                        subscription.state = SubState::Wanted;
                    }
                }
                // str0m marks an m-line stopped as soon as it is asked to, so the stop holds
                // locally whatever the server said; the next offer carries it again.
                SubState::Stopping(mid) => {
                    self.mid_to_publication.remove(&mid);
                    if self.stats.get(id).is_some_and(|s| s.subscribed) {
                        subscription.state = SubState::Wanted;
                    } else {
                        dropped.push(*id);
                    }
                }
                SubState::Wanted | SubState::Active(_) | SubState::Stop(_) => {}
            }
        }
        for id in dropped {
            self.subscriptions.remove(&id);
        }
        if self.audio.as_ref().is_some_and(|a| !a.active) {
            self.spare_tone = self.audio.take().map(|a| a.source);
            self.publish_offered = false;
        }
        if self.video.as_ref().is_some_and(|v| !v.active) {
            self.video = None;
            self.publish_offered = false;
        }
    }

    /// Feeds one received datagram. Datagrams that are not STUN, DTLS, RTP or RTCP are ignored.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> Result<(), EndpointError> {
        self.advance(now);
        if !self.rtc.is_alive() {
            return Ok(());
        }
        let Ok(receive) = Receive::new(Protocol::Udp, source, destination, data) else {
            self.ignored_datagrams += 1;
            return Ok(());
        };
        if let Err(err) = self.rtc.handle_input(Input::Receive(self.now, receive)) {
            return Err(self.fail(err));
        }
        self.drain()
    }

    /// Advances time: sends the media that is due and lets str0m run its timers.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), EndpointError> {
        self.advance(now);
        if !self.rtc.is_alive() {
            return Ok(());
        }
        self.send_due_media();
        if let Err(err) = self.rtc.handle_input(Input::Timeout(self.now)) {
            return Err(self.fail(err));
        }
        self.drain()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        if !self.rtc.is_alive() {
            return self.now + IDLE_TIMEOUT;
        }
        let mut timeout = self.rtc_timeout;
        if self.connected_at.is_some() && !self.closing {
            if let Some(audio) = &self.audio
                && audio.active
                && audio.pt.is_some()
            {
                timeout = timeout.min(audio.timetable.next_at.unwrap_or(self.now));
            }
            if let Some(video) = &self.video
                && video.active
                && video.pt.is_some()
                && video.fps > 0
            {
                timeout = timeout.min(video.timetable.next_at.unwrap_or(self.now));
            }
        }
        timeout
    }

    /// Starts a clean shutdown (RTCP BYE, DTLS close_notify); drain transmits afterwards.
    pub fn close(&mut self, now: Instant) -> Result<(), EndpointError> {
        self.advance(now);
        self.closing = true;
        if let Err(err) = self.rtc.close() {
            return Err(self.fail(err));
        }
        self.drain()
    }

    /// Whether ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.rtc.is_connected()
    }

    /// When ICE and DTLS first completed.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    pub fn ice_state(&self) -> IceConnectionState {
        self.ice_state
    }

    /// When ICE last reported the connection lost.
    pub fn ice_disconnected_at(&self) -> Option<Instant> {
        self.ice_disconnected_at
    }

    /// False once the endpoint closed or failed.
    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    /// Why the endpoint failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Per-publication receive counters.
    pub fn stats(&self) -> &HashMap<PublicationId, ReceivedStats> {
        &self.stats
    }

    /// The strongest frequency in the last 200 ms of a received audio publication. This runs
    /// a spectral scan: call it to check results, not per packet.
    pub fn dominant_frequency(&self, publication: PublicationId) -> Option<f32> {
        self.receivers
            .get(&publication)?
            .analyzer
            .as_ref()?
            .dominant_frequency()
    }

    pub fn sent(&self) -> &SentStats {
        &self.sent
    }

    /// Datagrams that were not WebRTC traffic, and frames for m-lines without a subscription.
    pub fn ignored(&self) -> (u64, u64) {
        (self.ignored_datagrams, self.unrouted_frames)
    }

    /// The mids of the published audio and video m-lines, once offered.
    pub fn published_mids(&self) -> (Option<String>, Option<String>) {
        (
            self.audio.as_ref().map(|a| a.mid.to_string()),
            self.video.as_ref().map(|v| v.mid.to_string()),
        )
    }

    /// Stops (or resumes) sending one kind of media, as a muted browser track does.
    pub fn set_paused(&mut self, kind: MediaKind, paused: bool) {
        match kind {
            MediaKind::Audio => {
                if let Some(audio) = &mut self.audio {
                    audio.paused = paused;
                }
            }
            MediaKind::Video => {
                if let Some(video) = &mut self.video {
                    video.paused = paused;
                    // The first frame after unmuting must be decodable on its own.
                    for layer in &mut video.layers {
                        layer.force_keyframe |= !paused;
                    }
                }
            }
        }
    }

    /// Follows the SFU's `simulcast_layers`: sends only the layers someone receives. A layer
    /// that resumes starts on a keyframe.
    pub fn set_active_layers(&mut self, active: &[bool]) {
        let Some(video) = &mut self.video else {
            return;
        };
        if video.layers.len() < 2 {
            return;
        }
        for (layer, wanted) in video.layers.iter_mut().zip(active) {
            if *wanted && !layer.wanted {
                layer.force_keyframe = true;
            }
            layer.wanted = *wanted;
        }
    }

    /// Frames sent per layer of the published video, lowest first.
    pub fn layer_frames(&self) -> Vec<u64> {
        self.video
            .as_ref()
            .map(|v| v.layers.iter().map(|l| l.frames).collect())
            .unwrap_or_default()
    }

    /// Seals what this endpoint publishes with `base` under `kid` from the next frame on (a
    /// key from the key exchange). Setting the key already in use changes nothing, so that
    /// its counter, and with it every nonce, never starts over.
    pub fn set_send_key(&mut self, kid: u64, base: &BaseKey) -> Result<(), EndpointError> {
        let Some(crypto) = &mut self.send_crypto else {
            return Err(EndpointError::E2ee(
                "this endpoint does not publish encrypted",
            ));
        };
        if crypto.sealer.as_ref().is_none_or(|s| s.kid() != kid) {
            crypto.sealer = Some(Sealer::new(base, kid)?);
        }
        Ok(())
    }

    /// Adds `sender`'s key for `kid` to the ring its publications are opened with.
    pub fn add_receive_key(&mut self, sender: ParticipantId, kid: u64, base: &BaseKey) {
        if self.config.e2ee.is_none() {
            return;
        }
        self.openers
            .entry(sender)
            .or_insert_with(|| SenderRing::new(Opener::new()))
            .opener
            .add_key(kid, base);
    }

    /// Forgets every key of `sender` (it left).
    pub fn forget_sender(&mut self, sender: ParticipantId) {
        self.openers.remove(&sender);
    }

    /// For each sender this endpoint holds keys of: the epochs whose frames it opened, in the
    /// order they first did, with when.
    pub fn epochs_opened(&self) -> HashMap<ParticipantId, Vec<(u64, Instant)>> {
        self.openers
            .iter()
            .filter(|(_, ring)| !ring.epochs.is_empty())
            .map(|(sender, ring)| (*sender, ring.epochs.iter().copied().collect()))
            .collect()
    }

    /// Changes the audio level the published audio claims from now on.
    pub fn set_audio_level(&mut self, level: i8) {
        self.config.audio_level = level.clamp(-127, 0);
    }

    /// Sends a PLI for a negotiated video subscription. Returns whether one was sent.
    pub fn request_keyframe(&mut self, publication: PublicationId) -> Result<bool, EndpointError> {
        let sent = self.send_keyframe_request(publication);
        self.drain()?;
        Ok(sent)
    }

    fn send_keyframe_request(&mut self, publication: PublicationId) -> bool {
        let Some(subscription) = self.subscriptions.get(&publication) else {
            return false;
        };
        let SubState::Active(mid) = subscription.state else {
            return false;
        };
        if self.config.light {
            // RTP mode has no media writer; the request goes on the receive stream of the
            // m-line (any of its simulcast streams: the SFU sends one).
            let mut api = self.rtc.direct_api();
            let Some(stream) = api.stream_rx_by_mid(mid, None) else {
                return false;
            };
            stream.request_keyframe(KeyframeRequestKind::Pli);
            return self.keyframe_requested(publication);
        }
        let Some(mut writer) = self.rtc.writer(mid) else {
            return false;
        };
        if !writer.is_request_keyframe_possible(KeyframeRequestKind::Pli) {
            return false;
        }
        if writer
            .request_keyframe(None, KeyframeRequestKind::Pli)
            .is_err()
        {
            return false;
        }
        self.keyframe_requested(publication)
    }

    fn keyframe_requested(&mut self, publication: PublicationId) -> bool {
        if let Some(receiver) = self.receivers.get_mut(&publication) {
            receiver.last_keyframe_request = Some(self.now);
        }
        if let Some(stats) = self.stats.get_mut(&publication) {
            stats.keyframe_requests_sent += 1;
        }
        true
    }

    fn advance(&mut self, now: Instant) {
        // Time never runs backwards inside the endpoint, whatever order inputs arrive in.
        if now > self.now {
            self.now = now;
        }
    }

    fn fail(&mut self, err: RtcError) -> EndpointError {
        self.failure = Some(err.to_string());
        self.rtc.disconnect();
        EndpointError::Rtc(err)
    }

    /// Polls str0m until it has nothing more to say at the current instant.
    fn drain(&mut self) -> Result<(), EndpointError> {
        let mut due_rounds = 0;
        loop {
            if !self.rtc.is_alive() {
                self.rtc_timeout = self.now + IDLE_TIMEOUT;
                return Ok(());
            }
            let output = match self.rtc.poll_output() {
                Ok(output) => output,
                Err(err) => return Err(self.fail(err)),
            };
            match output {
                Output::Timeout(at) => {
                    if at <= self.now {
                        // The pacer releases a written packet only on a timeout at or after
                        // the time it asked for; feed it now rather than making the driver
                        // go round its loop (and its timer granularity) once per packet.
                        if due_rounds < MAX_DUE_ROUNDS {
                            due_rounds += 1;
                            if let Err(err) = self.rtc.handle_input(Input::Timeout(self.now)) {
                                return Err(self.fail(err));
                            }
                            continue;
                        }
                        // str0m keeps asking for the present: let the driver come back a
                        // little later instead of spinning.
                        self.rtc_timeout = self.now + Duration::from_millis(1);
                    } else {
                        self.rtc_timeout = at;
                    }
                    return Ok(());
                }
                Output::Transmit(transmit) => {
                    self.transmits.push_back(Datagram {
                        source: transmit.source,
                        destination: transmit.destination,
                        contents: transmit.contents.into(),
                    });
                }
                Output::Event(event) => self.handle_event(event),
            }
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                self.connected_at.get_or_insert(self.now);
            }
            Event::IceConnectionStateChange(state) => {
                self.ice_state = state;
                if state == IceConnectionState::Disconnected {
                    self.ice_disconnected_at = Some(self.now);
                }
            }
            Event::MediaData(data) => self.handle_media(data),
            Event::RtpPacket(mut packet) => self.handle_rtp(&mut packet),
            Event::KeyframeRequest(request) => {
                if let Some(video) = &mut self.video
                    && video.mid == request.mid
                {
                    for layer in &mut video.layers {
                        if request.rid.is_none() || layer.rid == request.rid {
                            layer.force_keyframe = true;
                        }
                    }
                    self.sent.keyframe_requests_received += 1;
                }
            }
            _ => {}
        }
    }

    /// The per-frame receive path: no logging, no allocation beyond the decoder's (an
    /// encrypted frame is opened in its own buffer).
    fn handle_media(&mut self, mut data: MediaData) {
        let Some(&publication) = self.mid_to_publication.get(&data.mid) else {
            self.unrouted_frames += 1;
            return;
        };
        let Some(stats) = self.stats.get_mut(&publication) else {
            self.unrouted_frames += 1;
            return;
        };
        let now = self.now;
        let packets = data
            .seq_range
            .end()
            .saturating_sub(**data.seq_range.start())
            .saturating_add(1);
        stats.rtp_packets += packets;
        stats.frames += 1;
        stats.bytes += data.data.len() as u64;
        stats.first_media_at.get_or_insert(now);
        stats.last_media_at = Some(now);
        if !data.contiguous {
            stats.discontinuities += 1;
        }
        let mut receiver = self.receivers.get_mut(&publication);
        // Everything past this point sees the frame as a decoder would: `frame` is the
        // plaintext, which an encrypted frame is opened into in its own buffer.
        let mut frame_len = data.data.len();
        if self.config.e2ee.is_some() {
            let format = match stats.kind {
                MediaKind::Audio => MediaFormat::Opus,
                MediaKind::Video => MediaFormat::Vp8,
            };
            // str0m hands over each frame in a buffer of its own; were it ever shared, the
            // frame would be opened in a copy rather than in someone else's bytes.
            if Arc::get_mut(&mut data.data).is_none() {
                data.data = Arc::from(&data.data[..]);
            }
            let opened = match (
                self.openers.get_mut(&stats.participant_id),
                Arc::get_mut(&mut data.data),
            ) {
                (Some(ring), Some(buffer)) => ring.open(now, format, buffer),
                _ => Err(NotOpened { newer_key: false }),
            };
            let opened = match opened {
                Ok(opened) => opened,
                Err(failure) => {
                    // Nothing of a frame that failed is decoded or even looked at.
                    stats.note_decrypt_failure(failure.newer_key);
                    if let Some(receiver) = receiver {
                        receiver.decoder_gap = true;
                    }
                    return;
                }
            };
            stats.note_decrypted(now);
            frame_len = opened.len;
        }
        let frame = &data.data[..frame_len];
        // A frame dropped before this one leaves a hole the decoder sees as lost packets.
        let decoder_gap = receiver
            .as_mut()
            .is_some_and(|r| std::mem::take(&mut r.decoder_gap));
        match stats.kind {
            MediaKind::Audio => {
                if let Some(analyzer) = receiver.and_then(|r| r.analyzer.as_mut()) {
                    match analyzer.push_packet(frame) {
                        Ok(()) => stats.audio_frames_decoded += 1,
                        Err(_) => stats.audio_decode_errors += 1,
                    }
                }
            }
            MediaKind::Video => {
                stats.video_frames += 1;
                let codec = match data.params.spec().codec {
                    Codec::H264 => SyntheticCodec::H264,
                    _ => SyntheticCodec::Vp8,
                };
                let keyframe = data.is_keyframe() || frame_is_keyframe(codec, frame);
                if keyframe {
                    stats.keyframes += 1;
                    stats.first_keyframe_at.get_or_insert(now);
                }
                stats.note_tag(frame);
                // A decoder that lost packets, or never saw a keyframe, cannot show the
                // following frames: ask for a keyframe as a browser would, at a bounded rate.
                let needs_keyframe = !keyframe
                    && (!data.contiguous || decoder_gap || stats.first_keyframe_at.is_none());
                let due = receiver.is_some_and(|r| {
                    r.last_keyframe_request.is_none_or(|at| {
                        now.saturating_duration_since(at) >= KEYFRAME_REQUEST_INTERVAL
                    })
                });
                if needs_keyframe && due {
                    self.send_keyframe_request(publication);
                }
            }
        }
    }

    /// The light receiver's per-packet path (RTP mode): counts, gaps, and at the start of a
    /// VP8 frame its keyframe bit and tag. With end-to-end encryption, each audio packet (one
    /// Opus frame) is opened in place, and video tags, which are sealed, are not read.
    /// Allocates nothing.
    fn handle_rtp(&mut self, packet: &mut RtpPacket) {
        let Some(mid) = self
            .rtc
            .direct_api()
            .stream_rx(&packet.header.ssrc)
            .map(|stream| stream.mid())
        else {
            self.unrouted_frames += 1;
            return;
        };
        let Some(&publication) = self.mid_to_publication.get(&mid) else {
            self.unrouted_frames += 1;
            return;
        };
        let (Some(stats), Some(receiver)) = (
            self.stats.get_mut(&publication),
            self.receivers.get_mut(&publication),
        ) else {
            self.unrouted_frames += 1;
            return;
        };
        let now = self.now;
        let seq = *packet.seq_no;
        // A retransmission fills a gap counted when it opened; only new highs are compared.
        let gap = receiver.last_seq.is_some_and(|last| seq > last + 1);
        if receiver.last_seq.is_none_or(|last| seq > last) {
            receiver.last_seq = Some(seq);
        }
        stats.rtp_packets += 1;
        stats.bytes += packet.payload.len() as u64;
        stats.first_media_at.get_or_insert(now);
        stats.last_media_at = Some(now);
        if gap {
            stats.discontinuities += 1;
        }
        let mut keyframe = false;
        let encrypted = self.config.e2ee.is_some();
        match stats.kind {
            MediaKind::Audio => {
                stats.frames += 1;
                if encrypted {
                    let scratch = &mut self.scratch;
                    let opened = match self.openers.get_mut(&stats.participant_id) {
                        Some(ring) => match Arc::get_mut(&mut packet.payload) {
                            Some(buffer) => ring.open(now, MediaFormat::Opus, buffer).map(|_| ()),
                            // A payload str0m still shares is opened in a copy, in a buffer
                            // kept for that.
                            None => {
                                scratch.clear();
                                scratch.extend_from_slice(&packet.payload);
                                ring.open(now, MediaFormat::Opus, scratch).map(|_| ())
                            }
                        },
                        None => Err(NotOpened { newer_key: false }),
                    };
                    match opened {
                        Ok(()) => stats.note_decrypted(now),
                        Err(failure) => stats.note_decrypt_failure(failure.newer_key),
                    }
                }
            }
            MediaKind::Video => {
                // The marker bit ends a frame: one frame counted per frame, without assembling it.
                if packet.header.marker {
                    stats.frames += 1;
                    stats.video_frames += 1;
                }
                if let Some(frame) = vp8_frame_start(&packet.payload) {
                    keyframe = vp8_is_keyframe(frame);
                    if keyframe {
                        stats.keyframes += 1;
                        stats.first_keyframe_at.get_or_insert(now);
                    }
                    // The tag sits in the frame's first bytes, so the first packet holds it
                    // (sealed, with end-to-end encryption).
                    if !encrypted {
                        stats.note_tag(frame);
                    }
                }
            }
        }
        // As the full receiver does: without a keyframe yet, or after a gap, a decoder could
        // not go on, so ask for one at a bounded rate.
        let needs_keyframe = stats.kind == MediaKind::Video
            && !keyframe
            && (gap || stats.first_keyframe_at.is_none());
        let due = receiver
            .last_keyframe_request
            .is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_REQUEST_INTERVAL);
        if needs_keyframe && due {
            self.send_keyframe_request(publication);
        }
    }

    fn send_due_media(&mut self) {
        if self.connected_at.is_none() || self.closing {
            return;
        }
        // While the transport is down the schedule still advances (nothing is written), so
        // that the next media timeout is always in the future.
        let connected = self.rtc.is_connected();
        let now = self.now;
        if let Some(audio) = &mut self.audio
            && audio.active
            && let Some(pt) = audio.pt
        {
            let due = audio.timetable.take_due(now);
            if connected && !audio.paused {
                for slot in due {
                    let Ok(mut packet) = audio.source.next_packet() else {
                        self.sent.write_errors += 1;
                        continue;
                    };
                    if !SendCrypto::seal(
                        &mut self.send_crypto,
                        MediaFormat::Opus,
                        &mut packet,
                        &mut self.sent,
                    ) {
                        self.sent.write_errors += 1;
                        continue;
                    }
                    let len = packet.len() as u64;
                    let time = MediaTime::new(
                        slot * u64::from(AUDIO_FRAME_TICKS),
                        Frequency::FORTY_EIGHT_KHZ,
                    );
                    let level = self.config.audio_level;
                    let written = self.rtc.writer(audio.mid).is_some_and(|writer| {
                        writer
                            .audio_level(level, level > -127)
                            .write(pt, now, time, packet)
                            .is_ok()
                    });
                    if written {
                        self.sent.audio_packets += 1;
                        self.sent.audio_bytes += len;
                    } else {
                        self.sent.write_errors += 1;
                    }
                }
            }
        }
        if let Some(video) = &mut self.video
            && video.active
            && video.fps > 0
            && let Some(pt) = video.pt
        {
            let due = video.timetable.take_due(now);
            if connected && !video.paused {
                for slot in due {
                    let time =
                        MediaTime::new(slot * VIDEO_CLOCK_RATE / video.fps, Frequency::NINETY_KHZ);
                    for layer in video.layers.iter_mut().filter(|l| l.wanted) {
                        let periodic = match (self.config.keyframe_interval, layer.last_keyframe_at)
                        {
                            (_, None) => true,
                            (Some(interval), Some(at)) => {
                                now.saturating_duration_since(at) >= interval
                            }
                            (None, Some(_)) => false,
                        };
                        let keyframe = layer.force_keyframe || periodic;
                        let mut frame = layer.source.next_frame(keyframe);
                        if !SendCrypto::seal(
                            &mut self.send_crypto,
                            MediaFormat::Vp8,
                            &mut frame,
                            &mut self.sent,
                        ) {
                            self.sent.write_errors += 1;
                            continue;
                        }
                        let len = frame.len() as u64;
                        let written = self.rtc.writer(video.mid).is_some_and(|writer| {
                            let writer = match layer.rid {
                                Some(rid) => writer.rid(rid),
                                None => writer,
                            };
                            writer.write(pt, now, time, frame).is_ok()
                        });
                        if written {
                            self.sent.video_frames += 1;
                            self.sent.video_bytes += len;
                            layer.frames += 1;
                            if keyframe {
                                self.sent.keyframes += 1;
                                layer.force_keyframe = false;
                                layer.last_keyframe_at = Some(now);
                            }
                        } else {
                            self.sent.write_errors += 1;
                        }
                    }
                }
            }
        }
    }
}

fn to_str0m_kind(kind: MediaKind) -> str0m::media::MediaKind {
    match kind {
        MediaKind::Audio => str0m::media::MediaKind::Audio,
        MediaKind::Video => str0m::media::MediaKind::Video,
    }
}

/// The VP8 frame data in an RTP payload that starts a frame (the payload descriptor's S bit set
/// on partition 0, RFC 7741 §4.2); `None` for a packet in the middle of a frame.
fn vp8_frame_start(payload: &[u8]) -> Option<&[u8]> {
    rtp_payload::vp8::Descriptor::parse(payload)
        .filter(|d| d.starts_frame)
        .map(|d| d.data(payload))
}

/// The negotiated payload type of `codec` on a send m-line.
fn find_pt(rtc: &mut Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let writer = rtc.writer(mid)?;
    writer
        .payload_params()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
}

#[cfg(test)]
mod tests {
    //! What the endpoint does on its own, without a server. Its behaviour against the real
    //! media engine (connecting, media, renegotiation, keyframes, partitions) is tested in
    //! `tests/endpoint.rs`.

    use super::*;

    #[test]
    fn a_vp8_frame_start_is_found_past_every_descriptor_field() {
        // X and S set, partition 0; I (15-bit picture id), L and T present; then a keyframe.
        let packet = [0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x10, 0xaa];
        assert_eq!(vp8_frame_start(&packet), Some(&[0x10, 0xaa][..]));
        assert!(vp8_is_keyframe(&packet[6..]));
        // A 7-bit picture id only.
        assert_eq!(
            vp8_frame_start(&[0x90, 0x80, 0x05, 0x31]),
            Some(&[0x31][..])
        );
        // No extension at all.
        assert_eq!(vp8_frame_start(&[0x10, 0x31]), Some(&[0x31][..]));
        // A packet in the middle of a frame, one of another partition, a truncated one.
        assert_eq!(vp8_frame_start(&[0x80, 0x80, 0x05, 0x31]), None);
        assert_eq!(vp8_frame_start(&[0x11, 0x31]), None);
        assert_eq!(vp8_frame_start(&[0x90, 0xe0, 0x81]), None);
        assert_eq!(vp8_frame_start(&[]), None);
    }

    fn endpoint() -> Endpoint {
        let config = EndpointConfig::new(SocketAddr::from(([127, 0, 0, 1], 10_000)));
        Endpoint::new(Instant::now(), config).expect("endpoint")
    }

    fn publication(id: u64, kind: MediaKind) -> PublicationInfo {
        PublicationInfo {
            id: PublicationId(id),
            participant_id: ParticipantId(9),
            kind,
            source: match kind {
                MediaKind::Audio => TrackSource::Microphone,
                MediaKind::Video => TrackSource::Camera,
            },
            muted: false,
            codec: None,
            layers: Vec::new(),
        }
    }

    #[test]
    fn a_late_source_catches_up_a_little_and_skips_the_rest() {
        let start = Instant::now();
        let mut timetable = Timetable::new(AUDIO_INTERVAL);
        assert_eq!(timetable.take_due(start), 0..1, "the first call starts it");
        assert_eq!(timetable.take_due(start + AUDIO_INTERVAL / 2), 1..1);
        assert_eq!(timetable.take_due(start + AUDIO_INTERVAL), 1..2);
        // A stall of a second: five overdue slots go out, the other 45 are skipped, and the
        // RTP time keeps counting them.
        let late = start + AUDIO_INTERVAL + Duration::from_secs(1);
        assert_eq!(timetable.take_due(late), 2..7);
        assert_eq!(timetable.slot, 52);
        assert_eq!(timetable.next_at, Some(late + AUDIO_INTERVAL));
    }

    #[test]
    fn candidates_are_browser_style_lines() {
        let endpoint = endpoint();
        let candidates = endpoint.local_candidates();
        let ClientMessage::Candidate { candidate } = &candidates[0] else {
            panic!("a candidate message");
        };
        assert!(candidate.starts_with("candidate:"), "{candidate}");
        assert!(candidate.contains("127.0.0.1"));
        assert!(candidate.contains("typ host"));
        let parsed = Candidate::from_sdp_string(candidate).expect("parses back");
        assert_eq!(parsed.addr(), endpoint.local_addr());
        assert_eq!(
            candidates[1],
            ClientMessage::Candidate {
                candidate: String::new()
            }
        );
    }

    #[test]
    fn the_first_offer_publishes_and_holds_back_later_changes() {
        let mut endpoint = endpoint();
        assert!(endpoint.has_pending_changes(), "publishing is a change");
        let Some(ClientMessage::Offer {
            sdp,
            publish,
            subscribe,
        }) = endpoint.create_offer()
        else {
            panic!("the first offer publishes");
        };
        assert_eq!(publish.len(), 2);
        assert_eq!(publish[0].source, TrackSource::Microphone);
        assert_eq!(publish[1].source, TrackSource::Camera);
        assert!(subscribe.is_empty());
        assert_eq!(sdp.matches("a=sendonly").count(), 2);
        assert!(
            sdp.contains("a=candidate:"),
            "the offer carries the host candidate"
        );

        // A change while the offer is in flight waits for the answer.
        endpoint.subscribe(publication(1, MediaKind::Audio));
        assert!(endpoint.offer_in_flight());
        assert!(endpoint.has_pending_changes());
        assert!(endpoint.create_offer().is_none());
        assert_eq!(endpoint.subscriptions().count(), 1);
    }

    #[test]
    fn a_bad_or_refused_answer_rolls_the_offer_back() {
        let mut endpoint = endpoint();
        let err = endpoint
            .handle_answer(Instant::now(), "v=0")
            .expect_err("no offer in flight");
        assert!(matches!(err, EndpointError::UnexpectedAnswer), "{err}");

        assert!(endpoint.create_offer().is_some());
        endpoint.offer_refused();
        assert!(!endpoint.offer_in_flight());
        assert!(endpoint.has_pending_changes());

        let Some(ClientMessage::Offer { publish, .. }) = endpoint.create_offer() else {
            panic!("offered again");
        };
        assert_eq!(publish.len(), 2);
        let err = endpoint
            .handle_answer(Instant::now(), "not sdp")
            .expect_err("garbage answer");
        assert!(matches!(err, EndpointError::BadAnswer(_)), "{err}");
        assert!(!endpoint.offer_in_flight());

        let Some(ClientMessage::Offer { publish, .. }) = endpoint.create_offer() else {
            panic!("offered a third time");
        };
        assert_eq!(publish.len(), 2, "the publications were rolled back too");
    }

    #[test]
    fn encrypted_publishing_needs_the_key_and_vp8() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 10_000));
        let mut config = EndpointConfig::new(addr);
        config.e2ee = Some(E2eeConfig::keyless());
        let err = Endpoint::new(Instant::now(), config.clone()).expect_err("cannot publish");
        assert!(matches!(err, EndpointError::E2ee(_)), "{err}");

        config.publish_audio = false;
        config.publish_video = false;
        assert!(Endpoint::new(Instant::now(), config.clone()).is_ok());

        config.publish_video = true;
        config.video_codec = SyntheticCodec::H264;
        config.e2ee = Some(E2eeConfig::with_key(1, [7; 16]));
        let err = Endpoint::new(Instant::now(), config.clone()).expect_err("VP8 only");
        assert!(matches!(err, EndpointError::E2ee(_)), "{err}");

        config.video_codec = SyntheticCodec::Vp8;
        assert!(Endpoint::new(Instant::now(), config.clone()).is_ok());
        // The key never shows in a debug print.
        let printed = format!("{config:?}");
        assert!(printed.contains("kid: Some(1)"), "{printed}");
        assert!(!printed.contains("[7, 7"), "{printed}");
    }

    #[test]
    fn tampering_corrupts_the_nth_sealed_frame_past_its_clear_prefix() {
        let mut crypto = Some(SendCrypto {
            sealer: Some(Sealer::new(&[1; 16], 0).expect("key")),
            tamper_every: 3,
        });
        let mut sent = SentStats::default();
        let mut opener = Opener::new();
        opener.add_key(0, &[1; 16]);
        for n in 1..=6u64 {
            let plain = vec![0x11, 0x02, 0x00, 9, 9, 9, 9, 9];
            let mut frame = plain.clone();
            assert!(SendCrypto::seal(
                &mut crypto,
                MediaFormat::Vp8,
                &mut frame,
                &mut sent
            ));
            assert_eq!(frame[..3], plain[..3], "the clear prefix is intact");
            let opened = opener.open(MediaFormat::Vp8, &mut frame);
            assert_eq!(opened.is_err(), n.is_multiple_of(3), "frame {n}");
        }
        assert_eq!((sent.frames_sealed, sent.frames_tampered), (6, 2));

        // Plain media passes through untouched.
        let mut frame = vec![0x78, 1, 2];
        assert!(SendCrypto::seal(
            &mut None,
            MediaFormat::Opus,
            &mut frame,
            &mut sent
        ));
        assert_eq!(frame, [0x78, 1, 2]);
        assert_eq!(sent.frames_sealed, 6);
    }

    #[test]
    fn unsubscribing_before_the_offer_forgets_the_publication() {
        let mut endpoint = endpoint();
        endpoint.subscribe(publication(1, MediaKind::Video));
        endpoint.unsubscribe(PublicationId(1));
        assert_eq!(endpoint.subscriptions().count(), 0);
        assert!(!endpoint.stats()[&PublicationId(1)].subscribed);
        let Some(ClientMessage::Offer { subscribe, sdp, .. }) = endpoint.create_offer() else {
            panic!("the publications are offered");
        };
        assert!(subscribe.is_empty());
        assert!(!sdp.contains("a=recvonly"));
    }
}
