//! Starts the real server on loopback for integration tests, and connects clients to it.

#![allow(dead_code)]

pub mod recordings;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use loadtest::bot::{Bot, BotOptions, BotSnapshot};
use protocol::{MediaKind, ParticipantId, ServerMessage};
use signaling::{Config, RunningServer};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub const MEDIA_TIMEOUT: Duration = Duration::from_secs(20);
pub const TONE_TOLERANCE_HZ: f32 = 15.0;

pub struct TestServer {
    pub server: RunningServer,
    pub data_dir: tempdir::TempDir,
}

pub mod tempdir {
    /// A directory removed on drop.
    pub struct TempDir(pub std::path::PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "meet-test-{tag}-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rand_suffix() -> u64 {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

pub fn init() {
    signaling::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Starts a server on 127.0.0.1 with free ports, adjusting its config first.
pub async fn start(tag: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
    init();
    let data_dir = tempdir::TempDir::new(tag);
    let mut config = Config::new();
    config.http_addr = "127.0.0.1:0".parse().expect("addr");
    config.media_addr = "127.0.0.1:0".parse().expect("addr");
    config.data_dir = data_dir.0.clone();
    config.web_client_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../web-client").into();
    config.open_rooms = true;
    // Two media workers whatever the machine, so that every test's participants are spread
    // over workers and rooms are mirrored between them, as on a production server.
    config.media_workers = Some(2);
    adjust(&mut config);
    let server = signaling::start(config).await.expect("server starts");
    TestServer { server, data_dir }
}

impl TestServer {
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        loadtest::bot::tls_config_trusting_pem(&self.server.cert_pem).expect("pinned cert")
    }

    /// Options for a str0m bot publishing a tone of `tone_hz` and video tagged `tag`, pinning
    /// this server's certificate.
    pub fn bot_options(&self, room: &str, name: &str, tone_hz: f32, tag: u64) -> BotOptions {
        let mut options = BotOptions::new(self.server.ws_url(), room, name, self.tls());
        options.endpoint.tone_hz = tone_hz;
        options.endpoint.video_tag = tag;
        options.endpoint.keyframe_interval = Some(Duration::from_secs(2));
        options
    }

    /// A str0m bot publishing a tone of `tone_hz` and video tagged `tag`.
    pub async fn bot(&self, room: &str, name: &str, tone_hz: f32, tag: u64) -> Bot {
        Bot::connect(self.bot_options(room, name, tone_hz, tag))
            .await
            .expect("bot joins")
    }

    pub fn webrtc_rs_options(
        &self,
        room: &str,
        name: &str,
        tone_hz: f32,
        tag: u64,
    ) -> meet_testkit::ClientOptions {
        meet_testkit::ClientOptions::new(
            self.server.ws_url(),
            room,
            name,
            self.server.cert_pem.clone(),
            tone_hz,
            tag,
        )
    }

    /// Alice (440 Hz, tag 1) and Bob (660 Hz, tag 2) in room "r", returned once each hears
    /// and sees the other: the baseline for checking that nobody else notices something.
    pub async fn two_bots_exchanging_media(&self) -> (Bot, Bot) {
        let alice = self.bot("r", "alice", 440.0, 1).await;
        let bob = self.bot("r", "bob", 660.0, 2).await;
        let (a, b) = (alice.participant_id(), bob.participant_id());
        eventually(MEDIA_TIMEOUT, "alice and bob exchange media", || {
            bot_receives(&alice, b, 660.0, 2) && bot_receives(&bob, a, 440.0, 1)
        })
        .await;
        (alice, bob)
    }

    /// A plain HTTPS GET; returns the status code and the body.
    pub async fn https_get(&self, path: &str) -> (u16, String) {
        let response = self.https("GET", path, &[], None, None).await;
        (response.status, response.body)
    }

    /// The metrics page, with the server's metrics token.
    pub async fn metrics(&self) -> String {
        let auth = format!("Bearer {}", self.server.metrics_token);
        let response = self
            .https("GET", "/metrics", &[("Authorization", &auth)], None, None)
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
        response.body
    }

    /// One HTTPS request on its own connection, from `source` (a loopback address: the whole
    /// of 127.0.0.0/8 reaches the server) when given.
    pub async fn https(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
        source: Option<std::net::IpAddr>,
    ) -> HttpsResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let connector = tokio_rustls::TlsConnector::from(self.tls());
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(ip) = source {
            socket
                .bind(std::net::SocketAddr::new(ip, 0))
                .expect("bind the source");
        }
        let tcp = socket
            .connect(self.server.http_addr)
            .await
            .expect("tcp connects");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("tls handshake");
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or_default());
        tls.write_all(request.as_bytes()).await.expect("request");
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        HttpsResponse {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    /// One API request on its own connection, with an optional bearer token and a body of
    /// any type (JSON, CSV).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> HttpsResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let connector = tokio_rustls::TlsConnector::from(self.tls());
        let tcp = tokio::net::TcpStream::connect(self.server.http_addr)
            .await
            .expect("tcp connects");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("tls handshake");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).await.expect("request");
        tls.write_all(body).await.expect("request body");
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        // The answer is kept once, without copies: tests measure the process's memory around
        // large answers.
        let mut body = String::from_utf8(response)
            .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
        let status = body
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let head_end = body.find("\r\n\r\n").map_or(body.len(), |i| i + 4);
        let head: String = body.drain(..head_end).collect();
        HttpsResponse {
            status,
            head: head.trim_end().to_string(),
            body,
        }
    }

