//! An end-to-end encrypted meeting (docs/e2ee.md) is recorded as received: frames whose bytes
//! past the clear prefix are ciphertext land in the track files byte for byte, no mixed audio
//! is made, and the manifest says so. Nothing past the clear prefix is ever interpreted, so
//! ciphertext that happens to look like a frame count or a header changes nothing.

mod common;

use std::io::Read;
use std::path::Path;

use common::{Rtp, feed, test_dir, vp8_header};
use meet_recorder::{Codec, FileKind, MediaKind, Recording, TrackInfo, recover};

const AUDIO: u64 = 11;
const VIDEO: u64 = 12;
const VP9: u64 = 13;

/// A small deterministic generator (xorshift64*), so that a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn track(track: u64, kind: MediaKind, codec: Codec, clock_rate: u32) -> TrackInfo {
    TrackInfo {
        track,
        participant_id: 1,
        participant: "Xã A".into(),
        kind,
        source: match kind {
            MediaKind::Audio => "microphone".into(),
            MediaKind::Video => "camera".into(),
        },
        codec,
        clock_rate,
    }
}

/// An encrypted VP8 frame: its clear prefix (the 3-byte frame tag, and on a keyframe the start
/// code and a 320×240 size), then an SFrame header, ciphertext and a 16-byte tag, all noise.
fn encrypted_vp8(keyframe: bool, noise: &mut Noise) -> Vec<u8> {
    let mut frame = vp8_header(keyframe);
    // SFrame header: KID 0x123, CTR in one byte (docs/e2ee.md), then ciphertext and tag.
    frame.extend_from_slice(&[0x98, 0x01, 0x23, noise.next() as u8]);
    let len = 200 + noise.below(2_800) as usize;
    frame.extend(noise.bytes(len + 16));
    frame
}

/// An encrypted Opus packet: a clear TOC byte, then an SFrame header, ciphertext and tag.
/// `toc` code 3 puts ciphertext where a clear packet has its frame count.
fn encrypted_opus(toc: u8, noise: &mut Noise) -> Vec<u8> {
    let mut packet = vec![toc];
    let len = 1 + 17 + noise.below(80) as usize;
    packet.extend(noise.bytes(len));
    packet
}

/// The packets of every Opus packet in an Ogg file after its two header packets.
fn ogg_packets(path: &Path) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).expect("open");
    let mut reader = ogg::PacketReader::new(std::io::BufReader::new(file));
    let head = reader.read_packet_expected().expect("OpusHead");
    assert_eq!(&head.data[..8], b"OpusHead");
    let tags = reader.read_packet_expected().expect("OpusTags");
    assert_eq!(&tags.data[..8], b"OpusTags");
    let mut out = Vec::new();
    while let Some(packet) = reader.read_packet().expect("ogg") {
        out.push(packet.data);
    }
    out
}

/// The SimpleBlocks of a WebM file: (keyframe, frame bytes), in file order.
fn webm_frames(path: &Path) -> Vec<(bool, Vec<u8>)> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .expect("open")
        .read_to_end(&mut data)
        .expect("read");
    // EBML variable-length integers: the leading zeros of the first byte give the length.
    fn vint(data: &[u8], pos: &mut usize, keep_marker: bool) -> Option<u64> {
        let first = *data.get(*pos)?;
        let len = first.leading_zeros() as usize + 1;
        if len > 8 {
            return None;
        }
        let mut value = u64::from(if keep_marker {
            first
        } else {
            first & (0xffu16 >> len) as u8
        });
        for i in 1..len {
            value = (value << 8) | u64::from(*data.get(*pos + i)?);
        }
        *pos += len;
        Some(if !keep_marker && value == (1u64 << (7 * len)) - 1 {
            u64::MAX
        } else {
            value
        })
    }
    const SEGMENT: u64 = 0x1853_8067;
    const CLUSTER: u64 = 0x1F43_B675;
    const SIMPLE_BLOCK: u64 = 0xA3;
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let id = vint(&data, &mut pos, true).expect("element id");
        let size = vint(&data, &mut pos, false).expect("element size");
        match id {
            // Containers (often of unknown size): their children follow.
            SEGMENT | CLUSTER => {}
            SIMPLE_BLOCK => {
                let block = &data[pos..pos + size as usize];
                assert_eq!(block[0], 0x81, "track 1");
                frames.push((block[3] & 0x80 != 0, block[4..].to_vec()));
                pos += size as usize;
            }
            _ => pos += size as usize,
        }
    }
    frames
}

