//! One room across nodes: where each participant's media is carried, and how the room's hub
//! drives the SFUs of other nodes.
//!
//! A room has one hub, on the node holding it (its *origin*): every participant's WebSocket
//! is there, as on one server. Its media need not be: a participant sent here by another
//! node's redirect asks, in its join, for that node to carry its media (the node near it,
//! see `ClientMessage::Join`'s `media`). The hub then drives that node's SFU as it drives its
//! own, with the same [`SfuCommand`]s, sent over NATS to `meet.media.<node>.commands`; the
//! carrier's SFU events about that participant come back on `meet.media.<origin>.events`.
//! Both travel sealed with the cluster secret (see [`super::envelope`]); a message from a
//! node that has no business sending it is dropped and counted.
//!
//! The media crosses between the origin and each carrier over their *link* (see
//! `sfu::links`): each node's gateway mirrors the room's publications from the other, once
//! per layer whatever the number of viewers. Rooms span links as a star: each carrier links
//! to the origin only, and the origin relays between carriers.
//!
//! Failures: a carrier that leaves the cluster takes its participants' transports with it;
//! the hub tells them to reconnect (as when a media worker fails) and they come back with
//! their media here. An origin that leaves takes every WebSocket with it; its carriers end
//! the transports they carried for it, and the clients rejoin through the room's new holder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use protocol::{ParticipantId, RoomId};
use serde::{Deserialize, Serialize};
use sfu::links::LinkPeer;
use sfu::relay::{FIRST_LINK, MAX_WORKERS, WorkerId};
use sfu::{SfuCommand, SfuEvent, SfuHandle};
use tokio::sync::mpsc;

use super::{Cluster, ClusterSecret, NodeInfo, envelope, now_ms};

/// Where a node's SFU takes commands from other nodes' hubs.
fn commands_subject(node: &str) -> String {
    format!("meet.media.{node}.commands")
}

/// Where a hub's node takes the events of the participants other nodes carry for it.
fn events_subject(node: &str) -> String {
    format!("meet.media.{node}.events")
}

/// The largest media message accepted (an SDP offer with many m-lines is the largest).
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The worker named in the `SfuEvent::WorkerFailed` that tells the hub a node carrying some
/// of its participants' media left the cluster (their transports went with it).
pub const CARRIER_GONE: u16 = u16::MAX;

/// How often the links are brought in line with the cluster's members.
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(1);

/// What a hub tells a carrier.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ToCarrier {
    /// A command for the carrier's SFU, about a participant it carries for the sender.
    Sfu { command: SfuCommand },
    /// The room spans (or no longer spans) the link between the sender and the carrier.
    Link { room: RoomId, on: bool },
}

/// What a carrier tells a hub.
#[derive(Debug, Serialize, Deserialize)]
struct ToOrigin {
    event: SfuEvent,
}

/// A media message as sealed: its sender's place in the order it sends in. The envelope's
/// 60 s window alone would let whoever reaches NATS publish a sealed message again within it
/// (a participant removed or an event replayed); each receiver takes from a sender only what
/// comes after what it last took, and a sender that restarts starts a later session.
#[derive(Debug, Serialize, Deserialize)]
struct Sequenced<T> {
    /// When the sender started (Unix ms, made unique by a random low part, see `Remote`).
    session: u64,
    /// Counts the sender's media messages within its session, from 1.
    seq: u64,
    message: T,
}

/// Where a receiver's order of media messages stands, by sender: the last (session, seq)
/// taken.
type Taken = HashMap<String, (u64, u64)>;

/// How the hub reaches the SFUs: this node's, and in a cluster the others'. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Media {
    local: SfuHandle,
    remote: Option<Arc<Remote>>,
}

