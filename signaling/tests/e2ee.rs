//! Key distribution for end-to-end encryption through the real server: each client announces
//! a public key at join, and wrapped media keys are relayed to named participants of the same
//! room as opaque blobs, with the sender set by the server. The server never reads them.

mod common;

use std::time::Duration;

use common::{Received, eventually};
use loadtest::bot::{Bot, BotError};
use protocol::{ClientMessage, E2eeKeyDelivery, ErrorCode, Role, ServerMessage};
use signaling::store::{Admission, MeetingPatch};

const WAIT: Duration = Duration::from_secs(10);

/// A P-256 public key's size in base64url; the server only checks its shape.
fn public_key(c: char) -> String {
    std::iter::repeat_n(c, 87).collect()
}

async fn bot_with_key(t: &common::TestServer, room: &str, name: &str, key: &str) -> Bot {
    let mut options = t.bot_options(room, name, 440.0, 1);
    options.endpoint.publish_video = false;
    options.e2ee_key = Some(key.to_string());
    Bot::connect(options).await.expect("joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_keys_reach_their_recipient_in_the_room_only() {
    let t = common::start("e2ee", |_| {}).await;
    let alice = bot_with_key(&t, "r", "alice", &public_key('A')).await;
    let bob = bot_with_key(&t, "r", "bob", &public_key('B')).await;
    let carol = bot_with_key(&t, "other", "carol", &public_key('C')).await;
    let (a, b, c) = (
        alice.participant_id(),
        bob.participant_id(),
        carol.participant_id(),
    );

    // Each sees the other's public key, from `joined` or `participant_joined`.
    eventually(WAIT, "public keys are announced", || {
        let key_of = |bot: &Bot, who| {
            bot.snapshot()
                .roster
                .participants
                .get(&who)
                .and_then(|p| p.e2ee_key.clone())
        };
        key_of(&alice, b) == Some(public_key('B')) && key_of(&bob, a) == Some(public_key('A'))
    })
    .await;

    // Alice wraps a key for Bob, and tries Carol in another room and herself.
    let deliveries = [
        (b, "wrapped-for-bob"),
        (c, "wrapped-for-carol"),
        (a, "to-myself"),
    ]
    .map(|(participant_id, blob)| E2eeKeyDelivery {
        participant_id,
        blob: blob.into(),
    });
    alice
        .send(ClientMessage::E2eeKeys {
            keys: deliveries.to_vec(),
        })
        .expect("sent");
    eventually(WAIT, "bob receives alice's wrapped key", || {
        bob.snapshot().roster.e2ee_keys == vec![(a, "wrapped-for-bob".to_string())]
    })
    .await;

    // Too large a blob is refused with a reason, and nothing of that message is relayed.
    alice
        .send(ClientMessage::E2eeKeys {
            keys: vec![E2eeKeyDelivery {
                participant_id: b,
                blob: "x".repeat(protocol::MAX_E2EE_BLOB + 1),
            }],
        })
        .expect("sent");
    eventually(WAIT, "alice is told why", || {
        alice
            .snapshot()
            .errors
            .iter()
            .any(|(code, _)| *code == ErrorCode::BadMessage)
    })
    .await;
    // A round trip through Bob's own socket orders what the hub sent him before it.
    bob.send(ClientMessage::Ping {}).expect("ping");
    bob.wait_until(WAIT, |s| s.pongs >= 1).await.expect("pong");
    assert_eq!(bob.snapshot().roster.e2ee_keys.len(), 1);
    assert!(
        carol.snapshot().roster.e2ee_keys.is_empty(),
        "keys never cross rooms"
    );
    assert!(alice.snapshot().roster.e2ee_keys.is_empty());
    assert!(bob.snapshot().errors.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_public_key_is_refused_at_the_door() {
    let t = common::start("e2ee-bad", |_| {}).await;
    for key in [
        "",
        "not base64!",
        &"A".repeat(protocol::MAX_E2EE_PUBLIC_KEY + 1),
    ] {
        let mut options = t.bot_options("r", "mallory", 440.0, 1);
        options.e2ee_key = Some(key.to_string());
        match Bot::connect(options).await {
            Err(BotError::Refused { code, .. }) => assert_eq!(code, ErrorCode::BadMessage),
            other => panic!("{key:?}: {:?}", other.map(|b| b.participant_id())),
        }
    }
}

/// The `e2ee` flag of the next `joined` a raw client receives.
async fn joined_e2ee(client: &mut common::RawClient) -> bool {
    loop {
        match client.next().await {
            Received::Message(ServerMessage::Joined { e2ee, .. }) => return e2ee,
            Received::Closed(code) => panic!("closed ({code:?}) before joined"),
            Received::Message(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_and_lobby_say_whether_the_meeting_is_end_to_end_encrypted() {
    let t = common::start("e2ee-flag", |_| {}).await;
    for e2ee in [true, false] {
        let meeting = t
            .schedule(Admission::Host, &[("Xã A", Role::Participant)])
            .await;
        t.server
            .store
            .update_meeting(
                &meeting.id,
                &MeetingPatch {
                    e2ee: Some(e2ee),
                    ..MeetingPatch::default()
                },
            )
            .await
            .expect("meeting updated");
        // Waiting for a host: the lobby says it already.
        let mut a = t.raw().await;
        let ServerMessage::Lobby {
            participant_id,
            e2ee: lobby_e2ee,
            ..
        } = a.join_token(&meeting.invited("Xã A").token).await
        else {
            panic!("a waits in the lobby");
        };
        assert_eq!(lobby_e2ee, e2ee, "lobby of a meeting with e2ee {e2ee}");
        let mut host = t.raw().await;
        match host.join_token(&meeting.invited("Host").token).await {
            ServerMessage::Joined { e2ee: joined, .. } => {
                assert_eq!(joined, e2ee, "host's joined, e2ee {e2ee}");
            }
            other => panic!("the host enters directly, not {other:?}"),
        }
        host.send_text(format!(
            r#"{{"type":"admit","participant_id":{}}}"#,
            participant_id.0
        ))
        .await;
        assert_eq!(
            joined_e2ee(&mut a).await,
            e2ee,
            "admitted participant's joined, e2ee {e2ee}"
        );
    }

    // An open room (development, load tests) has no meeting to ask for encryption.
    let mut raw = t.raw().await;
    let ServerMessage::Joined { e2ee, .. } = raw.join_as("open", "dev", "participant").await else {
        panic!("joined");
    };
    assert!(!e2ee, "open rooms are not end-to-end encrypted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_keeps_its_encryption_until_it_empties() {
    let t = common::start("e2ee-fixed", |_| {}).await;
    let meeting = t
        .schedule(Admission::Scheduled, &[("Xã A", Role::Participant)])
        .await;
    let (store, id) = (&t.server.store, meeting.id.as_str());
    let set = |e2ee: bool| async move {
        store
            .update_meeting(
                id,
                &MeetingPatch {
                    e2ee: Some(e2ee),
                    ..MeetingPatch::default()
                },
            )
            .await
    };
    set(true).await.expect("meeting updated");
    let mut host = t.raw().await;
    let ServerMessage::Joined { e2ee: true, .. } =
        host.join_token(&meeting.invited("Host").token).await
    else {
        panic!("the host joins an encrypted room");
    };
    // Switched off while the room is open: those who arrive now must still encrypt, or the
    // people already there could not hear them.
    set(false).await.expect("meeting updated");
    let mut a = t.raw().await;
    let ServerMessage::Joined { e2ee: true, .. } =
        a.join_token(&meeting.invited("Xã A").token).await
    else {
        panic!("a late arrival joins the room as it is");
    };
    // Once it empties, the next opening takes the meeting's new setting. The host sees A's
    // departure, so the hub has handled it before the host leaves too.
    a.send_text(r#"{"type":"leave"}"#).await;
    loop {
        if let Received::Message(ServerMessage::ParticipantLeft { .. }) = host.next().await {
            break;
        }
    }
    host.send_text(r#"{"type":"leave"}"#).await;
    while !matches!(host.next().await, Received::Closed(_)) {}
    let mut again = t.raw().await;
    let e2ee = loop {
        match again.join_token(&meeting.invited("Host").token).await {
            ServerMessage::Joined { e2ee, .. } => break e2ee,
            ServerMessage::Error {
                code: ErrorCode::AlreadyConnected,
                ..
            } => {
                // The earlier session's leave has not reached the hub yet.
                again = t.raw().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the host rejoins, not {other:?}"),
        }
    };
    assert!(!e2ee, "the reopened room follows the meeting");
}
