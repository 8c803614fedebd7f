//! Recording on the real server: a host records a meeting of three publishers; every file
//! is valid (ffprobe), the mixed audio holds each sender's tone, and a recording cut short by
//! `kill -9` still plays and is marked interrupted on the next start. An end-to-end encrypted
//! meeting is recorded as received, without a mix.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::recordings::{manifest, recording_dir, recording_id, wait_status};
use common::{MEDIA_TIMEOUT, bot_receives, eventually};
use loadtest::bot::{Bot, BotOptions};
use protocol::{ClientMessage, Role};
use signaling::store::{Admission, RecordingStatus, Store};

/// ffprobe's view of one file: the codec of its first stream and its duration in seconds.
fn probe(path: &Path) -> (String, f64) {
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
        .output()
        .expect("ffprobe runs (apt-get install ffmpeg)");
    assert!(
        output.status.success(),
        "ffprobe refused {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ffprobe json");
    let codec = json["streams"][0]["codec_name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let duration = json["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codec, duration)
}

/// Whether ffprobe is here; under CI it must be.
fn have_ffprobe() -> bool {
    let found = Command::new("ffprobe")
        .arg("-version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI must install ffmpeg");
        eprintln!("ffprobe not installed: recording files not checked");
    }
    found
}

/// Mono 48 kHz samples of an audio file, decoded by ffmpeg.
fn decode(path: &Path) -> Vec<f32> {
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        output.status.success(),
        "ffmpeg could not decode {}",
        path.display()
    );
    output
        .stdout
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// Energy of one frequency in the samples (Goertzel).
fn power_at(samples: &[f32], hz: f32) -> f32 {
    let k = 2.0 * (2.0 * std::f32::consts::PI * hz / 48_000.0).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for x in samples {
        let s0 = x + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - k * s1 * s2) / samples.len().max(1) as f32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorded_meeting_yields_valid_files_and_a_mix_of_every_voice() {
    let t = common::start("recording", |_| {}).await;
    let meeting = t
        .schedule(
            Admission::Scheduled,
            &[("Xã A", Role::Participant), ("Xã B", Role::Participant)],
        )
        .await;
    let join = |name: &str, hz: f32, tag: u64| {
        let mut options = t.bot_options("", "", hz, tag);
        options.token = Some(meeting.invited(name).token.clone());
        options.endpoint.analyze_audio = true;
        Bot::connect(options)
    };
    let host = join("Host", 440.0, 1).await.expect("host joins");
    let a = join("Xã A", 660.0, 2).await.expect("a joins");
    let b = join("Xã B", 880.0, 3).await.expect("b joins");
    eventually(
        MEDIA_TIMEOUT,
        "the host hears and sees both communes",
        || {
            bot_receives(&host, a.participant_id(), 660.0, 2)
                && bot_receives(&host, b.participant_id(), 880.0, 3)
        },
    )
    .await;

    // A participant cannot record.
    a.send(ClientMessage::StartRecording {}).expect("sent");
    eventually(MEDIA_TIMEOUT, "the commune is refused", || {
        a.snapshot()
            .errors
            .iter()
            .any(|(code, _)| *code == protocol::ErrorCode::Forbidden)
    })
    .await;

    host.send(ClientMessage::StartRecording {}).expect("sent");
    eventually(
        MEDIA_TIMEOUT,
        "everyone is told the meeting is recorded",
        || {
            [&host, &a, &b]
                .iter()
                .all(|bot| bot.snapshot().roster.recording)
        },
    )
    .await;
    let id = recording_id(&t.server.store, &meeting.id).await;
    // Four seconds of meeting on the record.
    tokio::time::sleep(Duration::from_secs(4)).await;
    host.send(ClientMessage::StopRecording {}).expect("sent");
    eventually(
        MEDIA_TIMEOUT,
        "everyone is told the recording stopped",
        || {
            [&host, &a, &b]
                .iter()
                .all(|bot| !bot.snapshot().roster.recording)
        },
    )
    .await;
    wait_status(&t.server.store, &id, RecordingStatus::Completed).await;

    let dir = recording_dir(&t.data_dir.0, &id);
    let manifest = manifest(&dir);
    assert_eq!(manifest["status"], "completed");
    let tracks = manifest["tracks"].as_array().expect("tracks");
    assert_eq!(
        tracks.len(),
        6,
        "three publishers, audio and video each: {manifest}"
    );
    // Ids have their documented forms (docs/api.md): the recording's and the meeting's are 32
    // hex characters, a track's and a participant's the protocol's integers.
    let hex32 = |v: &serde_json::Value| {
        v.as_str().is_some_and(|s| {
            s.len() == 32
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    };
    assert!(hex32(&manifest["recording_id"]), "{manifest}");
    assert_eq!(manifest["recording_id"], id.as_str());
    assert!(hex32(&manifest["room"]), "{manifest}");
    for track in tracks {
        assert!(track["track"].is_u64(), "{track}");
        assert!(track["participant_id"].is_u64(), "{track}");
    }
    let participants: std::collections::BTreeSet<u64> = [&host, &a, &b]
        .iter()
        .map(|bot| bot.participant_id().0)
        .collect();
    assert!(
        tracks
            .iter()
            .all(|t| participants.contains(&t["participant_id"].as_u64().unwrap_or(0))),
        "{manifest}"
    );
    // Each track is labelled with its publisher's display name, as the hub told the recorder.
    for (bot, name) in [(&host, "Host"), (&a, "Xã A"), (&b, "Xã B")] {
        let labels: Vec<&serde_json::Value> = tracks
            .iter()
            .filter(|t| t["participant_id"].as_u64() == Some(bot.participant_id().0))
            .map(|t| &t["participant"])
            .collect();
        assert_eq!(labels.len(), 2, "{manifest}");
        assert!(labels.iter().all(|l| *l == name), "{name}: {manifest}");
    }
    if !have_ffprobe() {
        return;
    }
    for track in tracks {
        let file = track["file"].as_str().expect("file name");
        let (codec, duration) = probe(&dir.join(file));
        let expected = if track["kind"] == "audio" {
            "opus"
        } else {
            "vp8"
        };
        assert_eq!(codec, expected, "{file}");
        assert!(duration > 2.0, "{file} lasts {duration} s");
    }
    let (codec, duration) = probe(&dir.join("mix.ogg"));
    assert_eq!(codec, "opus");
    assert!(duration > 3.0, "the mix lasts {duration} s");
    let mix = decode(&dir.join("mix.ogg"));
    let noise = power_at(&mix, 1234.0);
    for hz in [440.0, 660.0, 880.0] {
        let power = power_at(&mix, hz);
        assert!(
            power > 50.0 * noise.max(1e-9),
            "the mix lacks {hz} Hz: {power} against {noise} off-tone"
        );
    }
}

/// The server binary, started on a data directory; its HTTPS address read from its log.
struct ServerProcess {
    child: Child,
    http_addr: String,
}

fn start_process(data_dir: &Path) -> ServerProcess {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_meet-server"))
        .args(["--http-addr", "127.0.0.1:0", "--media-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        // The server logs to standard output.
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("meet-server starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let http_addr = loop {
        let line = lines
            .next()
            .expect("the server logs its start")
            .expect("readable log");
        if let Some(rest) = line.split("http_addr=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ServerProcess { child, http_addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recording_cut_by_kill_9_still_plays_and_is_marked_interrupted() {
    common::init();
    let data_dir = common::tempdir::TempDir::new("kill9");
    // The meeting and its links are prepared on the same storage and key the server uses.
    let url = signaling::store::default_url(&data_dir.0);
    let store = Store::open(&url).await.expect("store");
    let tokens =
        signaling::auth::JoinTokens::load_or_generate(&data_dir.0.join("keys")).expect("keys");
    let meeting = common::schedule_on(&store, &tokens, Admission::Scheduled, &[]).await;

    let mut server = start_process(&data_dir.0);
    let cert = std::fs::read(data_dir.0.join("tls").join("cert.pem")).expect("certificate");
    let tls = loadtest::bot::tls_config_trusting_pem(&cert).expect("pinned");
    let mut options = BotOptions::new(format!("wss://{}/ws", server.http_addr), "", "", tls);
    options.token = Some(meeting.invited("Host").token.clone());
    options.endpoint.keyframe_interval = Some(Duration::from_secs(2));
    let host = Bot::connect(options).await.expect("host joins");
    host.send(ClientMessage::StartRecording {}).expect("sent");
    eventually(MEDIA_TIMEOUT, "the recording starts", || {
        host.snapshot().roster.recording
    })
    .await;
    let id = recording_id(&store, &meeting.id).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // SIGKILL: no shutdown, no finalization.
    server.child.kill().expect("killed");
    let _ = server.child.wait();
    drop(host);

    let mut restarted = start_process(&data_dir.0);
    wait_status(&store, &id, RecordingStatus::Interrupted).await;
    let dir = recording_dir(&data_dir.0, &id);
    assert_eq!(manifest(&dir)["status"], "interrupted");
    if have_ffprobe() {
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).expect("files") {
            let path = entry.expect("entry").path();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default();
            if ext == "ogg" || ext == "webm" {
                let (_, duration) = probe(&path);
                // Four seconds were recorded; about one may be lost.
                assert!(duration >= 2.0, "{} plays {duration} s", path.display());
                files += 1;
            }
        }
        assert_eq!(files, 3, "audio, video and the mix");
    }
    restarted.child.kill().expect("stopped");
    let _ = restarted.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_error_stops_the_recording_tells_the_host_and_the_meeting_goes_on() {
    let t = common::start("recording-error", |_| {}).await;
    let meeting = t
        .schedule(Admission::Scheduled, &[("Xã A", Role::Participant)])
        .await;
    let join = |name: &str, hz: f32, tag: u64| {
        let mut options = t.bot_options("", "", hz, tag);
        options.token = Some(meeting.invited(name).token.clone());
        Bot::connect(options)
    };
    let host = join("Host", 440.0, 1).await.expect("host joins");
    host.send(ClientMessage::StartRecording {}).expect("sent");
    eventually(MEDIA_TIMEOUT, "the recording starts", || {
        host.snapshot().roster.recording
    })
    .await;
    let id = recording_id(&t.server.store, &meeting.id).await;
    let dir = recording_dir(&t.data_dir.0, &id);
    eventually(MEDIA_TIMEOUT, "the host's tracks are on disk", || {
        dir.join("mix.ogg").exists()
    })
    .await;
    // The disk "fails": the recording's directory disappears, so the next write (the
    // manifest entry for a new publisher's track) fails. A rename is atomic, where deleting
    // the files one by one would race the recorder writing into the directory.
    let moved = dir.with_extension("gone");
    std::fs::rename(&dir, &moved).expect("moved away");
    let a = join("Xã A", 660.0, 2).await.expect("a joins");
    eventually(
        MEDIA_TIMEOUT,
        "the host is told why the recording stopped",
        || {
            host.snapshot().events.iter().any(|m| {
                matches!(
                    m,
                    protocol::ServerMessage::RecordingState {
                        active: false,
                        error: Some(_),
                        ..
                    }
                )
            })
        },
    )
    .await;
    wait_status(&t.server.store, &id, RecordingStatus::Failed).await;
    // The meeting itself goes on.
    eventually(
        MEDIA_TIMEOUT,
        "host and commune still exchange media",
        || {
            bot_receives(&host, a.participant_id(), 660.0, 2)
                && bot_receives(&a, host.participant_id(), 440.0, 1)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_meeting_set_to_record_itself_records_from_its_opening() {
    let t = common::start("auto-record", |_| {}).await;
    let meeting = t.schedule(Admission::Scheduled, &[]).await;
    t.server
        .store
        .update_meeting(
            &meeting.id,
            &signaling::store::MeetingPatch {
                auto_record: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("auto-recording set");
    let mut options = t.bot_options("", "", 440.0, 1);
    options.token = Some(meeting.invited("Host").token.clone());
    let host = Bot::connect(options).await.expect("host joins");
    eventually(
        MEDIA_TIMEOUT,
        "the first arrival is told the meeting is recorded",
        || host.snapshot().roster.recording,
    )
    .await;
    let id = recording_id(&t.server.store, &meeting.id).await;
    // The last one out stops the recording, which is then complete.
    host.leave().await;
    wait_status(&t.server.store, &id, RecordingStatus::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_meeting_is_recorded_as_received_without_a_mix() {
    let t = common::start("e2ee-record", |_| {}).await;
    let meeting = t.schedule(Admission::Scheduled, &[]).await;
    t.server
        .store
        .update_meeting(
            &meeting.id,
            &signaling::store::MeetingPatch {
                auto_record: Some(true),
                e2ee: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("encryption and auto-recording set");
    let mut options = t.bot_options("", "", 440.0, 1);
    options.token = Some(meeting.invited("Host").token.clone());
    let host = Bot::connect(options).await.expect("host joins");
    let id = recording_id(&t.server.store, &meeting.id).await;
    let dir = recording_dir(&t.data_dir.0, &id);
    // The bot's frames are not encrypted, but the recorder cannot tell and must not care: it
    // writes what arrives. Both tracks get a file once their first frame is written, and it
    // grows as the recorder flushes.
    let written = |min_bytes: u64| {
        std::fs::read_to_string(dir.join("manifest.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|m| m["tracks"].as_array().cloned())
            .is_some_and(|tracks| {
                tracks.len() == 2
                    && tracks.iter().all(|t| {
                        t["file"].as_str().is_some_and(|file| {
                            std::fs::metadata(dir.join(file)).is_ok_and(|m| m.len() >= min_bytes)
                        })
                    })
            })
    };
    eventually(MEDIA_TIMEOUT, "both tracks are written", || written(2_000)).await;
    host.leave().await;
    wait_status(&t.server.store, &id, RecordingStatus::Completed).await;

    let manifest = manifest(&dir);
    assert_eq!(manifest["e2ee"], true, "{manifest}");
    assert!(manifest["mix"].is_null(), "{manifest}");
    assert!(!dir.join("mix.ogg").exists(), "no mixed audio is made");
    assert!(
        written(2_000),
        "the finished files keep what was written: {manifest}"
    );
    let row = t
        .server
        .store
        .recording(&id)
        .await
        .expect("lookup")
        .expect("row");
    assert!(row.e2ee, "the recording's row says it is encrypted");
}
