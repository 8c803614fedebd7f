//! A media engine with two connected participants, in virtual time, for feeding fuzzed media
//! from a peer the engine has authenticated.
//!
//! - The **client** is the fuzzer's: a str0m transport in RTP mode (as a browser is to the
//!   engine: full ICE, DTLS client) that publishes an audio track and a three-layer simulcast
//!   video track and subscribes to the peer's tracks. Its DTLS keying material is captured
//!   ([`crate::srtp`]), so the fuzzer can send any plaintext as SRTP or SRTCP from its
//!   address: the engine authenticates it, decrypts it and handles it as that participant's
//!   media or feedback.
//! - The **peer** is the load tester's sans-IO endpoint ([`endpoint::Endpoint`]):
//!   it publishes audio and video, and subscribes to the client's publications, so what the
//!   client sends goes through publications, keyframe detection, GOP caches, simulcast layer
//!   choice and forwarders to a real receiver, whose NACKs, PLIs and reports come back.
//!
//! The network delivers every datagram at once. Setting a world up (two DTLS handshakes and
//! the negotiations) costs milliseconds, so a fuzz target keeps one world per process and
//! feeds it many inputs, rebuilding it every [`World::MAX_INPUTS`] inputs or when a
//! transport died (see `fuzz_targets/rtp_connected.rs`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use endpoint::{Endpoint, EndpointConfig};
use protocol::{
    ClientMessage, MediaKind, ParticipantId, PublicationId, PublicationInfo, PublishTrack, RoomId,
    SimulcastLayer, SubscribeTrack, TrackSource,
};
use sfu::{Engine, EngineConfig, SfuCommand, SfuEvent};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, Mid, Simulcast};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use crate::srtp::{self, SrtpTx};

/// The server's media address.
pub const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
    3478,
);
/// The fuzzed client's address.
pub const CLIENT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)),
    40_000,
);
/// The load tester's endpoint's address.
pub const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3)),
    40_001,
);
pub const CLIENT_ID: ParticipantId = ParticipantId(1);
pub const PEER_ID: ParticipantId = ParticipantId(2);
const ROOM: &str = "fuzz";

/// Simulcast layers the client declares, lowest first.
const LAYERS: [(&str, u32, u32); 3] = [("q", 320, 180), ("h", 640, 360), ("f", 1280, 720)];

/// The smallest step of virtual time, as in the SFU's own simulation.
const MIN_STEP: Duration = Duration::from_millis(1);

/// What the negotiation settled, read from the SDP, for building packets.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    /// The SSRC the client's offer declared for its audio.
    pub audio_ssrc: Option<u32>,
    /// The SSRCs declared for its video, one per simulcast layer (lowest first), and their
    /// RTX SSRCs.
    pub video_ssrcs: Vec<u32>,
    pub rtx_ssrcs: Vec<u32>,
    /// The SSRC of the client's first receive m-line (the sender of its feedback).
    pub receiver_ssrc: Option<u32>,
    /// Payload types: Opus, VP8, and VP8's RTX.
    pub opus_pt: u8,
    pub vp8_pt: u8,
    pub rtx_pt: u8,
    /// Header extension ids by URI, from the answer.
    pub extmap: Vec<(u8, String)>,
    /// The client's send m-lines.
    pub audio_mid: String,
    pub video_mid: String,
    /// The server's ICE credentials for the client's transport.
    pub server_ufrag: String,
    pub server_pwd: String,
}

impl Negotiated {
    /// The id of the header extension whose URI ends with `suffix`.
    pub fn ext_id(&self, suffix: &str) -> Option<u8> {
        self.extmap
            .iter()
            .find(|(_, uri)| uri.ends_with(suffix))
            .map(|(id, _)| *id)
    }
}