struct Remote {
    cluster: Cluster,
    secret: ClusterSecret,
    local: SfuHandle,
    /// Sealed messages to publish, in order (a participant's commands must arrive in order).
    outgoing: mpsc::UnboundedSender<(String, Vec<u8>)>,
    /// This node's session and the last sequence number sealed, held while a message is
    /// sealed and queued so that sequence numbers go out in order.
    sequence: Mutex<(u64, u64)>,
    /// The last (session, seq) taken from each sender on this node's commands, and on its
    /// events.
    taken_commands: Mutex<Taken>,
    taken_events: Mutex<Taken>,
    /// The hub's SFU events: this node's and those carriers send back.
    events: mpsc::UnboundedSender<SfuEvent>,
    state: Mutex<State>,
    /// When this node last could not tell who the members are (NATS away): until a lease
    /// has passed since, a node missing from the view is not taken for gone.
    unsure_since: Mutex<std::time::Instant>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Hub side: the participants another node carries, with that node and their room.
    placed: HashMap<ParticipantId, (String, RoomId)>,
    /// Hub side: per room, how many of its participants each other node carries.
    spans: HashMap<RoomId, HashMap<String, usize>>,
    /// Carrier side: the participants carried here for another node's hub, by that node.
    carried: HashMap<ParticipantId, String>,
    /// Carrier side: the rooms linked to their origin.
    carried_rooms: HashMap<RoomId, String>,
    /// The link by which this node's SFU names each other node, with its epoch.
    links: HashMap<String, (WorkerId, String)>,
    /// The peers last given to the SFU.
    peers: Vec<(WorkerId, String, String)>,
}

impl State {
    /// The link naming `node`, given one if it has none yet (`None` when all are taken).
    fn link_of(&mut self, node: &str, epoch: &str) -> Option<WorkerId> {
        if let Some((link, known)) = self.links.get_mut(node) {
            known.clear();
            known.push_str(epoch);
            return Some(*link);
        }
        let free = (FIRST_LINK..MAX_WORKERS).find(|l| !self.links.values().any(|(x, _)| x == l))?;
        self.links
            .insert(node.to_string(), (free, epoch.to_string()));
        Some(free)
    }

    /// The links `room` spans on this node: as its origin, one per node carrying any of its
    /// participants; as a carrier, the one to its origin. Both at once for a moment when the
    /// room moved here from an origin that died, until that one is known gone.
    fn room_links(&self, room: &RoomId) -> Vec<WorkerId> {
        let carriers = self
            .spans
            .get(room)
            .into_iter()
            .flat_map(|nodes| nodes.keys());
        let origin = self.carried_rooms.get(room).into_iter();
        let mut links: Vec<WorkerId> = carriers
            .chain(origin)
            .filter_map(|n| self.links.get(n).map(|(l, _)| *l))
            .collect();
        links.sort_unstable();
        links.dedup();
        links
    }
}

impl Media {
    /// This node's SFU alone (a single server).
    pub fn local(sfu: SfuHandle) -> Self {
        Self {
            local: sfu,
            remote: None,
        }
    }

