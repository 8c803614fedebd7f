//! Key distribution for end-to-end encryption through the real server: each client announces
//! a public key at join, and wrapped media keys are relayed to named participants of the same
//! room as opaque blobs, with the sender set by the server. The server never reads them, and
//! never logs them, even at TRACE. `joined` and `lobby` say whether a meeting is encrypted.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Received, eventually};
use loadtest::bot::{Bot, BotError, BotOptions};
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

/// The server binary, logging at TRACE, with everything it writes (standard output and error)
/// collected.
struct LoggingServer {
    child: Child,
    http_addr: String,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl LoggingServer {
    fn start(data_dir: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meet-server"))
            .args(["--http-addr", "127.0.0.1:0", "--media-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meet-server starts");
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let outputs: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout piped")),
            Box::new(child.stderr.take().expect("stderr piped")),
        ];
        for mut output in outputs {
            let log = log.clone();
            // Drained continuously, so the server never blocks on a full pipe.
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = output.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            }));
        }
        let deadline = std::time::Instant::now() + WAIT;
        let http_addr = loop {
            let found = log.lock().ok().and_then(|log| {
                log.lines()
                    .filter(|line| line.contains("server started"))
                    .find_map(|line| line.split("http_addr=").nth(1))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_string)
            });
            if let Some(addr) = found {
                break addr;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server never said where it listens"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            http_addr,
            log,
            readers,
        }
    }

    /// Everything logged so far.
    fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Stops the server and returns its whole log.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.log()
    }
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A public key of the right shape that appears nowhere else: `tag`, then filler.
fn distinctive_key(tag: &str) -> String {
    let mut key = format!("{tag}{}", "Qx7_".repeat(30));
    key.truncate(87);
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_wrapped_keys_never_reach_the_log_even_at_trace() {
    common::init();
    let data_dir = common::tempdir::TempDir::new("e2ee-log");
    // An encrypted meeting, prepared on the storage and signing key the server will use.
    let url = signaling::store::default_url(&data_dir.0);
    let store = signaling::store::Store::open(&url).await.expect("store");
    let tokens =
        signaling::auth::JoinTokens::load_or_generate(&data_dir.0.join("keys")).expect("keys");
    let meeting = common::schedule_on(
        &store,
        &tokens,
        Admission::Scheduled,
        &[("Xã A", Role::Participant)],
    )
    .await;
    store
        .update_meeting(
            &meeting.id,
            &MeetingPatch {
                e2ee: Some(true),
                ..MeetingPatch::default()
            },
        )
        .await
        .expect("encrypted");
    store.close().await;

    let server = LoggingServer::start(&data_dir.0);
    let cert = std::fs::read(data_dir.0.join("tls").join("cert.pem")).expect("certificate");
    let tls = loadtest::bot::tls_config_trusting_pem(&cert).expect("pinned");
    let join = |invitee: &str, key: &str| {
        let mut options = BotOptions::new(
            format!("wss://{}/ws", server.http_addr),
            "",
            "",
            tls.clone(),
        );
        options.token = Some(meeting.invited(invitee).token.clone());
        options.e2ee_key = Some(key.to_string());
        // Audio only keeps the media engine's trace small; the signaling path is the same.
        options.endpoint.publish_video = false;
        Bot::connect(options)
    };
    let (alice_key, bob_key) = (
        distinctive_key("AliceDeviceKey"),
        distinctive_key("BobDeviceKey"),
    );
    let alice = join("Host", &alice_key).await.expect("alice joins");
    let bob = join("Xã A", &bob_key).await.expect("bob joins");
    let (a, b) = (alice.participant_id(), bob.participant_id());
    eventually(WAIT, "public keys are announced", || {
        let key_of = |bot: &Bot, who| {
            bot.snapshot()
                .roster
                .participants
                .get(&who)
                .and_then(|p| p.e2ee_key.clone())
        };
        key_of(&alice, b).as_deref() == Some(bob_key.as_str())
            && key_of(&bob, a).as_deref() == Some(alice_key.as_str())
    })
    .await;

    // A key request and a wrapped key, shaped as the browsers send them (docs/e2ee.md), each
    // with a marker that appears nowhere else.
    let request = format!(r#"{{"v":1,"t":"req","pub":"{bob_key}","nonce":"ReqMarkerFromBob42"}}"#);
    let wrapped = r#"{"v":1,"t":"key","kid":65536,"iv":"IvMarkerAlice7","ct":"CiphertextMarkerAliceToBob99"}"#;
    bob.send(ClientMessage::E2eeKeys {
        keys: vec![E2eeKeyDelivery {
            participant_id: a,
            blob: request.clone(),
        }],
    })
    .expect("sent");
    alice
        .send(ClientMessage::E2eeKeys {
            keys: vec![E2eeKeyDelivery {
                participant_id: b,
                blob: wrapped.to_string(),
            }],
        })
        .expect("sent");
    eventually(WAIT, "each receives the other's blob", || {
        alice.snapshot().roster.e2ee_keys == vec![(b, request.clone())]
            && bob.snapshot().roster.e2ee_keys == vec![(a, wrapped.to_string())]
    })
    .await;
    alice.leave().await;
    bob.leave().await;
    // Both departures are logged after everything above was handled.
    eventually(WAIT, "both departures are logged", || {
        server.log().matches("participant left").count() >= 2
    })
    .await;
    let log = server.stop();

    // The capture works: TRACE lines, and the joins of both, are there.
    assert!(log.contains(" TRACE "), "the server logged at TRACE");
    for id in [a, b] {
        assert!(
            log.lines()
                .any(|l| l.contains("participant joined")
                    && l.contains(&format!("participant={id}"))),
            "{id}'s join is logged"
        );
    }
    let secrets = [
        ("alice's public key", alice_key.as_str()),
        ("bob's public key", bob_key.as_str()),
        ("the key request", "ReqMarkerFromBob42"),
        ("the wrapped key's iv", "IvMarkerAlice7"),
        ("the wrapped key", "CiphertextMarkerAliceToBob99"),
        ("alice's join token", meeting.invited("Host").token.as_str()),
        ("bob's join token", meeting.invited("Xã A").token.as_str()),
    ];
    for (what, secret) in secrets {
        // Verbatim, or as the hex of a WebSocket frame's payload.
        assert!(!log.contains(secret), "{what} is in the log");
        assert!(!log.contains(&hex(secret)), "{what} is in the log, as hex");
    }
}
