//! Wire types shared by every part of the product: the browser client, the load-test bots,
//! the signaling server and the SFU.
//!
//! This crate is a leaf: it depends on serde only, so that clients can use it without pulling
//! in the media engine. The JSON shapes are documented in `docs/protocol.md`; that document and
//! these types change together.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The protocol version a client and server must share. A client that joins with another
/// version is refused with [`ErrorCode::VersionMismatch`].
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest WebSocket text message the server accepts, in bytes. An SDP offer for a room with
/// a few dozen publications fits comfortably; anything bigger is refused before parsing.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Largest number of m-lines accepted in one offer.
pub const MAX_MEDIA_SECTIONS: usize = 128;

/// Most entries in one [`ClientMessage::VideoSizes`].
pub const MAX_VIDEO_SIZES: usize = 128;

/// Longest end-to-end encryption public key in `join` (a P-256 point, base64url: 87).
pub const MAX_E2EE_PUBLIC_KEY: usize = 256;

/// Longest wrapped key in one [`E2eeKeyDelivery`].
pub const MAX_E2EE_BLOB: usize = 2048;

/// Most deliveries in one [`ClientMessage::E2eeKeys`]: a sender's new key for 256 recipients
/// in one message (about 42 KB, within [`MAX_MESSAGE_BYTES`]), which the server splits, so
/// that a rekey for thousands is a handful of messages (docs/e2ee.md).
pub const MAX_E2EE_DELIVERIES: usize = 256;

/// Most simulcast layers declared for one publication.
pub const MAX_SIMULCAST_LAYERS: usize = 3;

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

numeric_id!(
    /// A participant: one signaling session and its one WebRTC transport.
    ParticipantId,
    "PA"
);
numeric_id!(
    /// A publication: one track a participant sends to the SFU.
    PublicationId,
    "PU"
);

/// A room's name, as chosen by whoever created it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomId(pub String);

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

/// What a participant may do in a room. The server decides every permission from this, never
/// from what a client claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the meeting: admits, promotes, mutes, removes, locks.
    Host,
    /// Publishes, including screen share; seen by everyone.
    Presenter,
    /// Publishes microphone and camera; may raise a hand.
    Participant,
    /// Only receives; seen individually by hosts only.
    Viewer,
}

impl Role {
    /// The name used on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Presenter => "presenter",
            Role::Participant => "participant",
            Role::Viewer => "viewer",
        }
    }

    /// The inverse of [`Role::as_str`].
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "host" => Some(Role::Host),
            "presenter" => Some(Role::Presenter),
            "participant" => Some(Role::Participant),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// A participant's connection quality, from the loss and round-trip time on its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Good,
    Fair,
    Poor,
}

impl Quality {
    /// The name used on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Fair => "fair",
            Quality::Poor => "poor",
        }
    }
}

/// Where a published track comes from, so that clients can lay it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    #[default]
    Microphone,
    Camera,
    Screen,
}

/// A publication as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicationInfo {
    pub id: PublicationId,
    pub participant_id: ParticipantId,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub muted: bool,
    /// The codec the publisher sends, as a WebRTC mime type (`audio/opus`, `video/VP8`,
    /// `video/H264`): the first its m-line negotiated. A subscriber whose m-line cannot
    /// receive it is refused with [`ErrorCode::CodecUnsupported`]. Absent from servers that
    /// predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// Simulcast video: the layers the publisher declared, lowest first. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<SimulcastLayer>,
}

/// A participant as other participants see it. Its `Debug` hides `e2ee_key` (see
/// [`REDACTED_FIELDS`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub name: String,
    pub role: Role,
    /// The name of the site it joined for, when invited as a site.
    pub site: Option<String>,
    pub hand_raised: bool,
    /// Not measured yet when `None`.
    pub quality: Option<Quality>,
    pub publications: Vec<PublicationInfo>,
    /// The public key its client published for end-to-end encryption, to wrap media keys
    /// to. The server relays it and never uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2ee_key: Option<String>,
}