/// The fuzzer's str0m transport.
pub struct Client {
    pub rtc: Rtc,
    timeout: Instant,
    pending: Option<SdpPendingOffer>,
    pub connected: bool,
    outbox: VecDeque<Vec<u8>>,
    /// SSRCs of the RTP the server sends the client, in order of appearance.
    pub server_ssrcs: Vec<u32>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl Client {
    fn drain(&mut self, now: Instant) {
        let mut due = 0;
        while self.rtc.is_alive() {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => self.outbox.push_back(t.contents.to_vec()),
                Ok(Output::Timeout(at)) => {
                    if at <= now && due < 64 {
                        due += 1;
                        if self.rtc.handle_input(Input::Timeout(now)).is_err() {
                            break;
                        }
                        continue;
                    }
                    self.timeout = at.max(now + MIN_STEP);
                    break;
                }
                Ok(Output::Event(Event::Connected)) => self.connected = true,
                Ok(Output::Event(_)) => {}
                Err(_) => break,
            }
        }
    }

    fn receive(&mut self, now: Instant, data: &[u8]) {
        // The server's RTCP (receiver reports, NACKs, TWCC feedback) is not given to the
        // client's str0m: it answers what the fuzzer sent, and str0m's sender side panics on
        // feedback about the transport-wide sequence numbers a fuzzed packet can carry (an
        // overflow in `Twcc::into_iter`, from the rollover quirk known-crashes/README.md
        // describes), which would be the harness's crash, not the engine's. The client needs
        // none of it.
        if is_rtcp(data) {
            return;
        }
        if let Some(ssrc) = rtp_ssrc(data)
            && !self.server_ssrcs.contains(&ssrc)
            && self.server_ssrcs.len() < 64
        {
            self.server_ssrcs.push(ssrc);
        }
        if let Ok(receive) = Receive::new(Protocol::Udp, SERVER, CLIENT, data) {
            let _ = self.rtc.handle_input(Input::Receive(now, receive));
        }
        self.drain(now);
    }

    fn poll_timeout(&self) -> Instant {
        self.timeout
    }

    /// The HMAC-SHA1 implementation of the crypto provider, for STUN integrity.
    pub fn rtc_hmac(&self) -> &'static dyn str0m::crypto::Sha1HmacProvider {
        srtp::capturing_provider().sha1_hmac_provider
    }

    /// Lets str0m send what was just written to it.
    pub fn drain_now(&mut self, now: Instant) {
        if self.rtc.is_alive() {
            let _ = self.rtc.handle_input(Input::Timeout(now));
        }
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.rtc.is_alive() {
            let _ = self.rtc.handle_input(Input::Timeout(now));
        }
        self.drain(now);
    }
}

/// Whether a datagram is SRTCP (RFC 7983 and RFC 5761: RTP/RTCP by the first byte, RTCP by
/// the packet type).
fn is_rtcp(data: &[u8]) -> bool {
    matches!(data, [first, second, ..] if (128..=191).contains(first) && (192..=223).contains(second))
}

/// The SSRC of an SRTP packet's clear header; `None` for RTCP, STUN and DTLS.
fn rtp_ssrc(data: &[u8]) -> Option<u32> {
    let first = *data.first()?;
    let second = *data.get(1)?;
    if !(128..=191).contains(&first) || (192..=223).contains(&second) || data.len() < 12 {
        return None;
    }
    Some(u32::from_be_bytes([data[8], data[9], data[10], data[11]]))
}

/// The engine and its two participants. See the module documentation.
pub struct World {
    pub now: Instant,
    pub engine: Engine,
    pub client: Client,
    pub peer: Endpoint,
    /// The client's SRTP sender, once its handshake completed.
    pub srtp: Option<SrtpTx>,
    pub negotiated: Negotiated,
    /// The client's publications, audio then video.
    pub client_publications: Vec<PublicationId>,
    /// Inputs fed since the world was built.
    pub inputs: u64,
    /// The client's offer.
    pub offer_sdp: String,
    /// A participant whose transport failed on its input (`SfuEvent::TransportFailed`).
    pub transport_failed: Option<ParticipantId>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

/// Every line of `sdp` starting with `prefix`, without it.
fn lines_with<'a>(sdp: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    sdp.lines()
        .filter_map(move |l| l.trim_end().strip_prefix(prefix))
}

