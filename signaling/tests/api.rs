//! The REST API (docs/api.md) through `api::router`, request by request with `oneshot`: no
//! socket, no TLS, an SQLite store in a temporary directory and an in-memory signing key.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use protocol::{LeaveReason, ParticipantId, Quality, Role, RoomId};
use serde_json::{Value, json};
use signaling::api::{self, ApiState, FileTickets, RoomControl};
use signaling::auth::JoinTokens;
use signaling::store::{
    AccountRole, NewAccount, NewSite, RecordingStatus, SiteKind, Store, new_id, unix_ms,
};
use tower::ServiceExt;

/// Remembers what the API asked of live rooms.
#[derive(Debug, Default)]
struct RecordingRooms {
    closed: Mutex<Vec<String>>,
    revoked: Mutex<Vec<String>>,
}

impl RoomControl for RecordingRooms {
    fn close_room(&self, room: &RoomId) {
        self.closed
            .lock()
            .expect("not poisoned")
            .push(room.0.clone());
    }

    fn revoke_invitation(&self, invitation_id: &str) {
        self.revoked
            .lock()
            .expect("not poisoned")
            .push(invitation_id.to_string());
    }
}

struct Harness {
    app: Router,
    store: Store,
    tokens: Arc<JoinTokens>,
    rooms: Arc<RecordingRooms>,
    dir: std::path::PathBuf,
    recordings_dir: std::path::PathBuf,
    /// Bearer tokens of an administrator and two organizers.
    admin: String,
    lan: String,
    minh: String,
}

impl Harness {
    async fn new() -> Self {
        Self::with_tickets(FileTickets::default()).await
    }

