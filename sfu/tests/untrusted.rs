//! Untrusted input never panics the media core: mangled SDP offers and candidates each end in
//! an answer or a typed refusal, and random datagrams are dropped.

use std::net::SocketAddr;
use std::time::Instant;

use endpoint::{Endpoint, EndpointConfig};
use protocol::{ClientMessage, ParticipantId, RoomId};
use sfu::{Engine, EngineConfig, SfuCommand, SfuEvent};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A real offer from a str0m client that publishes audio and video.
fn valid_offer() -> String {
    let addr: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let mut endpoint = Endpoint::new(Instant::now(), EndpointConfig::new(addr)).expect("endpoint");
    match endpoint.create_offer() {
        Some(ClientMessage::Offer { sdp, .. }) => sdp,
        other => panic!("expected an offer, got {other:?}"),
    }
}

/// Adds participant 1 to a room, sends it `offer` and returns the engine's answer.
fn answer_to(engine: &mut Engine, now: Instant, offer: &str) -> String {
    let participant = ParticipantId(1);
    engine.handle_command(
        now,
        SfuCommand::AddParticipant {
            participant,
            room: RoomId("r".into()),
        },
    );
    engine.handle_command(
        now,
        SfuCommand::Offer {
            participant,
            sdp: offer.to_owned(),
            publish: Vec::new(),
            subscribe: Vec::new(),
        },
    );
    std::iter::from_fn(|| engine.poll_event())
        .filter_map(|event| match event {
            SfuEvent::Answer { sdp, .. } => Some(sdp),
            _ => None,
        })
        .last()
        .expect("the offer is answered")
}

