//! Admission: a checked arrival becomes a member, waits in its room's lobby or is admitted (the
//! SFU transport, `joined`, the roster), and hosts see the lobby change.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::{
    ErrorCode, LeaveReason, LobbyReason, PROTOCOL_VERSION, ParticipantId, ParticipantInfo, Role,
    RoomCounts, RoomId, RoomStatus, ServerMessage,
};
use sfu::SfuCommand;
use tokio::sync::mpsc;

use crate::journal::Write;
use crate::recording::NameUpdate;
use crate::store::{Admission, new_id, unix_ms};

use super::fanout::{counts_of, encode};
use super::{Arrival, Hub, Member, Outbound, Refusal, Room, same_secret, sees};

impl Hub {
    pub(super) fn join(
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
            media: arrival.media,
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
    pub(super) fn admit(&mut self, id: ParticipantId) -> Result<(), Refusal> {
        let Some(member) = self.members.get_mut(&id) else {
            return Err((ErrorCode::UnknownParticipant, format!("{id} is not here")));
        };
        if member.admitted {
            return Ok(());
        }
        let room_id = member.room.clone();
        if !self
            .sfu
            .add_participant(id, room_id.clone(), member.media.as_deref())
        {
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
        // The recorder is gone only when the process stops.
        let _ = self
            .names
            .send(NameUpdate::Admitted(id, member.name.clone()));
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
    pub(super) fn open_room(&mut self, room_id: &RoomId) {
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

    /// Tells the room's hosts who waits in the lobby.
    pub(super) fn lobby_changed(&mut self, room_id: &RoomId) {
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

    pub(super) fn send_lobby_to(&mut self, host: ParticipantId, room_id: &RoomId) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let message = self.lobby_message(room);
        self.send_text(host, message);
    }

    pub(super) fn lobby_message(&self, room: &Room) -> Arc<str> {
        let waiting = room
            .lobby
            .iter()
            .filter_map(|p| self.members.get(p).map(|m| m.lobby_entry(*p)))
            .collect();
        encode(&ServerMessage::LobbyChanged { waiting })
    }
}
