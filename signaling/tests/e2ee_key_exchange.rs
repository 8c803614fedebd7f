//! The end-to-end key exchange of docs/e2ee.md spoken by str0m bots through the real server:
//! each bot announces a device key at join, viewers ask the presenter for its key with
//! `e2ee_keys`, the presenter answers with its key wrapped for each of them (ratcheting for
//! the newcomers) and, when the server tells it that someone it gave its key to left, makes a
//! new key in the next epoch for those who remain. The bots wrap exactly as the browser does (the committed vector in
//! loadtest/endpoint/tests/data/e2ee-wrap-vector.json, which web-client/tests/keywrap.test.mjs
//! checks with the browser's code), so what passes here passes between bots and browsers.

mod common;

use std::time::Duration;

use common::{MEDIA_TIMEOUT, bot_receives, eventually};
use endpoint::E2eeConfig;
use endpoint::keys::KeyPolicy;
use loadtest::bot::{Bot, BotSnapshot};
use protocol::{ParticipantId, Role};

/// A bot speaking the key exchange: a presenter that publishes, or a receiving viewer (light:
/// RTP mode, opening each audio packet only).
async fn bot(t: &common::TestServer, name: &str, presenter: bool, light: bool) -> Bot {
    let mut options = t.bot_options("keys", name, 440.0, 0xA1);
    options.endpoint.publish_audio = presenter;
    options.endpoint.publish_video = presenter;
    options.endpoint.light = light;
    options.endpoint.e2ee = Some(E2eeConfig::exchanged());
    options.key_exchange = Some(KeyPolicy::BROWSER);
    options.role = Some(if presenter {
        Role::Presenter
    } else {
        Role::Viewer
    });
    Bot::connect(options).await.expect("joins")
}

fn decrypted(snapshot: &BotSnapshot, sender: ParticipantId) -> u64 {
    snapshot
        .received
        .values()
        .filter(|s| s.participant_id == sender)
        .map(|s| s.frames_decrypted)
        .sum()
}

/// The newest epoch of `sender` whose frames `bot` opened.
fn newest_epoch(bot: &Bot, sender: ParticipantId) -> Option<u64> {
    bot.key_timeline()
        .epochs_opened
        .get(&sender)
        .and_then(|epochs| epochs.iter().map(|(epoch, _)| *epoch).max())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_get_the_presenters_key_through_the_server_and_a_departure_rekeys() {
    let t = common::start("e2ee-keys", |_| {}).await;
    let presenter = bot(&t, "presenter", true, false).await;
    let p = presenter.participant_id();
    let anna = bot(&t, "anna", false, false).await;
    let ben = bot(&t, "ben", false, true).await;
    let cleo = bot(&t, "cleo", false, false).await;

    // Tones identified and video tags read: only possible on frames opened with keys that
    // came wrapped through the server. The light viewer opens audio packets.
    eventually(MEDIA_TIMEOUT, "the viewers decrypt the presenter", || {
        bot_receives(&anna, p, 440.0, 0xA1)
            && bot_receives(&cleo, p, 440.0, 0xA1)
            && decrypted(&ben.snapshot(), p) >= 25
    })
    .await;
    // The newcomers moved the presenter on by a generation for each answer (requests close
    // together share one); the first viewers derived the later generations by themselves.
    let sending = presenter.stats().keys.expect("speaks the exchange");
    assert_eq!(sending.requests_answered, 3, "{sending:?}");
    assert!((1..=3).contains(&sending.ratchets), "{sending:?}");
    assert_eq!(sending.wrap_keys_derived, 3, "one ECDH per recipient");
    for viewer in [&anna, &ben, &cleo] {
        let stats = viewer.stats();
        let keys = stats.keys.expect("speaks the exchange");
        assert!(
            keys.keys_received >= 1 && keys.keys_refused == 0,
            "{keys:?}"
        );
        assert!(
            stats.key_traffic.messages_sent >= 1,
            "{:?}",
            stats.key_traffic
        );
        assert!(
            stats.key_traffic.messages_received >= 1,
            "{:?}",
            stats.key_traffic
        );
    }
    assert_eq!(newest_epoch(&anna, p), Some(0));
    // The server counts what its key relay carried (the figures the load test reads).
    let metrics = t.metrics().await;
    for series in [
        "meet_e2ee_key_messages_total{direction=\"in\"}",
        "meet_e2ee_key_messages_total{direction=\"out\"}",
        "meet_e2ee_key_bytes_total{direction=\"out\"}",
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(value.is_some_and(|v| v > 0.0), "{series}: {value:?}");
    }

    // Cleo leaves. The presenter cannot see viewers, but the server tells it (she asked for
    // its key): it makes a new key in the next epoch for those who remain, and uses it once
    // it had time to arrive.
    let c = cleo.participant_id();
    cleo.leave().await;
    eventually(
        MEDIA_TIMEOUT,
        "the others decrypt under a new epoch",
        || {
            newest_epoch(&anna, p).is_some_and(|e| e >= 1)
                && newest_epoch(&ben, p).is_some_and(|e| e >= 1)
        },
    )
    .await;
    let timeline = presenter.key_timeline();
    let rekey = timeline.rekeys.first().expect("a departure rekey");
    assert_eq!(rekey.epoch, 1);
    assert_eq!(rekey.covers, vec![c]);
    assert_eq!(rekey.wraps, 2, "for the two who remain");
    assert!(rekey.used_at.is_some());
    assert_eq!(timeline.rekey_wrap_times.len(), timeline.rekeys.len());
    assert_eq!(
        presenter.stats().keys.expect("keys").wraps,
        5,
        "three answers, then the new epoch for two"
    );
    let told = presenter.snapshot().roster.left;
    assert!(
        told.iter().any(|(id, _)| *id == c),
        "the server told the presenter"
    );

    // Nothing was refused along the way, and nothing went out in clear.
    for viewer in [&presenter, &anna, &ben] {
        let snapshot = viewer.snapshot();
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        assert!(snapshot.failures.is_empty(), "{:?}", snapshot.failures);
        assert_eq!(snapshot.sent.write_errors, 0);
    }
    let sent = presenter.snapshot().sent;
    assert!(sent.frames_sealed >= sent.audio_packets + sent.video_frames);
    // Waiting a moment more changes nothing: frames keep opening under the new epoch.
    let before = decrypted(&anna.snapshot(), p);
    eventually(Duration::from_secs(10), "more frames open", || {
        decrypted(&anna.snapshot(), p) >= before + 50
    })
    .await;
}