    /// The hub's side of the SFUs, and the hub's event stream: `local_events` (this node's
    /// SFU), less what concerns participants carried here for other nodes, plus what carriers
    /// send back. In a cluster it also serves this node's SFU to the other nodes' hubs.
    pub async fn start(
        sfu: SfuHandle,
        local_events: mpsc::UnboundedReceiver<SfuEvent>,
        cluster: Option<(&Cluster, &ClusterSecret)>,
    ) -> (Self, mpsc::UnboundedReceiver<SfuEvent>) {
        let Some((cluster, secret)) = cluster else {
            return (Self::local(sfu), local_events);
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let remote = Arc::new(Remote {
            cluster: cluster.clone(),
            secret: secret.clone(),
            local: sfu.clone(),
            outgoing,
            // A restart's session is later than the last's (its start time in ms, times 1,024,
            // plus a random part, so that two starts in one millisecond differ too).
            sequence: Mutex::new((
                now_ms().saturating_mul(1024) + u64::from(rand::random::<u16>() % 1024),
                0,
            )),
            taken_commands: Mutex::new(Taken::new()),
            taken_events: Mutex::new(Taken::new()),
            events: events_tx,
            state: Mutex::new(State::default()),
            // Sure from the start: nothing is linked yet that an outage could have left stale.
            unsure_since: Mutex::new(
                std::time::Instant::now()
                    .checked_sub(super::LEASE + super::HEARTBEAT)
                    .unwrap_or_else(std::time::Instant::now),
            ),
        });
        let client = cluster.inner.client.clone();
        let me = cluster.node_id().to_string();
        let tasks = [
            tokio::spawn(publish(client.clone(), outgoing_rx)),
            tokio::spawn(route_local_events(Arc::downgrade(&remote), local_events)),
            tokio::spawn(serve_commands(
                Arc::downgrade(&remote),
                client.clone(),
                commands_subject(&me),
            )),
            tokio::spawn(take_events(
                Arc::downgrade(&remote),
                client,
                events_subject(&me),
            )),
            tokio::spawn(follow_members(Arc::downgrade(&remote))),
        ];
        if let Ok(mut held) = cluster.inner.tasks.lock() {
            held.extend(tasks);
        }
        (
            Self {
                local: sfu,
                remote: Some(remote),
            },
            events_rx,
        )
    }

    /// Creates a participant's transport: on the node `media` names when it is a live member
    /// other than this one (with a link port), here otherwise. False when the SFU that should
    /// carry it is not running.
    pub fn add_participant(
        &self,
        participant: ParticipantId,
        room: RoomId,
        media: Option<&str>,
    ) -> bool {
        let command = SfuCommand::AddParticipant {
            participant,
            room: room.clone(),
        };
        let Some(remote) = &self.remote else {
            return self.local.send(command);
        };
        let carrier = media.and_then(|node| remote.carrier(node));
        let Some(carrier) = carrier else {
            return self.local.send(command);
        };
        remote.refresh_peers();
        let newly_spanned = {
            let mut state = remote.lock();
            state
                .placed
                .insert(participant, (carrier.id.clone(), room.clone()));
            let count = state
                .spans
                .entry(room.clone())
                .or_default()
                .entry(carrier.id.clone())
                .or_default();
            *count += 1;
            *count == 1
        };
        if newly_spanned {
            remote.link_room(&room, &carrier.id, true);
        }
        remote.to_carrier(&carrier.id, &ToCarrier::Sfu { command });
        true
    }

    /// Sends a command to the SFU that carries its participant (this node's for room-wide
    /// commands: the origin records its rooms from its mirrors).
    pub fn send(&self, command: SfuCommand) -> bool {
        let Some(remote) = &self.remote else {
            return self.local.send(command);
        };
        let Some(participant) = command.participant() else {
            return self.local.send(command);
        };
        let removing = matches!(command, SfuCommand::RemoveParticipant { .. });
        let carrier = {
            let mut state = remote.lock();
            let carrier = if removing {
                state.placed.remove(&participant)
            } else {
                state.placed.get(&participant).cloned()
            };
            carrier.map(|(node, room)| {
                let mut unspanned = false;
                if removing
                    && let Some(nodes) = state.spans.get_mut(&room)
                    && let Some(count) = nodes.get_mut(&node)
                {
                    *count -= 1;
                    if *count == 0 {
                        nodes.remove(&node);
                        unspanned = true;
                    }
                    if nodes.is_empty() {
                        state.spans.remove(&room);
                    }
                }
                (node, room, unspanned)
            })
        };
        let Some((node, room, unspanned)) = carrier else {
            return self.local.send(command);
        };
        remote.to_carrier(&node, &ToCarrier::Sfu { command });
        if unspanned {
            remote.link_room(&room, &node, false);
        }
        true
    }
}

impl Remote {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn me(&self) -> &NodeInfo {
        &self.cluster.inner.me
    }

    /// The live member `node` when it can carry media for this node: another node, with a
    /// link port.
    fn carrier(&self, node: &str) -> Option<NodeInfo> {
        if node == self.me().id || self.me().links_addr.is_none() {
            return None;
        }
        self.cluster
            .nodes()
            .into_iter()
            .find(|n| n.id == node && n.links_addr.is_some() && n.links_epoch.is_some())
    }

    /// Whether the members' view can be trusted to say who left: NATS is up, and this node's
    /// lease renewals have worked for a lease and a heartbeat (after an outage the buckets
    /// may take seconds to exist again, and the other nodes renew when they do). While it
    /// cannot, meetings keep their links: media needs no NATS.
    fn sure_of_members(&self) -> bool {
        let mut since = self
            .unsure_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let steady = super::LEASE + super::HEARTBEAT;
        if !self.cluster.connected() || self.cluster.renewing_for().is_none_or(|d| d < steady) {
            *since = std::time::Instant::now();
            return false;
        }
        since.elapsed() >= steady
    }

