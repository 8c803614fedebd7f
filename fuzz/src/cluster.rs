//! Harness for what the nodes of a cluster read from NATS (`cluster_envelope`): the sealed
//! envelope of `formats::cluster_envelope`, which every node record and room record travels
//! in. Anyone who reaches the NATS server can write any bytes under any key, so the opening
//! side is untrusted input.

use aws_lc_rs::hmac;
use formats::cluster_envelope::{MAX_SKEW_MS, open, open_record, seal, valid_node_id};

/// The receiver's clock in every run: fixed, so that a failure replays.
const NOW_MS: u64 = 1_800_000_000_000;

fn key() -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32])
}

/// `cluster_envelope`: the first byte is the subject's length (up to 40 bytes follow as the
/// subject), the rest is the message. Checked: opening never panics; whatever opens is exactly
/// the sealing of what it says (sender, time, body) for that subject, its sender is a valid node
/// id and its time within the skew (or any time, for a standing record); and the input's body
/// sealed as a node's message opens to itself.
pub fn envelope(data: &[u8]) {
    let Some((&subject_len, rest)) = data.split_first() else {
        return;
    };
    let subject_len = usize::from(subject_len % 41).min(rest.len());
    let (subject, message) = rest.split_at(subject_len);
    let subject = String::from_utf8_lossy(subject);
    let key = key();
    for (opened, timed) in [
        (open(&key, &subject, message, NOW_MS), true),
        (open_record(&key, &subject, message), false),
    ] {
        let Ok(opened) = opened else {
            continue;
        };
        assert!(valid_node_id(opened.node), "{opened:?}");
        if timed {
            assert!(
                opened.sent_at_ms.abs_diff(NOW_MS) <= MAX_SKEW_MS,
                "{opened:?}"
            );
        }
        let again = seal(&key, &subject, opened.node, opened.sent_at_ms, opened.body);
        assert_eq!(again, message, "an accepted message is its own sealing");
    }

    let sealed = seal(&key, &subject, "node-fuzz", NOW_MS, message);
    let opened = open(&key, &subject, &sealed, NOW_MS).expect("a sealed message opens");
    assert_eq!(opened.body, message);
    assert_eq!(opened.node, "node-fuzz");
    let other = hmac::Key::new(hmac::HMAC_SHA256, &[8u8; 32]);
    assert!(open(&other, &subject, &sealed, NOW_MS).is_err());
}

/// Seeds: real node and room records as the server seals them, and near misses.
pub fn envelope_seeds() -> Vec<(String, Vec<u8>)> {
    let key = key();
    let with_subject = |subject: &str, message: Vec<u8>| {
        let mut input = vec![subject.len() as u8];
        input.extend_from_slice(subject.as_bytes());
        input.extend(message);
        input
    };
    let node_subject = "kv.meet_nodes.node-a";
    let node_record = br#"{"id":"node-a","url":"https://127.0.0.1:8443","http_addr":"127.0.0.1:8443","media_addr":"127.0.0.1:10000","started_at":"2027-01-15T08:00:00.000Z"}"#;
    let room_subject = "kv.meet_rooms.r-00112233445566778899aabbccddeeff";
    let room_record = br#"{"room":"0123456789abcdef0123456789abcdef","node":"node-b"}"#;
    let node = seal(&key, node_subject, "node-a", NOW_MS, node_record);
    let room = seal(
        &key,
        room_subject,
        "node-b",
        NOW_MS - 86_400_000,
        room_record,
    );
    let mut flipped = node.clone();
    flipped[10] ^= 1;
    let stale = seal(
        &key,
        node_subject,
        "node-a",
        NOW_MS - MAX_SKEW_MS - 1,
        node_record,
    );
    vec![
        (
            "node_record".into(),
            with_subject(node_subject, node.clone()),
        ),
        ("room_record".into(), with_subject(room_subject, room)),
        ("flipped_bit".into(), with_subject(node_subject, flipped)),
        ("stale".into(), with_subject(node_subject, stale)),
        (
            "other_subject".into(),
            with_subject("kv.meet_nodes.node-b", node),
        ),
        ("junk".into(), with_subject("x", b"not a record".to_vec())),
        ("empty".into(), Vec::new()),
    ]
}
