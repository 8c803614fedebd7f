//! Floods and hostile peers against the real server: each is bounded, refused to whoever
//! causes it, and the meeting beside it keeps its media.

mod common;

use std::time::{Duration, Instant};

use common::{MEDIA_TIMEOUT, Received, bot_audio_frames, eventually};
use protocol::{ErrorCode, ServerMessage};

/// The tests here measure this process's memory and descriptors: one at a time (a tokio
/// lock, as each test has its own runtime and holds it across awaits).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A participant addressing wrapped keys to another as fast as its own rate limit allows
/// (16 blobs of the largest size per message, 20 messages a second) while the victim reads
/// nothing: the server used to queue them all, fill the victim's queue and remove the victim
/// as too slow. Now what crowds a recipient is refused to its sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flooding_someones_queue_with_key_messages_does_not_get_them_removed() {
    let _serial = serial().await;
    let t = common::start("relay-flood", |_| {}).await;
    let (alice, bob) = t.two_bots_exchanging_media().await;
    let before = (
        bot_audio_frames(&alice.snapshot(), bob.participant_id()),
        bot_audio_frames(&bob.snapshot(), alice.participant_id()),
    );

    // The victim reads nothing from here on, and its socket buffers little.
    let mut victim = t.raw_with_receive_buffer(4096).await;
    let victim_id = victim.join("r", "victim").await;
    let mut mallory = t.raw().await;
    mallory.join("r", "mallory").await;

    let blob = "A".repeat(protocol::MAX_E2EE_BLOB);
    // Sixteen of the largest blobs per message: about half what 64 KiB holds.
    let keys: Vec<_> = (0..16)
        .map(|_| serde_json::json!({"participant_id": victim_id, "blob": blob}))
        .collect();
    let flood = serde_json::json!({"type": "e2ee_keys", "keys": keys}).to_string();
    let mut refused = 0;
    let start = Instant::now();
    // 15 s at 20 messages a second is about 4,800 deliveries, 10 MB: far more than the
    // victim's queue (1,024 messages) and both sockets' buffers hold.
    while start.elapsed() < Duration::from_secs(15) {
        mallory.send_text(flood.clone()).await;
        let tick = Instant::now();
        while let Some(received) = mallory.next_within(Duration::from_millis(50)).await {
            match received {
                Received::Message(ServerMessage::ParticipantLeft { participant_id, .. })
                    if participant_id == victim_id =>
                {
                    panic!(
                        "the victim was removed after {:.1} s of flood",
                        start.elapsed().as_secs_f64()
                    );
                }
                Received::Message(ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }) => refused += 1,
                Received::Closed(code) => panic!("the flooder's socket closed: {code:?}"),
                _ => {}
            }
            if tick.elapsed() >= Duration::from_millis(50) {
                break;
            }
        }
    }
    assert!(refused > 0, "the flooder was never told to slow down");

    // The victim is still there: it reads its backlog and answers a ping.
    victim.send_text(r#"{"type":"ping"}"#).await;
    loop {
        match victim.next().await {
            Received::Message(ServerMessage::Pong) => break,
            Received::Message(_) => {}
            Received::Closed(code) => panic!("the victim was disconnected: {code:?}"),
        }
    }
    // And the meeting beside the flood kept its media.
    let (a, b) = (alice.participant_id(), bob.participant_id());
    eventually(MEDIA_TIMEOUT, "media keeps flowing for the others", || {
        bot_audio_frames(&alice.snapshot(), b) >= before.0 + 25
            && bot_audio_frames(&bob.snapshot(), a) >= before.1 + 25
    })
    .await;
}

/// Resident memory of this test process, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Open file descriptors of this test process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// Samples this process's resident memory until stopped; returns the peak.
fn peak_rss_sampler() -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<u64>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut peak = rss_bytes();
        loop {
            peak = peak.max(rss_bytes());
            tokio::select! {
                _ = &mut stopped => return peak,
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    });
    (stop, task)
}

