//! The load tester's bot (`loadtest::bot`) against the real server over loopback: its TLS
//! WebSocket, its UDP socket and its endpoint talking to the product's signaling and SFU.

mod common;

use std::time::Duration;

use common::{MEDIA_TIMEOUT, bot_receives, eventually};
use loadtest::bot::{Bot, BotError, BotSnapshot, insecure_tls_config, tls_config_trusting_pem};
use protocol::{ErrorCode, LeaveReason, MediaKind, ParticipantId, PublicationId};

/// Limit for signaling round trips (no media involved).
const WAIT: Duration = Duration::from_secs(10);

/// The publication of `kind` that `owner` has, as `bot` knows it from the roster.
fn publication(bot: &Bot, owner: ParticipantId, kind: MediaKind) -> PublicationId {
    bot.snapshot()
        .roster
        .participants
        .get(&owner)
        .and_then(|p| p.publications.iter().find(|p| p.kind == kind))
        .map(|p| p.id)
        .expect("the owner's publication is in the roster")
}

fn frames(snapshot: &BotSnapshot, publication: PublicationId) -> u64 {
    snapshot.received.get(&publication).map_or(0, |r| r.frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_exchange_media_over_real_sockets() {
    // The media thread writes its own datagrams, as on a machine with fewer than four cores.
    two_bots_exchange_media("bot-media", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_exchange_media_through_the_send_thread() {
    two_bots_exchange_media("bot-media-send-thread", true).await;
}

async fn two_bots_exchange_media(tag: &str, send_thread: bool) {
    let t = common::start(tag, |c| c.media_send_thread = Some(send_thread)).await;
    let alice = t.bot("r", "alice", 440.0, 0xA).await;
    let bob = t.bot("r", "bob", 880.0, 0xB).await;
    let (a, b) = (alice.participant_id(), bob.participant_id());
    assert_ne!(a, b);
    assert!(alice.local_addr().ip().is_loopback());

    eventually(MEDIA_TIMEOUT, "alice and bob receive each other", || {
        bot_receives(&alice, b, 880.0, 0xB) && bot_receives(&bob, a, 440.0, 0xA)
    })
    .await;
    for (me, other) in [(&alice, b), (&bob, a)] {
        let snapshot = me.snapshot();
        assert!(snapshot.media_connected_at.is_some());
        assert!(snapshot.ice_connected_at.is_some());
        assert!(snapshot.connected);
        assert!(snapshot.running);
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        assert!(snapshot.failures.is_empty(), "{:?}", snapshot.failures);
        assert_eq!(snapshot.roster.own_publications.len(), 2);
        assert_eq!(snapshot.received.len(), 2);
        assert!(
            snapshot
                .received
                .values()
                .all(|r| r.participant_id == other && r.subscribed)
        );
        assert_eq!(me.dominant_frequencies().len(), 1, "one tone heard");
    }
    assert_eq!(alice.snapshot().roster.joined, vec![b]);
    assert!(
        bob.snapshot().roster.joined.is_empty(),
        "alice was there first"
    );

    // Media keeps flowing both ways: another second's worth is sent and arrives.
    let audio = publication(&alice, b, MediaKind::Audio);
    let video = publication(&bob, a, MediaKind::Video);
    let (sent, heard, seen) = (
        alice.snapshot().sent,
        frames(&alice.snapshot(), audio),
        frames(&bob.snapshot(), video),
    );
    alice
        .wait_until(MEDIA_TIMEOUT, |s| {
            s.sent.audio_packets >= sent.audio_packets + 50
                && s.sent.video_frames >= sent.video_frames + 15
                && frames(s, audio) >= heard + 50
        })
        .await
        .expect("alice keeps sending and hearing");
    bob.wait_until(MEDIA_TIMEOUT, |s| frames(s, video) >= seen + 15)
        .await
        .expect("bob keeps seeing alice");
}

/// `publication_added` says what each publication is sent in, so that a client can tell
/// whether it decodes it before it subscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_added_names_the_codec() {
    let t = common::start("bot-codec", |_| {}).await;
    let alice = t.bot("r", "alice", 440.0, 0xA).await;
    let bob = t.bot("r", "bob", 880.0, 0xB).await;
    let b = bob.participant_id();
    let codecs = || {
        let mut codecs: Vec<(MediaKind, Option<String>)> = alice
            .snapshot()
            .roster
            .participants
            .get(&b)
            .map(|p| {
                p.publications
                    .iter()
                    .map(|p| (p.kind, p.codec.clone()))
                    .collect()
            })
            .unwrap_or_default();
        codecs.sort_by_key(|(kind, _)| *kind == MediaKind::Video);
        codecs
    };
    eventually(WAIT, "alice hears of bob's two publications", || {
        codecs().len() == 2
    })
    .await;
    assert_eq!(
        codecs(),
        vec![
            (MediaKind::Audio, Some("audio/opus".to_owned())),
            (MediaKind::Video, Some("video/VP8".to_owned())),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_leaves_is_reported_left() {
    let t = common::start("bot-leave", |_| {}).await;
    let alice = t.bot("r", "alice", 440.0, 1).await;
    let bob = t.bot("r", "bob", 660.0, 2).await;
    let a = alice.participant_id();
    eventually(MEDIA_TIMEOUT, "bob receives alice", || {
        bot_receives(&bob, a, 440.0, 1)
    })
    .await;

    // Like the web client, the bot sends `leave` and closes its media transport (DTLS
    // close_notify) at once: however the two race, the room must be told `left`.
    let last = alice.leave().await;
    assert!(!last.running);
    assert_eq!(last.closed.as_deref(), Some("left"));
    let snapshot = bob
        .wait_until(WAIT, |s| !s.roster.left.is_empty())
        .await
        .expect("bob is told");
    assert_eq!(snapshot.roster.left, vec![(a, LeaveReason::Left)]);
    assert!(snapshot.roster.participants.is_empty());
    assert_eq!(snapshot.roster.publications_removed.len(), 2);
    assert!(snapshot.received.values().all(|r| !r.subscribed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_bot_is_reported_timed_out() {
    let t = common::start("bot-abort", |_| {}).await;
    let alice = t.bot("r", "alice", 440.0, 1).await;
    let bob = t.bot("r", "bob", 660.0, 2).await;
    let b = bob.participant_id();
    eventually(MEDIA_TIMEOUT, "alice receives bob", || {
        bot_receives(&alice, b, 660.0, 2)
    })
    .await;

    let last = bob.abort().await;
    assert!(!last.running);
    assert_eq!(last.closed.as_deref(), Some("aborted"));
    let snapshot = alice
        .wait_until(MEDIA_TIMEOUT, |s| !s.roster.left.is_empty())
        .await
        .expect("alice is told");
    assert_eq!(snapshot.roster.left, vec![(b, LeaveReason::TimedOut)]);
    assert!(snapshot.received.values().all(|r| !r.subscribed));
    eventually(MEDIA_TIMEOUT, "the SFU dropped bob's transport", || {
        t.server.sfu.snapshot().participants == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_reaches_the_others_and_stops_the_media() {
    let t = common::start("bot-mute", |_| {}).await;
    let alice = t.bot("r", "alice", 440.0, 1).await;
    let bob = t.bot("r", "bob", 660.0, 2).await;
    let a = alice.participant_id();
    eventually(MEDIA_TIMEOUT, "bob receives alice", || {
        bot_receives(&bob, a, 440.0, 1)
    })
    .await;
    let audio = publication(&bob, a, MediaKind::Audio);
    let video = publication(&bob, a, MediaKind::Video);

    alice.set_muted(MediaKind::Audio, true).expect("running");
    let snapshot = bob
        .wait_until(WAIT, |s| !s.roster.mute_changes.is_empty())
        .await
        .expect("bob is told");
    let change = snapshot.roster.mute_changes[0];
    assert_eq!(
        (change.publication_id, change.participant_id, change.muted),
        (audio, a, true)
    );
    assert_eq!(
        snapshot.roster.publication(audio).map(|p| p.muted),
        Some(true)
    );

    // Alice's video keeps flowing and paces the check: once a second of it arrived after the
    // mute, audio sent before the mute has drained; during the next second none arrives.
    let seen = frames(&snapshot, video);
    let drained = bob
        .wait_until(MEDIA_TIMEOUT, |s| frames(s, video) >= seen + 15)
        .await
        .expect("video keeps flowing");
    let heard = frames(&drained, audio);
    let later = bob
        .wait_until(MEDIA_TIMEOUT, |s| {
            frames(s, video) >= frames(&drained, video) + 15
        })
        .await
        .expect("video keeps flowing");
    assert_eq!(frames(&later, audio), heard, "no audio while muted");

    alice.set_muted(MediaKind::Audio, false).expect("running");
    bob.wait_until(MEDIA_TIMEOUT, |s| {
        s.roster.publication(audio).is_some_and(|p| !p.muted) && frames(s, audio) >= heard + 25
    })
    .await
    .expect("bob is told and hears alice again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_pinned_certificates_and_pings() {
    let t = common::start("bot-refusals", |_| {}).await;
    match Bot::connect(t.bot_options("r", "", 440.0, 1)).await {
        Err(BotError::Refused { code, .. }) => assert_eq!(code, ErrorCode::InvalidName),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let mut options = t.bot_options("r", "alice", 440.0, 1);
    options.tls = tls_config_trusting_pem(stranger.cert.pem().as_bytes()).expect("config");
    match Bot::connect(options).await {
        Err(BotError::WebSocket(_)) => {}
        other => panic!("another certificate must be refused, got {other:?}"),
    }
    assert!(tls_config_trusting_pem(b"no pem here").is_err());

    let mut options = t.bot_options("r", "alice", 440.0, 1);
    options.tls = insecure_tls_config();
    options.ping_interval = Some(Duration::from_millis(100));
    let bot = Bot::connect(options)
        .await
        .expect("any certificate is accepted");
    bot.wait_until(WAIT, |s| s.pongs >= 2).await.expect("pongs");
    assert!(bot.snapshot().errors.is_empty());
}
