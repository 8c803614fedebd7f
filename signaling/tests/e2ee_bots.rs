//! End-to-end encrypted media through the real server: str0m bots seal every audio and video
//! frame in the SFrame format of `docs/e2ee.md`, the server forwards what it cannot read, and
//! only bots holding the key decode anything. A bot without the key receives the packets and
//! decodes nothing; frames a publisher corrupts are dropped by every receiver, never decoded.

mod common;

use std::collections::HashMap;

use common::{MEDIA_TIMEOUT, bot_receives, eventually};
use endpoint::sframe;
use endpoint::{E2eeConfig, ReceivedStats};
use loadtest::bot::{Bot, BotSnapshot};
use protocol::{MediaKind, ParticipantId};

/// The media key every keyed bot of a test holds (a run of the load tester draws one).
const KEY: sframe::BaseKey = *b"0123456789abcdef";

fn kid() -> u64 {
    sframe::kid(42, 0)
}

/// A bot in E2EE mode: `e2ee` decides what it holds; `publishes` whether it sends media.
async fn bot(
    t: &common::TestServer,
    name: &str,
    tone_hz: f32,
    tag: u64,
    e2ee: E2eeConfig,
    publishes: bool,
) -> Bot {
    let mut options = t.bot_options("sealed", name, tone_hz, tag);
    options.endpoint.publish_audio = publishes;
    options.endpoint.publish_video = publishes;
    options.endpoint.e2ee = Some(e2ee);
    Bot::connect(options).await.expect("joins")
}

/// The stats of what `snapshot`'s bot receives from `sender`, by kind.
fn from(snapshot: &BotSnapshot, sender: ParticipantId) -> HashMap<MediaKind, ReceivedStats> {
    snapshot
        .received
        .values()
        .filter(|s| s.participant_id == sender)
        .map(|s| (s.kind, s.clone()))
        .collect()
}

/// Every frame received from `sender` either decrypted and went on to be decoded, or failed
/// and went nowhere.
fn assert_accounted(snapshot: &BotSnapshot, sender: ParticipantId) {
    for (kind, s) in from(snapshot, sender) {
        assert_eq!(s.frames_decrypted + s.decrypt_failures, s.frames, "{s:?}");
        let decoded = match kind {
            MediaKind::Audio => s.audio_frames_decoded,
            MediaKind::Video => s.video_frames,
        };
        assert_eq!(decoded, s.frames_decrypted, "{kind:?}: {s:?}");
        assert_eq!((s.untagged_frames, s.tag_changes), (0, 0), "{s:?}");
    }
}

fn decrypted(snapshot: &BotSnapshot, sender: ParticipantId) -> u64 {
    from(snapshot, sender)
        .values()
        .map(|s| s.frames_decrypted)
        .sum()
}