fn parse_negotiated(offer: &str, answer: &str, audio_mid: Mid, video_mid: Mid) -> Negotiated {
    let mut n = Negotiated {
        audio_mid: audio_mid.to_string(),
        video_mid: video_mid.to_string(),
        ..Default::default()
    };
    // The offer's m-sections: their mid, their SSRCs in order, and their RTX pairs.
    for section in offer.split("\nm=").skip(1) {
        let mid = lines_with(section, "a=mid:").next().unwrap_or_default();
        let mut ssrcs: Vec<u32> = Vec::new();
        for line in lines_with(section, "a=ssrc:") {
            if let Some(ssrc) = line.split(' ').next().and_then(|s| s.parse().ok())
                && !ssrcs.contains(&ssrc)
            {
                ssrcs.push(ssrc);
            }
        }
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for line in lines_with(section, "a=ssrc-group:FID ") {
            let mut parts = line.split(' ').filter_map(|s| s.parse().ok());
            if let (Some(primary), Some(rtx)) = (parts.next(), parts.next()) {
                pairs.push((primary, rtx));
            }
        }
        if mid == n.audio_mid {
            n.audio_ssrc = ssrcs.first().copied();
        } else if mid == n.video_mid {
            n.video_ssrcs = pairs.iter().map(|p| p.0).collect();
            n.rtx_ssrcs = pairs.iter().map(|p| p.1).collect();
        } else if n.receiver_ssrc.is_none() {
            n.receiver_ssrc = ssrcs.first().copied();
        }
    }
    for line in lines_with(answer, "a=extmap:") {
        let mut parts = line.split_whitespace();
        let id = parts
            .next()
            .and_then(|id| id.split('/').next()?.parse().ok());
        if let (Some(id), Some(uri)) = (id, parts.next())
            && !n.extmap.iter().any(|(i, _)| *i == id)
        {
            n.extmap.push((id, uri.to_owned()));
        }
    }
    let mut vp8 = None;
    for line in lines_with(answer, "a=rtpmap:") {
        let mut parts = line.split_whitespace();
        let pt: Option<u8> = parts.next().and_then(|p| p.parse().ok());
        let codec = parts.next().unwrap_or_default().to_ascii_lowercase();
        match (pt, codec.split('/').next()) {
            (Some(pt), Some("opus")) if n.opus_pt == 0 => n.opus_pt = pt,
            (Some(pt), Some("vp8")) if vp8.is_none() => vp8 = Some(pt),
            _ => {}
        }
    }
    n.vp8_pt = vp8.unwrap_or(96);
    let apt = format!("apt={}", n.vp8_pt);
    for line in lines_with(answer, "a=fmtp:") {
        let mut parts = line.splitn(2, ' ');
        if let (Some(pt), Some(params)) = (parts.next(), parts.next())
            && params.split(';').any(|p| p.trim() == apt)
            && let Ok(pt) = pt.parse()
        {
            n.rtx_pt = pt;
            break;
        }
    }
    n.server_ufrag = lines_with(answer, "a=ice-ufrag:")
        .next()
        .unwrap_or_default()
        .to_owned();
    n.server_pwd = lines_with(answer, "a=ice-pwd:")
        .next()
        .unwrap_or_default()
        .to_owned();
    n
}

impl World {
    /// Inputs after which a target builds a fresh world, so that state does not pile up
    /// without bound and a crash depends on a bounded history.
    pub const MAX_INPUTS: u64 = 2_000;

