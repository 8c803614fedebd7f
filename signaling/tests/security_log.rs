//! Security events reach the log with who and from where (docs/security.md): sign-in failures,
//! lockouts, refused joins, joins, role changes, removals and recording access, each under the
//! `security` target with a stable `event` name.

mod common;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use protocol::{Role, ServerMessage};
use signaling::store::{AccountRole, Admission, NewAccount};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One captured security event: its fields by name, `event` among them.
type Event = BTreeMap<String, String>;

fn events() -> &'static Mutex<Vec<Event>> {
    static EVENTS: OnceLock<Mutex<Vec<Event>>> = OnceLock::new();
    EVENTS.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

struct Fields(Event);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").replace('"', ""),
        );
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != signaling::SECURITY {
            return;
        }
        let mut fields = Fields(Event::new());
        event.record(&mut fields);
        events().lock().expect("events").push(fields.0);
    }
}

/// The captured events named `name` whose fields include every `(field, value)` of `with`.
fn find(name: &str, with: &[(&str, &str)]) -> Vec<Event> {
    events()
        .lock()
        .expect("events")
        .iter()
        .filter(|e| e.get("event").map(String::as_str) == Some(name))
        .filter(|e| {
            with.iter()
                .all(|(k, v)| e.get(*k).map(String::as_str) == Some(*v))
        })
        .cloned()
        .collect()
}

async fn logged(name: &str, with: &[(&str, &str)]) -> Event {
    let mut found = None;
    common::eventually(
        common::MEDIA_TIMEOUT,
        &format!("a {name} event with {with:?}"),
        || {
            found = find(name, with).into_iter().next();
            found.is_some()
        },
    )
    .await;
    found.expect("found")
}

#[tokio::test]
async fn security_events_say_who_and_from_where() {
    // Installed before the server starts; the test harness's own subscriber then stays out.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
        .expect("the only subscriber of this test binary");
    let t = common::start("security-log", |c| c.open_rooms = false).await;
    let from: std::net::IpAddr = "127.0.0.7".parse().expect("ip");

    // Sign-ins: a failure, then a success, each with the username and the address.
    t.server
        .store
        .create_account(&NewAccount {
            username: "chi.lan",
            display_name: "Chị Lan",
            password: "a long enough password",
            role: AccountRole::Admin,
        })
        .await
        .expect("account");
    let wrong = t
        .https(
            "POST",
            "/api/login",
            &[],
            Some(r#"{"username":"chi.lan","password":"not it"}"#),
            Some(from),
        )
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    logged(
        "sign_in_failed",
        &[("username", "chi.lan"), ("ip", "127.0.0.7")],
    )
    .await;
    let right = t
        .https(
            "POST",
            "/api/login",
            &[],
            Some(r#"{"username":"chi.lan","password":"a long enough password"}"#),
            Some(from),
        )
        .await;
    assert_eq!(right.status, 200, "{}", right.body);
    logged("signed_in", &[("username", "chi.lan"), ("ip", "127.0.0.7")]).await;

    // A join without a token, and one with a forged token: refused, with the address.
    let mut stranger = t.raw_from(Some(from), None).await;
    stranger
        .send_text(
            serde_json::json!({"type": "join", "protocol_version": 2, "room": "r", "name": "x"})
                .to_string(),
        )
        .await;
    stranger.expect_error().await;
    logged(
        "join_refused",
        &[("code", "TokenRequired"), ("ip", "127.0.0.7")],
    )
    .await;
    let mut forger = t.raw_from(Some(from), None).await;
    let answer = forger.join_token("eyJhbGciOiJIUzI1NiJ9.e30.AAAA").await;
    assert!(matches!(answer, ServerMessage::Error { .. }), "{answer:?}");
    logged(
        "join_refused",
        &[("code", "InvalidToken"), ("ip", "127.0.0.7")],
    )
    .await;

    // Joins name the invitation; a host's role change and removal name the host.
    let meeting = t
        .schedule(Admission::Scheduled, &[("Xã Tân Lập", Role::Participant)])
        .await;
    let mut host = t.raw_from(Some(from), None).await;
    let ServerMessage::Joined {
        participant_id: host_id,
        ..
    } = host.join_token(&meeting.invited("Host").token).await
    else {
        panic!("the host joins");
    };
    let commune = meeting.invited("Xã Tân Lập");
    let mut site = t.raw().await;
    let ServerMessage::Joined {
        participant_id: site_id,
        ..
    } = site.join_token(&commune.token).await
    else {
        panic!("the commune joins");
    };
    logged(
        "joined",
        &[
            ("participant", &site_id.to_string()),
            ("invitation", &commune.invitation_id),
            ("ip", "127.0.0.1"),
        ],
    )
    .await;
    host.send_text(
        serde_json::json!({"type": "set_role", "participant_id": site_id.0, "role": "presenter"})
            .to_string(),
    )
    .await;
    logged(
        "role_changed",
        &[
            ("participant", &site_id.to_string()),
            ("to", "presenter"),
            ("by", &host_id.to_string()),
        ],
    )
    .await;
    host.send_text(
        serde_json::json!({"type": "remove_participant", "participant_id": site_id.0}).to_string(),
    )
    .await;
    logged(
        "removed",
        &[
            ("participant", &site_id.to_string()),
            ("by", &host_id.to_string()),
        ],
    )
    .await;
    // The removed invitation cannot come back, and the refusal names it.
    let mut again = t.raw_from(Some(from), None).await;
    let answer = again.join_token(&commune.token).await;
    assert!(matches!(answer, ServerMessage::Error { .. }), "{answer:?}");
    logged(
        "join_refused",
        &[("claimed", &commune.invitation_id), ("ip", "127.0.0.7")],
    )
    .await;
}
