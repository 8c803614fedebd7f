//! The checks on STUN that the engine makes itself, before str0m sees a message.
//!
//! str0m's ICE agent checks MESSAGE-INTEGRITY when it handles a binding request, but it never
//! checks FINGERPRINT, and the engine binds a new source address to a transport before the
//! agent runs. So: every STUN message must carry a correct FINGERPRINT (RFC 8445 §7.2.2 makes
//! it mandatory for ICE), and a message that introduces an address must pass its
//! MESSAGE-INTEGRITY against the transport's ICE password first.

use crc::{CRC_32_ISO_HDLC, Crc};

/// The FINGERPRINT attribute's type.
const FINGERPRINT: u16 = 0x8028;
/// XORed into the CRC (RFC 8489 §14.7), so that a STUN message is not mistaken for another
/// protocol's packet that happens to carry a CRC-32 at its end.
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Whether a datagram is STUN by its first byte (RFC 7983: 0 to 3).
pub fn is_stun(data: &[u8]) -> bool {
    data.first().is_some_and(|b| *b <= 3)
}

/// Whether a STUN message ends with a FINGERPRINT attribute whose CRC matches the rest of the
/// message. A message without one is refused as well.
pub fn fingerprint_ok(data: &[u8]) -> bool {
    let Some(split) = data.len().checked_sub(8) else {
        return false;
    };
    if split < 20 {
        return false;
    }
    let (message, attribute) = data.split_at(split);
    let typ = u16::from_be_bytes([attribute[0], attribute[1]]);
    let len = u16::from_be_bytes([attribute[2], attribute[3]]);
    let value = u32::from_be_bytes([attribute[4], attribute[5], attribute[6], attribute[7]]);
    typ == FINGERPRINT && len == 4 && CRC32.checksum(message) ^ FINGERPRINT_XOR == value
}

/// HMAC-SHA1 of `parts` under `key`: what STUN's short-term credentials use.
pub fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut context = hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    let mut out = [0u8; 20];
    out.copy_from_slice(context.sign().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::ice::{StunMessage, TransId};

    /// A binding request as an ICE agent sends it, signed with `password`.
    fn request(password: &str) -> Vec<u8> {
        let message =
            StunMessage::binding_request("server:client", TransId::new(), true, 0, 1_000, false);
        let mut buf = vec![0u8; 512];
        let n = message
            .to_bytes(Some(password.as_bytes()), &mut buf, hmac_sha1)
            .expect("serialize");
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_well_formed_request_passes_and_a_bad_fingerprint_does_not() {
        let mut data = request("secret");
        assert!(is_stun(&data));
        assert!(fingerprint_ok(&data));
        let stun = StunMessage::parse(&data).expect("parse");
        assert!(stun.verify(b"secret", hmac_sha1));
        assert!(!stun.verify(b"wrong", hmac_sha1));
        let last = data.len() - 1;
        data[last] ^= 1;
        assert!(!fingerprint_ok(&data));
        assert!(!fingerprint_ok(&data[..12]));
        assert!(!fingerprint_ok(&[]));
    }
}
