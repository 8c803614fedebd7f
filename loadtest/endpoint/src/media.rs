//! Identifiable synthetic media: every endpoint sends a tone of its own frequency and video
//! frames that carry its own tag, so a receiver can prove whom it hears and sees.

use std::f32::consts::TAU;

use thiserror::Error;

use crate::sframe::MAX_OVERHEAD;

/// Audio sample rate used for every synthetic Opus stream.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms Opus frame at [`SAMPLE_RATE`].
pub const FRAME_SAMPLES: usize = 960;
/// RTP clock ticks of one Opus frame.
pub const AUDIO_FRAME_TICKS: u32 = FRAME_SAMPLES as u32;

#[derive(Debug, Error)]
pub enum MediaError {
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
}

/// Encodes a continuous sine tone into 20 ms Opus packets.
pub struct ToneSource {
    encoder: opus::Encoder,
    phase: f32,
    step: f32,
    pcm: Vec<i16>,
    out: Vec<u8>,
}

impl std::fmt::Debug for ToneSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToneSource")
            .field("step", &self.step)
            .finish()
    }
}

impl ToneSource {
    pub fn new(freq_hz: f32) -> Result<Self, MediaError> {
        let mut encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Audio)?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
        Ok(Self {
            encoder,
            phase: 0.0,
            step: TAU * freq_hz / SAMPLE_RATE as f32,
            pcm: vec![0; FRAME_SAMPLES],
            out: vec![0; 1500],
        })
    }

    /// The next 20 ms of tone as one Opus packet, with room to be sealed in place (SFrame)
    /// without growing.
    pub fn next_packet(&mut self) -> Result<Vec<u8>, MediaError> {
        for sample in &mut self.pcm {
            *sample = (self.phase.sin() * 8_000.0) as i16;
            self.phase = (self.phase + self.step) % TAU;
        }
        let len = self.encoder.encode(&self.pcm, &mut self.out)?;
        let mut packet = Vec::with_capacity(len + MAX_OVERHEAD);
        packet.extend_from_slice(&self.out[..len]);
        Ok(packet)
    }
}

/// Decodes a received Opus stream and finds the tone in it.
pub struct ToneAnalyzer {
    decoder: opus::Decoder,
    pcm: Vec<i16>,
    /// The most recent decoded samples, for the frequency estimate.
    recent: Vec<i16>,
    frames_decoded: u64,
}

impl std::fmt::Debug for ToneAnalyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToneAnalyzer")
            .field("frames_decoded", &self.frames_decoded)
            .finish()
    }
}

/// Samples kept for the frequency estimate: 200 ms.
const ANALYSIS_SAMPLES: usize = 9_600;

impl ToneAnalyzer {
    pub fn new() -> Result<Self, MediaError> {
        Ok(Self {
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
            pcm: vec![0; 5_760],
            recent: Vec::with_capacity(ANALYSIS_SAMPLES * 2),
            frames_decoded: 0,
        })
    }

    /// Decodes one Opus packet.
    pub fn push_packet(&mut self, packet: &[u8]) -> Result<(), MediaError> {
        let n = self.decoder.decode(packet, &mut self.pcm, false)?;
        self.frames_decoded += 1;
        self.recent.extend_from_slice(&self.pcm[..n]);
        if self.recent.len() > ANALYSIS_SAMPLES {
            let excess = self.recent.len() - ANALYSIS_SAMPLES;
            self.recent.drain(..excess);
        }
        Ok(())
    }

    pub fn frames_decoded(&self) -> u64 {
        self.frames_decoded
    }

    /// The strongest frequency between 100 Hz and 4 kHz in the recent audio, in 5 Hz steps,
    /// or `None` before enough audio arrived.
    pub fn dominant_frequency(&self) -> Option<f32> {
        dominant_frequency(&self.recent, SAMPLE_RATE)
    }
}

/// The strongest frequency between 100 Hz and 4 kHz, by Goertzel power in 5 Hz steps.
pub fn dominant_frequency(samples: &[i16], sample_rate: u32) -> Option<f32> {
    if samples.len() < (sample_rate / 20) as usize {
        return None;
    }
    let mut best = (0.0_f32, 0.0_f32);
    let mut freq = 100.0_f32;
    while freq <= 4_000.0 {
        let power = goertzel(samples, sample_rate, freq);
        if power > best.1 {
            best = (freq, power);
        }
        freq += 5.0;
    }
    (best.1 > 0.0).then_some(best.0)
}