    /// Builds the engine, connects both participants and waits until media flows both ways.
    /// `None` if that did not happen within 10 s of virtual time (a harness bug).
    pub fn new() -> Option<Self> {
        crate::let_contained_panics_unwind();
        let now = Instant::now();
        let mut engine = Engine::new(EngineConfig::new(SERVER)).ok()?;

        // The peer joins first and publishes.
        let mut config = EndpointConfig::new(PEER);
        config.analyze_audio = false;
        config.video_frame_bytes = 600;
        config.keyframe_interval = Some(Duration::from_secs(2));
        let mut peer = Endpoint::new(now, config).ok()?;
        for participant in [PEER_ID, CLIENT_ID] {
            engine.handle_command(
                now,
                SfuCommand::AddParticipant {
                    participant,
                    room: RoomId(ROOM.into()),
                },
            );
        }
        let mut peer_publications = Vec::new();
        offer_peer(&mut engine, &mut peer, now);
        settle_events(&mut engine, &mut peer, now, &mut peer_publications, None);

        // The client: str0m in RTP mode with the capturing crypto provider.
        let _ = srtp::take_captured();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .set_crypto_provider(srtp::capturing_provider())
            .build(now);
        let candidate = Candidate::host(CLIENT, "udp").ok()?;
        let candidate = rtc.add_local_candidate(candidate)?.to_sdp_string();
        let mut api = rtc.sdp_api();
        let stream = Some("fuzz".to_owned());
        let audio_mid = api.add_media(
            str0m::media::MediaKind::Audio,
            Direction::SendOnly,
            stream.clone(),
            None,
            None,
        );
        let mut simulcast = Simulcast::new();
        for (rid, _, _) in LAYERS {
            simulcast.add_send_layer(str0m::media::SimulcastLayer::new(rid));
        }
        let video_mid = api.add_media(
            str0m::media::MediaKind::Video,
            Direction::SendOnly,
            stream,
            None,
            Some(simulcast),
        );
        let mut recv_mids = Vec::new();
        for info in &peer_publications {
            let kind = match info.kind {
                MediaKind::Audio => str0m::media::MediaKind::Audio,
                MediaKind::Video => str0m::media::MediaKind::Video,
            };
            recv_mids.push((
                api.add_media(kind, Direction::RecvOnly, None, None, None),
                info.id,
            ));
        }
        let (offer, pending) = api.apply()?;
        let offer_sdp = offer.to_sdp_string();
        let mut client = Client {
            rtc,
            timeout: now,
            pending: Some(pending),
            connected: false,
            outbox: VecDeque::new(),
            server_ssrcs: Vec::new(),
        };
        let layers = LAYERS
            .iter()
            .map(|(rid, width, height)| SimulcastLayer {
                rid: (*rid).to_owned(),
                width: *width,
                height: *height,
            })
            .collect();
        engine.handle_command(
            now,
            SfuCommand::Offer {
                participant: CLIENT_ID,
                sdp: offer_sdp.clone(),
                publish: vec![
                    PublishTrack {
                        mid: audio_mid.to_string(),
                        source: TrackSource::Microphone,
                        layers: Vec::new(),
                    },
                    PublishTrack {
                        mid: video_mid.to_string(),
                        source: TrackSource::Camera,
                        layers,
                    },
                ],
                subscribe: recv_mids
                    .iter()
                    .map(|(mid, id)| SubscribeTrack {
                        mid: mid.to_string(),
                        publication_id: *id,
                    })
                    .collect(),
            },
        );
        engine.handle_command(
            now,
            SfuCommand::RemoteCandidate {
                participant: CLIENT_ID,
                candidate,
            },
        );
        let mut client_publications = Vec::new();
        let answer = settle_events(
            &mut engine,
            &mut peer,
            now,
            &mut client_publications,
            Some(&mut client),
        )?;
        let negotiated = parse_negotiated(&offer_sdp, &answer, audio_mid, video_mid);

        let mut world = World {
            now,
            engine,
            client,
            peer,
            srtp: None,
            negotiated,
            client_publications: client_publications.iter().map(|p| p.id).collect(),
            inputs: 0,
            offer_sdp,
            transport_failed: None,
        };
        let start = world.now;
        let mut keyed = None;
        while world.now.duration_since(start) < Duration::from_secs(10) {
            world.run_for(Duration::from_millis(20));
            if keyed.is_none() {
                keyed = srtp::take_captured();
            }
            let subscribed = world
                .peer
                .stats()
                .values()
                .filter(|s| s.mid.is_some())
                .count();
            if keyed.is_some()
                && world.client.connected
                && world.peer.is_connected()
                && subscribed >= 2
                && !world.peer.offer_in_flight()
            {
                break;
            }
        }
        world.srtp = Some(SrtpTx::new(srtp::capturing_provider(), &keyed?)?);
        // Let the subscriptions start and the first reports go round.
        world.run_for(Duration::from_millis(300));
        (world.client.connected && world.peer.is_connected()).then_some(world)
    }

