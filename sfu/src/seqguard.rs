//! RTP sequence numbers checked before str0m extends them.
//!
//! str0m 0.25 extends each 16-bit sequence number (per stream, and the transport-wide number
//! of the congestion control extension) to 64 bits around the highest one seen. A number
//! that lies more than half the range *behind* the first ones seen, while the rollover
//! counter is still 0, is extended to a value near 2^64 instead of being refused
//! (`extend_u16`: the would-be negative counter wraps). On the transport-wide number the next
//! feedback report then walks the whole gap, which exhausted memory within seconds (found by
//! `fuzz/`: two or three ordinary packets from a connected participant); on a stream's number
//! a subscriber's sequence rewrite overflowed. The participant controls its own encryption,
//! so authentication does not stop it.
//!
//! The engine therefore reads the clear RTP header of every packet a participant sends and
//! drops one whose number would extend below zero, before str0m sees it. What the guard
//! compares with is what str0m accepted (its RTP packet events), never what was merely
//! offered: a packet str0m then refuses (a bad tag, an unknown payload type) must not move
//! the guard ahead of str0m's own view, or the next packet could be safe for the guard and
//! fatal for str0m. Nothing else is refused: a real sender's numbers never go there (short of
//! a reordering across a wrap in its first packets, which loses that one packet).

/// The most streams followed per participant (audio, three simulcast layers, their
/// retransmission streams, a screen share); beyond it the oldest is forgotten.
const MAX_STREAMS: usize = 16;

/// One participant's streams, with the highest extended number str0m accepted on each, and
/// the highest transport-wide number accepted.
#[derive(Debug, Default)]
pub struct SeqGuard {
    streams: Vec<(u32, u64)>,
    transport: Option<u64>,
}

/// Whether `seq` extended around `highest` (as str0m extends it) stays at or above zero.
fn admissible(highest: Option<u64>, seq: u16) -> bool {
    extend(highest, seq).is_some()
}

/// `seq` extended around `highest`; `None` below zero.
fn extend(highest: Option<u64>, seq: u16) -> Option<u64> {
    let Some(h) = highest else {
        return Some(u64::from(seq));
    };
    let diff = i64::from(seq.wrapping_sub(h as u16) as i16);
    (h as i64)
        .checked_add(diff)
        .filter(|e| *e >= 0)
        .map(|e| e as u64)
}

impl SeqGuard {
    /// Whether a packet of stream `ssrc` numbered `seq` (and `transport_seq` when it carries
    /// the transport-wide number) may go on to str0m.
    pub fn admits(&self, ssrc: u32, seq: u16, transport_seq: Option<u16>) -> bool {
        let stream = self
            .streams
            .iter()
            .find(|(s, _)| *s == ssrc)
            .map(|(_, h)| *h);
        admissible(stream, seq) && transport_seq.is_none_or(|t| admissible(self.transport, t))
    }

    /// Notes a packet str0m accepted: its stream, its extended number, its transport-wide
    /// number.
    pub fn accepted(&mut self, ssrc: u32, seq: u64, transport_seq: Option<u16>) {
        match self.streams.iter_mut().find(|(s, _)| *s == ssrc) {
            Some((_, highest)) => *highest = (*highest).max(seq),
            None => {
                if self.streams.len() >= MAX_STREAMS {
                    self.streams.remove(0);
                }
                self.streams.push((ssrc, seq));
            }
        }
        if let Some(extended) = transport_seq.and_then(|t| extend(self.transport, t)) {
            self.transport = Some(self.transport.map_or(extended, |h| h.max(extended)));
        }
    }
}

/// The clear fields of an RTP (not RTCP) datagram the guard needs: SSRC, sequence number and,
/// when the header carries extension `transport_cc` (its negotiated id), the transport-wide
/// sequence number. `None` for anything else, or a header that does not parse.
pub fn read(data: &[u8], transport_cc: Option<u8>) -> Option<(u32, u16, Option<u16>)> {
    let first = *data.first()?;
    let second = *data.get(1)?;
    // RFC 7983 and RFC 5761: RTP is 128..=191 first, and not an RTCP packet type second.
    if !(128..=191).contains(&first) || (192..=223).contains(&second) || data.len() < 12 {
        return None;
    }
    let seq = u16::from_be_bytes([data[2], data[3]]);
    let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    let Some(id) = transport_cc else {
        return Some((ssrc, seq, None));
    };
    if first & 0x10 == 0 {
        return Some((ssrc, seq, None));
    }
    let csrcs = usize::from(first & 0x0f) * 4;
    let at = 12 + csrcs;
    let profile = u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]);
    let words = usize::from(u16::from_be_bytes([*data.get(at + 2)?, *data.get(at + 3)?]));
    let body = data.get(at + 4..at + 4 + words * 4)?;
    Some((ssrc, seq, find_extension(profile, body, id)))
}

