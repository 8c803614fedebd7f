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
//!
//! One task and one `Hub` value own everything; its methods are spread over files by seam:
//! this file has the types, the task's loop, leaving and the periodic counts;
//! `admission` joins, the lobby and admission; `moderation` client messages and host
//! actions; `media` the SFU's events; `recording` a room's recording; `fanout` every
//! message sent, and the fairness rules for wrapped keys.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::media::Media;
use protocol::{
    ClientMessage, ErrorCode, LeaveReason, LobbyEntry, ParticipantId, ParticipantInfo,
    PublicationId, PublicationInfo, Quality, Role, RoomCounts, RoomId, RoomStatus, ServerMessage,
};
use sfu::{SfuCommand, SfuEvent};
use tokio::sync::{mpsc, oneshot};

use crate::journal::{Journal, Write};
use crate::recording::{NameUpdate, Names, RecordingFinished};
use crate::store::{Admission, Store, unix_ms};

mod admission;
mod fanout;
mod media;
mod moderation;
mod recording;

pub use fanout::{KeyRelayTotals, key_relay_totals};
use fanout::{counts_of, encode};

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
    /// In a cluster: the node asked to carry the media (see `ClientMessage::Join`'s `media`).
    pub media: Option<String>,
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
            .field("media", &self.media)
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
    /// The rooms held here (with someone admitted or waiting), for the cluster's records.
    Rooms { reply: oneshot::Sender<Vec<RoomId>> },
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
        // The hub task has ended: the server is stopping (after a signal, or because the media
        // engine or the hub stopped). Clients try again, there or on another node.
        let unavailable = || {
            (
                ErrorCode::ServerStopping,
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

    /// The rooms held here: someone is admitted or waiting in each. Empty once the hub has
    /// stopped.
    pub async fn rooms(&self) -> Vec<RoomId> {
        let (reply, response) = oneshot::channel();
        if self.requests.send(HubRequest::Rooms { reply }).is_err() {
            return Vec::new();
        }
        response.await.unwrap_or_default()
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
    /// In a cluster: the node asked to carry this member's media.
    media: Option<String>,
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
    /// This node's SFU, and in a cluster the others' (see [`Media`]).
    sfu: Media,
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
    /// Display names for the recorder's manifests: told, never shared.
    names: Names,
    /// Recordings still finishing when a shutdown was asked, and whom to tell when they are.
    shutdown: Option<(Vec<String>, oneshot::Sender<()>, std::time::Instant)>,
}

/// How long a shutdown waits for recordings to be finalized.
const SHUTDOWN_RECORDING_WAIT: Duration = Duration::from_secs(5);

/// Starts the hub task.
pub fn spawn(
    sfu: Media,
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
            HubRequest::Rooms { reply } => {
                let _ = reply.send(self.rooms.keys().cloned().collect());
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
        let _ = self.names.send(NameUpdate::Left(participant));
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
        // Whoever exchanged keys with the departed without seeing it (a presenter and the
        // viewers who asked for its key) is told it left too: it held their key, and they
        // replace it (docs/e2ee.md). That costs one message per key partner, not per room.
        let mut key_partners = Vec::new();
        for id in &room.admitted {
            if let Some(other) = self.members.get_mut(id) {
                let got_from_it = other.relayed_from.remove(&participant).is_some();
                let sent_to_it = member.relayed_from.contains_key(id);
                if (got_from_it || sent_to_it) && !sees(other.role, member.role) {
                    key_partners.push(*id);
                }
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
        for id in key_partners {
            self.send_text(id, message.clone());
        }
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
            media: None,
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
            media: None,
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

    /// A client rejoining a server whose hub has ended (it is stopping) is told so, and tries
    /// again there or on another node: not `room_closed`, which ends its meeting.
    #[tokio::test]
    async fn a_join_after_the_hub_ended_is_told_the_server_stops() {
        let (requests, receiver) = mpsc::unbounded_channel();
        drop(receiver);
        let hub = HubHandle { requests };
        let arrival = Arrival {
            room: RoomId("r".into()),
            name: "Xã A".into(),
            role: Role::Participant,
            site_id: None,
            site_name: None,
            invitation: None,
            meeting: None,
            resume: None,
            e2ee_key: None,
            media: None,
        };
        let (outbound, _receiver) = mpsc::channel(1);
        let (code, _) = hub.join(arrival, outbound).await.expect_err("refused");
        assert_eq!(code, ErrorCode::ServerStopping);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abcd", "abcd"));
        assert!(!same_secret("abcd", "abce"));
        assert!(!same_secret("abc", "abcd"));
    }
}