    /// Whether both transports are still up (a fuzzed input may legitimately end one, for
    /// example with an RTCP BYE or a DTLS alert).
    pub fn alive(&self) -> bool {
        self.transport_failed.is_none()
            && self.client.rtc.is_alive()
            && self.peer.is_alive()
            && self.peer.is_connected()
    }

    /// After the client's transport failed on its input: the engine forgot it (its
    /// datagrams are from an unknown source now) and the peer's transport is untouched.
    /// Panics (a crash) otherwise.
    pub fn check_contained(&mut self) {
        assert_eq!(
            self.transport_failed,
            Some(CLIENT_ID),
            "only the sender fails"
        );
        assert_eq!(self.engine.stats().transport_failures, 1);
        let unknown = self.engine.stats().dropped_unknown_source;
        self.send_raw(&[0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(self.engine.stats().dropped_unknown_source, unknown + 1);
        self.run_for(Duration::from_millis(200));
        assert!(
            self.peer.is_alive() && self.peer.is_connected(),
            "the other participant keeps its transport"
        );
    }

    /// Sends a datagram from the client's address, unprotected.
    pub fn send_raw(&mut self, data: &[u8]) {
        self.engine.handle_datagram(self.now, CLIENT, SERVER, data);
        self.pump();
    }

    /// Sends plaintext RTP as the client, SRTP-protected.
    pub fn send_rtp(&mut self, plain: &[u8]) {
        if let Some(packet) = self.srtp.as_mut().and_then(|s| s.protect_rtp(plain)) {
            self.send_raw(&packet);
        }
    }

    /// Sends plaintext (compound) RTCP as the client, SRTCP-protected.
    pub fn send_rtcp(&mut self, plain: &[u8]) {
        if let Some(packet) = self.srtp.as_mut().and_then(|s| s.protect_rtcp(plain)) {
            self.send_raw(&packet);
        }
    }

    /// A command from "signaling"; its events are handled as signaling would.
    pub fn command(&mut self, command: SfuCommand) {
        self.engine.handle_command(self.now, command);
        self.pump();
    }

    /// Moves every queued datagram and event to its destination until nothing moves.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(t) = self.engine.poll_transmit() {
                moved = true;
                if t.destination == CLIENT {
                    self.client.receive(self.now, &t.contents);
                } else if t.destination == PEER {
                    let _ = self
                        .peer
                        .handle_datagram(self.now, SERVER, PEER, &t.contents);
                }
            }
            while let Some(data) = self.client.outbox.pop_front() {
                moved = true;
                self.engine.handle_datagram(self.now, CLIENT, SERVER, &data);
            }
            while let Some(d) = self.peer.poll_transmit() {
                moved = true;
                self.engine
                    .handle_datagram(self.now, d.source, d.destination, &d.contents);
            }
            if !self.peer.offer_in_flight() && self.peer.has_pending_changes() {
                moved |= offer_peer(&mut self.engine, &mut self.peer, self.now);
            }
            while let Some(event) = self.engine.poll_event() {
                moved = true;
                self.handle_event(event);
            }
            while self.engine.poll_recorded().is_some() {
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    fn handle_event(&mut self, event: SfuEvent) {
        match event {
            SfuEvent::Answer { participant, sdp } if participant == PEER_ID => {
                let _ = self.peer.handle_answer(self.now, &sdp);
            }
            SfuEvent::Answer { participant, sdp } if participant == CLIENT_ID => {
                if let (Some(pending), Ok(answer)) =
                    (self.client.pending.take(), SdpAnswer::from_sdp_string(&sdp))
                {
                    let _ = self.client.rtc.sdp_api().accept_answer(pending, answer);
                    self.client.drain(self.now);
                }
            }
            SfuEvent::Refused { participant, .. } if participant == PEER_ID => {
                self.peer.offer_refused();
            }
            SfuEvent::PublicationAdded {
                participant,
                publication,
            } if participant == CLIENT_ID => {
                self.peer.subscribe(publication.info(participant));
            }
            SfuEvent::SimulcastLayers {
                participant,
                active,
                ..
            } if participant == PEER_ID => self.peer.set_active_layers(&active),
            SfuEvent::TransportFailed { participant, .. } => {
                self.transport_failed = Some(participant);
            }
            _ => {}
        }
    }

    /// Runs the world for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            let next = self
                .peer
                .poll_timeout()
                .min(self.client.poll_timeout())
                .min(end);
            let next = self.engine.poll_timeout().map_or(next, |at| at.min(next));
            self.now = next.max(self.now + MIN_STEP).min(end);
            if self.engine.poll_timeout().is_some_and(|at| at <= self.now) {
                self.engine.handle_timeout(self.now);
            }
            if self.peer.poll_timeout() <= self.now {
                let _ = self.peer.handle_timeout(self.now);
            }
            if self.client.poll_timeout() <= self.now {
                self.client.handle_timeout(self.now);
            }
            self.pump();
        }
    }
}

