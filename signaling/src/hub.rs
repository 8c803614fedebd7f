//! The rooms, their rosters and lobbies: one task owns them all, so joins, admissions, role
//! changes, leaves and SFU events are applied in one order and never race.
//!
//! Sessions send [`HubRequest`]s; the hub answers each participant through its outbound queue
//! and drives the SFU through [`SfuHandle`]. A message for many participants is serialized
//! once and shared.
//!
//! Who hears about whom follows [`sees`]: everyone sees hosts and presenters, participants see
//! each other, and viewers are seen individually by hosts only. Everyone else learns how many
//! viewers there are from [`ServerMessage::RoomCounts`], sent at most once a second per room,
//! so a viewer joining a room of thousands costs O(hosts) messages, not O(N).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use protocol::{
    ClientMessage, ErrorCode, LeaveReason, LobbyEntry, LobbyReason, MediaKind, PROTOCOL_VERSION,
    ParticipantId, ParticipantInfo, PublicationId, PublicationInfo, Quality, Role, RoomCounts,
    RoomId, RoomStatus, ServerMessage, TrackSource,
};
use sfu::{SfuCommand, SfuEvent, SfuHandle};
use tokio::sync::{mpsc, oneshot};

use crate::SECURITY;
use crate::journal::{Journal, Write};
use crate::recording::{Names, RecordingFinished};
use crate::store::{Admission, Store, new_id, unix_ms};

/// Messages queued for one participant's socket before it is treated as too slow.
pub const OUTBOUND_QUEUE: usize = 1024;

/// Room a recipient's queue must have left for a message another participant addressed to it
/// (wrapped keys) to be queued: such messages may fill at most half of it, so that no
/// participant, nor several together, can fill someone else's queue and get them removed as
/// too slow. What does not fit is refused to its sender, who may send it again later.
pub const RELAY_QUEUE_ROOM: usize = OUTBOUND_QUEUE / 2;

/// Messages one participant may address to one other, per second sustained and in a burst: a
/// sender's key for a recipient is a message or two per rekey, so this is far above any
/// meeting's need and far below what fills a queue.
pub const RELAY_PER_SENDER_RATE: f64 = 8.0;
pub const RELAY_PER_SENDER_BURST: f64 = 64.0;

/// How often aggregate counts go out (when they changed) and scheduled rooms are opened.
pub const COUNTS_INTERVAL: Duration = Duration::from_secs(1);

/// What a session's socket task is asked to send.
#[derive(Clone)]
pub enum Outbound {
    /// A serialized [`ServerMessage`].
    Text(Arc<str>),
    /// Close the socket after sending this last message.
    Close(Arc<str>),
}

/// The serialized text may carry keys, wrapped keys and secrets, which `Debug` must not show
/// (see [`protocol::REDACTED_FIELDS`]): only its length is shown.
impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outbound::Text(text) => write!(f, "Text(<{} bytes>)", text.len()),
            Outbound::Close(text) => write!(f, "Close(<{} bytes>)", text.len()),
        }
    }
}

/// A refusal with a stable code.
pub type Refusal = (ErrorCode, String);

/// The scheduled meeting a room belongs to.
#[derive(Debug, Clone)]
pub struct MeetingInfo {
    pub title: String,
    /// Milliseconds since the Unix epoch.
    pub starts_at: i64,
    pub admission: Admission,
    /// Record from the moment the room opens.
    pub auto_record: bool,
    /// Media is end-to-end encrypted.
    pub e2ee: bool,
}

/// Someone asking to enter a room, with an identity the session has already checked (from a
/// verified join token, or an open room's join message).
#[derive(Clone)]
pub struct Arrival {
    pub room: RoomId,
    pub name: String,
    pub role: Role,
    pub site_id: Option<String>,
    pub site_name: Option<String>,
    /// The invitation this identity comes from; `None` in open rooms.
    pub invitation: Option<String>,
    /// `None` for open rooms, which are open from the start.
    pub meeting: Option<MeetingInfo>,
    /// The secret of an earlier connection of the same invitee, to take it over.
    pub resume: Option<String>,
    /// The device's public key for end-to-end encryption, relayed to others as is.
    pub e2ee_key: Option<String>,
}

/// `Debug` says whether a resume secret and a public key came, never what they are.
impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arrival")
            .field("room", &self.room)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("site_id", &self.site_id)
            .field("site_name", &self.site_name)
            .field("invitation", &self.invitation)
            .field("meeting", &self.meeting)
            .field("resume", &self.resume.is_some())
            .field("e2ee_key", &self.e2ee_key.is_some())
            .finish()
    }
}

/// Requests from sessions and the API to the hub.
#[derive(Debug)]
pub enum HubRequest {
    Join {
        arrival: Box<Arrival>,
        outbound: mpsc::Sender<Outbound>,
        reply: oneshot::Sender<Result<ParticipantId, Refusal>>,
    },
    /// A message from a participant (offer, candidate, mute, host actions).
    Message {
        participant: ParticipantId,
        message: ClientMessage,
    },
    Leave {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    /// The meeting was cancelled: everyone out, with `room_closed`.
    CloseRoom { room: RoomId },
    /// An invitation was revoked: its holder, if present, is removed.
    RevokeInvitation { invitation: String },
    /// The server is stopping: close every session with a message saying so.
    Shutdown { done: oneshot::Sender<()> },
}

/// A cheap handle to the hub task.
#[derive(Debug, Clone)]
pub struct HubHandle {
    requests: mpsc::UnboundedSender<HubRequest>,
}

impl HubHandle {
    /// Enters a room or its lobby. The hub itself sends `lobby` or `joined`.
    pub async fn join(
        &self,
        arrival: Arrival,
        outbound: mpsc::Sender<Outbound>,
    ) -> Result<ParticipantId, Refusal> {
        let (reply, response) = oneshot::channel();
        let unavailable = || {
            (
                ErrorCode::RoomClosed,
                "the server is shutting down".to_string(),
            )
        };
        self.requests
            .send(HubRequest::Join {
                arrival: Box::new(arrival),
                outbound,
                reply,
            })
            .map_err(|_| unavailable())?;
        response.await.map_err(|_| unavailable())?
    }

    /// Whether the hub task still runs (it ends when the SFU stops, or by a panic).
    pub fn is_running(&self) -> bool {
        !self.requests.is_closed()
    }

    /// Resolves once the hub task has ended.
    pub async fn stopped(&self) {
        self.requests.closed().await;
    }

    pub fn message(&self, participant: ParticipantId, message: ClientMessage) {
        let _ = self.requests.send(HubRequest::Message {
            participant,
            message,
        });
    }

