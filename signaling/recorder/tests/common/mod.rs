//! Synthetic publishers and file checks shared by the recorder's tests.

#![allow(dead_code)]

use std::f32::consts::TAU;
use std::path::{Path, PathBuf};
use std::process::Command;

use meet_recorder::{Codec, MediaKind, MediaPacket, Recording, TrackInfo};

/// A fresh directory under cargo's temporary directory for integration tests.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("recorder-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One RTP packet, owned.
#[derive(Debug, Clone)]
pub struct Rtp {
    pub track: u64,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
    pub at_ms: u64,
}

impl Rtp {
    pub fn as_packet(&self) -> MediaPacket<'_> {
        MediaPacket {
            track: self.track,
            seq: self.seq,
            rtp_timestamp: self.ts,
            marker: self.marker,
            payload: &self.payload,
            at_ms: self.at_ms,
        }
    }
}

/// A participant sending an Opus tone at its own frequency and VP8 frames of about
/// `frame_bytes`, with a keyframe every `keyframe_every` frames.
#[derive(Debug)]
pub struct Publisher {
    pub id: u64,
    pub freq: f32,
    pub frame_bytes: usize,
    pub keyframe_every: u32,
}

impl Publisher {
    pub fn audio_track(&self) -> u64 {
        self.id * 10 + 1
    }

    pub fn video_track(&self) -> u64 {
        self.id * 10 + 2
    }

    pub fn add_tracks(&self, rec: &mut Recording, at_ms: u64) {
        let name = format!("participant {}", self.id);
        rec.add_track(
            TrackInfo {
                track: self.audio_track(),
                participant_id: self.id,
                participant: name.clone(),
                kind: MediaKind::Audio,
                source: "microphone".into(),
                codec: Codec::Opus,
                clock_rate: 48_000,
            },
            at_ms,
        )
        .expect("add audio");
        rec.add_track(
            TrackInfo {
                track: self.video_track(),
                participant_id: self.id,
                participant: name,
                kind: MediaKind::Video,
                source: "camera".into(),
                codec: Codec::Vp8,
                clock_rate: 90_000,
            },
            at_ms,
        )
        .expect("add video");
    }

    /// `duration_ms` of media starting at `start_ms`, as packets in sending order.
    pub fn packets(&self, start_ms: u64, duration_ms: u64) -> Vec<Rtp> {
        let mut out = Vec::new();
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio)
                .expect("encoder");
        encoder
            .set_bitrate(opus::Bitrate::Bits(32_000))
            .expect("bitrate");
        let mut phase = 0.0f32;
        let step = TAU * self.freq / 48_000.0;
        let mut pcm = [0i16; 960];
        let mut buf = [0u8; 1500];
        let ts0 = (self.id as u32).wrapping_mul(0x9e37_79b9);
        let mut seq = (self.id as u16).wrapping_mul(7919);
        for i in 0..duration_ms / 20 {
            for s in &mut pcm {
                *s = (phase.sin() * 8_000.0) as i16;
                phase = (phase + step) % TAU;
            }
            let len = encoder.encode(&pcm, &mut buf).expect("encode");
            out.push(Rtp {
                track: self.audio_track(),
                seq,
                ts: ts0.wrapping_add(i as u32 * 960),
                marker: i == 0,
                payload: buf[..len].to_vec(),
                at_ms: start_ms + i * 20,
            });
            seq = seq.wrapping_add(1);
        }
        let vts0 = ts0.wrapping_mul(3);
        let mut vseq = seq.wrapping_mul(31);
        let frames = duration_ms * 30 / 1000;
        for f in 0..frames {
            let keyframe = f % u64::from(self.keyframe_every) == 0;
            let frame = vp8_frame(keyframe, self.frame_bytes, f);
            let chunks: Vec<&[u8]> = frame.chunks(1_100).collect();
            let at_ms = start_ms + f * 1000 / 30;
            for (i, chunk) in chunks.iter().enumerate() {
                // RFC 7741 descriptor without extensions: S set on the frame's first packet.
                let mut payload = vec![if i == 0 { 0x10 } else { 0 }];
                payload.extend_from_slice(chunk);
                out.push(Rtp {
                    track: self.video_track(),
                    seq: vseq,
                    ts: vts0.wrapping_add(f as u32 * 3_000),
                    marker: i + 1 == chunks.len(),
                    payload,
                    at_ms,
                });
                vseq = vseq.wrapping_add(1);
            }
        }
        out
    }
}

