//! The cluster: several `meet-server` nodes coordinated over NATS (`--cluster nats://…`).
//!
//! What exists so far is membership and shared identity:
//! - **Membership.** Each node holds a lease in the JetStream key-value bucket
//!   [`NODES_BUCKET`]: its record (id, addresses, start time) under its id, written every
//!   [`HEARTBEAT`]. A node is a member while its record is younger than [`LEASE`] by the
//!   receiver's clock: a node that dies (`kill -9`) drops out within the lease, one that stops
//!   deletes its record at once. NATS 2.9 (Debian 12's) has no per-message TTL, and the
//!   bucket's `max_age` expires old records without telling watchers, so expiry is judged
//!   here, from when each record was last seen.
//! - **Authentication.** Every record travels in an [`envelope`] sealed with a key derived from
//!   the cluster secret. A record from a node with another secret, or forged, replayed or
//!   malformed, is dropped and counted (`meet_cluster_rejected_total{reason}`); NATS access
//!   alone does not make a node a member.
//! - **One join-token key.** Every node derives the join-token signing key from the secret
//!   ([`secret::ClusterSecret::join_token_seed`]), so an invitation link works on every node
//!   (the invitations themselves live in the shared database).
//!
//! Rooms spanning nodes (roster, moderation and media relayed between nodes) build on this.

/// The sealed envelope, in the leaf crate so that the fuzz targets reach it.
pub use formats::cluster_envelope as envelope;
pub mod media;
mod rooms;
pub mod secret;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use aws_lc_rs::hmac;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

pub use envelope::{EnvelopeError, valid_node_id};
pub use rooms::{Placement, ROOMS_BUCKET, room_key};
pub use secret::{ClusterSecret, SecretError};

/// The key-value bucket of node leases.
pub const NODES_BUCKET: &str = "meet_nodes";
/// A node is a member while its record is younger than this. Its rooms move to another node
/// once it is not: short, so that the participants of a node that died find their meeting
/// again within seconds.
pub const LEASE: Duration = Duration::from_secs(4);
/// How often a node renews its record: four renewals per lease, so that a lost write or a
/// busy second does not drop a live node.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// The largest node record accepted (a record is a few hundred bytes).
const MAX_RECORD_BYTES: usize = 4096;

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The NATS server(s): `nats://host:4222`, several separated by commas.
    pub url: String,
    pub secret: ClusterSecret,
    /// This node's id ([`valid_node_id`]); `None`: a random one per start.
    pub node_id: Option<String>,
    /// Where clients reach this node (`https://host:port`), sent to those redirected here;
    /// `None`: `https://` and the HTTPS listener's address.
    pub public_url: Option<String>,
    /// The media link port (UDP), where other nodes' gateways relay a room's media to this
    /// node; `None`: the media address with the next port (any free port when the media
    /// port is 0).
    pub links_addr: Option<SocketAddr>,
}

/// What a node tells the others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub id: String,
    /// Where clients reach it: `https://host:port`.
    pub url: String,
    /// Where its HTTPS and WebSocket listener is.
    pub http_addr: String,
    /// Its media address (the one UDP port clients reach).
    pub media_addr: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its media link port, where its gateway takes relays from the other nodes (see
    /// `sfu::links`), and the random value it drew at start, which the links' keys depend on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links_epoch: Option<String>,
    /// The base its SFU numbers its publications from (see [`publication_base`]): the ids
    /// keep their value on every node that mirrors them, so no two members may share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publications_from: Option<u64>,
}

/// The most node records a starting node reads for the members' publication bases.
const MAX_RECORDS_READ: usize = 10_000;

/// How many publication ids each node's range holds: 2^32, so that a range is the high bits
/// of an id below 2^53, which a browser's numbers hold exactly.
const PUBLICATION_RANGE_BITS: u32 = 32;

/// The ranges a base can be drawn from: 1 to 2^21 - 1 (0 is a lone server's).
const PUBLICATION_RANGES: u64 = 1 << (53 - PUBLICATION_RANGE_BITS);

