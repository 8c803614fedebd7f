//! Harness for the recorder (`meet-recorder`): its writers fed arbitrary packets
//! (`recorder_writers`), its readers (`recover`) given arbitrary files (`recorder_readers`) and
//! an arbitrary manifest (`manifest`).

use std::fs;
use std::path::Path;

use recorder::{Codec, MediaKind, MediaPacket, Recording, TrackInfo, recover};

use crate::records::{Reader, Records, encode};
use crate::scratch::Scratch;

/// The tracks every `recorder_writers` input starts with: Opus, VP8, VP9, AV1, and H.264
/// (which is not recorded).
const TRACKS: [(u64, MediaKind, Codec, u32); 5] = [
    (1, MediaKind::Audio, Codec::Opus, 48_000),
    (2, MediaKind::Video, Codec::Vp8, 90_000),
    (3, MediaKind::Video, Codec::Vp9, 90_000),
    (4, MediaKind::Video, Codec::Av1, 90_000),
    (5, MediaKind::Video, Codec::H264, 90_000),
];

fn track_info(track: u64, kind: MediaKind, codec: Codec, clock_rate: u32) -> TrackInfo {
    TrackInfo {
        track,
        participant_id: track,
        participant: format!("p{track}"),
        kind,
        source: match kind {
            MediaKind::Audio => "microphone".to_owned(),
            MediaKind::Video => "camera".to_owned(),
        },
        codec,
        clock_rate,
    }
}

pub const W_PACKET: u8 = 0;
pub const W_FLUSH: u8 = 1;
pub const W_END_TRACK: u8 = 2;
pub const W_ADD_TRACK: u8 = 3;

/// `recorder_writers`: the first byte configures (bit 0: end-to-end encrypted, bit 1: the
/// process "crashes" instead of finishing), then records:
///
/// - [`W_PACKET`]: `track: u8` (1 to 5 are the standard tracks), `seq: u16`, `ts: u32`,
///   `marker: u8`, `ms: u8` (time since the previous packet), payload;
/// - [`W_FLUSH`];
/// - [`W_END_TRACK`]: `track: u8`;
/// - [`W_ADD_TRACK`]: `track: u8`, `kind: u8`, `codec: u8`, `clock: u32` (any combination).
///
/// Checked: no write fails (the disk is fine), `finish` completes and lists files that
/// exist, and after a crash `recover` succeeds and leaves a directory `recover` no longer
/// touches.
pub fn writers(data: &[u8]) {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let scratch = Scratch::new("writers");
    let dir = scratch.path().join("rec");
    let mut recording = if config & 1 == 1 {
        Recording::create_e2ee(&dir, "fuzz", "room", 0)
    } else {
        Recording::create(&dir, "fuzz", "room", 0)
    }
    .expect("a recording starts");
    for (track, kind, codec, clock) in TRACKS {
        recording
            .add_track(track_info(track, kind, codec, clock), 0)
            .expect("a track is added");
    }
    let mut now_ms = 0u64;
    for (kind, body) in Records::new(rest).take(2_000) {
        let mut r = Reader::new(body);
        match kind % 4 {
            W_PACKET => {
                let track = u64::from(r.u8());
                let seq = r.u16();
                let rtp_timestamp = r.u32();
                let marker = r.bool();
                now_ms += u64::from(r.u8());
                let payload = r.rest();
                recording
                    .packet(&MediaPacket {
                        track,
                        seq,
                        rtp_timestamp,
                        marker,
                        payload,
                        at_ms: now_ms,
                    })
                    .expect("a packet is recorded or ignored");
            }
            W_FLUSH => recording.flush().expect("a flush"),
            W_END_TRACK => recording
                .end_track(u64::from(r.u8()), now_ms)
                .expect("a track ends"),
            _ => {
                let track = u64::from(r.u8());
                let kind = if r.bool() {
                    MediaKind::Video
                } else {
                    MediaKind::Audio
                };
                let codec = [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::Av1, Codec::H264]
                    [usize::from(r.u8() % 5)];
                let clock = r.u32();
                recording
                    .add_track(track_info(track, kind, codec, clock), now_ms)
                    .expect("a track is added or listed with a warning");
            }
        }
    }
    let _ = recording.wants_keyframe();
    if config & 2 == 0 {
        let summary = recording.finish(now_ms).expect("a recording finishes");
        for file in &summary.files {
            assert!(dir.join(&file.name).exists(), "{} is listed", file.name);
        }
        assert_eq!(summary.status, "completed");
        assert!(
            recover(&dir).expect("recover reads it").is_none(),
            "a completed recording is left alone"
        );
    } else {
        recording.flush().expect("a flush");
        drop(recording);
        let summary = recover(&dir)
            .expect("what the recorder wrote is recoverable")
            .expect("an unfinished recording is recovered");
        assert_eq!(summary.status, "interrupted");
        assert!(
            recover(&dir).expect("recover reads it").is_none(),
            "a recovered recording is left alone"
        );
    }
}