fn goertzel(samples: &[i16], sample_rate: u32, freq: f32) -> f32 {
    let coeff = 2.0 * (TAU * freq / sample_rate as f32).cos();
    let (mut s1, mut s2) = (0.0_f32, 0.0_f32);
    for &x in samples {
        let s0 = x as f32 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// Magic bytes before the tag in a synthetic frame.
const TAG_MAGIC: [u8; 4] = *b"MEET";

/// The video codec a [`VideoSource`] imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyntheticCodec {
    #[default]
    Vp8,
    H264,
}

/// Makes video frames whose headers are valid for their codec (so that packetizers,
/// depacketizers and the SFU's keyframe detection treat them as real video) and whose bodies
/// carry the sender's tag. They are not decodable pictures; the load tester's real-video mode
/// is separate.
///
/// The tag and frame number are written as ASCII hex after [`TAG_MAGIC`], so a frame never
/// contains zero bytes after its header: an H.264 packetizer would otherwise mistake them for
/// start codes.
#[derive(Debug)]
pub struct VideoSource {
    tag: u64,
    frame_number: u64,
    body_len: usize,
    codec: SyntheticCodec,
}

impl VideoSource {
    /// A VP8 source; `body_len` pads each frame to roughly that many bytes, to set the bitrate.
    pub fn new(tag: u64, body_len: usize) -> Self {
        Self::with_codec(tag, body_len, SyntheticCodec::Vp8)
    }

    pub fn with_codec(tag: u64, body_len: usize, codec: SyntheticCodec) -> Self {
        Self {
            tag,
            frame_number: 0,
            body_len: body_len.max(48),
            codec,
        }
    }

    /// The next frame; a keyframe when asked. It has room to be sealed in place (SFrame)
    /// without growing.
    pub fn next_frame(&mut self, keyframe: bool) -> Vec<u8> {
        self.frame_number += 1;
        let mut frame = Vec::with_capacity(self.body_len + 10 + MAX_OVERHEAD);
        match self.codec {
            SyntheticCodec::Vp8 => {
                // RFC 6386 section 9.1: a 3-byte frame tag (bit 0 clear means keyframe,
                // show_frame set, first partition size), then for keyframes a start code and
                // the dimensions.
                let size: u32 = 16;
                let tag_bits = (if keyframe { 0 } else { 1 }) | (1 << 4) | (size << 5);
                frame.extend_from_slice(&tag_bits.to_le_bytes()[..3]);
                if keyframe {
                    frame.extend_from_slice(&[0x9d, 0x01, 0x2a]);
                    frame.extend_from_slice(&320u16.to_le_bytes());
                    frame.extend_from_slice(&240u16.to_le_bytes());
                }
            }
            SyntheticCodec::H264 => {
                // Annex B: a start code, then an IDR slice (type 5) or a non-IDR slice
                // (type 1), with nal_ref_idc set.
                frame.extend_from_slice(&[0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }]);
            }
        }
        frame.extend_from_slice(&TAG_MAGIC);
        frame.extend_from_slice(format!("{:016x}{:016x}", self.tag, self.frame_number).as_bytes());
        frame.resize(self.body_len, 0x5a);
        frame
    }
}

/// Whether a depacketized frame of `codec` is a keyframe.
pub fn frame_is_keyframe(codec: SyntheticCodec, frame: &[u8]) -> bool {
    match codec {
        SyntheticCodec::Vp8 => vp8_is_keyframe(frame),
        // Any NAL unit in the access unit that is an IDR slice or a sequence parameter set.
        SyntheticCodec::H264 => frame
            .windows(4)
            .any(|w| w[..3] == [0, 0, 1] && matches!(w[3] & 0x1f, 5 | 7)),
    }
}

/// Whether a VP8 frame (depacketized) is a keyframe.
pub fn vp8_is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

/// The sender tag a [`VideoSource`] frame of any codec carries.
pub fn frame_tag(frame: &[u8]) -> Option<u64> {
    let start = frame.windows(4).take(64).position(|w| w == TAG_MAGIC)? + 4;
    let hex = std::str::from_utf8(frame.get(start..start + 16)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// Where a simulcast layer's index sits in a frame tag: layer `n` of the sender tagged `t`
/// carries `t | n << LAYER_SHIFT`, so layer 0 carries the plain tag.
pub const LAYER_SHIFT: u32 = 48;

/// The tag of one simulcast layer of the sender tagged `tag`.
pub fn layer_tag(tag: u64, layer: u8) -> u64 {
    tag | (u64::from(layer) << LAYER_SHIFT)
}

/// A frame tag split into the sender's tag and the simulcast layer.
pub fn split_tag(tag: u64) -> (u64, u8) {
    (tag & ((1 << LAYER_SHIFT) - 1), (tag >> LAYER_SHIFT) as u8)
}

/// The sender tag a VP8 [`VideoSource`] frame carries.
pub fn vp8_frame_tag(frame: &[u8]) -> Option<u64> {
    frame_tag(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_survives_opus() {
        let mut source = ToneSource::new(660.0).expect("encoder");
        let mut analyzer = ToneAnalyzer::new().expect("decoder");
        for _ in 0..25 {
            let packet = source.next_packet().expect("encode");
            analyzer.push_packet(&packet).expect("decode");
        }
        let freq = analyzer.dominant_frequency().expect("enough audio");
        assert!((freq - 660.0).abs() <= 10.0, "heard {freq} Hz");
        assert_eq!(analyzer.frames_decoded(), 25);
    }

    #[test]
    fn frames_carry_their_tag() {
        let mut source = VideoSource::new(0xfeed, 200);
        let key = source.next_frame(true);
        let delta = source.next_frame(false);
        assert!(vp8_is_keyframe(&key));
        assert!(!vp8_is_keyframe(&delta));
        assert_eq!(vp8_frame_tag(&key), Some(0xfeed));
        assert_eq!(vp8_frame_tag(&delta), Some(0xfeed));
        assert_eq!(key.len(), 200);
    }

    #[test]
    fn h264_frames_carry_their_tag_without_start_code_emulation() {
        let mut source = VideoSource::with_codec(0x1000, 300, SyntheticCodec::H264);
        let key = source.next_frame(true);
        let delta = source.next_frame(false);
        assert!(frame_is_keyframe(SyntheticCodec::H264, &key));
        assert!(!frame_is_keyframe(SyntheticCodec::H264, &delta));
        assert_eq!(frame_tag(&key), Some(0x1000));
        assert_eq!(frame_tag(&delta), Some(0x1000));
        assert!(!key[5..].contains(&0), "no zero byte after the NAL header");
    }
}
