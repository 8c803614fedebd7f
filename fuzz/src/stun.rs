//! STUN messages (RFC 8489) built from fuzzed parts, with a MESSAGE-INTEGRITY computed with
//! the right password and a correct FINGERPRINT when asked, so that they get past the checks
//! to whatever the ICE agent does next.

use str0m::crypto::Sha1HmacProvider;

pub const MAGIC_COOKIE: u32 = 0x2112_a442;
pub const BINDING_REQUEST: u16 = 0x0001;
pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_PRIORITY: u16 = 0x0024;
pub const ATTR_USE_CANDIDATE: u16 = 0x0025;
pub const ATTR_FINGERPRINT: u16 = 0x8028;
pub const ATTR_ICE_CONTROLLING: u16 = 0x802a;

/// A STUN message under construction.
#[derive(Debug, Clone)]
pub struct Stun {
    msg_type: u16,
    transaction: [u8; 12],
    attrs: Vec<u8>,
}

impl Stun {
    pub fn new(msg_type: u16, transaction: [u8; 12]) -> Self {
        Self {
            msg_type,
            transaction,
            attrs: Vec::new(),
        }
    }

    /// Appends one attribute, padded to four bytes.
    pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let value = &value[..value.len().min(usize::from(u16::MAX))];
        self.attrs.extend_from_slice(&kind.to_be_bytes());
        self.attrs
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.attrs.extend_from_slice(value);
        while !self.attrs.len().is_multiple_of(4) {
            self.attrs.push(0);
        }
        self
    }

    /// Appends bytes as they are (attributes of any shape, or garbage).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.attrs.extend_from_slice(bytes);
        self
    }

    fn header(&self, attrs_len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + attrs_len);
        out.extend_from_slice(&self.msg_type.to_be_bytes());
        out.extend_from_slice(&(attrs_len as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&self.transaction);
        out
    }

    /// The message, with MESSAGE-INTEGRITY (HMAC-SHA1 keyed with `integrity_key`, the ICE
    /// password) and FINGERPRINT appended when asked.
    pub fn finish(
        &self,
        integrity_key: Option<&[u8]>,
        fingerprint: bool,
        hmac: &dyn Sha1HmacProvider,
    ) -> Vec<u8> {
        let mut attrs = self.attrs.clone();
        if let Some(key) = integrity_key {
            // The HMAC covers the header (its length counting the MESSAGE-INTEGRITY
            // attribute) and the attributes before it.
            let mut covered = self.header(attrs.len() + 24);
            covered.extend_from_slice(&attrs);
            let mac = hmac.sha1_hmac(key, &[&covered]);
            attrs.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
            attrs.extend_from_slice(&20u16.to_be_bytes());
            attrs.extend_from_slice(&mac);
        }
        if fingerprint {
            let mut covered = self.header(attrs.len() + 8);
            covered.extend_from_slice(&attrs);
            let crc = crc32(&covered) ^ 0x5354_554e;
            attrs.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
            attrs.extend_from_slice(&4u16.to_be_bytes());
            attrs.extend_from_slice(&crc.to_be_bytes());
        }
        let mut out = self.header(attrs.len());
        out.extend_from_slice(&attrs);
        out
    }
}

/// CRC-32 (ISO-HDLC, the one FINGERPRINT uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
