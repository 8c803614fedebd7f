//! Invitations, roles and the lobby on the real server: who gets in with which token, what
//! the lobby does, and that every host-only request is refused for everyone else.

mod common;

use std::time::Duration;

use common::{MEDIA_TIMEOUT, Received, eventually};
use protocol::{ErrorCode, LobbyReason, MediaKind, Role, ServerMessage};
use signaling::auth::{JoinGrant, unix_seconds};
use signaling::store::Admission;

fn code_of(message: &ServerMessage) -> Option<ErrorCode> {
    match message {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_checked_at_the_door() {
    let t = common::start("tokens", |c| c.open_rooms = false).await;
    let meeting = t
        .schedule(Admission::Host, &[("Xã Tân Lập", Role::Participant)])
        .await;
    let other = t.schedule(Admission::Host, &[]).await;
    let invited = meeting.invited("Xã Tân Lập");
    let now = unix_seconds();
    let grant = |room: &str, not_before: i64, expires: i64| {
        t.server
            .tokens
            .issue(
                &JoinGrant {
                    invitation_id: &invited.invitation_id,
                    room,
                    name: &invited.name,
                    role: Role::Participant,
                    site: None,
                    not_before,
                    expires,
                },
                now,
            )
            .expect("signed")
    };
    let valid = grant(&meeting.id, now - 60, now + 3600);
    let (header, rest) = valid.split_once('.').expect("a JWT");
    let (payload, signature) = rest.split_once('.').expect("a JWT");
    let mut flipped = signature.as_bytes().to_vec();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let cases: Vec<(&str, String)> = vec![
        ("expired", grant(&meeting.id, now - 7200, now - 3600)),
        ("not yet valid", grant(&meeting.id, now + 3600, now + 7200)),
        (
            "for another meeting",
            grant(&other.id, now - 60, now + 3600),
        ),
        (
            "HS256 header",
            format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.{signature}"),
        ),
        (
            "alg none",
            format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."),
        ),
        (
            "tampered signature",
            format!("{header}.{payload}.{}", String::from_utf8_lossy(&flipped)),
        ),
        ("garbage", "not-a-token".to_string()),
        ("empty", String::new()),
    ];
    for (what, token) in cases {
        let mut raw = t.raw().await;
        let answer = raw.join_token(&token).await;
        assert_eq!(
            code_of(&answer),
            Some(ErrorCode::InvalidToken),
            "{what}: {answer:?}"
        );
        assert!(
            matches!(raw.next().await, Received::Closed(_)),
            "{what}: still open"
        );
    }

    // The room named in the message must be the token's.
    let mut raw = t.raw().await;
    raw.send_text(
        serde_json::json!({"type": "join", "protocol_version": 2, "token": valid, "room": other.id})
            .to_string(),
    )
    .await;
    assert_eq!(raw.expect_error().await, ErrorCode::InvalidToken);

    // No token at all on a server without open rooms.
    let mut raw = t.raw().await;
    raw.send_text(r#"{"type":"join","protocol_version":2,"room":"r","name":"n"}"#)
        .await;
    assert_eq!(raw.expect_error().await, ErrorCode::TokenRequired);

    // None of that created a room or a transport.
    assert_eq!(t.server.sfu.snapshot().participants, 0);

    // Revoked and cancelled: the signature is fine, the invitation is not.
    t.server
        .store
        .revoke_invitation(&invited.invitation_id)
        .await
        .expect("revoked");
    let mut raw = t.raw().await;
    let answer = raw.join_token(&valid).await;
    assert_eq!(
        code_of(&answer),
        Some(ErrorCode::InvalidToken),
        "revoked: {answer:?}"
    );
    let host = other.invited("Host");
    t.server
        .store
        .cancel_meeting(&other.id)
        .await
        .expect("cancelled");
    let mut raw = t.raw().await;
    let answer = raw.join_token(&host.token).await;
    assert_eq!(
        code_of(&answer),
        Some(ErrorCode::InvalidToken),
        "cancelled: {answer:?}"
    );
    assert_eq!(t.server.sfu.snapshot().participants, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_only_requests_are_refused_for_a_participant() {
    let t = common::start("host-only", |_| {}).await;
    let meeting = t
        .schedule(
            Admission::Host,
            &[
                ("Tỉnh Lào Cai", Role::Participant),
                ("Xã Bản Lầu", Role::Viewer),
            ],
        )
        .await;
    let mut host = t.raw().await;
    let ServerMessage::Joined {
        participant_id: host_id,
        role: Role::Host,
        ..
    } = host.join_token(&meeting.invited("Host").token).await
    else {
        panic!("the host enters directly");
    };
    host.send_text(r#"{"type":"open_room"}"#).await;
    // The host's request and the participant's join travel on different connections: the
    // participant comes once the hub has opened the room, not before (it would wait in the
    // lobby).
    loop {
        if let Received::Message(ServerMessage::RoomState { open: true, .. }) = host.next().await {
            break;
        }
    }
    let mut participant = t.raw().await;
    let ServerMessage::Joined { .. } = participant
        .join_token(&meeting.invited("Tỉnh Lào Cai").token)
        .await
    else {
        panic!("the room is open");
    };
    let mut viewer = t.raw().await;
    let ServerMessage::Joined { .. } = viewer
        .join_token(&meeting.invited("Xã Bản Lầu").token)
        .await
    else {
        panic!("the room is open");
    };
    let h = host_id.0;
    let requests = [
        format!(r#"{{"type":"admit","participant_id":{h}}}"#),
        r#"{"type":"admit_all"}"#.to_string(),
        r#"{"type":"open_room"}"#.to_string(),
        r#"{"type":"lock_room","locked":true}"#.to_string(),
        format!(r#"{{"type":"set_role","participant_id":{h},"role":"viewer"}}"#),
        format!(r#"{{"type":"mute_participant","participant_id":{h},"kind":"audio"}}"#),
        format!(r#"{{"type":"remove_participant","participant_id":{h}}}"#),
    ];
    for client in [&mut participant, &mut viewer] {
        for request in &requests {
            client.send_text(request.clone()).await;
            assert_eq!(
                client.expect_error().await,
                ErrorCode::Forbidden,
                "{request}"
            );
        }
    }
    // A viewer does not publish, whatever its offer says.
    viewer
        .send_text(
            r#"{"type":"offer","sdp":"v=0","publish":[{"mid":"0","source":"camera"}],"subscribe":[]}"#,
        )
        .await;
    assert_eq!(viewer.expect_error().await, ErrorCode::Forbidden);

    // Nothing changed: the host is still host, present and unlocked.
    host.send_text(r#"{"type":"lock_room","locked":true}"#)
        .await;
    loop {
        match host.next().await {
            Received::Message(ServerMessage::RoomState { locked: true, .. }) => break,
            Received::Message(ServerMessage::ParticipantLeft { .. })
            | Received::Message(ServerMessage::RoleChanged { .. }) => {
                panic!("a refused request changed something")
            }
            Received::Message(ServerMessage::Error { code, message }) => {
                panic!("the host was refused: {code:?} {message}")
            }
            Received::Closed(code) => panic!("the host was disconnected ({code:?})"),
            Received::Message(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lobby_holds_arrivals_until_a_host_admits_them() {
    let t = common::start("lobby", |_| {}).await;
    let meeting = t
        .schedule(
            Admission::Host,
            &[("Xã A", Role::Participant), ("Xã B", Role::Participant)],
        )
        .await;
    // Before any host: the lobby, with the title and start time.
    let mut a = t.raw().await;
    let ServerMessage::Lobby {
        participant_id: a_id,
        title,
        starts_at,
        reason: LobbyReason::NotOpen,
        ..
    } = a.join_token(&meeting.invited("Xã A").token).await
    else {
        panic!("a waits in the lobby");
    };
    assert_eq!(title, "Hội nghị trực tuyến");
    assert_eq!(starts_at, Some(meeting.starts_at));
    // Nothing but waiting is allowed there.
    a.send_text(r#"{"type":"raise_hand","raised":true}"#).await;
    assert_eq!(a.expect_error().await, ErrorCode::NotAdmitted);

    let mut host = t.raw().await;
    let ServerMessage::Joined { .. } = host.join_token(&meeting.invited("Host").token).await else {
        panic!("the host enters directly");
    };
    let waiting = loop {
        if let Received::Message(ServerMessage::LobbyChanged { waiting }) = host.next().await
            && !waiting.is_empty()
        {
            break waiting;
        }
    };
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].participant_id, a_id);
    assert_eq!(waiting[0].name, "Xã A");
    host.send_text(format!(r#"{{"type":"admit","participant_id":{}}}"#, a_id.0))
        .await;
    loop {
        if let Received::Message(ServerMessage::Joined { participants, .. }) = a.next().await {
            assert!(participants.iter().any(|p| p.role == Role::Host));
            break;
        }
    }
    loop {
        if let Received::Message(ServerMessage::ParticipantJoined { participant }) =
            host.next().await
        {
            assert_eq!(participant.id, a_id);
            break;
        }
    }

    // Locked: the next arrival waits, and admit_all lets it in.
    host.send_text(r#"{"type":"open_room"}"#).await;
    host.send_text(r#"{"type":"lock_room","locked":true}"#)
        .await;
    loop {
        if let Received::Message(ServerMessage::RoomState { locked: true, .. }) = host.next().await
        {
            break;
        }
    }
    let mut b = t.raw().await;
    let ServerMessage::Lobby {
        reason: LobbyReason::Locked,
        ..
    } = b.join_token(&meeting.invited("Xã B").token).await
    else {
        panic!("b waits: the room is locked");
    };
    host.send_text(r#"{"type":"admit_all"}"#).await;
    loop {
        if let Received::Message(ServerMessage::Joined { .. }) = b.next().await {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_actions_take_effect_on_media_and_links() {
    let t = common::start("host-actions", |_| {}).await;
    let meeting = t
        .schedule(Admission::Scheduled, &[("Xã Tân Lập", Role::Participant)])
        .await;
    let mut host_options = t.bot_options("", "", 440.0, 1);
    host_options.token = Some(meeting.invited("Host").token.clone());
    let host = loadtest::bot::Bot::connect(host_options)
        .await
        .expect("host joins");
    let mut options = t.bot_options("", "", 660.0, 2);
    let commune = meeting.invited("Xã Tân Lập");
    options.token = Some(commune.token.clone());
    let participant = loadtest::bot::Bot::connect(options)
        .await
        .expect("a scheduled room is open at its start");
    let p = participant.participant_id();
    eventually(MEDIA_TIMEOUT, "the host hears and sees the commune", || {
        common::bot_receives(&host, p, 660.0, 2)
    })
    .await;

    // Mute the commune's microphone: the SFU stops forwarding and everyone is told.
    host.send(protocol::ClientMessage::MuteParticipant {
        participant_id: p,
        kind: MediaKind::Audio,
    })
    .expect("sent");
    eventually(MEDIA_TIMEOUT, "the commune learns it was muted", || {
        participant
            .snapshot()
            .roster
            .mute_changes
            .iter()
            .any(|m| m.participant_id == p && m.muted)
    })
    .await;

    // Demote to viewer: its publications end at once.
    host.send(protocol::ClientMessage::SetRole {
        participant_id: p,
        role: Role::Viewer,
    })
    .expect("sent");
    eventually(
        MEDIA_TIMEOUT,
        "the commune becomes a viewer without publications",
        || {
            let s = participant.snapshot();
            s.roster.role == Some(Role::Viewer) && s.roster.own_publications.is_empty()
        },
    )
    .await;
    eventually(
        MEDIA_TIMEOUT,
        "the host sees the commune's publications end",
        || {
            host.snapshot()
                .roster
                .participants
                .get(&p)
                .is_some_and(|info| info.role == Role::Viewer && info.publications.is_empty())
        },
    )
    .await;

    // Remove: the socket is closed with `removed`, and the link no longer opens.
    host.send(protocol::ClientMessage::RemoveParticipant { participant_id: p })
        .expect("sent");
    eventually(MEDIA_TIMEOUT, "the commune is told it was removed", || {
        participant
            .snapshot()
            .errors
            .iter()
            .any(|(code, _)| *code == ErrorCode::Removed)
    })
    .await;
    let store = t.server.store.clone();
    let invitation = commune.invitation_id.clone();
    let mut revoked = false;
    for _ in 0..100 {
        revoked = store
            .join_check(&invitation)
            .await
            .expect("lookup")
            .is_some_and(|c| c.revoked);
        if revoked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(revoked, "removal revokes the invitation");
    let mut raw = t.raw().await;
    let answer = raw.join_token(&commune.token).await;
    assert_eq!(
        code_of(&answer),
        Some(ErrorCode::InvalidToken),
        "{answer:?}"
    );
    assert!(host.is_running(), "the host keeps its meeting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_invitation_is_present_once() {
    let t = common::start("one-presence", |_| {}).await;
    let meeting = t.schedule(Admission::Host, &[]).await;
    let token = meeting.invited("Host").token.clone();
    let mut first = t.raw().await;
    let ServerMessage::Joined { resume, .. } = first.join_token(&token).await else {
        panic!("the host enters");
    };
    // The same link again without the secret: refused, and the first keeps its place.
    let mut second = t.raw().await;
    let answer = second.join_token(&token).await;
    assert_eq!(
        code_of(&answer),
        Some(ErrorCode::AlreadyConnected),
        "{answer:?}"
    );
    // With the secret (a reconnect after a blip): the new connection takes over.
    let mut third = t.raw().await;
    third
        .send_text(
            serde_json::json!({"type": "join", "protocol_version": 2, "token": token, "resume": resume})
                .to_string(),
        )
        .await;
    loop {
        match third.next().await {
            Received::Message(ServerMessage::Joined { .. }) => break,
            Received::Message(ServerMessage::Error { code, message }) => {
                panic!("resume refused: {code:?} {message}")
            }
            Received::Closed(code) => panic!("closed ({code:?})"),
            Received::Message(_) => {}
        }
    }
    let replaced = loop {
        match first.next().await {
            Received::Message(ServerMessage::Error { code, .. }) => break code,
            Received::Closed(_) => panic!("closed without saying why"),
            Received::Message(_) => {}
        }
    };
    assert_eq!(replaced, ErrorCode::AlreadyConnected);
}
