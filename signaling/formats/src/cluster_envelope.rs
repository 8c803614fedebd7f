//! The cluster's sealed envelope (`signaling::cluster`): every message a node sends over NATS
//! travels in an envelope that the cluster secret
//! authenticates: who sent it, when, and an HMAC-SHA256 over that, the subject and the body.
//!
//! NATS itself may be shared with other applications, or reachable by a machine that is not a
//! node; the envelope makes a message from anything without the secret (a node started with a
//! wrong secret, a forged or replayed message, a truncated one) a typed error that the
//! receiver counts and drops. Binding the subject means a message cannot be replayed on
//! another subject; the time window bounds replays on the same one.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! "MC1" | node id length (1 byte) | node id | sent at, Unix ms (8 bytes) | body | HMAC (32 bytes)
//! ```
//!
//! The HMAC covers the subject's length (2 bytes) and bytes, then everything before it.

use aws_lc_rs::hmac;

const MAGIC: &[u8; 3] = b"MC1";
const MAC_LEN: usize = 32;
/// The longest node id.
pub const MAX_NODE_ID: usize = 64;
/// How far a message's time may be from the receiver's clock (either way): clocks of a
/// cluster's nodes are kept by NTP, and a message older than this is a replay.
pub const MAX_SKEW_MS: u64 = 60_000;

/// Why a message was refused. Each is counted by reason (`meet_cluster_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the message is too short to be a cluster message")]
    Truncated,
    #[error("the message is not a cluster message (bad magic)")]
    BadMagic,
    #[error("the message's node id is malformed")]
    BadNode,
    #[error("the message does not verify with this cluster's secret")]
    BadMac,
    #[error("the message's time is too far from now (a replay, or a clock off by minutes)")]
    Stale,
}

impl EnvelopeError {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadMagic => "bad_magic",
            Self::BadNode => "bad_node",
            Self::BadMac => "bad_mac",
            Self::Stale => "stale",
        }
    }
}

/// A verified message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<'a> {
    pub node: &'a str,
    pub sent_at_ms: u64,
    pub body: &'a [u8],
}

/// Whether `id` can name a node: 1 to 64 ASCII letters, digits, `-` and `_` (it also goes
/// into NATS subjects and key-value keys, where `.`, `*` and `>` mean something).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn mac(key: &hmac::Key, subject: &str, signed: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    // A subject is a NATS subject, far shorter than 64 KiB; a longer one is cut in the length
    // only, and still covered whole.
    context.update(&(subject.len().min(u16::MAX as usize) as u16).to_be_bytes());
    context.update(subject.as_bytes());
    context.update(signed);
    context.sign()
}

/// Seals `body` from `node` for `subject`. `node` must satisfy [`valid_node_id`] (the caller
/// chose it).
pub fn seal(key: &hmac::Key, subject: &str, node: &str, sent_at_ms: u64, body: &[u8]) -> Vec<u8> {
    debug_assert!(valid_node_id(node));
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + node.len() + 8 + body.len() + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.push(node.len() as u8);
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(&sent_at_ms.to_be_bytes());
    out.extend_from_slice(body);
    let tag = mac(key, subject, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens a message received on `subject` at `now_ms`.
pub fn open<'a>(
    key: &hmac::Key,
    subject: &str,
    message: &'a [u8],
    now_ms: u64,
) -> Result<Opened<'a>, EnvelopeError> {
    open_checked(key, subject, message, Some(now_ms))
}

/// Opens a record written once and read for as long as it stands (a room's holder): its age
/// says nothing, the revision it is read at says what is current.
pub fn open_record<'a>(
    key: &hmac::Key,
    subject: &str,
    message: &'a [u8],
) -> Result<Opened<'a>, EnvelopeError> {
    open_checked(key, subject, message, None)
}