/// RTP packets of one VP8 frame, with a descriptor carrying a 15-bit picture id (as browsers
/// send), split at `mtu` bytes.
fn vp8_packets(frame: &[u8], picture_id: u16, seq: &mut u16, ts: u32, at_ms: u64) -> Vec<Rtp> {
    let chunks: Vec<&[u8]> = frame.chunks(1_100).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let start = if i == 0 { 0x10 } else { 0 };
            let mut payload = vec![
                0x80 | start,
                0x80,
                0x80 | (picture_id >> 8) as u8 & 0x7f,
                picture_id as u8,
            ];
            payload.extend_from_slice(chunk);
            let packet = Rtp {
                track: VIDEO,
                seq: *seq,
                ts,
                marker: i + 1 == chunks.len(),
                payload,
                at_ms,
            };
            *seq = seq.wrapping_add(1);
            packet
        })
        .collect()
}

#[test]
fn encrypted_frames_are_recorded_as_received_without_a_mix() {
    let dir = test_dir("e2ee");
    let mut noise = Noise(0x5eed_e2ee_0000_0007);
    let mut rec = Recording::create_e2ee(&dir, "rec-e2ee", "room-e2ee", 0).expect("create");
    rec.add_track(track(AUDIO, MediaKind::Audio, Codec::Opus, 48_000), 0)
        .expect("audio");
    rec.add_track(track(VIDEO, MediaKind::Video, Codec::Vp8, 90_000), 0)
        .expect("video");
    rec.add_track(track(VP9, MediaKind::Video, Codec::Vp9, 90_000), 0)
        .expect("vp9");
    assert!(
        !dir.join("mix.ogg").exists(),
        "no mix is started for ciphertext"
    );

    // Three seconds of audio, 20 ms a packet: CELT code 0 mostly, and code 3 packets (one
    // 20 ms frame each) whose encrypted second byte reads as any frame count, zero included.
    // Packets 40 to 42 are lost after an ordinary packet, 100 to 109 after a code 3 one.
    let mut packets = Vec::new();
    let mut sent_audio = Vec::new();
    let mut seq = 1_000u16;
    for i in 0..150u32 {
        let code3 = i % 7 == 3 || i == 99;
        let toc = if code3 { (31 << 3) | 3 } else { 0xfc };
        let mut payload = encrypted_opus(toc, &mut noise);
        if i == 3 {
            // Ciphertext that a clear reader would take for "zero frames", a malformed packet.
            payload[1] = 0;
        }
        let lost = (40..43).contains(&i) || (100..110).contains(&i);
        if !lost {
            sent_audio.push(payload.clone());
            packets.push(Rtp {
                track: AUDIO,
                seq,
                ts: 7_000 + i * 960,
                marker: i == 0,
                payload,
                at_ms: u64::from(i) * 20,
            });
        }
        seq = seq.wrapping_add(1);
    }
    // Three seconds of video at 30 frames a second, a keyframe every second.
    let mut sent_video = Vec::new();
    let mut vseq = 60_000u16;
    for f in 0..90u32 {
        let keyframe = f % 30 == 0;
        let frame = encrypted_vp8(keyframe, &mut noise);
        packets.extend(vp8_packets(
            &frame,
            f as u16 + 300,
            &mut vseq,
            90_000 + f * 3_000,
            u64::from(f) * 1_000 / 30,
        ));
        sent_video.push((keyframe, frame));
    }
    // A VP9 track's noise is never parsed: the track is not recorded.
    for i in 0..30u16 {
        packets.push(Rtp {
            track: VP9,
            seq: i,
            ts: u32::from(i) * 3_000,
            marker: true,
            payload: noise.bytes(300),
            at_ms: u64::from(i) * 33,
        });
    }
    packets.sort_by_key(|p| p.at_ms);
    feed(&mut rec, &packets);
    assert!(rec.wants_keyframe().is_empty(), "the VP8 track started");
    let summary = rec.finish(3_000).expect("finish");
    assert_eq!(summary.status, "completed");

    let kinds: Vec<FileKind> = summary.files.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [FileKind::Manifest, FileKind::Audio, FileKind::Video],
        "{summary:?}"
    );
    assert!(!dir.join("mix.ogg").exists());
    assert!(!dir.join(format!("track-{VP9}.webm")).exists());

    // Audio: every packet sent, byte for byte and in order; the gaps hold one-byte fillers (a
    // TOC alone, which no encrypted packet can be), and after the code 3 packet only past the
    // 120 ms it might have lasted: 3 fillers for the first gap, 10 - 5 for the second.
    let written = ogg_packets(&dir.join(format!("track-{AUDIO}.ogg")));
    let (fillers, frames): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
        written.into_iter().partition(|p| p.len() == 1);
    let first_difference = frames.iter().zip(&sent_audio).position(|(a, b)| a != b);
    assert!(
        frames.len() == sent_audio.len() && first_difference.is_none(),
        "audio is written as received: {} packets of {}, first difference at {first_difference:?}",
        frames.len(),
        sent_audio.len()
    );
    assert_eq!(fillers.len(), 3 + 5, "fillers: {fillers:?}");

    // Video: every frame, reassembled from its packets, byte for byte, keyframes marked.
    let written = webm_frames(&dir.join(format!("track-{VIDEO}.webm")));
    assert_eq!(written.len(), sent_video.len());
    for (i, (written, sent)) in written.iter().zip(&sent_video).enumerate() {
        assert!(written == sent, "frame {i} differs");
    }

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["e2ee"], true, "{manifest}");
    assert!(manifest["mix"].is_null(), "{manifest}");
    let tracks = manifest["tracks"].as_array().expect("tracks");
    let vp9 = tracks
        .iter()
        .find(|t| t["track"] == VP9)
        .expect("vp9 listed");
    assert!(vp9["file"].is_null());
    assert!(
        vp9["warning"]
            .as_str()
            .is_some_and(|w| w.contains("end-to-end")),
        "{vp9}"
    );
    for t in tracks.iter().filter(|t| t["track"] != VP9) {
        assert!(t["file"].is_string(), "{t}");
        let end = t["end_offset_ms"].as_u64().expect("end");
        assert!((2_900..=3_050).contains(&end), "{t}");
    }
}

