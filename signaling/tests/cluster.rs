//! Nodes in a cluster over a real `nats-server` (Debian's, installed by .ci/deps) started by
//! the test on loopback: membership by lease, the cluster secret as the proof of membership,
//! and links that work on every node.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{MEDIA_TIMEOUT, bot_receives, eventually};
use loadtest::bot::{Bot, tls_config_trusting_pem};
use protocol::{ErrorCode, Role, ServerMessage};
use signaling::cluster::{
    ClusterConfig, ClusterSecret, LEASE, NODES_BUCKET, ROOMS_BUCKET, envelope, room_key,
};
use signaling::store::Admission;

/// A `nats-server -js` on a free loopback port, killed on drop.
struct Nats {
    child: Child,
    url: String,
    _dir: common::tempdir::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_binary() -> String {
    if let Ok(path) = std::env::var("MEET_TEST_NATS_SERVER") {
        return path;
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "nats-server is not installed: `apt-get install nats-server` (.ci/deps does), or set \
         MEET_TEST_NATS_SERVER to its path"
    );
}

/// `nats-server -js` on loopback `port`, storing in `dir`.
fn spawn_nats(port: &str, dir: &std::path::Path) -> Child {
    Command::new(nats_binary())
        .args(["-a", "127.0.0.1", "-p", port, "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts")
}

/// A key-value bucket of the cluster, as any NATS client (without the secret) sees it.
async fn bucket(nats: &Nats, name: &str) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(&nats.url).await.expect("connects");
    async_nats::jetstream::new(client)
        .get_key_value(name)
        .await
        .expect("the bucket exists")
}

async fn start_nats() -> Nats {
    let dir = common::tempdir::TempDir::new("nats");
    // A port the kernel just handed out and took back: free unless another process takes it
    // in the next milliseconds.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = spawn_nats(&port.to_string(), &dir.0);
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Nats {
        child,
        url,
        _dir: dir,
    }
}

fn secret(byte: u8) -> ClusterSecret {
    ClusterSecret::from_bytes(&[byte; 32]).expect("a long enough secret")
}

/// A node of the cluster at `nats`, with `secret`, storing in `database` when given (the
/// nodes of one cluster share their storage).
async fn node(
    nats: &Nats,
    id: &str,
    secret: ClusterSecret,
    database: Option<String>,
) -> common::TestServer {
    node_with(nats, id, secret, database, false).await
}

async fn node_with(
    nats: &Nats,
    id: &str,
    secret: ClusterSecret,
    database: Option<String>,
    open_rooms: bool,
) -> common::TestServer {
    let cluster = ClusterConfig {
        url: nats.url.clone(),
        secret,
        node_id: Some(id.into()),
        public_url: None,
        links_addr: None,
    };
    common::start(id, move |c| {
        c.open_rooms = open_rooms;
        c.cluster = Some(cluster);
        // These tests check where media goes, not how much fits. On a loaded machine (three
        // copies of this file at once on two cores) the delay-based estimator reads the
        // processes' queueing as congestion, and a bot receiving two videos and two voices
        // rightly has the video of whoever is not the speaker paused (seen: 0 of its packets
        // forwarded, all dropped as `other_layer`), which says nothing about the cluster.
        c.bandwidth_estimation = false;
        if database.is_some() {
            c.database_url = database;
        }
    })
    .await
}

fn node_ids(server: &common::TestServer) -> Vec<String> {
    let cluster = server.server.cluster.as_ref().expect("in a cluster");
    cluster.nodes().into_iter().map(|n| n.id).collect()
}

fn rejected(server: &common::TestServer, reason: &str) -> u64 {
    let cluster = server.server.cluster.as_ref().expect("in a cluster");
    cluster
        .snapshot()
        .rejected
        .iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, n)| *n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_with_the_secret_see_each_other_and_nothing_else_gets_in() {
    let nats = start_nats().await;
    let a = node(&nats, "node-a", secret(1), None).await;
    let b = node(&nats, "node-b", secret(1), None).await;
    eventually(Duration::from_secs(10), "a and b see each other", || {
        node_ids(&a) == ["node-a", "node-b"] && node_ids(&b) == ["node-b", "node-a"]
    })
    .await;
    // b read a's publication base before its SFU started, and took another.
    let bases: Vec<Option<u64>> = b
        .server
        .cluster
        .as_ref()
        .expect("in a cluster")
        .nodes()
        .iter()
        .map(|n| n.publications_from)
        .collect();
    assert!(bases.iter().all(|b| b.is_some_and(|b| b > 0)), "{bases:?}");
    assert_ne!(bases[0], bases[1]);

    // A node with another secret: its record is refused by both, and it refuses theirs.
    let stranger = node(&nats, "node-x", secret(2), None).await;
    eventually(Duration::from_secs(10), "the stranger is refused", || {
        rejected(&a, "bad_mac") > 0
            && rejected(&b, "bad_mac") > 0
            && rejected(&stranger, "bad_mac") > 0
    })
    .await;
    assert_eq!(node_ids(&a), ["node-a", "node-b"]);
    assert_eq!(node_ids(&stranger), ["node-x"]);

    // Anything else written into the bucket by a NATS client without the secret: a short
    // value, a long one that is not an envelope, a record copied onto another node's key.
    // The stranger stops first, so that each refusal below is counted once, for its cause.
    stranger.server.shutdown().await;
    let kv = bucket(&nats, NODES_BUCKET).await;
    let forged_before = rejected(&a, "bad_mac");
    kv.put("node-short", "not a record".into())
        .await
        .expect("put");
    kv.put("node-junk", "x".repeat(100).into())
        .await
        .expect("put");
    let a_record = kv.get("node-a").await.expect("get").expect("a's record");
    kv.put("node-copy", a_record).await.expect("put");
    eventually(
        Duration::from_secs(10),
        "junk and copies are refused",
        || {
            rejected(&a, "truncated") > 0
                && rejected(&a, "bad_magic") > 0
                && rejected(&a, "bad_mac") > forged_before
        },
    )
    .await;
    assert_eq!(node_ids(&a), ["node-a", "node-b"]);

    // An operator sees the cluster through the API.
    let admin = a.admin_token("operator").await;
    let (status, view) = a.api_json("GET", "/api/cluster", Some(&admin), None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["clustered"], true);
    assert_eq!(view["node"], "node-a");
    assert_eq!(view["connected"], true);
    let ids: Vec<&str> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["node-a", "node-b"]);
    assert!(
        view["rejected"]
            .as_array()
            .expect("rejected")
            .iter()
            .any(|r| r["reason"] == "bad_mac" && r["count"].as_u64() > Some(0)),
        "{view}"
    );
    let (status, _) = a.api_json("GET", "/api/cluster", None, None).await;
    assert_eq!(status, 401, "the cluster's view is for administrators");