fn failures(snapshot: &BotSnapshot, sender: ParticipantId) -> u64 {
    from(snapshot, sender)
        .values()
        .map(|s| s.decrypt_failures)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_holders_decode_every_frame_and_a_keyless_bot_none() {
    let t = common::start("e2ee-bots", |_| {}).await;
    let keyed = || E2eeConfig::with_key(kid(), KEY);
    let alice = bot(&t, "alice", 440.0, 0xA1, keyed(), true).await;
    let bob = bot(&t, "bob", 660.0, 0xB0, keyed(), true).await;
    let carol = bot(&t, "carol", 0.0, 0xC0, keyed(), false).await;
    let dave = bot(&t, "dave", 0.0, 0xD0, keyed(), false).await;
    let eve = bot(&t, "eve", 0.0, 0xE0, E2eeConfig::keyless(), false).await;
    let (a, b) = (alice.participant_id(), bob.participant_id());

    // Tones identified and video tags read: only possible on decrypted frames.
    eventually(
        MEDIA_TIMEOUT,
        "key holders hear and see the publishers",
        || {
            bot_receives(&alice, b, 660.0, 0xB0)
                && bot_receives(&bob, a, 440.0, 0xA1)
                && [&carol, &dave].iter().all(|bot| {
                    bot_receives(bot, a, 440.0, 0xA1) && bot_receives(bot, b, 660.0, 0xB0)
                })
        },
    )
    .await;

    // From then on (well past the first second of media) no genuine frame fails: take the
    // counts now, let plenty more frames arrive, and compare.
    let receivers = [
        (&alice, b),
        (&bob, a),
        (&carol, a),
        (&carol, b),
        (&dave, a),
        (&dave, b),
    ];
    let before: Vec<(u64, u64)> = receivers
        .iter()
        .map(|(bot, sender)| {
            let snapshot = bot.snapshot();
            (decrypted(&snapshot, *sender), failures(&snapshot, *sender))
        })
        .collect();
    eventually(MEDIA_TIMEOUT, "a hundred more frames decrypt", || {
        receivers
            .iter()
            .zip(&before)
            .all(|((bot, sender), (done, _))| decrypted(&bot.snapshot(), *sender) >= done + 100)
    })
    .await;
    for ((bot, sender), (_, failed_before)) in receivers.iter().zip(&before) {
        let snapshot = bot.snapshot();
        assert_eq!(
            failures(&snapshot, *sender),
            *failed_before,
            "{:?}",
            from(&snapshot, *sender)
        );
        assert_accounted(&snapshot, *sender);
    }

    // Eve gets the same packets and can make nothing of them.
    eventually(MEDIA_TIMEOUT, "eve receives both publishers' media", || {
        let snapshot = eve.snapshot();
        [a, b].iter().all(|sender| {
            let got = from(&snapshot, *sender);
            got.len() == 2 && got.values().all(|s| s.rtp_packets > 0 && s.frames >= 10)
        })
    })
    .await;
    assert!(eve.stats().wire.packets_received > 0);
    let snapshot = eve.snapshot();
    for sender in [a, b] {
        for (kind, s) in from(&snapshot, sender) {
            assert_eq!(s.frames_decrypted, 0, "{kind:?}: {s:?}");
            assert_eq!(s.decrypt_failures, s.frames, "{kind:?}: {s:?}");
            assert_eq!(
                s.audio_frames_decoded + s.video_frames + s.keyframes,
                0,
                "{s:?}"
            );
            assert_eq!(s.video_tag, None);
        }
    }
    for bot in [&alice, &bob, &carol, &dave, &eve] {
        let snapshot = bot.snapshot();
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        assert!(snapshot.failures.is_empty(), "{:?}", snapshot.failures);
        assert_eq!(snapshot.sent.write_errors, 0);
    }
    // The publishers sealed everything they sent.
    for bot in [&alice, &bob] {
        let sent = bot.snapshot().sent;
        assert!(sent.frames_sealed > 0, "{sent:?}");
        assert!(
            sent.frames_sealed >= sent.audio_packets + sent.video_frames,
            "{sent:?}"
        );
        assert_eq!(sent.frames_tampered, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_frames_are_dropped_and_the_others_decoded() {
    const TAMPER_EVERY: u64 = 3;
    // Every frame is counted once: with fast start the SFU may answer carol's keyframe
    // requests (after a tampered frame) by replaying the GOP, tampered frames again.
    let t = common::start("e2ee-tamper", |c| c.fast_start = false).await;
    let tampering = E2eeConfig {
        tamper_every: TAMPER_EVERY,
        ..E2eeConfig::with_key(kid(), KEY)
    };
    let mallory = bot(&t, "mallory", 550.0, 0x3A, tampering, true).await;
    let carol = bot(
        &t,
        "carol",
        0.0,
        0xC0,
        E2eeConfig::with_key(kid(), KEY),
        false,
    )
    .await;
    let m = mallory.participant_id();

    // One frame in three fails, yet the rest carries the tone and the tag.
    eventually(MEDIA_TIMEOUT, "carol hears and sees mallory", || {
        let snapshot = carol.snapshot();
        bot_receives(&carol, m, 550.0, 0x3A)
            && from(&snapshot, m)
                .values()
                .all(|s| s.decrypt_failures >= 3 && s.frames_decrypted >= 10)
    })
    .await;
    let snapshot = carol.snapshot();
    let tampered = mallory.snapshot().sent.frames_tampered;
    assert_accounted(&snapshot, m);
    let failed = failures(&snapshot, m);
    assert!(
        failed <= tampered,
        "{failed} failures but {tampered} frames tampered: {:?}",
        from(&snapshot, m)
    );
    let sent = mallory.snapshot().sent;
    assert_eq!(sent.write_errors, 0);
    assert_eq!(
        sent.frames_tampered,
        sent.frames_sealed / TAMPER_EVERY,
        "{sent:?}"
    );
    for bot in [&mallory, &carol] {
        let snapshot = bot.snapshot();
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        assert!(snapshot.failures.is_empty(), "{:?}", snapshot.failures);
    }
}
