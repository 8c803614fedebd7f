//! A sans-IO WebRTC client endpoint: one `str0m::Rtc` in frame mode that publishes a tone and
//! tagged video, subscribes to other participants' publications and measures what it receives.
//!
//! The endpoint owns no socket, no timer and no clock. Every input carries the time it happened
//! at, outputs are drained with [`Endpoint::poll_transmit`] and [`Endpoint::poll_timeout`] says
//! when to call [`Endpoint::handle_timeout`] next. The same type therefore drives the real load
//! bots ([`crate::bot`]) and virtual-time scenario tests with a fake network.
//!
//! Signaling follows the product's protocol: this side always offers and the ICE-lite SFU always
//! answers. Only one offer is in flight at a time; changes requested meanwhile are queued and
//! go out with the next [`Endpoint::create_offer`] after the answer arrived.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::{
    ClientMessage, MediaKind, ParticipantId, PublicationId, PublicationInfo, PublishTrack,
    SubscribeTrack, TrackSource,
};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaData, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};
use thiserror::Error;

use crate::media::{
    AUDIO_FRAME_TICKS, MediaError, ToneAnalyzer, ToneSource, VideoSource, vp8_frame_tag,
    vp8_is_keyframe,
};

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
const MAX_CATCH_UP: u32 = 5;

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
    /// Periodic keyframe interval. Keyframes are also sent first and whenever the SFU asks.
    pub keyframe_interval: Option<Duration>,
    /// Decode received Opus to find its tone. Costs CPU per packet; load tests that only count
    /// packets can turn it off.
    pub analyze_audio: bool,
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
            keyframe_interval: Some(Duration::from_secs(5)),
            analyze_audio: true,
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
    pub audio_frames_decoded: u64,
    pub audio_decode_errors: u64,
    pub video_frames: u64,
    pub keyframes: u64,
    /// The tag of the most recent tagged video frame.
    pub video_tag: Option<u64>,
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
            audio_frames_decoded: 0,
            audio_decode_errors: 0,
            video_frames: 0,
            keyframes: 0,
            video_tag: None,
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
    /// Writes str0m refused, or Opus encodes that failed.
    pub write_errors: u64,
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
}

#[derive(Debug)]
struct AudioSender {
    mid: Mid,
    pt: Option<Pt>,
    active: bool,
    paused: bool,
    source: ToneSource,
    next_at: Option<Instant>,
    /// 20 ms slots since the first packet, skipped ones included, for the RTP time.
    slot: u64,
}

#[derive(Debug)]
struct VideoSender {
    mid: Mid,
    pt: Option<Pt>,
    active: bool,
    paused: bool,
    source: VideoSource,
    interval: Duration,
    fps: u64,
    next_at: Option<Instant>,
    slot: u64,
    last_keyframe_at: Option<Instant>,
    force_keyframe: bool,
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
}