/// A base for this node's publication ids that no member in `taken` uses, drawn at random
/// (`draw`) so that nodes starting at once are unlikely to meet; after many draws that all
/// met one (a cluster of thousands), the last. Drawn at random alone, two of 60 nodes would
/// share a base once in about 600 starts of the cluster, and a subscriber could then be given
/// the wrong participant's media.
pub fn publication_base(taken: &[u64], mut draw: impl FnMut() -> u64) -> u64 {
    let mut base = 0;
    for _ in 0..64 {
        base = (1 + draw() % (PUBLICATION_RANGES - 1)) << PUBLICATION_RANGE_BITS;
        if !taken.contains(&base) {
            break;
        }
    }
    base
}

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the node id {0:?} is not 1 to 64 letters, digits, '-' or '_'")]
    BadNodeId(String),
    #[error("connecting to NATS at {0}: {1}")]
    Connect(String, String),
    #[error(
        "setting up the cluster's key-value bucket on NATS (is JetStream on? nats-server -js): {0}"
    )]
    JetStream(String),
}

/// Records refused, by reason, since the start.
#[derive(Debug, Default)]
struct Rejected {
    by_reason: Mutex<HashMap<&'static str, u64>>,
}

impl Rejected {
    fn count(&self, reason: &'static str) {
        if let Ok(mut map) = self.by_reason.lock() {
            *map.entry(reason).or_default() += 1;
        }
    }
}

struct Member {
    info: NodeInfo,
    seen: Instant,
}

struct Inner {
    me: NodeInfo,
    key: hmac::Key,
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    rooms: kv::Store,
    /// The rooms this node holds, with the revision of their record.
    claimed: Mutex<HashMap<protocol::RoomId, u64>>,
    members: Mutex<HashMap<String, Member>>,
    rejected: Rejected,
    /// Heartbeats that failed (NATS unreachable, JetStream unavailable).
    heartbeat_failures: AtomicU64,
    /// Since when this node's renewals succeed, every one (`None` while they fail).
    renewing_since: Mutex<Option<Instant>>,
    /// Told when renewals work again after failing: the watch starts over, as its consumer
    /// may have died with the bucket without noticing.
    rewatch: tokio::sync::Notify,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A node's membership of its cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.me.id)
            .finish_non_exhaustive()
    }
}

/// What `/metrics` shows of the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub nodes: usize,
    pub connected: bool,
    pub rejected: Vec<(&'static str, u64)>,
    pub heartbeat_failures: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The subject a record's envelope is bound to: its bucket and key.
fn record_subject(node_id: &str) -> String {
    format!("kv.{NODES_BUCKET}.{node_id}")
}

/// A node id for a node started without `--node-id`: new at each start.
pub fn random_node_id() -> String {
    let bytes: [u8; 6] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("node-{hex}")
}

impl Cluster {
    /// Connects to NATS and reads who the members are, before this node joins them (see
    /// [`Connecting::join`]): its SFU's publication ids must avoid theirs.
    pub async fn connect(config: &ClusterConfig) -> Result<Connecting, ClusterError> {
        let id = config.node_id.clone().unwrap_or_else(random_node_id);
        if !valid_node_id(&id) {
            return Err(ClusterError::BadNodeId(id));
        }
        let client = async_nats::ConnectOptions::new()
            .name(format!("meet-server {id}"))
            // Keep trying for ever: a node outlives a NATS restart, its meetings going on.
            .max_reconnects(None)
            // Back within a second of NATS, not the client's default of up to several: leases
            // are seconds long.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 200).min(1000))
            })
            .connect(config.url.as_str())
            .await
            .map_err(|e| ClusterError::Connect(config.url.clone(), e.to_string()))?;
        let js = jetstream::new(client.clone());
        let (kv, rooms) = buckets(&js).await.map_err(ClusterError::JetStream)?;
        let key = config.secret.message_key();
        let mut taken = Vec::new();
        if let Ok(keys) = kv.keys().await {
            // Bounded: anyone who reaches NATS can write keys into the bucket, and a start
            // must not read them for ever.
            let mut keys = keys.take(MAX_RECORDS_READ);
            while let Some(Ok(node)) = keys.next().await {
                let Ok(Some(value)) = kv.get(&node).await else {
                    continue;
                };
                // Records of nodes gone but not yet expired count too: a base is never short.
                if let Ok(info) = open_record(&key, &node, &value, None) {
                    taken.extend(info.publications_from);
                }
            }
        }
        Ok(Connecting {
            id,
            key,
            client,
            js,
            kv,
            rooms,
            taken,
            url: config.url.clone(),
        })
    }
}

