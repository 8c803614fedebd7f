//! The command/event interface between signaling and the SFU.
//!
//! Signaling never touches RTP: it sends [`SfuCommand`]s and receives [`SfuEvent`]s. Both are
//! plain serializable data, so the in-process channel used today can become a network link to a
//! separate SFU process without changing either side.

use protocol::{
    ErrorCode, MediaKind, ParticipantId, PublicationId, PublishTrack, Quality, RoomId,
    SubscribeTrack, TrackSource, VideoSize,
};
use serde::{Deserialize, Serialize};

/// A request from signaling to the SFU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum SfuCommand {
    /// Creates the participant's transport. Its media can flow after its first offer.
    AddParticipant {
        participant: ParticipantId,
        room: RoomId,
    },
    /// The participant's SDP offer; answered by [`SfuEvent::Answer`] or [`SfuEvent::Refused`].
    Offer {
        participant: ParticipantId,
        sdp: String,
        publish: Vec<PublishTrack>,
        subscribe: Vec<SubscribeTrack>,
    },
    /// A trickled remote ICE candidate.
    RemoteCandidate {
        participant: ParticipantId,
        candidate: String,
    },
    /// Stops or resumes forwarding one of the participant's own publications.
    SetMuted {
        participant: ParticipantId,
        publication: PublicationId,
        muted: bool,
    },
    /// Tears the participant's transport down, with its publications and subscriptions.
    RemoveParticipant {
        participant: ParticipantId,
    },
    /// Stops forwarding these publications to the participant now, whatever its last offer
    /// asked (it may no longer see their owners after a role change); its m-lines stay idle.
    Unsubscribe {
        participant: ParticipantId,
        publications: Vec<PublicationId>,
    },
    /// Starts recording a room: every publication's packets go to the recording tap (see
    /// [`crate::recording`]) until [`SfuCommand::StopRecording`]. Video publishers are asked
    /// for a keyframe so that each video file starts on one.
    StartRecording {
        room: RoomId,
        recording_id: String,
        /// The room's media is end-to-end encrypted. The engine forwards and records frames
        /// alike either way; it only hands this on to the recorder in
        /// [`crate::recording::RecordedMedia::Started`], which must then not decode audio.
        e2ee: bool,
    },
    StopRecording {
        room: RoomId,
    },
    /// Allows or forbids the participant to publish. Forbidding ends its publications at once
    /// and ignores the send m-lines of its later offers; a viewer is added then forbidden.
    SetPublishing {
        participant: ParticipantId,
        allowed: bool,
    },
    /// The sizes at which the participant shows its subscribed videos; picks each
    /// subscription's simulcast layer, and stops hidden ones (`0 × 0`).
    SetVideoSizes {
        participant: ParticipantId,
        sizes: Vec<VideoSize>,
    },
    /// Ends the SFU thread: every transport is dropped and the media socket closed. The
    /// handle then reports the SFU stopped, as after any failure of that thread.
    Shutdown,
}

impl SfuCommand {
    /// The participant the command is about; `None` for room-wide commands.
    pub fn participant(&self) -> Option<ParticipantId> {
        Some(match self {
            SfuCommand::StartRecording { .. }
            | SfuCommand::StopRecording { .. }
            | SfuCommand::Shutdown => return None,
            SfuCommand::AddParticipant { participant, .. }
            | SfuCommand::Offer { participant, .. }
            | SfuCommand::RemoteCandidate { participant, .. }
            | SfuCommand::SetMuted { participant, .. }
            | SfuCommand::RemoveParticipant { participant }
            | SfuCommand::SetPublishing { participant, .. }
            | SfuCommand::SetVideoSizes { participant, .. }
            | SfuCommand::Unsubscribe { participant, .. } => *participant,
        })
    }
}

/// A publication as the SFU announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationAnnouncement {
    pub id: PublicationId,
    pub kind: MediaKind,
    pub source: TrackSource,
    /// The codec it is sent in, as a WebRTC mime type (see [`crate::codec::mime_type`]).
    pub codec: Option<String>,
    /// Simulcast: the layers its publisher declared, lowest first.
    pub layers: Vec<protocol::SimulcastLayer>,
}

impl PublicationAnnouncement {
    /// What clients are told of it: published by `participant`, not muted yet.
    pub fn info(&self, participant: ParticipantId) -> protocol::PublicationInfo {
        protocol::PublicationInfo {
            id: self.id,
            participant_id: participant,
            kind: self.kind,
            source: self.source,
            muted: false,
            codec: self.codec.clone(),
            layers: self.layers.clone(),
        }
    }
}

/// Something the SFU tells signaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SfuEvent {
    /// The SDP answer to the participant's last offer.
    Answer {
        participant: ParticipantId,
        sdp: String,
    },
    /// A command about this participant was refused; nothing changed.
    Refused {
        participant: ParticipantId,
        code: ErrorCode,
        message: String,
    },
    /// The participant started sending a new track.
    PublicationAdded {
        participant: ParticipantId,
        publication: PublicationAnnouncement,
    },
    /// The participant stopped sending a track (m-line stopped or participant removed).
    PublicationRemoved {
        participant: ParticipantId,
        publication: PublicationId,
    },
    /// ICE and DTLS completed: media can flow.
    MediaConnected { participant: ParticipantId },
    /// The transport stopped receiving consent (no STUN from the client) and was closed.
    MediaDisconnected { participant: ParticipantId },
    /// The participant's transport failed on what it sent and was closed; its publications
    /// ended. Nobody else is affected. Its session should be closed, with the reason.
    TransportFailed {
        participant: ParticipantId,
        failure: TransportFailure,
    },
    /// The participant's connection quality (loss and round-trip time on its transport)
    /// crossed a threshold. Sent on change only.
    QualityChanged {
        participant: ParticipantId,
        quality: Quality,
    },
    /// The loudest speaker of a room changed (`None`: its last speaker left).
    ActiveSpeaker {
        room: RoomId,
        participant: Option<ParticipantId>,
    },
    /// A media worker stopped (a panic, a failed socket): these participants' transports
    /// are gone. Their sessions should reconnect; they are placed on another worker.
    WorkerFailed {
        worker: u16,
        participants: Vec<ParticipantId>,
    },
    /// Which simulcast layers of a publication anyone receives, by index in the layers its
    /// owner declared (lowest first). Sent on change, at most once a second per publication.
    SimulcastLayers {
        participant: ParticipantId,
        publication: PublicationId,
        active: Vec<bool>,
    },
}

/// Why the SFU closed a participant's transport on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TransportFailure {
    /// The WebRTC stack panicked on the participant's input (a hostile or broken client).
    Panicked,
    /// The DTLS handshake failed, before any media: no cipher suite or signature algorithm in
    /// common, an alert from the client, or a certificate that does not match the offer's
    /// `a=fingerprint`. `reason` says which, in the words of the DTLS stack.
    Dtls { reason: String },
}
