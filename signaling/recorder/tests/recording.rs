//! End-to-end: synthetic publishers recorded into files that ffprobe accepts, a mix that holds
//! every sender's tone, recovery after a simulated kill, and write errors.

mod common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use common::*;
use meet_recorder::{
    Codec, FileKind, MediaKind, RecorderError, Recording, Sink, Storage, TrackInfo, recover,
};

fn publishers() -> Vec<Publisher> {
    vec![
        Publisher {
            id: 1,
            freq: 440.0,
            frame_bytes: 3_000,
            keyframe_every: 30,
        },
        Publisher {
            id: 2,
            freq: 1_000.0,
            frame_bytes: 2_500,
            keyframe_every: 30,
        },
    ]
}

#[test]
fn meeting_is_recorded_into_playable_files_and_a_mix_of_every_tone() {
    let dir = test_dir("meeting");
    let mut rec = Recording::create(&dir, "rec-1", "room-a", 1_700_000_000_000).expect("create");
    let pubs = publishers();
    for p in &pubs {
        p.add_tracks(&mut rec, 0);
    }
    rec.add_track(
        TrackInfo {
            track: 99,
            participant_id: 3,
            participant: "h264 sender".into(),
            kind: MediaKind::Video,
            source: "screen".into(),
            codec: Codec::H264,
            clock_rate: 90_000,
        },
        0,
    )
    .expect("add h264");
    assert_eq!(rec.wants_keyframe(), vec![12, 22]);

    let mut packets = merged(&pubs, 0, 3_000);
    // Network disorder: swap neighbours now and then, and duplicate a few packets.
    for i in (10..packets.len() - 1).step_by(37) {
        packets.swap(i, i + 1);
    }
    for i in (5..packets.len()).step_by(101).rev() {
        let copy = packets[i].clone();
        packets.insert(i + 1, copy);
    }
    feed(&mut rec, &packets);
    assert!(rec.wants_keyframe().is_empty(), "every video track started");
    let summary = rec.finish(3_000).expect("finish");
    assert_eq!(summary.status, "completed");
    assert_eq!(summary.duration_ms, 3_000);
    assert_eq!(summary.files.len(), 6, "{summary:?}");

    for file in &summary.files {
        let path = dir.join(&file.name);
        assert_eq!(std::fs::metadata(&path).expect("file").len(), file.bytes);
        match file.kind {
            FileKind::Audio => assert_file(&path, "opus", 3.0, 0.15),
            FileKind::Video => assert_file(&path, "vp8", 3.0, 0.15),
            FileKind::Mix => assert_file(&path, "opus", 3.0, 0.15),
            FileKind::Manifest => {}
        }
    }

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["status"], "completed");
    assert_eq!(manifest["room"], "room-a");
    let tracks = manifest["tracks"].as_array().expect("tracks");
    assert_eq!(tracks.len(), 5);
    for t in tracks {
        if t["track"] == 99 {
            assert!(t["file"].is_null());
            assert!(t["warning"].as_str().expect("warning").contains("H.264"));
        } else {
            assert_eq!(t["start_offset_ms"], 0, "{t}");
            let end = t["end_offset_ms"].as_u64().expect("end");
            assert!((2_900..=3_050).contains(&end), "{t}");
        }
    }

    let mix = decode_ogg_opus(&dir.join("mix.ogg"));
    let middle = &mix[48_000..96_000];
    let off = tone_power(middle, 730.0);
    for p in &pubs {
        let power = tone_power(middle, p.freq);
        assert!(
            power > 100.0 * off,
            "{} Hz: power {power}, off-tone {off}",
            p.freq
        );
    }
    // Each track file holds only its own sender's tone.
    let own = decode_ogg_opus(&dir.join("track-11.ogg"));
    let own = &own[48_000..96_000];
    assert!(tone_power(own, 440.0) > 100.0 * tone_power(own, 1_000.0));
}

