//! Which node holds which room.
//!
//! A room is held by one node at a time: its record in the key-value bucket [`ROOMS_BUCKET`]
//! names the holder. The first node where someone joins creates the record (an atomic create:
//! of two nodes racing, one wins and the other redirects); a join that reaches another node is
//! redirected to the holder ([`Placement::Elsewhere`]). The record lasts while the room has
//! someone in it: the holder deletes it when the room empties. When the holder dies its lease
//! ends ([`super::LEASE`]), and the next node where someone asks for the room replaces the
//! record, checked against the revision it read, so that only one node takes over.
//!
//! Every record is sealed like a node's ([`super::envelope`]), bound to its key: a record
//! nobody with the secret wrote is refused, counted and overwritten.
//!
//! While NATS cannot be reached a join is served here (the meeting goes on rather than
//! waiting), and each node re-checks its records every few seconds ([`Cluster::sync_rooms`]),
//! so that they are written again once NATS is back.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use protocol::RoomId;
use serde::{Deserialize, Serialize};

use super::{Cluster, Inner, NodeInfo, envelope, now_ms};

/// The key-value bucket of room records.
pub const ROOMS_BUCKET: &str = "meet_rooms";

/// How often a node checks its room records against its rooms.
const ROOM_SYNC: Duration = Duration::from_secs(3);

/// Every how many room syncs a node looks for attendance that dead nodes left open (30 s).
const ATTENDANCE_SWEEP: u32 = 10;

/// How long placing a room may take before the join is served here (NATS away).
const PLACE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a room is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On this node.
    Here,
    /// On another node, which clients are sent to.
    Elsewhere(NodeInfo),
}

#[derive(Debug, Serialize, Deserialize)]
struct RoomRecord {
    room: String,
    node: String,
}

/// A room's key in the bucket: room ids are free-form (open rooms' names), keys are not, so a
/// digest of the id (128 bits, hex).
pub fn room_key(room: &RoomId) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, room.0.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("r-{hex}")
}

fn record_subject(key: &str) -> String {
    format!("kv.{ROOMS_BUCKET}.{key}")
}

/// What the last record of a room says.
enum Holder {
    None,
    Me,
    Node(String),
}

impl Inner {
    fn seal_room(&self, room: &RoomId, key: &str) -> Vec<u8> {
        let body = serde_json::to_vec(&RoomRecord {
            room: room.0.clone(),
            node: self.me.id.clone(),
        })
        .unwrap_or_default();
        envelope::seal(
            &self.key,
            &record_subject(key),
            &self.me.id,
            now_ms(),
            &body,
        )
    }

    /// Who a room's record names. A record that does not verify names nobody (and is
    /// counted).
    fn holder(&self, entry: &kv::Entry) -> Holder {
        if entry.operation != kv::Operation::Put {
            return Holder::None;
        }
        let subject = record_subject(&entry.key);
        let opened = match envelope::open_record(&self.key, &subject, &entry.value) {
            Ok(opened) => opened,
            Err(err) => {
                self.rejected.count(err.reason());
                return Holder::None;
            }
        };
        let Ok(record) = serde_json::from_slice::<RoomRecord>(opened.body) else {
            self.rejected.count("malformed");
            return Holder::None;
        };
        if record.node != opened.node {
            self.rejected.count("bad_node");
            return Holder::None;
        }
        if record.node == self.me.id {
            Holder::Me
        } else {
            Holder::Node(record.node)
        }
    }
}

impl Cluster {
    /// Where `room` is held, taking it here if nobody (alive) holds it.
    pub async fn place(&self, room: &RoomId) -> Placement {
        // A room held here stays here while this node lives: no round trip for its joins.
        if self
            .inner
            .claimed
            .lock()
            .is_ok_and(|claimed| claimed.contains_key(room))
        {
            return Placement::Here;
        }
        match tokio::time::timeout(PLACE_TIMEOUT, self.try_place(room)).await {
            Ok(Ok(placement)) => placement,
            Ok(Err(err)) => {
                self.inner.rejected.count("place_failed");
                tracing::warn!(%room, %err, "could not place a room through NATS; holding it here");
                Placement::Here
            }
            Err(_) => {
                self.inner.rejected.count("place_failed");
                tracing::warn!(%room, "placing a room through NATS took too long; holding it here");
                Placement::Here
            }
        }
    }