    async fn with_tickets(tickets: FileTickets) -> Self {
        let dir = std::env::temp_dir().join(format!("meet-api-{}", signaling::store::new_id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let store = Store::open(&format!("sqlite://{}/meet.db", dir.display()))
            .await
            .expect("store");
        let tokens = Arc::new(JoinTokens::ephemeral().expect("key"));
        let rooms = Arc::new(RecordingRooms::default());
        let recordings_dir = dir.join("recordings");
        let mut state = ApiState::new(
            store.clone(),
            tokens.clone(),
            rooms.clone(),
            recordings_dir.clone(),
        );
        state.tickets = tickets;
        let app = Router::new().nest("/api", api::router(state));
        let mut harness = Harness {
            app,
            store,
            tokens,
            rooms,
            dir,
            recordings_dir,
            admin: String::new(),
            lan: String::new(),
            minh: String::new(),
        };
        for (username, role) in [
            ("root", AccountRole::Admin),
            ("lan", AccountRole::Organizer),
            ("minh", AccountRole::Organizer),
        ] {
            harness
                .store
                .create_account(&NewAccount {
                    username,
                    display_name: &format!("{username} display"),
                    password: "a long password",
                    role,
                })
                .await
                .expect("account");
        }
        harness.admin = harness.login("root").await;
        harness.lan = harness.login("lan").await;
        harness.minh = harness.login("minh").await;
        harness
    }

    async fn login(&self, username: &str) -> String {
        let (status, body) = self
            .sign_in(json!({"username": username, "password": "a long password"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().expect("a token").to_string()
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, String, Vec<u8>) {
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router answers");
        let status = response.status();
        assert_eq!(
            response.headers().get(header::CACHE_CONTROL),
            Some(&header::HeaderValue::from_static("no-store")),
            "every API answer is kept out of caches"
        );
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes()
            .to_vec();
        (status, content_type, body)
    }

    async fn raw(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        content_type: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let (status, _, body) = self
            .send(request.body(body.into()).expect("a request"))
            .await;
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|_| {
                panic!(
                    "{method} {uri} answered JSON, not {:?}",
                    String::from_utf8_lossy(&body)
                )
            })
        };
        (status, value)
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map_or(Body::empty(), |b| Body::from(b.to_string()));
        self.raw(method, uri, token, "application/json", body).await
    }

    /// A sign-in with `login`'s fields (username, password, remember).
    async fn sign_in(&self, login: Value) -> (StatusCode, Value) {
        self.call("POST", "/api/login", None, Some(login)).await
    }

    /// A CSV file for the import at `uri`, sent with `token`.
    async fn post_csv(&self, uri: &str, token: &str, csv: impl Into<Body>) -> (StatusCode, Value) {
        self.raw("POST", uri, Some(token), "text/csv", csv).await
    }

    /// A meeting titled "T" that `token`'s account schedules from `starts_at` to `ends_at`, each
    /// in either form a client may send.
    async fn schedule(&self, token: &str, starts_at: Value, ends_at: Value) -> (StatusCode, Value) {
        let meeting = json!({"title": "T", "starts_at": starts_at, "ends_at": ends_at});
        self.call("POST", "/api/meetings", Some(token), Some(meeting))
            .await
    }

    /// A province of the directory; its id.
    async fn province(&self, code: &str, name: &str) -> String {
        self.store
            .create_site(&NewSite {
                code,
                name,
                kind: SiteKind::Province,
                parent_code: None,
            })
            .await
            .expect("site")
            .id
    }

    /// A sign-in attempt from `source`, as the TCP peer's address would say.
    async fn login_from(
        &self,
        source: &str,
        username: &str,
        password: &str,
    ) -> (StatusCode, Value) {
        let peer: std::net::SocketAddr = format!("{source}:40000").parse().expect("address");
        let mut request = Request::builder()
            .method("POST")
            .uri("/api/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"username": username, "password": password}).to_string(),
            ))
            .expect("a request");
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let (status, _, body) = self.send(request).await;
        (
            status,
            serde_json::from_slice(&body).expect("login answers JSON"),
        )
    }

    async fn finish(self) {
        self.store.close().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].is_string(), "{body}");
}

/// An import refused for its bad `lines`, which the answer lists in order.
fn assert_bad_lines(status: StatusCode, body: &Value, lines: &[u64]) {
    assert_error(
        status,
        body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_csv",
    );
    let listed: Vec<u64> = body["errors"]
        .as_array()
        .expect("the bad lines")
        .iter()
        .map(|e| e["line"].as_u64().expect("a line number"))
        .collect();
    assert_eq!(listed, lines, "{body}");
}

/// Milliseconds since the epoch of a time the API wrote, which must be in RFC 3339.
fn time_ms(time: &Value) -> i64 {
    time.as_str()
        .and_then(|t| signaling::rfc3339::parse(t).ok())
        .unwrap_or_else(|| panic!("an RFC 3339 time: {time}"))
}

#[tokio::test]
async fn a_bearer_token_is_required_and_checked() {
    let h = Harness::new().await;
    let (status, body) = h.call("GET", "/api/me", None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = h.call("GET", "/api/me", Some("garbage"), None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = h
        .raw("GET", "/api/me", None, "application/json", Body::empty())
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // A login from 13 hours ago has expired.
    let old = h
        .store
        .login("lan", "a long password", unix_ms() - 13 * 3600 * 1000)
        .await
        .expect("query")
        .expect("signed in");
    let (status, body) = h.call("GET", "/api/me", Some(&old.token), None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    let (status, body) = h.call("GET", "/api/me", Some(&h.lan), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["username"], "lan");
    assert_eq!(body["role"], "organizer");
    assert!(body.get("password_hash").is_none());

    let (status, body) = h
        .sign_in(json!({"username": "lan", "password": "wrong password"}))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    let (status, _) = h.call("POST", "/api/logout", Some(&h.lan), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = h.call("GET", "/api/me", Some(&h.lan), None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    h.finish().await;
}

#[tokio::test]
async fn wrong_passwords_lock_out_their_source_but_never_the_owner() {
    use signaling::api::throttle;
    let h = Harness::new().await;
    let attacker = "203.0.113.9";
    for _ in 0..throttle::MAX_FAILURES_PER_ACCOUNT_AND_SOURCE {
        let (status, body) = h.login_from(attacker, "minh", "guess").await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // From the attacker's address even the right password waits now.
    let (status, body) = h.login_from(attacker, "MINH", "a long password").await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
    );
    // The owner, from their own address, signs in (held a second: the account is under
    // attack), and other accounts are not slowed at all.
    let started = std::time::Instant::now();
    let (status, body) = h
        .login_from("198.51.100.4", "minh", "a long password")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() >= throttle::ACCOUNT_DELAY);
    let (status, body) = h.login_from(attacker, "lan", "a long password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.finish().await;
}

#[tokio::test]
async fn spraying_one_password_across_usernames_locks_out_the_source() {
    use signaling::api::throttle;
    let h = Harness::new().await;
    let sprayer = "203.0.113.10";
    for n in 0..throttle::MAX_FAILURES_PER_SOURCE {
        let (status, body) = h
            .login_from(sprayer, &format!("user{n}"), "Password1!")
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (status, body) = h.login_from(sprayer, "lan", "a long password").await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
    );
    let (status, body) = h.login_from("198.51.100.5", "lan", "a long password").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.finish().await;
}

#[tokio::test]
async fn organizers_cannot_use_admin_endpoints() {
    let h = Harness::new().await;
    let (status, body) = h.call("GET", "/api/accounts", Some(&h.lan), None).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let new_account = json!({"username": "x", "display_name": "X", "password": "a long password", "role": "admin"});
    let (status, body) = h
        .call(
            "POST",
            "/api/accounts",
            Some(&h.lan),
            Some(new_account.clone()),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let site = json!({"code": "VN", "name": "Trung ương", "kind": "central"});
    let (status, body) = h
        .call("POST", "/api/sites", Some(&h.lan), Some(site.clone()))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = h
        .post_csv("/api/sites/import", &h.lan, "code,name,kind,parent_code\n")
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");

    // The administrator may, and organizers may read the directory.
    let (status, body) = h
        .call(
            "POST",
            "/api/accounts",
            Some(&h.admin),
            Some(new_account.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["role"], "admin");
    let (status, body) = h
        .call("POST", "/api/accounts", Some(&h.admin), Some(new_account))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = h.call("GET", "/api/accounts", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["accounts"].as_array().map(Vec::len), Some(4), "{body}");
    assert_eq!(body["total"], 4);
    let (status, body) = h
        .call("POST", "/api/sites", Some(&h.admin), Some(site))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h.call("GET", "/api/sites", Some(&h.lan), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["code"], "VN");
    assert_eq!(body[0]["parent_id"], Value::Null);

    // Disabling an organizer ends its sessions at once.
    let lan_id = h.call("GET", "/api/me", Some(&h.lan), None).await.1["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let (status, body) = h
        .call(
            "PATCH",
            &format!("/api/accounts/{lan_id}"),
            Some(&h.admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["disabled"], true);
    let (status, body) = h.call("GET", "/api/me", Some(&h.lan), None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    h.finish().await;
}

#[tokio::test]
async fn bad_json_is_refused_in_the_error_shape() {
    let h = Harness::new().await;
    let meeting = json!({"title": "T", "starts_at": 1, "ends_at": 2, "colour": "red"});
    let (status, body) = h
        .call("POST", "/api/meetings", Some(&h.lan), Some(meeting))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("colour")),
        "{body}"
    );
    let (status, body) = h
        .raw(
            "POST",
            "/api/meetings",
            Some(&h.lan),
            "application/json",
            "{not json",
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = h.raw("POST", "/api/login", None, "text/plain", "{}").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = h.schedule(&h.lan, json!(10), json!(5)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let huge = "x".repeat(api::JSON_LIMIT + 1);
    let (status, body) = h.sign_in(json!({"username": huge, "password": "p"})).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let (status, body) = h
        .call("GET", "/api/meetings/%FF%FE", Some(&h.lan), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = h
        .call("GET", "/api/meetings/not-an-id", Some(&h.lan), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h.call("GET", "/api/nothing-here", None, None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    h.finish().await;
}

#[tokio::test]
async fn meetings_carry_signed_join_links_until_revoked_or_cancelled() {
    let h = Harness::new().await;
    let site = h.province("HG", "Hà Giang").await;
    // Soon, so that the links are valid now (from 24 hours before the start).
    let starts_at = (unix_ms() / 1000 + 3600) * 1000;
    let ends_at = starts_at + 2 * 3600 * 1000;
    let (status, meeting) = h
        .call(
            "POST",
            "/api/meetings",
            Some(&h.lan),
            Some(json!({
                "title": "Giao ban",
                "starts_at": starts_at,
                "ends_at": ends_at,
                "invitations": [
                    {"role": "participant", "site_id": site},
                    {"role": "viewer", "name": "Ông Tư"},
                ],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let id = meeting["id"].as_str().expect("an id").to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(meeting["admission"], "host");
    assert_eq!(meeting["status"], "scheduled");
    let invitations = meeting["invitations"].as_array().expect("invitations");
    assert_eq!(invitations.len(), 3);
    let lan = h.call("GET", "/api/me", Some(&h.lan), None).await.1;
    for invitation in invitations {
        let path = invitation["join_path"].as_str().expect("a join path");
        let token = path.strip_prefix("/#join=").expect("a join fragment");
        let claims = h.tokens.verify(token).expect("the token verifies");
        assert_eq!(claims.room, id);
        assert_eq!(claims.sub, invitation["id"].as_str().expect("an id"));
        assert_eq!(claims.role.as_str(), invitation["role"]);
        assert_eq!(claims.name, invitation["name"].as_str().expect("a name"));
        assert_eq!(claims.nbf, starts_at / 1000 - 24 * 3600);
        assert_eq!(claims.exp, ends_at / 1000 + 3600);
        match invitation["role"].as_str() {
            Some("host") => assert_eq!(invitation["name"], lan["display_name"]),
            Some("participant") => {
                assert_eq!(claims.site.as_deref(), Some(site.as_str()));
                assert_eq!(invitation["site_code"], "HG");
                assert_eq!(invitation["name"], "Hà Giang");
            }
            Some("viewer") => assert_eq!(claims.site, None),
            other => panic!("unexpected role {other:?}"),
        }
    }

    // Another organizer cannot see, change, cancel or revoke it; an administrator can see it.
    let uri = format!("/api/meetings/{id}");
    let (status, body) = h.call("GET", &uri, Some(&h.minh), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h
        .call("PATCH", &uri, Some(&h.minh), Some(json!({"title": "mine"})))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h
        .call("POST", &format!("{uri}/cancel"), Some(&h.minh), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h
        .call("GET", &format!("{uri}/attendance"), Some(&h.minh), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, listed) = h.call("GET", "/api/meetings", Some(&h.minh), None).await;
    assert_eq!(listed, json!([]));
    let (status, _) = h.call("GET", &uri, Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);

    // Revoking one invitation.
    let viewer = invitations
        .iter()
        .find(|i| i["role"] == "viewer")
        .expect("the viewer");
    let viewer_id = viewer["id"].as_str().expect("an id");
    let revoke_uri = format!("{uri}/invitations/{viewer_id}");
    let (status, body) = h.call("DELETE", &revoke_uri, Some(&h.minh), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert!(h.rooms.revoked.lock().expect("not poisoned").is_empty());
    let (status, _) = h.call("DELETE", &revoke_uri, Some(&h.lan), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        *h.rooms.revoked.lock().expect("not poisoned"),
        [viewer_id.to_string()]
    );
    let (_, detail) = h.call("GET", &uri, Some(&h.lan), None).await;
    for invitation in detail["invitations"].as_array().expect("invitations") {
        let revoked = invitation["id"] == viewer_id;
        assert_eq!(invitation["revoked"], revoked);
        assert_eq!(
            invitation.get("join_path").is_none(),
            revoked,
            "{invitation}"
        );
    }

    // A new invitation, then a change of title.
    let (status, added) = h
        .call(
            "POST",
            &format!("{uri}/invitations"),
            Some(&h.lan),
            Some(json!({"role": "presenter", "name": "Anh Hùng"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert!(added["join_path"].is_string());
    let (status, patched) = h
        .call(
            "PATCH",
            &uri,
            Some(&h.lan),
            Some(json!({"title": "Giao ban (dời)", "admission": "scheduled"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["title"], "Giao ban (dời)");
    assert_eq!(patched["admission"], "scheduled");

    // Cancelling closes the room and removes every link.
    let (status, cancelled) = h
        .call("POST", &format!("{uri}/cancel"), Some(&h.lan), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(*h.rooms.closed.lock().expect("not poisoned"), [id.as_str()]);
    for invitation in cancelled["invitations"].as_array().expect("invitations") {
        assert!(invitation.get("join_path").is_none(), "{invitation}");
    }
    let (status, body) = h
        .call("PATCH", &uri, Some(&h.lan), Some(json!({"title": "again"})))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let check = h
        .store
        .join_check(cancelled["invitations"][0]["id"].as_str().expect("an id"))
        .await
        .expect("query")
        .expect("found");
    assert!(check.cancelled);
    h.finish().await;
}

#[tokio::test]
async fn confidential_meetings_are_end_to_end_encrypted_unless_told_otherwise() {
    let h = Harness::new().await;
    let create = |extra: Value| {
        let mut body = json!({
            "title": "Họp mật",
            "starts_at": 1_900_000_000_000_i64,
            "ends_at": 1_900_003_600_000_i64,
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        h.call("POST", "/api/meetings", Some(&h.lan), Some(body))
    };
    // (request flags, expected confidential, expected e2ee)
    let cases = [
        (json!({}), false, false),
        (json!({"confidential": true}), true, true),
        (json!({"confidential": true, "e2ee": false}), true, false),
        (json!({"e2ee": true}), false, true),
        (json!({"confidential": false, "e2ee": false}), false, false),
    ];
    let mut ids = Vec::new();
    for (flags, confidential, e2ee) in cases {
        let (status, meeting) = create(flags.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{flags}: {meeting}");
        assert_eq!(meeting["confidential"], confidential, "{flags}: {meeting}");
        assert_eq!(meeting["e2ee"], e2ee, "{flags}: {meeting}");
        let id = meeting["id"].as_str().expect("an id").to_string();
        // Stored, not just echoed: a fresh read and the join check agree.
        let (_, read) = h
            .call("GET", &format!("/api/meetings/{id}"), Some(&h.lan), None)
            .await;
        assert_eq!(read["confidential"], confidential, "{flags}: {read}");
        assert_eq!(read["e2ee"], e2ee, "{flags}: {read}");
        let invitation = read["invitations"][0]["id"].as_str().expect("an id");
        let check = h
            .store
            .join_check(invitation)
            .await
            .expect("query")
            .expect("found");
        assert_eq!(check.e2ee, e2ee, "{flags}");
        ids.push(id);
    }
    let (_, listed) = h.call("GET", "/api/meetings", Some(&h.lan), None).await;
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), ids.len());
    assert!(
        listed
            .iter()
            .all(|m| m["confidential"].is_boolean() && m["e2ee"].is_boolean()),
        "{listed:?}"
    );

    // A patch changes what it names and leaves the rest.
    let uri = format!("/api/meetings/{}", ids[1]);
    let (status, patched) = h
        .call("PATCH", &uri, Some(&h.lan), Some(json!({"e2ee": false})))
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["confidential"], true);
    assert_eq!(patched["e2ee"], false);
    let (status, patched) = h
        .call(
            "PATCH",
            &uri,
            Some(&h.lan),
            Some(json!({"confidential": false, "e2ee": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["confidential"], false);
    assert_eq!(patched["e2ee"], true);
    let (_, read) = h.call("GET", &uri, Some(&h.lan), None).await;
    assert_eq!(read["confidential"], false);
    assert_eq!(read["e2ee"], true);

    // Flags are booleans: anything else is refused in the error shape.
    let (status, body) = create(json!({"e2ee": "yes"})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = h
        .call(
            "PATCH",
            &uri,
            Some(&h.lan),
            Some(json!({"confidential": 1})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    h.finish().await;
}

#[tokio::test]
async fn attendance_as_json_and_csv() {
    let h = Harness::new().await;
    let site = h.province("HG", "Hà Giang").await;
    let (status, meeting) = h
        .call(
            "POST",
            "/api/meetings",
            Some(&h.lan),
            Some(json!({
                "title": "Giao ban",
                "starts_at": 1_900_000_000_000_i64,
                "ends_at": 1_900_003_600_000_i64,
                "invitations": [{"role": "participant", "site_id": site}],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let id = meeting["id"].as_str().expect("an id").to_string();
    let invitation = meeting["invitations"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["site_id"] == site.as_str()))
        .expect("the site's invitation");
    let room = RoomId(id.clone());
    h.store
        .record_join(
            &room,
            ParticipantId(1),
            invitation["id"].as_str(),
            "=Hà Giang",
            Some(&site),
            Role::Participant,
            unix_ms(),
        )
        .await
        .expect("join");
    h.store
        .record_quality(ParticipantId(1), Quality::Poor)
        .await
        .expect("quality");
    h.store
        .record_leave(ParticipantId(1), LeaveReason::Left, unix_ms())
        .await
        .expect("leave");
    h.store
        .record_join(
            &room,
            ParticipantId(2),
            invitation["id"].as_str(),
            "Hà Giang",
            Some(&site),
            Role::Participant,
            unix_ms(),
        )
        .await
        .expect("join");

    let (status, report) = h
        .call(
            "GET",
            &format!("/api/meetings/{id}/attendance"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["meeting_id"], id.as_str());
    let sites = report["sites"].as_array().expect("sites");
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0]["code"], "HG");
    assert_eq!(sites[0]["invited"], true);
    assert_eq!(sites[0]["present"], true);
    assert_eq!(sites[0]["quality"], "poor");
    for field in ["first_joined_at", "last_left_at"] {
        time_ms(&sites[0][field]);
    }
    assert_eq!(
        sites[0]["province_code"], "HG",
        "a province counts under itself"
    );
    assert_eq!(
        report["provinces"],
        json!([{"site_id": site, "code": "HG", "name": "Hà Giang", "invited": 1,
            "present": 1, "absent": 0, "missing": []}])
    );
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["leave_reason"], "left");
    assert_eq!(rows[0]["quality"], "poor");
    assert_eq!(rows[0]["role"], "participant");
    assert_eq!(rows[1]["left_at"], Value::Null);
    // The participant id is the protocol's number, not its log form (`PA1`).
    assert_eq!(rows[0]["participant_id"], 1);
    assert_eq!(rows[1]["participant_id"], 2);
    assert!(
        rows.iter()
            .all(|r| r["invitation_id"] == invitation["id"] && r["site_id"] == site.as_str()),
        "{report}"
    );

    let request = Request::builder()
        .uri(format!("/api/meetings/{id}/attendance.csv"))
        .header(header::AUTHORIZATION, format!("Bearer {}", h.lan))
        .body(Body::empty())
        .expect("a request");
    let (status, content_type, body) = h.send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let text = String::from_utf8(body).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("participant_id,invitation_id,name,site_id,site_code,role"));
    // A name that looks like a formula is defused for spreadsheets.
    assert!(lines[1].contains(",'=Hà Giang,"), "{text}");
    assert!(lines[1].contains(",HG,participant,"), "{text}");
    assert!(lines[1].ends_with(",left,poor,HG"), "{text}");
    assert!(lines[0].ends_with(",quality,province"), "{text}");
    let joined_at = lines[1].split(',').nth(6).expect("joined_at");
    assert!(
        signaling::rfc3339::parse(joined_at).is_ok(),
        "times in RFC 3339: {text}"
    );
    assert!(lines[1].starts_with("1,"), "{text}");
    h.finish().await;
}

#[tokio::test]
async fn csv_import_through_the_api() {
    let h = Harness::new().await;
    let bad = "code,name,kind,parent_code\nHG,Hà Giang,province,VN\nC1,Xã,village,HG\n";
    let (status, body) = h.post_csv("/api/sites/import", &h.admin, bad).await;
    assert_bad_lines(status, &body, &[2, 3]);
    let (_, sites) = h.call("GET", "/api/sites", Some(&h.admin), None).await;
    assert_eq!(sites, json!([]));
    let good = "code,name,kind,parent_code\nHG,Hà Giang,province,VN\nVN,Trung ương,central,\n";
    let (status, body) = h.post_csv("/api/sites/import", &h.admin, good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"created": 2, "updated": 0}));
    h.finish().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_path() {
    let h = Harness::new().await;
    let (status, document) = h.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().expect("paths");
    let expected = [
        ("/api/login", "post"),
        ("/api/activate", "post"),
        ("/api/logout", "post"),
        ("/api/me", "get"),
        ("/api/my/meetings", "get"),
        ("/api/my/meetings/{id}/join", "post"),
        ("/api/accounts", "get"),
        ("/api/accounts", "post"),
        ("/api/accounts/import", "post"),
        ("/api/accounts/{id}", "patch"),
        ("/api/accounts/{id}/activation", "post"),
        ("/api/sites", "get"),
        ("/api/sites", "post"),
        ("/api/sites/import", "post"),
        ("/api/meetings", "get"),
        ("/api/meetings", "post"),
        ("/api/meetings/{id}", "get"),
        ("/api/meetings/{id}", "patch"),
        ("/api/meetings/{id}/cancel", "post"),
        ("/api/meetings/{id}/invitations", "post"),
        ("/api/meetings/{id}/invitations.csv", "get"),
        ("/api/meetings/{id}/invitations/{invitation_id}", "delete"),
        ("/api/meetings/{id}/attendance", "get"),
        ("/api/meetings/{id}/attendance.csv", "get"),
        ("/api/meetings/{id}/recordings", "get"),
        ("/api/recordings/{id}", "delete"),
        ("/api/recordings/{id}/ticket", "post"),
        ("/api/recordings/{id}/files/{name}", "get"),
        ("/api/cluster", "get"),
        ("/api/openapi.json", "get"),
    ];
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is missing from the OpenAPI document"
        );
    }
    assert_eq!(paths.len(), 26, "{:?}", paths.keys().collect::<Vec<_>>());
    assert!(document["components"]["schemas"]["MeetingDetail"].is_object());
    for (schema, field) in [
        ("CreateMeeting", "confidential"),
        ("CreateMeeting", "e2ee"),
        ("UpdateMeeting", "confidential"),
        ("UpdateMeeting", "e2ee"),
        ("Meeting", "confidential"),
        ("Meeting", "e2ee"),
    ] {
        assert!(
            document["components"]["schemas"][schema]["properties"][field].is_object(),
            "{schema}.{field} is missing from the OpenAPI document"
        );
    }
    h.finish().await;
}

/// Client generators key each operation by its operationId: two operations with one id break
/// them. The document must also pass a real validator: `openapi-spec-validator` (pip), found
/// through `MEET_OPENAPI_VALIDATOR` or on the PATH. Without it the check is skipped, except under
/// CI (`CI` set), where `.ci/run` installs it and its absence fails the test.
#[test]
fn the_openapi_document_validates() {
    let document: Value =
        serde_json::from_str(&api::openapi().to_json().expect("serialize")).expect("json");
    let mut ids = std::collections::BTreeMap::<String, usize>::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            *ids.entry(id.to_string()).or_default() += 1;
        }
    }
    let repeated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "repeated operationIds: {repeated:?}");

    let validator = std::env::var("MEET_OPENAPI_VALIDATOR")
        .unwrap_or_else(|_| "openapi-spec-validator".to_string());
    let file = std::env::temp_dir().join(format!("meet-openapi-{}.json", std::process::id()));
    std::fs::write(&file, document.to_string()).expect("write the document");
    let outcome = std::process::Command::new(&validator).arg(&file).output();
    let _ = std::fs::remove_file(&file);
    match outcome {
        Ok(output) => assert!(
            output.status.success(),
            "{validator} refused the OpenAPI document:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping the OpenAPI validator ({validator}: {err})");
        }
        Err(err) => panic!("{validator} is needed under CI: {err}"),
    }
}

// ---- times, site accounts, paging ----------------------------------------------------------

#[tokio::test]
async fn times_are_read_as_rfc3339_or_milliseconds_and_written_as_rfc3339() {
    let h = Harness::new().await;
    let cases = [
        (json!(1_900_000_000_000_i64), json!(1_900_003_600_000_i64)),
        (
            json!("2030-03-17T17:46:40.000Z"),
            json!("2030-03-17T18:46:40Z"),
        ),
        // The same instants with an offset, and a fraction finer than a millisecond.
        (
            json!("2030-03-18T00:46:40+07:00"),
            json!("2030-03-17T14:16:40.0009-04:30"),
        ),
    ];
    for (starts_at, ends_at) in cases {
        let (status, meeting) = h.schedule(&h.lan, starts_at.clone(), ends_at).await;
        assert_eq!(status, StatusCode::CREATED, "{starts_at}: {meeting}");
        assert_eq!(
            meeting["starts_at"], "2030-03-17T17:46:40.000Z",
            "{meeting}"
        );
        assert_eq!(meeting["ends_at"], "2030-03-17T18:46:40.000Z", "{meeting}");
        let created = meeting["created_at"].as_str().expect("a string");
        assert!(
            created.ends_with('Z') && created.len() == 24,
            "UTC with milliseconds: {created}"
        );
    }
    // A patch reads both forms too.
    let (_, meeting) = h
        .schedule(
            &h.lan,
            json!(1_900_000_000_000_i64),
            json!(1_900_003_600_000_i64),
        )
        .await;
    let uri = format!("/api/meetings/{}", meeting["id"].as_str().expect("an id"));
    let (status, patched) = h
        .call(
            "PATCH",
            &uri,
            Some(&h.lan),
            Some(json!({"starts_at": "2030-03-17T18:00:00Z", "ends_at": 1_900_004_400_000_i64})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["starts_at"], "2030-03-17T18:00:00.000Z");
    assert_eq!(patched["ends_at"], "2030-03-17T19:00:00.000Z");
    // The login's expiry too.
    let (_, login) = h
        .sign_in(json!({"username": "lan", "password": "a long password"}))
        .await;
    time_ms(&login["expires_at"]);

    for bad in [
        json!("2030-02-30T00:00:00Z"),
        json!("tomorrow"),
        json!("2030-03-17T17:46:40"),
        json!(1.5e12),
        json!(true),
    ] {
        let (status, body) = h.schedule(&h.lan, bad, json!(1_900_003_600_000_i64)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    h.finish().await;
}

#[tokio::test]
async fn site_accounts_are_created_pending_and_activated_once() {
    let h = Harness::new().await;
    let site = h.province("HG", "Site HG").await;
    // A site's roles need a site; administrators and organizers need a password.
    for (body, why) in [
        (
            json!({"username": "op", "display_name": "Op", "role": "site_operator"}),
            "no site",
        ),
        (
            json!({"username": "op", "display_name": "Op", "role": "official", "site_id": new_id()}),
            "unknown site",
        ),
        (
            json!({"username": "org", "display_name": "Org", "role": "organizer"}),
            "no password",
        ),
    ] {
        let (status, body) = h
            .call("POST", "/api/accounts", Some(&h.admin), Some(body))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            !body["message"].as_str().unwrap_or_default().is_empty(),
            "{why}"
        );
    }
    let (status, created) = h
        .call(
            "POST",
            "/api/accounts",
            Some(&h.admin),
            Some(
                json!({"username": "hg.room", "display_name": "Phòng họp Hà Giang",
                "role": "site_operator", "site_id": site}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["role"], "site_operator");
    assert_eq!(created["site_id"], site.as_str());
    assert_eq!(created["site_code"], "HG");
    assert_eq!(created["pending_activation"], true);
    let link = created["activation"]["activation_link"]
        .as_str()
        .expect("an activation link");
    let token = link
        .strip_prefix("/organizer.html#activate=")
        .expect("the organizer page");
    assert_eq!(token.len(), 64, "256 bits");
    // No password signs it in before activation, not even an empty one.
    for password in ["", "a long password"] {
        let (status, body) = h
            .sign_in(json!({"username": "hg.room", "password": password}))
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // A fresh link replaces the first.
    let reissue_uri = format!(
        "/api/accounts/{}/activation",
        created["id"].as_str().expect("an id")
    );
    let (status, reissued) = h.call("POST", &reissue_uri, Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK, "{reissued}");
    let fresh = reissued["activation_link"]
        .as_str()
        .and_then(|l| l.strip_prefix("/organizer.html#activate="))
        .expect("a link");
    assert_ne!(fresh, token);
    let activate = |token: &str, password: &str| {
        h.call(
            "POST",
            "/api/activate",
            None,
            Some(json!({"token": token, "password": password, "remember": true})),
        )
    };
    let (status, body) = activate(token, "a long password").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = activate(fresh, "short").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, login) = activate(fresh, "a long password").await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert_eq!(login["account"]["username"], "hg.room");
    assert_eq!(login["account"]["pending_activation"], false);
    assert!(
        time_ms(&login["expires_at"]) > unix_ms() + 29 * 24 * 3600 * 1000,
        "a remembered login lasts 30 days"
    );
    let (status, body) = activate(fresh, "another long password").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = activate(&"x".repeat(10_000), "a long password").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = h.call("POST", &reissue_uri, Some(&h.admin), None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    // Signed in, with and without remembering; a site's account does not schedule meetings.
    let site_token = login["token"].as_str().expect("a token").to_string();
    let (status, me) = h.call("GET", "/api/me", Some(&site_token), None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["site_name"], "Site HG");
    let (status, body) = h
        .schedule(
            &site_token,
            json!(1_900_000_000_000_i64),
            json!(1_900_003_600_000_i64),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    for (remember, at_least, at_most) in [
        (json!(false), 11 * 3600 * 1000, 12 * 3600 * 1000),
        (json!(true), 29 * 24 * 3600 * 1000, 30 * 24 * 3600 * 1000),
    ] {
        let before = unix_ms();
        let (status, login) = h
            .sign_in(
                json!({"username": "hg.room", "password": "a long password", "remember": remember}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{login}");
        let expires = time_ms(&login["expires_at"]);
        assert!(
            expires >= before + at_least && expires <= unix_ms() + at_most,
            "{login}"
        );
    }
    // An administrator who demotes themselves to a site's role is refused like any demotion.
    let root = h.call("GET", "/api/me", Some(&h.admin), None).await.1;
    let (status, body) = h
        .call(
            "PATCH",
            &format!("/api/accounts/{}", root["id"].as_str().expect("an id")),
            Some(&h.admin),
            Some(json!({"role": "official", "site_id": site})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    h.finish().await;
}

#[tokio::test]
async fn accounts_are_listed_by_page_with_search_and_filters() {
    let h = Harness::new().await;
    let hg = h.province("HG", "Site HG").await;
    h.province("CB", "Site CB").await;
    let csv = "username,display_name,role,site_code\n\
               hg.op,Phòng họp,site_operator,HG\n\
               hg.chu-tich,Chủ tịch 100%,official,HG\n\
               cb.op,Phòng họp,site_operator,CB\n\
               cb_x,Ông X,official,CB\n";
    let request = Request::builder()
        .method("POST")
        .uri("/api/accounts/import")
        .header(header::AUTHORIZATION, format!("Bearer {}", h.admin))
        .header(header::CONTENT_TYPE, "text/csv")
        .body(Body::from(csv))
        .expect("a request");
    let (status, content_type, body) = h.send(request).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let harness = &h;
    let list = move |query: &str| {
        let uri = format!("/api/accounts{query}");
        async move { harness.call("GET", &uri, Some(&harness.admin), None).await }
    };
    let usernames = |body: &Value| -> Vec<String> {
        body["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .map(|a| a["username"].as_str().expect("a username").to_string())
            .collect()
    };
    let (status, all) = list("").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["total"], 7);
    assert_eq!(all["page"], 1);
    assert_eq!(all["per_page"], 50);
    assert_eq!(
        usernames(&all),
        [
            "cb.op",
            "cb_x",
            "hg.chu-tich",
            "hg.op",
            "lan",
            "minh",
            "root"
        ]
    );
    let (_, second) = list("?page=2&per_page=3").await;
    assert_eq!(second["total"], 7);
    assert_eq!(usernames(&second), ["hg.op", "lan", "minh"]);
    let (_, beyond) = list("?page=9&per_page=3").await;
    assert_eq!(beyond["total"], 7);
    assert_eq!(usernames(&beyond), Vec::<String>::new());
    // Search: username, display name or site name; wildcards are plain text; case of ASCII
    // letters does not matter.
    for (query, expected) in [
        ("?q=CB", vec!["cb.op", "cb_x"]),
        ("?q=Site%20HG", vec!["hg.chu-tich", "hg.op"]),
        ("?q=ph%C3%B2ng", vec!["cb.op", "hg.op"]),
        ("?q=100%25", vec!["hg.chu-tich"]),
        ("?q=_", vec!["cb_x"]),
        ("?q=cb&role=official", vec!["cb_x"]),
        (
            &format!("?site_id={hg}&role=&q="),
            vec!["hg.chu-tich", "hg.op"],
        ),
        ("?role=organizer", vec!["lan", "minh"]),
    ] {
        let (status, body) = list(query).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(usernames(&body), expected, "{query}");
        assert_eq!(body["total"], expected.len(), "{query}");
    }
    for bad in [
        "?per_page=501",
        "?per_page=0",
        "?page=0",
        "?page=x",
        "?role=mayor",
        "?colour=red",
    ] {
        let (status, body) = list(bad).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    let (status, body) = h.call("GET", "/api/accounts", Some(&h.lan), None).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");

    // A bad file imports nothing and says why, line by line.
    let (status, body) = h
        .post_csv(
            "/api/accounts/import",
            &h.admin,
            "username,display_name,role,site_code\nnew,New,official,NOWHERE\nhg.op,Again,official,HG\n",
        )
        .await;
    assert_bad_lines(status, &body, &[2, 3]);
    assert_eq!(list("").await.1["total"], 7);
    let (status, body) = h
        .post_csv(
            "/api/accounts/import",
            &h.lan,
            "username,display_name,role,site_code\n",
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    // The body limit is the import's own, above the JSON one and bounded.
    let huge = vec![b'a'; api::ACCOUNTS_CSV_LIMIT + 1];
    let (status, body) = h.post_csv("/api/accounts/import", &h.admin, huge).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    h.finish().await;
}

// ---- recordings ----------------------------------------------------------------------------

const MIX: &[u8] = b"OggS fake mixed audio: 0123456789abcdefghijklmnopqrstuvwxyz";

impl Harness {
    /// A meeting of `token`'s account.
    async fn meeting(&self, token: &str) -> String {
        let (status, meeting) = self
            .call(
                "POST",
                "/api/meetings",
                Some(token),
                Some(json!({
                    "title": "Giao ban",
                    "starts_at": 1_900_000_000_000_i64,
                    "ends_at": 1_900_003_600_000_i64,
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{meeting}");
        meeting["id"].as_str().expect("an id").to_string()
    }

    /// A finished recording of `meeting` with a manifest, a mix, one track of each kind and a
    /// file that is not a recording's.
    async fn recording(&self, meeting: &str, ended_at: i64) -> String {
        let id = new_id();
        self.store
            .create_recording(&id, meeting, ended_at - 60_000, Some("inv"), false)
            .await
            .expect("create");
        self.store
            .finish_recording(&id, RecordingStatus::Completed, ended_at, None, 1234)
            .await
            .expect("finish");
        let dir = self.recordings_dir.join(&id);
        std::fs::create_dir_all(&dir).expect("directory");
        std::fs::write(dir.join("manifest.json"), br#"{"status":"completed"}"#).expect("write");
        std::fs::write(dir.join("mix.ogg"), MIX).expect("write");
        std::fs::write(dir.join("track-3.webm"), b"webm").expect("write");
        std::fs::write(dir.join("track-2.ogg"), b"ogg").expect("write");
        std::fs::write(dir.join("notes.txt"), b"not served").expect("write");
        id
    }

    /// A GET with optional bearer token and Range header; the answer's headers too.
    async fn get(
        &self,
        uri: &str,
        token: Option<&str>,
        range: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut request = Request::builder().method("GET").uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(range) = range {
            request = request.header(header::RANGE, range);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::empty()).expect("a request"))
            .await
            .expect("the router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }
}

fn header_text(headers: &axum::http::HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn recordings_are_listed_for_their_owner_only() {
    let h = Harness::new().await;
    let meeting = h.meeting(&h.lan).await;
    let id = h.recording(&meeting, 1_900_000_100_000).await;
    let running = new_id();
    h.store
        .create_recording(&running, &meeting, 1_900_000_200_000, None, true)
        .await
        .expect("create");

    let (status, list) = h
        .call(
            "GET",
            &format!("/api/meetings/{meeting}/recordings"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 2);
    // Newest first; a recording without a directory yet has no files.
    assert_eq!(list[0]["id"], running.as_str());
    assert_eq!(list[0]["status"], "recording");
    assert_eq!(list[0]["ended_at"], Value::Null);
    assert_eq!(list[0]["files"], json!([]));
    assert_eq!(list[0]["e2ee"], true, "an encrypted recording says so");
    assert_eq!(list[1]["e2ee"], false);
    assert_eq!(list[1]["id"], id.as_str());
    assert_eq!(list[1]["meeting_id"], meeting.as_str());
    assert_eq!(list[1]["status"], "completed");
    assert_eq!(list[1]["bytes"], 1234);
    assert_eq!(list[1]["error"], Value::Null);
    assert_eq!(
        list[1]["files"],
        json!([
            {"name": "manifest.json", "kind": "manifest", "bytes": 22},
            {"name": "mix.ogg", "kind": "mix", "bytes": MIX.len()},
            {"name": "track-2.ogg", "kind": "audio", "bytes": 3},
            {"name": "track-3.webm", "kind": "video", "bytes": 4},
        ])
    );

    let (status, list) = h
        .call(
            "GET",
            &format!("/api/meetings/{meeting}/recordings"),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let (status, body) = h
        .call(
            "GET",
            &format!("/api/meetings/{meeting}/recordings"),
            Some(&h.minh),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h
        .call(
            "GET",
            &format!("/api/meetings/{meeting}/recordings"),
            None,
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    h.finish().await;
}

#[tokio::test]
async fn recording_files_are_served_with_ranges() {
    let h = Harness::new().await;
    let meeting = h.meeting(&h.lan).await;
    let id = h.recording(&meeting, 1_900_000_100_000).await;
    let base = format!("/api/recordings/{id}/files");

    let (status, headers, body) = h.get(&format!("{base}/mix.ogg"), Some(&h.lan), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, MIX);
    assert_eq!(header_text(&headers, header::CONTENT_TYPE), "audio/ogg");
    assert_eq!(header_text(&headers, header::ACCEPT_RANGES), "bytes");
    assert_eq!(header_text(&headers, header::CACHE_CONTROL), "no-store");
    assert!(headers.get(header::CONTENT_DISPOSITION).is_none());

    let (status, headers, body) = h
        .get(&format!("{base}/mix.ogg"), Some(&h.lan), Some("bytes=5-9"))
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &MIX[5..10]);
    assert_eq!(
        header_text(&headers, header::CONTENT_RANGE),
        format!("bytes 5-9/{}", MIX.len())
    );
    let (status, _, body) = h
        .get(&format!("{base}/mix.ogg"), Some(&h.lan), Some("bytes=50-"))
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &MIX[50..]);
    let (status, _, body) = h
        .get(&format!("{base}/mix.ogg"), Some(&h.lan), Some("bytes=-4"))
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &MIX[MIX.len() - 4..]);
    let (status, headers, _) = h
        .get(
            &format!("{base}/mix.ogg"),
            Some(&h.lan),
            Some("bytes=999-1000"),
        )
        .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header_text(&headers, header::CONTENT_RANGE),
        format!("bytes */{}", MIX.len())
    );

    for (name, content_type) in [
        ("manifest.json", "application/json"),
        ("track-2.ogg", "audio/ogg"),
        ("track-3.webm", "video/webm"),
    ] {
        let (status, headers, _) = h.get(&format!("{base}/{name}"), Some(&h.admin), None).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(header_text(&headers, header::CONTENT_TYPE), content_type);
    }
    let (status, headers, body) = h
        .get(
            &format!("{base}/track-3.webm?download=1"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"webm");
    assert_eq!(
        header_text(&headers, header::CONTENT_DISPOSITION),
        format!("attachment; filename=\"recording-{id}-track-3.webm\"")
    );

    // Another organizer, no token, and names or ids that are not a recording's.
    let (status, _, _) = h.get(&format!("{base}/mix.ogg"), Some(&h.minh), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = h.get(&format!("{base}/mix.ogg"), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for name in [
        "notes.txt",
        "track-9.ogg",
        "..",
        "..%2f..%2fmeet.db",
        "%2e%2e",
        "mix.ogg%00",
        "MIX.OGG",
    ] {
        let (status, _, _) = h.get(&format!("{base}/{name}"), Some(&h.lan), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}");
    }
    let (status, _, _) = h
        .get(&format!("{base}/../../meet.db"), Some(&h.lan), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unknown = new_id();
    for bad in [
        "..%2fetc",
        "../etc",
        &id[..31],
        &id.to_uppercase(),
        unknown.as_str(),
    ] {
        let (status, _, _) = h
            .get(
                &format!("/api/recordings/{bad}/files/mix.ogg"),
                Some(&h.admin),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
        let (status, body) = h
            .call(
                "POST",
                &format!("/api/recordings/{bad}/ticket"),
                Some(&h.admin),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}: {body}");
        let (status, body) = h
            .call(
                "DELETE",
                &format!("/api/recordings/{bad}"),
                Some(&h.admin),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}: {body}");
    }
    h.finish().await;
}

#[tokio::test]
async fn file_tickets_stand_in_for_the_bearer_token() {
    let h = Harness::new().await;
    let meeting = h.meeting(&h.lan).await;
    let id = h.recording(&meeting, 1_900_000_100_000).await;
    let other = h.recording(&meeting, 1_900_000_200_000).await;

    let (status, body) = h
        .call(
            "POST",
            &format!("/api/recordings/{id}/ticket"),
            Some(&h.minh),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h
        .call("POST", &format!("/api/recordings/{id}/ticket"), None, None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = h
        .call(
            "POST",
            &format!("/api/recordings/{id}/ticket"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["ticket"].as_str().expect("a ticket").to_string();
    let expires_at = time_ms(&body["expires_at"]);
    assert!(expires_at > unix_ms() + 9 * 60_000 && expires_at <= unix_ms() + 10 * 60_000);

    let (status, headers, body) = h
        .get(
            &format!("/api/recordings/{id}/files/mix.ogg?ticket={ticket}"),
            None,
            Some("bytes=0-3"),
        )
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &MIX[..4]);
    assert_eq!(header_text(&headers, header::CONTENT_TYPE), "audio/ogg");
    // Bound to its recording.
    let (status, _, _) = h
        .get(
            &format!("/api/recordings/{other}/files/mix.ogg?ticket={ticket}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = h
        .get(
            &format!(
                "/api/recordings/{id}/files/mix.ogg?ticket={}",
                "0".repeat(64)
            ),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A ticket dies with the login that asked for it.
    let token = h.login("lan").await;
    let (status, body) = h
        .call(
            "POST",
            &format!("/api/recordings/{id}/ticket"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["ticket"].as_str().expect("a ticket").to_string();
    let uri = format!("/api/recordings/{id}/files/manifest.json?ticket={ticket}");
    assert_eq!(h.get(&uri, None, None).await.0, StatusCode::OK);
    let (status, _) = h.call("POST", "/api/logout", Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.get(&uri, None, None).await.0, StatusCode::UNAUTHORIZED);
    h.finish().await;

    // Tickets expire.
    let h = Harness::with_tickets(FileTickets::new(std::time::Duration::from_millis(200))).await;
    let meeting = h.meeting(&h.lan).await;
    let id = h.recording(&meeting, 1_900_000_100_000).await;
    let (status, body) = h
        .call(
            "POST",
            &format!("/api/recordings/{id}/ticket"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = body["ticket"].as_str().expect("a ticket").to_string();
    let uri = format!("/api/recordings/{id}/files/manifest.json?ticket={ticket}");
    let (status, _, _) = h.get(&uri, None, None).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, _, _) = h.get(&uri, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    h.finish().await;
}

#[tokio::test]
async fn recordings_are_deleted_but_not_while_running() {
    let h = Harness::new().await;
    let meeting = h.meeting(&h.lan).await;
    let id = h.recording(&meeting, 1_900_000_100_000).await;
    let running = new_id();
    h.store
        .create_recording(&running, &meeting, 1_900_000_200_000, None, false)
        .await
        .expect("create");

    let (status, body) = h
        .call(
            "DELETE",
            &format!("/api/recordings/{id}"),
            Some(&h.minh),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h
        .call(
            "DELETE",
            &format!("/api/recordings/{running}"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");

    let (status, body) = h
        .call(
            "DELETE",
            &format!("/api/recordings/{id}"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(!h.recordings_dir.join(&id).exists());
    assert_eq!(h.store.recording(&id).await.expect("query"), None);
    let (status, body) = h
        .call(
            "DELETE",
            &format!("/api/recordings/{id}"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, list) = h
        .call(
            "GET",
            &format!("/api/meetings/{meeting}/recordings"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    h.finish().await;
}

#[tokio::test]
async fn retention_deletes_only_old_recordings() {
    let h = Harness::new().await;
    let meeting = h.meeting(&h.lan).await;
    let now = unix_ms();
    let day = 24 * 60 * 60 * 1000;
    let old = h.recording(&meeting, now - 91 * day).await;
    let recent = h.recording(&meeting, now - 89 * day).await;
    let removed = signaling::retention::delete_expired(&h.store, &h.recordings_dir, 90, now)
        .await
        .expect("a pass");
    assert_eq!(removed, 1);
    assert!(!h.recordings_dir.join(&old).exists());
    assert!(h.recordings_dir.join(&recent).join("mix.ogg").exists());
    let (status, list) = h
        .call(
            "GET",
            &format!("/api/meetings/{meeting}/recordings"),
            Some(&h.lan),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, [recent.as_str()]);
    h.finish().await;
}