/// A node connected to its cluster's NATS, not yet a member.
pub struct Connecting {
    id: String,
    key: hmac::Key,
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    rooms: kv::Store,
    /// The publication bases the members' records name.
    taken: Vec<u64>,
    url: String,
}

impl std::fmt::Debug for Connecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connecting")
            .field("id", &self.id)
            .field("taken", &self.taken)
            .finish_non_exhaustive()
    }
}

impl Connecting {
    /// A base for this node's publication ids that no member uses.
    pub fn publication_base(&self) -> u64 {
        publication_base(&self.taken, rand::random)
    }

    /// Joins the members: this node's record, its heartbeat and the watch of the others.
    pub async fn join(
        self,
        public_url: Option<String>,
        http_addr: SocketAddr,
        media_addr: SocketAddr,
        links_addr: Option<SocketAddr>,
        publications_from: u64,
    ) -> Result<Cluster, ClusterError> {
        let Connecting {
            id,
            key,
            client,
            js,
            kv,
            rooms,
            url,
            ..
        } = self;
        let me = NodeInfo {
            id: id.clone(),
            url: public_url.unwrap_or_else(|| format!("https://{http_addr}")),
            http_addr: http_addr.to_string(),
            media_addr: media_addr.to_string(),
            started_at: crate::rfc3339::format(now_ms() as i64).unwrap_or_default(),
            links_addr: links_addr.map(|a| a.to_string()),
            links_epoch: links_addr.map(|_| crate::store::hex(&rand::random::<[u8; 16]>())),
            publications_from: Some(publications_from),
        };
        let cluster = Cluster {
            inner: Arc::new(Inner {
                me,
                key,
                client,
                js,
                kv,
                rooms,
                claimed: Mutex::new(HashMap::new()),
                members: Mutex::new(HashMap::new()),
                rejected: Rejected::default(),
                heartbeat_failures: AtomicU64::new(0),
                // Steady from the start: nothing a node knows at its start is stale.
                renewing_since: Mutex::new(Some(
                    Instant::now()
                        .checked_sub(LEASE + HEARTBEAT)
                        .unwrap_or_else(Instant::now),
                )),
                rewatch: tokio::sync::Notify::new(),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        cluster
            .renew()
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        let heartbeat = tokio::spawn(heartbeat(Arc::downgrade(&cluster.inner)));
        let watcher = tokio::spawn(watch(Arc::downgrade(&cluster.inner)));
        if let Ok(mut tasks) = cluster.inner.tasks.lock() {
            tasks.push(heartbeat);
            tasks.push(watcher);
        }
        tracing::info!(node = %id, %url, "joined the cluster");
        Ok(cluster)
    }
}

impl Cluster {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.me.id
    }

    /// The nodes whose lease is current, this one first, the others by id.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut others: Vec<NodeInfo> = self
            .inner
            .members
            .lock()
            .map(|members| {
                members
                    .values()
                    .filter(|m| m.seen.elapsed() < LEASE && m.info.id != self.inner.me.id)
                    .map(|m| m.info.clone())
                    .collect()
            })
            .unwrap_or_default();
        others.sort_by(|a, b| a.id.cmp(&b.id));
        let mut nodes = vec![self.inner.me.clone()];
        nodes.extend(others);
        nodes
    }

    /// How many rooms this node holds (their records name it).
    pub fn rooms_held(&self) -> usize {
        self.inner.claimed.lock().map_or(0, |claimed| claimed.len())
    }

    /// How long this node's lease renewals have succeeded without a failure (`None` while
    /// they fail): after a NATS outage, the members' view is whole again once every live node
    /// renewed, a heartbeat after this node could.
    pub fn renewing_for(&self) -> Option<Duration> {
        self.inner
            .renewing_since
            .lock()
            .ok()
            .and_then(|since| since.map(|at| at.elapsed()))
    }

    /// Whether the connection to NATS is up.
    pub fn connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    pub fn snapshot(&self) -> ClusterSnapshot {
        let mut rejected: Vec<(&'static str, u64)> = self
            .inner
            .rejected
            .by_reason
            .lock()
            .map(|map| map.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        rejected.sort();
        ClusterSnapshot {
            nodes: self.nodes().len(),
            connected: self.connected(),
            rejected,
            heartbeat_failures: self.inner.heartbeat_failures.load(Ordering::Relaxed),
        }
    }

    /// Writes this node's record again (its lease starts over).
    async fn renew(&self) -> Result<(), kv::PutError> {
        self.inner.renew().await
    }

    /// Gives up the lease at once (the others drop this node without waiting for it to
    /// expire) and stops the cluster's tasks.
    pub async fn leave(&self) {
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .map(|mut tasks| tasks.drain(..).collect())
            .unwrap_or_default();
        for task in tasks {
            task.abort();
        }
        // The rooms first: once this node's record is gone, others may take them over anyway,
        // but a deleted record lets the next join anywhere take the room at once.
        let claimed: Vec<(protocol::RoomId, u64)> = self
            .inner
            .claimed
            .lock()
            .map(|mut c| c.drain().collect())
            .unwrap_or_default();
        for (room, revision) in claimed {
            let _ = self
                .inner
                .rooms
                .delete_expect_revision(room_key(&room), Some(revision))
                .await;
        }
        if let Err(err) = self.inner.kv.delete(&self.inner.me.id).await {
            tracing::warn!(%err, "could not give up this node's cluster lease");
        }
        let _ = self.inner.client.flush().await;
    }
}

impl Inner {
    async fn renew(&self) -> Result<(), kv::PutError> {
        let body = serde_json::to_vec(&self.me).unwrap_or_default();
        let sealed = envelope::seal(
            &self.key,
            &record_subject(&self.me.id),
            &self.me.id,
            now_ms(),
            &body,
        );
        self.kv.put(&self.me.id, sealed.into()).await.map(|_| ())
    }

    /// Takes in one entry of the bucket: a member's record, or its departure.
    fn receive(&self, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Delete | kv::Operation::Purge => {
                if let Ok(mut members) = self.members.lock() {
                    members.remove(&entry.key);
                }
            }
            kv::Operation::Put => match self.open_record(&entry.key, &entry.value) {
                Ok(info) => {
                    if let Ok(mut members) = self.members.lock() {
                        members.insert(
                            info.id.clone(),
                            Member {
                                info,
                                seen: Instant::now(),
                            },
                        );
                    }
                }
                Err(reason) => {
                    self.rejected.count(reason);
                    tracing::debug!(key = %entry.key, reason, "refused a node record");
                }
            },
        }
    }

    fn open_record(&self, key: &str, value: &[u8]) -> Result<NodeInfo, &'static str> {
        open_record(&self.key, key, value, Some(now_ms()))
    }
}

/// A record that verifies (sealed within 60 s of `now_ms`, when given) and names the key it
/// is stored under.
fn open_record(
    mac_key: &hmac::Key,
    key: &str,
    value: &[u8],
    now_ms: Option<u64>,
) -> Result<NodeInfo, &'static str> {
    if !valid_node_id(key) {
        return Err("bad_node");
    }
    if value.len() > MAX_RECORD_BYTES {
        return Err("oversize");
    }
    let opened = match now_ms {
        Some(now) => envelope::open(mac_key, &record_subject(key), value, now),
        None => envelope::open_record(mac_key, &record_subject(key), value),
    }
    .map_err(EnvelopeError::reason)?;
    if opened.node != key {
        return Err("bad_node");
    }
    let info: NodeInfo = serde_json::from_slice(opened.body).map_err(|_| "malformed")?;
    if info.id != key {
        return Err("bad_node");
    }
    Ok(info)
}

