//! What members ask of the hub: every client message after `join`, and the host actions (admit,
//! lock, mute, role, remove), each checked against the sender's role here, whatever the client
//! claims.

use protocol::{
    ClientMessage, ErrorCode, LeaveReason, MediaKind, ParticipantId, PublicationId, Role, RoomId,
    ServerMessage, TrackSource,
};
use sfu::SfuCommand;

use crate::SECURITY;
use crate::journal::Write;

use super::fanout::{encode, too_slow_for};
use super::{Hub, Outbound, Refusal, sees};

impl Hub {
    pub(super) fn handle_message(
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
    pub(super) fn target_in_room(
        &self,
        target: ParticipantId,
        room: &RoomId,
    ) -> Result<(), Refusal> {
        match self.members.get(&target) {
            Some(m) if m.room == *room && m.admitted => Ok(()),
            _ => Err((
                ErrorCode::UnknownParticipant,
                format!("{target} is not in this room"),
            )),
        }
    }

    pub(super) fn set_muted(
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
    pub(super) fn mute_kind(&mut self, target: ParticipantId, kind: MediaKind) {
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

    pub(super) fn raise_hand(&mut self, participant: ParticipantId, raised: bool) {
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
    pub(super) fn set_role(&mut self, target: ParticipantId, new_role: Role) {
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
}

/// Refuses a list longer than the protocol allows, saying which and by how much.
pub(super) fn within_limit(
    what: &str,
    count: usize,
    limit: usize,
) -> Result<(), (ErrorCode, String)> {
    if count > limit {
        return Err((
            ErrorCode::BadMessage,
            format!("{count} {what} in one message; the limit is {limit}"),
        ));
    }
    Ok(())
}
