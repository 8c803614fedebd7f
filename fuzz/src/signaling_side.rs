//! Harness for what reaches the engine before any media: SDP offers, trickled candidates and
//! STUN from addresses no transport knows yet (`sdp_offer`, `sdp_candidate`, `stun`).
//!
//! One engine per process, with a publisher already in the room (so that an offer's
//! `subscribe` entries can name real publications). Each input gets a participant of its own,
//! removed at the end; the engine must then be back to the publisher alone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use endpoint::{Endpoint, EndpointConfig};
use protocol::{
    ClientMessage, MediaKind, ParticipantId, PublicationId, PublishTrack, RoomId, SimulcastLayer,
    SubscribeTrack, TrackSource,
};
use sfu::{Engine, EngineConfig, SfuCommand, SfuEvent};

use crate::records::{Reader, Records};
use crate::stun::{
    ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USE_CANDIDATE, ATTR_USERNAME, BINDING_REQUEST, Stun,
};
use crate::world::SERVER;

const ROOM: &str = "fuzz";
const PUBLISHER: ParticipantId = ParticipantId(1);

/// A real offer from the load tester's endpoint: audio and video, a host candidate.
pub fn real_offer(addr: SocketAddr, simulcast: bool) -> (String, Vec<PublishTrack>) {
    let mut config = EndpointConfig::new(addr);
    if simulcast {
        config.simulcast_frame_bytes = vec![300, 700, 1_500];
    }
    let mut endpoint = Endpoint::new(Instant::now(), config).expect("an endpoint");
    match endpoint.create_offer() {
        Some(ClientMessage::Offer { sdp, publish, .. }) => (sdp, publish),
        _ => panic!("the endpoint offers"),
    }
}

/// The engine of one fuzzing process; see the module documentation.
pub struct Bench {
    pub engine: Engine,
    pub now: Instant,
    next_id: u64,
    publications: Vec<(PublicationId, MediaKind)>,
    /// An offer the engine answers, with its publish list, for targets that need a
    /// negotiated participant.
    pub valid_offer: (String, Vec<PublishTrack>),
}

impl std::fmt::Debug for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bench")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

/// How an offer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered(String),
    Refused,
}

impl Bench {
    pub fn new() -> Self {
        let now = Instant::now();
        crate::let_contained_panics_unwind();
        let mut engine = Engine::new(EngineConfig::new(SERVER)).expect("an engine");
        engine.handle_command(
            now,
            SfuCommand::AddParticipant {
                participant: PUBLISHER,
                room: RoomId(ROOM.into()),
            },
        );
        let (sdp, publish) = real_offer("127.0.0.9:9000".parse().expect("addr"), true);
        engine.handle_command(
            now,
            SfuCommand::Offer {
                participant: PUBLISHER,
                sdp,
                publish,
                subscribe: Vec::new(),
            },
        );
        let mut publications = Vec::new();
        while let Some(event) = engine.poll_event() {
            if let SfuEvent::PublicationAdded { publication, .. } = event {
                publications.push((publication.id, publication.kind));
            }
        }
        Self {
            engine,
            now,
            next_id: 100,
            publications,
            valid_offer: real_offer("127.0.0.7:7000".parse().expect("addr"), false),
        }
    }

    /// Adds a participant to the room; returns its id.
    pub fn join(&mut self) -> ParticipantId {
        let participant = ParticipantId(self.next_id);
        self.next_id += 1;
        self.engine.handle_command(
            self.now,
            SfuCommand::AddParticipant {
                participant,
                room: RoomId(ROOM.into()),
            },
        );
        participant
    }

    /// Offers `sdp` for `participant` and checks that the engine answers it or refuses it,
    /// as it must every offer, once (refusals of single tracks may follow an answer).
    pub fn offer(
        &mut self,
        participant: ParticipantId,
        sdp: String,
        publish: Vec<PublishTrack>,
        subscribe: Vec<SubscribeTrack>,
    ) -> Outcome {
        self.engine.handle_command(
            self.now,
            SfuCommand::Offer {
                participant,
                sdp,
                publish,
                subscribe,
            },
        );
        let mut outcome = None;
        while let Some(event) = self.engine.poll_event() {
            match event {
                SfuEvent::Answer {
                    participant: p,
                    sdp,
                } if p == participant => {
                    assert!(outcome.is_none(), "two outcomes for one offer");
                    outcome = Some(Outcome::Answered(sdp));
                }
                SfuEvent::Refused { participant: p, .. } if p == participant => match outcome {
                    None => outcome = Some(Outcome::Refused),
                    // A track of an answered offer that cannot be carried (a codec the room
                    // cannot forward, say) is refused after the answer: the offer itself was
                    // taken.
                    Some(Outcome::Answered(_)) => {}
                    Some(Outcome::Refused) => panic!("two refusals of one offer"),
                },
                _ => {}
            }
        }
        while self.engine.poll_transmit().is_some() {}
        outcome.expect("every offer is answered or refused")
    }