/// Sends the peer's next offer (and its candidates) to the engine; whether there was one.
fn offer_peer(engine: &mut Engine, peer: &mut Endpoint, now: Instant) -> bool {
    let Some(ClientMessage::Offer {
        sdp,
        publish,
        subscribe,
    }) = peer.create_offer()
    else {
        return false;
    };
    engine.handle_command(
        now,
        SfuCommand::Offer {
            participant: PEER_ID,
            sdp,
            publish,
            subscribe,
        },
    );
    for message in peer.local_candidates() {
        if let ClientMessage::Candidate { candidate } = message {
            engine.handle_command(
                now,
                SfuCommand::RemoteCandidate {
                    participant: PEER_ID,
                    candidate,
                },
            );
        }
    }
    true
}

/// Handles the events of an offer during set-up: answers go to their participant and
/// publications are collected. Returns the client's answer, when `client` is given.
fn settle_events(
    engine: &mut Engine,
    peer: &mut Endpoint,
    now: Instant,
    publications: &mut Vec<PublicationInfo>,
    mut client: Option<&mut Client>,
) -> Option<String> {
    let mut client_answer = None;
    while let Some(event) = engine.poll_event() {
        match event {
            SfuEvent::Answer { participant, sdp } if participant == PEER_ID => {
                peer.handle_answer(now, &sdp).ok()?;
            }
            SfuEvent::Answer { participant, sdp } if participant == CLIENT_ID => {
                let client = client.as_deref_mut()?;
                let answer = SdpAnswer::from_sdp_string(&sdp).ok()?;
                let pending = client.pending.take()?;
                client.rtc.sdp_api().accept_answer(pending, answer).ok()?;
                client.drain(now);
                client_answer = Some(sdp);
            }
            SfuEvent::PublicationAdded {
                participant,
                publication,
            } => {
                let info = publication.info(participant);
                if participant == CLIENT_ID {
                    peer.subscribe(info.clone());
                }
                publications.push(info);
            }
            _ => {}
        }
    }
    if client.is_some() {
        client_answer
    } else {
        Some(String::new())
    }
}