#[test]
fn late_joiner_and_lost_audio_keep_their_place_on_the_timeline() {
    let dir = test_dir("late");
    let mut rec = Recording::create(&dir, "rec-4", "room-d", 0).expect("create");
    let pubs = publishers();
    pubs[0].add_tracks(&mut rec, 0);
    pubs[1].add_tracks(&mut rec, 900);
    let mut packets = pubs[0].packets(0, 3_000);
    // Every 25th audio packet of the first sender is lost.
    packets.retain(|p| !(p.track == 11 && p.seq % 25 == 0));
    packets.extend(pubs[1].packets(1_000, 2_000));
    packets.sort_by_key(|p| p.at_ms);
    feed(&mut rec, &packets);
    let summary = rec.finish(3_000).expect("finish");
    assert_eq!(summary.status, "completed");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    for t in manifest["tracks"].as_array().expect("tracks") {
        let (start, end) = if t["participant_id"] == 1 {
            (0, 3_000)
        } else {
            (1_000, 3_000)
        };
        assert_eq!(t["start_offset_ms"], start, "{t}");
        let got = t["end_offset_ms"].as_u64().expect("end");
        assert!(got.abs_diff(end) <= 60, "{t}");
    }
    // Losses are filled, so the file keeps real time.
    assert_file(&dir.join("track-11.ogg"), "opus", 3.0, 0.1);
    assert_file(&dir.join("track-21.ogg"), "opus", 2.0, 0.1);
    assert_file(&dir.join("track-22.webm"), "vp8", 2.0, 0.1);

    let mix = decode_ogg_opus(&dir.join("mix.ogg"));
    let before = &mix[10_000..40_000];
    let after = &mix[60_000..130_000];
    assert!(tone_power(before, 440.0) > 100.0 * tone_power(before, 1_000.0));
    let off = tone_power(after, 730.0);
    assert!(tone_power(after, 440.0) > 100.0 * off);
    assert!(tone_power(after, 1_000.0) > 100.0 * off);
}

#[test]
fn killed_before_the_first_flush_leaves_an_empty_interrupted_recording() {
    let dir = test_dir("killed-early");
    let mut rec = Recording::create(&dir, "rec-5", "room-e", 0).expect("create");
    let pubs = publishers();
    pubs[0].add_tracks(&mut rec, 0);
    feed(&mut rec, &pubs[0].packets(0, 300));
    std::mem::forget(rec);
    let summary = recover(&dir).expect("recover").expect("was recording");
    assert_eq!(summary.status, "interrupted");
    assert_eq!(summary.files.len(), 1, "only the manifest: {summary:?}");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["manifest.json"]);
}

#[test]
fn killed_recording_is_recovered_as_interrupted() {
    let dir = test_dir("killed");
    let mut rec = Recording::create(&dir, "rec-2", "room-b", 0).expect("create");
    let pubs = publishers();
    for p in &pubs {
        p.add_tracks(&mut rec, 0);
    }
    // The last flush comes at 2.5 s.
    feed(&mut rec, &merged(&pubs, 0, 3_000));
    // kill -9: nothing after the last flush reaches the files, no destructor runs.
    std::mem::forget(rec);
    // And the kill came in the middle of a write.
    for name in ["track-12.webm", "track-21.ogg"] {
        let path = dir.join(name);
        let len = std::fs::metadata(&path).expect("file").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(len - 37).expect("truncate");
    }

    let summary = recover(&dir).expect("recover").expect("was recording");
    assert_eq!(summary.status, "interrupted");
    // What was flushed survives: up to 2.5 s, less what the mix and Ogg pages held back.
    assert!(
        (2_000..=2_600).contains(&summary.duration_ms),
        "{summary:?}"
    );
    for file in &summary.files {
        let path = dir.join(&file.name);
        match file.kind {
            FileKind::Audio | FileKind::Mix => assert_file(&path, "opus", 2.3, 0.3),
            FileKind::Video => assert_file(&path, "vp8", 2.45, 0.15),
            FileKind::Manifest => {}
        }
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["status"], "interrupted");
    // A recovered recording is not recovered twice.
    assert!(recover(&dir).expect("recover").is_none());
}

