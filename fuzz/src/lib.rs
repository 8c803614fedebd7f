//! Shared harness code for the fuzz targets in `fuzz_targets/` (see `README.md`).
//!
//! - [`records`]: the record framing most targets use to cut one input into several steps;
//! - [`srtp`]: a client-side SRTP/SRTCP sender keyed from a real DTLS handshake, so that
//!   fuzzed plaintext passes the engine's authentication;
//! - [`world`]: an [`sfu::Engine`] in virtual time with two connected peers, one of them
//!   driven by the fuzzer;
//! - [`stun`]: STUN messages with a correct MESSAGE-INTEGRITY and FINGERPRINT;
//! - [`scratch`]: a private temporary directory per input, for the recorder's targets;
//! - [`signaling_side`], [`recorder`], [`sframe`], [`api_text`], [`cluster`],
//!   [`relay_wire`]: the other targets' harnesses;
//! - [`seeds`]: the seed corpora, written by the targets themselves.

pub mod api_text;
pub mod cluster;
pub mod connected;
pub mod recorder;
pub mod records;
pub mod relay_wire;
pub mod scratch;
pub mod seeds;
pub mod sframe;
pub mod signaling_side;
pub mod srtp;
pub mod stun;
pub mod world;

/// Lets a panic that the engine contains reach its `catch_unwind`.
///
/// libFuzzer's panic hook aborts on every panic, even one that is caught. The engine catches a
/// panic of str0m on a participant's input and ends only that participant's transport
/// (`SfuEvent::TransportFailed`), which the harnesses then check. So this hook prints the panic
/// (message, place, backtrace) and lets it unwind; a panic nothing contains still reaches the
/// `catch_unwind` of `fuzz_target!`, which aborts: a crash, as before.
pub fn let_contained_panics_unwind() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let backtrace = std::backtrace::Backtrace::capture();
            eprintln!(
                "panic (contained if the engine reports TransportFailed): {info}\n{backtrace}"
            );
        }));
    });
}

/// The seeds of one target, by name.
pub fn seeds_for(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "rtp_connected" => connected::seeds(),
        "signaling_message" => message_seeds(),
        "sdp_offer" => signaling_side::offer_seeds(),
        "sdp_candidate" => signaling_side::candidate_seeds(),
        "stun" => signaling_side::stun_seeds(),
        "keyframe" => keyframe_seeds(),
        "depacketize" => depacketize_seeds(),
        "recorder_writers" => recorder::writer_seeds(),
        "recorder_readers" => recorder::reader_seeds(),
        "manifest" => recorder::manifest_seeds(),
        "sframe" => sframe::seeds(),
        "csv_import" => api_text::csv_seeds(),
        "rfc3339" => api_text::rfc3339_seeds(),
        "cluster_envelope" => cluster::envelope_seeds(),
        "relay_datagram" => relay_wire::datagram_seeds(),
        _ => Vec::new(),
    }
}