    /// Gives the SFU the links to every live member with a link port, when they changed.
    /// Returns the nodes that are no longer members (their links are gone); none while the
    /// view cannot be trusted (see [`Remote::sure_of_members`]).
    fn refresh_peers(&self) -> Vec<String> {
        let me = self.me().clone();
        let Some(my_epoch) = me.links_epoch.clone() else {
            return Vec::new();
        };
        let sure = self.sure_of_members();
        let members = self.cluster.nodes();
        let mut state = self.lock();
        if !sure
            && state
                .links
                .keys()
                .any(|node| !members.iter().any(|m| &m.id == node))
        {
            return Vec::new();
        }
        let gone: Vec<String> = state
            .links
            .keys()
            .filter(|node| !members.iter().any(|m| &m.id == *node))
            .cloned()
            .collect();
        for node in &gone {
            state.links.remove(node);
        }
        let mut peers = Vec::new();
        let mut described = Vec::new();
        for member in members.iter().filter(|m| m.id != me.id) {
            let (Some(addr), Some(epoch)) = (
                member.links_addr.as_deref().and_then(|a| a.parse().ok()),
                member.links_epoch.as_deref(),
            ) else {
                continue;
            };
            let Some(link) = state.link_of(&member.id, epoch) else {
                continue;
            };
            described.push((link, member.id.clone(), epoch.to_string()));
            peers.push(LinkPeer {
                link,
                addr,
                send_key: self.secret.link_key(&me.id, &my_epoch, &member.id, epoch),
                receive_key: self.secret.link_key(&member.id, epoch, &me.id, &my_epoch),
            });
        }
        described.sort();
        if described != state.peers {
            state.peers = described;
            // Every room's links again: a room linked before its peer was known spans it now.
            let mut rooms: Vec<&RoomId> = state.spans.keys().collect();
            rooms.extend(state.carried_rooms.keys());
            rooms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            rooms.dedup();
            let rooms: Vec<(RoomId, Vec<WorkerId>)> = rooms
                .into_iter()
                .map(|room| (room.clone(), state.room_links(room)))
                .collect();
            self.local.set_link_peers(peers);
            for (room, links) in rooms {
                self.local.set_room_links(room, links);
            }
        }
        gone
    }

    /// The origin's side of a room spanning (or no longer spanning) its link to `node`: its
    /// own SFU's room links, and the carrier told.
    fn link_room(&self, room: &RoomId, node: &str, on: bool) {
        // Told the SFU under the lock, as every room-link change: the SFU sees them in the
        // order the state took them, whichever task made them.
        {
            let state = self.lock();
            self.local
                .set_room_links(room.clone(), state.room_links(room));
        }
        self.to_carrier(
            node,
            &ToCarrier::Link {
                room: room.clone(),
                on,
            },
        );
    }

    fn to_carrier(&self, node: &str, message: &ToCarrier) {
        self.seal_and_send(commands_subject(node), message);
    }

    fn seal_and_send(&self, subject: String, message: &impl Serialize) {
        let mut sequence = self
            .sequence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (session, seq) = (sequence.0, sequence.1 + 1);
        let Ok(body) = serde_json::to_vec(&Sequenced {
            session,
            seq,
            message,
        }) else {
            return;
        };
        sequence.1 = seq;
        let sealed = envelope::seal(
            &self.cluster.inner.key,
            &subject,
            &self.me().id,
            now_ms(),
            &body,
        );
        let _ = self.outgoing.send((subject, sealed));
    }

    /// Opens a sealed media message on `subject`: the sender's id and the body, or `None`
    /// (counted) when it is forged, stale, malformed, or not after what `taken` last took from
    /// its sender (a replay).
    fn open<T: for<'de> Deserialize<'de>>(
        &self,
        subject: &str,
        payload: &[u8],
        taken: &Mutex<Taken>,
    ) -> Option<(String, T)> {
        let rejected = &self.cluster.inner.rejected;
        if payload.len() > MAX_MESSAGE_BYTES {
            rejected.count("media_too_large");
            return None;
        }
        let opened = match envelope::open(&self.cluster.inner.key, subject, payload, now_ms()) {
            Ok(opened) => opened,
            Err(_) => {
                rejected.count("media_forged");
                return None;
            }
        };
        let Ok(body) = serde_json::from_slice::<Sequenced<T>>(opened.body) else {
            rejected.count("media_malformed");
            return None;
        };
        let mut taken = taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = (body.session, body.seq);
        match taken.get_mut(opened.node) {
            Some(last) if at <= *last => {
                rejected.count("media_replayed");
                return None;
            }
            Some(last) => *last = at,
            None => {
                taken.insert(opened.node.to_string(), at);
            }
        }
        Some((opened.node.to_string(), body.message))
    }

    /// Whether `node` is a live member other than this one: from the view, or else (a node
    /// that started a moment ago, whose record the watch has not brought yet) from its lease
    /// in the bucket.
    async fn is_member(&self, node: &str) -> bool {
        if node == self.me().id {
            return false;
        }
        self.cluster.nodes().iter().any(|n| n.id == node)
            || matches!(self.cluster.live_node(node).await, Ok(Some(_)))
    }

