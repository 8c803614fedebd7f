//! A meeting on the real server over loopback: str0m bots and an independent webrtc-rs client
//! join one room and each proves it hears and sees every other participant.

mod common;

use std::time::Duration;

use common::{MEDIA_TIMEOUT, bot_audio_frames, bot_receives, client_receives, eventually};
use meet_testkit::WebrtcRsClient;
use protocol::LeaveReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bots_and_a_webrtc_rs_client_receive_each_other() {
    let t = common::start("meeting", |_| {}).await;
    let alice = t.bot("council", "Alice (str0m)", 440.0, 0xA1).await;
    let bob = t.bot("council", "Bob (str0m)", 660.0, 0xB0).await;
    let carol =
        WebrtcRsClient::join(t.webrtc_rs_options("council", "Carol (webrtc-rs)", 880.0, 0xCA))
            .await
            .expect("webrtc-rs client joins");
    let (a, b, c) = (
        alice.participant_id(),
        bob.participant_id(),
        carol.participant_id(),
    );

    eventually(MEDIA_TIMEOUT, "alice hears and sees bob and carol", || {
        bot_receives(&alice, b, 660.0, 0xB0) && bot_receives(&alice, c, 880.0, 0xCA)
    })
    .await;
    eventually(MEDIA_TIMEOUT, "bob hears and sees alice and carol", || {
        bot_receives(&bob, a, 440.0, 0xA1) && bot_receives(&bob, c, 880.0, 0xCA)
    })
    .await;
    let seen = carol
        .wait_for(MEDIA_TIMEOUT, |s| {
            client_receives(s, a, 440.0, 0xA1) && client_receives(s, b, 660.0, 0xB0)
        })
        .await
        .expect("carol hears and sees alice and bob");
    assert!(seen.server_errors.is_empty(), "{:?}", seen.server_errors);
    assert!(alice.snapshot().errors.is_empty());

    let stats = t
        .server
        .store
        .attendance(&protocol::RoomId("council".into()))
        .await
        .expect("attendance");
    assert_eq!(stats.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leave_and_rejoin() {
    let t = common::start("rejoin", |_| {}).await;
    let alice = t.bot("r", "alice", 440.0, 1).await;
    let bob = t.bot("r", "bob", 660.0, 2).await;
    let (a, b) = (alice.participant_id(), bob.participant_id());
    eventually(MEDIA_TIMEOUT, "alice receives bob", || {
        bot_receives(&alice, b, 660.0, 2)
    })
    .await;

    bob.leave().await;
    eventually(MEDIA_TIMEOUT, "alice is told bob left", || {
        alice
            .snapshot()
            .roster
            .left
            .contains(&(b, LeaveReason::Left))
    })
    .await;

    // Bob comes back as a new participant and media flows both ways again.
    let bob = t.bot("r", "bob", 770.0, 3).await;
    let b2 = bob.participant_id();
    assert_ne!(b, b2);
    eventually(MEDIA_TIMEOUT, "alice receives the rejoined bob", || {
        bot_receives(&alice, b2, 770.0, 3)
    })
    .await;
    eventually(MEDIA_TIMEOUT, "the rejoined bob receives alice", || {
        bot_receives(&bob, a, 440.0, 1)
    })
    .await;
    let rows = t
        .server
        .store
        .attendance(&protocol::RoomId("r".into()))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].leave_reason.as_deref(), Some("left"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_participant_is_removed_and_the_others_are_told() {
    let t = common::start("vanish", |_| {}).await;
    let alice = t.bot("r", "alice", 440.0, 1).await;
    let bob = t.bot("r", "bob", 660.0, 2).await;
    let carol = t.bot("r", "carol", 880.0, 3).await;
    let (a, b, c) = (
        alice.participant_id(),
        bob.participant_id(),
        carol.participant_id(),
    );
    eventually(MEDIA_TIMEOUT, "alice receives carol", || {
        bot_receives(&alice, c, 880.0, 3)
    })
    .await;

    // Carol's process dies: no leave, the TCP connection and UDP socket just go away.
    carol.abort().await;
    eventually(
        MEDIA_TIMEOUT,
        "alice and bob are told carol timed out",
        || {
            alice
                .snapshot()
                .roster
                .left
                .contains(&(c, LeaveReason::TimedOut))
                && bob
                    .snapshot()
                    .roster
                    .left
                    .contains(&(c, LeaveReason::TimedOut))
        },
    )
    .await;
    // The others keep their media.
    let before = bot_audio_frames(&alice.snapshot(), b);
    eventually(MEDIA_TIMEOUT, "alice keeps hearing bob", || {
        bot_audio_frames(&alice.snapshot(), b) >= before + 25
    })
    .await;
    let _ = a;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_client_is_removed_after_the_heartbeat_timeout() {
    let t = common::start("silent", |c| {
        c.session_limits.heartbeat_interval = Duration::from_millis(200);
        c.session_limits.heartbeat_timeout = Duration::from_secs(1);
    })
    .await;
    let alice = t.bot("r", "alice", 440.0, 1).await;
    // A client that joins and then goes silent: its TCP connection stays open, but it neither
    // reads nor answers pings (a frozen machine, or a cable pulled behind a NAT).
    let mut frozen = t.raw().await;
    let f = frozen.join("r", "frozen").await;
    eventually(MEDIA_TIMEOUT, "alice sees the frozen client join", || {
        alice.snapshot().roster.joined.contains(&f)
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "alice is told the frozen client timed out",
        || {
            alice
                .snapshot()
                .roster
                .left
                .contains(&(f, LeaveReason::TimedOut))
        },
    )
    .await;
    drop(frozen);
}

/// Reads one sample of the Prometheus text, e.g. `meet_participants`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_metrics_describe_the_meeting() {
    let t = common::start("metrics", |_| {}).await;
    let (status, body) = t.https_get("/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    // The web client is served, its test suite is not.
    assert_eq!(t.https_get("/").await.0, 200);
    assert_eq!(t.https_get("/tests/package.json").await.0, 404);

    let (_alice, _bob) = t.two_bots_exchanging_media().await;
    // The SFU publishes its counters once a second; poll until they show the meeting.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = t.metrics().await;
        if sample(&metrics, "meet_subscriptions") == Some(4.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&metrics, "meet_rooms"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "meet_participants"), Some(2.0));
    assert_eq!(sample(&metrics, "meet_publications"), Some(4.0));
    assert_eq!(sample(&metrics, "meet_subscriptions"), Some(4.0));
    let forwarded = sample(&metrics, "meet_rtp_packets_total{direction=\"forwarded\"}");
    assert!(forwarded.is_some_and(|v| v > 50.0), "{metrics}");
    assert!(sample(&metrics, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    assert!(
        sample(&metrics, "process_cpu_seconds_total").is_some(),
        "{metrics}"
    );
    assert!(metrics.contains("meet_dropped_packets_total{reason=\"malformed\"}"));
    // Fast start is on by default and counted (whether this pair needed it depends on when
    // each joined relative to the other's keyframes).
    assert!(
        sample(&metrics, "meet_fast_starts_total").is_some(),
        "{metrics}"
    );
    assert!(sample(&metrics, "meet_fast_start_packets_total").is_some());
    assert!(sample(&metrics, "meet_keyframe_requests_from_cache_total").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_tells_every_client_before_closing() {
    let t = common::start("shutdown", |_| {}).await;
    let alice = t.bot("r", "alice", 440.0, 1).await;
    let common::TestServer { server, data_dir } = t;
    server.shutdown().await;
    let told = |snapshot: &loadtest::bot::BotSnapshot| {
        snapshot.errors.iter().any(|(code, message)| {
            *code == protocol::ErrorCode::ServerStopping && message.contains("restarting")
        }) && snapshot.closed.is_some()
    };
    let deadline = tokio::time::Instant::now() + MEDIA_TIMEOUT;
    let mut snapshot = alice.snapshot();
    while !told(&snapshot) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        snapshot = alice.snapshot();
    }
    assert!(
        told(&snapshot),
        "errors {:?}, closed {:?}, failures {:?}",
        snapshot.errors,
        snapshot.closed,
        snapshot.failures
    );
    drop(data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_quality_reaches_the_roster() {
    let t = common::start("quality", |_| {}).await;
    let (alice, bob) = t.two_bots_exchanging_media().await;
    let b = bob.participant_id();
    // Loopback loses nothing and answers at once: the SFU's reading of Bob's transport,
    // from str0m's periodic peer statistics, must say so.
    eventually(MEDIA_TIMEOUT, "alice sees bob's connection quality", || {
        alice
            .snapshot()
            .roster
            .participants
            .get(&b)
            .is_some_and(|p| p.quality == Some(protocol::Quality::Good))
    })
    .await;
}