fn open_checked<'a>(
    key: &hmac::Key,
    subject: &str,
    message: &'a [u8],
    now_ms: Option<u64>,
) -> Result<Opened<'a>, EnvelopeError> {
    let minimum = MAGIC.len() + 1 + 1 + 8 + MAC_LEN;
    if message.len() < minimum {
        return Err(EnvelopeError::Truncated);
    }
    if &message[..MAGIC.len()] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    let node_len = usize::from(message[MAGIC.len()]);
    let node_start = MAGIC.len() + 1;
    let time_start = node_start + node_len;
    let body_start = time_start + 8;
    let mac_start = message.len() - MAC_LEN;
    if body_start > mac_start {
        return Err(EnvelopeError::Truncated);
    }
    // The MAC first: nothing of an unauthenticated message is interpreted further.
    let expected = mac(key, subject, &message[..mac_start]);
    if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), &message[mac_start..])
        .is_err()
    {
        return Err(EnvelopeError::BadMac);
    }
    let node = std::str::from_utf8(&message[node_start..time_start])
        .ok()
        .filter(|id| valid_node_id(id))
        .ok_or(EnvelopeError::BadNode)?;
    let mut time = [0u8; 8];
    time.copy_from_slice(&message[time_start..body_start]);
    let sent_at_ms = u64::from_be_bytes(time);
    if now_ms.is_some_and(|now| sent_at_ms.abs_diff(now) > MAX_SKEW_MS) {
        return Err(EnvelopeError::Stale);
    }
    Ok(Opened {
        node,
        sent_at_ms,
        body: &message[body_start..mac_start],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[byte; 32])
    }

    #[test]
    fn a_sealed_message_opens_with_the_same_key_and_subject() {
        let sealed = seal(&key(1), "meet.nodes", "node-a", 1_000_000, b"hello");
        let opened = open(&key(1), "meet.nodes", &sealed, 1_000_500).expect("opens");
        assert_eq!(
            opened,
            Opened {
                node: "node-a",
                sent_at_ms: 1_000_000,
                body: b"hello"
            }
        );
        let empty = seal(&key(1), "s", "n", 5, b"");
        assert_eq!(open(&key(1), "s", &empty, 5).expect("opens").body, b"");
    }

    #[test]
    fn another_key_another_subject_a_flipped_bit_or_an_old_time_is_refused() {
        let sealed = seal(&key(1), "meet.nodes", "node-a", 1_000_000, b"hello");
        assert_eq!(
            open(&key(2), "meet.nodes", &sealed, 1_000_000),
            Err(EnvelopeError::BadMac)
        );
        assert_eq!(
            open(&key(1), "meet.rooms", &sealed, 1_000_000),
            Err(EnvelopeError::BadMac)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&key(1), "meet.nodes", &bad, 1_000_000).is_err(),
                "bit {i}"
            );
        }
        assert_eq!(
            open(&key(1), "meet.nodes", &sealed, 1_000_000 + MAX_SKEW_MS + 1),
            Err(EnvelopeError::Stale)
        );
        assert_eq!(
            open(&key(1), "meet.nodes", &sealed, 1_000_000 - MAX_SKEW_MS - 1),
            Err(EnvelopeError::Stale)
        );
        // A standing record is read whatever its age, and still verified.
        assert!(open_record(&key(1), "meet.nodes", &sealed).is_ok());
        assert_eq!(
            open_record(&key(2), "meet.nodes", &sealed),
            Err(EnvelopeError::BadMac)
        );
    }

    #[test]
    fn short_or_foreign_messages_are_typed_errors() {
        assert_eq!(open(&key(1), "s", b"", 0), Err(EnvelopeError::Truncated));
        assert_eq!(
            open(&key(1), "s", &[0u8; 45], 0),
            Err(EnvelopeError::BadMagic)
        );
        // A node length that runs past the MAC.
        let mut long = b"MC1".to_vec();
        long.push(255);
        long.extend_from_slice(&[0u8; 60]);
        assert_eq!(open(&key(1), "s", &long, 0), Err(EnvelopeError::Truncated));
    }

    #[test]
    fn node_ids_are_subject_safe() {
        assert!(valid_node_id("node-a_1"));
        for bad in ["", "a.b", "a*", "a>", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_node_id(bad), "{bad:?}");
        }
    }
}