/// One wrapped media key for one recipient: opaque to the server, which only relays it. Its
/// `Debug` hides the blob.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2eeKeyDelivery {
    pub participant_id: ParticipantId,
    pub blob: String,
}

/// Fields whose values `Debug` never shows, wherever they appear in a message: join tokens and
/// `resume` secrets (which let their holder in), end-to-end encryption public keys and wrapped
/// media keys. A log, a panic message or a test failure may print a message; none may print
/// these (docs/e2ee.md). Only their length is shown.
pub const REDACTED_FIELDS: &[&str] = &["token", "resume", "e2ee_key", "blob"];

/// Writes `value` for `Debug` as its wire JSON (fields sorted by name), prefixed by `name` and
/// a message's `type`, with the values of [`REDACTED_FIELDS`] replaced by their length. The
/// wire form is used because it names every field the way the protocol document does, and a
/// field added later is covered by its name.
fn debug_redacted<T: Serialize>(name: &str, value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    fn redact(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(fields) => {
                for (field, value) in fields.iter_mut() {
                    if REDACTED_FIELDS.contains(&field.as_str()) && !value.is_null() {
                        let chars = value.as_str().map_or(0, |s| s.chars().count());
                        *value = serde_json::Value::String(format!("<redacted: {chars} chars>"));
                    } else {
                        redact(value);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
            _ => {}
        }
    }
    match serde_json::to_value(value) {
        Ok(mut json) => {
            redact(&mut json);
            match json
                .as_object_mut()
                .and_then(|fields| fields.remove("type"))
            {
                Some(serde_json::Value::String(kind)) => write!(f, "{name}::{kind} {json}"),
                _ => write!(f, "{name} {json}"),
            }
        }
        // These types always serialize; were one not to, nothing of it is shown.
        Err(_) => write!(f, "{name} {{..}}"),
    }
}

macro_rules! redacted_debug {
    ($($name:ident),+) => {
        $(
            impl fmt::Debug for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    debug_redacted(stringify!($name), self, f)
                }
            }
        )+
    };
}

redacted_debug!(
    ParticipantInfo,
    E2eeKeyDelivery,
    ClientMessage,
    ServerMessage
);

/// Whether a room lets people in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomStatus {
    /// A host opened it (or its scheduled start came): arrivals enter without waiting.
    pub open: bool,
    /// While locked, arrivals other than hosts wait in the lobby.
    pub locked: bool,
}

/// Aggregates everyone receives instead of one message per viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomCounts {
    /// Admitted participants, viewers included.
    pub present: u32,
    pub viewers: u32,
    pub lobby: u32,
    pub hands_raised: u32,
}

/// Someone waiting in the lobby, as hosts see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LobbyEntry {
    pub participant_id: ParticipantId,
    pub name: String,
    pub site: Option<String>,
}

/// Why a participant waits in the lobby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LobbyReason {
    /// No host has opened the room yet (or its scheduled start has not come).
    NotOpen,
    /// A host locked the room.
    Locked,
}

/// Metadata for a track the client sends, keyed by the m-line's mid in the same offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishTrack {
    pub mid: String,
    #[serde(default)]
    pub source: TrackSource,
    /// Simulcast layers of this m-line, lowest quality first (empty: one layer). The rids
    /// are those of the offer's `a=rid` lines; the sizes let the server pick, per
    /// subscriber, the smallest layer that fills the tile it is shown in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<SimulcastLayer>,
}

/// One simulcast encoding of a published video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulcastLayer {
    pub rid: String,
    pub width: u32,
    pub height: u32,
}

/// The size, in device pixels, at which a client shows one subscribed video. `0 × 0` means
/// the video is not visible (hidden tile, background tab), so it need not be sent at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSize {
    pub publication_id: PublicationId,
    pub width: u32,
    pub height: u32,
}