    /// `publish` and `subscribe` lists for an offer, as a client would send them: every mid
    /// of the SDP published (video with the declared simulcast layers when it has rids) and
    /// subscribed to the publisher's tracks in turn.
    pub fn lists_for(&self, sdp: &str) -> (Vec<PublishTrack>, Vec<SubscribeTrack>) {
        let mut publish = Vec::new();
        let mut subscribe = Vec::new();
        for (i, section) in sdp.split("m=").skip(1).enumerate() {
            let Some(mid) = section
                .lines()
                .find_map(|l| l.trim().strip_prefix("a=mid:"))
            else {
                continue;
            };
            let video = section.starts_with("video");
            let rids: Vec<&str> = section
                .lines()
                .filter_map(|l| l.trim().strip_prefix("a=rid:"))
                .filter_map(|r| r.split_whitespace().next())
                .collect();
            if section.contains("a=sendonly") || section.contains("a=sendrecv") {
                publish.push(PublishTrack {
                    mid: mid.to_owned(),
                    source: if video {
                        TrackSource::Camera
                    } else {
                        TrackSource::Microphone
                    },
                    layers: rids
                        .iter()
                        .enumerate()
                        .map(|(k, rid)| SimulcastLayer {
                            rid: (*rid).to_owned(),
                            width: 320 << k,
                            height: 180 << k,
                        })
                        .collect(),
                });
            }
            if !self.publications.is_empty() {
                let (id, _) = self.publications[i % self.publications.len()];
                subscribe.push(SubscribeTrack {
                    mid: mid.to_owned(),
                    publication_id: id,
                });
            }
        }
        (publish, subscribe)
    }

    /// Removes `participant` and checks that nothing of it is left.
    pub fn leave(&mut self, participant: ParticipantId) {
        self.engine
            .handle_command(self.now, SfuCommand::RemoveParticipant { participant });
        while self.engine.poll_event().is_some() {}
        while self.engine.poll_transmit().is_some() {}
        while self.engine.poll_recorded().is_some() {}
        let (rooms, participants, publications, subscriptions) = self.engine.census();
        assert_eq!(
            (rooms, participants, subscriptions),
            (1, 1, 0),
            "a participant left something behind"
        );
        assert_eq!(publications, self.publications.len());
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.engine.poll_timeout().is_some_and(|at| at <= self.now) {
            self.engine.handle_timeout(self.now);
        }
        while self.engine.poll_event().is_some() {}
        while self.engine.poll_transmit().is_some() {}
    }
}

impl Default for Bench {
    fn default() -> Self {
        Self::new()
    }
}

/// `sdp_offer`: the input is an SDP offer (bytes read as UTF-8, lossily). It is offered by a
/// new participant; when answered, offered again (a renegotiation with the same m-lines).
pub fn sdp_offer(bench: &mut Bench, data: &[u8]) {
    let sdp = String::from_utf8_lossy(data).into_owned();
    let participant = bench.join();
    let (publish, subscribe) = bench.lists_for(&sdp);
    if let Outcome::Answered(_) =
        bench.offer(participant, sdp.clone(), publish.clone(), subscribe.clone())
    {
        bench.offer(participant, sdp, publish, subscribe);
    }
    bench.leave(participant);
}

/// `sdp_candidate`: a participant with a real offer answered trickles each line of the input
/// as a candidate (at most 32).
pub fn sdp_candidate(bench: &mut Bench, data: &[u8]) {
    let participant = bench.join();
    let (sdp, publish) = bench.valid_offer.clone();
    let outcome = bench.offer(participant, sdp, publish, Vec::new());
    assert!(
        matches!(outcome, Outcome::Answered(_)),
        "the real offer is answered"
    );
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n').take(32) {
        bench.engine.handle_command(
            bench.now,
            SfuCommand::RemoteCandidate {
                participant,
                candidate: line.to_owned(),
            },
        );
        while bench.engine.poll_event().is_some() {}
    }
    bench.advance(Duration::from_millis(50));
    bench.leave(participant);
}