/// The two buckets, created if they do not exist (a NATS server that restarted has lost its
/// memory-held ones).
async fn buckets(js: &jetstream::Context) -> Result<(kv::Store, kv::Store), String> {
    let nodes = key_value_bucket(js, NODES_BUCKET, LEASE * 2).await?;
    // A room's record lives as long as the room (its holder deletes it), or until another node
    // takes over from a holder that died: no age limit.
    let rooms = key_value_bucket(js, ROOMS_BUCKET, Duration::ZERO).await?;
    Ok((nodes, rooms))
}

/// The key-value bucket `name`, created if it does not exist, whose entries expire after
/// `max_age` (zero: never), kept in memory (leases need no disk).
///
/// async-nats creates buckets after asking for the account's details, whose answer from a
/// 2.9 server (Debian 12's) it cannot parse; so the bucket's stream is created here, as a
/// key-value bucket's is (one message per key, roll-ups allowed, direct reads), and then
/// opened as a bucket.
async fn key_value_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    let stream = jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some("meet-server cluster state".into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        // Within the window the server drops a message whose id it saw; no message has one,
        // but the window may not be longer than the messages live.
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age
        },
        max_message_size: MAX_RECORD_BYTES as i32,
        storage: jetstream::stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    js.get_or_create_stream(stream)
        .await
        .map_err(|e| e.to_string())?;
    js.get_key_value(name).await.map_err(|e| e.to_string())
}