    // The figures are in /metrics.
    let metrics = a.metrics().await;
    assert!(metrics.contains("meet_cluster_nodes 2"), "{metrics}");
    assert!(metrics.contains("meet_cluster_connected 1"), "{metrics}");
    assert!(
        metrics.contains("meet_cluster_rejected_total{reason=\"bad_mac\"}"),
        "{metrics}"
    );

    // A node that stops gives its lease up: the others drop it at once.
    b.server.shutdown().await;
    eventually(Duration::from_secs(5), "a drops b", || {
        node_ids(&a) == ["node-a"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_stops_renewing_its_lease_drops_out() {
    let nats = start_nats().await;
    let a = node(&nats, "node-a", secret(1), None).await;
    // A record sealed with the right secret, never renewed: a node killed with `kill -9`.
    let kv = bucket(&nats, NODES_BUCKET).await;
    let record = serde_json::json!({
        "id": "node-ghost",
        "url": "https://127.0.0.1:1",
        "http_addr": "127.0.0.1:1",
        "media_addr": "127.0.0.1:2",
        "started_at": "2026-12-07T00:00:00Z",
    })
    .to_string();
    let now_ms = signaling::store::unix_ms() as u64;
    let sealed = envelope::seal(
        &secret(1).message_key(),
        &format!("kv.{NODES_BUCKET}.node-ghost"),
        "node-ghost",
        now_ms,
        record.as_bytes(),
    );
    kv.put("node-ghost", sealed.into()).await.expect("put");
    eventually(Duration::from_secs(10), "a sees the ghost", || {
        node_ids(&a) == ["node-a", "node-ghost"]
    })
    .await;
    eventually(
        LEASE + Duration::from_secs(5),
        "the ghost's lease ends",
        || node_ids(&a) == ["node-a"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_issued_by_one_node_works_on_another_and_not_outside_the_cluster() {
    let nats = start_nats().await;
    let shared = common::tempdir::TempDir::new("cluster-db");
    let database = format!("sqlite://{}", shared.0.join("meet.db").display());
    let a = node(&nats, "node-a", secret(1), Some(database.clone())).await;
    let b = node(&nats, "node-b", secret(1), Some(database.clone())).await;
    let meeting = a
        .schedule(Admission::Scheduled, &[("Xã Tân Lập", Role::Participant)])
        .await;
    let token = &meeting.invited("Xã Tân Lập").token;

    eventually(Duration::from_secs(10), "a and b see each other", || {
        node_ids(&a).len() == 2 && node_ids(&b).len() == 2
    })
    .await;
    let mut on_b = b.raw().await;
    match on_b.join_token(token).await {
        ServerMessage::Joined { .. } => {}
        other => panic!("node b refused a link node a issued: {other:?}"),
    }
    // Then the nodes to try if b stops answering, b first.
    let urls = loop {
        match on_b.next().await {
            common::Received::Message(ServerMessage::Nodes { urls }) => break urls,
            common::Received::Message(_) => continue,
            common::Received::Closed(code) => panic!("closed ({code:?}) before `nodes`"),
        }
    };
    assert_eq!(
        urls,
        [
            format!("https://{}", b.server.http_addr),
            format!("https://{}", a.server.http_addr)
        ]
    );

    // A server outside the cluster, on the same storage, does not take it.
    let outside = common::start("outside", |c| {
        c.open_rooms = false;
        c.database_url = Some(database);
    })
    .await;
    let mut on_outside = outside.raw().await;
    match on_outside.join_token(token).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidToken),
        other => panic!("a server outside the cluster took the link: {other:?}"),
    }
}

/// A bot joining open room `room` through `via`, trusting every node's certificate (a redirect
/// takes it to another node).
async fn bot_via(
    via: &common::TestServer,
    nodes: &[&common::TestServer],
    room: &str,
    name: &str,
    tone_hz: f32,
    tag: u64,
) -> Bot {
    let mut options = via.bot_options(room, name, tone_hz, tag);
    let pems: Vec<u8> = nodes
        .iter()
        .flat_map(|n| n.server.cert_pem.clone())
        .collect();
    options.tls = tls_config_trusting_pem(&pems).expect("certificates");
    Bot::connect(options).await.expect("bot joins")
}

/// Nodes a and b (open rooms) that see each other, and a meeting "r" held by a: Alice joined
/// through a, Bob through b (sent to a, his media carried by b), each hearing and seeing the
/// other.
async fn two_nodes_and_a_meeting(
    nats: &Nats,
) -> (common::TestServer, common::TestServer, Bot, Bot) {
    let a = node_with(nats, "node-a", secret(1), None, true).await;
    let b = node_with(nats, "node-b", secret(1), None, true).await;
    eventually(Duration::from_secs(10), "a and b see each other", || {
        node_ids(&a).len() == 2 && node_ids(&b).len() == 2
    })
    .await;
    let alice = bot_via(&a, &[&a, &b], "r", "alice", 440.0, 1).await;
    let bob = bot_via(&b, &[&a, &b], "r", "bob", 660.0, 2).await;
    let (alice_id, bob_id) = (alice.participant_id(), bob.participant_id());
    common::media_flows(
        MEDIA_TIMEOUT,
        "alice and bob exchange media on a",
        &[(&alice, bob_id, 660.0, 2), (&bob, alice_id, 440.0, 1)],
    )
    .await;
    (a, b, alice, bob)
}

fn participants(server: &common::TestServer) -> usize {
    server.server.sfu.snapshot().participants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_anywhere_lands_on_the_node_holding_the_room_and_a_stopping_holder_hands_it_over() {
    let nats = start_nats().await;
    let (a, b, alice, bob) = two_nodes_and_a_meeting(&nats).await;
    // Bob's meeting is a's, his media stays on b, where he reached the cluster.
    eventually(
        Duration::from_secs(5),
        "a and b hold one transport each",
        || participants(&a) == 1 && participants(&b) == 1,
    )
    .await;

    // Another room asked of b first is held by b.
    let carol = bot_via(&b, &[&a, &b], "s", "carol", 550.0, 3).await;
    eventually(Duration::from_secs(5), "b holds carol's transport", || {
        participants(&b) == 2
    })
    .await;
    drop(carol);

    // a stops: its room record goes with it, and the room's next join anywhere holds it there.
    a.server.shutdown().await;
    drop((alice, bob));
    let dave = bot_via(&b, &[&b], "r", "dave", 440.0, 4).await;
    let erin = bot_via(&b, &[&b], "r", "erin", 660.0, 5).await;
    let (dave_id, erin_id) = (dave.participant_id(), erin.participant_id());
    eventually(MEDIA_TIMEOUT, "dave and erin exchange media on b", || {
        bot_receives(&dave, erin_id, 660.0, 5) && bot_receives(&erin, dave_id, 440.0, 4)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_whose_holder_died_is_taken_over_and_a_forged_record_is_ignored() {
    let nats = start_nats().await;
    let a = node_with(&nats, "node-a", secret(1), None, true).await;
    let rooms = bucket(&nats, ROOMS_BUCKET).await;
    let record = |room: &str, node: &str, secret: &ClusterSecret| {
        let key = room_key(&protocol::RoomId(room.into()));
        let body = serde_json::json!({"room": room, "node": node}).to_string();
        let sealed = envelope::seal(
            &secret.message_key(),
            &format!("kv.{ROOMS_BUCKET}.{key}"),
            node,
            signaling::store::unix_ms() as u64,
            body.as_bytes(),
        );
        (key, sealed)
    };
    // A node killed with `kill -9` leaves its record behind, naming a node that is no member.
    let (key, sealed) = record("dead", "node-ghost", &secret(1));
    rooms.put(&key, sealed.into()).await.expect("put");
    // A record written without the secret, naming a node that does not exist either.
    let (key, sealed) = record("forged", "node-evil", &secret(9));
    rooms.put(&key, sealed.into()).await.expect("put");

    let first = bot_via(&a, &[&a], "dead", "first", 440.0, 1).await;
    let second = bot_via(&a, &[&a], "forged", "second", 660.0, 2).await;
    eventually(Duration::from_secs(5), "both rooms are held here", || {
        participants(&a) == 2
    })
    .await;
    assert!(rejected(&a, "bad_mac") > 0, "the forged record is counted");
    drop((first, second));
}

/// A `meet-server` process in the cluster at `nats`, on free loopback ports; killed on drop.
struct NodeProcess {
    child: Child,
    http_addr: String,
    dir: common::tempdir::TempDir,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    fn start(nats: &Nats, id: &str, secret_file: &std::path::Path, database: &str) -> Self {
        let dir = common::tempdir::TempDir::new(id);
        let mut command = Command::new(env!("CARGO_BIN_EXE_meet-server"));
        command
            .arg("--data-dir")
            .arg(&dir.0)
            .args(["--http-addr", "127.0.0.1:0", "--media-addr", "127.0.0.1:0"])
            .args([
                "--cluster",
                &nats.url,
                "--node-id",
                id,
                "--database-url",
                database,
            ])
            .arg("--cluster-secret-file")
            .arg(secret_file)
            .args(["--media-workers", "1"]);
        let (child, http_addr) = common::spawn_server(command);
        Self {
            child,
            http_addr,
            dir,
        }
    }

    fn cert(&self) -> Vec<u8> {
        std::fs::read(self.dir.0.join("tls/cert.pem")).expect("the certificate")
    }

    fn ws_url(&self) -> String {
        format!("wss://{}/ws", self.http_addr)
    }
}

/// A bot joining with `token`, asking `via` and trusting every node.
async fn process_bot(
    via: &NodeProcess,
    certs: &[u8],
    token: &str,
    publishes: bool,
    tag: u64,
) -> Result<Bot, loadtest::bot::BotError> {
    let tls = tls_config_trusting_pem(certs).expect("certificates");
    let mut options = loadtest::bot::BotOptions::new(via.ws_url(), "", "", tls);
    options.token = Some(token.into());
    options.endpoint.publish_audio = publishes;
    options.endpoint.publish_video = publishes;
    options.endpoint.tone_hz = 440.0;
    options.endpoint.video_tag = tag;
    options.endpoint.keyframe_interval = Some(Duration::from_secs(2));
    Bot::connect(options).await
}

/// Retries a join, as a client whose node died does, until it gets in.
async fn rejoin(via: &NodeProcess, certs: &[u8], token: &str, publishes: bool, tag: u64) -> Bot {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match process_bot(via, certs, token, publishes, tag).await {
            Ok(bot) => return bot,
            Err(err) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "could not rejoin: {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_server_processes_hold_one_meeting_and_survive_kill_9_of_a_carrier_and_of_its_holder()
{
    let nats = start_nats().await;
    let shared = common::tempdir::TempDir::new("cluster-procs");
    let secret_file = shared.0.join("cluster.secret");
    std::fs::write(&secret_file, "0123456789abcdef0123456789abcdef\n").expect("secret");
    let database = format!("sqlite://{}", shared.0.join("meet.db").display());
    // One after another: the first creates the shared database.
    let a = NodeProcess::start(&nats, "node-a", &secret_file, &database);
    let b = NodeProcess::start(&nats, "node-b", &secret_file, &database);
    let c = NodeProcess::start(&nats, "node-c", &secret_file, &database);
    let certs: Vec<u8> = [a.cert(), b.cert(), c.cert()].concat();
    // The meeting, in the shared database, with links signed by the cluster's key.
    let store = signaling::store::Store::open(&database)
        .await
        .expect("the database");
    let secret = ClusterSecret::from_bytes(b"0123456789abcdef0123456789abcdef").expect("secret");
    let tokens = signaling::auth::JoinTokens::from_seed(&secret.join_token_seed()).expect("key");
    let meeting = common::schedule_on(
        &store,
        &tokens,
        Admission::Scheduled,
        &[
            ("presenter", Role::Presenter),
            ("presenter-2", Role::Presenter),
            ("viewer-b", Role::Viewer),
            ("viewer-c", Role::Viewer),
        ],
    )
    .await;
    let token = |name: &str| meeting.invited(name).token.clone();

    // The presenter opens the meeting on a; viewers ask b and c, the host asks c: a holds the
    // meeting, b and c carry the media of those who reached them.
    let presenter = process_bot(&a, &certs, &token("presenter"), true, 7)
        .await
        .expect("the presenter joins");
    let viewer_b = process_bot(&b, &certs, &token("viewer-b"), false, 0)
        .await
        .expect("a viewer joins through b");
    let viewer_c = process_bot(&c, &certs, &token("viewer-c"), false, 0)
        .await
        .expect("a viewer joins through c");
    let host = process_bot(&c, &certs, &token("Host"), false, 0)
        .await
        .expect("the host joins through c");
    let presenter_id = presenter.participant_id();
    common::media_flows(
        MEDIA_TIMEOUT,
        "both viewers receive the presenter",
        &[
            (&viewer_b, presenter_id, 440.0, 7),
            (&viewer_c, presenter_id, 440.0, 7),
        ],
    )
    .await;

    // c, which carries the media of a viewer and of the host, dies. Once its lease ends the
    // holder tells them their media is gone; they rejoin through b and receive again.
    let mut c = c;
    c.child.kill().expect("kill -9");
    let killed = std::time::Instant::now();
    eventually(
        Duration::from_secs(15),
        "c's viewer is told its media is gone",
        || {
            viewer_c
                .snapshot()
                .errors
                .iter()
                .any(|(code, _)| *code == ErrorCode::MediaUnavailable)
        },
    )
    .await;
    drop((viewer_c, host));
    let viewer_c = rejoin(&b, &certs, &token("viewer-c"), false, 0).await;
    let host = rejoin(&b, &certs, &token("Host"), false, 0).await;
    common::media_flows(
        MEDIA_TIMEOUT,
        "c's viewer, back through b, receives the presenter again",
        &[(&viewer_c, presenter_id, 440.0, 7)],
    )
    .await;
    println!(
        "after kill -9 of a node carrying media, its viewer received media again through \
         another node {:.1} s later (lease {LEASE:?})",
        killed.elapsed().as_secs_f64()
    );

    // The host mutes the presenter's microphone, then removes the presenter.
    host.send(protocol::ClientMessage::MuteParticipant {
        participant_id: presenter_id,
        kind: protocol::MediaKind::Audio,
    })
    .expect("sent");
    eventually(Duration::from_secs(10), "the viewers see the mute", || {
        [&viewer_b, &viewer_c].iter().all(|v| {
            v.snapshot()
                .roster
                .mute_changes
                .iter()
                .any(|m| m.participant_id == presenter_id && m.muted)
        })
    })
    .await;
    host.send(protocol::ClientMessage::RemoveParticipant {
        participant_id: presenter_id,
    })
    .expect("sent");
    eventually(
        Duration::from_secs(10),
        "the viewers see the removal",
        || {
            [&viewer_b, &viewer_c].iter().all(|v| {
                v.snapshot()
                    .roster
                    .left
                    .iter()
                    .any(|(p, r)| *p == presenter_id && *r == protocol::LeaveReason::Removed)
            })
        },
    )
    .await;
    drop((presenter, host));

    // The room's holder dies. Its clients rejoin through the nodes left: the first join after
    // its lease ends takes the room over, the other is sent there.
    let mut a = a;
    a.child.kill().expect("kill -9");
    let killed = std::time::Instant::now();
    drop((viewer_b, viewer_c));
    let presenter = rejoin(&b, &certs, &token("presenter-2"), true, 8).await;
    let viewer = rejoin(&b, &certs, &token("viewer-b"), false, 0).await;
    let presenter_id = presenter.participant_id();
    common::media_flows(
        MEDIA_TIMEOUT,
        "the viewer receives the presenter again",
        &[(&viewer, presenter_id, 440.0, 8)],
    )
    .await;
    println!(
        "after kill -9 of the room's holder, its clients were back in the meeting and receiving \
         media {:.1} s later (lease {LEASE:?})",
        killed.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meetings_go_on_while_nats_is_away_and_the_cluster_comes_back_with_it() {
    let mut nats = start_nats().await;
    let (a, b, alice, bob) = two_nodes_and_a_meeting(&nats).await;
    let alice_id = alice.participant_id();

    // NATS goes away for 10 s (its memory-held records with it): the meeting keeps its media.
    let port = nats.url.rsplit(':').next().expect("a port").to_string();
    let _ = nats.child.kill();
    let _ = nats.child.wait();
    let a_cluster = a.server.cluster.clone().expect("in a cluster");
    eventually(Duration::from_secs(10), "a notices", || {
        !a_cluster.connected()
    })
    .await;
    let frames_before = common::bot_audio_frames(&bob.snapshot(), alice_id);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        common::bot_audio_frames(&bob.snapshot(), alice_id) > frames_before + 200,
        "bob kept hearing alice while NATS was away"
    );

    // NATS returns on the same address, empty: the nodes reconnect, their leases and a's room
    // record are written again, and a join through b is sent to a once more.
    nats.child = spawn_nats(&port, &nats._dir.0);
    let restarted = std::time::Instant::now();
    eventually(
        Duration::from_secs(20),
        "the nodes see each other again",
        || a_cluster.connected() && node_ids(&a).len() == 2 && node_ids(&b).len() == 2,
    )
    .await;
    let rooms = bucket(&nats, ROOMS_BUCKET).await;
    let key = room_key(&protocol::RoomId("r".into()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rooms.get(&key).await.ok().flatten().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "a did not write its room's record again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "NATS restarted empty: the room's record was written again {:.1} s later",
        restarted.elapsed().as_secs_f64()
    );
    let carol = bot_via(&b, &[&a, &b], "r", "carol", 550.0, 3).await;
    let carol_id = carol.participant_id();
    // Carol's meeting is a's, her media b's (as Bob's).
    eventually(
        Duration::from_secs(5),
        "b carries carol's and bob's media",
        || participants(&b) == 2,
    )
    .await;
    common::media_flows_on(
        &[&a, &b],
        MEDIA_TIMEOUT,
        "carol, sent to a, hears alice and alice hears her",
        &[(&carol, alice_id, 440.0, 1), (&alice, carol_id, 550.0, 3)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_starting_or_dying_ends_only_its_own_attendance() {
    use protocol::{ParticipantId, RoomId};
    use signaling::store::Store;
    let nats = start_nats().await;
    let shared = common::tempdir::TempDir::new("cluster-attendance");
    let database = format!("sqlite://{}", shared.0.join("meet.db").display());
    let a = node(&nats, "node-a", secret(1), Some(database.clone())).await;
    // Rows held open by a (alive), by a node that died, and by a node that restarts.
    let room = RoomId("national".into());
    for (node_id, participant) in [("node-a", 1), ("node-dead", 2), ("node-c", 3)] {
        let store = Store::open_as_node(&database, Some(node_id))
            .await
            .expect("store");
        store
            .record_join(
                &room,
                ParticipantId(participant),
                None,
                node_id,
                None,
                Role::Participant,
                signaling::store::unix_ms(),
            )
            .await
            .expect("recorded");
        store.close().await;
    }
    let left = |rows: &[signaling::store::AttendanceRow], name: &str| {
        rows.iter()
            .find(|r| r.display_name == name)
            .map(|r| r.leave_reason.clone())
            .expect("a row")
    };

    // node-c starts again: it ends its own row (its meeting ended with it), no one else's.
    let c = node(&nats, "node-c", secret(1), Some(database.clone())).await;
    let rows = c.server.store.attendance(&room).await.expect("rows");
    assert_eq!(left(&rows, "node-c").as_deref(), Some("server_restart"));
    assert_eq!(left(&rows, "node-a"), None, "a's meeting goes on");
    assert_eq!(left(&rows, "node-dead"), None);

    // The sweep ends the dead node's row (no lease), not the live node's.
    let cluster = a.server.cluster.clone().expect("in a cluster");
    cluster.close_lost_attendance(&a.server.store).await;
    let rows = a.server.store.attendance(&room).await.expect("rows");
    assert_eq!(left(&rows, "node-dead").as_deref(), Some("server_lost"));
    assert_eq!(left(&rows, "node-a"), None);
}

/// The value of a `/metrics` sample line that starts with `name` (labels included), 0 when
/// absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_room_spans_three_nodes_and_each_packet_crosses_once_per_node() {
    let nats = start_nats().await;
    let a = node_with(&nats, "node-a", secret(1), None, true).await;
    let b = node_with(&nats, "node-b", secret(1), None, true).await;
    let c = node_with(&nats, "node-c", secret(1), None, true).await;
    eventually(Duration::from_secs(10), "the nodes see each other", || {
        [&a, &b, &c].iter().all(|n| node_ids(n).len() == 3)
    })
    .await;
    let all = [&a, &b, &c];
    // Whoever reaches NATS sees the sealed media commands go by: it records b's, to publish
    // them again below.
    let observer = async_nats::connect(&nats.url).await.expect("connects");
    let mut seen = observer
        .subscribe("meet.media.node-b.commands")
        .await
        .expect("subscribes");
    observer.flush().await.expect("flushed");
    // The presenter reaches a, which holds the room. Sites reach b and c: sent to a for the
    // meeting, their media stays on the node they reached.
    let presenter = bot_via(&a, &all, "r", "presenter", 440.0, 1).await;
    let site_b = bot_via(&b, &all, "r", "site-b", 550.0, 2).await;
    let site_c = bot_via(&c, &all, "r", "site-c", 660.0, 3).await;
    let (p, sb, sc) = (
        presenter.participant_id(),
        site_b.participant_id(),
        site_c.participant_id(),
    );
    common::media_flows(
        MEDIA_TIMEOUT,
        "everyone hears and sees everyone across the three nodes",
        &[
            (&site_b, p, 440.0, 1),
            (&site_c, p, 440.0, 1),
            (&presenter, sb, 550.0, 2),
            (&presenter, sc, 660.0, 3),
            (&site_b, sc, 660.0, 3),
            (&site_c, sb, 550.0, 2),
        ],
    )
    .await;
    // One transport on each node: the media stayed where each reached the cluster.
    for (node, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        assert_eq!(participants(node), 1, "node {name} carries one participant");
    }

    // A second site on b: the presenter's packets still cross to b once, and b forwards
    // each to both of its sites.
    let site_b2 = bot_via(&b, &all, "r", "site-b2", 770.0, 4).await;
    common::media_flows(
        MEDIA_TIMEOUT,
        "the second site on b hears and sees the presenter",
        &[(&site_b2, p, 440.0, 1)],
    )
    .await;
    let (a0, b0) = (a.metrics().await, b.metrics().await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a1, b1) = (a.metrics().await, b.metrics().await);
    let delta = |before: &str, after: &str, name: &str| sample(after, name) - sample(before, name);
    let crossed_in = delta(&b0, &b1, "meet_links_packets_total{direction=\"in\"}");
    let forwarded = delta(&b0, &b1, "meet_rtp_packets_total{direction=\"forwarded\"}");
    let sent_out = delta(&a0, &a1, "meet_links_packets_total{direction=\"out\"}");
    println!(
        "over 3 s: a sent {sent_out} packets over its links, b took in {crossed_in} and \
         forwarded {forwarded} to its two sites"
    );
    assert!(crossed_in > 100.0, "media crossed to b: {crossed_in}");
    // What crossed (the presenter's and site c's) went to two sites on b, plus what the two
    // sites on b send each other.
    assert!(
        forwarded >= 1.8 * crossed_in,
        "b forwarded {forwarded} packets for {crossed_in} that crossed"
    );
    assert_eq!(
        sample(&b1, "meet_links_refused_total{reason=\"forged\"}"),
        0.0,
        "nothing refused between members"
    );

    // A datagram to b's link port from an address that is not a member's is refused and
    // counted; b's meeting goes on.
    let links_port = b
        .server
        .cluster
        .as_ref()
        .and_then(|c| c.nodes().into_iter().next())
        .and_then(|me| me.links_addr)
        .expect("b has a link port");
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
    for _ in 0..5 {
        stranger
            .send_to(b"MR\x01\x00not a relay at all", &links_port)
            .expect("sent");
    }
    eventually(
        Duration::from_secs(5),
        "b counts the stranger's datagrams",
        || b.server.sfu.snapshot().links.refused_unknown_source >= 5,
    )
    .await;
    // So are media commands on NATS from anyone without the secret, and a forged command to
    // remove b's site: b's site keeps its media.
    let client = async_nats::connect(&nats.url).await.expect("connects");
    let forged = envelope::seal(
        &secret(9).message_key(),
        "meet.media.node-b.commands",
        "node-a",
        signaling::store::unix_ms() as u64,
        serde_json::json!({"kind": "sfu", "command": {"command": "remove_participant", "participant": sb.0}})
            .to_string()
            .as_bytes(),
    );
    for payload in [forged, b"not even an envelope".to_vec()] {
        client
            .publish("meet.media.node-b.commands", payload.into())
            .await
            .expect("published");
    }
    client.flush().await.expect("flushed");
    eventually(
        Duration::from_secs(5),
        "b counts the forged commands",
        || rejected(&b, "media_forged") >= 2,
    )
    .await;
    // The genuine commands a's hub sent b, published again: each is refused as a replay
    // (or, sealed more than a minute ago, as stale).
    let mut recorded = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(
        Duration::from_millis(300),
        futures_util::StreamExt::next(&mut seen),
    )
    .await
    {
        recorded.push(message.payload);
    }
    assert!(!recorded.is_empty(), "a's hub sent b commands");
    let (replayed, stale) = (rejected(&b, "media_replayed"), rejected(&b, "media_forged"));
    for payload in &recorded {
        client
            .publish("meet.media.node-b.commands", payload.clone())
            .await
            .expect("published");
    }
    client.flush().await.expect("flushed");
    eventually(
        Duration::from_secs(5),
        "b refuses every command published again",
        || {
            rejected(&b, "media_replayed") - replayed + rejected(&b, "media_forged") - stale
                >= recorded.len() as u64
        },
    )
    .await;
    assert!(
        rejected(&b, "media_replayed") > replayed,
        "refused as replays"
    );
    let frames = common::bot_audio_frames(&site_b.snapshot(), p);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(common::bot_audio_frames(&site_b.snapshot(), p) > frames + 25);

    // Node c, which carries site c's media, stops: the origin tells site c to reconnect (its
    // transport is gone), the others see it leave, and it comes back with its media on a.
    c.server.shutdown().await;
    eventually(
        Duration::from_secs(10),
        "site c is told its media is gone",
        || {
            site_c
                .snapshot()
                .errors
                .iter()
                .any(|(code, _)| *code == ErrorCode::MediaUnavailable)
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the others see site c go", || {
        [&presenter, &site_b]
            .iter()
            .all(|s| s.snapshot().roster.left.iter().any(|(id, _)| *id == sc))
    })
    .await;
    drop(site_c);
    let site_c = bot_via(&a, &[&a, &b], "r", "site-c", 660.0, 3).await;
    let sc = site_c.participant_id();
    common::media_flows_on(
        &[&a, &b],
        MEDIA_TIMEOUT,
        "site c, back through a, meets the others again",
        &[
            (&site_c, p, 440.0, 1),
            (&site_b, sc, 660.0, 3),
            (&presenter, sc, 660.0, 3),
        ],
    )
    .await;
    assert_eq!(
        participants(&a),
        2,
        "a carries the presenter's and site c's media"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_origin_records_the_media_another_node_carries() {
    use common::recordings::{manifest, recording_dir, recording_id, wait_status};
    let nats = start_nats().await;
    let shared = common::tempdir::TempDir::new("cluster-recording");
    let database = format!("sqlite://{}", shared.0.join("meet.db").display());
    let a = node(&nats, "node-a", secret(1), Some(database.clone())).await;
    let b = node(&nats, "node-b", secret(1), Some(database)).await;
    eventually(Duration::from_secs(10), "a and b see each other", || {
        node_ids(&a).len() == 2 && node_ids(&b).len() == 2
    })
    .await;
    let meeting = a
        .schedule(Admission::Scheduled, &[("Xã A", Role::Participant)])
        .await;
    let pems: Vec<u8> = [&a, &b]
        .iter()
        .flat_map(|n| n.server.cert_pem.clone())
        .collect();
    let join = |via: &common::TestServer, name: &str, hz: f32, tag: u64| {
        let mut options = via.bot_options("", "", hz, tag);
        options.token = Some(meeting.invited(name).token.clone());
        options.tls = tls_config_trusting_pem(&pems).expect("certificates");
        Bot::connect(options)
    };
    // The host opens the meeting on a; the commune reaches b, which carries its media.
    let host = join(&a, "Host", 440.0, 1).await.expect("the host joins");
    let site = join(&b, "Xã A", 660.0, 2).await.expect("the commune joins");
    common::media_flows(
        MEDIA_TIMEOUT,
        "the host and the commune hear and see each other",
        &[
            (&host, site.participant_id(), 660.0, 2),
            (&site, host.participant_id(), 440.0, 1),
        ],
    )
    .await;
    assert_eq!(participants(&b), 1, "b carries the commune's media");

    host.send(protocol::ClientMessage::StartRecording {})
        .expect("sent");
    eventually(
        MEDIA_TIMEOUT,
        "both are told the meeting is recorded",
        || {
            [&host, &site]
                .iter()
                .all(|bot| bot.snapshot().roster.recording)
        },
    )
    .await;
    let id = recording_id(&a.server.store, &meeting.id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    host.send(protocol::ClientMessage::StopRecording {})
        .expect("sent");
    wait_status(
        &a.server.store,
        &id,
        signaling::store::RecordingStatus::Completed,
    )
    .await;
    // The origin wrote the recording, the commune's tracks in it: relayed from b.
    let manifest = manifest(&recording_dir(&a.data_dir.0, &id));
    let tracks = manifest["tracks"].as_array().expect("tracks");
    let of_site = tracks
        .iter()
        .filter(|t| t["participant_id"].as_u64() == Some(site.participant_id().0))
        .count();
    assert_eq!(of_site, 2, "the commune's audio and video: {manifest}");
    assert_eq!(tracks.len(), 4, "{manifest}");
}
