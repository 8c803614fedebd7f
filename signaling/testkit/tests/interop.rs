//! The webrtc-rs client against a minimal str0m SFU over the real signaling protocol: two
//! clients hear each other's tone, see each other's video tag, follow each other's
//! publications coming and going, and see each other leave.

mod mini_sfu;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use meet_testkit::{ClientOptions, RosterEvent, Snapshot, WebrtcRsClient};
use mini_sfu::MiniSfu;
use protocol::{LeaveReason, MediaKind, ParticipantId};

const TONE_TOLERANCE_HZ: f32 = 15.0;
const MEDIA_TIMEOUT: Duration = Duration::from_secs(15);

fn setup() {
    meet_testkit::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn options(sfu: &MiniSfu, room: &str, name: &str, tone_hz: f32, tag: u64) -> ClientOptions {
    ClientOptions::new(&sfu.url, room, name, sfu.cert_pem.clone(), tone_hz, tag)
}

/// Whether `snapshot` shows a healthy stream of tone and tagged video from `sender`.
fn hears_and_sees(snapshot: &Snapshot, sender: ParticipantId, tone_hz: f32, tag: u64) -> bool {
    snapshot.received.get(&sender).is_some_and(|media| {
        media.opus_frames_decoded >= 25
            && media
                .dominant_frequency_hz
                .is_some_and(|f| (f - tone_hz).abs() <= TONE_TOLERANCE_HZ)
            && media.video_frames >= 5
            && media.video_tag == Some(tag)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_webrtc_rs_clients_exchange_media_through_str0m() -> anyhow::Result<()> {
    setup();
    let sfu = MiniSfu::start().await?;

    // Alice publishes first; Bob finds her publications in `joined` and subscribes in his
    // first offer. Alice learns of Bob's through `publication_added` and re-offers.
    let alice = WebrtcRsClient::join(options(&sfu, "r1", "alice", 440.0, 0xA11CE)).await?;
    alice.wait_for(MEDIA_TIMEOUT, |s| s.media_connected).await?;
    let bob = WebrtcRsClient::join(options(&sfu, "r1", "bob", 880.0, 0xB0B)).await?;
    let (a, b) = (alice.participant_id(), bob.participant_id());
    assert_ne!(a, b);

    let at_bob = bob
        .wait_for(MEDIA_TIMEOUT, |s| hears_and_sees(s, a, 440.0, 0xA11CE))
        .await?;
    let at_alice = alice
        .wait_for(MEDIA_TIMEOUT, |s| hears_and_sees(s, b, 880.0, 0xB0B))
        .await?;

    // Each sees exactly the other's two publications, audio and video.
    for (snapshot, other) in [(&at_bob, a), (&at_alice, b)] {
        assert_eq!(snapshot.subscribed.len(), 2, "{snapshot:#?}");
        let kinds: Vec<MediaKind> = snapshot
            .publications
            .values()
            .filter(|p| p.sender == other)
            .map(|p| p.kind)
            .collect();
        assert!(kinds.contains(&MediaKind::Audio) && kinds.contains(&MediaKind::Video));
        assert!(snapshot.server_errors.is_empty(), "{snapshot:#?}");
        assert!(snapshot.client_errors.is_empty(), "{snapshot:#?}");
        assert!(snapshot.media_connected);
        assert_eq!(snapshot.own_publications.len(), 2);
    }
    // Alice saw Bob join and publish; Bob's first offer already covered Alice, so
    // Alice needed a second negotiation and Bob did not.
    assert!(at_alice.roster.saw_join(b));
    assert_eq!(
        at_alice
            .roster
            .events
            .iter()
            .filter(|e| matches!(e, RosterEvent::PublicationAdded(p) if p.participant_id == b))
            .count(),
        2
    );
    assert!(at_alice.negotiations >= 2, "{at_alice:#?}");
    assert_eq!(at_bob.roster.participants.len(), 1);
    assert_eq!(at_bob.roster.participants[&a].name, "alice");

    // Every new video subscription made the SFU ask the publisher for a keyframe, and the
    // webrtc-rs client saw the PLI arrive.
    assert!(sfu.stats.keyframe_requests.load(Relaxed) >= 2);
    alice
        .wait_for(MEDIA_TIMEOUT, |s| s.sent.keyframe_requests >= 1)
        .await?;
    assert!(sfu.stats.candidates.load(Relaxed) >= 2);
    assert_eq!(sfu.stats.non_loopback_candidates.load(Relaxed), 0);
    assert_eq!(sfu.stats.end_of_candidates.load(Relaxed), 2);

    // Bob leaves: Alice sees his publications end and the reason, and her re-offer that
    // stops the receive transceivers is answered.
    let negotiations_before = alice.snapshot().await.negotiations;
    bob.leave().await?;
    let after = alice
        .wait_for(MEDIA_TIMEOUT, |s| {
            s.roster.left_reason(b) == Some(LeaveReason::Left)
                && s.subscribed.is_empty()
                && s.negotiations > negotiations_before
        })
        .await?;
    assert!(after.roster.participants.is_empty());
    assert!(after.client_errors.is_empty(), "{after:#?}");
    alice.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_clients_receive_each_other_and_an_aborted_one_times_out() -> anyhow::Result<()> {
    setup();
    let sfu = MiniSfu::start().await?;
    let alice = WebrtcRsClient::join(options(&sfu, "r2", "alice", 500.0, 1)).await?;
    let bob = WebrtcRsClient::join(options(&sfu, "r2", "bob", 700.0, 2)).await?;
    let carol = WebrtcRsClient::join(options(&sfu, "r2", "carol", 900.0, 3)).await?;
    let (a, b, c) = (
        alice.participant_id(),
        bob.participant_id(),
        carol.participant_id(),
    );

    // Everyone receives both others: six streams of tone and video.
    for (client, others) in [
        (&alice, [(b, 700.0, 2), (c, 900.0, 3)]),
        (&bob, [(a, 500.0, 1), (c, 900.0, 3)]),
        (&carol, [(a, 500.0, 1), (b, 700.0, 2)]),
    ] {
        client
            .wait_for(MEDIA_TIMEOUT, |s| {
                others
                    .iter()
                    .all(|(id, hz, tag)| hears_and_sees(s, *id, *hz, *tag))
            })
            .await?;
    }

    // Carol vanishes without a goodbye.
    carol.abort().await;
    for client in [&alice, &bob] {
        let s = client
            .wait_for(MEDIA_TIMEOUT, |s| {
                s.roster.left_reason(c) == Some(LeaveReason::TimedOut) && s.subscribed.len() == 2
            })
            .await?;
        assert!(s.client_errors.is_empty(), "{s:#?}");
    }

    // Media between the remaining two keeps flowing after the renegotiation.
    let before = alice.received().await[&b].audio_packets;
    alice
        .wait_for(MEDIA_TIMEOUT, |s| {
            s.received[&b].audio_packets >= before + 50
        })
        .await?;

    alice.leave().await?;
    bob.leave().await?;
    Ok(())
}