/// The loss both bots saw on each other's streams since `before` (packets expected and
/// received, summed), as a fraction.
fn loss_since(bots: &[&loadtest::bot::Bot], before: &[endpoint::wire::WireSummary]) -> f64 {
    let (mut expected, mut received) = (0u64, 0u64);
    for (bot, before) in bots.iter().zip(before) {
        let now = bot.stats().wire;
        expected += now.packets_expected - before.packets_expected;
        received += now.packets_received - before.packets_received;
    }
    assert!(expected > 0, "no media during the flood");
    expected.saturating_sub(received) as f64 / expected as f64
}

/// 200 sign-ins at once, each with a new username from its own address (so that no
/// per-address or per-username throttle applies): before, each ran its own argon2 hash
/// (19 MiB) at once, 3.8 GB in all. Now at most `max_concurrent_hashes` run and a few wait;
/// the rest are told to come back (503), the process's memory stays within a few hashes, and
/// the meeting beside the flood keeps its media.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sign_in_flood_is_bounded_in_memory_and_leaves_meetings_alone() {
    let _serial = serial().await;
    let t = common::start("login-flood", |_| {}).await;
    let (alice, bob) = t.two_bots_exchanging_media().await;
    let before = [alice.stats().wire, bob.stats().wire];
    let baseline = rss_bytes();
    let (stop, sampler) = peak_rss_sampler();

    let t = std::sync::Arc::new(t);
    let attempts: Vec<_> = (0..200u32)
        .map(|n| {
            let t = t.clone();
            tokio::spawn(async move {
                let source = std::net::IpAddr::from([127, 1, (n / 250) as u8, (n % 250 + 2) as u8]);
                let body = format!(r#"{{"username":"nobody{n}","password":"a long password"}}"#);
                t.https("POST", "/api/login", &[], Some(&body), Some(source))
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for attempt in attempts {
        *statuses.entry(attempt.await.expect("attempt")).or_insert(0) += 1;
    }
    stop.send(()).expect("sampler");
    let peak = sampler.await.expect("sampler");

    // Every attempt was answered: refused as unknown (401) or asked to come back (503).
    assert!(
        statuses.keys().all(|s| [401, 503].contains(s)) && statuses.contains_key(&401),
        "{statuses:?}"
    );
    eprintln!(
        "sign-in flood: {statuses:?}, memory peak +{} MiB",
        peak.saturating_sub(baseline) >> 20
    );
    let slots = signaling::store::max_concurrent_hashes();
    let bound = (slots as u64 + 2) * 20 * 1024 * 1024 + 64 * 1024 * 1024;
    let grew = peak.saturating_sub(baseline);
    assert!(
        grew < bound,
        "memory grew by {} MiB during the flood; the bound is {} MiB ({slots} hashes at once)",
        grew >> 20,
        bound >> 20
    );
    let loss = loss_since(&[&alice, &bob], &before);
    assert!(
        loss < 0.005,
        "the meeting beside the flood lost {:.2}%",
        loss * 100.0
    );
}

/// A TCP connection from `source`, and whether the server closed it within `wait` (it read
/// nothing, or was reset).
async fn closed_within(stream: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn tcp_from(t: &common::TestServer, source: [u8; 4]) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .expect("bind");
    socket
        .connect(t.server.http_addr)
        .await
        .expect("tcp connects")
}

/// Connections that never say who they are: too many from one address, WebSockets that never
/// join, and requests whose header trickles in a byte at a time (slowloris). Each used to hold
/// a descriptor for as long as the client liked. Now an address holds at most its limit,
/// a socket must join within its deadline and a header must arrive within the request
/// timeout; descriptors stay bounded, others still connect, and the meeting keeps its media.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_without_a_join_are_bounded_per_address_and_in_time() {
    use tokio::io::AsyncWriteExt;
    let _serial = serial().await;
    const LIMIT: usize = 50;
    let t = common::start("connection-flood", |config| {
        config.max_connections_per_ip = Some(LIMIT);
        config.session_limits.join_deadline = Duration::from_secs(2);
        config.request_timeout = Duration::from_secs(2);
    })
    .await;
    let (alice, bob) = t.two_bots_exchanging_media().await;
    let before = [alice.stats().wire, bob.stats().wire];
    let baseline_fds = open_fds();

    // 300 idle TCP connections from one address: all but the limit are closed at once.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tcp_from(&t, [127, 0, 0, 2]).await);
    }
    let mut closed = 0;
    for stream in &mut idle {
        if closed_within(stream, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert!(closed >= 300 - LIMIT, "only {closed} of 300 were refused");
    // This process holds both ends: the 300 client sockets, and at most the limit's server
    // sockets.
    let fds = open_fds();
    assert!(
        fds <= baseline_fds + 300 + LIMIT + 10,
        "{fds} descriptors open, {baseline_fds} before the flood"
    );
    // Another address is not affected.
    let other = t
        .https("GET", "/healthz", &[], None, Some([127, 0, 0, 3].into()))
        .await;
    assert_eq!(other.status, 200);
    // The held connections never sent a request: they are closed within the request timeout.
    let mut held_closed = 0;
    for stream in &mut idle {
        if closed_within(stream, Duration::from_secs(4)).await {
            held_closed += 1;
        }
    }
    assert_eq!(
        held_closed, 300,
        "idle connections outlived the request timeout"
    );
    drop(idle);

    // A header sent one byte at a time is cut off at the request timeout.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let tcp = tcp_from(&t, [127, 0, 0, 5]).await;
        let connector = tokio_rustls::TlsConnector::from(t.tls());
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("tls handshake");
        slow.push(tls);
    }
    let started = Instant::now();
    let header = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut_off = vec![None; slow.len()];
    'bytes: for byte in header {
        for (n, tls) in slow.iter_mut().enumerate() {
            if cut_off[n].is_none()
                && (tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err())
            {
                cut_off[n] = Some(started.elapsed());
            }
        }
        if cut_off.iter().all(Option::is_some) || started.elapsed() > Duration::from_secs(8) {
            break 'bytes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cut_off.iter().all(Option::is_some),
        "a slow header was still being read after {:?}",
        started.elapsed()
    );
    drop(slow);

    // WebSockets that never join are closed with a reason.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(t.raw_from(Some([127, 0, 0, 4].into()), None).await);
    }
    for raw in &mut silent {
        match raw.next_within(Duration::from_secs(5)).await {
            Some(Received::Message(ServerMessage::Error { code, .. })) => {
                assert_eq!(code, ErrorCode::JoinTimeout);
            }
            other => panic!("a silent socket got {other:?}"),
        }
    }

    let loss = loss_since(&[&alice, &bob], &before);
    assert!(
        loss < 0.005,
        "the meeting beside the flood lost {:.2}%",
        loss * 100.0
    );
}

/// Holds SQLite's write lock on the server's database until dropped, as a slow disk or a long
/// transaction would: the server's writes wait, its reads go on (WAL).
async fn hold_the_write_lock(t: &common::TestServer) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let url = format!("sqlite://{}", t.data_dir.0.join("meet.db").display());
    let mut connection = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("a second connection to the database");
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut connection)
        .await
        .expect("the write lock");
    connection
}

