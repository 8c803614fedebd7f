//! The VP8 payload descriptor (RFC 7741 §4.2), which starts every VP8 RTP payload:
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID | (required)
//!      +-+-+-+-+-+-+-+-+
//! X:   |I|L|T|K| RSV   | (optional)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PictureID   | (optional, 7 or 15 bits)
//!      +-+-+-+-+-+-+-+-+
//! L:   |   TL0PICIDX   | (optional)
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  | (optional)
//!      +-+-+-+-+-+-+-+-+
//! ```
//!
//! The VP8 frame data follows; its first byte, on the packet that starts a frame, holds the
//! frame tag whose bit 0 is clear on a keyframe (RFC 6386 §9.1).

/// A frame's picture id: where it sits in the payload, its form and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    pub offset: usize,
    /// The 15-bit form (M bit set); otherwise 7 bits.
    pub long: bool,
    pub value: u16,
}

/// One payload's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Bytes before the VP8 data.
    pub len: usize,
    /// The S bit on partition 0: this packet starts a frame.
    pub starts_frame: bool,
    pub picture_id: Option<PictureId>,
    /// TL0PICIDX: where it sits and its value.
    pub tl0: Option<(usize, u8)>,
}

impl Descriptor {
    /// Reads the descriptor at the start of `payload`; `None` when it is truncated or no VP8
    /// data follows it.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let first = *payload.first()?;
        let mut descriptor = Self {
            len: 1,
            starts_frame: first & 0x10 != 0 && first & 0x07 == 0,
            picture_id: None,
            tl0: None,
        };
        if first & 0x80 != 0 {
            let extension = *payload.get(1)?;
            descriptor.len = 2;
            if extension & 0x80 != 0 {
                let offset = descriptor.len;
                let high = *payload.get(offset)?;
                let long = high & 0x80 != 0;
                let value = if long {
                    u16::from_be_bytes([high & 0x7f, *payload.get(offset + 1)?])
                } else {
                    u16::from(high)
                };
                descriptor.picture_id = Some(PictureId {
                    offset,
                    long,
                    value,
                });
                descriptor.len += if long { 2 } else { 1 };
            }
            if extension & 0x40 != 0 {
                descriptor.tl0 = Some((descriptor.len, *payload.get(descriptor.len)?));
                descriptor.len += 1;
            }
            if extension & 0x30 != 0 {
                descriptor.len += 1;
            }
        }
        (payload.len() > descriptor.len).then_some(descriptor)
    }

    /// The VP8 data after the descriptor.
    pub fn data<'a>(&self, payload: &'a [u8]) -> &'a [u8] {
        payload.get(self.len..).unwrap_or_default()
    }

    /// Whether this packet starts a keyframe.
    pub fn starts_keyframe(&self, payload: &[u8]) -> bool {
        self.starts_frame
            && self
                .data(payload)
                .first()
                .is_some_and(|tag| tag & 0x01 == 0)
    }
}

/// Whether a VP8 RTP payload starts a keyframe.
pub fn starts_keyframe(payload: &[u8]) -> bool {
    Descriptor::parse(payload).is_some_and(|d| d.starts_keyframe(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_found_and_skipped() {
        // X and S set, partition 0; I (15-bit picture id 0x0123), L (5) and T; a keyframe.
        let packet = [0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x10, 0xaa];
        let d = Descriptor::parse(&packet).expect("descriptor");
        assert_eq!(d.len, 6);
        assert!(d.starts_frame);
        assert_eq!(
            d.picture_id,
            Some(PictureId {
                offset: 2,
                long: true,
                value: 0x0123
            })
        );
        assert_eq!(d.tl0, Some((4, 5)));
        assert_eq!(d.data(&packet), &[0x10, 0xaa]);
        assert!(d.starts_keyframe(&packet));
        // A 7-bit picture id only, a delta frame.
        let short = [0x90, 0x80, 0x05, 0x31];
        let d = Descriptor::parse(&short).expect("descriptor");
        assert_eq!(
            d.picture_id,
            Some(PictureId {
                offset: 2,
                long: false,
                value: 5
            })
        );
        assert_eq!((d.tl0, d.len), (None, 3));
        assert!(!d.starts_keyframe(&short));
        // No extension at all.
        let plain = [0x10, 0x00, 0x9d];
        assert_eq!(Descriptor::parse(&plain).map(|d| d.len), Some(1));
        assert!(starts_keyframe(&plain));
    }

    #[test]
    fn frames_start_only_on_partition_zero_with_the_s_bit() {
        assert!(
            !Descriptor::parse(&[0x80, 0x80, 0x05, 0x31])
                .expect("d")
                .starts_frame
        );
        assert!(!Descriptor::parse(&[0x11, 0x31]).expect("d").starts_frame);
        assert!(!starts_keyframe(&[0x00, 0x00]));
    }

    #[test]
    fn truncated_or_empty_payloads_are_refused() {
        let packet = [0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x10];
        for len in 0..packet.len() {
            assert_eq!(Descriptor::parse(&packet[..len]), None, "{len} bytes");
        }
        assert!(Descriptor::parse(&packet).is_some());
    }
}
