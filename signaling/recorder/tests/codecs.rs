//! Real VP8, VP9 and AV1 streams (2 s of ffmpeg's test pattern at 160x120, a keyframe every
//! 15 frames, in `tests/data/*.ivf`) packetized as a browser would, recorded, and decoded by
//! ffprobe frame by frame. The fixtures were made with Debian's ffmpeg 5.1:
//!
//! ```text
//! SRC="-f lavfi -i testsrc=size=160x120:rate=30 -t 2 -pix_fmt yuv420p"
//! ffmpeg $SRC -c:v libvpx -g 15 -deadline realtime -lag-in-frames 0 -b:v 200k vp8.ivf
//! ffmpeg $SRC -c:v libvpx-vp9 -g 15 -deadline realtime -lag-in-frames 0 -auto-alt-ref 0 \
//!     -b:v 200k vp9.ivf
//! ffmpeg $SRC -c:v libaom-av1 -g 15 -cpu-used 8 -usage realtime -lag-in-frames 0 \
//!     -b:v 200k av1.ivf
//! ```

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use meet_recorder::{Codec, MediaKind, MediaPacket, Recording, TrackInfo};

const MTU: usize = 400;

/// The frames of an IVF file.
fn ivf_frames(name: &str) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let data = std::fs::read(path).expect("fixture");
    assert_eq!(&data[..4], b"DKIF");
    let mut pos = usize::from(u16::from_le_bytes([data[6], data[7]]));
    let mut frames = Vec::new();
    while pos + 12 <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("len")) as usize;
        frames.push(data[pos + 12..pos + 12 + len].to_vec());
        pos += 12 + len;
    }
    frames
}