    /// Closes every session, telling each client the server is stopping; returns once the
    /// closing messages are queued.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.requests.send(HubRequest::Shutdown { done }).is_ok() {
            let _ = finished.await;
        }
    }

    pub fn leave(&self, participant: ParticipantId, reason: LeaveReason) {
        let _ = self.requests.send(HubRequest::Leave {
            participant,
            reason,
        });
    }

    /// Ends a room: everyone in it or its lobby is disconnected with `room_closed`.
    pub fn close_room(&self, room: &RoomId) {
        let _ = self
            .requests
            .send(HubRequest::CloseRoom { room: room.clone() });
    }

    /// Removes whoever is present with this invitation.
    pub fn revoke_invitation(&self, invitation: &str) {
        let _ = self.requests.send(HubRequest::RevokeInvitation {
            invitation: invitation.to_string(),
        });
    }
}

impl crate::api::RoomControl for HubHandle {
    fn close_room(&self, room: &RoomId) {
        HubHandle::close_room(self, room);
    }

    fn revoke_invitation(&self, invitation_id: &str) {
        HubHandle::revoke_invitation(self, invitation_id);
    }
}

/// Whether a participant in role `viewer` hears individually about one in role `subject`.
pub fn sees(viewer: Role, subject: Role) -> bool {
    match viewer {
        Role::Host => true,
        Role::Presenter | Role::Participant => subject != Role::Viewer,
        Role::Viewer => matches!(subject, Role::Host | Role::Presenter),
    }
}

struct Member {
    room: RoomId,
    name: String,
    role: Role,
    site_id: Option<String>,
    site_name: Option<String>,
    invitation: Option<String>,
    hand_raised: bool,
    quality: Option<Quality>,
    outbound: mpsc::Sender<Outbound>,
    publications: Vec<PublicationInfo>,
    /// False while waiting in the lobby.
    admitted: bool,
    resume: String,
    e2ee_key: Option<String>,
    /// What each sender may still address to this member ([`RELAY_PER_SENDER_RATE`]).
    relayed_from: HashMap<ParticipantId, crate::session::RateLimiter>,
}