    /// An API call with a JSON body (or none); the status and the JSON answer (`null` when
    /// empty).
    pub async fn api_json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let response = self
            .api(method, path, token, "application/json", body.as_bytes())
            .await;
        let value = if response.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&response.body).unwrap_or_else(|_| {
                panic!(
                    "{method} {path} answered {} {:?}",
                    response.status, response.body
                )
            })
        };
        (response.status, value)
    }

    /// Creates an administrator account named `username` and signs it in: its API token.
    pub async fn admin_token(&self, username: &str) -> String {
        const PASSWORD: &str = "an administrator's long password";
        self.server
            .store
            .create_account(&signaling::store::NewAccount {
                username,
                display_name: "Quản trị",
                password: PASSWORD,
                role: signaling::store::AccountRole::Admin,
            })
            .await
            .expect("an administrator");
        let (status, login) = self
            .api_json(
                "POST",
                "/api/login",
                None,
                Some(serde_json::json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 200, "{login}");
        login["token"].as_str().expect("a token").to_string()
    }

    /// A header of a response's head, by name (any case).
    pub fn header<'a>(response: &'a HttpsResponse, name: &str) -> Option<&'a str> {
        response.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// A raw WebSocket connection, for sending bad input.
    pub async fn raw(&self) -> RawClient {
        let connector = Connector::Rustls(self.tls());
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            self.server.ws_url(),
            None,
            false,
            Some(connector),
        )
        .await
        .expect("websocket connects");
        RawClient { ws }
    }

    /// A raw WebSocket connection whose socket buffers at most about `bytes` on its side (no
    /// autotuning), so that a client that stops reading backs up into the server quickly.
    pub async fn raw_with_receive_buffer(&self, bytes: u32) -> RawClient {
        self.raw_from(None, Some(bytes)).await
    }

    /// A raw WebSocket connection from `source` (any 127.0.0.0/8 address) with an optional
    /// fixed receive buffer.
    pub async fn raw_from(
        &self,
        source: Option<std::net::IpAddr>,
        receive_buffer: Option<u32>,
    ) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(bytes) = receive_buffer {
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        if let Some(ip) = source {
            socket
                .bind(std::net::SocketAddr::new(ip, 0))
                .expect("bind the source");
        }
        let tcp = socket
            .connect(self.server.http_addr)
            .await
            .expect("tcp connects");
        let connector = Connector::Rustls(self.tls());
        let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
            self.server.ws_url(),
            tcp,
            None,
            Some(connector),
        )
        .await
        .expect("websocket connects");
        RawClient { ws }
    }
}