#[test]
fn a_clear_recording_says_so_and_keeps_its_mix() {
    let dir = test_dir("e2ee-clear");
    let rec = Recording::create(&dir, "rec-clear", "room", 0).expect("create");
    rec.finish(0).expect("finish");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["e2ee"], false, "{manifest}");
    assert_eq!(manifest["mix"]["file"], "mix.ogg", "{manifest}");
    assert!(dir.join("mix.ogg").exists());
}

#[test]
fn noise_in_an_encrypted_recording_never_panics_and_recovers() {
    let dir = test_dir("e2ee-noise");
    let mut noise = Noise(0xdead_beef_cafe_f00d);
    let mut rec = Recording::create_e2ee(&dir, "rec-noise", "room", 0).expect("create");
    rec.add_track(track(AUDIO, MediaKind::Audio, Codec::Opus, 48_000), 0)
        .expect("audio");
    rec.add_track(track(VIDEO, MediaKind::Video, Codec::Vp8, 90_000), 0)
        .expect("video");
    // Hostile packets: any payload (empty and one-byte ones too), sequence numbers and
    // timestamps that jump anywhere.
    for i in 0..5_000u64 {
        let len = match noise.below(10) {
            0 => 0,
            1 => 1,
            2 => 2 + noise.below(12) as usize,
            _ => noise.below(1_400) as usize,
        };
        let payload = noise.bytes(len);
        let track = if noise.below(2) == 0 { AUDIO } else { VIDEO };
        rec.packet(&meet_recorder::MediaPacket {
            track,
            seq: noise.next() as u16,
            rtp_timestamp: noise.next() as u32,
            marker: noise.below(2) == 0,
            payload: &payload,
            at_ms: i,
        })
        .expect("noise is ignored or written, never an error");
        if i % 500 == 0 {
            rec.flush().expect("flush");
        }
    }
    // A process killed now leaves a directory that recovers as an encrypted recording.
    rec.flush().expect("flush");
    drop(rec);
    let summary = recover(&dir).expect("recover").expect("unfinished");
    assert_eq!(summary.status, "interrupted");
    assert!(summary.files.iter().all(|f| f.kind != FileKind::Mix));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["e2ee"], true);
    assert!(manifest["mix"].is_null());
}