async fn release(mut connection: sqlx::SqliteConnection) {
    sqlx::raw_sql("COMMIT")
        .execute(&mut connection)
        .await
        .expect("released");
}

/// A removed participant's link stops working at once, even while storage has not yet
/// written the revocation: the join used to slip through in that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_participant_cannot_walk_back_in_before_storage_catches_up() {
    use protocol::Role;
    let _serial = serial().await;
    let t = common::start("instant-rejoin", |c| c.open_rooms = false).await;
    let meeting = t
        .schedule(
            signaling::store::Admission::Scheduled,
            &[("Xã A", Role::Participant)],
        )
        .await;
    let mut host = t.raw().await;
    assert!(matches!(
        host.join_token(&meeting.invited("Host").token).await,
        ServerMessage::Joined { .. }
    ));
    let commune = meeting.invited("Xã A");
    let mut first = t.raw().await;
    let ServerMessage::Joined { participant_id, .. } = first.join_token(&commune.token).await
    else {
        panic!("the commune enters");
    };

    let lock = hold_the_write_lock(&t).await;
    host.send_text(
        serde_json::json!({"type": "remove_participant", "participant_id": participant_id})
            .to_string(),
    )
    .await;
    loop {
        match first.next().await {
            Received::Message(ServerMessage::Error {
                code: ErrorCode::Removed,
                ..
            }) => break,
            Received::Closed(code) => panic!("closed without a reason: {code:?}"),
            Received::Message(_) => {}
        }
    }
    // Storage still says the invitation stands (its write waits for the lock) …
    let check = t
        .server
        .store
        .join_check(&commune.invitation_id)
        .await
        .expect("lookup")
        .expect("the invitation");
    assert!(!check.revoked, "the lock did not hold the write back");
    // … yet the link no longer opens the meeting.
    let mut again = t.raw().await;
    let answer = again.join_token(&commune.token).await;
    assert!(
        matches!(
            answer,
            ServerMessage::Error {
                code: ErrorCode::InvalidToken,
                ..
            }
        ),
        "{answer:?}"
    );
    release(lock).await;
    // And storage catches up.
    let mut revoked = false;
    for _ in 0..100 {
        revoked = t
            .server
            .store
            .join_check(&commune.invitation_id)
            .await
            .expect("lookup")
            .is_some_and(|check| check.revoked);
        if revoked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(revoked, "the revocation was never stored");
}