/// `Debug` leaves out the resume secret and the public key.
impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("room", &self.room)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("invitation", &self.invitation)
            .field("admitted", &self.admitted)
            .field("publications", &self.publications.len())
            .field("e2ee_key", &self.e2ee_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Member {
    fn info(&self, id: ParticipantId) -> ParticipantInfo {
        ParticipantInfo {
            id,
            name: self.name.clone(),
            role: self.role,
            site: self.site_name.clone(),
            hand_raised: self.hand_raised,
            quality: self.quality,
            publications: self.publications.clone(),
            e2ee_key: self.e2ee_key.clone(),
        }
    }

    fn lobby_entry(&self, id: ParticipantId) -> LobbyEntry {
        LobbyEntry {
            participant_id: id,
            name: self.name.clone(),
            site: self.site_name.clone(),
        }
    }
}

#[derive(Debug)]
struct Room {
    admitted: Vec<ParticipantId>,
    lobby: Vec<ParticipantId>,
    status: RoomStatus,
    title: String,
    starts_at: Option<i64>,
    admission: Option<Admission>,
    counts_sent: RoomCounts,
    counts_dirty: bool,
    /// The recording running now: its id and start (ms since the epoch).
    recording: Option<(String, i64)>,
    auto_record: bool,
    /// Media is end-to-end encrypted. Set by the first arrival and kept until the room empties:
    /// the people in a room must agree on it, so a change to the meeting waits until then.
    e2ee: bool,
    /// The active speaker the SFU last announced.
    speaker: Option<ParticipantId>,
}

#[derive(Debug)]
struct Hub {
    sfu: SfuHandle,
    max_participants_per_room: usize,
    rooms: HashMap<RoomId, Room>,
    members: HashMap<ParticipantId, Member>,
    /// Who holds each invitation now, so that one invitee is never present twice.
    by_invitation: HashMap<String, ParticipantId>,
    /// Invitations revoked while this process runs. Storage learns of a revocation a moment
    /// later (through the journal); until then a join with the link has passed the session's
    /// check, so the hub refuses it here and a removed person cannot walk straight back in.
    revoked: HashSet<String>,
    /// The hub's writes to storage, applied in order.
    journal: Journal,
    /// The server is stopping: joins are refused.
    stopping: bool,
    /// The owner of every live publication, for checking subscriptions against [`sees`].
    publication_owner: HashMap<PublicationId, ParticipantId>,
    /// Display names for the recorder's manifests.
    names: Names,
    /// Recordings still finishing when a shutdown was asked, and whom to tell when they are.
    shutdown: Option<(Vec<String>, oneshot::Sender<()>, std::time::Instant)>,
}

/// How long a shutdown waits for recordings to be finalized.
const SHUTDOWN_RECORDING_WAIT: Duration = Duration::from_secs(5);

/// Starts the hub task.
pub fn spawn(
    sfu: SfuHandle,
    sfu_events: mpsc::UnboundedReceiver<SfuEvent>,
    store: Store,
    max_participants_per_room: usize,
    names: Names,
    recordings: mpsc::UnboundedReceiver<RecordingFinished>,
) -> HubHandle {
    let (requests, receiver) = mpsc::unbounded_channel();
    let hub = Hub {
        sfu,
        max_participants_per_room,
        rooms: HashMap::new(),
        members: HashMap::new(),
        by_invitation: HashMap::new(),
        revoked: HashSet::new(),
        journal: Journal::spawn(store.clone()),
        stopping: false,
        publication_owner: HashMap::new(),
        names,
        shutdown: None,
    };
    tokio::spawn(hub.run(receiver, sfu_events, recordings));
    HubHandle { requests }
}

fn encode(message: &ServerMessage) -> Arc<str> {
    // Serializing these plain data types cannot fail; an empty object would only be ignored
    // by the client.
    serde_json::to_string(message)
        .unwrap_or_else(|_| "{}".to_string())
        .into()
}

/// Queues a message; true when the member's queue is full, so it is too slow to follow the
/// room. A closed queue is not that: its session has ended and its own leave, with the real
/// reason, is on the way to the hub, which must not overtake it with "removed".
fn too_slow_for(outbound: &mpsc::Sender<Outbound>, message: &Arc<str>) -> bool {
    matches!(
        outbound.try_send(Outbound::Text(message.clone())),
        Err(mpsc::error::TrySendError::Full(_))
    )
}

/// Compares secrets without an early exit, so timing does not reveal a prefix.
fn same_secret(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

impl Hub {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<HubRequest>,
        mut sfu_events: mpsc::UnboundedReceiver<SfuEvent>,
        mut recordings: mpsc::UnboundedReceiver<RecordingFinished>,
    ) {
        let mut tick = tokio::time::interval(COUNTS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => self.handle_request(request),
                    None => return,
                },
                event = sfu_events.recv() => match event {
                    Some(event) => self.handle_sfu_event(event),
                    None => {
                        tracing::error!("the SFU stopped; closing every session");
                        let ids: Vec<ParticipantId> = self.members.keys().copied().collect();
                        for id in ids {
                            self.remove(
                                id,
                                LeaveReason::Removed,
                                Some((ErrorCode::MediaUnavailable, "the media server stopped")),
                            );
                        }
                        return;
                    }
                },
                Some(finished) = recordings.recv() => self.recording_finished(finished),
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    /// Answers a shutdown once every write the hub made has reached storage, so that the
    /// attendance log and the recordings' rows are complete when the process exits.
    fn finish_shutdown(&self, done: oneshot::Sender<()>) {
        let journal = self.journal.clone();
        tokio::spawn(async move {
            journal.flush().await;
            let _ = done.send(());
        });
    }

    fn handle_request(&mut self, request: HubRequest) {
        match request {
            HubRequest::Join {
                arrival,
                outbound,
                reply,
            } => {
                let result = self.join(*arrival, outbound);
                let _ = reply.send(result);
            }
            HubRequest::Message {
                participant,
                message,
            } => {
                if let Err((code, message)) = self.handle_message(participant, message) {
                    self.send(participant, &ServerMessage::Error { code, message });
                }
            }
            HubRequest::Leave {
                participant,
                reason,
            } => self.remove(participant, reason, None),
            HubRequest::CloseRoom { room } => {
                let ids: Vec<ParticipantId> = self
                    .rooms
                    .get(&room)
                    .map(|r| r.admitted.iter().chain(&r.lobby).copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    self.remove(
                        id,
                        LeaveReason::Removed,
                        Some((ErrorCode::RoomClosed, "the meeting was cancelled")),
                    );
                }
            }
            HubRequest::RevokeInvitation { invitation } => {
                self.revoked.insert(invitation.clone());
                if let Some(id) = self.by_invitation.get(&invitation).copied() {
                    self.remove(
                        id,
                        LeaveReason::Removed,
                        Some((ErrorCode::Removed, "your invitation was withdrawn")),
                    );
                }
            }
            HubRequest::Shutdown { done } => {
                self.stopping = true;
                let recording: Vec<String> = self
                    .rooms
                    .values()
                    .filter_map(|r| r.recording.as_ref().map(|(id, _)| id.clone()))
                    .collect();
                let ids: Vec<ParticipantId> = self.members.keys().copied().collect();
                for id in ids {
                    self.remove(
                        id,
                        LeaveReason::Removed,
                        Some((
                            ErrorCode::ServerStopping,
                            "the server is restarting; reconnecting",
                        )),
                    );
                }
                // Emptied rooms stopped their recordings; wait (briefly) until the files
                // are finalized, so a clean stop never leaves an interrupted recording.
                if recording.is_empty() {
                    self.finish_shutdown(done);
                } else {
                    self.shutdown = Some((recording, done, std::time::Instant::now()));
                }
            }
        }
    }

    fn join(
        &mut self,
        arrival: Arrival,
        outbound: mpsc::Sender<Outbound>,
    ) -> Result<ParticipantId, Refusal> {
        if self.stopping {
            return Err((
                ErrorCode::ServerStopping,
                "the server is restarting; try again in a moment".into(),
            ));
        }
        if arrival
            .invitation
            .as_ref()
            .is_some_and(|invitation| self.revoked.contains(invitation))
        {
            return Err((
                ErrorCode::InvalidToken,
                "this invitation was withdrawn".into(),
            ));
        }
        // One invitee, one presence: a second connection takes over only with the secret the
        // first one was given, so a leaked link cannot push its owner out.
        if let Some(invitation) = &arrival.invitation
            && let Some(existing) = self.by_invitation.get(invitation).copied()
        {
            let resumable = match (&arrival.resume, self.members.get(&existing)) {
                (Some(resume), Some(member)) => same_secret(resume, &member.resume),
                _ => false,
            };
            if !resumable {
                return Err((
                    ErrorCode::AlreadyConnected,
                    "this invitation is already in use in the meeting".into(),
                ));
            }
            self.remove(
                existing,
                LeaveReason::TimedOut,
                Some((ErrorCode::AlreadyConnected, "you joined again elsewhere")),
            );
        }
        let now = unix_ms();
        let room = self
            .rooms
            .entry(arrival.room.clone())
            .or_insert_with(|| Room {
                admitted: Vec::new(),
                lobby: Vec::new(),
                status: RoomStatus {
                    open: arrival.meeting.is_none(),
                    locked: false,
                },
                title: arrival
                    .meeting
                    .as_ref()
                    .map_or_else(|| arrival.room.0.clone(), |m| m.title.clone()),
                starts_at: arrival.meeting.as_ref().map(|m| m.starts_at),
                admission: arrival.meeting.as_ref().map(|m| m.admission),
                counts_sent: RoomCounts::default(),
                counts_dirty: true,
                recording: None,
                auto_record: arrival.meeting.as_ref().is_some_and(|m| m.auto_record),
                // Open rooms (development, load tests) have no meeting to say so.
                e2ee: arrival.meeting.as_ref().is_some_and(|m| m.e2ee),
                speaker: None,
            });
        if room.admitted.len() + room.lobby.len() >= self.max_participants_per_room {
            if room.admitted.is_empty() && room.lobby.is_empty() {
                self.rooms.remove(&arrival.room);
            }
            return Err((
                ErrorCode::RoomFull,
                format!("room {} is full", arrival.room),
            ));
        }
        let scheduled_open = room.admission == Some(Admission::Scheduled)
            && room.starts_at.is_some_and(|t| now >= t);
        let id = loop {
            let candidate = ParticipantId(rand::random::<u64>() >> 11);
            if !self.members.contains_key(&candidate) {
                break candidate;
            }
        };
        let member = Member {
            room: arrival.room.clone(),
            name: arrival.name,
            role: arrival.role,
            site_id: arrival.site_id,
            site_name: arrival.site_name,
            invitation: arrival.invitation,
            hand_raised: false,
            quality: None,
            outbound,
            publications: Vec::new(),
            admitted: false,
            resume: new_id(),
            e2ee_key: arrival.e2ee_key,
            relayed_from: HashMap::new(),
        };
        if let Some(invitation) = &member.invitation {
            self.by_invitation.insert(invitation.clone(), id);
        }
        let role = member.role;
        self.members.insert(id, member);
        if scheduled_open {
            self.open_room(&arrival.room);
        }
        let Some(room) = self.rooms.get_mut(&arrival.room) else {
            return Err((ErrorCode::RoomClosed, "the room is gone".into()));
        };
        let waits = role != Role::Host && (!room.status.open || room.status.locked);
        if waits {
            room.lobby.push(id);
            room.counts_dirty = true;
            let message = encode(&ServerMessage::Lobby {
                participant_id: id,
                room: arrival.room.clone(),
                title: room.title.clone(),
                starts_at: room.starts_at,
                reason: if room.status.locked {
                    LobbyReason::Locked
                } else {
                    LobbyReason::NotOpen
                },
                e2ee: room.e2ee,
            });
            self.send_text(id, message);
            self.lobby_changed(&arrival.room);
            tracing::info!(participant = %id, room = %arrival.room, "participant waits in the lobby");
        } else {
            self.admit(id)?;
        }
        Ok(id)
    }

    /// Moves a member from the lobby (or the door) into the room and its media.
    fn admit(&mut self, id: ParticipantId) -> Result<(), Refusal> {
        let Some(member) = self.members.get_mut(&id) else {
            return Err((ErrorCode::UnknownParticipant, format!("{id} is not here")));
        };
        if member.admitted {
            return Ok(());
        }
        let room_id = member.room.clone();
        if !self.sfu.send(SfuCommand::AddParticipant {
            participant: id,
            room: room_id.clone(),
        }) {
            self.remove(
                id,
                LeaveReason::Removed,
                Some((
                    ErrorCode::MediaUnavailable,
                    "the media server is not running",
                )),
            );
            return Err((
                ErrorCode::MediaUnavailable,
                "the media server is not running".into(),
            ));
        }
        member.admitted = true;
        let role = member.role;
        if role == Role::Viewer {
            self.sfu.send(SfuCommand::SetPublishing {
                participant: id,
                allowed: false,
            });
        }
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return Ok(());
        };
        let was_waiting = room.lobby.contains(&id);
        room.lobby.retain(|p| *p != id);
        room.admitted.push(id);
        room.counts_dirty = true;
        let participants: Vec<ParticipantInfo> = room
            .admitted
            .iter()
            .filter(|p| **p != id)
            .filter_map(|p| self.members.get(p).map(|m| (p, m)))
            .filter(|(_, m)| sees(role, m.role))
            .map(|(p, m)| m.info(*p))
            .collect();
        let counts = counts_of(room, &self.members);
        let Some(member) = self.members.get(&id) else {
            return Ok(());
        };
        let joined = encode(&ServerMessage::Joined {
            protocol_version: PROTOCOL_VERSION,
            room: room_id.clone(),
            title: room.title.clone(),
            participant_id: id,
            role,
            participants,
            room_state: room.status,
            counts,
            resume: member.resume.clone(),
            e2ee: room.e2ee,
        });
        let announcement = encode(&ServerMessage::ParticipantJoined {
            participant: member.info(id),
        });
        let record = (
            member.invitation.clone(),
            member.name.clone(),
            member.site_id.clone(),
        );
        let recording_state = room.recording.as_ref().map(|(recording_id, started_at)| {
            encode(&ServerMessage::RecordingState {
                active: true,
                recording_id: Some(recording_id.clone()),
                started_at: Some(*started_at),
                error: None,
            })
        });
        if let Ok(mut names) = self.names.lock() {
            names.insert(id, member.name.clone());
        }
        self.send_text(id, joined);
        if let Some(state) = recording_state {
            // Everyone present knows the meeting is recorded, arrivals included.
            self.send_text(id, state);
        }
        // An arrival learns who speaks now, as everyone present did when it changed.
        let speaker = self
            .rooms
            .get(&room_id)
            .and_then(|r| r.speaker)
            .filter(|s| *s != id)
            .and_then(|s| self.members.get(&s).map(|m| (s, m.role)));
        if let Some((speaker, speaker_role)) = speaker
            && sees(role, speaker_role)
        {
            self.send(
                id,
                &ServerMessage::ActiveSpeaker {
                    participant_id: Some(speaker),
                },
            );
        }
        self.broadcast_about(&room_id, role, Some(id), &announcement);
        if was_waiting {
            self.lobby_changed(&room_id);
        }
        if role == Role::Host {
            // A host arriving after others must learn who already waits.
            self.send_lobby_to(id, &room_id);
        }
        tracing::info!(participant = %id, room = %room_id, role = role.as_str(), "participant joined");
        let (invitation, name, site) = record;
        self.journal.write(Write::Join {
            room: room_id,
            participant: id,
            invitation,
            name,
            site,
            role,
            at_ms: unix_ms(),
        });
        Ok(())
    }

    /// Opens a room: its lobby is admitted and later arrivals enter directly.
    fn open_room(&mut self, room_id: &RoomId) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if room.status.open {
            return;
        }
        room.status.open = true;
        let status = room.status;
        let auto_record = room.auto_record;
        let waiting = if status.locked {
            Vec::new()
        } else {
            room.lobby.clone()
        };
        self.broadcast_all(
            room_id,
            &encode(&ServerMessage::RoomState {
                open: status.open,
                locked: status.locked,
            }),
        );
        for id in waiting {
            let _ = self.admit(id);
        }
        if auto_record {
            self.start_recording(room_id, None);
        }
    }

    fn handle_message(
        &mut self,
        participant: ParticipantId,
        message: ClientMessage,
    ) -> Result<(), Refusal> {
        let Some(member) = self.members.get(&participant) else {
            return Ok(());
        };
        if !member.admitted {
            return Err((
                ErrorCode::NotAdmitted,
                "wait until a host lets you in".into(),
            ));
        }
        let role = member.role;
        let room = member.room.clone();
        let host_only = || {
            if role == Role::Host {
                Ok(())
            } else {
                Err((ErrorCode::Forbidden, "only a host can do this".to_string()))
            }
        };
        match message {
            ClientMessage::Offer {
                sdp,
                publish,
                subscribe,
            } => {
                if role == Role::Viewer && !publish.is_empty() {
                    return Err((ErrorCode::Forbidden, "viewers do not publish".into()));
                }
                if role == Role::Participant
                    && publish.iter().any(|p| p.source == TrackSource::Screen)
                {
                    return Err((
                        ErrorCode::Forbidden,
                        "only hosts and presenters share their screen".into(),
                    ));
                }
                // A subscription to someone this role does not see is left idle, exactly as
                // one to a publication that just ended.
                let subscribe = subscribe
                    .into_iter()
                    .filter(|s| {
                        self.publication_owner
                            .get(&s.publication_id)
                            .and_then(|owner| self.members.get(owner))
                            .is_some_and(|owner| owner.room == room && sees(role, owner.role))
                    })
                    .collect();
                self.sfu.send(SfuCommand::Offer {
                    participant,
                    sdp,
                    publish,
                    subscribe,
                });
            }
            ClientMessage::Candidate { candidate } => {
                self.sfu.send(SfuCommand::RemoteCandidate {
                    participant,
                    candidate,
                });
            }
            ClientMessage::SetMuted {
                publication_id,
                muted,
            } => self.set_muted(participant, publication_id, muted)?,
            ClientMessage::VideoSizes { sizes } => {
                within_limit("video sizes", sizes.len(), protocol::MAX_VIDEO_SIZES)?;
                self.sfu
                    .send(SfuCommand::SetVideoSizes { participant, sizes });
            }
            ClientMessage::E2eeKeys { keys } => self.relay_e2ee_keys(participant, &room, keys)?,
            ClientMessage::RaiseHand { raised } => self.raise_hand(participant, raised),
            ClientMessage::Admit { participant_id } => {
                host_only()?;
                let waiting = self
                    .rooms
                    .get(&room)
                    .is_some_and(|r| r.lobby.contains(&participant_id));
                if !waiting {
                    return Err((
                        ErrorCode::UnknownParticipant,
                        format!("{participant_id} is not waiting in this room's lobby"),
                    ));
                }
                self.admit(participant_id)?;
                tracing::info!(target: SECURITY, event = "admitted", %room, participant = %participant_id, by = %participant, "admitted from the lobby");
            }
            ClientMessage::AdmitAll {} => {
                host_only()?;
                let waiting = self
                    .rooms
                    .get(&room)
                    .map(|r| r.lobby.clone())
                    .unwrap_or_default();
                for id in waiting {
                    let _ = self.admit(id);
                }
            }
            ClientMessage::OpenRoom {} => {
                host_only()?;
                self.open_room(&room);
            }
            ClientMessage::LockRoom { locked } => {
                host_only()?;
                if let Some(r) = self.rooms.get_mut(&room)
                    && r.status.locked != locked
                {
                    r.status.locked = locked;
                    let status = r.status;
                    self.broadcast_all(
                        &room,
                        &encode(&ServerMessage::RoomState {
                            open: status.open,
                            locked: status.locked,
                        }),
                    );
                }
            }
            ClientMessage::SetRole {
                participant_id,
                role: new_role,
            } => {
                host_only()?;
                if participant_id == participant {
                    return Err((
                        ErrorCode::Forbidden,
                        "a host cannot change their own role".into(),
                    ));
                }
                self.target_in_room(participant_id, &room)?;
                self.set_role(participant_id, new_role);
                tracing::info!(target: SECURITY, event = "role_changed", %room, participant = %participant_id, to = new_role.as_str(), by = %participant, "role changed");
            }
            ClientMessage::MuteParticipant {
                participant_id,
                kind,
            } => {
                host_only()?;
                self.target_in_room(participant_id, &room)?;
                self.mute_kind(participant_id, kind);
                tracing::info!(target: SECURITY, event = "muted_by_host", %room, participant = %participant_id, ?kind, by = %participant, "muted by a host");
            }
            ClientMessage::RemoveParticipant { participant_id } => {
                host_only()?;
                if participant_id == participant {
                    return Err((
                        ErrorCode::Forbidden,
                        "leave the meeting instead of removing yourself".into(),
                    ));
                }
                let in_room = self
                    .members
                    .get(&participant_id)
                    .is_some_and(|m| m.room == room);
                if !in_room {
                    return Err((
                        ErrorCode::UnknownParticipant,
                        format!("{participant_id} is not in this room"),
                    ));
                }
                let invitation = self
                    .members
                    .get(&participant_id)
                    .and_then(|m| m.invitation.clone());
                self.remove(
                    participant_id,
                    LeaveReason::Removed,
                    Some((ErrorCode::Removed, "a host removed you from the meeting")),
                );
                tracing::info!(target: SECURITY, event = "removed", %room, participant = %participant_id, invitation = invitation.as_deref(), by = %participant, "removed by a host");
                if let Some(invitation) = invitation {
                    // The link must stop working too, or the removed person walks back in.
                    self.revoked.insert(invitation.clone());
                    self.journal.write(Write::RevokeInvitation { invitation });
                }
            }
            ClientMessage::StartRecording {} => {
                host_only()?;
                let invitation = self
                    .members
                    .get(&participant)
                    .and_then(|m| m.invitation.clone());
                tracing::info!(target: SECURITY, event = "recording_started", %room, by = %participant, "recording started by a host");
                self.start_recording(&room, invitation);
            }
            ClientMessage::StopRecording {} => {
                host_only()?;
                tracing::info!(target: SECURITY, event = "recording_stopped", %room, by = %participant, "recording stopped by a host");
                self.stop_recording(&room, None);
            }
            // The session answers these itself.
            ClientMessage::Join { .. } | ClientMessage::Ping {} | ClientMessage::Leave {} => {}
        }
        Ok(())
    }

    /// Checks that a host's target is admitted in the host's own room.
    fn target_in_room(&self, target: ParticipantId, room: &RoomId) -> Result<(), Refusal> {
        match self.members.get(&target) {
            Some(m) if m.room == *room && m.admitted => Ok(()),
            _ => Err((
                ErrorCode::UnknownParticipant,
                format!("{target} is not in this room"),
            )),
        }
    }

    fn set_muted(
        &mut self,
        participant: ParticipantId,
        publication: PublicationId,
        muted: bool,
    ) -> Result<(), Refusal> {
        let Some(member) = self.members.get_mut(&participant) else {
            return Ok(());
        };
        let Some(info) = member.publications.iter_mut().find(|p| p.id == publication) else {
            return Err((
                ErrorCode::UnknownPublication,
                format!("{publication} is not one of your publications"),
            ));
        };
        if info.muted == muted {
            return Ok(());
        }
        info.muted = muted;
        let room = member.room.clone();
        let role = member.role;
        self.sfu.send(SfuCommand::SetMuted {
            participant,
            publication,
            muted,
        });
        let message = encode(&ServerMessage::MuteChanged {
            publication_id: publication,
            participant_id: participant,
            muted,
        });
        self.broadcast_about(&room, role, None, &message);
        Ok(())
    }

    /// A host mutes every publication of one kind of the target; the owner may unmute.
    fn mute_kind(&mut self, target: ParticipantId, kind: MediaKind) {
        let publications: Vec<PublicationId> = self
            .members
            .get(&target)
            .map(|m| {
                m.publications
                    .iter()
                    .filter(|p| p.kind == kind && !p.muted)
                    .map(|p| p.id)
                    .collect()
            })
            .unwrap_or_default();
        for publication in publications {
            let _ = self.set_muted(target, publication, true);
        }
    }

    fn raise_hand(&mut self, participant: ParticipantId, raised: bool) {
        let Some(member) = self.members.get_mut(&participant) else {
            return;
        };
        if member.hand_raised == raised {
            return;
        }
        member.hand_raised = raised;
        let room = member.room.clone();
        let role = member.role;
        let message = encode(&ServerMessage::ParticipantUpdated {
            participant: member.info(participant),
        });
        if let Some(r) = self.rooms.get_mut(&room) {
            r.counts_dirty = true;
        }
        self.broadcast_about(&room, role, None, &message);
    }

    /// Changes a role and what follows from it: publishing rights, and who sees whom.
    fn set_role(&mut self, target: ParticipantId, new_role: Role) {
        let Some(member) = self.members.get_mut(&target) else {
            return;
        };
        let old_role = member.role;
        if old_role == new_role {
            return;
        }
        member.role = new_role;
        let room_id = member.room.clone();
        let target_info = member.info(target);
        let _ = member
            .outbound
            .try_send(Outbound::Text(encode(&ServerMessage::RoleChanged {
                role: new_role,
            })));
        if (old_role == Role::Viewer) != (new_role == Role::Viewer) {
            self.sfu.send(SfuCommand::SetPublishing {
                participant: target,
                allowed: new_role != Role::Viewer,
            });
        }
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        room.counts_dirty = true;
        let others: Vec<ParticipantId> = room
            .admitted
            .iter()
            .copied()
            .filter(|p| *p != target)
            .collect();
        let joined = encode(&ServerMessage::ParticipantJoined {
            participant: target_info.clone(),
        });
        let updated = encode(&ServerMessage::ParticipantUpdated {
            participant: target_info,
        });
        let left = encode(&ServerMessage::ParticipantLeft {
            participant_id: target,
            reason: LeaveReason::Left,
        });
        let mut to_target = Vec::new();
        let mut too_slow = Vec::new();
        // Forwarding follows visibility at once, not at the clients' next offers: a client
        // that never renegotiates must not keep media its new role does not see.
        let target_publications: Vec<PublicationId> = self
            .members
            .get(&target)
            .map(|m| m.publications.iter().map(|p| p.id).collect())
            .unwrap_or_default();
        let mut unsubscribe: Vec<(ParticipantId, Vec<PublicationId>)> = Vec::new();
        let mut hidden_from_target = Vec::new();
        for other in others {
            let Some(o) = self.members.get(&other) else {
                continue;
            };
            // What the others now see of the target.
            let message = match (sees(o.role, old_role), sees(o.role, new_role)) {
                (false, true) => Some(&joined),
                (true, true) => Some(&updated),
                (true, false) => {
                    if !target_publications.is_empty() {
                        unsubscribe.push((other, target_publications.clone()));
                    }
                    Some(&left)
                }
                (false, false) => None,
            };
            if let Some(message) = message
                && too_slow_for(&o.outbound, message)
            {
                too_slow.push(other);
            }
            // What the target now sees of the others.
            match (sees(old_role, o.role), sees(new_role, o.role)) {
                (false, true) => to_target.push(encode(&ServerMessage::ParticipantJoined {
                    participant: o.info(other),
                })),
                (true, false) => {
                    hidden_from_target.extend(o.publications.iter().map(|p| p.id));
                    to_target.push(encode(&ServerMessage::ParticipantLeft {
                        participant_id: other,
                        reason: LeaveReason::Left,
                    }));
                }
                _ => {}
            }
        }
        if !hidden_from_target.is_empty() {
            unsubscribe.push((target, hidden_from_target));
        }
        for (participant, publications) in unsubscribe {
            self.sfu.send(SfuCommand::Unsubscribe {
                participant,
                publications,
            });
        }
        for message in to_target {
            self.send_text(target, message);
        }
        for id in too_slow {
            self.remove(id, LeaveReason::Removed, None);
        }
        if new_role == Role::Host {
            self.send_lobby_to(target, &room_id);
        }
        tracing::debug!(participant = %target, from = old_role.as_str(), to = new_role.as_str(), "role changed");
    }

    /// Relays wrapped media keys to their recipients in the sender's room. The server cannot
    /// read them; it only vouches for who sent them. A recipient who left meanwhile, or who is
    /// not in this room, is skipped: keys never cross rooms.
    fn relay_e2ee_keys(
        &mut self,
        from: ParticipantId,
        room: &RoomId,
        keys: Vec<protocol::E2eeKeyDelivery>,
    ) -> Result<(), (ErrorCode, String)> {
        within_limit("keys", keys.len(), protocol::MAX_E2EE_DELIVERIES)?;
        if let Some(key) = keys.iter().find(|k| k.blob.len() > protocol::MAX_E2EE_BLOB) {
            return Err((
                ErrorCode::BadMessage,
                format!(
                    "a key for {} is {} characters; the limit is {}",
                    key.participant_id,
                    key.blob.len(),
                    protocol::MAX_E2EE_BLOB
                ),
            ));
        }
        let now = std::time::Instant::now();
        let mut held_back = Vec::new();
        for key in keys {
            let recipient = key.participant_id;
            let Some(member) = self.members.get_mut(&recipient) else {
                continue;
            };
            if recipient == from || !member.admitted || member.room != *room {
                continue;
            }
            let within_budget = member
                .relayed_from
                .entry(from)
                .or_insert_with(|| {
                    crate::session::RateLimiter::new(RELAY_PER_SENDER_RATE, RELAY_PER_SENDER_BURST)
                })
                .allow(now);
            // Never removes the recipient: a message that would crowd its queue is the
            // sender's problem, refused to the sender.
            let message = encode(&ServerMessage::E2eeKey {
                from,
                blob: key.blob,
            });
            let queued = within_budget
                && member.outbound.capacity() > RELAY_QUEUE_ROOM
                && member.outbound.try_send(Outbound::Text(message)).is_ok();
            if !queued {
                held_back.push(recipient);
            }
        }
        if held_back.is_empty() {
            return Ok(());
        }
        if crate::metrics::Refusal::RelayHeldBack.count() {
            tracing::info!(participant = %from, recipients = ?held_back, "key messages held back");
        }
        Err((
            ErrorCode::RateLimited,
            format!(
                "keys for {} not relayed: too many for them lately, or they are not keeping \
                 up; send them again later",
                held_back
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    fn handle_sfu_event(&mut self, event: SfuEvent) {
        match event {
            SfuEvent::Answer { participant, sdp } => {
                self.send(participant, &ServerMessage::Answer { sdp });
            }
            SfuEvent::Refused {
                participant,
                code,
                message,
            } => {
                self.send(participant, &ServerMessage::Error { code, message });
            }
            SfuEvent::PublicationAdded {
                participant,
                publication,
            } => {
                let Some(member) = self.members.get_mut(&participant) else {
                    return;
                };
                let info = PublicationInfo {
                    id: publication.id,
                    participant_id: participant,
                    kind: publication.kind,
                    source: publication.source,
                    muted: false,
                };
                member.publications.push(info.clone());
                let room = member.room.clone();
                let role = member.role;
                self.publication_owner.insert(publication.id, participant);
                let message = encode(&ServerMessage::PublicationAdded { publication: info });
                // The publisher learns its own ids from this message too.
                self.send_text(participant, message.clone());
                self.broadcast_about(&room, role, Some(participant), &message);
            }
            SfuEvent::PublicationRemoved {
                participant,
                publication,
            } => {
                self.publication_owner.remove(&publication);
                let Some(member) = self.members.get_mut(&participant) else {
                    return;
                };
                member.publications.retain(|p| p.id != publication);
                let room = member.room.clone();
                let role = member.role;
                let message = encode(&ServerMessage::PublicationRemoved {
                    publication_id: publication,
                    participant_id: participant,
                });
                self.send_text(participant, message.clone());
                self.broadcast_about(&room, role, Some(participant), &message);
            }
            SfuEvent::MediaConnected { participant } => {
                self.send(participant, &ServerMessage::MediaConnected);
            }
            SfuEvent::ActiveSpeaker { room, participant } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.speaker = participant;
                }
                let message = encode(&ServerMessage::ActiveSpeaker {
                    participant_id: participant,
                });
                // Only those who see the speaker learn that it speaks: a viewer in a national
                // broadcast hears about the presenters, not about every commune.
                match participant
                    .and_then(|p| self.members.get(&p))
                    .map(|m| m.role)
                {
                    Some(role) => self.broadcast_about(&room, role, None, &message),
                    None => self.broadcast_all(&room, &message),
                }
            }
            SfuEvent::SimulcastLayers {
                participant,
                publication,
                active,
            } => {
                self.send(
                    participant,
                    &ServerMessage::SimulcastLayers {
                        publication_id: publication,
                        active,
                    },
                );
            }
            SfuEvent::WorkerFailed {
                worker,
                participants,
            } => {
                // Their transports died with the worker. Told why, their clients reconnect
                // at once (with their resume secret) and land on another worker.
                tracing::warn!(
                    worker,
                    participants = participants.len(),
                    "media worker failed"
                );
                for participant in participants {
                    self.remove(
                        participant,
                        LeaveReason::TimedOut,
                        Some((
                            ErrorCode::MediaUnavailable,
                            "the media server failed; reconnecting",
                        )),
                    );
                }
            }
            SfuEvent::TransportFailed { participant } => {
                // Only a hostile or broken client gets here: the SFU's WebRTC stack panicked
                // on what this participant sent. The SFU already closed its transport.
                let (room, invitation) = self.members.get(&participant).map_or((None, None), |m| {
                    (Some(m.room.to_string()), m.invitation.clone())
                });
                tracing::warn!(target: SECURITY, event = "transport_failed", room = room.as_deref(), participant = %participant, invitation = invitation.as_deref(), "media transport failed on the participant's input; removed");
                self.remove(
                    participant,
                    LeaveReason::Removed,
                    Some((
                        ErrorCode::MediaUnavailable,
                        "your media connection failed on what it sent and was closed",
                    )),
                );
            }
            SfuEvent::MediaDisconnected { participant } => {
                tracing::info!(participant = %participant, "media transport timed out");
                self.remove(
                    participant,
                    LeaveReason::TimedOut,
                    Some((
                        ErrorCode::MediaUnavailable,
                        "your media connection timed out",
                    )),
                );
            }
            SfuEvent::QualityChanged {
                participant,
                quality,
            } => {
                let Some(member) = self.members.get_mut(&participant) else {
                    return;
                };
                if member.quality == Some(quality) {
                    return;
                }
                member.quality = Some(quality);
                let room = member.room.clone();
                let role = member.role;
                let message = encode(&ServerMessage::ParticipantUpdated {
                    participant: member.info(participant),
                });
                self.broadcast_about(&room, role, None, &message);
                self.journal.write(Write::Quality {
                    participant,
                    quality,
                });
            }
        }
    }

    /// Sends aggregate counts where they changed, and opens scheduled rooms whose time came.
    fn on_tick(&mut self) {
        if self
            .shutdown
            .as_ref()
            .is_some_and(|(_, _, since)| since.elapsed() > SHUTDOWN_RECORDING_WAIT)
            && let Some((_, done, _)) = self.shutdown.take()
        {
            self.finish_shutdown(done);
        }
        let now = unix_ms();
        let due: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, r)| {
                !r.status.open
                    && r.admission == Some(Admission::Scheduled)
                    && r.starts_at.is_some_and(|t| now >= t)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for room in due {
            self.open_room(&room);
        }
        let dirty: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.counts_dirty)
            .map(|(id, _)| id.clone())
            .collect();
        for room_id in dirty {
            let Some(room) = self.rooms.get_mut(&room_id) else {
                continue;
            };
            room.counts_dirty = false;
            let counts = counts_of(room, &self.members);
            if counts == room.counts_sent {
                continue;
            }
            room.counts_sent = counts;
            self.broadcast_all(&room_id, &encode(&ServerMessage::RoomCounts(counts)));
        }
    }

    /// Removes a participant everywhere and tells those who saw it. `close` also closes its
    /// socket with that error.
    fn remove(
        &mut self,
        participant: ParticipantId,
        reason: LeaveReason,
        close: Option<(ErrorCode, &str)>,
    ) {
        let Some(member) = self.members.remove(&participant) else {
            return;
        };
        if let Ok(mut names) = self.names.lock() {
            names.remove(&participant);
        }
        if let Some(invitation) = &member.invitation
            && self.by_invitation.get(invitation) == Some(&participant)
        {
            self.by_invitation.remove(invitation);
        }
        if let Some((code, message)) = close {
            let error = encode(&ServerMessage::Error {
                code,
                message: message.to_string(),
            });
            let _ = member.outbound.try_send(Outbound::Close(error));
        }
        let Some(room) = self.rooms.get_mut(&member.room) else {
            return;
        };
        room.counts_dirty = true;
        if !member.admitted {
            room.lobby.retain(|p| *p != participant);
            self.lobby_changed(&member.room);
            self.drop_room_if_empty(&member.room);
            return;
        }
        room.admitted.retain(|p| *p != participant);
        for other in &room.admitted {
            if let Some(other) = self.members.get_mut(other) {
                other.relayed_from.remove(&participant);
            }
        }
        self.sfu.send(SfuCommand::RemoveParticipant { participant });
        // The SFU announces removed publications too, but by then the member is gone: tell
        // the room here so that its clients stop their receivers at once.
        for publication in &member.publications {
            self.publication_owner.remove(&publication.id);
            let message = encode(&ServerMessage::PublicationRemoved {
                publication_id: publication.id,
                participant_id: participant,
            });
            self.broadcast_about(&member.room, member.role, None, &message);
        }
        let message = encode(&ServerMessage::ParticipantLeft {
            participant_id: participant,
            reason,
        });
        self.broadcast_about(&member.room, member.role, None, &message);
        self.drop_room_if_empty(&member.room);
        tracing::info!(participant = %participant, ?reason, "participant left");
        self.journal.write(Write::Leave {
            participant,
            reason,
            at_ms: unix_ms(),
        });
    }

    fn drop_room_if_empty(&mut self, room: &RoomId) {
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.admitted.is_empty() && r.lobby.is_empty())
        {
            // Nobody is left to record.
            self.stop_recording(room, None);
            self.rooms.remove(room);
        }
    }

    fn start_recording(&mut self, room_id: &RoomId, started_by: Option<String>) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if room.recording.is_some() {
            return;
        }
        let recording_id = new_id();
        let started_at = unix_ms();
        let e2ee = room.e2ee;
        room.recording = Some((recording_id.clone(), started_at));
        self.sfu.send(SfuCommand::StartRecording {
            room: room_id.clone(),
            recording_id: recording_id.clone(),
            e2ee,
        });
        self.journal.write(Write::RecordingStarted {
            id: recording_id.clone(),
            meeting: room_id.0.clone(),
            started_at,
            started_by,
            e2ee,
        });
        tracing::info!(room = %room_id, recording = %recording_id, e2ee, "recording requested");
        self.broadcast_all(
            room_id,
            &encode(&ServerMessage::RecordingState {
                active: true,
                recording_id: Some(recording_id),
                started_at: Some(started_at),
                error: None,
            }),
        );
    }

    /// Stops the room's recording, if any; `error` says why when it stopped by itself.
    fn stop_recording(&mut self, room_id: &RoomId, error: Option<String>) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some((recording_id, _)) = room.recording.take() else {
            return;
        };
        self.sfu.send(SfuCommand::StopRecording {
            room: room_id.clone(),
        });
        self.broadcast_all(
            room_id,
            &encode(&ServerMessage::RecordingState {
                active: false,
                recording_id: Some(recording_id),
                started_at: None,
                error,
            }),
        );
    }

    /// The recorder closed a recording: stopped, finished or failed.
    fn recording_finished(&mut self, finished: RecordingFinished) {
        let still_running = self.rooms.get(&finished.room).is_some_and(|r| {
            r.recording
                .as_ref()
                .is_some_and(|(id, _)| *id == finished.recording_id)
        });
        if still_running {
            // It stopped by itself: a write failed. The meeting goes on; the hosts learn why.
            let error = finished
                .error
                .clone()
                .unwrap_or_else(|| "the recording stopped".to_string());
            self.stop_recording(&finished.room, Some(error));
        }
        if let Some((waiting, _, _)) = &mut self.shutdown {
            waiting.retain(|id| *id != finished.recording_id);
            if waiting.is_empty()
                && let Some((_, done, _)) = self.shutdown.take()
            {
                self.finish_shutdown(done);
            }
        }
        self.journal.write(Write::RecordingFinished {
            id: finished.recording_id,
            status: finished.status,
            ended_at: unix_ms(),
            error: finished.error,
            bytes: finished.bytes,
        });
    }

    /// Tells the room's hosts who waits in the lobby.
    fn lobby_changed(&mut self, room_id: &RoomId) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let hosts: Vec<ParticipantId> = room
            .admitted
            .iter()
            .copied()
            .filter(|p| self.members.get(p).is_some_and(|m| m.role == Role::Host))
            .collect();
        if hosts.is_empty() {
            return;
        }
        let message = self.lobby_message(room);
        for host in hosts {
            self.send_text(host, message.clone());
        }
    }

    fn send_lobby_to(&mut self, host: ParticipantId, room_id: &RoomId) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let message = self.lobby_message(room);
        self.send_text(host, message);
    }

    fn lobby_message(&self, room: &Room) -> Arc<str> {
        let waiting = room
            .lobby
            .iter()
            .filter_map(|p| self.members.get(p).map(|m| m.lobby_entry(*p)))
            .collect();
        encode(&ServerMessage::LobbyChanged { waiting })
    }

    fn send(&mut self, participant: ParticipantId, message: &ServerMessage) {
        self.send_text(participant, encode(message));
    }

    fn send_text(&mut self, participant: ParticipantId, message: Arc<str>) {
        let Some(member) = self.members.get(&participant) else {
            return;
        };
        if too_slow_for(&member.outbound, &message) {
            self.remove(participant, LeaveReason::Removed, None);
        }
    }

    /// Sends one message about a participant in role `subject` to every admitted member of the
    /// room who sees that role, but `except`. A member whose queue is full is too slow to
    /// follow the room and is removed rather than slowing everyone down.
    fn broadcast_about(
        &mut self,
        room: &RoomId,
        subject: Role,
        except: Option<ParticipantId>,
        message: &Arc<str>,
    ) {
        self.broadcast_where(room, except, message, |role| sees(role, subject));
    }

    /// Sends one message to every admitted member of the room.
    fn broadcast_all(&mut self, room: &RoomId, message: &Arc<str>) {
        self.broadcast_where(room, None, message, |_| true);
    }

    fn broadcast_where(
        &mut self,
        room: &RoomId,
        except: Option<ParticipantId>,
        message: &Arc<str>,
        wanted: impl Fn(Role) -> bool,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let mut too_slow = Vec::new();
        for id in &r.admitted {
            if Some(*id) == except {
                continue;
            }
            if let Some(member) = self.members.get(id)
                && wanted(member.role)
                && too_slow_for(&member.outbound, message)
            {
                too_slow.push(*id);
            }
        }
        for id in too_slow {
            self.remove(id, LeaveReason::Removed, None);
        }
    }
}