/// A manifest saying `recording`, naming `track-1.ogg` (audio), `track-2.webm` (video) and
/// `mix.ogg`, as the recorder writes it while recording.
pub fn manifest_recording() -> String {
    serde_json::json!({
        "recording_id": "fuzz",
        "room": "room",
        "started_at_unix_ms": 0,
        "status": "recording",
        "duration_ms": null,
        "e2ee": false,
        "tracks": [
            {
                "track": 1, "participant_id": 1, "participant": "a", "kind": "audio",
                "source": "microphone", "codec": "opus", "clock_rate": 48000,
                "added_offset_ms": 0, "file": "track-1.ogg", "start_offset_ms": 0,
                "end_offset_ms": null, "warning": null
            },
            {
                "track": 2, "participant_id": 1, "participant": "a", "kind": "video",
                "source": "camera", "codec": "vp8", "clock_rate": 90000,
                "added_offset_ms": 0, "file": "track-2.webm", "start_offset_ms": 10,
                "end_offset_ms": null, "warning": null
            }
        ],
        "mix": { "file": "mix.ogg", "start_offset_ms": 0, "end_offset_ms": null }
    })
    .to_string()
}

/// Every file under `dir` with its contents, sorted.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        fs::read(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// `recorder_readers`: `flags: u8`, `ogg_len: u16`, the Ogg file's bytes, then the WebM file's.
/// Written as `track-1.ogg` (and as `mix.ogg` when flag bit 0 is set) and `track-2.webm` of a
/// recording left `recording`, then `recover`ed. Checked: recovering is idempotent (a
/// recovered directory set back to `recording` recovers to the same files).
pub fn readers(data: &[u8]) {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let ogg_len = usize::from(r.u16());
    let ogg = r.bytes(ogg_len);
    let webm = r.rest();
    let scratch = Scratch::new("readers");
    let dir = scratch.path();
    fs::write(dir.join("manifest.json"), manifest_recording()).expect("a manifest");
    fs::write(dir.join("track-1.ogg"), ogg).expect("a file");
    if flags & 1 == 1 {
        fs::write(dir.join("mix.ogg"), ogg).expect("a file");
    }
    fs::write(dir.join("track-2.webm"), webm).expect("a file");
    let Ok(Some(_)) = recover(dir) else {
        return;
    };
    let first = snapshot(dir);
    // Once more, as after a crash during the first recovery.
    let manifest = fs::read_to_string(dir.join("manifest.json")).expect("the manifest");
    let mut value: serde_json::Value = serde_json::from_str(&manifest).expect("valid JSON");
    value["status"] = "recording".into();
    fs::write(dir.join("manifest.json"), value.to_string()).expect("a manifest");
    recover(dir)
        .expect("a recovered recording recovers again")
        .expect("it was unfinished");
    let second = snapshot(dir);
    let media = |files: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
        files
            .iter()
            .filter(|(name, _)| name != "manifest.json")
            .cloned()
            .collect()
    };
    assert!(
        media(&first) == media(&second),
        "recovering a recovered recording changed its files"
    );
}