/// A receive-only m-line in the client's offer that should carry another participant's
/// publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeTrack {
    pub mid: String,
    pub publication_id: PublicationId,
}

/// Messages a client sends to the server. Its `Debug` hides secrets and keys (see
/// [`REDACTED_FIELDS`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on a socket. With `token`, the room, name and role come from the token;
    /// without one (servers started with `--open-rooms` only), from `room`, `name` and `role`.
    Join {
        protocol_version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Open rooms only: `participant` (the default) or `viewer`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        /// The secret from an earlier `joined`, to take over one's own earlier connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
        /// This device's public key for end-to-end encryption (base64url, at most
        /// [`MAX_E2EE_PUBLIC_KEY`] characters), shown to others in `participant.e2ee_key`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        e2ee_key: Option<String>,
        /// In a cluster: the node that should carry this participant's media, as the
        /// [`ServerMessage::Redirect`] that sent the client here said (the node it first
        /// reached, near it). A hint: a node that is not a live member is ignored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media: Option<String>,
    },
    /// An SDP offer. The client always offers and the server always answers, so there is
    /// never glare. `publish` labels the client's send m-lines, `subscribe` maps its
    /// receive-only m-lines to publications.
    Offer {
        sdp: String,
        #[serde(default)]
        publish: Vec<PublishTrack>,
        #[serde(default)]
        subscribe: Vec<SubscribeTrack>,
    },
    /// A trickled ICE candidate (`candidate:` line as in the browser's `RTCIceCandidate`).
    /// An empty string means end of candidates.
    Candidate { candidate: String },
    /// The client muted or unmuted one of its own publications.
    SetMuted {
        publication_id: PublicationId,
        muted: bool,
    },
    /// The sizes at which the client shows its subscribed videos (at most
    /// [`MAX_VIDEO_SIZES`]; publications not listed keep their last size). Sent when a tile
    /// is resized, hidden or shown.
    VideoSizes { sizes: Vec<VideoSize> },
    /// Media keys wrapped for other participants of the room (at most
    /// [`MAX_E2EE_DELIVERIES`], each blob at most [`MAX_E2EE_BLOB`] characters). Each is
    /// relayed to its recipient as [`ServerMessage::E2eeKey`]; the server cannot read them.
    E2eeKeys { keys: Vec<E2eeKeyDelivery> },
    /// Raise or lower one's hand.
    RaiseHand { raised: bool },
    /// Host: let one lobby member in.
    Admit { participant_id: ParticipantId },
    /// Host: let everyone now in the lobby in.
    AdmitAll {},
    /// Host: open the room; the lobby is admitted and later arrivals enter directly.
    OpenRoom {},
    /// Host: lock or unlock the room.
    LockRoom { locked: bool },
    /// Host: change someone else's role.
    SetRole {
        participant_id: ParticipantId,
        role: Role,
    },
    /// Host: mute someone's microphone (`audio`) or camera and screen (`video`).
    MuteParticipant {
        participant_id: ParticipantId,
        kind: MediaKind,
    },
    /// Host: remove someone, present or waiting; their invitation is revoked.
    RemoveParticipant { participant_id: ParticipantId },
    /// Host: start recording the meeting.
    StartRecording {},
    /// Host: stop recording the meeting.
    StopRecording {},
    /// Application keepalive; answered with [`ServerMessage::Pong`]. (Braced, like `Leave`,
    /// so that unknown fields are refused for it too.)
    Ping {},
    /// The participant leaves; the server closes the socket after telling the others.
    Leave {},
}

/// Why a participant left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It said goodbye.
    Left,
    /// Its signaling socket closed or its media stopped and it did not come back in time.
    TimedOut,
    /// The server removed it (shutdown, or a protocol violation).
    Removed,
}