/// A VP8 frame's header: the 3-byte frame tag, and on a keyframe the start code and a
/// 320×240 size.
pub fn vp8_header(keyframe: bool) -> Vec<u8> {
    let first_partition: u32 = 16;
    let tag = u32::from(!keyframe) | (1 << 4) | (first_partition << 5);
    let mut frame = tag.to_le_bytes()[..3].to_vec();
    if keyframe {
        frame.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        frame.extend_from_slice(&320u16.to_le_bytes());
        frame.extend_from_slice(&240u16.to_le_bytes());
    }
    frame
}

/// A VP8 frame with a valid frame tag (and for keyframes, start code and 320x240); its body
/// is filler, so it parses but does not decode to a picture.
pub fn vp8_frame(keyframe: bool, len: usize, n: u64) -> Vec<u8> {
    let mut frame = vp8_header(keyframe);
    frame.extend_from_slice(format!("frame{n:08}").as_bytes());
    frame.resize(len.max(frame.len()), 0x5a);
    frame
}

/// All publishers' packets merged in arrival order.
pub fn merged(publishers: &[Publisher], start_ms: u64, duration_ms: u64) -> Vec<Rtp> {
    let mut all: Vec<Rtp> = publishers
        .iter()
        .flat_map(|p| p.packets(start_ms, duration_ms))
        .collect();
    all.sort_by_key(|p| p.at_ms);
    all
}

/// Feeds packets, flushing every 500 ms of arrival time as the caller is told to.
pub fn feed(rec: &mut Recording, packets: &[Rtp]) {
    let mut next_flush = packets.first().map_or(0, |p| p.at_ms) + 500;
    for p in packets {
        if p.at_ms >= next_flush {
            rec.flush().expect("flush");
            next_flush += 500;
        }
        rec.packet(&p.as_packet()).expect("packet");
    }
}

/// `ffprobe`'s view of a file, or `None` (with a note) when ffprobe is not installed here.
/// In CI a missing ffprobe fails the test instead.
pub fn ffprobe(path: &Path) -> Option<serde_json::Value> {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_format",
            "-show_streams",
            "-of",
            "json",
        ])
        .arg(path)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "ffprobe is required in CI (apt-get install ffmpeg)"
            );
            eprintln!(
                "note: ffprobe not installed; skipping the check of {}",
                path.display()
            );
            return None;
        }
        Err(e) => panic!("ffprobe: {e}"),
    };
    assert!(
        output.status.success(),
        "ffprobe rejects {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("ffprobe json"))
}

/// Checks that ffprobe sees one stream of `codec` lasting about `expected_s`.
pub fn assert_file(path: &Path, codec: &str, expected_s: f64, tolerance_s: f64) {
    let Some(probe) = ffprobe(path) else {
        return;
    };
    let stream = &probe["streams"][0];
    assert_eq!(stream["codec_name"], codec, "{}: {probe}", path.display());
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("{} has no duration: {probe}", path.display()));
    assert!(
        (duration - expected_s).abs() <= tolerance_s,
        "{}: duration {duration} s, expected about {expected_s} s",
        path.display()
    );
}

/// Decodes an Ogg/Opus file to mono 48 kHz samples, pre-skip removed.
pub fn decode_ogg_opus(path: &Path) -> Vec<i16> {
    let file = std::fs::File::open(path).expect("open");
    let mut reader = ogg::PacketReader::new(std::io::BufReader::new(file));
    let head = reader.read_packet_expected().expect("OpusHead");
    assert_eq!(&head.data[..8], b"OpusHead");
    let pre_skip = usize::from(u16::from_le_bytes([head.data[10], head.data[11]]));
    let tags = reader.read_packet_expected().expect("OpusTags");
    assert_eq!(&tags.data[..8], b"OpusTags");
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
    let mut out = Vec::new();
    let mut pcm = vec![0i16; 5_760];
    while let Some(packet) = reader.read_packet().expect("ogg") {
        let n = decoder
            .decode(&packet.data, &mut pcm, false)
            .expect("decode");
        out.extend_from_slice(&pcm[..n]);
    }
    out.drain(..pre_skip.min(out.len()));
    out
}

/// The power of `freq` in `samples` (Goertzel), normalized by length.
pub fn tone_power(samples: &[i16], freq: f32) -> f32 {
    let coeff = 2.0 * (TAU * freq / 48_000.0).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s0 = f32::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len() as f32).powi(2)
}
