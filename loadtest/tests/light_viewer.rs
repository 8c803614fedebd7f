//! Light viewers against the real server (started in this process): a light viewer counts
//! packets, finds the first keyframe and the sender's tag without reassembling or decoding any
//! frame, and a load run with light viewers reports what they checked, with the loopback floor
//! measured in the same run. Only outcomes are asserted, never timings.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

mod common;

use endpoint::{Endpoint, EndpointConfig, EndpointError};
use loadtest::bot::{Bot, BotOptions, tls_config_trusting_pem};
use loadtest::scenario;
use loadtest::spec::{Scenario, Slo};
use protocol::MediaKind;

/// Generous: a shared CI machine may be slow to connect, but the media flows within seconds.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn a_light_endpoint_cannot_publish() {
    let mut config = EndpointConfig::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9));
    config.light = true;
    assert!(matches!(
        Endpoint::new(std::time::Instant::now(), config),
        Err(EndpointError::LightPublisher)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_viewer_counts_packets_and_keyframes_without_decoding() {
    let dir = common::data_dir("light");
    let server = common::start_server(&dir).await;
    let tls = tls_config_trusting_pem(&server.cert_pem).expect("pinned cert");
    let options = |name: &str| {
        let mut options = BotOptions::new(server.ws_url(), "light", name, tls.clone());
        options.endpoint.video_fps = 15;
        options.endpoint.video_frame_bytes = 1_500;
        options
    };
    let mut presenter = options("presenter");
    presenter.endpoint.video_tag = 7;
    presenter.role = Some(protocol::Role::Presenter);
    let presenter = Bot::connect(presenter).await.expect("presenter joins");

    let mut viewer = options("viewer");
    viewer.role = Some(protocol::Role::Viewer);
    viewer.endpoint.publish_audio = false;
    viewer.endpoint.publish_video = false;
    viewer.endpoint.light = true;
    // Even asked to, a light viewer decodes nothing.
    viewer.endpoint.analyze_audio = true;
    let viewer = Bot::connect(viewer).await.expect("viewer joins");

    let snapshot = viewer
        .wait_until(MEDIA_TIMEOUT, |s| {
            let kinds = |kind| s.received.values().filter(move |r| r.kind == kind);
            kinds(MediaKind::Video).any(|r| r.first_keyframe_at.is_some() && r.video_frames > 10)
                && kinds(MediaKind::Audio).any(|r| r.rtp_packets > 10)
        })
        .await
        .expect("the light viewer receives audio, video and a keyframe");
    let _ = viewer.leave().await;
    let _ = presenter.leave().await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    for stats in snapshot.received.values() {
        assert!(stats.rtp_packets > 0, "{stats:?}");
        assert!(stats.first_media_at.is_some(), "{stats:?}");
        // Nothing decoded, decrypted end to end or reassembled beyond the frame starts.
        assert_eq!(stats.audio_frames_decoded, 0, "{stats:?}");
        assert_eq!(stats.audio_decode_errors, 0, "{stats:?}");
        assert_eq!(stats.frames_decrypted, 0, "{stats:?}");
        if stats.kind == MediaKind::Video {
            assert!(stats.keyframes > 0, "{stats:?}");
            // The tag is read at each frame start: the presenter's, on its single layer.
            assert_eq!(stats.video_tag, Some(7), "{stats:?}");
            assert_eq!(stats.untagged_frames, 0, "{stats:?}");
            assert_eq!(stats.tag_changes, 0, "{stats:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_broadcast_reports_its_checks_and_the_floor() {
    let dir = common::data_dir("light-run");
    let server = common::start_server(&dir).await;
    let target = common::target(&server);
    let scenario = Scenario {
        presenters: 1,
        viewers: 3,
        join_rate: 20.0,
        duration_s: 3.0,
        video_kbps: 200,
        video_fps: 15,
        light_viewers: true,
        measure_floor: true,
        slo: Slo {
            loss_pct: None,
            ..Slo::default()
        },
        ..Scenario::default()
    };
    let report = scenario::run(&scenario, &target, None).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = report.expect("the run completes");

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    for endpoint in &report.endpoints {
        assert!(endpoint.joined, "{endpoint:?}");
        // The one presenter has nobody to receive from.
        if endpoint.role == loadtest::report::Role::Viewer {
            assert!(endpoint.packets_received > 0, "{endpoint:?}");
            assert!(endpoint.first_keyframe_ms.is_some(), "{endpoint:?}");
            assert!(endpoint.video_frames > 0, "{endpoint:?}");
            assert_eq!(endpoint.frames_decrypted, 0, "{endpoint:?}");
        }
    }
    assert!(report.receive_checks.starts_with("light viewers"));
    assert!(report.receive_checks.contains("audio tone identity"));
    let floor = report.floor.as_ref().expect("the floor was measured");
    assert!(floor.single.packets > 0 && floor.batched.packets > 0);
    assert!(floor.single.process_core_us_per_packet > 0.0);
    let summary = report.summary();
    assert!(summary.contains("floor (AES-128-GCM + send)"), "{summary}");
    if report.server.core_us_per_forwarded_packet.is_some() {
        assert!(report.floor_multiple.is_some_and(|m| m > 0.0));
        assert!(summary.contains("× the floor"), "{summary}");
    }
}