/// Messages the server sends to a client. Its `Debug` hides secrets and keys (see
/// [`REDACTED_FIELDS`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// Answer to [`ClientMessage::Join`] when the participant must wait for a host or for
    /// the scheduled start. [`ServerMessage::Joined`] follows on admission.
    Lobby {
        participant_id: ParticipantId,
        room: RoomId,
        title: String,
        /// Milliseconds since the Unix epoch.
        starts_at: Option<i64>,
        reason: LobbyReason,
        /// The meeting's media is end-to-end encrypted (docs/e2ee.md), so a client can get
        /// its keys ready while it waits. Absent from older servers: not encrypted.
        #[serde(default)]
        e2ee: bool,
    },
    /// Admission: who I am and who is already here (those my role sees).
    Joined {
        protocol_version: u32,
        room: RoomId,
        title: String,
        participant_id: ParticipantId,
        role: Role,
        participants: Vec<ParticipantInfo>,
        room_state: RoomStatus,
        counts: RoomCounts,
        /// A secret for [`ClientMessage::Join`]'s `resume` after a network blip.
        resume: String,
        /// Every frame is end-to-end encrypted in this room (docs/e2ee.md): the client must
        /// encrypt what it sends and decrypt what it receives. Fixed while the room is open.
        /// Absent from older servers: not encrypted.
        #[serde(default)]
        e2ee: bool,
    },
    /// Answer to [`ClientMessage::Offer`].
    Answer {
        sdp: String,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: ParticipantId,
        reason: LeaveReason,
    },
    /// Role, raised hand or connection quality changed.
    ParticipantUpdated {
        participant: ParticipantInfo,
    },
    /// A host changed this participant's role.
    RoleChanged {
        role: Role,
    },
    /// The room was opened, locked or unlocked.
    RoomState {
        open: bool,
        locked: bool,
    },
    /// Aggregates, at most once a second per room.
    RoomCounts(RoomCounts),
    /// Hosts only: who waits in the lobby.
    LobbyChanged {
        waiting: Vec<LobbyEntry>,
    },
    /// Whether the meeting is being recorded; sent to everyone when it starts or stops, and
    /// in `joined`'s wake to arrivals while a recording runs. `error` says why a recording
    /// stopped by itself (disk full, write error).
    RecordingState {
        active: bool,
        recording_id: Option<String>,
        /// Milliseconds since the Unix epoch.
        started_at: Option<i64>,
        error: Option<String>,
    },
    /// A media key another participant wrapped for this one; `from` is set by the server.
    E2eeKey {
        from: ParticipantId,
        blob: String,
    },
    /// The participant whose voice is loudest now (`None`: nobody speaks). Sent on change,
    /// to those who see that participant.
    ActiveSpeaker {
        participant_id: Option<ParticipantId>,
    },
    /// To a publisher: which simulcast layers of one of its publications anyone watches,
    /// by index in its `layers` (lowest first). The client pauses the others.
    SimulcastLayers {
        publication_id: PublicationId,
        active: Vec<bool>,
    },
    /// A participant published a track; subscribe to it by offering a receive-only m-line.
    PublicationAdded {
        publication: PublicationInfo,
    },
    /// A publication ended; its receive m-line can be reused or stopped.
    PublicationRemoved {
        publication_id: PublicationId,
        participant_id: ParticipantId,
    },
    MuteChanged {
        publication_id: PublicationId,
        participant_id: ParticipantId,
        muted: bool,
    },
    /// The media transport of this participant is connected (ICE and DTLS done).
    MediaConnected,
    Pong,
    /// Answer to [`ClientMessage::Join`] on a node of a cluster that does not hold the room:
    /// the meeting is held by the node at `url` (its `https://host:port` origin). The client
    /// sends the same join to `wss://…/ws` there; the server closes this socket.
    Redirect {
        url: String,
        /// The node that sent the client: its media is carried there (see
        /// [`ClientMessage::Join`]'s `media`), so a site keeps its media on the node near it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media: Option<String>,
    },
    /// Sent after the answer to [`ClientMessage::Join`] on a node of a cluster: the origins
    /// (`https://host:port`) of the cluster's nodes, this one first, for the client to try
    /// if this node stops answering.
    Nodes {
        urls: Vec<String>,
    },
    /// A request was refused. The connection stays open unless the code says otherwise.
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Stable error codes. Clients switch on these; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or JSON of the wrong shape.
    BadMessage,
    /// A message type this server does not know.
    UnknownType,
    /// Over [`MAX_MESSAGE_BYTES`]. The socket is closed.
    MessageTooLarge,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// The client speaks another protocol version. The socket is closed.
    VersionMismatch,
    /// A request that needs a joined session arrived first.
    NotJoined,
    /// A second join on the same socket.
    AlreadyJoined,
    /// The room name or display name is empty or too long.
    InvalidName,
    /// The room has reached its participant limit.
    RoomFull,
    /// The SDP offer could not be parsed or negotiated.
    BadSdp,
    /// A candidate line could not be parsed.
    BadCandidate,
    /// The publication named does not exist in this room or is not this participant's.
    UnknownPublication,
    /// Too many messages in too short a time.
    RateLimited,
    /// The media server could not serve the request.
    MediaUnavailable,
    /// A join without a token on a server that admits invitees only. The socket is closed.
    TokenRequired,
    /// The join token is malformed, badly signed, expired, not yet valid, for another room,
    /// revoked, or its meeting was cancelled. The socket is closed.
    InvalidToken,
    /// The invitee is already present and `resume` does not match. The socket is closed.
    AlreadyConnected,
    /// The sender's role does not allow the request.
    Forbidden,
    /// A request from someone still waiting in the lobby.
    NotAdmitted,
    /// A host request naming someone not in this room.
    UnknownParticipant,
    /// A host removed this participant. The socket is closed.
    Removed,
    /// The meeting was cancelled or the server is stopping. The socket is closed.
    RoomClosed,
    /// No `join` arrived within the deadline after the socket opened. The socket is closed.
    JoinTimeout,
    /// The server is stopping (a restart, an upgrade): reconnect, to it when it is back or to
    /// another node. The socket is closed.
    ServerStopping,
    /// A subscription's m-line cannot receive its publication's codec (the message names the
    /// codec and the publication); the m-line stays idle. Offer the codec on that m-line.
    CodecUnsupported,
    /// Media arrived on this participant's transport that matches none of its m-lines (no
    /// `a=ssrc`, no mid or rid header extension, no payload type unique to one m-line). Told
    /// once per transport; such packets are dropped and counted.
    UnroutableMedia,
}