fn vp8_payloads(frame: &[u8]) -> Vec<Vec<u8>> {
    frame
        .chunks(MTU)
        .enumerate()
        .map(|(i, chunk)| {
            // X set with a 15-bit picture id, to exercise the extensions; S on the first.
            let mut p = vec![0x80 | if i == 0 { 0x10 } else { 0 }, 0x80, 0x81, 0x23];
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}

fn vp9_payloads(frame: &[u8]) -> Vec<Vec<u8>> {
    // Profile 0: frame_type is bit 2 of the first byte, 0 for a keyframe.
    let inter = (frame[0] >> 2) & 1 == 1;
    let chunks: Vec<&[u8]> = frame.chunks(MTU).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut d = if inter { 0x40 } else { 0 };
            if i == 0 {
                d |= 0x08;
            }
            if i + 1 == chunks.len() {
                d |= 0x04;
            }
            let mut p = vec![d];
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}

fn leb128(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The RTP payloads for one AV1 temporal unit: OBUs without size fields and without the
/// temporal delimiter, each a length-prefixed element, fragmented across packets.
fn av1_payloads(tu: &[u8]) -> Vec<Vec<u8>> {
    let mut obus = Vec::new();
    let mut pos = 0;
    while pos < tu.len() {
        let header = tu[pos];
        let header_len = if header & 0x04 != 0 { 2 } else { 1 };
        let mut p = pos + header_len;
        let mut size = 0usize;
        let mut shift = 0;
        loop {
            let b = tu[p];
            p += 1;
            size |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        if (header >> 3) & 0x0f != 2 {
            let mut obu = vec![header & !0x02];
            obu.extend_from_slice(&tu[pos + 1..pos + header_len]);
            obu.extend_from_slice(&tu[p..p + size]);
            obus.push(obu);
        }
        pos = p + size;
    }
    let mut packets = Vec::new();
    let mut current = vec![0u8];
    for obu in &obus {
        let mut rest: &[u8] = obu;
        while !rest.is_empty() {
            let room = MTU.saturating_sub(current.len() + 2);
            if room == 0 {
                packets.push(std::mem::replace(&mut current, vec![0u8]));
                continue;
            }
            let take = rest.len().min(room);
            leb128(take, &mut current);
            current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if !rest.is_empty() {
                // Y: the last element continues in the next packet, which says Z.
                current[0] |= 0x40;
                packets.push(std::mem::replace(&mut current, vec![0x80]));
            }
        }
    }
    packets.push(current);
    packets
}

/// Records `frames` as one publication and returns the file ffprobe should read.
fn record(
    name: &str,
    codec: Codec,
    frames: &[Vec<u8>],
    payloads: fn(&[u8]) -> Vec<Vec<u8>>,
    drop: impl Fn(usize, usize) -> bool,
) -> std::path::PathBuf {
    let dir = test_dir(name);
    let mut rec = Recording::create(&dir, name, "room", 0).expect("create");
    rec.add_track(
        TrackInfo {
            track: 7,
            participant_id: 1,
            participant: "camera".into(),
            kind: MediaKind::Video,
            source: "camera".into(),
            codec,
            clock_rate: 90_000,
        },
        0,
    )
    .expect("add");
    let mut seq = 65_000u16;
    for (f, frame) in frames.iter().enumerate() {
        let packets = payloads(frame);
        let at_ms = 100 + f as u64 * 1000 / 30;
        for (i, payload) in packets.iter().enumerate() {
            seq = seq.wrapping_add(1);
            if drop(f, i) {
                continue;
            }
            rec.packet(&MediaPacket {
                track: 7,
                seq,
                rtp_timestamp: (u32::MAX - 40_000).wrapping_add(f as u32 * 3_000),
                marker: i + 1 == packets.len(),
                payload,
                at_ms,
            })
            .expect("packet");
        }
        if f % 15 == 14 {
            rec.flush().expect("flush");
        }
    }
    let summary = rec.finish(2_100).expect("finish");
    assert_eq!(summary.status, "completed");
    dir.join("track-7.webm")
}

/// Decodes every frame with ffprobe; returns (codec, width, height, frames, duration s).
fn decode(path: &Path) -> Option<(String, u64, u64, u64, f64)> {
    ffprobe(path)?;
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_format",
            "-show_streams",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        output.stderr.is_empty(),
        "decoding {} reports: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let probe: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let s = &probe["streams"][0];
    Some((
        s["codec_name"].as_str().expect("codec").to_owned(),
        s["width"].as_u64().expect("width"),
        s["height"].as_u64().expect("height"),
        s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .expect("frames"),
        probe["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .expect("duration"),
    ))
}

fn check(codec: Codec, fixture: &str, name: &str, payloads: fn(&[u8]) -> Vec<Vec<u8>>) {
    let frames = ivf_frames(fixture);
    assert_eq!(frames.len(), 60);
    let path = record(name, codec, &frames, payloads, |_, _| false);
    let Some((codec_name, width, height, decoded, duration)) = decode(&path) else {
        return;
    };
    assert_eq!(codec_name, name);
    assert_eq!((width, height), (160, 120));
    assert_eq!(decoded, 60);
    assert!((duration - 2.0).abs() < 0.05, "duration {duration}");

    // The first 20 frames are missing, and one packet of frame 33 is lost: the track starts
    // at the keyframe at 30, and after the loss waits for the keyframe at 45.
    let path = record(
        &format!("{name}-lossy"),
        codec,
        &frames,
        payloads,
        |f, i| f < 20 || (f == 33 && i == 0),
    );
    let Some((_, _, _, decoded, duration)) = decode(&path) else {
        return;
    };
    assert_eq!(decoded, 3 + 15);
    assert!((duration - 1.0).abs() < 0.05, "duration {duration}");
}

#[test]
fn vp8_is_recorded_and_decodes() {
    check(Codec::Vp8, "vp8.ivf", "vp8", vp8_payloads);
}

#[test]
fn vp9_is_recorded_and_decodes() {
    check(Codec::Vp9, "vp9.ivf", "vp9", vp9_payloads);
}

#[test]
fn av1_is_recorded_and_decodes() {
    check(Codec::Av1, "av1.ivf", "av1", av1_payloads);
}