/// Record kinds of the `stun` target.
pub const STUN_RAW: u8 = 0;
pub const STUN_BUILT: u8 = 1;
pub const STUN_ADVANCE: u8 = 2;

/// The addresses a `stun` input sends from: the participant's own (the one its offer named)
/// and others no transport knows.
pub fn stun_source(selector: u8) -> SocketAddr {
    let host = 10 + (selector % 8);
    SocketAddr::from(([127, 0, 0, host], 50_000 + u16::from(selector % 3)))
}

/// `stun`: datagrams from addresses no transport knows. A participant with a real offer
/// answered exists; each record is one of
///
/// - [`STUN_RAW`]: `source: u8`, then the datagram as it is;
/// - [`STUN_BUILT`]: `source: u8`, `flags: u8`, `type: u16`, `transaction: [u8; 12]`, then
///   attributes as they are. Flags: bit 0 puts a USERNAME `server-ufrag:client-ufrag` first
///   (bit 4 swaps its halves), bit 3 adds PRIORITY, ICE-CONTROLLING and USE-CANDIDATE, bit 1
///   appends a MESSAGE-INTEGRITY made with the transport's ICE password (bit 5: a wrong
///   password), bit 2 a FINGERPRINT;
/// - [`STUN_ADVANCE`]: `ms: u8`, ten times that of virtual time passes.
///
/// Checked: an address is bound to the transport only by a request with a MESSAGE-INTEGRITY
/// made with its password (probed by sending an RTP header from it and seeing whether the
/// engine counts it as from an unknown source).
pub fn stun(bench: &mut Bench, data: &[u8]) {
    let participant = bench.join();
    let (sdp, publish) = bench.valid_offer.clone();
    let Outcome::Answered(answer) = bench.offer(participant, sdp.clone(), publish, Vec::new())
    else {
        panic!("the real offer is answered");
    };
    let attr = |sdp: &str, name: &str| {
        sdp.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::to_owned))
            .unwrap_or_default()
    };
    let server_ufrag = attr(&answer, "a=ice-ufrag:");
    let server_pwd = attr(&answer, "a=ice-pwd:");
    let client_ufrag = attr(&sdp, "a=ice-ufrag:");
    let hmac = crate::srtp::capturing_provider().sha1_hmac_provider;
    // Addresses a correctly signed request may have bound: not probed.
    let mut maybe_bound: Vec<SocketAddr> = Vec::new();
    for (kind, body) in Records::new(data).take(64) {
        match kind % 3 {
            STUN_RAW => {
                let mut r = Reader::new(body);
                let source = stun_source(r.u8());
                bench
                    .engine
                    .handle_datagram(bench.now, source, SERVER, r.rest());
            }
            STUN_BUILT => {
                let mut r = Reader::new(body);
                let source = stun_source(r.u8());
                let flags = r.u8();
                let msg_type = r.u16();
                let mut transaction = [0u8; 12];
                transaction.copy_from_slice(&{
                    let mut t = r.bytes(12).to_vec();
                    t.resize(12, 0);
                    t
                });
                let mut stun = Stun::new(msg_type, transaction);
                if flags & 0x01 != 0 {
                    let username = if flags & 0x10 != 0 {
                        format!("{client_ufrag}:{server_ufrag}")
                    } else {
                        format!("{server_ufrag}:{client_ufrag}")
                    };
                    stun.attr(ATTR_USERNAME, username.as_bytes());
                }
                if flags & 0x08 != 0 {
                    stun.attr(ATTR_PRIORITY, &0x6e00_1eff_u32.to_be_bytes());
                    stun.attr(ATTR_ICE_CONTROLLING, &[1, 2, 3, 4, 5, 6, 7, 8]);
                    stun.attr(ATTR_USE_CANDIDATE, &[]);
                }
                stun.raw(r.rest());
                let key = if flags & 0x20 != 0 {
                    "not the password"
                } else {
                    server_pwd.as_str()
                };
                let signed = flags & 0x02 != 0;
                let message =
                    stun.finish(signed.then_some(key.as_bytes()), flags & 0x04 != 0, hmac);
                let probe = !maybe_bound.contains(&source);
                if signed && flags & 0x20 == 0 {
                    maybe_bound.push(source);
                }
                bench
                    .engine
                    .handle_datagram(bench.now, source, SERVER, &message);
                if probe && !maybe_bound.contains(&source) {
                    // Not signed with the password: the address must still be unknown. The
                    // probe is an RTP header, which only a bound address gets past routing.
                    let unknown = bench.engine.stats().dropped_unknown_source;
                    let probe = [0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
                    bench
                        .engine
                        .handle_datagram(bench.now, source, SERVER, &probe);
                    assert_eq!(
                        bench.engine.stats().dropped_unknown_source,
                        unknown + 1,
                        "a STUN message without the transport's MESSAGE-INTEGRITY bound {source}"
                    );
                }
            }
            _ => {
                let ms = body.first().copied().unwrap_or(1);
                bench.advance(Duration::from_millis(10 * u64::from(ms)));
            }
        }
        while bench.engine.poll_event().is_some() {}
        while bench.engine.poll_transmit().is_some() {}
    }
    bench.leave(participant);
}