/// The files a real recording of a few seconds leaves, unfinished (flushed, never finished):
/// (`track-1.ogg`, `track-2.webm`, `mix.ogg`, its manifest).
pub fn real_files() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let scratch = Scratch::new("real");
    let dir = scratch.path().join("rec");
    let mut recording = Recording::create(&dir, "fuzz", "room", 0).expect("a recording");
    recording
        .add_track(track_info(1, MediaKind::Audio, Codec::Opus, 48_000), 0)
        .expect("audio");
    recording
        .add_track(track_info(2, MediaKind::Video, Codec::Vp8, 90_000), 0)
        .expect("video");
    let mut tone = endpoint::media::ToneSource::new(440.0).expect("an encoder");
    let mut video = endpoint::media::VideoSource::new(9, 1_500);
    for i in 0..60u32 {
        let opus = tone.next_packet().expect("opus");
        recording
            .packet(&MediaPacket {
                track: 1,
                seq: i as u16,
                rtp_timestamp: 960 * i,
                marker: false,
                payload: &opus,
                at_ms: 20 * u64::from(i),
            })
            .expect("audio packet");
        if i % 4 == 0 {
            let frame = video.next_frame(i == 0);
            let payloads = crate::connected::vp8_payloads(&frame, 800);
            let count = payloads.len();
            for (j, payload) in payloads.iter().enumerate() {
                recording
                    .packet(&MediaPacket {
                        track: 2,
                        seq: (i + j as u32) as u16,
                        rtp_timestamp: 90 * 20 * i,
                        marker: j + 1 == count,
                        payload,
                        at_ms: 20 * u64::from(i),
                    })
                    .expect("video packet");
            }
        }
        if i % 25 == 0 {
            recording.flush().expect("flush");
        }
    }
    recording.flush().expect("flush");
    drop(recording);
    let read = |name: &str| fs::read(dir.join(name)).unwrap_or_default();
    (
        read("track-1.ogg"),
        read("track-2.webm"),
        read("mix.ogg"),
        read("manifest.json"),
    )
}

/// `manifest`: the input is `manifest.json` of a directory that also holds a real recording's
/// files and a file of its own, next to files outside it. `recover` must not panic, and must
/// leave every file outside the directory, and every file in it that the recorder does not
/// name itself, as it was.
pub fn manifest(data: &[u8], real: &(Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>)) {
    let scratch = Scratch::new("manifest");
    let root = scratch.path();
    let dir = root.join("rec");
    fs::create_dir_all(dir.join("sub")).expect("dirs");
    let outside: [(&str, &[u8]); 5] = [
        ("meet.db", b"database"),
        ("track-1.ogg", &real.0),
        ("track-2.webm", &real.1),
        ("mix.ogg", &real.2),
        ("manifest.json", &real.3),
    ];
    for (name, contents) in outside {
        fs::write(root.join(name), contents).expect("an outside file");
    }
    fs::write(dir.join("track-1.ogg"), &real.0).expect("a file");
    fs::write(dir.join("track-2.webm"), &real.1).expect("a file");
    fs::write(dir.join("mix.ogg"), &real.2).expect("a file");
    fs::write(dir.join("notes.txt"), b"keep me").expect("a file");
    fs::write(dir.join("sub").join("track-1.ogg"), &real.0).expect("a file");
    fs::write(dir.join("manifest.json"), data).expect("the manifest");
    let before = snapshot(root);
    let inner_before = snapshot(&dir.join("sub"));
    let _ = recover(&dir);
    assert!(
        snapshot(root) == before,
        "recover changed a file outside the recording's directory"
    );
    assert!(
        snapshot(&dir.join("sub")) == inner_before,
        "recover changed a file in a subdirectory"
    );
    assert_eq!(
        fs::read(dir.join("notes.txt")).ok().as_deref(),
        Some(&b"keep me"[..]),
        "recover touched a file the recorder does not write"
    );
}