/// One random mutation of an SDP: drop, duplicate, swap or truncate lines, or corrupt bytes.
fn mutate(sdp: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = sdp.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(4) {
        if lines.is_empty() {
            break;
        }
        let i = rng.below(lines.len());
        match rng.below(7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let line = lines[i].clone();
                lines.insert(i, line);
            }
            2 => {
                let j = rng.below(lines.len());
                lines.swap(i, j);
            }
            3 => {
                let cut = rng.below(lines[i].len() + 1);
                let boundary = lines[i].floor_char_boundary(cut);
                lines[i].truncate(boundary);
            }
            4 => {
                // Replace every number on the line with an absurd one.
                let mangled: String = lines[i]
                    .split(' ')
                    .map(|w| {
                        if w.parse::<i64>().is_ok() {
                            "4294967296999"
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                lines[i] = mangled;
            }
            5 => {
                let j = rng.below(lines.len());
                let line = lines[j].clone();
                for _ in 0..rng.below(50) {
                    lines.insert(i, line.clone());
                }
            }
            _ => {
                let mut bytes = lines[i].clone().into_bytes();
                if !bytes.is_empty() {
                    let k = rng.below(bytes.len());
                    bytes[k] = (rng.next() & 0x7f) as u8;
                }
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    lines.join("\r\n") + "\r\n"
}

#[test]
fn mangled_offers_are_answered_or_refused_never_a_panic() {
    let mut engine =
        Engine::new(EngineConfig::new("127.0.0.1:3478".parse().expect("addr"))).expect("engine");
    let now = Instant::now();
    let offer = valid_offer();
    let mut rng = Rng(0x5eed_cafe_f00d);
    let (mut answered, mut refused) = (0, 0);
    for n in 0..400u64 {
        let participant = ParticipantId(n + 1);
        engine.handle_command(
            now,
            SfuCommand::AddParticipant {
                participant,
                room: RoomId("fuzz".into()),
            },
        );
        let sdp = if n == 0 {
            offer.clone()
        } else {
            mutate(&offer, &mut rng)
        };
        engine.handle_command(
            now,
            SfuCommand::Offer {
                participant,
                sdp,
                publish: Vec::new(),
                subscribe: Vec::new(),
            },
        );
        let candidate = mutate(
            "candidate:1 1 udp 2113937151 127.0.0.1 40000 typ host",
            &mut rng,
        );
        engine.handle_command(
            now,
            SfuCommand::RemoteCandidate {
                participant,
                candidate: candidate.trim().to_string(),
            },
        );
        let mut outcome = None;
        while let Some(event) = engine.poll_event() {
            match event {
                SfuEvent::Answer { participant: p, .. } if p == participant => {
                    outcome = Some(true);
                }
                SfuEvent::Refused {
                    participant: p,
                    message,
                    ..
                } if p == participant => {
                    // What a client is told names no memory address of the server's.
                    assert!(
                        !message.contains("Pointer") && !message.contains("0x"),
                        "refusal leaks internals: {message}"
                    );
                    outcome.get_or_insert(false);
                }
                _ => {}
            }
        }
        match outcome {
            Some(true) => answered += 1,
            Some(false) => refused += 1,
            None => panic!("offer {n} got neither an answer nor a refusal"),
        }
        engine.handle_command(now, SfuCommand::RemoveParticipant { participant });
    }
    // The unmangled offer is answered, and the mutations exercise both outcomes.
    assert!(
        answered >= 1 && refused >= 1,
        "{answered} answered, {refused} refused"
    );
    let (rooms, participants, _, _) = engine.census();
    assert_eq!((rooms, participants), (0, 0));
}

#[test]
fn random_datagrams_never_panic() {
    let mut engine =
        Engine::new(EngineConfig::new("127.0.0.1:3478".parse().expect("addr"))).expect("engine");
    let now = Instant::now();
    let mut rng = Rng(0xfeed_beef);
    let source: SocketAddr = "127.0.0.1:5555".parse().expect("addr");
    let destination: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
    for _ in 0..20_000 {
        let len = rng.below(1600);
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Steer the first byte into each demultiplexing range (STUN, DTLS, RTP/RTCP).
        if let Some(first) = data.first_mut() {
            *first = [0x00, 0x01, 0x14, 0x16, 0x17, 0x80, 0x90, 0xbf][rng.below(8)];
        }
        engine.handle_datagram(now, source, destination, &data);
    }
    assert_eq!(engine.stats().datagrams_in, 20_000);
    assert!(engine.poll_transmit().is_none(), "garbage was answered");
}

/// A participant with an answered offer: the username its checks carry (the server's ufrag
/// from the answer, the client's from the offer) and the server's ICE password.
fn participant_with_answer(engine: &mut Engine, now: Instant) -> (String, String) {
    let offer = valid_offer();
    let answer = answer_to(engine, now, &offer);
    let value = |sdp: &str, key: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix(key))
            .expect("the answer has ICE credentials")
            .trim()
            .to_string()
    };
    while engine.poll_transmit().is_some() {}
    let username = format!(
        "{}:{}",
        value(&answer, "a=ice-ufrag:"),
        value(&offer, "a=ice-ufrag:")
    );
    (username, value(&answer, "a=ice-pwd:"))
}

/// A binding request with `username` (`server:client` ufrags), signed with `password`.
fn binding_request(username: &str, password: &str) -> Vec<u8> {
    use str0m::ice::{StunMessage, TransId};
    let message = StunMessage::binding_request(username, TransId::new(), true, 7, 1_000, false);
    let mut buf = vec![0u8; 512];
    let n = message
        .to_bytes(Some(password.as_bytes()), &mut buf, sfu::stun::hmac_sha1)
        .expect("serialize");
    buf.truncate(n);
    buf
}

/// A new source address is bound to a transport only by a binding request that proves the
/// ICE password, and a STUN message whose FINGERPRINT is wrong is not answered at all.
#[test]
fn stun_must_prove_the_password_and_carry_a_good_fingerprint() {
    let mut engine =
        Engine::new(EngineConfig::new("127.0.0.1:3478".parse().expect("addr"))).expect("engine");
    let now = Instant::now();
    let (username, password) = participant_with_answer(&mut engine, now);
    let destination: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
    // Any non-STUN datagram: it reaches a transport only from a bound address.
    let probe = [0x80u8, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];

    // A guessed password: not answered, and its source is not bound.
    let guesser: SocketAddr = "127.0.0.1:5001".parse().expect("addr");
    engine.handle_datagram(
        now,
        guesser,
        destination,
        &binding_request(&username, "guess"),
    );
    assert!(
        engine.poll_transmit().is_none(),
        "a forged check was answered"
    );
    let unknown = engine.stats().dropped_unknown_source;
    engine.handle_datagram(now, guesser, destination, &probe);
    assert_eq!(
        engine.stats().dropped_unknown_source,
        unknown + 1,
        "a source was bound by a check that did not prove the password"
    );

    // The right password but a damaged FINGERPRINT: not answered either.
    let damaged: SocketAddr = "127.0.0.1:5002".parse().expect("addr");
    let mut request = binding_request(&username, &password);
    let last = request.len() - 1;
    request[last] ^= 0x01;
    engine.handle_datagram(now, damaged, destination, &request);
    assert!(
        engine.poll_transmit().is_none(),
        "a check with a bad fingerprint was answered"
    );

    // The real thing is answered, from where it came.
    let peer: SocketAddr = "127.0.0.1:5003".parse().expect("addr");
    engine.handle_datagram(
        now,
        peer,
        destination,
        &binding_request(&username, &password),
    );
    let reply = engine.poll_transmit().expect("a proper check is answered");
    assert_eq!(reply.destination, peer);
}

/// Without bandwidth estimation the transport-wide congestion control number is not
/// negotiated (it would feed nothing); with it, it is.
#[test]
fn transport_cc_is_negotiated_only_with_bandwidth_estimation() {
    for estimation in [true, false] {
        let mut config = EngineConfig::new("127.0.0.1:3478".parse().expect("addr"));
        config.bandwidth_estimation = estimation;
        let mut engine = Engine::new(config).expect("engine");
        let answer = answer_to(&mut engine, Instant::now(), &valid_offer());
        assert_eq!(
            answer.contains("transport-wide-cc-extensions-01"),
            estimation,
            "{answer}"
        );
    }
}

/// Every media section of the answer carries the server's candidate, not only the first: a
/// client that reads the shared transport's candidates from another section (aiortc with
/// `max-bundle`, some hardware encoders) would otherwise never connect.
#[test]
fn every_section_of_the_answer_carries_the_candidate() {
    let server: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
    let mut engine = Engine::new(EngineConfig::new(server)).expect("engine");
    let answer = answer_to(&mut engine, Instant::now(), &valid_offer());
    let sections: Vec<&str> = answer.split("\r\nm=").skip(1).collect();
    assert!(sections.len() >= 2, "audio and video: {answer}");
    for section in sections {
        let candidates: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .collect();
        assert_eq!(candidates.len(), 1, "one candidate in m={section}");
        assert!(
            candidates[0].contains(" 127.0.0.1 3478 "),
            "{}",
            candidates[0]
        );
    }
}