impl ErrorCode {
    /// Whether the server closes the socket after sending this error.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::MessageTooLarge
                | ErrorCode::VersionMismatch
                | ErrorCode::TokenRequired
                | ErrorCode::InvalidToken
                | ErrorCode::AlreadyConnected
                | ErrorCode::Removed
                | ErrorCode::RoomClosed
                | ErrorCode::JoinTimeout
                | ErrorCode::ServerStopping
        )
    }
}

/// Every client message type, for telling "unknown type" apart from "bad shape".
pub const CLIENT_MESSAGE_TYPES: &[&str] = &[
    "join",
    "offer",
    "candidate",
    "set_muted",
    "video_sizes",
    "e2ee_keys",
    "raise_hand",
    "admit",
    "admit_all",
    "open_room",
    "lock_room",
    "set_role",
    "mute_participant",
    "remove_participant",
    "start_recording",
    "stop_recording",
    "ping",
    "leave",
];

/// Why a client message was refused, before any state was touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
}

/// Decodes one client text message, classifying failures into stable codes.
pub fn decode_client_message(text: &str) -> Result<ClientMessage, DecodeError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError {
            code: ErrorCode::MessageTooLarge,
            message: format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                text.len()
            ),
        });
    }
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(message) => Ok(message),
        Err(err) => {
            // Tell an unknown type apart from a known type with a bad shape, so that an old
            // server talking to a new client says something useful.
            let kind = serde_json::from_str::<TypeOnly>(text).ok().map(|t| t.kind);
            match kind {
                Some(kind) if !CLIENT_MESSAGE_TYPES.contains(&kind.as_str()) => Err(DecodeError {
                    code: ErrorCode::UnknownType,
                    message: format!("unknown message type {kind:?}"),
                }),
                _ => Err(DecodeError {
                    code: ErrorCode::BadMessage,
                    message: format!("malformed message: {err}"),
                }),
            }
        }
    }
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_round_trips() {
        let text = r#"{"type":"join","protocol_version":2,"room":"r1","name":"Hà Nội"}"#;
        let message = decode_client_message(text).expect("valid join");
        assert_eq!(
            message,
            ClientMessage::Join {
                protocol_version: 2,
                token: None,
                room: Some(RoomId("r1".into())),
                name: Some("Hà Nội".into()),
                role: None,
                resume: None,
                e2ee_key: None,
                media: None,
            }
        );
        let text = r#"{"type":"join","protocol_version":2,"token":"a.b.c"}"#;
        assert!(matches!(
            decode_client_message(text),
            Ok(ClientMessage::Join {
                token: Some(_),
                room: None,
                ..
            })
        ));
    }

    #[test]
    fn counts_are_flat_on_the_wire() {
        let text = serde_json::to_string(&ServerMessage::RoomCounts(RoomCounts {
            present: 3,
            viewers: 2,
            lobby: 1,
            hands_raised: 0,
        }))
        .expect("serializable");
        assert_eq!(
            text,
            r#"{"type":"room_counts","present":3,"viewers":2,"lobby":1,"hands_raised":0}"#
        );
    }

    #[test]
    fn unknown_type_is_told_apart_from_bad_shape() {
        let unknown = decode_client_message(r#"{"type":"teleport"}"#).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::UnknownType);
        let bad = decode_client_message(r#"{"type":"join","room":5}"#).unwrap_err();
        assert_eq!(bad.code, ErrorCode::BadMessage);
        let not_json = decode_client_message("\u{0}garbage").unwrap_err();
        assert_eq!(not_json.code, ErrorCode::BadMessage);
        let extra = decode_client_message(r#"{"type":"ping","admin":true}"#).unwrap_err();
        assert_eq!(extra.code, ErrorCode::BadMessage);
    }

    #[test]
    fn oversized_is_refused_before_parsing() {
        let text = format!(
            r#"{{"type":"ping","x":"{}"}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        let err = decode_client_message(&text).unwrap_err();
        assert_eq!(err.code, ErrorCode::MessageTooLarge);
        assert!(err.code.is_fatal());
    }

    #[test]
    fn deep_nesting_is_a_bad_message_not_a_crash() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = decode_client_message(&text[..MAX_MESSAGE_BYTES.min(text.len())]).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadMessage);
    }

    #[test]
    fn e2ee_is_always_sent_and_optional_to_read() {
        let joined = ServerMessage::Joined {
            protocol_version: PROTOCOL_VERSION,
            room: RoomId("r".into()),
            title: "t".into(),
            participant_id: ParticipantId(1),
            role: Role::Participant,
            participants: Vec::new(),
            room_state: RoomStatus::default(),
            counts: RoomCounts::default(),
            resume: "s".into(),
            e2ee: false,
        };
        let text = serde_json::to_string(&joined).expect("serializable");
        assert!(text.contains(r#""e2ee":false"#), "{text}");
        let lobby = ServerMessage::Lobby {
            participant_id: ParticipantId(1),
            room: RoomId("r".into()),
            title: "t".into(),
            starts_at: None,
            reason: LobbyReason::NotOpen,
            e2ee: true,
        };
        let text = serde_json::to_string(&lobby).expect("serializable");
        assert!(text.contains(r#""e2ee":true"#), "{text}");
        // What a server without end-to-end encryption sends still parses, as not encrypted.
        let old = r#"{"type":"joined","protocol_version":2,"room":"r","title":"t","participant_id":1,"role":"participant","participants":[],"room_state":{"open":true,"locked":false},"counts":{"present":1,"viewers":0,"lobby":0,"hands_raised":0},"resume":"s"}"#;
        assert!(matches!(
            serde_json::from_str::<ServerMessage>(old),
            Ok(ServerMessage::Joined { e2ee: false, .. })
        ));
        let old = r#"{"type":"lobby","participant_id":1,"room":"r","title":"t","starts_at":null,"reason":"locked"}"#;
        assert!(matches!(
            serde_json::from_str::<ServerMessage>(old),
            Ok(ServerMessage::Lobby { e2ee: false, .. })
        ));
    }

    #[test]
    fn debug_never_shows_keys_blobs_tokens_or_resume_secrets() {
        let secrets = [
            "TOKEN-SECRET",
            "RESUME-SECRET",
            "PUBLIC-KEY",
            "WRAPPED-BLOB",
        ];
        let messages: Vec<Box<dyn fmt::Debug>> = vec![
            Box::new(ClientMessage::Join {
                protocol_version: PROTOCOL_VERSION,
                token: Some("TOKEN-SECRET".into()),
                room: None,
                name: None,
                role: None,
                resume: Some("RESUME-SECRET".into()),
                e2ee_key: Some("PUBLIC-KEY".into()),
                media: None,
            }),
            Box::new(ClientMessage::E2eeKeys {
                keys: vec![E2eeKeyDelivery {
                    participant_id: ParticipantId(7),
                    blob: "WRAPPED-BLOB".into(),
                }],
            }),
            Box::new(ServerMessage::E2eeKey {
                from: ParticipantId(7),
                blob: "WRAPPED-BLOB".into(),
            }),
            Box::new(ServerMessage::Joined {
                protocol_version: PROTOCOL_VERSION,
                room: RoomId("r".into()),
                title: "t".into(),
                participant_id: ParticipantId(1),
                role: Role::Host,
                participants: vec![ParticipantInfo {
                    id: ParticipantId(7),
                    name: "Xã A".into(),
                    role: Role::Participant,
                    site: None,
                    hand_raised: false,
                    quality: None,
                    publications: Vec::new(),
                    e2ee_key: Some("PUBLIC-KEY".into()),
                }],
                room_state: RoomStatus::default(),
                counts: RoomCounts::default(),
                resume: "RESUME-SECRET".into(),
                e2ee: true,
            }),
        ];
        for message in &messages {
            let shown = format!("{message:?}");
            for secret in secrets {
                assert!(!shown.contains(secret), "{secret} shown in {shown}");
            }
            assert!(shown.contains("<redacted: "), "{shown}");
        }
        // Everything else is still there to debug with.
        let shown = format!("{:?}", messages[3]);
        for visible in ["ServerMessage::joined {", "Xã A", r#""e2ee":true"#] {
            assert!(shown.contains(visible), "{visible} missing from {shown}");
        }
        let shown = format!(
            "{:?}",
            E2eeKeyDelivery {
                participant_id: ParticipantId(7),
                blob: "WRAPPED-BLOB".into(),
            }
        );
        assert_eq!(
            shown,
            r#"E2eeKeyDelivery {"blob":"<redacted: 12 chars>","participant_id":7}"#
        );
    }

    #[test]
    fn server_messages_are_tagged() {
        let text = serde_json::to_string(&ServerMessage::Error {
            code: ErrorCode::BadSdp,
            message: "no fingerprint".into(),
        })
        .expect("serializable");
        assert_eq!(
            text,
            r#"{"type":"error","code":"bad_sdp","message":"no fingerprint"}"#
        );
    }
}