impl Endpoint {
    pub fn new(now: Instant, config: EndpointConfig) -> Result<Self, EndpointError> {
        let mut rtc = Rtc::builder().build(now);
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
            sent: SentStats::default(),
            transmits: VecDeque::new(),
            connected_at: None,
            ice_state: IceConnectionState::New,
            ice_disconnected_at: None,
            failure: None,
            closing: false,
            ignored_datagrams: 0,
            unrouted_frames: 0,
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
        self.receivers.entry(id).or_insert(Receiver {
            analyzer,
            last_keyframe_request: None,
        });
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
                    next_at: None,
                    slot: 0,
                });
            }
            if self.config.publish_video {
                let mid = api.add_media(
                    str0m::media::MediaKind::Video,
                    Direction::SendOnly,
                    stream_id,
                    None,
                    None,
                );
                let fps = u64::from(self.config.video_fps);
                self.video = Some(VideoSender {
                    mid,
                    pt: None,
                    active: false,
                    paused: false,
                    source: VideoSource::new(self.config.video_tag, self.config.video_frame_bytes),
                    interval: 1_000_000_000_u64
                        .checked_div(fps)
                        .map_or(IDLE_TIMEOUT, Duration::from_nanos),
                    fps,
                    next_at: None,
                    slot: 0,
                    last_keyframe_at: None,
                    force_keyframe: true,
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
        });
        let video = self.video.as_ref().map(|v| PublishTrack {
            mid: v.mid.to_string(),
            source: TrackSource::Camera,
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
            video.pt = find_pt(&mut self.rtc, video.mid, Codec::Vp8);
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
                timeout = timeout.min(audio.next_at.unwrap_or(self.now));
            }
            if let Some(video) = &self.video
                && video.active
                && video.pt.is_some()
                && video.fps > 0
            {
                timeout = timeout.min(video.next_at.unwrap_or(self.now));
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
                    video.force_keyframe |= !paused;
                }
            }
        }
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
            Event::KeyframeRequest(request) => {
                if let Some(video) = &mut self.video
                    && video.mid == request.mid
                {
                    video.force_keyframe = true;
                    self.sent.keyframe_requests_received += 1;
                }
            }
            _ => {}
        }
    }

    /// The per-frame receive path: no logging, no allocation beyond the decoder's.
    fn handle_media(&mut self, data: MediaData) {
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
        let receiver = self.receivers.get_mut(&publication);
        match stats.kind {
            MediaKind::Audio => {
                if let Some(analyzer) = receiver.and_then(|r| r.analyzer.as_mut()) {
                    match analyzer.push_packet(&data.data) {
                        Ok(()) => stats.audio_frames_decoded += 1,
                        Err(_) => stats.audio_decode_errors += 1,
                    }
                }
            }
            MediaKind::Video => {
                stats.video_frames += 1;
                let keyframe = data.is_keyframe() || vp8_is_keyframe(&data.data);
                if keyframe {
                    stats.keyframes += 1;
                    stats.first_keyframe_at.get_or_insert(now);
                }
                match vp8_frame_tag(&data.data) {
                    Some(tag) => {
                        if stats.video_tag.is_some_and(|old| old != tag) {
                            stats.tag_changes += 1;
                        }
                        stats.video_tag = Some(tag);
                    }
                    None => stats.untagged_frames += 1,
                }
                // A decoder that lost packets, or never saw a keyframe, cannot show the
                // following frames: ask for a keyframe as a browser would, at a bounded rate.
                let needs_keyframe =
                    !keyframe && (!data.contiguous || stats.first_keyframe_at.is_none());
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
            let mut next = *audio.next_at.get_or_insert(now);
            let mut sent = 0;
            while next <= now && sent < MAX_CATCH_UP {
                if connected && !audio.paused {
                    match audio.source.next_packet() {
                        Ok(packet) => {
                            let len = packet.len() as u64;
                            let time = MediaTime::new(
                                audio.slot * u64::from(AUDIO_FRAME_TICKS),
                                Frequency::FORTY_EIGHT_KHZ,
                            );
                            let written = self
                                .rtc
                                .writer(audio.mid)
                                .map(|w| w.write(pt, now, time, packet));
                            if let Some(Ok(())) = written {
                                self.sent.audio_packets += 1;
                                self.sent.audio_bytes += len;
                            } else {
                                self.sent.write_errors += 1;
                            }
                        }
                        Err(_) => self.sent.write_errors += 1,
                    }
                }
                audio.slot += 1;
                next += AUDIO_INTERVAL;
                sent += 1;
            }
            while next <= now {
                // Too far behind: skip the missed slots rather than burst.
                audio.slot += 1;
                next += AUDIO_INTERVAL;
            }
            audio.next_at = Some(next);
        }
        if let Some(video) = &mut self.video
            && video.active
            && video.fps > 0
            && let Some(pt) = video.pt
        {
            let mut next = *video.next_at.get_or_insert(now);
            let mut sent = 0;
            while next <= now && sent < MAX_CATCH_UP {
                if connected && !video.paused {
                    let periodic = match (self.config.keyframe_interval, video.last_keyframe_at) {
                        (_, None) => true,
                        (Some(interval), Some(at)) => now.saturating_duration_since(at) >= interval,
                        (None, Some(_)) => false,
                    };
                    let keyframe = video.force_keyframe || periodic;
                    let frame = video.source.next_frame(keyframe);
                    let len = frame.len() as u64;
                    let time = MediaTime::new(
                        video.slot * VIDEO_CLOCK_RATE / video.fps,
                        Frequency::NINETY_KHZ,
                    );
                    let written = self
                        .rtc
                        .writer(video.mid)
                        .map(|w| w.write(pt, now, time, frame));
                    if let Some(Ok(())) = written {
                        self.sent.video_frames += 1;
                        self.sent.video_bytes += len;
                        if keyframe {
                            self.sent.keyframes += 1;
                            video.force_keyframe = false;
                            video.last_keyframe_at = Some(now);
                        }
                    } else {
                        self.sent.write_errors += 1;
                    }
                }
                video.slot += 1;
                next += video.interval;
                sent += 1;
            }
            while next <= now {
                video.slot += 1;
                next += video.interval;
            }
            video.next_at = Some(next);
        }
    }
}

