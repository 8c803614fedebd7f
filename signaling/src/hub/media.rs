//! What the SFU tells the hub (answers, publications, connection state, quality, speakers,
//! simulcast layers, failed transports and workers), relayed to the members who see it.

use protocol::{ErrorCode, LeaveReason, ServerMessage};
use sfu::{SfuEvent, TransportFailure};

use crate::SECURITY;
use crate::journal::Write;

use super::Hub;
use super::fanout::encode;

impl Hub {
    pub(super) fn handle_sfu_event(&mut self, event: SfuEvent) {
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
                let info = publication.info(participant);
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
                // Their transports died with the worker (or with the node that carried
                // them, which the cluster logged). Told why, their clients reconnect at once
                // (with their resume secret) and land on another worker.
                if worker != crate::cluster::media::CARRIER_GONE {
                    tracing::warn!(
                        worker,
                        participants = participants.len(),
                        "media worker failed"
                    );
                }
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
            SfuEvent::TransportFailed {
                participant,
                failure: TransportFailure::Panicked,
            } => {
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
            SfuEvent::TransportFailed {
                participant,
                failure: TransportFailure::Dtls { reason },
            } => {
                // Most often a client whose DTLS the server does not share (a cipher suite, a
                // certificate type) or whose certificate is not the one its offer announced.
                // Retrying cannot help, so the client is told why at once rather than left to
                // the media timeout.
                let room = self.members.get(&participant).map(|m| m.room.to_string());
                tracing::info!(room = room.as_deref(), participant = %participant, %reason, "DTLS handshake failed; removed");
                self.remove(
                    participant,
                    LeaveReason::Removed,
                    Some((
                        ErrorCode::MediaUnavailable,
                        &format!("your media connection's DTLS handshake failed: {reason}"),
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
}
