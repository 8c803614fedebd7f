//! The independent webrtc-rs client (`meet-testkit`) following a room on the real server:
//! webrtc-rs to webrtc-rs media through the SFU, publications ending and the renegotiation
//! that stops their receivers, and participants seen leaving or vanishing; DTLS with RSA and
//! ECDSA certificates in either role, and failed handshakes reported at once.

mod common;

use common::{MEDIA_TIMEOUT, bot_audio_frames, bot_receives, client_receives, eventually};
use meet_testkit::{CertificateKind, DtlsOptions, OfferedSetup, RosterEvent, WebrtcRsClient};
use protocol::{ErrorCode, LeaveReason, MediaKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_webrtc_rs_clients_exchange_media_and_see_one_leave() -> anyhow::Result<()> {
    let t = common::start("webrtc-rs-leave", |_| {}).await;
    // Alice publishes first; Bob finds her publications in `joined` and subscribes in his
    // first offer. Alice learns of Bob's through `publication_added` and offers again.
    let alice = WebrtcRsClient::join(t.webrtc_rs_options("r", "alice", 440.0, 0xA11CE)).await?;
    alice.wait_for(MEDIA_TIMEOUT, |s| s.media_connected).await?;
    let bob = WebrtcRsClient::join(t.webrtc_rs_options("r", "bob", 880.0, 0xB0B)).await?;
    let (a, b) = (alice.participant_id(), bob.participant_id());
    assert_ne!(a, b);

    let at_bob = bob
        .wait_for(MEDIA_TIMEOUT, |s| client_receives(s, a, 440.0, 0xA11CE))
        .await?;
    let at_alice = alice
        .wait_for(MEDIA_TIMEOUT, |s| client_receives(s, b, 880.0, 0xB0B))
        .await?;
    for (snapshot, other) in [(&at_bob, a), (&at_alice, b)] {
        assert_eq!(snapshot.subscribed.len(), 2, "{snapshot:#?}");
        let kinds: Vec<MediaKind> = snapshot
            .publications
            .values()
            .filter(|p| p.sender == other)
            .map(|p| p.kind)
            .collect();
        assert_eq!(kinds.len(), 2, "{snapshot:#?}");
        assert!(kinds.contains(&MediaKind::Audio) && kinds.contains(&MediaKind::Video));
        assert!(snapshot.server_errors.is_empty(), "{snapshot:#?}");
        assert!(snapshot.client_errors.is_empty(), "{snapshot:#?}");
        assert!(snapshot.media_connected);
        assert_eq!(snapshot.own_publications.len(), 2);
    }
    assert!(at_alice.roster.saw_join(b));
    let added =
        |p: &RosterEvent| matches!(p, RosterEvent::PublicationAdded(p) if p.participant_id == b);
    assert_eq!(
        at_alice.roster.events.iter().filter(|e| added(e)).count(),
        2
    );
    assert!(at_alice.negotiations >= 2, "{at_alice:#?}");
    assert_eq!(at_bob.roster.participants.len(), 1);
    assert_eq!(at_bob.roster.participants[&a].name, "alice");

    // Bob's new video subscription started on a keyframe: the one the SFU kept from Alice's
    // stream (fast start: webrtc-rs takes the replayed frames and the live ones after them),
    // or one it asked her for when that was too old.
    assert!(at_bob.received[&a].video_keyframes >= 1, "{at_bob:#?}");
    let mut started = false;
    for _ in 0..100 {
        let metrics = t.metrics().await;
        let count = |name: &str| {
            metrics
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let asked = alice.snapshot().await.sent.keyframe_requests;
        if count("meet_fast_starts_total") >= 1.0 || asked >= 1 {
            eprintln!(
                "fast starts {}, keyframe requests to alice {asked}",
                count("meet_fast_starts_total")
            );
            started = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(started, "neither a fast start nor a keyframe request");

    // Bob leaves: Alice sees his publications end and the reason, and her offer that stops
    // the receivers is answered.
    let negotiations = alice.snapshot().await.negotiations;
    bob.leave().await?;
    let after = alice
        .wait_for(MEDIA_TIMEOUT, |s| {
            s.roster.left_reason(b) == Some(LeaveReason::Left)
                && s.subscribed.is_empty()
                && s.negotiations > negotiations
        })
        .await?;
    assert!(after.roster.participants.is_empty());
    assert!(after.client_errors.is_empty(), "{after:#?}");
    assert!(after.server_errors.is_empty(), "{after:#?}");
    alice.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_participant_is_seen_timed_out_and_media_goes_on() -> anyhow::Result<()> {
    let t = common::start("webrtc-rs-abort", |_| {}).await;
    let alice = WebrtcRsClient::join(t.webrtc_rs_options("r", "alice", 500.0, 1)).await?;
    let bob = t.bot("r", "bob", 700.0, 2).await;
    let carol = WebrtcRsClient::join(t.webrtc_rs_options("r", "carol", 900.0, 3)).await?;
    let (a, b, c) = (
        alice.participant_id(),
        bob.participant_id(),
        carol.participant_id(),
    );
    alice
        .wait_for(MEDIA_TIMEOUT, |s| {
            client_receives(s, b, 700.0, 2) && client_receives(s, c, 900.0, 3)
        })
        .await?;
    eventually(MEDIA_TIMEOUT, "bob receives carol", || {
        bot_receives(&bob, c, 900.0, 3)
    })
    .await;

    // Carol's process dies: no leave, her sockets just go away.
    carol.abort().await;
    let s = alice
        .wait_for(MEDIA_TIMEOUT, |s| {
            s.roster.left_reason(c) == Some(LeaveReason::TimedOut) && s.subscribed.len() == 2
        })
        .await?;
    assert!(s.client_errors.is_empty(), "{s:#?}");
    assert!(s.roster.participants.contains_key(&b));
    eventually(MEDIA_TIMEOUT, "bob is told carol timed out", || {
        bob.snapshot()
            .roster
            .left
            .contains(&(c, LeaveReason::TimedOut))
    })
    .await;

    // Media between the remaining two keeps flowing after the renegotiation.
    let heard = alice.received().await[&b].audio_packets;
    alice
        .wait_for(MEDIA_TIMEOUT, |s| {
            s.received[&b].audio_packets >= heard + 50
        })
        .await?;
    let heard = bot_audio_frames(&bob.snapshot(), a);
    eventually(MEDIA_TIMEOUT, "bob keeps hearing alice", || {
        bot_audio_frames(&bob.snapshot(), a) >= heard + 25
    })
    .await;
    alice.leave().await?;
    Ok(())
}

/// Two clients with the given DTLS options join one room and each hears and sees the other;
/// each answer gave the server the DTLS role asked for.
async fn exchange_media(
    tag: &str,
    alice_dtls: DtlsOptions,
    bob_dtls: DtlsOptions,
) -> anyhow::Result<()> {
    let t = common::start(tag, |_| {}).await;
    let mut options = t.webrtc_rs_options("r", "alice", 440.0, 0xA);
    options.dtls = alice_dtls;
    let alice = WebrtcRsClient::join(options).await?;
    let mut options = t.webrtc_rs_options("r", "bob", 880.0, 0xB);
    options.dtls = bob_dtls;
    let bob = WebrtcRsClient::join(options).await?;
    let (a, b) = (alice.participant_id(), bob.participant_id());
    let at_bob = bob
        .wait_for(MEDIA_TIMEOUT, |s| client_receives(s, a, 440.0, 0xA))
        .await?;
    let at_alice = alice
        .wait_for(MEDIA_TIMEOUT, |s| client_receives(s, b, 880.0, 0xB))
        .await?;
    for (snapshot, dtls) in [(&at_alice, alice_dtls), (&at_bob, bob_dtls)] {
        assert!(snapshot.media_connected, "{snapshot:#?}");
        assert!(snapshot.server_errors.is_empty(), "{snapshot:#?}");
        assert!(snapshot.client_errors.is_empty(), "{snapshot:#?}");
        // The server answers `passive` (it is the DTLS server) to `active` and to `actpass`,
        // and `active` (the DTLS client) to `passive`.
        let server_role = match dtls.setup {
            OfferedSetup::Passive => "active",
            OfferedSetup::Active | OfferedSetup::ActPass => "passive",
        };
        assert_eq!(snapshot.answer_setup.as_deref(), Some(server_role));
    }
    bob.leave().await?;
    alice.leave().await?;
    Ok(())
}

fn dtls(certificate: CertificateKind, setup: OfferedSetup) -> DtlsOptions {
    DtlsOptions {
        certificate,
        setup,
        ..DtlsOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rsa_client_as_dtls_client_and_ecdsa_client_as_dtls_server_exchange_media()
-> anyhow::Result<()> {
    // Alice's RSA certificate with the server as DTLS server: the server's CertificateRequest
    // must accept RSA signatures (dimpl's did not). Bob's ECDSA one with the server as DTLS
    // client.
    exchange_media(
        "dtls-rsa-active",
        dtls(CertificateKind::Rsa, OfferedSetup::Active),
        dtls(CertificateKind::Ecdsa, OfferedSetup::Passive),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rsa_client_as_dtls_server_and_ecdsa_client_as_dtls_client_exchange_media()
-> anyhow::Result<()> {
    // Alice's RSA certificate with the server as DTLS client: its ClientHello must offer
    // ECDHE-RSA suites (dimpl's offered ECDSA only). Bob's ECDSA one with the server as DTLS
    // server.
    exchange_media(
        "dtls-rsa-passive",
        dtls(CertificateKind::Rsa, OfferedSetup::Passive),
        dtls(CertificateKind::Ecdsa, OfferedSetup::Active),
    )
    .await
}

/// A client whose DTLS handshake fails is told why, and the server counts it. The error is
/// the DTLS one, not the "timed out" that the server's media timeout would have sent 15 s
/// later: the event, not a clock, shows that it came at once.
async fn handshake_fails(tag: &str, dtls: DtlsOptions, reason: &str) -> anyhow::Result<()> {
    let t = common::start(tag, |_| {}).await;
    let mut options = t.webrtc_rs_options("r", "mallory", 500.0, 1);
    options.dtls = dtls;
    let mallory = WebrtcRsClient::join(options).await?;
    let s = mallory
        .wait_for(MEDIA_TIMEOUT, |s| !s.server_errors.is_empty())
        .await?;
    let (code, message) = &s.server_errors[0];
    assert_eq!(*code, ErrorCode::MediaUnavailable, "{s:#?}");
    assert!(
        message.starts_with("your media connection's DTLS handshake failed: "),
        "{message}"
    );
    assert!(message.contains(reason), "{message}");
    assert!(!s.media_connected, "{s:#?}");
    mallory
        .wait_for(MEDIA_TIMEOUT, |s| s.signaling_closed)
        .await?;
    // Each media worker publishes its counters ten times a second.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = t.metrics().await;
        let failures = metrics
            .lines()
            .find(|l| l.split_whitespace().next() == Some("meet_dtls_failures_total"))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok());
        if failures == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        metrics.lines().any(|l| l == "meet_dtls_failures_total 1"),
        "{metrics}"
    );
    mallory.abort().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_that_is_not_the_offered_one_is_refused_at_once() -> anyhow::Result<()> {
    handshake_fails(
        "dtls-wrong-fingerprint",
        DtlsOptions {
            wrong_fingerprint: true,
            ..DtlsOptions::default()
        },
        "does not match the offer's a=fingerprint",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_without_a_common_cipher_suite_is_refused_at_once() -> anyhow::Result<()> {
    handshake_fails(
        "dtls-no-common-cipher",
        DtlsOptions {
            cbc_only: true,
            ..DtlsOptions::default()
        },
        "no shared cipher",
    )
    .await
}

/// webrtc-rs's offer without its `a=ssrc` lines and without the mid header extension, as
/// GStreamer's webrtcbin 1.22 offers: the server can place its media by payload type only.
fn without_ssrcs_or_mid_extension(sdp: &str) -> String {
    sdp.split_inclusive("\r\n")
        .filter(|l| {
            let ssrc = l.starts_with("a=ssrc:") || l.starts_with("a=ssrc-group:");
            let mid =
                l.starts_with("a=extmap:") && l.contains("urn:ietf:params:rtp-hdrext:sdes:mid");
            !ssrc && !mid
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_whose_offer_has_no_ssrc_and_no_mid_extension_is_heard_and_seen()
-> anyhow::Result<()> {
    let t = common::start("webrtc-rs-no-ssrc", |_| {}).await;
    let mut options = t.webrtc_rs_options("r", "encoder", 440.0, 0xE);
    options.offer_rewrite = Some(without_ssrcs_or_mid_extension);
    let encoder = WebrtcRsClient::join(options).await?;
    let bot = t.bot("r", "viewer", 880.0, 0xB).await;
    let e = encoder.participant_id();
    eventually(MEDIA_TIMEOUT, "the bot hears and sees the encoder", || {
        bot_receives(&bot, e, 440.0, 0xE)
    })
    .await;
    let snapshot = encoder.snapshot().await;
    assert!(snapshot.server_errors.is_empty(), "{snapshot:#?}");
    encoder.leave().await?;
    Ok(())
}