    /// Carrier side: a command from `origin`'s hub (a member: see [`Remote::is_member`]).
    fn apply(&self, origin: &str, message: ToCarrier) {
        let rejected = &self.cluster.inner.rejected;
        match message {
            ToCarrier::Link { room, on } => {
                self.refresh_peers();
                let mut state = self.lock();
                if on {
                    state.carried_rooms.insert(room.clone(), origin.to_string());
                } else if state.carried_rooms.get(&room).is_some_and(|o| o == origin) {
                    state.carried_rooms.remove(&room);
                } else {
                    return;
                }
                let links = state.room_links(&room);
                self.local.set_room_links(room, links);
            }
            ToCarrier::Sfu { command } => {
                let Some(participant) = command.participant() else {
                    // Room-wide commands are the origin's own.
                    rejected.count("media_not_allowed");
                    return;
                };
                {
                    let mut state = self.lock();
                    match &command {
                        SfuCommand::AddParticipant { room, .. } => {
                            // Only into a room the origin linked here, and not over a
                            // participant another node's hub drives.
                            if state.carried_rooms.get(room).map(String::as_str) != Some(origin)
                                || state.carried.get(&participant).is_some_and(|o| o != origin)
                            {
                                rejected.count("media_not_allowed");
                                return;
                            }
                            state.carried.insert(participant, origin.to_string());
                        }
                        _ if state.carried.get(&participant).map(String::as_str)
                            != Some(origin) =>
                        {
                            rejected.count("media_not_allowed");
                            return;
                        }
                        SfuCommand::RemoveParticipant { .. } => {
                            state.carried.remove(&participant);
                        }
                        _ => {}
                    }
                }
                self.local.send(command);
            }
        }
    }

    /// An event of this node's SFU: for the hub of the node carrying its participant's
    /// meeting, or this node's own.
    fn route(&self, event: SfuEvent) {
        let origin_of = |participant: &ParticipantId| self.lock().carried.get(participant).cloned();
        match event {
            SfuEvent::WorkerFailed {
                worker,
                participants,
            } => {
                let mut by_origin: HashMap<Option<String>, Vec<ParticipantId>> = HashMap::new();
                for p in participants {
                    by_origin.entry(origin_of(&p)).or_default().push(p);
                }
                for (origin, participants) in by_origin {
                    let event = SfuEvent::WorkerFailed {
                        worker,
                        participants,
                    };
                    match origin {
                        Some(origin) => {
                            self.seal_and_send(events_subject(&origin), &ToOrigin { event })
                        }
                        None => {
                            let _ = self.events.send(event);
                        }
                    }
                }
            }
            event => match event_participant(&event).and_then(|p| origin_of(&p)) {
                Some(origin) => self.seal_and_send(events_subject(&origin), &ToOrigin { event }),
                None => {
                    let _ = self.events.send(event);
                }
            },
        }
    }

    /// Hub side: an event from the carrier `from`, taken only about a participant placed
    /// there.
    fn take(&self, from: &str, event: SfuEvent) {
        let placed_there = |p: &ParticipantId| {
            self.lock()
                .placed
                .get(p)
                .is_some_and(|(node, _)| node == from)
        };
        let event = match event {
            SfuEvent::WorkerFailed {
                worker,
                participants,
            } => SfuEvent::WorkerFailed {
                worker,
                participants: participants
                    .into_iter()
                    .filter(|p| placed_there(p))
                    .collect(),
            },
            event if event_participant(&event).is_some_and(|p| placed_there(&p)) => event,
            _ => {
                self.cluster.inner.rejected.count("media_not_allowed");
                return;
            }
        };
        let _ = self.events.send(event);
    }