/// Renews this node's lease every [`HEARTBEAT`] while the cluster lives.
async fn heartbeat(inner: std::sync::Weak<Inner>) {
    let mut interval = tokio::time::interval(HEARTBEAT);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut failing = false;
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let renewed = inner.renew().await;
        if let Ok(mut since) = inner.renewing_since.lock() {
            match (&renewed, *since) {
                (Ok(()), None) => *since = Some(Instant::now()),
                (Err(_), _) => *since = None,
                _ => {}
            }
        }
        match renewed {
            Ok(()) if failing => {
                failing = false;
                inner.rewatch.notify_one();
                tracing::info!("the cluster lease is renewed again");
            }
            Ok(()) => {}
            Err(err) => {
                inner.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                // NATS may be back without the buckets (they live in its memory): create them
                // again, so that the next renewal, the watch and the room records find them.
                if inner.client.connection_state() == async_nats::connection::State::Connected
                    && let Err(err) = buckets(&inner.js).await
                {
                    tracing::debug!(%err, "could not create the cluster's buckets again");
                }
                if !failing {
                    failing = true;
                    tracing::warn!(%err, "could not renew this node's cluster lease; the meetings here go on");
                }
            }
        }
    }
}

/// Follows the bucket: every member's record as it is written. The watch starts again after
/// NATS comes back.
async fn watch(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let kv = strong.kv.clone();
        drop(strong);
        match kv.watch_all().await {
            Ok(mut entries) => loop {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                let next = tokio::select! {
                    next = entries.next() => next,
                    () = strong.rewatch.notified() => break,
                };
                match next {
                    Some(Ok(entry)) => strong.receive(&entry),
                    Some(Err(err)) => {
                        tracing::debug!(%err, "the cluster watch failed");
                        break;
                    }
                    None => break,
                }
            },
            Err(err) => tracing::debug!(%err, "could not watch the cluster's nodes"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_base_avoids_the_members_bases_and_keeps_ids_below_2_to_the_53() {
        let base = |draw: u64| (1 + draw % (PUBLICATION_RANGES - 1)) << PUBLICATION_RANGE_BITS;
        // The first draws meet members' bases; the next one does not.
        let taken = [base(5), base(9)];
        let mut draws = [5u64, 9, 5, 12].into_iter();
        assert_eq!(
            publication_base(&taken, || draws.next().unwrap_or(0)),
            base(12)
        );
        // Any draw gives a base whose whole range is exact in a browser's numbers, and never
        // a lone server's 0.
        for draw in [
            0,
            1,
            u64::MAX,
            PUBLICATION_RANGES - 2,
            PUBLICATION_RANGES - 1,
        ] {
            let from = publication_base(&[], || draw);
            assert!(from > 0);
            assert!(
                from + (1 << PUBLICATION_RANGE_BITS) <= 1 << 53,
                "{draw}: {from}"
            );
        }
    }
}