/// A manifest is read back from disk, so whoever can write one (a bug, a restored backup, an
/// intruder in the recordings directory) must not make recovery touch files outside it: only
/// the names the recorder itself writes are ever cut or removed.
#[test]
fn recovery_touches_only_the_files_the_recorder_names() {
    let parent = test_dir("hostile-manifest");
    let dir = parent.join("rec");
    std::fs::create_dir_all(&dir).expect("dir");
    // Files that are not valid Ogg or WebM, so recovery would remove them if it opened them.
    let outside = parent.join("meet.db");
    std::fs::write(&outside, b"not a recording").expect("outside");
    let absolute = parent.join("keys.pem");
    std::fs::write(&absolute, b"not a recording either").expect("absolute");
    let inside = dir.join("notes.txt");
    std::fs::write(&inside, b"a file the recorder never writes").expect("inside");
    let track = |n: u64, kind: &str, file: &str| {
        serde_json::json!({
            "track": n, "participant_id": 1, "participant": "a", "kind": kind,
            "source": "camera", "codec": if kind == "audio" { "opus" } else { "vp8" },
            "clock_rate": if kind == "audio" { 48_000 } else { 90_000 },
            "added_offset_ms": 0, "file": file, "start_offset_ms": 0,
            "end_offset_ms": null, "warning": null,
        })
    };
    let manifest = serde_json::json!({
        "recording_id": "rec-h", "room": "room-h", "started_at_unix_ms": 0,
        "status": "recording", "duration_ms": null, "e2ee": false,
        "tracks": [
            track(1, "audio", "../meet.db"),
            track(2, "video", absolute.to_str().expect("utf-8")),
            track(3, "audio", "notes.txt"),
        ],
        "mix": { "file": "../meet.db", "start_offset_ms": 0, "end_offset_ms": null },
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("manifest");

    let summary = recover(&dir).expect("recover").expect("was recording");
    assert_eq!(summary.status, "interrupted");
    assert_eq!(summary.files.len(), 1, "only the manifest: {summary:?}");
    for path in [&outside, &absolute, &inside] {
        assert!(path.exists(), "{} was removed", path.display());
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    for track in manifest["tracks"].as_array().expect("tracks") {
        assert!(track["file"].is_null(), "{track}");
        assert!(track["warning"].is_string(), "{track}");
    }
    assert!(manifest["mix"].is_null(), "{manifest}");
}

/// Storage whose files fail, as on a full disk, once `budget` bytes were written in all.
#[derive(Debug)]
struct FullDisk {
    budget: Arc<AtomicI64>,
}

struct LimitedFile {
    file: std::fs::File,
    budget: Arc<AtomicI64>,
}

impl io::Write for LimitedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.budget.fetch_sub(buf.len() as i64, Ordering::SeqCst);
        if left <= 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        let n = buf.len().min(left as usize);
        self.file.write(&buf[..n])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Sink for LimitedFile {
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Storage for FullDisk {
    fn create(&self, path: &Path) -> io::Result<Box<dyn Sink>> {
        Ok(Box::new(LimitedFile {
            file: std::fs::File::create(path)?,
            budget: self.budget.clone(),
        }))
    }

    fn replace(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        std::fs::write(path, contents)
    }
}

#[test]
fn write_error_stops_the_recording_without_panicking() {
    let dir = test_dir("full");
    let storage = Arc::new(FullDisk {
        budget: Arc::new(AtomicI64::new(200_000)),
    });
    let mut rec =
        Recording::create_with_storage(&dir, "rec-3", "room-c", 0, storage).expect("create");
    let pubs = publishers();
    for p in &pubs {
        p.add_tracks(&mut rec, 0);
    }
    let mut error = None;
    let mut next_flush = 500;
    for p in merged(&pubs, 0, 5_000) {
        let result = if p.at_ms >= next_flush {
            next_flush += 500;
            rec.flush()
        } else {
            rec.packet(&p.as_packet())
        };
        if let Err(e) = result {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("the disk filled up");
    assert!(matches!(error, RecorderError::Io { .. }), "{error}");
    assert!(matches!(rec.flush(), Err(RecorderError::Stopped)));
    let summary = rec.finish(5_000).expect("finalize what reached the disk");
    assert_eq!(summary.status, "failed");
    for file in &summary.files {
        match file.kind {
            FileKind::Audio | FileKind::Mix => assert_file(&dir.join(&file.name), "opus", 1.0, 1.0),
            FileKind::Video => assert_file(&dir.join(&file.name), "vp8", 1.0, 1.0),
            FileKind::Manifest => {}
        }
    }
}