fn to_str0m_kind(kind: MediaKind) -> str0m::media::MediaKind {
    match kind {
        MediaKind::Audio => str0m::media::MediaKind::Audio,
        MediaKind::Video => str0m::media::MediaKind::Video,
    }
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
    //! Endpoints connected through a tiny str0m forwarder (ICE-lite, frame mode) over a fake
    //! network in virtual time: no sockets, no sleeps.

    use super::*;
    use crate::reference_sfu::ReferenceSfu;
    use std::net::{IpAddr, Ipv4Addr};

    /// One-way latency of the fake network.
    const LATENCY: Duration = Duration::from_millis(5);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    /// The forwarder's address for endpoint `i`.
    fn sfu_addr(i: usize) -> SocketAddr {
        addr(20_000 + u16::try_from(i).expect("few endpoints"))
    }

    fn participant(i: usize) -> ParticipantId {
        ParticipantId(i as u64 + 1)
    }

    /// Endpoints, the forwarder and a fixed-latency network in virtual time.
    struct Sim {
        now: Instant,
        endpoints: Vec<Endpoint>,
        sfu: ReferenceSfu,
        network: VecDeque<(Instant, Datagram)>,
        /// Publications the forwarder announced, in order.
        publications: Vec<PublicationInfo>,
        /// Endpoints whose first offer went out (their candidates were trickled).
        negotiated: Vec<usize>,
        /// Drop every datagram (a network partition).
        blackhole: bool,
        /// Loop iterations run so far, to catch a driver spinning without time passing.
        steps: u64,
    }

    impl Sim {
        fn new(configs: Vec<EndpointConfig>) -> Self {
            let now = Instant::now();
            let mut sfu = ReferenceSfu::new();
            let mut endpoints = Vec::new();
            for (i, mut config) in configs.into_iter().enumerate() {
                config.local_addr = addr(10_000 + u16::try_from(i).expect("few endpoints"));
                endpoints.push(Endpoint::new(now, config).expect("endpoint"));
                sfu.add_participant(now, participant(i), sfu_addr(i))
                    .expect("transport");
            }
            Self {
                now,
                endpoints,
                sfu,
                network: VecDeque::new(),
                publications: Vec::new(),
                negotiated: Vec::new(),
                blackhole: false,
                steps: 0,
            }
        }

        /// Sends an offer message to the forwarder as the signaling server would.
        fn offer(&mut self, i: usize, offer: ClientMessage) -> (String, Vec<PublicationInfo>) {
            let ClientMessage::Offer {
                sdp,
                publish,
                subscribe,
            } = offer
            else {
                panic!("expected an offer, got {offer:?}");
            };
            let (answer, added) = self
                .sfu
                .handle_offer(self.now, participant(i), &sdp, &publish, &subscribe)
                .expect("the endpoint's offer is acceptable");
            self.publications.extend(added.iter().cloned());
            (answer, added)
        }

        /// Runs one offer/answer exchange for endpoint `i`, if it has something to offer.
        fn negotiate(&mut self, i: usize) -> Vec<PublicationInfo> {
            let Some(offer) = self.endpoints[i].create_offer() else {
                return Vec::new();
            };
            let first = !self.negotiated.contains(&i);
            let (answer, added) = self.offer(i, offer);
            self.endpoints[i]
                .handle_answer(self.now, &answer)
                .expect("the forwarder's answer is accepted");
            if first {
                self.negotiated.push(i);
                for message in self.endpoints[i].local_candidates() {
                    let ClientMessage::Candidate { candidate } = message else {
                        panic!("a candidate message");
                    };
                    self.sfu
                        .handle_candidate(participant(i), &candidate)
                        .expect("a valid candidate");
                }
            }
            self.flush();
            added
        }

        fn publications_of(&self, i: usize) -> Vec<PublicationInfo> {
            self.publications
                .iter()
                .filter(|p| p.participant_id == participant(i))
                .cloned()
                .collect()
        }

        fn publication(&self, i: usize, kind: MediaKind) -> PublicationId {
            self.publications_of(i)
                .into_iter()
                .find(|p| p.kind == kind)
                .expect("endpoint publishes this kind")
                .id
        }

        /// Subscribes endpoint `subscriber` to everything `publisher` publishes.
        fn subscribe_all(&mut self, subscriber: usize, publisher: usize) {
            for publication in self.publications_of(publisher) {
                self.endpoints[subscriber].subscribe(publication);
            }
        }

        fn flush(&mut self) {
            let at = self.now + LATENCY;
            for endpoint in &mut self.endpoints {
                while let Some(datagram) = endpoint.poll_transmit() {
                    if !self.blackhole {
                        self.network.push_back((at, datagram));
                    }
                }
            }
            while let Some(datagram) = self.sfu.poll_transmit() {
                if !self.blackhole {
                    self.network.push_back((at, datagram));
                }
            }
        }

        fn run_for(&mut self, duration: Duration) {
            let end = self.now + duration;
            for _ in 0..2_000_000 {
                let mut next = self.sfu.poll_timeout().unwrap_or(end);
                for endpoint in &self.endpoints {
                    next = next.min(endpoint.poll_timeout());
                }
                if let Some((at, _)) = self.network.front() {
                    next = next.min(*at);
                }
                if next > end {
                    self.now = end;
                    return;
                }
                self.now = next.max(self.now);
                self.steps += 1;
                let now = self.now;
                while self.network.front().is_some_and(|(at, _)| *at <= now) {
                    let Some((_, datagram)) = self.network.pop_front() else {
                        break;
                    };
                    match self
                        .endpoints
                        .iter_mut()
                        .find(|e| e.local_addr() == datagram.destination)
                    {
                        Some(endpoint) => endpoint
                            .handle_datagram(
                                now,
                                datagram.source,
                                datagram.destination,
                                &datagram.contents,
                            )
                            .expect("endpoint accepts the datagram"),
                        None => self.sfu.handle_datagram(
                            now,
                            datagram.source,
                            datagram.destination,
                            &datagram.contents,
                        ),
                    }
                }
                for endpoint in &mut self.endpoints {
                    if endpoint.poll_timeout() <= now {
                        endpoint.handle_timeout(now).expect("endpoint timeout");
                    }
                }
                self.sfu.handle_timeout(now);
                self.flush();
            }
            panic!("the simulation did not reach its end time");
        }
    }

    fn config(tone_hz: f32, video_tag: u64) -> EndpointConfig {
        EndpointConfig {
            tone_hz,
            video_tag,
            ..EndpointConfig::new(addr(0))
        }
    }

    /// Two endpoints publish and subscribe to each other.
    fn two_way() -> Sim {
        let mut sim = Sim::new(vec![config(440.0, 0xA), config(880.0, 0xB)]);
        assert_eq!(sim.negotiate(0).len(), 2, "audio and video published");
        assert_eq!(sim.negotiate(1).len(), 2);
        sim.subscribe_all(0, 1);
        sim.subscribe_all(1, 0);
        sim.negotiate(0);
        sim.negotiate(1);
        sim
    }

    #[test]
    fn two_endpoints_hear_and_see_each_other() {
        let mut sim = two_way();
        let start = sim.now;
        sim.run_for(Duration::from_secs(2));

        for (me, other, hz, tag) in [(0, 1, 880.0, 0xB), (1, 0, 440.0, 0xA)] {
            let endpoint = &sim.endpoints[me];
            let connected = endpoint.connected_at().expect("connected");
            assert!(
                connected - start < Duration::from_millis(200),
                "slow connect"
            );
            assert!(endpoint.is_connected());

            let audio = sim.publication(other, MediaKind::Audio);
            let stats = &endpoint.stats()[&audio];
            assert_eq!(stats.participant_id, ParticipantId(other as u64 + 1));
            assert!(stats.audio_frames_decoded >= 80, "{stats:?}");
            assert_eq!(stats.audio_decode_errors, 0);
            let heard = endpoint.dominant_frequency(audio).expect("enough audio");
            assert!((heard - hz).abs() <= 10.0, "heard {heard} Hz, want {hz}");

            let video = sim.publication(other, MediaKind::Video);
            let stats = &endpoint.stats()[&video];
            assert_eq!(stats.video_tag, Some(tag));
            assert!(stats.video_frames >= 25, "{stats:?}");
            assert!(stats.keyframes >= 1);
            assert_eq!(stats.untagged_frames, 0);
            assert_eq!(stats.tag_changes, 0);
            let first_key = stats.first_keyframe_at.expect("a keyframe");
            assert!(first_key - connected < Duration::from_millis(200));
            assert!(stats.rtp_packets >= stats.frames);

            let sent = endpoint.sent();
            // 50 packets a second from connection, give or take the edges.
            assert!((90..=101).contains(&sent.audio_packets), "{sent:?}");
            assert!((27..=31).contains(&sent.video_frames), "{sent:?}");
            assert_eq!(sent.write_errors, 0);
        }
    }

    #[test]
    fn offers_are_serialised_and_list_the_whole_session() {
        let mut sim = Sim::new(vec![config(440.0, 1), config(660.0, 2)]);
        sim.negotiate(1);
        let others = sim.publications_of(1);

        let endpoint = &mut sim.endpoints[0];
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
        assert!(sdp.contains("a=sendonly"));
        assert!(
            sdp.contains("a=candidate:"),
            "the offer carries the host candidate"
        );

        // A change while the offer is in flight waits for the answer.
        endpoint.subscribe(others[0].clone());
        assert!(endpoint.offer_in_flight());
        assert!(endpoint.has_pending_changes());
        assert!(endpoint.create_offer().is_none());

        let (answer, _) = sim.offer(
            0,
            ClientMessage::Offer {
                sdp,
                publish,
                subscribe,
            },
        );
        let endpoint = &mut sim.endpoints[0];
        endpoint.handle_answer(sim.now, &answer).expect("answer");
        assert!(
            endpoint.handle_answer(sim.now, &answer).is_err(),
            "no offer in flight"
        );

        endpoint.subscribe(others[1].clone());
        let Some(ClientMessage::Offer {
            sdp,
            publish,
            subscribe,
        }) = endpoint.create_offer()
        else {
            panic!("the queued subscriptions are offered");
        };
        assert_eq!(publish.len(), 2, "publications are listed again");
        let ids: Vec<_> = subscribe.iter().map(|s| s.publication_id).collect();
        assert_eq!(ids, vec![others[0].id, others[1].id]);
        assert_eq!(sdp.matches("a=recvonly").count(), 2);
        assert!(endpoint.create_offer().is_none());
    }

    #[test]
    fn candidates_are_browser_style_lines() {
        let endpoint = Endpoint::new(Instant::now(), config(440.0, 1)).expect("endpoint");
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
    fn unsubscribing_stops_the_media() {
        let mut sim = two_way();
        sim.run_for(Duration::from_secs(1));
        let video = sim.publication(0, MediaKind::Video);
        let audio = sim.publication(0, MediaKind::Audio);
        assert!(sim.endpoints[1].stats()[&video].video_frames > 0);

        sim.endpoints[1].unsubscribe(video);
        let Some(ClientMessage::Offer { sdp, subscribe, .. }) = sim.endpoints[1].create_offer()
        else {
            panic!("the stop is offered");
        };
        assert!(subscribe.iter().all(|s| s.publication_id != video));
        assert!(subscribe.iter().any(|s| s.publication_id == audio));
        assert!(sdp.contains("m=video 0 "), "the stopped m-line has port 0");
        let (answer, _) = sim.offer(
            1,
            ClientMessage::Offer {
                sdp,
                publish: Vec::new(),
                subscribe,
            },
        );
        sim.endpoints[1]
            .handle_answer(sim.now, &answer)
            .expect("answer");
        sim.flush();

        sim.run_for(Duration::from_millis(100));
        let frames = sim.endpoints[1].stats()[&video].video_frames;
        let audio_frames = sim.endpoints[1].stats()[&audio].frames;
        sim.run_for(Duration::from_secs(1));
        let stats = &sim.endpoints[1].stats()[&video];
        assert_eq!(stats.video_frames, frames, "no video after unsubscribing");
        assert!(!stats.subscribed);
        assert!(sim.endpoints[1].stats()[&audio].frames > audio_frames + 40);
        assert_eq!(sim.endpoints[1].subscriptions().count(), 1);
    }

    #[test]
    fn keyframe_requests_reach_the_publisher() {
        let mut sim = Sim::new(vec![
            EndpointConfig {
                keyframe_interval: None,
                ..config(440.0, 7)
            },
            EndpointConfig {
                publish_audio: false,
                publish_video: false,
                ..config(0.0, 0)
            },
        ]);
        sim.negotiate(0);
        sim.subscribe_all(1, 0);
        sim.negotiate(1);
        sim.run_for(Duration::from_secs(1));
        let video = sim.publication(0, MediaKind::Video);
        let before = sim.endpoints[1].stats()[&video].keyframes;
        assert!(before >= 1);
        assert!(sim.endpoints[1].request_keyframe(video).expect("request"));
        sim.flush();
        sim.run_for(Duration::from_millis(200));
        assert!(sim.endpoints[0].sent().keyframe_requests_received >= 1);
        assert_eq!(sim.endpoints[1].stats()[&video].keyframes, before + 1);
        assert_eq!(sim.endpoints[1].stats()[&video].keyframe_requests_sent, 1);
    }

    #[test]
    fn a_late_subscriber_asks_for_a_keyframe() {
        let mut sim = Sim::new(vec![
            EndpointConfig {
                keyframe_interval: None,
                ..config(440.0, 9)
            },
            config(550.0, 10),
            EndpointConfig {
                publish_audio: false,
                publish_video: false,
                ..config(0.0, 0)
            },
        ]);
        sim.negotiate(0);
        sim.subscribe_all(1, 0);
        sim.negotiate(1);
        sim.run_for(Duration::from_secs(2));
        assert_eq!(
            sim.endpoints[0].sent().keyframes,
            1,
            "only the first keyframe"
        );

        let start = sim.now;
        sim.subscribe_all(2, 0);
        sim.negotiate(2);
        sim.run_for(Duration::from_secs(1));
        let video = sim.publication(0, MediaKind::Video);
        let stats = &sim.endpoints[2].stats()[&video];
        let first = stats
            .first_keyframe_at
            .expect("the late joiner got a keyframe");
        assert!(
            first - start < Duration::from_millis(400),
            "{:?}",
            first - start
        );
        assert_eq!(stats.video_tag, Some(9));
        assert!(sim.endpoints[0].sent().keyframe_requests_received >= 1);
    }

    #[test]
    fn a_refused_offer_is_rolled_back_and_offered_again() {
        let mut sim = Sim::new(vec![config(440.0, 1)]);
        let endpoint = &mut sim.endpoints[0];
        assert!(endpoint.create_offer().is_some());
        endpoint.offer_refused();
        assert!(!endpoint.offer_in_flight());
        assert!(endpoint.has_pending_changes());

        let Some(ClientMessage::Offer { publish, .. }) = endpoint.create_offer() else {
            panic!("offered again");
        };
        assert_eq!(publish.len(), 2);
        let err = endpoint
            .handle_answer(sim.now, "not sdp")
            .expect_err("garbage answer");
        assert!(matches!(err, EndpointError::BadAnswer(_)), "{err}");
        assert!(sim.negotiate(0).len() == 2, "a third offer succeeds");
        assert!(!sim.endpoints[0].has_pending_changes());
    }

    #[test]
    fn garbage_datagrams_are_ignored() {
        let mut sim = two_way();
        sim.run_for(Duration::from_millis(500));
        let endpoint = &mut sim.endpoints[0];
        let local = endpoint.local_addr();
        endpoint
            .handle_datagram(sim.now, addr(9), local, &[])
            .expect("empty datagram ignored");
        endpoint
            .handle_datagram(sim.now, addr(9), local, &[0xff; 40])
            .expect("unknown datagram ignored");
        endpoint
            .handle_datagram(sim.now, addr(9), local, &[0x80; 60])
            .expect("bogus RTP ignored");
        assert!(endpoint.is_alive());
        sim.run_for(Duration::from_millis(500));
        assert!(sim.endpoints[0].is_connected());
    }

    #[test]
    fn a_partition_is_noticed_without_spinning() {
        let mut sim = two_way();
        sim.run_for(Duration::from_secs(1));
        let sent = sim.endpoints[0].sent().audio_packets;
        sim.blackhole = true;
        sim.network.clear();
        let steps = sim.steps;
        let start = sim.now;
        sim.run_for(Duration::from_secs(60));
        // Media timers (50 + 15 a second per endpoint) dominate; a spinning driver would run
        // orders of magnitude more steps.
        let per_second = (sim.steps - steps) / 60;
        eprintln!(
            "disc at {:?} steps/s {per_second}",
            sim.endpoints[0].ice_disconnected_at().map(|t| t - start)
        );
        assert!(per_second < 400, "{per_second} steps a second");
        let endpoint = &sim.endpoints[0];
        assert!(
            endpoint.ice_disconnected_at().is_some(),
            "{:?}",
            endpoint.ice_state()
        );
        assert!(!endpoint.is_connected());
        assert!(
            endpoint.sent().audio_packets < sent + 60 * 50,
            "nothing is written while disconnected"
        );
    }

    #[test]
    fn close_ends_the_endpoint() {
        let mut sim = two_way();
        sim.run_for(Duration::from_millis(500));
        let publication = sim.publication(1, MediaKind::Audio);
        sim.endpoints[0].unsubscribe(publication);
        sim.endpoints[0].close(sim.now).expect("close");
        assert!(!sim.endpoints[0].has_pending_changes());
        assert!(
            sim.endpoints[0].create_offer().is_none(),
            "no offer after close"
        );
        sim.flush();
        sim.run_for(Duration::from_millis(500));
        assert!(!sim.endpoints[0].is_alive());
        assert!(sim.endpoints[0].poll_timeout() > sim.now);
    }
}