/// Refuses a list longer than the protocol allows, saying which and by how much.
fn within_limit(what: &str, count: usize, limit: usize) -> Result<(), (ErrorCode, String)> {
    if count > limit {
        return Err((
            ErrorCode::BadMessage,
            format!("{count} {what} in one message; the limit is {limit}"),
        ));
    }
    Ok(())
}

fn counts_of(room: &Room, members: &HashMap<ParticipantId, Member>) -> RoomCounts {
    let mut counts = RoomCounts {
        present: room.admitted.len() as u32,
        lobby: room.lobby.len() as u32,
        ..RoomCounts::default()
    };
    for member in room.admitted.iter().filter_map(|p| members.get(p)) {
        if member.role == Role::Viewer {
            counts.viewers += 1;
        }
        if member.hand_raised {
            counts.hands_raised += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_keeps_viewers_to_hosts() {
        for subject in [Role::Host, Role::Presenter, Role::Participant, Role::Viewer] {
            assert!(sees(Role::Host, subject));
        }
        assert!(!sees(Role::Participant, Role::Viewer));
        assert!(!sees(Role::Presenter, Role::Viewer));
        assert!(!sees(Role::Viewer, Role::Viewer));
        assert!(!sees(Role::Viewer, Role::Participant));
        assert!(sees(Role::Viewer, Role::Presenter));
        assert!(sees(Role::Participant, Role::Participant));
    }

    #[test]
    fn debug_hides_keys_and_secrets() {
        let arrival = Arrival {
            room: RoomId("r".into()),
            name: "Xã A".into(),
            role: Role::Participant,
            site_id: None,
            site_name: None,
            invitation: Some("inv".into()),
            meeting: None,
            resume: Some("RESUME-SECRET".into()),
            e2ee_key: Some("PUBLIC-KEY".into()),
        };
        let text = encode(&ServerMessage::E2eeKey {
            from: ParticipantId(1),
            blob: "WRAPPED-BLOB".into(),
        });
        let (outbound, _receiver) = mpsc::channel(1);
        let member = Member {
            room: arrival.room.clone(),
            name: arrival.name.clone(),
            role: arrival.role,
            site_id: None,
            site_name: None,
            invitation: None,
            hand_raised: false,
            quality: None,
            outbound,
            publications: Vec::new(),
            admitted: true,
            resume: "RESUME-SECRET".into(),
            e2ee_key: Some("PUBLIC-KEY".into()),
            relayed_from: HashMap::new(),
        };
        let request = HubRequest::Message {
            participant: ParticipantId(1),
            message: ClientMessage::E2eeKeys {
                keys: vec![protocol::E2eeKeyDelivery {
                    participant_id: ParticipantId(2),
                    blob: "WRAPPED-BLOB".into(),
                }],
            },
        };
        for shown in [
            format!("{arrival:?}"),
            format!("{:?}", Outbound::Text(text.clone())),
            format!("{:?}", Outbound::Close(text)),
            format!("{member:?}"),
            format!("{request:?}"),
        ] {
            for secret in ["RESUME-SECRET", "PUBLIC-KEY", "WRAPPED-BLOB"] {
                assert!(!shown.contains(secret), "{secret} shown in {shown}");
            }
            assert!(shown.len() > 10, "{shown}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abcd", "abcd"));
        assert!(!same_secret("abcd", "abce"));
        assert!(!same_secret("abc", "abcd"));
    }
}