/// The two bytes of extension `id` in a one-byte (RFC 8285 §4.2) or two-byte (§4.3) header
/// extension block.
fn find_extension(profile: u16, body: &[u8], id: u8) -> Option<u16> {
    let two_byte = match profile {
        0xbede => false,
        p if p & 0xfff0 == 0x1000 => true,
        _ => return None,
    };
    let mut i = 0;
    while i < body.len() {
        let byte = body[i];
        if byte == 0 {
            // Padding.
            i += 1;
            continue;
        }
        let (element, len, header) = if two_byte {
            (byte, usize::from(*body.get(i + 1)?), 2)
        } else {
            if byte >> 4 == 15 {
                // Reserved: stop reading, as RFC 8285 says.
                return None;
            }
            (byte >> 4, usize::from(byte & 0x0f) + 1, 1)
        };
        let value = body.get(i + header..i + header + len)?;
        if element == id && len >= 2 {
            return Some(u16::from_be_bytes([value[0], value[1]]));
        }
        i += header + len;
    }
    None
}

/// The extension id the SDP maps to the transport-wide congestion control number.
pub fn transport_cc_id(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("a=extmap:")?;
        let (id, uri) = rest.split_once(' ')?;
        let id = id.split('/').next()?.parse::<u8>().ok()?;
        uri.trim()
            .ends_with("transport-wide-cc-extensions-01")
            .then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_that_would_extend_below_zero_is_refused() {
        let mut guard = SeqGuard::default();
        assert!(guard.admits(1, 40, None), "anything goes before the first");
        guard.accepted(1, 40, None);
        guard.accepted(1, 41, None);
        // 65,494 is 82 behind 40 with the counter at 0: below zero.
        assert!(!guard.admits(1, 65_494, None));
        // A reordering and a forward step are fine, as is another stream.
        assert!(guard.admits(1, 39, None));
        assert!(guard.admits(1, 20_000, None));
        assert!(guard.admits(2, 60_000, None));
        // Past a wrap, numbers just behind it are fine too.
        guard.accepted(1, 65_540, None);
        assert!(guard.admits(1, 65_534, None));
    }

    /// What str0m refused does not move the guard: a packet at 30,000 that str0m dropped,
    /// then one at 50,000, is still refused (str0m's highest is 10, and 50,000 is more than
    /// half the range ahead of it).
    #[test]
    fn only_what_str0m_accepted_moves_the_transport_wide_number() {
        let mut guard = SeqGuard::default();
        guard.accepted(1, 100, Some(10));
        assert!(guard.admits(1, 101, Some(30_000)));
        assert!(!guard.admits(1, 102, Some(50_000)));
        assert!(!guard.admits(1, 103, Some(65_000)));
        guard.accepted(1, 101, Some(30_000));
        assert!(guard.admits(1, 102, Some(50_000)));
    }

    #[test]
    fn reads_the_transport_wide_number_from_either_extension_form() {
        // One-byte form: id 3, two bytes (len field 1), value 0x0102; then padding.
        let mut one = vec![0x90, 96, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9];
        one.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x31, 0x01, 0x02, 0x00]);
        assert_eq!(read(&one, Some(3)), Some((9, 7, Some(0x0102))));
        assert_eq!(read(&one, Some(4)), Some((9, 7, None)));
        assert_eq!(read(&one, None), Some((9, 7, None)));
        // Two-byte form: id 3, length 2.
        let mut two = vec![0x90, 96, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9];
        two.extend_from_slice(&[0x10, 0x00, 0, 1, 3, 2, 0xab, 0xcd]);
        assert_eq!(read(&two, Some(3)), Some((9, 7, Some(0xabcd))));
        // Truncated or RTCP: nothing.
        assert_eq!(read(&one[..14], Some(3)), None);
        let mut rtcp = one.clone();
        rtcp[1] = 200;
        assert_eq!(read(&rtcp, Some(3)), None);
    }

    #[test]
    fn finds_the_negotiated_id() {
        let sdp = "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
                   a=extmap:5/sendrecv http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";
        assert_eq!(transport_cc_id(sdp), Some(5));
        assert_eq!(transport_cc_id("a=extmap:1 urn:x\r\n"), None);
    }
}
