//! Bad input on the signaling socket and the media port: each case gets a clear, typed answer
//! for its sender (or a silent drop on the media port), and the other participants' media
//! keeps flowing throughout.

mod common;

use std::time::Duration;

use common::{MEDIA_TIMEOUT, Received, bot_audio_frames, eventually};
use protocol::{ErrorCode, ServerMessage};

/// Asserts both bots kept receiving each other's audio and saw no error.
async fn media_kept_flowing(
    alice: &loadtest::bot::Bot,
    bob: &loadtest::bot::Bot,
    before: (u64, u64),
) {
    let (a, b) = (alice.participant_id(), bob.participant_id());
    eventually(MEDIA_TIMEOUT, "media keeps flowing for the others", || {
        bot_audio_frames(&alice.snapshot(), b) >= before.0 + 25
            && bot_audio_frames(&bob.snapshot(), a) >= before.1 + 25
    })
    .await;
    assert!(
        alice.snapshot().errors.is_empty(),
        "{:?}",
        alice.snapshot().errors
    );
    assert!(
        bob.snapshot().errors.is_empty(),
        "{:?}",
        bob.snapshot().errors
    );
}

fn counts(alice: &loadtest::bot::Bot, bob: &loadtest::bot::Bot) -> (u64, u64) {
    (
        bot_audio_frames(&alice.snapshot(), bob.participant_id()),
        bot_audio_frames(&bob.snapshot(), alice.participant_id()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_get_typed_errors_and_the_socket_stays_usable() {
    let t = common::start("bad-ws", |_| {}).await;
    let (alice, bob) = t.two_bots_exchanging_media().await;
    let before = counts(&alice, &bob);

    let mut raw = t.raw().await;
    let cases: &[(&str, ErrorCode)] = &[
        ("this is not json", ErrorCode::BadMessage),
        ("{\"type\":\"join\",\"room\":5}", ErrorCode::BadMessage),
        ("{\"type\":\"ping\",\"admin\":true}", ErrorCode::BadMessage),
        ("[]", ErrorCode::BadMessage),
        ("{\"type\":\"teleport\"}", ErrorCode::UnknownType),
        ("{\"type\":\"offer\",\"sdp\":\"v=0\"}", ErrorCode::NotJoined),
        (
            "{\"type\":\"set_muted\",\"publication_id\":1,\"muted\":true}",
            ErrorCode::NotJoined,
        ),
        (
            "{\"type\":\"join\",\"protocol_version\":2,\"room\":\"\",\"name\":\"x\"}",
            ErrorCode::InvalidName,
        ),
    ];
    for (text, code) in cases {
        raw.send_text(*text).await;
        assert_eq!(raw.expect_error().await, *code, "for {text}");
    }
    // Deep nesting is refused by the parser, not by a stack overflow.
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    raw.send_text(deep).await;
    assert_eq!(raw.expect_error().await, ErrorCode::BadMessage);
    raw.send_binary(vec![0xff, 0x00, 0x13]).await;
    assert_eq!(raw.expect_error().await, ErrorCode::BinaryNotSupported);

    // After all that the same socket joins and works.
    let id = raw.join("r", "mallory").await;
    raw.send_text("{\"type\":\"join\",\"protocol_version\":2,\"room\":\"r\",\"name\":\"again\"}")
        .await;
    assert_eq!(raw.expect_error().await, ErrorCode::AlreadyJoined);

    // Malformed SDP in several shapes: each refused, the session stays.
    let fingerprint = "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
    let many_mlines = format!(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n{fingerprint}\r\n{}",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".repeat(200)
    );
    let sdps = [
        "garbage".to_string(),
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
            .to_string(),
        format!("v=0\r\n{fingerprint}\r\nm=video 9 nonsense\r\n"),
        many_mlines,
    ];
    for sdp in sdps {
        let message =
            serde_json::json!({"type": "offer", "sdp": sdp, "publish": [], "subscribe": []});
        raw.send_text(message.to_string()).await;
        assert_eq!(raw.expect_error().await, ErrorCode::BadSdp);
    }
    raw.send_text("{\"type\":\"candidate\",\"candidate\":\"candidate:1 1 udp nope\"}")
        .await;
    assert_eq!(raw.expect_error().await, ErrorCode::BadCandidate);
    // Muting someone else's publication is refused.
    let bob_publication = bob
        .snapshot()
        .roster
        .own_publications
        .first()
        .map(|p| p.id)
        .or_else(|| {
            alice
                .snapshot()
                .roster
                .publications()
                .find(|p| p.participant_id == bob.participant_id())
                .map(|p| p.id)
        })
        .expect("bob publishes");
    raw.send_text(
        serde_json::json!({"type":"set_muted","publication_id":bob_publication,"muted":true})
            .to_string(),
    )
    .await;
    assert_eq!(raw.expect_error().await, ErrorCode::UnknownPublication);
    raw.send_text("{\"type\":\"ping\"}").await;
    assert!(matches!(
        raw.next().await,
        Received::Message(ServerMessage::Pong)
    ));
    assert!(!bob.snapshot().roster.mute_changes.iter().any(|m| m.muted));

    media_kept_flowing(&alice, &bob, before).await;
    let _ = id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_messages_and_version_mismatch_close_the_socket() {
    let t = common::start("bad-size", |_| {}).await;
    let (alice, bob) = t.two_bots_exchanging_media().await;
    let before = counts(&alice, &bob);

    // Over the protocol limit but under the transport limit: a typed error, then close.
    let mut raw = t.raw().await;
    raw.send_text(format!(
        "{{\"type\":\"ping\",\"x\":\"{}\"}}",
        "a".repeat(protocol::MAX_MESSAGE_BYTES)
    ))
    .await;
    assert_eq!(raw.expect_error().await, ErrorCode::MessageTooLarge);
    assert!(matches!(raw.next().await, Received::Closed(_)));

    // Over the transport limit: refused before it is buffered, closed with 1009.
    let mut raw = t.raw().await;
    raw.send_text("x".repeat(signaling::WS_TRANSPORT_LIMIT + 1))
        .await;
    let mut closed = false;
    for _ in 0..3 {
        match raw.next().await {
            Received::Closed(code) => {
                assert!(code.is_none_or(|c| c == 1009), "close code {code:?}");
                closed = true;
                break;
            }
            Received::Message(ServerMessage::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::MessageTooLarge);
            }
            Received::Message(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(closed);

    let mut raw = t.raw().await;
    raw.send_text("{\"type\":\"join\",\"protocol_version\":99,\"room\":\"r\",\"name\":\"future\"}")
        .await;
    assert_eq!(raw.expect_error().await, ErrorCode::VersionMismatch);
    assert!(matches!(raw.next().await, Received::Closed(_)));

    media_kept_flowing(&alice, &bob, before).await;
    // Nobody was added to the room by any of it: alice saw only bob join.
    assert_eq!(alice.snapshot().roster.joined, vec![bob.participant_id()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn floods_are_rate_limited_without_disturbing_others() {
    let t = common::start("bad-flood", |_| {}).await;
    let (alice, bob) = t.two_bots_exchanging_media().await;
    let before = counts(&alice, &bob);
    let mut raw = t.raw().await;
    for _ in 0..200 {
        raw.send_text("{\"type\":\"ping\"}").await;
    }
    let mut limited = 0;
    let mut pongs = 0;
    while limited + pongs < 200 {
        match raw.next().await {
            Received::Message(ServerMessage::Pong) => pongs += 1,
            Received::Message(ServerMessage::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::RateLimited);
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        limited > 0 && pongs > 0,
        "{pongs} pongs, {limited} refusals"
    );
    media_kept_flowing(&alice, &bob, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_origin_is_refused_before_the_upgrade() {
    let t = common::start("bad-origin", |_| {}).await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            t.server.ws_url(),
        )
        .expect("request");
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().expect("header"));
    let connector = tokio_tungstenite::Connector::Rustls(t.tls());
    let result =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
            .await;
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    // A same-origin browser request is accepted.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            t.server.ws_url(),
        )
        .expect("request");
    let origin = format!("https://{}", t.server.http_addr);
    request
        .headers_mut()
        .insert("Origin", origin.parse().expect("header"));
    let connector = tokio_tungstenite::Connector::Rustls(t.tls());
    tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
        .await
        .expect("same origin upgrades");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_datagrams_on_the_media_port_are_dropped_silently() {
    let t = common::start("bad-udp", |_| {}).await;
    let (alice, bob) = t.two_bots_exchanging_media().await;
    let before = counts(&alice, &bob);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("socket");
    let target = t.server.media_addr;
    let mut payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 1],
        vec![0xde, 0xad, 0xbe, 0xef],
        // A STUN binding request header claiming more attributes than it has.
        vec![
            0x00, 0x01, 0x00, 0x50, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ],
        // RTP and RTCP headers with lengths past the end.
        vec![0x9f, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
        vec![0x80, 0xc8, 0xff, 0xff, 0, 0, 0, 1],
        // A DTLS record header with a huge length.
        vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
        vec![0x55; 1400],
    ];
    let mut seed: u32 = 12345;
    for _ in 0..500 {
        let len = (seed % 1200) as usize;
        let mut p = Vec::with_capacity(len);
        for _ in 0..len {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            p.push((seed >> 16) as u8);
        }
        payloads.push(p);
    }
    for p in &payloads {
        socket.send_to(p, target).await.expect("send");
    }
    // Nothing answers garbage.
    let mut buf = [0u8; 2048];
    let answer = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await;
    assert!(answer.is_err(), "the media port answered garbage");
    media_kept_flowing(&alice, &bob, before).await;
    // Every one of them was counted as dropped (the counters are published once a second).
    let sent = payloads.len() as u64;
    eventually(
        Duration::from_secs(5),
        "the SFU counted the garbage",
        || {
            let s = t.server.sfu.snapshot().stats;
            s.dropped_malformed + s.dropped_unknown_source + s.dropped_oversize >= sent
        },
    )
    .await;
}