/// Seeds for `signaling_message`: one valid message of each type, and near misses.
fn message_seeds() -> Vec<(String, Vec<u8>)> {
    let messages = [
        (
            "join",
            r#"{"type":"join","protocol_version":2,"token":"eyJhbGciOiJFZERTQSJ9.e30.c2ln","e2ee_key":"AAAA"}"#,
        ),
        (
            "join_open",
            r#"{"type":"join","protocol_version":2,"room":"r1","name":"Hà Nội","role":"viewer","resume":"abc"}"#,
        ),
        (
            "offer",
            r#"{"type":"offer","sdp":"v=0\r\n","publish":[{"mid":"0","source":"camera","layers":[{"rid":"q","width":320,"height":180}]}],"subscribe":[{"mid":"1","publication_id":7}]}"#,
        ),
        (
            "candidate",
            r#"{"type":"candidate","candidate":"candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host"}"#,
        ),
        (
            "set_muted",
            r#"{"type":"set_muted","publication_id":3,"muted":true}"#,
        ),
        (
            "video_sizes",
            r#"{"type":"video_sizes","sizes":[{"publication_id":3,"width":640,"height":360}]}"#,
        ),
        (
            "e2ee_keys",
            r#"{"type":"e2ee_keys","keys":[{"participant_id":4,"blob":"QUJD"}]}"#,
        ),
        ("raise_hand", r#"{"type":"raise_hand","raised":true}"#),
        ("admit", r#"{"type":"admit","participant_id":9}"#),
        ("admit_all", r#"{"type":"admit_all"}"#),
        ("open_room", r#"{"type":"open_room"}"#),
        ("lock_room", r#"{"type":"lock_room","locked":false}"#),
        (
            "set_role",
            r#"{"type":"set_role","participant_id":9,"role":"presenter"}"#,
        ),
        (
            "mute_participant",
            r#"{"type":"mute_participant","participant_id":9,"kind":"video"}"#,
        ),
        (
            "remove_participant",
            r#"{"type":"remove_participant","participant_id":9}"#,
        ),
        ("start_recording", r#"{"type":"start_recording"}"#),
        ("stop_recording", r#"{"type":"stop_recording"}"#),
        ("ping", r#"{"type":"ping"}"#),
        ("leave", r#"{"type":"leave"}"#),
        ("unknown_type", r#"{"type":"teleport","to":"mars"}"#),
        ("unknown_field", r#"{"type":"ping","extra":1}"#),
        (
            "deep",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        ),
    ];
    messages
        .iter()
        .map(|(name, text)| ((*name).to_owned(), text.as_bytes().to_vec()))
        .collect()
}

/// Seeds for `keyframe`: a keyframe and a delta of each codec.
fn keyframe_seeds() -> Vec<(String, Vec<u8>)> {
    let seeds: [(&str, &[u8]); 10] = [
        ("vp8_key", &[0, 0x10, 0x00, 0x9d, 0x01, 0x2a]),
        (
            "vp8_key_extended",
            &[0, 0x90, 0xe0, 0x80, 0x01, 0x00, 0x00, 0x00],
        ),
        ("vp8_delta", &[0, 0x10, 0x01, 0x9d]),
        ("vp9_key", &[1, 0x8a, 0x81, 0x01, 0x00, 0x82]),
        ("vp9_layered", &[1, 0xa8, 0x05, 0x02]),
        ("h264_idr", &[2, 0x65, 0x88]),
        (
            "h264_stap_a",
            &[2, 0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce],
        ),
        ("h264_fu_a", &[2, 0x7c, 0x85, 0x88]),
        ("av1_new_sequence", &[3, 0x18, 0x0b, 0x0a]),
        ("av1_delta", &[3, 0x10, 0x32]),
    ];
    seeds
        .iter()
        .map(|(name, data)| ((*name).to_owned(), data.to_vec()))
        .collect()
}

/// Seeds for `depacketize`: real VP8 frames split into packets, and VP9 and AV1 ones.
fn depacketize_seeds() -> Vec<(String, Vec<u8>)> {
    let packet = |out: &mut Vec<u8>, marker: bool, seq: u16, ts: u32, payload: &[u8]| {
        let mut body = seq.to_be_bytes().to_vec();
        body.extend_from_slice(&ts.to_be_bytes());
        body.extend_from_slice(payload);
        records::encode(out, u8::from(marker), &body);
    };
    let mut vp8 = vec![0u8];
    let mut source = endpoint::media::VideoSource::new(8, 1_500);
    for f in 0..4u32 {
        let frame = source.next_frame(f == 0);
        let payloads = connected::vp8_payloads(&frame, 600);
        let n = payloads.len();
        for (i, p) in payloads.iter().enumerate() {
            packet(
                &mut vp8,
                i + 1 == n,
                65_534u16.wrapping_add((3 * f + i as u32) as u16),
                (u32::MAX - 3_000).wrapping_add(3_000 * f),
                p,
            );
        }
    }
    let mut vp9 = vec![1u8];
    packet(
        &mut vp9,
        false,
        1,
        0,
        &[
            0x8a, 0x81, 0x01, 0x00, 0x82, 0x49, 0x83, 0x42, 0x00, 0x13, 0xf0,
        ],
    );
    packet(&mut vp9, true, 2, 0, &[0x84, 0x81, 0x01, 0x0e, 0xf0]);
    packet(&mut vp9, true, 3, 3_000, &[0xcc, 0x81, 0x02, 0x01]);
    let mut av1 = vec![2u8];
    packet(
        &mut av1,
        true,
        1,
        0,
        &[
            0x18, 0x0b, 0x0a, 0x0b, 0x00, 0x00, 0x00, 0x04, 0x3c, 0xff, 0xbc, 0xf5, 0x84, 0x88,
            0x03, 0x32, 0x10, 0x00,
        ],
    );
    packet(&mut av1, false, 2, 3_000, &[0x50, 0x03, 0x32, 0x10]);
    packet(&mut av1, true, 3, 3_000, &[0x90, 0x00]);
    vec![
        ("vp8_frames".to_owned(), vp8),
        ("vp9_frames".to_owned(), vp9),
        ("av1_frames".to_owned(), av1),
    ]
}