/// Joins and leaves reach the attendance log in the order they happened, whatever storage's
/// speed: with a leave written before its join, the row stayed open for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attendance_is_written_in_the_order_things_happened() {
    let _serial = serial().await;
    let t = common::start("attendance-order", |_| {}).await;
    let lock = hold_the_write_lock(&t).await;
    for n in 0..10 {
        let mut raw = t.raw().await;
        raw.join("r", &format!("p{n}")).await;
        raw.send_text(r#"{"type":"leave"}"#).await;
    }
    release(lock).await;
    let room = protocol::RoomId("r".into());
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = t.server.store.attendance(&room).await.expect("attendance");
        if rows.len() == 10 && rows.iter().all(|r| r.left_at.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), 10, "{rows:#?}");
    for row in &rows {
        let left = row.left_at.expect("every row closed");
        assert!(left >= row.joined_at, "{row:?}");
        assert_eq!(row.leave_reason.as_deref(), Some("left"), "{row:?}");
    }
}

/// When the media engine stops (a panic, a failed socket, a stop), the server says so:
/// `/healthz` answers 503, and the process's run ends with an error, so that a supervisor
/// restarts it. It used to answer `ok` while no meeting could hold media.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_media_engine_fails_health_and_ends_the_server() {
    let _serial = serial().await;
    let t = common::start("sfu-stops", |_| {}).await;
    let mut raw = t.raw().await;
    raw.join("r", "someone").await;
    assert_eq!(t.https_get("/healthz").await, (200, "ok".to_string()));

    assert!(t.server.sfu.send(sfu::SfuCommand::Shutdown));
    let mut health = (0, String::new());
    for _ in 0..100 {
        health = t.https_get("/healthz").await;
        if health.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health.0, 503, "{health:?}");
    // The participant is told the media is gone.
    loop {
        match raw.next().await {
            Received::Message(ServerMessage::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::MediaUnavailable);
                break;
            }
            Received::Closed(code) => panic!("closed without a reason: {code:?}"),
            Received::Message(_) => {}
        }
    }
    let common::TestServer { server, data_dir } = t;
    let run = tokio::time::timeout(Duration::from_secs(10), server.run_until_signal())
        .await
        .expect("the server ends by itself");
    assert!(
        run.is_err(),
        "a server without its media engine ended cleanly"
    );
    drop(data_dir);
}

/// What every page and answer carries, and what is not served at all: the test hooks (unless
/// the server runs in test mode), the client's README and tests, and the metrics without
/// their token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_carry_security_headers_and_private_files_stay_private() {
    let _serial = serial().await;
    let t = common::start("headers", |_| {}).await;
    for path in ["/", "/app.js", "/api/me", "/healthz", "/nothing-here"] {
        let response = t.https("GET", path, &[], None, None).await;
        let header = |name| common::TestServer::header(&response, name);
        let csp = header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "script-src 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: CSP {csp:?}");
        }
        assert_eq!(header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(header("referrer-policy"), Some("no-referrer"), "{path}");
        assert!(
            header("strict-transport-security").is_some_and(|v| v.starts_with("max-age=")),
            "{path}"
        );
    }
    for path in [
        "/testhooks.js",
        "/README.md",
        "/tests/harness.mjs",
        "/tests/package.json",
        "/../Cargo.toml",
    ] {
        assert_eq!(t.https_get(path).await.0, 404, "{path} is served");
    }
    assert_eq!(t.https_get("/metrics").await.0, 401);
    let wrong = t
        .https(
            "GET",
            "/metrics",
            &[("Authorization", "Bearer nope")],
            None,
            None,
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(t.metrics().await.contains("meet_rooms"));
    // The token is kept in the data directory, readable by its owner only.
    let path = t.data_dir.0.join("metrics-token");
    let token = std::fs::read_to_string(&path).expect("the token file");
    assert_eq!(token.trim(), t.server.metrics_token);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the token file is readable by others: {mode:o}"
    );

    // A server in test mode serves the hooks.
    let test_mode = common::start("headers-test-mode", |c| c.test_hooks = true).await;
    assert_eq!(test_mode.https_get("/testhooks.js").await.0, 200);
}