    async fn try_place(&self, room: &RoomId) -> Result<Placement, String> {
        let inner = &self.inner;
        let key = room_key(room);
        // Two tries: a race lost on the first (another node created or replaced the record
        // between the read and the write) is decided by the second read.
        for _ in 0..2 {
            let entry = inner.rooms.entry(&key).await.map_err(|e| e.to_string())?;
            let revision = entry.as_ref().map(|e| e.revision);
            let holder = entry.as_ref().map_or(Holder::None, |e| inner.holder(e));
            match holder {
                Holder::Me => {
                    self.claimed(room, revision.unwrap_or_default());
                    return Ok(Placement::Here);
                }
                Holder::Node(node) => {
                    if let Some(info) = self.live_node(&node).await? {
                        return Ok(Placement::Elsewhere(info));
                    }
                    tracing::info!(%room, %node, "the room's holder is gone; taking the room over");
                }
                Holder::None => {}
            }
            let value = inner.seal_room(room, &key);
            let written = match revision {
                None => inner
                    .rooms
                    .create(&key, value.into())
                    .await
                    .map_err(|e| e.to_string()),
                Some(revision) => inner
                    .rooms
                    .update(&key, value.into(), revision)
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Ok(revision) = written {
                self.claimed(room, revision);
                return Ok(Placement::Here);
            }
        }
        Err("another node kept changing the room's record".into())
    }

    /// The node `id` if its lease is current. What this node's watch has seen decides at
    /// once; a node it has not heard of (this node just started, or the other did) is read
    /// from the bucket, so that a room is never taken from a live holder for want of news.
    pub(super) async fn live_node(&self, id: &str) -> Result<Option<NodeInfo>, String> {
        if let Some(info) = self.nodes().into_iter().find(|n| n.id == id) {
            return Ok(Some(info));
        }
        let Some(entry) = self.inner.kv.entry(id).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let now = now_ms();
        let Ok(opened) = envelope::open(
            &self.inner.key,
            &super::record_subject(id),
            &entry.value,
            now,
        ) else {
            return Ok(None);
        };
        // Written within the lease, by the writer's clock (the nodes' clocks are kept by NTP).
        let age = now.saturating_sub(opened.sent_at_ms);
        if age > super::LEASE.as_millis() as u64 {
            return Ok(None);
        }
        let info = serde_json::from_slice::<NodeInfo>(opened.body)
            .ok()
            .filter(|info| info.id == id);
        // What was read counts as seen, as if the watch had brought it.
        if let Some(info) = &info
            && let Ok(mut members) = self.inner.members.lock()
        {
            let seen = Instant::now()
                .checked_sub(std::time::Duration::from_millis(age))
                .unwrap_or_else(Instant::now);
            members
                .entry(info.id.clone())
                .or_insert_with(|| super::Member {
                    info: info.clone(),
                    seen,
                });
        }
        Ok(info)
    }

    /// Ends the attendance rows held open by nodes whose lease has ended (they died: their
    /// participants left with them). A node that cannot tell (NATS away) closes nothing.
    pub async fn close_lost_attendance(&self, store: &crate::store::Store) {
        let Ok(nodes) = store.nodes_with_open_attendance().await else {
            return;
        };
        for node in nodes {
            if node == self.inner.me.id {
                continue;
            }
            if let Ok(None) = self.live_node(&node).await {
                match store.close_attendance_of_node(&node).await {
                    Ok(rows) if rows > 0 => {
                        tracing::info!(%node, rows, "closed the attendance a lost node left open");
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(%node, %err, "could not close a lost node's attendance")
                    }
                }
            }
        }
    }

    fn claimed(&self, room: &RoomId, revision: u64) {
        if let Ok(mut claimed) = self.inner.claimed.lock() {
            claimed.insert(room.clone(), revision);
        }
    }

    /// Keeps this node's room records in line with its hub's rooms, every few seconds, for
    /// as long as the cluster lives.
    ///
    /// It also ends the attendance that nodes which died left open (see
    /// [`Cluster::close_lost_attendance`]), every [`ATTENDANCE_SWEEP`] syncs.
    pub fn start_room_sync(&self, hub: crate::hub::HubHandle, store: crate::store::Store) {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(ROOM_SYNC);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks: u32 = 0;
            loop {
                interval.tick().await;
                let rooms = hub.rooms().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let cluster = Cluster { inner };
                cluster.sync_rooms(&rooms).await;
                // The first sweep waits for a lease's time, so that this node has heard of the
                // live ones before it judges anyone gone.
                ticks = ticks.wrapping_add(1);
                if ticks % ATTENDANCE_SWEEP == 2 {
                    cluster.close_lost_attendance(&store).await;
                }
            }
        });
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            tasks.push(task);
        }
    }

    /// Brings the room records in line with the rooms held here (`local`): a room that
    /// emptied gives its record up; a record lost (NATS restarted) or never written (NATS was
    /// down at the join) is written again.
    pub async fn sync_rooms(&self, local: &[RoomId]) {
        let claimed: Vec<(RoomId, u64)> = self
            .inner
            .claimed
            .lock()
            .map(|c| c.iter().map(|(r, v)| (r.clone(), *v)).collect())
            .unwrap_or_default();
        for (room, revision) in &claimed {
            if local.contains(room) {
                continue;
            }
            let key = room_key(room);
            if let Err(err) = self
                .inner
                .rooms
                .delete_expect_revision(&key, Some(*revision))
                .await
            {
                // Someone else's record now, or NATS is away: either way not ours to delete.
                tracing::debug!(%room, %err, "a room's record was not deleted");
            }
            if let Ok(mut map) = self.inner.claimed.lock() {
                map.remove(room);
            }
        }
        for room in local {
            let key = room_key(room);
            let known = claimed.iter().find(|(r, _)| r == room).map(|(_, v)| *v);
            let current = match self.inner.rooms.entry(&key).await {
                Ok(entry) => entry,
                Err(_) => return,
            };
            let ours = current.as_ref().is_some_and(|e| {
                matches!(self.inner.holder(e), Holder::Me) && Some(e.revision) == known
            });
            if ours {
                continue;
            }
            match current.as_ref().map(|e| self.inner.holder(e)) {
                Some(Holder::Node(node)) if matches!(self.live_node(&node).await, Ok(Some(_))) => {
                    // Both nodes served the room while NATS was away. The meeting is split
                    // until one side's participants reconnect; counted for the operator.
                    self.inner.rejected.count("split_room");
                    tracing::warn!(%room, %node, "a room held here is also held by another node");
                }
                _ => {
                    // Not `place`, which answers from what this node holds without asking.
                    match tokio::time::timeout(PLACE_TIMEOUT, self.try_place(room)).await {
                        Ok(Ok(Placement::Here)) => {
                            tracing::info!(%room, "the room's record is written again");
                        }
                        Ok(Ok(Placement::Elsewhere(node))) => {
                            self.inner.rejected.count("split_room");
                            tracing::warn!(%room, node = %node.id, "a room held here is also held by another node");
                        }
                        Ok(Err(_)) | Err(_) => {}
                    }
                }
            }
        }
    }
}