/// Seeds for `stun`: a correct ICE check, the same unsigned, signed with the wrong password,
/// without FINGERPRINT, from several addresses, and the raw datagram forms.
pub fn stun_seeds() -> Vec<(String, Vec<u8>)> {
    use crate::records::encode;
    let built = |source: u8, flags: u8, tail: &[u8]| {
        let mut body = vec![source, flags];
        body.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        body.extend_from_slice(&[0x5a; 12]);
        body.extend_from_slice(tail);
        body
    };
    let mut seeds = Vec::new();
    let mut input = Vec::new();
    encode(&mut input, STUN_BUILT, &built(0, 0x0f, &[]));
    encode(
        &mut input,
        STUN_RAW,
        &[0, 0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
    );
    encode(&mut input, STUN_ADVANCE, &[10]);
    seeds.push(("ice_check".to_owned(), input));
    let mut input = Vec::new();
    for (source, flags) in [(1, 0x0d), (2, 0x2f), (3, 0x0b), (4, 0x1f), (5, 0x07)] {
        encode(&mut input, STUN_BUILT, &built(source, flags, &[]));
    }
    seeds.push(("bad_checks".to_owned(), input));
    let mut input = Vec::new();
    for source in 0..6 {
        encode(&mut input, STUN_BUILT, &built(source, 0x0f, &[]));
    }
    encode(&mut input, STUN_ADVANCE, &[255]);
    encode(
        &mut input,
        STUN_BUILT,
        &built(6, 0x0f, &[0x80, 0x22, 0, 4, b'f', b'u', b'z', b'z']),
    );
    seeds.push(("many_addresses".to_owned(), input));
    let mut input = Vec::new();
    // A binding response and an indication.
    let mut body = built(0, 0x07, &[]);
    body[2..4].copy_from_slice(&0x0101u16.to_be_bytes());
    encode(&mut input, STUN_BUILT, &body);
    let mut body = built(0, 0x05, &[]);
    body[2..4].copy_from_slice(&0x0011u16.to_be_bytes());
    encode(&mut input, STUN_BUILT, &body);
    encode(
        &mut input,
        STUN_RAW,
        &[1, 0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    seeds.push(("responses_and_raw".to_owned(), input));
    seeds
}

/// Seeds for `sdp_offer`: real offers (plain, simulcast, subscribing), and one browser-like
/// offer with more attributes than str0m writes.
pub fn offer_seeds() -> Vec<(String, Vec<u8>)> {
    let (plain, _) = real_offer("127.0.0.7:7000".parse().expect("addr"), false);
    let (simulcast, _) = real_offer("127.0.0.8:8000".parse().expect("addr"), true);
    let mut config = EndpointConfig::new("127.0.0.6:6000".parse().expect("addr"));
    config.publish_audio = false;
    config.publish_video = false;
    let mut viewer = Endpoint::new(Instant::now(), config).expect("an endpoint");
    for (id, kind) in [(1, MediaKind::Audio), (2, MediaKind::Video)] {
        viewer.subscribe(protocol::PublicationInfo {
            id: PublicationId(id),
            participant_id: PUBLISHER,
            kind,
            source: if kind == MediaKind::Audio {
                TrackSource::Microphone
            } else {
                TrackSource::Camera
            },
            muted: false,
            codec: None,
            layers: Vec::new(),
        });
    }
    let recv = match viewer.create_offer() {
        Some(ClientMessage::Offer { sdp, .. }) => sdp,
        _ => String::new(),
    };
    vec![
        ("str0m_offer".to_owned(), plain.into_bytes()),
        ("str0m_simulcast_offer".to_owned(), simulcast.into_bytes()),
        ("str0m_recvonly_offer".to_owned(), recv.into_bytes()),
        (
            "browser_offer".to_owned(),
            BROWSER_OFFER.as_bytes().to_vec(),
        ),
    ]
}

/// Seeds for `sdp_candidate`: the forms a browser trickles.
pub fn candidate_seeds() -> Vec<(String, Vec<u8>)> {
    let lines: &[&str] = &[
        "candidate:1 1 udp 2113937151 127.0.0.7 7000 typ host",
        "a=candidate:2 1 UDP 2113937151 192.168.1.20 51000 typ host generation 0 ufrag abcd network-cost 999",
        "candidate:3 1 udp 1677729535 203.0.113.7 62000 typ srflx raddr 192.168.1.20 rport 51000",
        "candidate:4 1 tcp 1518280447 127.0.0.7 9 typ host tcptype active",
        "candidate:5 1 udp 2122262783 2001:db8::7 51001 typ host",
        "candidate:6 1 udp 2113937151 4e0d2c0c-1c6f-4a8e-9a53-2a3e2b1c0d9e.local 51002 typ host",
        "candidate:7 1 udp 41885439 198.51.100.9 3478 typ relay raddr 203.0.113.7 rport 62000",
        "",
    ];
    vec![
        ("all_forms".to_owned(), lines.join("\n").into_bytes()),
        ("host".to_owned(), lines[0].as_bytes().to_vec()),
    ]
}

/// An offer as Chromium writes it (one audio, one video m-line, trimmed of most codecs).
pub const BROWSER_OFFER: &str = "v=0\r
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE 0 1\r
a=extmap-allow-mixed\r
a=msid-semantic: WMS stream\r
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=candidate:1 1 udp 2113937151 127.0.0.5 5000 typ host generation 0 network-cost 999\r
a=ice-ufrag:aB3d\r
a=ice-pwd:0123456789abcdefghijklmn\r
a=ice-options:trickle\r
a=fingerprint:sha-256 3C:4A:C1:2F:15:9B:57:11:7E:3E:FC:6C:C2:19:FE:EB:B3:0A:CF:F6:BE:42:64:AD:8C:F1:40:62:1C:06:A5:E6\r
a=setup:actpass\r
a=mid:0\r
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r
a=sendrecv\r
a=msid:stream audio0\r
a=rtcp-mux\r
a=rtpmap:111 opus/48000/2\r
a=rtcp-fb:111 transport-cc\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=rtpmap:63 red/48000/2\r
a=fmtp:63 111/111\r
a=rtpmap:9 G722/8000\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:13 CN/8000\r
a=rtpmap:110 telephone-event/48000\r
a=rtpmap:126 telephone-event/8000\r
a=ssrc:1001 cname:abc\r
a=ssrc:1001 msid:stream audio0\r
m=video 9 UDP/TLS/RTP/SAVPF 96 97 45 46 98 99\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=ice-ufrag:aB3d\r
a=ice-pwd:0123456789abcdefghijklmn\r
a=ice-options:trickle\r
a=fingerprint:sha-256 3C:4A:C1:2F:15:9B:57:11:7E:3E:FC:6C:C2:19:FE:EB:B3:0A:CF:F6:BE:42:64:AD:8C:F1:40:62:1C:06:A5:E6\r
a=setup:actpass\r
a=mid:1\r
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r
a=extmap:13 urn:3gpp:video-orientation\r
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r
a=sendrecv\r
a=msid:stream video0\r
a=rtcp-mux\r
a=rtcp-rsize\r
a=rtpmap:96 VP8/90000\r
a=rtcp-fb:96 goog-remb\r
a=rtcp-fb:96 transport-cc\r
a=rtcp-fb:96 ccm fir\r
a=rtcp-fb:96 nack\r
a=rtcp-fb:96 nack pli\r
a=rtpmap:97 rtx/90000\r
a=fmtp:97 apt=96\r
a=rtpmap:45 AV1/90000\r
a=rtpmap:46 rtx/90000\r
a=fmtp:46 apt=45\r
a=rtpmap:98 VP9/90000\r
a=fmtp:98 profile-id=0\r
a=rtpmap:99 rtx/90000\r
a=fmtp:99 apt=98\r
a=rid:q send\r
a=rid:h send\r
a=rid:f send\r
a=simulcast:send q;h;f\r
";