/// Seeds for `recorder_writers`: a real recording's packets (Opus and VP8), and the other
/// codecs' keyframes.
pub fn writer_seeds() -> Vec<(String, Vec<u8>)> {
    let packet =
        |out: &mut Vec<u8>, track: u8, seq: u16, ts: u32, marker: bool, ms: u8, payload: &[u8]| {
            let mut body = vec![track];
            body.extend_from_slice(&seq.to_be_bytes());
            body.extend_from_slice(&ts.to_be_bytes());
            body.push(u8::from(marker));
            body.push(ms);
            body.extend_from_slice(payload);
            encode(out, W_PACKET, &body);
        };
    let mut seeds = Vec::new();
    for (name, config) in [
        ("plain_finished", 0u8),
        ("e2ee_crashed", 3),
        ("plain_crashed", 2),
    ] {
        let mut out = vec![config];
        let mut tone = endpoint::media::ToneSource::new(300.0).expect("an encoder");
        let mut video = endpoint::media::VideoSource::new(4, 1_200);
        for i in 0..30u32 {
            let opus = tone.next_packet().expect("opus");
            packet(
                &mut out,
                1,
                65_520u16.wrapping_add(i as u16),
                (u32::MAX - 9_600).wrapping_add(960 * i),
                false,
                20,
                &opus,
            );
            if i % 3 == 0 {
                let frame = video.next_frame(i % 15 == 0);
                let payloads = crate::connected::vp8_payloads(&frame, 700);
                let count = payloads.len();
                for (j, p) in payloads.iter().enumerate() {
                    packet(
                        &mut out,
                        2,
                        (3 * i + j as u32) as u16,
                        3_000 * i,
                        j + 1 == count,
                        0,
                        p,
                    );
                }
            }
            if i == 10 {
                encode(&mut out, W_FLUSH, &[]);
            }
        }
        encode(&mut out, W_END_TRACK, &[1]);
        seeds.push((name.to_owned(), out));
    }
    let mut out = vec![0u8];
    let vp9_key = [
        0x8a, 0x81, 0x01, 0x00, 0x82, 0x49, 0x83, 0x42, 0x00, 0x13, 0xf0, 0x0e, 0xf0,
    ];
    packet(&mut out, 3, 1, 0, true, 10, &vp9_key);
    packet(
        &mut out,
        3,
        2,
        3_000,
        true,
        33,
        &[0xc8, 0x81, 0x02, 0x01, 0x02],
    );
    let av1_key = [
        0x18, 0x0b, 0x0a, 0x0b, 0x00, 0x00, 0x00, 0x04, 0x3c, 0xff, 0xbc, 0xf5, 0x84, 0x88, 0x03,
        0x32, 0x10, 0x00,
    ];
    packet(&mut out, 4, 1, 0, true, 10, &av1_key);
    packet(
        &mut out,
        4,
        2,
        3_000,
        true,
        33,
        &[0x10, 0x03, 0x32, 0x10, 0x00],
    );
    packet(&mut out, 5, 1, 0, true, 10, &[0x65, 0x88]);
    let mut add = vec![9, 1, 1];
    add.extend_from_slice(&90_000u32.to_be_bytes());
    encode(&mut out, W_ADD_TRACK, &add);
    packet(
        &mut out,
        9,
        1,
        0,
        true,
        10,
        &[0x10, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00],
    );
    seeds.push(("other_codecs".to_owned(), out));
    seeds
}

/// Seeds for `recorder_readers`: a real recording's files, and the same cut short.
pub fn reader_seeds() -> Vec<(String, Vec<u8>)> {
    let (ogg, webm, _, _) = real_files();
    let input = |flags: u8, ogg: &[u8], webm: &[u8]| {
        let ogg = &ogg[..ogg.len().min(usize::from(u16::MAX))];
        let mut out = vec![flags];
        out.extend_from_slice(&(ogg.len() as u16).to_be_bytes());
        out.extend_from_slice(ogg);
        out.extend_from_slice(webm);
        out
    };
    vec![
        ("real".to_owned(), input(1, &ogg, &webm)),
        (
            "cut".to_owned(),
            input(0, &ogg[..ogg.len() * 2 / 3], &webm[..webm.len() * 2 / 3]),
        ),
        (
            "headers_only".to_owned(),
            input(0, &ogg[..ogg.len().min(200)], &webm[..webm.len().min(300)]),
        ),
    ]
}

/// Seeds for `manifest`: the manifest of a real recording in progress, and hostile ones.
pub fn manifest_seeds() -> Vec<(String, Vec<u8>)> {
    let (_, _, _, real) = real_files();
    let hostile = manifest_recording()
        .replace("track-1.ogg", "../track-1.ogg")
        .replace("track-2.webm", "/tmp/track-2.webm")
        .replace("\"mix.ogg\"", "\"../mix.ogg\"");
    let sub = manifest_recording().replace("track-1.ogg", "sub/track-1.ogg");
    vec![
        ("real".to_owned(), real),
        ("standard".to_owned(), manifest_recording().into_bytes()),
        ("escaping_names".to_owned(), hostile.into_bytes()),
        ("subdirectory".to_owned(), sub.into_bytes()),
    ]
}
