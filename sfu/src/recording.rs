//! The recording tap: what the engine hands to a recorder when a room is recorded.
//!
//! A recorder is just another consumer of a publication's packets, but it writes files, so
//! it must not run on the media thread. The engine queues [`RecordedMedia`] for recorded rooms
//! only (rooms not recorded pay one boolean test per packet); the driver moves the queue to a
//! bounded channel that a recorder thread drains. Payloads are shared, never copied.

use std::sync::Arc;
use std::time::Instant;

use protocol::{MediaKind, ParticipantId, PublicationId, RoomId, TrackSource};

/// The codec of a recorded track, as far as a recorder needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedCodec {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
}

/// What the engine tells a recorder, in the order it happened.
#[derive(Debug, Clone)]
pub enum RecordedMedia {
    /// Recording of a room started; tracks and packets follow.
    Started {
        room: RoomId,
        recording_id: String,
        /// The media is end-to-end encrypted: frames are ciphertext past their clear prefix.
        e2ee: bool,
        at: Instant,
    },
    /// A publication of a recorded room: present when recording started, or published since.
    Track {
        room: RoomId,
        publication: PublicationId,
        participant: ParticipantId,
        kind: MediaKind,
        source: TrackSource,
        at: Instant,
    },
    /// One RTP packet of a recorded publication, as received (before any rewriting).
    Packet {
        publication: PublicationId,
        codec: RecordedCodec,
        /// Clock rate of the RTP timestamp.
        clock_rate: u32,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: Arc<[u8]>,
        at: Instant,
    },
    /// The publication ended.
    TrackEnded { publication: PublicationId },
    /// Recording of the room stopped; nothing more of it follows.
    Stopped { room: RoomId, at: Instant },
}
