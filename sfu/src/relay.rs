//! What media workers tell each other about publications: the mirrored publication.
//!
//! A room spans workers (threads, each with its own [`crate::Engine`] and its own
//! participants). A publication is owned by its publisher's worker, which decrypts each packet
//! once, reads its layer, keyframe and audio level, keeps the GOP cache and forwards it to its
//! own subscribers. Every other worker holds a *mirror* of it: the same publication with its
//! own subscriber list, fed with the owner's packets ([`Relay::Packet`]: clear header fields
//! and the shared payload) while it has subscribers or records, once per worker whatever the
//! number of subscribers there. What only the owner can do flows back: keyframe requests and
//! the layers the mirror's subscribers want (so that unwatched layers pause at the publisher).
//!
//! Worker 0 also coordinates each room: every audio publication is mirrored there, so it
//! hears every level, picks the active speaker and the loudest streams ([`Relay::Audible`] to
//! the others), and it records rooms from its mirrors.
//!
//! These messages are plain data, so that the same mirror can later be fed from another
//! server instead of another thread.

use std::sync::Arc;
use std::time::Instant;

use protocol::{MediaKind, ParticipantId, PublicationId, RoomId, TrackSource};
use str0m::format::PayloadParams;
use str0m::media::{Mid, Pt, Rid};
use str0m::rtp::VideoOrientation;

use crate::codec::VideoCodec;

/// Where a relay comes from or goes to: a media worker of this server, from 0 (the room
/// coordinator) to the worker count, or a *link* to another server of a cluster, from
/// [`FIRST_LINK`] on. Worker 0 is the server's gateway: only it exchanges relays over links.
pub type WorkerId = u16;

/// The most workers and links together (a bit per worker or link marks who mirrors a
/// publication).
pub const MAX_WORKERS: u16 = 64;

/// The most media workers one server runs.
pub const MAX_LOCAL_WORKERS: u16 = 32;

/// The first link to another server: links are [`FIRST_LINK`]..[`MAX_WORKERS`].
pub const FIRST_LINK: WorkerId = MAX_LOCAL_WORKERS;

/// Whether `id` names a link to another server rather than a worker of this one.
pub fn is_link(id: WorkerId) -> bool {
    (FIRST_LINK..MAX_WORKERS).contains(&id)
}

/// One packet as the subscriber side needs it: its place in its publication, its clear header
/// fields and the shared payload, read once however many subscribers (and workers) it goes to.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    /// The source stream (the layer's SSRC at the publisher).
    pub ssrc: u32,
    /// Extended sequence number and RTP time at the source.
    pub seq_no: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// The publisher's payload type.
    pub pt: Pt,
    /// When it reached the server.
    pub arrival: Instant,
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation: Option<VideoOrientation>,
    pub payload: Arc<[u8]>,
    /// The simulcast layer (0 for plain streams) and whether it starts a keyframe.
    pub layer: u8,
    pub keyframe: bool,
    /// Video: the codec; `None` for audio.
    pub codec: Option<VideoCodec>,
}

/// What a mirror needs to know of a publication.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MirrorInfo {
    pub id: PublicationId,
    pub owner: ParticipantId,
    pub room: RoomId,
    pub mid: Mid,
    pub kind: MediaKind,
    pub source: TrackSource,
    /// Its simulcast layers, lowest first: rid and declared size.
    pub layers: Vec<(Option<Rid>, u32, u32)>,
    /// The publisher's payload types, to map onto each subscriber's.
    pub params: Vec<PayloadParams>,
    pub muted: bool,
}

/// One message between workers.
#[derive(Debug, Clone)]
pub enum Relay {
    /// Owner → every other worker: a publication exists (or changed: its layers, its
    /// payload types).
    Publication(Box<MirrorInfo>),
    /// Owner → every other worker: it ended.
    PublicationEnded(PublicationId),
    /// Owner → every other worker.
    Muted {
        publication: PublicationId,
        muted: bool,
    },
    /// Owner → a mirror that wants it: one packet. `cached`: from the owner's GOP cache, sent
    /// when the mirror starts wanting the publication, so that its own cache can start its
    /// subscribers at once; it fills the cache and is not forwarded.
    Packet {
        publication: PublicationId,
        packet: MediaPacket,
        cached: bool,
    },
    /// Mirror → owner: send me the publication's packets (or stop).
    Want {
        publication: PublicationId,
        want: bool,
    },
    /// Mirror → owner: the simulcast layers its subscribers receive or want (bit per layer).
    LayerWants {
        publication: PublicationId,
        layers: u8,
    },
    /// Mirror → owner: its subscribers wait for a keyframe of these layers (the owner's
    /// throttle decides when the publisher is asked).
    KeyframeRequest {
        publication: PublicationId,
        layers: u8,
    },
    /// Coordinator → every other worker: a room's active speaker changed.
    Speaker {
        room: RoomId,
        participant: Option<ParticipantId>,
    },
    /// Coordinator → every other worker: whether an audio publication is among its room's
    /// loudest, so forwarded.
    Audible {
        publication: PublicationId,
        audible: bool,
    },
}
