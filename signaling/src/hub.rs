//! The rooms and their rosters: one task owns them all, so joins, leaves and SFU events are
//! applied in one order and never race.
//!
//! Sessions send [`HubRequest`]s; the hub answers each participant through its outbound queue
//! and drives the SFU through [`SfuHandle`]. A message for many participants is serialized
//! once and shared.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::{
    ClientMessage, ErrorCode, LeaveReason, PROTOCOL_VERSION, ParticipantId, ParticipantInfo,
    PublicationId, PublicationInfo, RoomId, ServerMessage,
};
use sfu::{SfuCommand, SfuEvent, SfuHandle};
use tokio::sync::{mpsc, oneshot};

use crate::store::Store;

/// Messages queued for one participant's socket before it is treated as too slow.
pub const OUTBOUND_QUEUE: usize = 1024;

/// What a session's socket task is asked to send.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A serialized [`ServerMessage`].
    Text(Arc<str>),
    /// Close the socket after sending this last message.
    Close(Arc<str>),
}

/// A refusal with a stable code.
pub type Refusal = (ErrorCode, String);

/// Requests from sessions to the hub.
#[derive(Debug)]
pub enum HubRequest {
    Join {
        room: RoomId,
        name: String,
        outbound: mpsc::Sender<Outbound>,
        reply: oneshot::Sender<Result<ParticipantId, Refusal>>,
    },
    /// A message from a joined participant (offer, candidate, mute).
    Message {
        participant: ParticipantId,
        message: ClientMessage,
    },
    Leave {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    /// The server is stopping: close every session with a message saying so.
    Shutdown { done: oneshot::Sender<()> },
}

/// A cheap handle to the hub task.
#[derive(Debug, Clone)]
pub struct HubHandle {
    requests: mpsc::UnboundedSender<HubRequest>,
}

impl HubHandle {
    pub async fn join(
        &self,
        room: RoomId,
        name: String,
        outbound: mpsc::Sender<Outbound>,
    ) -> Result<ParticipantId, Refusal> {
        let (reply, response) = oneshot::channel();
        let unavailable = || {
            (
                ErrorCode::MediaUnavailable,
                "the server is shutting down".to_string(),
            )
        };
        self.requests
            .send(HubRequest::Join {
                room,
                name,
                outbound,
                reply,
            })
            .map_err(|_| unavailable())?;
        response.await.map_err(|_| unavailable())?
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
}

#[derive(Debug)]
struct Member {
    room: RoomId,
    name: String,
    outbound: mpsc::Sender<Outbound>,
    publications: Vec<PublicationInfo>,
}

#[derive(Debug)]
struct Hub {
    sfu: SfuHandle,
    store: Store,
    max_participants_per_room: usize,
    rooms: HashMap<RoomId, Vec<ParticipantId>>,
    members: HashMap<ParticipantId, Member>,
}

/// Starts the hub task.
pub fn spawn(
    sfu: SfuHandle,
    sfu_events: mpsc::UnboundedReceiver<SfuEvent>,
    store: Store,
    max_participants_per_room: usize,
) -> HubHandle {
    let (requests, receiver) = mpsc::unbounded_channel();
    let hub = Hub {
        sfu,
        store,
        max_participants_per_room,
        rooms: HashMap::new(),
        members: HashMap::new(),
    };
    tokio::spawn(hub.run(receiver, sfu_events));
    HubHandle { requests }
}

fn encode(message: &ServerMessage) -> Arc<str> {
    // Serializing these plain data types cannot fail; an empty object would only be ignored
    // by the client.
    serde_json::to_string(message)
        .unwrap_or_else(|_| "{}".to_string())
        .into()
}

impl Hub {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<HubRequest>,
        mut sfu_events: mpsc::UnboundedReceiver<SfuEvent>,
    ) {
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
                            self.remove(id, LeaveReason::Removed, Some("the media server stopped"));
                        }
                        return;
                    }
                },
            }
        }
    }

    fn handle_request(&mut self, request: HubRequest) {
        match request {
            HubRequest::Join {
                room,
                name,
                outbound,
                reply,
            } => {
                let result = self.join(room, name, outbound);
                let _ = reply.send(result);
            }
            HubRequest::Message {
                participant,
                message,
            } => self.handle_message(participant, message),
            HubRequest::Leave {
                participant,
                reason,
            } => self.remove(participant, reason, None),
            HubRequest::Shutdown { done } => {
                let ids: Vec<ParticipantId> = self.members.keys().copied().collect();
                for id in ids {
                    self.remove(
                        id,
                        LeaveReason::Removed,
                        Some("the server is shutting down"),
                    );
                }
                let _ = done.send(());
            }
        }
    }

    fn join(
        &mut self,
        room: RoomId,
        name: String,
        outbound: mpsc::Sender<Outbound>,
    ) -> Result<ParticipantId, Refusal> {
        let present = self.rooms.get(&room).map_or(0, Vec::len);
        if present >= self.max_participants_per_room {
            return Err((ErrorCode::RoomFull, format!("room {room} is full")));
        }
        let id = loop {
            let candidate = ParticipantId(rand::random::<u64>() >> 11);
            if !self.members.contains_key(&candidate) {
                break candidate;
            }
        };
        if !self.sfu.send(SfuCommand::AddParticipant {
            participant: id,
            room: room.clone(),
        }) {
            return Err((
                ErrorCode::MediaUnavailable,
                "the media server is not running".into(),
            ));
        }
        let members = self.rooms.entry(room.clone()).or_default();
        let participants: Vec<ParticipantInfo> = members
            .iter()
            .filter_map(|p| self.members.get(p).map(|m| info(*p, m)))
            .collect();
        members.push(id);
        let joined = encode(&ServerMessage::Joined {
            protocol_version: PROTOCOL_VERSION,
            room: room.clone(),
            participant_id: id,
            participants,
        });
        let _ = outbound.try_send(Outbound::Text(joined));
        let member = Member {
            room: room.clone(),
            name: name.clone(),
            outbound,
            publications: Vec::new(),
        };
        let announcement = encode(&ServerMessage::ParticipantJoined {
            participant: info(id, &member),
        });
        self.members.insert(id, member);
        self.broadcast(&room, Some(id), &announcement);
        tracing::info!(participant = %id, room = %room, "participant joined");
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(err) = store
                .record_join(&room, id, None, &name, None, protocol::Role::Participant)
                .await
            {
                tracing::warn!(%err, "attendance not recorded");
            }
        });
        Ok(id)
    }

    fn handle_message(&mut self, participant: ParticipantId, message: ClientMessage) {
        if !self.members.contains_key(&participant) {
            return;
        }
        match message {
            ClientMessage::Offer {
                sdp,
                publish,
                subscribe,
            } => {
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
            } => self.set_muted(participant, publication_id, muted),
            // The session answers these itself.
            ClientMessage::Join { .. } | ClientMessage::Ping {} | ClientMessage::Leave {} => {}
        }
    }

    fn set_muted(&mut self, participant: ParticipantId, publication: PublicationId, muted: bool) {
        let Some(member) = self.members.get_mut(&participant) else {
            return;
        };
        let Some(info) = member.publications.iter_mut().find(|p| p.id == publication) else {
            let error = encode(&ServerMessage::Error {
                code: ErrorCode::UnknownPublication,
                message: format!("{publication} is not one of your publications"),
            });
            let _ = member.outbound.try_send(Outbound::Text(error));
            return;
        };
        if info.muted == muted {
            return;
        }
        info.muted = muted;
        let room = member.room.clone();
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
        self.broadcast(&room, None, &message);
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
                let message = encode(&ServerMessage::PublicationAdded { publication: info });
                self.broadcast(&room, None, &message);
            }
            SfuEvent::PublicationRemoved {
                participant,
                publication,
            } => {
                let Some(member) = self.members.get_mut(&participant) else {
                    return;
                };
                member.publications.retain(|p| p.id != publication);
                let room = member.room.clone();
                let message = encode(&ServerMessage::PublicationRemoved {
                    publication_id: publication,
                    participant_id: participant,
                });
                self.broadcast(&room, None, &message);
            }
            SfuEvent::MediaConnected { participant } => {
                self.send(participant, &ServerMessage::MediaConnected);
            }
            SfuEvent::MediaDisconnected { participant } => {
                tracing::info!(participant = %participant, "media transport timed out");
                self.remove(
                    participant,
                    LeaveReason::TimedOut,
                    Some("your media connection timed out"),
                );
            }
        }
    }

    /// Removes a participant everywhere and tells the room. `close` also closes its socket
    /// with that message.
    fn remove(&mut self, participant: ParticipantId, reason: LeaveReason, close: Option<&str>) {
        let Some(member) = self.members.remove(&participant) else {
            return;
        };
        self.sfu.send(SfuCommand::RemoveParticipant { participant });
        if let Some(message) = close {
            let error = encode(&ServerMessage::Error {
                code: ErrorCode::MediaUnavailable,
                message: message.to_string(),
            });
            let _ = member.outbound.try_send(Outbound::Close(error));
        }
        if let Some(members) = self.rooms.get_mut(&member.room) {
            members.retain(|p| *p != participant);
            if members.is_empty() {
                self.rooms.remove(&member.room);
            }
        }
        // The SFU announces removed publications too, but by then the member is gone: tell
        // the room here so that its clients stop their receivers at once.
        for publication in &member.publications {
            let message = encode(&ServerMessage::PublicationRemoved {
                publication_id: publication.id,
                participant_id: participant,
            });
            self.broadcast(&member.room, None, &message);
        }
        let message = encode(&ServerMessage::ParticipantLeft {
            participant_id: participant,
            reason,
        });
        self.broadcast(&member.room, None, &message);
        tracing::info!(participant = %participant, ?reason, "participant left");
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(err) = store.record_leave(participant, reason).await {
                tracing::warn!(%err, "attendance not recorded");
            }
        });
    }

    fn send(&mut self, participant: ParticipantId, message: &ServerMessage) {
        let Some(member) = self.members.get(&participant) else {
            return;
        };
        if member
            .outbound
            .try_send(Outbound::Text(encode(message)))
            .is_err()
        {
            self.remove(participant, LeaveReason::Removed, None);
        }
    }

    /// Sends one message to every member of a room but `except`. A member whose queue is full
    /// is too slow to follow the room and is removed rather than slowing everyone down.
    fn broadcast(&mut self, room: &RoomId, except: Option<ParticipantId>, message: &Arc<str>) {
        let Some(members) = self.rooms.get(room) else {
            return;
        };
        let mut too_slow = Vec::new();
        for id in members {
            if Some(*id) == except {
                continue;
            }
            if let Some(member) = self.members.get(id)
                && member
                    .outbound
                    .try_send(Outbound::Text(message.clone()))
                    .is_err()
            {
                too_slow.push(*id);
            }
        }
        for id in too_slow {
            self.remove(id, LeaveReason::Removed, None);
        }
    }
}

fn info(id: ParticipantId, member: &Member) -> ParticipantInfo {
    ParticipantInfo {
        id,
        name: member.name.clone(),
        publications: member.publications.clone(),
    }
}