/// A frame that breaks the WebSocket protocol is named as such (`bad_message`, close 1002),
/// not reported as too large (1009).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_protocol_violation_is_reported_as_one() {
    use tokio::io::AsyncWriteExt;
    let _serial = serial().await;
    let t = common::start("ws-protocol", |_| {}).await;
    let mut raw = t.raw().await;
    // A client frame must be masked; this one has a reserved opcode and no mask.
    let stream = raw.ws.get_mut();
    let tokio_tungstenite::MaybeTlsStream::Rustls(tls) = stream else {
        panic!("expected TLS");
    };
    tls.write_all(&[0x83, 0x01, 0x00]).await.expect("write");
    tls.flush().await.expect("flush");
    let mut saw_error = false;
    loop {
        match raw.next().await {
            Received::Message(ServerMessage::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::BadMessage);
                saw_error = true;
            }
            Received::Closed(code) => {
                assert!(saw_error, "closed without saying why");
                assert!(code.is_none_or(|c| c == 1002), "close code {code:?}");
                break;
            }
            Received::Message(other) => panic!("unexpected {other:?}"),
        }
    }
}

/// A media worker that fails takes only its own participants with it: they are told why (and
/// a real client reconnects, landing on another worker), the others in the same room keep
/// hearing each other, `/healthz` says the server is degraded and a metric counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_media_worker_takes_only_its_participants() {
    let _serial = serial().await;
    let t = common::start("worker-fails", |c| c.media_workers = Some(2)).await;
    // Placed on the worker with the fewest participants: alice 0, bob 1, carol 0.
    let alice = t.bot("r", "alice", 440.0, 1).await;
    let bob = t.bot("r", "bob", 660.0, 2).await;
    let carol = t.bot("r", "carol", 880.0, 3).await;
    let (a, b, c) = (
        alice.participant_id(),
        bob.participant_id(),
        carol.participant_id(),
    );
    eventually(MEDIA_TIMEOUT, "everyone hears everyone", || {
        [
            (&alice, b),
            (&alice, c),
            (&bob, a),
            (&carol, a),
            (&carol, b),
        ]
        .iter()
        .all(|(bot, sender)| bot_audio_frames(&bot.snapshot(), *sender) > 25)
    })
    .await;
    assert_eq!(t.https_get("/healthz").await.0, 200);

    assert!(t.server.sfu.fail_worker(1, "a fault drill"));
    eventually(MEDIA_TIMEOUT, "bob is told his media failed", || {
        bob.snapshot()
            .errors
            .iter()
            .any(|(code, _)| *code == ErrorCode::MediaUnavailable)
    })
    .await;
    let before = (
        bot_audio_frames(&alice.snapshot(), c),
        bot_audio_frames(&carol.snapshot(), a),
    );
    eventually(MEDIA_TIMEOUT, "alice and carol go on", || {
        bot_audio_frames(&alice.snapshot(), c) > before.0 + 25
            && bot_audio_frames(&carol.snapshot(), a) > before.1 + 25
    })
    .await;
    assert!(alice.snapshot().errors.is_empty() && carol.snapshot().errors.is_empty());
    let (status, body) = t.https_get("/healthz").await;
    assert_eq!(status, 503);
    assert!(body.contains("1 of 2 media workers stopped"), "{body}");
    let metrics = t.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meet_media_worker_failures_total") && l.ends_with(" 1")),
        "{metrics}"
    );
}
