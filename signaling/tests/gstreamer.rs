//! A non-browser WebRTC stack in a meeting: GStreamer's webrtcbin (Debian 12's 1.22: libnice
//! for ICE, OpenSSL for DTLS with an RSA certificate, its own SDP) publishes a VP8 test pattern
//! and an Opus tone through `tests/gst/publish.py`, which speaks this server's protocol; a bot
//! in the same room must decode the tone and receive VP8 frames, keyframes among them.
//!
//! libnice never gathers a loopback candidate, so the test runs in a network namespace of its
//! own with a veth pair (10.200.0.1/24): the server's media port and every candidate are on that
//! private address, and nothing leaves the namespace. The test re-runs itself inside it (`unshare`
//! and `ip`, as root); `.ci/deps` installs GStreamer's packages.

mod common;

use std::process::{Child, Command, Stdio};

use common::{MEDIA_TIMEOUT, TONE_TOLERANCE_HZ, eventually};
use protocol::MediaKind;

const TEST: &str = "gstreamer_webrtcbin_publishes_vp8_and_opus";
const NETNS_VAR: &str = "MEET_TEST_IN_GST_NETNS";
const ADDR: &str = "10.200.0.1";
const TONE_HZ: f32 = 500.0;

/// The publisher's process, killed when the test ends whichever way.
struct Publisher(Child);

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn gstreamer_webrtcbin_publishes_vp8_and_opus() {
    if std::env::var_os(NETNS_VAR).is_none() {
        let exe = std::env::current_exe().expect("the test binary");
        let script = format!(
            "ip link set lo up && ip link add v0 type veth peer name v1 && \
             ip addr add {ADDR}/24 dev v0 && ip link set v0 up && ip link set v1 up && \
             exec \"$0\" {TEST} --exact --nocapture"
        );
        let status = Command::new("unshare")
            .args(["--net", "sh", "-c", &script])
            .arg(exe)
            .env(NETNS_VAR, "1")
            .status()
            .expect("unshare runs (util-linux)");
        assert!(
            status.success(),
            "the test failed in its network namespace: {status}"
        );
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(publishes());
}

async fn publishes() {
    let t = common::start("gstreamer", |c| {
        c.media_addr = format!("{ADDR}:0").parse().expect("addr");
    })
    .await;
    let mut options = t.bot_options("gst", "viewer", 440.0, 0xB);
    options.endpoint.local_addr = format!("{ADDR}:0").parse().expect("addr");
    let viewer = loadtest::bot::Bot::connect(options)
        .await
        .expect("bot joins");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gst/publish.py");
    let child = Command::new("/usr/bin/python3")
        .arg(script)
        .args([
            "--url",
            &t.server.ws_url(),
            "--room",
            "gst",
            "--name",
            "GStreamer",
        ])
        .args(["--tone", &TONE_HZ.to_string(), "--seconds", "60"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with GStreamer runs (.ci/deps installs it)");
    let _publisher = Publisher(child);

    eventually(
        MEDIA_TIMEOUT,
        "the bot decodes webrtcbin's tone and receives its VP8",
        || {
            let snapshot = viewer.snapshot();
            let frequencies = viewer.dominant_frequencies();
            let Some(gst) = snapshot
                .roster
                .participants
                .iter()
                .find(|(_, p)| p.name == "GStreamer")
                .map(|(id, _)| *id)
            else {
                return false;
            };
            let mut audio = false;
            let mut video = false;
            for (id, stats) in &snapshot.received {
                if stats.participant_id != gst {
                    continue;
                }
                match stats.kind {
                    MediaKind::Audio => {
                        audio = stats.audio_frames_decoded >= 50
                            && stats.audio_decode_errors == 0
                            && frequencies
                                .get(id)
                                .is_some_and(|f| (f - TONE_HZ).abs() <= TONE_TOLERANCE_HZ);
                    }
                    MediaKind::Video => video = stats.video_frames >= 30 && stats.keyframes >= 1,
                }
            }
            audio && video
        },
    )
    .await;
    // Nothing the server received from webrtcbin was dropped for want of a stream to carry it.
    let metrics = t.metrics().await;
    let unknown = metrics
        .lines()
        .find(|l| l.starts_with("meet_dropped_packets_total{reason=\"unknown_ssrc\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse::<f64>().unwrap_or(0.0));
    assert_eq!(
        unknown, 0.0,
        "packets dropped as of unknown SSRC:\n{metrics}"
    );
}
