//! Harness for the datagrams that carry relays between the servers of a cluster
//! (`relay_datagram`): `sfu::relay_wire`. Anyone who reaches a server's media port can send
//! one, so the opening side is untrusted input; behind the authentication, the parser reads
//! what another server of the cluster sealed.

use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use protocol::{ParticipantId, PublicationId, RoomId};
use sfu::codec::VideoCodec;
use sfu::relay::{MediaPacket, Relay};
use sfu::relay_wire::{
    HEADER_LEN, RelayOpener, RelaySealer, RelayWireError, looks_like_relay, same_relay,
    seal_plaintext_for_fuzzing,
};
use str0m::media::Pt;
use str0m::rtp::VideoOrientation;

/// The key of every run: fixed, so that a failure replays.
const KEY: [u8; 32] = [0x42; 32];

/// An input starting with this byte is a plaintext, sealed with [`KEY`] before it is opened, so
/// that the fuzzer reaches the parser behind the authentication. Not `M`, the magic's first
/// byte, so that raw datagrams stay reachable.
pub const PLAINTEXT: u8 = 0xa5;

/// `relay_datagram`: an input is a raw datagram, or (first byte [`PLAINTEXT`]) a plaintext
/// sealed as datagram 0. Checked: opening never panics; nothing is appended on an error, and
/// the count returned is what was appended; a datagram opens once (again: `Replayed`); what
/// the demultiplexer does not take for a relay is refused as one; and whatever opens seals
/// again (every relay, in as many datagrams as it takes) and opens to the same relays.
pub fn datagram(data: &[u8]) {
    let arrival = Instant::now();
    let mut datagram = Vec::new();
    match data.split_first() {
        Some((&PLAINTEXT, plaintext)) => {
            seal_plaintext_for_fuzzing(&KEY, 0, plaintext, &mut datagram);
        }
        _ => datagram.extend_from_slice(data),
    }
    let sealed = datagram.clone();
    let mut opener = RelayOpener::new(&KEY);
    let mut relays = Vec::new();
    let result = opener.open(&mut datagram, arrival, &mut relays);
    let n = match result {
        Ok(n) => n,
        Err(error) => {
            assert!(relays.is_empty(), "{error:?} and yet {relays:?}");
            if looks_like_relay(&sealed) {
                assert!(
                    !matches!(error, RelayWireError::NotRelay | RelayWireError::Version(_)),
                    "{error:?}"
                );
            }
            return;
        }
    };
    assert_eq!(n, relays.len());
    assert!(looks_like_relay(&sealed));
    let mut replayed = sealed.clone();
    let mut none = Vec::new();
    assert_eq!(
        opener.open(&mut replayed, arrival, &mut none),
        Err(RelayWireError::Replayed)
    );
    assert!(none.is_empty());

    let mut sealer = RelaySealer::new(&KEY);
    let mut reopener = RelayOpener::new(&KEY);
    let mut out = Vec::new();
    let mut again = Vec::new();
    let mut taken = 0;
    while taken < relays.len() {
        let took = sealer.seal(&relays[taken..], &mut out);
        assert!(took >= 1);
        assert!(!out.is_empty(), "an accepted relay was not sealed again");
        let opened = reopener
            .open(&mut out, arrival, &mut again)
            .expect("a sealed datagram opens");
        assert_eq!(
            opened, took,
            "an accepted relay was dropped when sealed again"
        );
        taken += took;
    }
    assert_eq!(again.len(), relays.len());
    for (a, b) in relays.iter().zip(&again) {
        assert!(same_relay(a, b), "opened {a:?}\nsealed again {b:?}");
    }
}

/// The plaintext of a datagram sealed with [`KEY`] (decrypted here, independently of the
/// opener), to seed the plaintext inputs.
fn plaintext(datagram: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).expect("a 32-byte key"));
    let (header, sealed) = datagram.split_at(HEADER_LEN);
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&header[4..]);
    let mut sealed = sealed.to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut sealed,
        )
        .expect("a genuine datagram");
    let mut input = vec![PLAINTEXT];
    input.extend_from_slice(plain);
    input
}

fn video_packet(seq_no: u64, keyframe: bool) -> Relay {
    Relay::Packet {
        publication: PublicationId(42),
        cached: keyframe,
        packet: MediaPacket {
            ssrc: 0x1234_5678,
            seq_no,
            timestamp: 3_000 * seq_no as u32,
            marker: true,
            pt: Pt::from(96),
            arrival: Instant::now(),
            audio_level: None,
            voice_activity: None,
            video_orientation: Some(VideoOrientation::Deg90),
            // A VP8 keyframe's first bytes (payload descriptor, frame tag, start code).
            payload: vec![0x10, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]
                .into_iter()
                .chain(std::iter::repeat_n(0x5a, 120))
                .collect(),
            layer: 1,
            keyframe,
            codec: Some(VideoCodec::Vp8),
        },
    }
}

fn audio_packet() -> Relay {
    Relay::Packet {
        publication: PublicationId(43),
        cached: false,
        packet: MediaPacket {
            ssrc: 0x0bad_cafe,
            seq_no: 70_000,
            timestamp: 960,
            marker: false,
            pt: Pt::from(111),
            arrival: Instant::now(),
            audio_level: Some(-30),
            voice_activity: Some(true),
            video_orientation: None,
            payload: vec![0xfc, 0xff, 0xfe].into(),
            layer: 0,
            keyframe: false,
            codec: None,
        },
    }
}

fn publication() -> Relay {
    Relay::Publication(Box::new(sfu::relay_wire::sample_mirror_info()))
}

fn control() -> Vec<Relay> {
    let p = PublicationId(42);
    vec![
        Relay::PublicationEnded(p),
        Relay::Muted {
            publication: p,
            muted: true,
        },
        Relay::Want {
            publication: p,
            want: true,
        },
        Relay::LayerWants {
            publication: p,
            layers: 0b011,
        },
        Relay::KeyframeRequest {
            publication: p,
            layers: 0b100,
        },
        Relay::Speaker {
            room: RoomId("weekly-sync".into()),
            participant: Some(ParticipantId(7)),
        },
        Relay::Audible {
            publication: PublicationId(43),
            audible: true,
        },
    ]
}

/// Seeds: genuine datagrams as a server seals them (a video packet, a publication, several
/// packets and control relays packed together), the plaintexts of each behind the marker,
/// and near misses.
pub fn datagram_seeds() -> Vec<(String, Vec<u8>)> {
    let mut sealer = RelaySealer::new(&KEY);
    let mut seal = |relays: &[Relay]| {
        let mut out = Vec::new();
        assert_eq!(sealer.seal(relays, &mut out), relays.len());
        out
    };
    let packet = seal(&[video_packet(1, true)]);
    let publication = seal(&[publication()]);
    let mut mixed = vec![video_packet(2, false), audio_packet()];
    mixed.extend(control());
    let mixed = seal(&mixed);
    let mut flipped = packet.clone();
    flipped[HEADER_LEN + 5] ^= 0x20;
    let mut version = packet.clone();
    version[2] = 2;
    vec![
        ("packet".into(), packet.clone()),
        ("publication".into(), publication.clone()),
        ("mixed".into(), mixed.clone()),
        ("plaintext_packet".into(), plaintext(&packet)),
        ("plaintext_publication".into(), plaintext(&publication)),
        ("plaintext_mixed".into(), plaintext(&mixed)),
        ("flipped_bit".into(), flipped),
        ("other_version".into(), version),
        ("stun".into(), vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]),
        ("empty".into(), Vec::new()),
    ]
}
