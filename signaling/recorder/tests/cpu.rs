//! The recorder's CPU cost: a meeting of 10 publishers (Opus at 50 packets/s and VP8 at
//! 30 fps, about 1 Mbit/s) for 10 s of media, measured as this thread's CPU time. Meaningful
//! figures need `--release`:
//!
//! `cargo test -p meet-recorder --release --test cpu -- --nocapture`

mod common;

use common::*;
use meet_recorder::Recording;

const PUBLISHERS: u64 = 10;
const MEDIA_MS: u64 = 10_000;

/// Records `packets` and returns the CPU seconds it took, finish included.
fn record(name: &str, publishers: &[Publisher], packets: &[Rtp]) -> f64 {
    let dir = test_dir(name);
    let start = cpu_time::ThreadTime::now();
    let mut rec = Recording::create(&dir, name, "room", 0).expect("create");
    for p in publishers {
        p.add_tracks(&mut rec, 0);
    }
    feed(&mut rec, packets);
    let summary = rec.finish(MEDIA_MS).expect("finish");
    let cpu = start.elapsed().as_secs_f64();
    assert_eq!(summary.status, "completed");
    let _ = std::fs::remove_dir_all(&dir);
    cpu
}

#[test]
fn cpu_per_recorded_track() {
    let publishers: Vec<Publisher> = (1..=PUBLISHERS)
        .map(|id| Publisher {
            id,
            freq: 300.0 + 100.0 * id as f32,
            // 1 Mbit/s at 30 fps.
            frame_bytes: 4_150,
            keyframe_every: 60,
        })
        .collect();
    let all = merged(&publishers, 0, MEDIA_MS);
    let audio: Vec<Rtp> = all.iter().filter(|p| p.track % 10 == 1).cloned().collect();
    let video: Vec<Rtp> = all.iter().filter(|p| p.track % 10 == 2).cloned().collect();

    let media_s = MEDIA_MS as f64 / 1000.0;
    let percent = |cpu: f64, tracks: u64| 100.0 * cpu / media_s / tracks as f64;
    let total = record("cpu-all", &publishers, &all);
    let audio_cpu = record("cpu-audio", &publishers, &audio);
    let video_cpu = record("cpu-video", &publishers, &video);
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "recorder CPU ({profile}), {PUBLISHERS} publishers x {media_s} s of media: \
         whole meeting {:.2}% of one core; per track {:.3}%; \
         audio (file + mix) {:.3}% per track; video {:.3}% per track",
        percent(total, 1),
        percent(total, 2 * PUBLISHERS),
        percent(audio_cpu, PUBLISHERS),
        percent(video_cpu, PUBLISHERS),
    );
    if !cfg!(debug_assertions) {
        // The target: a meeting of 10 audio+video publishers under 10% of one core.
        assert!(percent(total, 1) < 10.0, "over budget");
    }
}
