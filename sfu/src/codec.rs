//! The few codec facts the SFU reads from RTP payloads without decoding them.
//!
//! Only payload descriptors and the first bytes of a frame are read. With end-to-end
//! encryption those bytes stay in clear, so keyframe detection keeps working.

/// The video codecs the SFU forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
    Av1,
}

impl VideoCodec {
    /// Maps str0m's codec to ours; `None` for audio and codecs we do not inspect.
    pub fn from_str0m(codec: str0m::format::Codec) -> Option<Self> {
        use str0m::format::Codec;
        match codec {
            Codec::Vp8 => Some(Self::Vp8),
            Codec::Vp9 => Some(Self::Vp9),
            Codec::H264 => Some(Self::H264),
            Codec::Av1 => Some(Self::Av1),
            _ => None,
        }
    }
}

/// The WebRTC mime type of a codec (`RTCRtpCodec.mimeType`): what `publication_added` says a
/// publication is sent in, so that a client can tell whether it decodes it.
pub fn mime_type(codec: str0m::format::Codec) -> Option<&'static str> {
    use str0m::format::Codec;
    Some(match codec {
        Codec::Opus => "audio/opus",
        Codec::PCMU => "audio/PCMU",
        Codec::PCMA => "audio/PCMA",
        Codec::Vp8 => "video/VP8",
        Codec::Vp9 => "video/VP9",
        Codec::H264 => "video/H264",
        Codec::H265 => "video/H265",
        Codec::Av1 => "video/AV1",
        _ => return None,
    })
}

/// Whether this RTP payload starts a keyframe. Truncated or malformed payloads are "no".
pub fn is_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => rtp_payload::vp8::starts_keyframe(payload),
        VideoCodec::Vp9 => vp9_is_keyframe(payload),
        VideoCodec::H264 => h264_is_keyframe(payload),
        VideoCodec::Av1 => av1_is_keyframe(payload),
    }
}

/// The VP9 payload descriptor's P bit clear ("not inter-predicted") on the packet that begins
/// a frame (B bit), in the lowest spatial layer.
fn vp9_is_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let inter_predicted = first & 0x40 != 0;
    let begins_frame = first & 0x08 != 0;
    let has_layer_indices = first & 0x20 != 0;
    if inter_predicted || !begins_frame {
        return false;
    }
    if !has_layer_indices {
        return true;
    }
    // Skip the picture id to reach the layer indices and check the spatial id is 0.
    let mut offset = 1;
    if first & 0x80 != 0 {
        let Some(&pid) = payload.get(offset) else {
            return false;
        };
        offset += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    payload
        .get(offset)
        .is_some_and(|layers| (layers >> 1) & 0x07 == 0)
}

/// H.264 (RFC 6184): an IDR slice or an SPS, alone, in a STAP-A, or starting an FU-A.
fn h264_is_keyframe(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let Some(nal) = rest.get(2..2 + size) else {
                    return false;
                };
                if nal.first().is_some_and(|b| matches!(b & 0x1f, IDR | SPS)) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && matches!(fu & 0x1f, IDR | SPS)),
        _ => false,
    }
}

/// AV1 RTP payload: the N bit of the aggregation header marks the first packet of a coded
/// video sequence, which starts with a keyframe.
fn av1_is_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_descriptor_variants() {
        // Short descriptor, start of partition 0, keyframe.
        assert!(is_keyframe(VideoCodec::Vp8, &[0x10, 0x00, 0x9d]));
        // Same with a delta frame.
        assert!(!is_keyframe(VideoCodec::Vp8, &[0x10, 0x01, 0x9d]));
        // Extended: I bit with a 15-bit picture id, then L and T/K bytes.
        assert!(is_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0xe0, 0x80, 0x01, 0x00, 0x00, 0x00]
        ));
        // Not the start of a partition.
        assert!(!is_keyframe(VideoCodec::Vp8, &[0x00, 0x00]));
        // Truncated descriptors never panic.
        for len in 0..7 {
            let _ = is_keyframe(
                VideoCodec::Vp8,
                &[0x90, 0xe0, 0x80, 0x01, 0x00, 0x00, 0x00][..len],
            );
        }
    }

    #[test]
    fn h264_nal_types() {
        assert!(is_keyframe(VideoCodec::H264, &[0x65]));
        assert!(!is_keyframe(VideoCodec::H264, &[0x41]));
        // STAP-A holding an SPS.
        assert!(is_keyframe(
            VideoCodec::H264,
            &[0x18, 0x00, 0x02, 0x67, 0x42]
        ));
        // STAP-A whose size runs past the end.
        assert!(!is_keyframe(VideoCodec::H264, &[0x18, 0xff, 0xff, 0x67]));
        // FU-A start of an IDR, and a continuation.
        assert!(is_keyframe(VideoCodec::H264, &[0x7c, 0x85]));
        assert!(!is_keyframe(VideoCodec::H264, &[0x7c, 0x05]));
    }

    #[test]
    fn vp9_and_av1() {
        assert!(is_keyframe(VideoCodec::Vp9, &[0x08]));
        assert!(!is_keyframe(VideoCodec::Vp9, &[0x48]));
        // Layer indices present with spatial id 1: not the base keyframe.
        assert!(!is_keyframe(VideoCodec::Vp9, &[0x28, 0x02]));
        assert!(is_keyframe(VideoCodec::Av1, &[0x08]));
        assert!(!is_keyframe(VideoCodec::Av1, &[0x10]));
        assert!(!is_keyframe(VideoCodec::Av1, &[]));
    }
}