    /// Once a second: the links follow the members, and what a node that left carried or
    /// drove ends.
    fn members_changed(&self) {
        let gone = self.refresh_peers();
        if gone.is_empty() {
            return;
        }
        // A node that comes back starts a new session, later unless its clock went back;
        // what a gone node sent is refused anyway (commands from members only, events about
        // participants placed on their sender only).
        for taken in [&self.taken_commands, &self.taken_events] {
            taken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|node, _| !gone.contains(node));
        }
        let (lost, orphaned) = {
            let mut state = self.lock();
            let lost: Vec<ParticipantId> = state
                .placed
                .iter()
                .filter(|(_, (node, _))| gone.contains(node))
                .map(|(p, _)| *p)
                .collect();
            for p in &lost {
                state.placed.remove(p);
            }
            for nodes in state.spans.values_mut() {
                nodes.retain(|node, _| !gone.contains(node));
            }
            state.spans.retain(|_, nodes| !nodes.is_empty());
            let orphaned: Vec<ParticipantId> = state
                .carried
                .iter()
                .filter(|(_, origin)| gone.contains(origin))
                .map(|(p, _)| *p)
                .collect();
            for p in &orphaned {
                state.carried.remove(p);
            }
            let rooms: Vec<RoomId> = state
                .carried_rooms
                .iter()
                .filter(|(_, origin)| gone.contains(origin))
                .map(|(r, _)| r.clone())
                .collect();
            for room in rooms {
                state.carried_rooms.remove(&room);
                // Under the lock: a new origin's link for the room cannot slip in between.
                let links = state.room_links(&room);
                self.local.set_room_links(room, links);
            }
            (lost, orphaned)
        };
        if !lost.is_empty() {
            tracing::warn!(nodes = ?gone, participants = lost.len(), "a node carrying media left the cluster; its participants reconnect");
            // As when a media worker fails: told why, their clients reconnect at once.
            let _ = self.events.send(SfuEvent::WorkerFailed {
                worker: CARRIER_GONE,
                participants: lost,
            });
        }
        for participant in orphaned {
            self.local
                .send(SfuCommand::RemoveParticipant { participant });
        }
    }
}

/// The participant an event is about; `None` for room-wide ones.
fn event_participant(event: &SfuEvent) -> Option<ParticipantId> {
    match event {
        SfuEvent::Answer { participant, .. }
        | SfuEvent::Refused { participant, .. }
        | SfuEvent::PublicationAdded { participant, .. }
        | SfuEvent::PublicationRemoved { participant, .. }
        | SfuEvent::MediaConnected { participant }
        | SfuEvent::MediaDisconnected { participant }
        | SfuEvent::TransportFailed { participant, .. }
        | SfuEvent::QualityChanged { participant, .. }
        | SfuEvent::SimulcastLayers { participant, .. } => Some(*participant),
        SfuEvent::ActiveSpeaker { .. } | SfuEvent::WorkerFailed { .. } => None,
    }
}

async fn publish(
    client: async_nats::Client,
    mut outgoing: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    while let Some((subject, sealed)) = outgoing.recv().await {
        // NATS away: the message is lost, as a datagram would be; the participant's client
        // times out and reconnects.
        let _ = client.publish(subject, sealed.into()).await;
    }
}

async fn route_local_events(
    remote: std::sync::Weak<Remote>,
    mut events: mpsc::UnboundedReceiver<SfuEvent>,
) {
    while let Some(event) = events.recv().await {
        let Some(remote) = remote.upgrade() else {
            return;
        };
        remote.route(event);
    }
    // The SFU stopped: the hub's stream ends with it (the remote's sender drops with it).
}

async fn serve_commands(
    remote: std::sync::Weak<Remote>,
    client: async_nats::Client,
    subject: String,
) {
    let Ok(mut messages) = client.subscribe(subject.clone()).await else {
        tracing::error!(%subject, "could not subscribe to this node's media commands");
        return;
    };
    while let Some(message) = messages.next().await {
        let Some(remote) = remote.upgrade() else {
            return;
        };
        if let Some((origin, command)) =
            remote.open::<ToCarrier>(&subject, &message.payload, &remote.taken_commands)
        {
            if remote.is_member(&origin).await {
                remote.apply(&origin, command);
            } else {
                remote.cluster.inner.rejected.count("media_not_member");
            }
        }
    }
}

async fn take_events(remote: std::sync::Weak<Remote>, client: async_nats::Client, subject: String) {
    let Ok(mut messages) = client.subscribe(subject.clone()).await else {
        tracing::error!(%subject, "could not subscribe to this node's media events");
        return;
    };
    while let Some(message) = messages.next().await {
        let Some(remote) = remote.upgrade() else {
            return;
        };
        if let Some((from, ToOrigin { event })) =
            remote.open::<ToOrigin>(&subject, &message.payload, &remote.taken_events)
        {
            remote.take(&from, event);
        }
    }
}

async fn follow_members(remote: std::sync::Weak<Remote>) {
    let mut interval = tokio::time::interval(MEMBERSHIP_CHECK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(remote) = remote.upgrade() else {
            return;
        };
        remote.members_changed();
    }
}