/// An HTTPS response: its status, its head (status line and headers) and its body.
#[derive(Debug)]
pub struct HttpsResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Whether a bot hears `sender`'s tone and sees its video tag.
pub fn bot_receives(bot: &Bot, sender: ParticipantId, tone_hz: f32, tag: u64) -> bool {
    let snapshot = bot.snapshot();
    let frequencies = bot.dominant_frequencies();
    let mut audio_ok = false;
    let mut video_ok = false;
    for (id, stats) in &snapshot.received {
        if stats.participant_id != sender {
            continue;
        }
        match stats.kind {
            MediaKind::Audio => {
                audio_ok = stats.audio_frames_decoded >= 25
                    && frequencies
                        .get(id)
                        .is_some_and(|f| (f - tone_hz).abs() <= TONE_TOLERANCE_HZ);
            }
            MediaKind::Video => {
                video_ok = stats.video_frames >= 5 && stats.video_tag == Some(tag);
            }
        }
    }
    audio_ok && video_ok
}

/// What a bot has of `sender`, for a failed wait to say which half of the media is missing:
/// whether the bot is connected, knows the sender, and per publication the frames, keyframes,
/// keyframe requests, tone and tag.
pub fn describe_reception(bot: &Bot, sender: ParticipantId) -> String {
    let snapshot = bot.snapshot();
    let frequencies = bot.dominant_frequencies();
    let mut out = format!(
        "{:?} (connected {}, media_connected {}, knows sender {}, errors {:?}):",
        snapshot.participant_id,
        snapshot.connected,
        snapshot.media_connected_at.is_some(),
        snapshot.roster.participants.contains_key(&sender),
        snapshot.errors,
    );
    let mut any = false;
    for (id, stats) in &snapshot.received {
        if stats.participant_id != sender {
            continue;
        }
        any = true;
        out.push_str(&format!(
            " [{:?} {:?} mid {:?} subscribed {} rtp {} frames {} audio_decoded {} tone {:?} \
             video_frames {} keyframes {} tag {:?} keyframe_requests {}]",
            stats.kind,
            id,
            stats.mid,
            stats.subscribed,
            stats.rtp_packets,
            stats.frames,
            stats.audio_frames_decoded,
            frequencies.get(id),
            stats.video_frames,
            stats.keyframes,
            stats.video_tag,
            stats.keyframe_requests_sent,
        ));
    }
    if !any {
        out.push_str(" nothing of the sender");
    }
    out
}

/// Waits until each `(bot, sender, tone, tag)` holds for [`bot_receives`]; on timeout the
/// panic says what each bot has of its sender.
pub async fn media_flows(timeout: Duration, what: &str, pairs: &[(&Bot, ParticipantId, f32, u64)]) {
    media_flows_on(&[], timeout, what, pairs).await
}

