//! Nodes in a cluster over a real `nats-server` (Debian's, installed by .ci/deps) started by
//! the test on loopback: membership by lease, the cluster secret as the proof of membership,
//! and links that work on every node.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::eventually;
use protocol::{ErrorCode, Role, ServerMessage};
use signaling::cluster::{ClusterConfig, ClusterSecret, LEASE, NODES_BUCKET, envelope};
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

async fn start_nats() -> Nats {
    let dir = common::tempdir::TempDir::new("nats");
    // A port the kernel just handed out and took back: free unless another process takes it
    // in the next milliseconds.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(nats_binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
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
    let cluster = ClusterConfig {
        url: nats.url.clone(),
        secret,
        node_id: Some(id.into()),
    };
    common::start(id, move |c| {
        c.open_rooms = false;
        c.cluster = Some(cluster);
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
    let client = async_nats::connect(&nats.url).await.expect("connects");
    let kv = async_nats::jetstream::new(client)
        .get_key_value(NODES_BUCKET)
        .await
        .expect("the bucket exists");
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
    let client = async_nats::connect(&nats.url).await.expect("connects");
    let kv = async_nats::jetstream::new(client)
        .get_key_value(NODES_BUCKET)
        .await
        .expect("the bucket exists");
    let record = serde_json::json!({
        "id": "node-ghost",
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

    let mut on_b = b.raw().await;
    match on_b.join_token(token).await {
        ServerMessage::Joined { .. } => {}
        other => panic!("node b refused a link node a issued: {other:?}"),
    }

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