/// [`media_flows`], whose panic also shows the SFU counters of `servers`.
pub async fn media_flows_on(
    servers: &[&TestServer],
    timeout: Duration,
    what: &str,
    pairs: &[(&Bot, ParticipantId, f32, u64)],
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !pairs
        .iter()
        .all(|(bot, sender, tone, tag)| bot_receives(bot, *sender, *tone, *tag))
    {
        if tokio::time::Instant::now() >= deadline {
            let mut state: Vec<String> = pairs
                .iter()
                .map(|(bot, sender, _, _)| describe_reception(bot, *sender))
                .collect();
            for server in servers {
                let s = server.server.sfu.snapshot();
                state.push(format!(
                    "server at {}: {:?} links {:?}",
                    server.server.http_addr, s.stats, s.links
                ));
            }
            panic!("timed out waiting until {what}:\n  {}", state.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `condition` holds, polling every 50 ms; panics with `what` after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Audio frames a bot decoded from `sender` so far.
pub fn bot_audio_frames(snapshot: &BotSnapshot, sender: ParticipantId) -> u64 {
    snapshot
        .received
        .values()
        .filter(|s| s.participant_id == sender && s.kind == MediaKind::Audio)
        .map(|s| s.audio_frames_decoded)
        .sum()
}

/// Whether the webrtc-rs client hears and sees `sender`.
pub fn client_receives(
    snapshot: &meet_testkit::Snapshot,
    sender: ParticipantId,
    tone_hz: f32,
    tag: u64,
) -> bool {
    snapshot.received.get(&sender).is_some_and(|media| {
        media.opus_frames_decoded >= 25
            && media
                .dominant_frequency_hz
                .is_some_and(|f| (f - tone_hz).abs() <= TONE_TOLERANCE_HZ)
            && media.video_frames >= 5
            && media.video_tag == Some(tag)
    })
}

pub struct RawClient {
    pub ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

/// What a raw client saw next.
#[derive(Debug)]
pub enum Received {
    Message(ServerMessage),
    Closed(Option<u16>),
}

impl RawClient {
    pub async fn send_text(&mut self, text: impl Into<String>) {
        let _ = self.ws.send(Message::Text(text.into().into())).await;
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        let _ = self.ws.send(Message::Binary(data.into())).await;
    }

    /// The next server message or close, skipping pings and `active_speaker`, which arrives
    /// at any time in rooms where bots claim a speaking level, whatever the test sends.
    pub async fn next(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("the server answers within 10 s");
            match next {
                Some(Ok(Message::Text(text))) => {
                    let message: ServerMessage =
                        serde_json::from_str(text.as_str()).expect("server sends valid messages");
                    if matches!(message, ServerMessage::ActiveSpeaker { .. }) {
                        continue;
                    }
                    return Received::Message(message);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    /// The next message, which must be an error; returns its code. Pongs and aggregate
    /// counts (sent at most once a second whenever they changed, so at any moment after a
    /// join) are skipped.
    pub async fn expect_error(&mut self) -> protocol::ErrorCode {
        loop {
            match self.next().await {
                Received::Message(ServerMessage::Error { code, .. }) => return code,
                Received::Message(ServerMessage::Pong | ServerMessage::RoomCounts { .. }) => {
                    continue;
                }
                other => panic!("expected an error, got {other:?}"),
            }
        }
    }

    /// The next server message or close if one arrives within `wait`, skipping pings and
    /// `active_speaker` (see [`RawClient::next`]).
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        loop {
            let next = tokio::time::timeout(wait, self.ws.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    let message: ServerMessage =
                        serde_json::from_str(text.as_str()).expect("server sends valid messages");
                    if matches!(message, ServerMessage::ActiveSpeaker { .. }) {
                        continue;
                    }
                    return Some(Received::Message(message));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Received::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Received::Closed(None)),
            }
        }
    }

    /// Sends a join with a token and returns the first answer: `joined`, `lobby` or an error.
    pub async fn join_token(&mut self, token: &str) -> ServerMessage {
        self.send_text(
            serde_json::json!({"type": "join", "protocol_version": 2, "token": token}).to_string(),
        )
        .await;
        loop {
            match self.next().await {
                Received::Message(ServerMessage::Pong) => continue,
                Received::Message(message) => return message,
                Received::Closed(code) => panic!("closed ({code:?}) before answering the join"),
            }
        }
    }

    /// Joins an open room in a role; returns the `joined` message.
    pub async fn join_as(&mut self, room: &str, name: &str, role: &str) -> ServerMessage {
        self.send_text(
            serde_json::json!({
                "type": "join", "protocol_version": 2, "room": room, "name": name, "role": role
            })
            .to_string(),
        )
        .await;
        loop {
            if let Received::Message(message @ ServerMessage::Joined { .. }) = self.next().await {
                return message;
            }
        }
    }

    pub async fn join(&mut self, room: &str, name: &str) -> ParticipantId {
        self.send_text(format!(
            r#"{{"type":"join","protocol_version":2,"room":"{room}","name":"{name}"}}"#
        ))
        .await;
        loop {
            if let Received::Message(ServerMessage::Joined { participant_id, .. }) =
                self.next().await
            {
                return participant_id;
            }
        }
    }
}

/// A scheduled meeting and a join token for each invitation.
#[derive(Debug)]
pub struct Scheduled {
    pub id: String,
    pub starts_at: i64,
    pub invited: Vec<Invited>,
}

#[derive(Debug, Clone)]
pub struct Invited {
    pub invitation_id: String,
    pub name: String,
    pub role: protocol::Role,
    pub token: String,
}

impl Scheduled {
    /// The invitation of `name` ("Host" is the organizer's own).
    pub fn invited(&self, name: &str) -> &Invited {
        self.invited
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("{name} is not invited"))
    }
}

impl TestServer {
    /// Schedules a meeting that started a minute ago, organized by a new account named
    /// "Host" (invited as host), inviting named people, and signs a token for each.
    pub async fn schedule(
        &self,
        admission: signaling::store::Admission,
        invitees: &[(&str, protocol::Role)],
    ) -> Scheduled {
        schedule_on(&self.server.store, &self.server.tokens, admission, invitees).await
    }
}

/// [`TestServer::schedule`] on a given storage and signing key.
pub async fn schedule_on(
    store: &signaling::store::Store,
    tokens: &signaling::auth::JoinTokens,
    admission: signaling::store::Admission,
    invitees: &[(&str, protocol::Role)],
) -> Scheduled {
    use signaling::store::{AccountRole, Invitee, NewAccount, NewMeeting};
    let username = format!("org-{}", signaling::store::new_id());
    let organizer = store
        .create_account(&NewAccount {
            username: &username,
            display_name: "Host",
            password: "a long enough password",
            role: AccountRole::Organizer,
        })
        .await
        .expect("organizer created");
    let now_ms = signaling::store::unix_ms();
    let starts_at = now_ms - 60_000;
    let invitees: Vec<Invitee> = invitees
        .iter()
        .map(|(name, role)| Invitee {
            role: *role,
            site_id: None,
            account_id: None,
            name: Some((*name).to_string()),
        })
        .collect();
    let meeting = store
        .create_meeting(
            &organizer,
            &NewMeeting {
                title: "Hội nghị trực tuyến",
                starts_at,
                ends_at: now_ms + 3_600_000,
                admission,
                auto_record: false,
                confidential: false,
                e2ee: false,
            },
            &invitees,
        )
        .await
        .expect("meeting scheduled");
    let now = signaling::auth::unix_seconds();
    let invited = store
        .invitations(&meeting.id)
        .await
        .expect("invitations")
        .into_iter()
        .map(|i| {
            let token = tokens
                .issue(
                    &signaling::auth::JoinGrant {
                        invitation_id: &i.id,
                        room: &meeting.id,
                        name: &i.name,
                        role: i.role,
                        site: i.site_id.as_deref(),
                        not_before: now - 60,
                        expires: now + 3600,
                    },
                    now,
                )
                .expect("signed");
            Invited {
                invitation_id: i.id,
                name: i.name,
                role: i.role,
                token,
            }
        })
        .collect();
    Scheduled {
        id: meeting.id,
        starts_at,
        invited,
    }
}

/// Starts the `meet-server` binary as `command` describes (its arguments; stdout is taken
/// here) and returns it with the HTTPS address it logs once listening. Its output is read to
/// the end on a thread of its own, so that the server never blocks on a full pipe.
pub fn spawn_server(mut command: std::process::Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the server starts");
    let stdout = child.stdout.take().expect("stdout");
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // MEET_TEST_SERVER_LOGS=1 shows the servers' logs beside the test's.
            if std::env::var_os("MEET_TEST_SERVER_LOGS").is_some() {
                eprintln!("server: {line}");
            }
            if !sent && let Some(rest) = line.split("http_addr=").nth(1) {
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                let _ = found.send(addr);
                sent = true;
            }
        }
    });
    let addr = address
        .recv_timeout(Duration::from_secs(60))
        .expect("the server logs its address");
    (child, addr)
}
