//! The wire format of relays between the servers of a cluster: batches of [`Relay`] sealed
//! into UDP datagrams, and opened back.
//!
//! A cluster's servers mirror each other's publications with the same [`Relay`] messages that
//! media workers exchange inside one server (see [`crate::relay`]); between servers they travel
//! over UDP. Anyone who can reach the media port can send a datagram, so the receive side is
//! untrusted input: [`RelayOpener::open`] never panics, allocates only in proportion to the
//! datagram it was given, and says what was wrong with a [`RelayWireError`].
//!
//! # Format
//!
//! ```text
//! header (12 bytes, the AEAD's associated data)
//!   b"MR"            magic, so that the media socket can tell relays from STUN, DTLS and RTP
//!   1                version
//!   0                reserved
//!   seq u64 BE       the sealer's counter, from 0, +1 per datagram
//! AES-256-GCM(plaintext), nonce = 4 zero bytes ++ seq, 16-byte tag appended
//! ```
//!
//! Keys are per direction (one [`RelaySealer`] per destination, one [`RelayOpener`] per
//! source, each pair with its own key), so a (key, sequence number) pair, hence a nonce, is
//! never used twice. The opener keeps a sliding window of the sequence numbers it has
//! accepted (the highest one and a 128-bit bitmap behind it, as SRTP does), so that a recorded
//! datagram cannot be played again.
//!
//! The plaintext is a sequence of messages `[type u8][len u16 BE][body]`:
//!
//! - type [`TYPE_PACKET`]: a [`Relay::Packet`] in binary, because it is the hot path (every
//!   media packet of a mirrored publication): publication u64, cached u8 (0 or 1), ssrc u32,
//!   seq_no u64, timestamp u32, flags u8 (bit 0 marker, bit 1 keyframe, bit 2 audio level
//!   present, bit 3 voice activity present, bit 4 voice activity, bit 5 video orientation
//!   present), payload type u8, audio level i8 (0 when absent), video orientation u8 (0 when
//!   absent), layer u8, codec u8 (0 for audio), then the payload: the rest of the body;
//! - type [`TYPE_CONTROL`]: every other variant, as JSON, because they are rare and their
//!   shapes (a publication's payload parameters above all) change with str0m.
//!
//! Every multi-byte integer is big-endian. Whatever the sealer would not send (unknown bits,
//! out-of-range values, more layers or payload types than a publication has) the opener
//! refuses as [`RelayWireError::Malformed`], and it refuses the whole datagram: nothing is
//! appended unless every message in it parsed.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use protocol::{MediaKind, ParticipantId, PublicationId, RoomId, TrackSource};
use serde::{Deserialize, Serialize};
use str0m::format::PayloadParams;
use str0m::media::{Mid, Pt, Rid};
use str0m::rtp::VideoOrientation;

use crate::codec::VideoCodec;
use crate::relay::{MediaPacket, MirrorInfo, Relay};

/// The first bytes of every relay datagram. `M` (77) lies in the range RFC 7983 leaves to
/// TURN channels, which the media socket never receives, so it cannot be mistaken for STUN
/// (0–3), DTLS (20–63) or RTP and RTCP (128–191).
pub const MAGIC: [u8; 2] = *b"MR";

/// The version of this format; a receiver refuses others rather than misread them.
pub const VERSION: u8 = 1;

/// Magic, version, reserved byte and the 64-bit sequence number.
pub const HEADER_LEN: usize = 12;

/// The AES-GCM tag appended to the ciphertext.
pub const TAG_LEN: usize = 16;

/// The plaintext size up to which a sealer packs relays into one datagram: with the header,
/// the tag and the IP and UDP headers it stays under the 1280-byte minimum MTU of IPv6, so
/// that relays are never fragmented.
pub const TARGET_DATAGRAM: usize = 1200;

/// Message type of a [`Relay::Packet`] (binary).
pub const TYPE_PACKET: u8 = 1;

/// Message type of every other [`Relay`] (JSON).
pub const TYPE_CONTROL: u8 = 2;

/// The largest JSON body of a control message: room for a publication with
/// [`MAX_PAYLOAD_PARAMS`] payload types (about 590 bytes of JSON each), small enough that a
/// hostile one costs little to parse.
pub const MAX_CONTROL_BODY: usize = 24 * 1024;

/// The most simulcast layers a mirrored publication may declare (the engine uses three).
pub const MAX_LAYERS: usize = 4;

/// The most payload types a mirrored publication may declare. The engine keeps those of its
/// own codec configuration that the publisher offered: str0m's defaults have 12 for video.
/// A sealer drops a publication beyond either bound rather than send what would be refused.
pub const MAX_PAYLOAD_PARAMS: usize = 32;

/// The longest room id a relay may name.
pub const MAX_ROOM_ID: usize = 256;

/// The fixed part of a packet message's body, before the payload.
const PACKET_FIXED: usize = 8 + 1 + 4 + 8 + 4 + 1 + 1 + 1 + 1 + 1 + 1;

/// A message's type and length.
const MESSAGE_HEADER: usize = 3;

/// Packet flags (see the module's documentation).
const FLAG_MARKER: u8 = 1 << 0;
const FLAG_KEYFRAME: u8 = 1 << 1;
const FLAG_AUDIO_LEVEL: u8 = 1 << 2;
const FLAG_VOICE_ACTIVITY: u8 = 1 << 3;
const FLAG_VOICE: u8 = 1 << 4;
const FLAG_ORIENTATION: u8 = 1 << 5;
const KNOWN_FLAGS: u8 = FLAG_MARKER
    | FLAG_KEYFRAME
    | FLAG_AUDIO_LEVEL
    | FLAG_VOICE_ACTIVITY
    | FLAG_VOICE
    | FLAG_ORIENTATION;

/// How many sequence numbers behind the highest one the replay window remembers.
const WINDOW: u64 = 128;

/// Why a datagram was refused. Each is counted apart by the caller, so that an attack
/// (forgeries, replays) is told from a misconfiguration (a wrong version) or a bug.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayWireError {
    /// Shorter than a header and a tag: cannot be a relay datagram.
    #[error("relay datagram too short")]
    TooShort,
    /// Does not start with the magic: some other protocol's datagram.
    #[error("not a relay datagram")]
    NotRelay,
    /// A version of the format this server does not speak.
    #[error("relay datagram of unknown version {0}")]
    Version(u8),
    /// Did not authenticate: a wrong key, or a datagram altered or made up on the way.
    #[error("relay datagram failed authentication")]
    Forged,
    /// Authentic but already received, or too old for the replay window to tell.
    #[error("relay datagram replayed or too old")]
    Replayed,
    /// Authentic but not something a sealer sends; says what was wrong.
    #[error("malformed relay datagram: {0}")]
    Malformed(&'static str),
}

/// Whether `data` starts like a relay datagram (magic and version), so that the media socket
/// can hand it to a [`RelayOpener`] rather than to the ICE, DTLS or RTP paths. Nothing is
/// authenticated here.
pub fn looks_like_relay(data: &[u8]) -> bool {
    data.len() >= 3 && data[..2] == MAGIC && data[2] == VERSION
}

/// The AES-256-GCM key of one direction.
fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    // `UnboundKey::new` fails only for a key of the wrong length, which the type rules out.
    let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key");
    LessSafeKey::new(unbound)
}

/// The nonce of datagram `seq`: unique per key because the sequence number never repeats.
fn nonce(seq: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// The header of datagram `seq`.
fn header(seq: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..2].copy_from_slice(&MAGIC);
    header[2] = VERSION;
    header[3] = 0;
    header[4..].copy_from_slice(&seq.to_be_bytes());
    header
}

/// Encrypts `out[HEADER_LEN..]` in place under the header at `out[..HEADER_LEN]` and appends
/// the tag.
fn seal_in_place(key: &LessSafeKey, seq: u64, out: &mut Vec<u8>) {
    let (head, plaintext) = out.split_at_mut(HEADER_LEN);
    match key.seal_in_place_separate_tag(nonce(seq), Aad::from(&*head), plaintext) {
        Ok(tag) => out.extend_from_slice(tag.as_ref()),
        // AES-GCM refuses only plaintexts of about 64 GB; a datagram is never one. Should it
        // ever fail, what goes out is nothing rather than clear text.
        Err(_) => out.clear(),
    }
}

/// Seals relays for one destination server: its key and the next sequence number.
pub struct RelaySealer {
    key: LessSafeKey,
    seq: u64,
}

impl fmt::Debug for RelaySealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("RelaySealer")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RelaySealer {
    /// A sealer for the direction this key protects; its first datagram is number 0.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            key: aead_key(key),
            seq: 0,
        }
    }

    /// Packs relays from the front of `batch` into one datagram written to `out` (cleared
    /// first, and reused so that sealing packets does not allocate once it has grown), and
    /// returns how many relays it took: at least 1 when `batch` is non-empty, 0 for an empty
    /// batch. Relays are packed while the plaintext stays within [`TARGET_DATAGRAM`], so that
    /// datagrams are not fragmented; a single relay larger than that still goes, alone.
    ///
    /// A relay the receiver would refuse (a packet body over 64 KiB, a control message over
    /// [`MAX_CONTROL_BODY`], a publication with too many layers or payload types, a room id
    /// too long) is dropped with a warning and counted as taken, rather than make the whole
    /// datagram refused. When every relay taken was dropped, `out` is left empty: there is
    /// nothing to send, and no sequence number is used.
    pub fn seal(&mut self, batch: &[Relay], out: &mut Vec<u8>) -> usize {
        out.clear();
        if batch.is_empty() {
            return 0;
        }
        out.reserve(HEADER_LEN + TARGET_DATAGRAM + TAG_LEN);
        out.extend_from_slice(&header(self.seq));
        let mut taken = 0;
        let mut messages = 0;
        for relay in batch {
            let mark = out.len();
            if messages > 0
                && let Some(len) = packet_message_len(relay)
                && mark - HEADER_LEN + len > TARGET_DATAGRAM
            {
                break;
            }
            match encode(relay, out) {
                Ok(()) => {
                    if messages > 0 && out.len() - HEADER_LEN > TARGET_DATAGRAM {
                        out.truncate(mark);
                        break;
                    }
                    messages += 1;
                }
                Err(reason) => {
                    out.truncate(mark);
                    tracing::warn!(reason, "a relay the receiver would refuse was dropped");
                }
            }
            taken += 1;
        }
        if messages == 0 {
            out.clear();
            return taken;
        }
        seal_in_place(&self.key, self.seq, out);
        // 2^64 datagrams are never sent; wrapping would reuse nonces, so it is not allowed to.
        let next = self
            .seq
            .checked_add(1)
            .expect("relay sequence numbers exhausted");
        self.seq = next;
        taken
    }
}

/// Seals an arbitrary plaintext as datagram `seq`, so that the fuzz target reaches the parser
/// behind the authentication. Not for anything else: a real sender uses [`RelaySealer`],
/// whose sequence numbers never repeat.
#[doc(hidden)]
pub fn seal_plaintext_for_fuzzing(key: &[u8; 32], seq: u64, plaintext: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&header(seq));
    out.extend_from_slice(plaintext);
    seal_in_place(&aead_key(key), seq, out);
}

/// The sliding window of accepted sequence numbers: the highest, and a bit per number behind
/// it (bit 0 is the highest itself).
#[derive(Debug, Default, Clone, Copy)]
struct ReplayWindow {
    highest: Option<u64>,
    seen: u128,
}

impl ReplayWindow {
    /// Whether `seq` may still be accepted: newer than the highest, or within the window and
    /// not seen.
    fn admits(&self, seq: u64) -> bool {
        let Some(highest) = self.highest else {
            return true;
        };
        if seq > highest {
            return true;
        }
        let behind = highest - seq;
        behind < WINDOW && self.seen & (1u128 << behind) == 0
    }

    /// Marks `seq` accepted (only once it authenticated, so that a forgery cannot move the
    /// window).
    fn accept(&mut self, seq: u64) {
        match self.highest {
            Some(highest) if seq <= highest => {
                let behind = highest - seq;
                if behind < WINDOW {
                    self.seen |= 1u128 << behind;
                }
            }
            Some(highest) => {
                let ahead = seq - highest;
                self.seen = if ahead >= WINDOW {
                    0
                } else {
                    self.seen << ahead
                };
                self.seen |= 1;
                self.highest = Some(seq);
            }
            None => {
                self.seen = 1;
                self.highest = Some(seq);
            }
        }
    }
}

/// Opens relays from one source server: its key and the replay window.
pub struct RelayOpener {
    key: LessSafeKey,
    window: ReplayWindow,
}

impl fmt::Debug for RelayOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("RelayOpener")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl RelayOpener {
    /// An opener for the direction this key protects, which has accepted nothing yet.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            key: aead_key(key),
            window: ReplayWindow::default(),
        }
    }

    /// Authenticates and decrypts one datagram in place (`data` is the receive buffer, so no
    /// copy is made) and appends its relays to `out`, media packets stamped with `arrival`.
    /// Returns how many it appended. Nothing is appended unless the whole datagram
    /// authenticated and parsed, so that a caller never acts on half a datagram; the replay
    /// window moves only for a datagram that authenticated.
    pub fn open(
        &mut self,
        data: &mut [u8],
        arrival: Instant,
        out: &mut Vec<Relay>,
    ) -> Result<usize, RelayWireError> {
        if data.len() < HEADER_LEN + TAG_LEN {
            return Err(RelayWireError::TooShort);
        }
        let (head, sealed) = data.split_at_mut(HEADER_LEN);
        if head[..2] != MAGIC {
            return Err(RelayWireError::NotRelay);
        }
        if head[2] != VERSION {
            return Err(RelayWireError::Version(head[2]));
        }
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&head[4..]);
        let seq = u64::from_be_bytes(seq_bytes);
        if !self.window.admits(seq) {
            return Err(RelayWireError::Replayed);
        }
        let plaintext = self
            .key
            .open_in_place(nonce(seq), Aad::from(&*head), sealed)
            .map_err(|_| RelayWireError::Forged)?;
        self.window.accept(seq);
        if head[3] != 0 {
            return Err(RelayWireError::Malformed("reserved header byte"));
        }
        let start = out.len();
        let parsed = parse_plaintext(plaintext, arrival, out);
        if parsed.is_err() {
            out.truncate(start);
        }
        parsed
    }
}

/// Parses every message of a plaintext, appending its relays to `out` (the caller removes
/// them again on an error).
fn parse_plaintext(
    mut rest: &[u8],
    arrival: Instant,
    out: &mut Vec<Relay>,
) -> Result<usize, RelayWireError> {
    let mut count = 0;
    while !rest.is_empty() {
        let [kind, hi, lo, ..] = *rest else {
            return Err(RelayWireError::Malformed("truncated message header"));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let body = rest
            .get(MESSAGE_HEADER..MESSAGE_HEADER + len)
            .ok_or(RelayWireError::Malformed("message length past the end"))?;
        let relay = match kind {
            TYPE_PACKET => decode_packet(body, arrival)?,
            TYPE_CONTROL => decode_control(body)?,
            _ => return Err(RelayWireError::Malformed("unknown message type")),
        };
        out.push(relay);
        count += 1;
        rest = &rest[MESSAGE_HEADER + len..];
    }
    Ok(count)
}

/// The encoded size of a packet message (header included); `None` for other relays, whose
/// size is known only once encoded.
fn packet_message_len(relay: &Relay) -> Option<usize> {
    match relay {
        Relay::Packet { packet, .. } => Some(MESSAGE_HEADER + PACKET_FIXED + packet.payload.len()),
        _ => None,
    }
}

/// Appends one relay's message to `out`; on an error `out` holds part of it, which the caller
/// cuts off.
fn encode(relay: &Relay, out: &mut Vec<u8>) -> Result<(), &'static str> {
    match relay {
        Relay::Packet {
            publication,
            packet,
            cached,
        } => encode_packet(*publication, packet, *cached, out),
        Relay::Publication(info) => {
            check_mirror_bounds(info.layers.len(), &info.params, &info.room)?;
            encode_control(&Control::Publication(Cow::Borrowed(&**info)), out)
        }
        Relay::PublicationEnded(publication) => {
            encode_control(&Control::PublicationEnded(*publication), out)
        }
        Relay::Muted { publication, muted } => encode_control(
            &Control::Muted {
                publication: *publication,
                muted: *muted,
            },
            out,
        ),
        Relay::Want { publication, want } => encode_control(
            &Control::Want {
                publication: *publication,
                want: *want,
            },
            out,
        ),
        Relay::LayerWants {
            publication,
            layers,
        } => encode_control(
            &Control::LayerWants {
                publication: *publication,
                layers: *layers,
            },
            out,
        ),
        Relay::KeyframeRequest {
            publication,
            layers,
        } => encode_control(
            &Control::KeyframeRequest {
                publication: *publication,
                layers: *layers,
            },
            out,
        ),
        Relay::Speaker { room, participant } => {
            if room.0.len() > MAX_ROOM_ID {
                return Err("room id too long");
            }
            encode_control(
                &Control::Speaker {
                    room: Cow::Borrowed(room),
                    participant: *participant,
                },
                out,
            )
        }
        Relay::Audible {
            publication,
            audible,
        } => encode_control(
            &Control::Audible {
                publication: *publication,
                audible: *audible,
            },
            out,
        ),
    }
}

/// Appends a packet message: the fixed fields, then the payload.
fn encode_packet(
    publication: PublicationId,
    packet: &MediaPacket,
    cached: bool,
    out: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let len = u16::try_from(PACKET_FIXED + packet.payload.len())
        .map_err(|_| "packet payload too large")?;
    if *packet.pt >= 128 {
        return Err("payload type over 127");
    }
    if usize::from(packet.layer) >= MAX_LAYERS {
        return Err("layer over the bounds");
    }
    let mut flags = 0;
    if packet.marker {
        flags |= FLAG_MARKER;
    }
    if packet.keyframe {
        flags |= FLAG_KEYFRAME;
    }
    if packet.audio_level.is_some() {
        flags |= FLAG_AUDIO_LEVEL;
    }
    match packet.voice_activity {
        Some(true) => flags |= FLAG_VOICE_ACTIVITY | FLAG_VOICE,
        Some(false) => flags |= FLAG_VOICE_ACTIVITY,
        None => {}
    }
    if packet.video_orientation.is_some() {
        flags |= FLAG_ORIENTATION;
    }
    out.push(TYPE_PACKET);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&publication.0.to_be_bytes());
    out.push(u8::from(cached));
    out.extend_from_slice(&packet.ssrc.to_be_bytes());
    out.extend_from_slice(&packet.seq_no.to_be_bytes());
    out.extend_from_slice(&packet.timestamp.to_be_bytes());
    out.push(flags);
    out.push(*packet.pt);
    out.extend_from_slice(&packet.audio_level.unwrap_or(0).to_be_bytes());
    out.push(packet.video_orientation.map_or(0, orientation_byte));
    out.push(packet.layer);
    out.push(codec_byte(packet.codec));
    out.extend_from_slice(&packet.payload);
    Ok(())
}

/// Appends a control message: its JSON, written straight into `out`.
fn encode_control(control: &Control<'_>, out: &mut Vec<u8>) -> Result<(), &'static str> {
    let start = out.len();
    out.extend_from_slice(&[TYPE_CONTROL, 0, 0]);
    serde_json::to_writer(&mut *out, control).map_err(|_| "control message not serializable")?;
    let len = out.len() - start - MESSAGE_HEADER;
    if len > MAX_CONTROL_BODY {
        return Err("control message too large");
    }
    let len = u16::try_from(len).map_err(|_| "control message too large")?;
    out[start + 1..start + MESSAGE_HEADER].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Reads a packet message's body.
fn decode_packet(body: &[u8], arrival: Instant) -> Result<Relay, RelayWireError> {
    let malformed = RelayWireError::Malformed;
    let Some((fixed, payload)) = body.split_first_chunk::<PACKET_FIXED>() else {
        return Err(malformed("truncated packet"));
    };
    let mut r = Reader(fixed);
    let publication = PublicationId(u64::from_be_bytes(r.take()));
    let cached = match r.byte() {
        0 => false,
        1 => true,
        _ => return Err(malformed("packet cached flag")),
    };
    let ssrc = u32::from_be_bytes(r.take());
    let seq_no = u64::from_be_bytes(r.take());
    let timestamp = u32::from_be_bytes(r.take());
    let flags = r.byte();
    let pt = r.byte();
    let audio_level = i8::from_be_bytes(r.take());
    let orientation = r.byte();
    let layer = r.byte();
    let codec = r.byte();
    if flags & !KNOWN_FLAGS != 0 {
        return Err(malformed("unknown packet flags"));
    }
    if pt >= 128 {
        return Err(malformed("payload type over 127"));
    }
    if usize::from(layer) >= MAX_LAYERS {
        return Err(malformed("packet layer over the bounds"));
    }
    let audio_level = if flags & FLAG_AUDIO_LEVEL != 0 {
        Some(audio_level)
    } else if audio_level != 0 {
        return Err(malformed("audio level without its flag"));
    } else {
        None
    };
    let voice_activity = if flags & FLAG_VOICE_ACTIVITY != 0 {
        Some(flags & FLAG_VOICE != 0)
    } else if flags & FLAG_VOICE != 0 {
        return Err(malformed("voice activity without its flag"));
    } else {
        None
    };
    let video_orientation = if flags & FLAG_ORIENTATION != 0 {
        Some(orientation_from_byte(orientation).ok_or(malformed("video orientation"))?)
    } else if orientation != 0 {
        return Err(malformed("video orientation without its flag"));
    } else {
        None
    };
    let codec = codec_from_byte(codec).ok_or(malformed("codec"))?;
    Ok(Relay::Packet {
        publication,
        cached,
        packet: MediaPacket {
            ssrc,
            seq_no,
            timestamp,
            marker: flags & FLAG_MARKER != 0,
            pt: Pt::from(pt),
            arrival,
            audio_level,
            voice_activity,
            video_orientation,
            payload: Arc::from(payload),
            layer,
            keyframe: flags & FLAG_KEYFRAME != 0,
            codec,
        },
    })
}

/// Reads fixed-size fields from the front of a slice whose length was checked once.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    /// The next `N` bytes (zeros past the end, which the caller's length check rules out).
    fn take<const N: usize>(&mut self) -> [u8; N] {
        match self.0.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.0 = rest;
                *head
            }
            None => [0; N],
        }
    }

    fn byte(&mut self) -> u8 {
        let [b] = self.take::<1>();
        b
    }
}

/// The wire value of an orientation (numbered by hand, so that str0m renumbering its enum
/// cannot change the format).
fn orientation_byte(orientation: VideoOrientation) -> u8 {
    match orientation {
        VideoOrientation::Deg0 => 0,
        VideoOrientation::Deg90 => 1,
        VideoOrientation::Deg180 => 2,
        VideoOrientation::Deg270 => 3,
    }
}

fn orientation_from_byte(b: u8) -> Option<VideoOrientation> {
    Some(match b {
        0 => VideoOrientation::Deg0,
        1 => VideoOrientation::Deg90,
        2 => VideoOrientation::Deg180,
        3 => VideoOrientation::Deg270,
        _ => return None,
    })
}

/// The wire value of a packet's codec (0 for audio), numbered by hand like the orientation.
fn codec_byte(codec: Option<VideoCodec>) -> u8 {
    match codec {
        None => 0,
        Some(VideoCodec::Vp8) => 1,
        Some(VideoCodec::Vp9) => 2,
        Some(VideoCodec::H264) => 3,
        Some(VideoCodec::Av1) => 4,
    }
}

/// `None` for an unknown value; `Some(None)` for audio.
fn codec_from_byte(b: u8) -> Option<Option<VideoCodec>> {
    Some(match b {
        0 => None,
        1 => Some(VideoCodec::Vp8),
        2 => Some(VideoCodec::Vp9),
        3 => Some(VideoCodec::H264),
        4 => Some(VideoCodec::Av1),
        _ => return None,
    })
}

/// Every [`Relay`] but the packet, as it travels in JSON. It mirrors [`Relay`] rather than
/// deriving serde there, so that the wire format is spelled out in this module and changes
/// only here. The publication is generic so that the same enum (hence the same shape)
/// serializes a borrowed [`MirrorInfo`] and deserializes the checked [`WireMirrorInfo`].
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Control<'a, P: Clone = MirrorInfo> {
    Publication(Cow<'a, P>),
    PublicationEnded(PublicationId),
    Muted {
        publication: PublicationId,
        muted: bool,
    },
    Want {
        publication: PublicationId,
        want: bool,
    },
    LayerWants {
        publication: PublicationId,
        layers: u8,
    },
    KeyframeRequest {
        publication: PublicationId,
        layers: u8,
    },
    Speaker {
        room: Cow<'a, RoomId>,
        participant: Option<ParticipantId>,
    },
    Audible {
        publication: PublicationId,
        audible: bool,
    },
}

/// [`MirrorInfo`] as it is read from the wire: the same JSON shape (str0m's `Mid` and `Rid`
/// serialize as their byte arrays), but with the ids' bytes in reach, because str0m reads
/// them as UTF-8 and panics on anything else: they are checked before a `Mid` or `Rid` is
/// made of them. A field added to [`MirrorInfo`] fails to compile in [`Self::checked`] until
/// it is added here.
#[derive(Clone, Deserialize)]
struct WireMirrorInfo {
    id: PublicationId,
    owner: ParticipantId,
    room: RoomId,
    mid: [u8; 16],
    kind: MediaKind,
    source: TrackSource,
    layers: Vec<(Option<[u8; 8]>, u32, u32)>,
    params: Vec<PayloadParams>,
    muted: bool,
}

impl WireMirrorInfo {
    /// The [`MirrorInfo`] it describes, if it keeps the bounds a sealer keeps.
    fn checked(self) -> Result<MirrorInfo, RelayWireError> {
        check_mirror_bounds(self.layers.len(), &self.params, &self.room)
            .map_err(RelayWireError::Malformed)?;
        if !id_bytes_ok(&self.mid) {
            return Err(RelayWireError::Malformed("mid"));
        }
        if self
            .layers
            .iter()
            .any(|(rid, _, _)| rid.as_ref().is_some_and(|rid| !id_bytes_ok(rid)))
        {
            return Err(RelayWireError::Malformed("rid"));
        }
        Ok(MirrorInfo {
            id: self.id,
            owner: self.owner,
            room: self.room,
            mid: Mid::from_array(self.mid),
            kind: self.kind,
            source: self.source,
            layers: self
                .layers
                .into_iter()
                .map(|(rid, width, height)| (rid.map(Rid::from_array), width, height))
                .collect(),
            params: self.params,
            muted: self.muted,
        })
    }
}

/// Whether an id's bytes are what str0m makes of one (ASCII letters and digits, `_` for
/// anything else, space padding): printable ASCII, which str0m reads as UTF-8 without
/// panicking.
fn id_bytes_ok(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
}

/// The bounds of a mirrored publication that both sides keep (what a real one needs, no
/// more), so that a sealer never sends what the receiver refuses.
fn check_mirror_bounds(
    layers: usize,
    params: &[PayloadParams],
    room: &RoomId,
) -> Result<(), &'static str> {
    if layers > MAX_LAYERS {
        return Err("too many layers");
    }
    if params.len() > MAX_PAYLOAD_PARAMS {
        return Err("too many payload types");
    }
    let rtp_pt = |pt: Pt| *pt < 128;
    if !params
        .iter()
        .all(|p| rtp_pt(p.pt()) && p.resend().is_none_or(rtp_pt) && p.red().is_none_or(rtp_pt))
    {
        return Err("payload type over 127");
    }
    if room.0.len() > MAX_ROOM_ID {
        return Err("room id too long");
    }
    Ok(())
}

/// A writer that only counts, to measure a JSON encoding without allocating it.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a control message's body.
fn decode_control(body: &[u8]) -> Result<Relay, RelayWireError> {
    let malformed = RelayWireError::Malformed;
    if body.len() > MAX_CONTROL_BODY {
        return Err(malformed("control message too large"));
    }
    let control: Control<'static, WireMirrorInfo> =
        serde_json::from_slice(body).map_err(|_| malformed("control message"))?;
    let relay = match control {
        Control::Publication(info) => {
            let info = info.into_owned().checked()?;
            // What is accepted must be what a sealer sends on: JSON written more tersely
            // (whitespace, escapes, absent optional fields) could otherwise be accepted here
            // and grow past the bound when sealed again.
            let mut counter = Counter(0);
            serde_json::to_writer(&mut counter, &Control::Publication(Cow::Borrowed(&info)))
                .map_err(|_| malformed("control message"))?;
            if counter.0 > MAX_CONTROL_BODY {
                return Err(malformed("control message too large"));
            }
            Relay::Publication(Box::new(info))
        }
        Control::PublicationEnded(publication) => Relay::PublicationEnded(publication),
        Control::Muted { publication, muted } => Relay::Muted { publication, muted },
        Control::Want { publication, want } => Relay::Want { publication, want },
        Control::LayerWants {
            publication,
            layers,
        } => Relay::LayerWants {
            publication,
            layers,
        },
        Control::KeyframeRequest {
            publication,
            layers,
        } => Relay::KeyframeRequest {
            publication,
            layers,
        },
        Control::Speaker { room, participant } => {
            let room = room.into_owned();
            if room.0.len() > MAX_ROOM_ID {
                return Err(malformed("room id too long"));
            }
            Relay::Speaker { room, participant }
        }
        Control::Audible {
            publication,
            audible,
        } => Relay::Audible {
            publication,
            audible,
        },
    };
    Ok(relay)
}

/// A camera publication as the engine describes one: three simulcast layers and the video
/// payload types of str0m's default codec configuration (the tests' and the fuzz seeds').
#[doc(hidden)]
pub fn sample_mirror_info() -> MirrorInfo {
    let params = str0m::format::CodecConfig::new_with_defaults()
        .params()
        .iter()
        .filter(|p| p.spec().codec.is_video())
        .copied()
        .collect();
    MirrorInfo {
        id: PublicationId(42),
        owner: ParticipantId(7),
        room: RoomId("weekly-sync".into()),
        mid: Mid::from("1"),
        kind: MediaKind::Video,
        source: TrackSource::Camera,
        layers: vec![
            (Some(Rid::from("q")), 320, 180),
            (Some(Rid::from("h")), 640, 360),
            (Some(Rid::from("f")), 1280, 720),
        ],
        params,
        muted: false,
    }
}

/// Whether two relays say the same, every field compared but a packet's arrival time (which
/// the receiver stamps). For tests and the fuzz target: [`Relay`] has no `PartialEq` because
/// of that `Instant`.
#[doc(hidden)]
pub fn same_relay(a: &Relay, b: &Relay) -> bool {
    match (a, b) {
        (
            Relay::Packet {
                publication: pa,
                packet: a,
                cached: ca,
            },
            Relay::Packet {
                publication: pb,
                packet: b,
                cached: cb,
            },
        ) => {
            pa == pb
                && ca == cb
                && a.ssrc == b.ssrc
                && a.seq_no == b.seq_no
                && a.timestamp == b.timestamp
                && a.marker == b.marker
                && a.pt == b.pt
                && a.audio_level == b.audio_level
                && a.voice_activity == b.voice_activity
                && a.video_orientation == b.video_orientation
                && a.payload == b.payload
                && a.layer == b.layer
                && a.keyframe == b.keyframe
                && a.codec == b.codec
        }
        (Relay::Publication(a), Relay::Publication(b)) => a == b,
        (Relay::PublicationEnded(a), Relay::PublicationEnded(b)) => a == b,
        (
            Relay::Muted {
                publication: pa,
                muted: a,
            },
            Relay::Muted {
                publication: pb,
                muted: b,
            },
        ) => pa == pb && a == b,
        (
            Relay::Want {
                publication: pa,
                want: a,
            },
            Relay::Want {
                publication: pb,
                want: b,
            },
        ) => pa == pb && a == b,
        (
            Relay::LayerWants {
                publication: pa,
                layers: a,
            },
            Relay::LayerWants {
                publication: pb,
                layers: b,
            },
        ) => pa == pb && a == b,
        (
            Relay::KeyframeRequest {
                publication: pa,
                layers: a,
            },
            Relay::KeyframeRequest {
                publication: pb,
                layers: b,
            },
        ) => pa == pb && a == b,
        (
            Relay::Speaker {
                room: ra,
                participant: a,
            },
            Relay::Speaker {
                room: rb,
                participant: b,
            },
        ) => ra == rb && a == b,
        (
            Relay::Audible {
                publication: pa,
                audible: a,
            },
            Relay::Audible {
                publication: pb,
                audible: b,
            },
        ) => pa == pb && a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::format::Codec;

    const KEY: [u8; 32] = [0x5a; 32];

    fn packet(publication: u64, seq_no: u64, payload_len: usize) -> Relay {
        Relay::Packet {
            publication: PublicationId(publication),
            cached: seq_no.is_multiple_of(2),
            packet: MediaPacket {
                ssrc: 0xdead_beef,
                seq_no,
                timestamp: 90_000u32.wrapping_mul(seq_no as u32),
                marker: seq_no.is_multiple_of(3),
                pt: Pt::from(96),
                arrival: Instant::now(),
                audio_level: None,
                voice_activity: None,
                video_orientation: Some(VideoOrientation::Deg270),
                payload: (0..payload_len).map(|i| i as u8).collect(),
                layer: 2,
                keyframe: seq_no == 0,
                codec: Some(VideoCodec::Vp8),
            },
        }
    }

    fn audio_packet() -> Relay {
        Relay::Packet {
            publication: PublicationId(u64::MAX),
            cached: false,
            packet: MediaPacket {
                ssrc: 1,
                seq_no: 1 << 40,
                timestamp: u32::MAX,
                marker: true,
                pt: Pt::from(111),
                arrival: Instant::now(),
                audio_level: Some(-127),
                voice_activity: Some(true),
                video_orientation: None,
                payload: Arc::from(&[][..]),
                layer: 0,
                keyframe: false,
                codec: None,
            },
        }
    }

    fn mirror_info() -> MirrorInfo {
        let info = sample_mirror_info();
        assert!(info.params.len() >= 2, "{:?}", info.params);
        assert!(info.params.iter().any(|p| p.spec().codec == Codec::Vp8));
        info
    }

    fn every_variant() -> Vec<Relay> {
        let p = PublicationId(9);
        vec![
            Relay::Publication(Box::new(mirror_info())),
            Relay::PublicationEnded(p),
            Relay::Muted {
                publication: p,
                muted: true,
            },
            packet(9, 0, 100),
            audio_packet(),
            Relay::Want {
                publication: p,
                want: true,
            },
            Relay::LayerWants {
                publication: p,
                layers: 0b101,
            },
            Relay::KeyframeRequest {
                publication: p,
                layers: 0b10,
            },
            Relay::Speaker {
                room: RoomId("weekly-sync".into()),
                participant: Some(ParticipantId(3)),
            },
            Relay::Speaker {
                room: RoomId("Hà Nội \"quoted\"".into()),
                participant: None,
            },
            Relay::Audible {
                publication: p,
                audible: false,
            },
        ]
    }

    fn assert_same(sent: &[Relay], received: &[Relay]) {
        assert_eq!(sent.len(), received.len());
        for (a, b) in sent.iter().zip(received) {
            assert!(same_relay(a, b), "sent {a:?}\nreceived {b:?}");
        }
    }

    /// Seals the whole batch (as many datagrams as it takes) and opens each.
    fn round_trip(relays: &[Relay]) -> (Vec<Relay>, usize) {
        let mut sealer = RelaySealer::new(&KEY);
        let mut opener = RelayOpener::new(&KEY);
        let mut datagram = Vec::new();
        let mut received = Vec::new();
        let mut taken = 0;
        let mut datagrams = 0;
        while taken < relays.len() {
            let n = sealer.seal(&relays[taken..], &mut datagram);
            assert!(n >= 1);
            taken += n;
            datagrams += 1;
            assert!(looks_like_relay(&datagram));
            let opened = opener
                .open(&mut datagram, Instant::now(), &mut received)
                .expect("a sealed datagram opens");
            assert!(opened >= 1);
        }
        (received, datagrams)
    }

    /// Seals `plaintext` as datagram `seq` and opens it into a vector holding one relay
    /// already, which must stay as it was when opening fails.
    fn open_plaintext(plaintext: &[u8]) -> Result<usize, RelayWireError> {
        let mut datagram = Vec::new();
        seal_plaintext_for_fuzzing(&KEY, 0, plaintext, &mut datagram);
        let mut opener = RelayOpener::new(&KEY);
        let mut out = vec![Relay::PublicationEnded(PublicationId(1))];
        let result = opener.open(&mut datagram, Instant::now(), &mut out);
        match result {
            Ok(n) => assert_eq!(out.len(), 1 + n),
            Err(_) => assert_eq!(out.len(), 1, "nothing appended on an error"),
        }
        result
    }

    /// The plaintext of one relay, as a sealer writes it.
    fn plaintext_of(relay: &Relay) -> Vec<u8> {
        let mut out = Vec::new();
        encode(relay, &mut out).expect("encodable");
        out
    }

    fn seal_one(sealer: &mut RelaySealer, relay: Relay) -> Vec<u8> {
        let mut datagram = Vec::new();
        assert_eq!(sealer.seal(&[relay], &mut datagram), 1);
        datagram
    }

    fn open_one(opener: &mut RelayOpener, datagram: &[u8]) -> Result<usize, RelayWireError> {
        let mut copy = datagram.to_vec();
        let mut out = Vec::new();
        let result = opener.open(&mut copy, Instant::now(), &mut out);
        assert_eq!(out.len(), *result.as_ref().unwrap_or(&0));
        result
    }

    #[test]
    fn every_variant_round_trips() {
        let relays = every_variant();
        let (received, datagrams) = round_trip(&relays);
        assert_same(&relays, &received);
        assert!(
            datagrams < relays.len(),
            "control and packets share datagrams"
        );
        if let Relay::Packet { packet, .. } = &received[3] {
            assert_eq!(packet.payload.len(), 100);
        }
    }

    #[test]
    fn an_empty_batch_takes_nothing_and_writes_nothing() {
        let mut sealer = RelaySealer::new(&KEY);
        let mut datagram = vec![1, 2, 3];
        assert_eq!(sealer.seal(&[], &mut datagram), 0);
        assert!(datagram.is_empty());
    }

    #[test]
    fn packets_pack_up_to_the_target_and_the_rest_goes_next() {
        // 3 + 31 + 200 = 234 bytes each: five fit in 1200, the sixth does not.
        let relays: Vec<Relay> = (0..12).map(|i| packet(1, i, 200)).collect();
        let mut sealer = RelaySealer::new(&KEY);
        let mut opener = RelayOpener::new(&KEY);
        let mut datagram = Vec::new();
        let mut received = Vec::new();
        assert_eq!(sealer.seal(&relays, &mut datagram), 5);
        assert_eq!(datagram.len(), HEADER_LEN + 5 * 234 + TAG_LEN);
        let (capacity, address) = (datagram.capacity(), datagram.as_ptr());
        assert_eq!(
            opener.open(&mut datagram, Instant::now(), &mut received),
            Ok(5)
        );
        assert_eq!(sealer.seal(&relays[5..], &mut datagram), 5);
        assert_eq!(
            (datagram.capacity(), datagram.as_ptr()),
            (capacity, address),
            "the buffer is reused, not reallocated"
        );
        assert_eq!(
            opener.open(&mut datagram, Instant::now(), &mut received),
            Ok(5)
        );
        assert_eq!(sealer.seal(&relays[10..], &mut datagram), 2);
        assert_eq!(
            opener.open(&mut datagram, Instant::now(), &mut received),
            Ok(2)
        );
        assert_same(&relays, &received);
    }

    #[test]
    fn a_relay_over_the_target_goes_alone() {
        let relays = vec![packet(1, 1, 1500), packet(1, 2, 10), packet(1, 3, 1500)];
        let (received, datagrams) = round_trip(&relays);
        assert_same(&relays, &received);
        assert_eq!(
            datagrams, 3,
            "a small one fits neither before nor after a big one"
        );
        let mut sealer = RelaySealer::new(&KEY);
        let mut datagram = Vec::new();
        assert_eq!(sealer.seal(&relays, &mut datagram), 1);
        assert_eq!(
            datagram.len(),
            HEADER_LEN + MESSAGE_HEADER + PACKET_FIXED + 1500 + TAG_LEN
        );
    }

    #[test]
    fn a_relay_the_receiver_would_refuse_is_dropped_not_sent() {
        let mut info = mirror_info();
        info.layers.push((None, 1, 1));
        info.layers.push((None, 2, 2));
        let relays = vec![Relay::Publication(Box::new(info)), packet(1, 1, 10)];
        let mut sealer = RelaySealer::new(&KEY);
        let mut opener = RelayOpener::new(&KEY);
        let mut datagram = Vec::new();
        assert_eq!(sealer.seal(&relays[..1], &mut datagram), 1);
        assert!(datagram.is_empty(), "nothing to send");
        assert_eq!(sealer.seal(&relays, &mut datagram), 2);
        let mut received = Vec::new();
        assert_eq!(
            opener.open(&mut datagram, Instant::now(), &mut received),
            Ok(1)
        );
        assert_same(&relays[1..], &received);
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let mut sealer = RelaySealer::new(&KEY);
        let datagram = seal_one(&mut sealer, packet(3, 5, 40));
        for byte in 0..datagram.len() {
            for bit in 0..8 {
                let mut bad = datagram.clone();
                bad[byte] ^= 1 << bit;
                let expected = match byte {
                    0 | 1 => RelayWireError::NotRelay,
                    2 => RelayWireError::Version(VERSION ^ (1 << bit)),
                    _ => RelayWireError::Forged,
                };
                let mut opener = RelayOpener::new(&KEY);
                assert_eq!(
                    open_one(&mut opener, &bad),
                    Err(expected),
                    "byte {byte} bit {bit}"
                );
                assert_eq!(
                    open_one(&mut opener, &datagram),
                    Ok(1),
                    "the genuine one still opens"
                );
            }
        }
    }

    #[test]
    fn short_or_foreign_datagrams_are_told_apart() {
        let mut opener = RelayOpener::new(&KEY);
        assert_eq!(open_one(&mut opener, b""), Err(RelayWireError::TooShort));
        assert_eq!(
            open_one(&mut opener, &[0x4d; 27]),
            Err(RelayWireError::TooShort)
        );
        assert_eq!(
            open_one(&mut opener, &[0; 100]),
            Err(RelayWireError::NotRelay)
        );
        let stun = [0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        assert!(!looks_like_relay(&stun));
        assert!(!looks_like_relay(b"MR"));
        assert!(!looks_like_relay(b"MR\x02"));
        assert!(looks_like_relay(b"MR\x01"));
    }

    #[test]
    fn a_wrong_key_is_a_forgery() {
        let mut sealer = RelaySealer::new(&KEY);
        let datagram = seal_one(&mut sealer, audio_packet());
        let mut other = RelayOpener::new(&[0x5b; 32]);
        assert_eq!(open_one(&mut other, &datagram), Err(RelayWireError::Forged));
    }

    #[test]
    fn a_replayed_datagram_is_refused() {
        let mut sealer = RelaySealer::new(&KEY);
        let mut opener = RelayOpener::new(&KEY);
        let first = seal_one(&mut sealer, audio_packet());
        assert_eq!(open_one(&mut opener, &first), Ok(1));
        assert_eq!(open_one(&mut opener, &first), Err(RelayWireError::Replayed));
        let second = seal_one(&mut sealer, audio_packet());
        assert_eq!(open_one(&mut opener, &second), Ok(1));
        assert_eq!(open_one(&mut opener, &first), Err(RelayWireError::Replayed));
        assert_eq!(
            open_one(&mut opener, &second),
            Err(RelayWireError::Replayed)
        );
    }

    #[test]
    fn out_of_order_within_the_window_is_accepted_once_and_older_is_refused() {
        let mut sealer = RelaySealer::new(&KEY);
        let mut opener = RelayOpener::new(&KEY);
        let datagrams: Vec<Vec<u8>> = (0..200)
            .map(|i| seal_one(&mut sealer, packet(1, i, 8)))
            .collect();
        assert_eq!(open_one(&mut opener, &datagrams[150]), Ok(1));
        // 23 is 127 behind 150: the oldest the window remembers; 22 is one too old.
        for (seq, expected) in [
            (149, Ok(1)),
            (100, Ok(1)),
            (23, Ok(1)),
            (23, Err(RelayWireError::Replayed)),
            (22, Err(RelayWireError::Replayed)),
            (0, Err(RelayWireError::Replayed)),
            (100, Err(RelayWireError::Replayed)),
            (149, Err(RelayWireError::Replayed)),
            (150, Err(RelayWireError::Replayed)),
            // The window moves on by one: 24 is now the oldest it remembers.
            (151, Ok(1)),
            (24, Ok(1)),
            (24, Err(RelayWireError::Replayed)),
            (100, Err(RelayWireError::Replayed)),
        ] {
            assert_eq!(
                open_one(&mut opener, &datagrams[seq]),
                expected,
                "seq {seq}"
            );
        }
        // A jump past the window forgets everything behind it.
        assert_eq!(open_one(&mut opener, &datagrams[199]), Ok(1));
        assert_eq!(open_one(&mut opener, &datagrams[160]), Ok(1));
        assert_eq!(
            open_one(&mut opener, &datagrams[71]),
            Err(RelayWireError::Replayed)
        );
        assert_eq!(open_one(&mut opener, &datagrams[72]), Ok(1));
    }

    #[test]
    fn a_forgery_with_a_huge_sequence_number_does_not_move_the_window() {
        let mut sealer = RelaySealer::new(&KEY);
        let mut opener = RelayOpener::new(&KEY);
        let first = seal_one(&mut sealer, audio_packet());
        let second = seal_one(&mut sealer, audio_packet());
        assert_eq!(open_one(&mut opener, &first), Ok(1));
        let mut forged = second.clone();
        forged[4..HEADER_LEN].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(open_one(&mut opener, &forged), Err(RelayWireError::Forged));
        // Under another key, a genuine-looking datagram numbered u64::MAX.
        let mut other = Vec::new();
        seal_plaintext_for_fuzzing(&[1; 32], u64::MAX, &[], &mut other);
        assert_eq!(open_one(&mut opener, &other), Err(RelayWireError::Forged));
        assert_eq!(
            open_one(&mut opener, &second),
            Ok(1),
            "the next genuine one opens"
        );
    }

    #[test]
    fn malformed_plaintexts_are_refused_whole() {
        let good = plaintext_of(&packet(1, 1, 20));
        assert_eq!(open_plaintext(&good), Ok(1));
        assert_eq!(open_plaintext(&[]), Ok(0));
        let malformed = |what| Err(RelayWireError::Malformed(what));

        // A good message before each fault: nothing of it may remain.
        let with_good = |bad: &[u8]| [&good[..], bad].concat();

        // The body cut short of the fixed fields, its length saying so.
        let mut truncated = good[..MESSAGE_HEADER + PACKET_FIXED - 1].to_vec();
        truncated[1..3].copy_from_slice(&((PACKET_FIXED - 1) as u16).to_be_bytes());
        assert_eq!(
            open_plaintext(&with_good(&truncated)),
            malformed("truncated packet")
        );
        // The length running past the end.
        assert_eq!(
            open_plaintext(&good[..good.len() - 1]),
            malformed("message length past the end")
        );
        assert_eq!(
            open_plaintext(&with_good(&[1, 0])),
            malformed("truncated message header")
        );
        // Trailing garbage is a message header cut short or a message past the end.
        assert_eq!(
            open_plaintext(&with_good(&[2, 0, 9, b'{'])),
            malformed("message length past the end")
        );

        let mut unknown = good.clone();
        unknown[0] = 3;
        assert_eq!(
            open_plaintext(&with_good(&unknown)),
            malformed("unknown message type")
        );
        assert_eq!(
            open_plaintext(&with_good(&[0, 0, 0])),
            malformed("unknown message type")
        );

        // Fields at their offsets in the body (after the 3-byte message header).
        let at = |offset: usize, value: u8| {
            let mut bad = good.clone();
            bad[MESSAGE_HEADER + offset] = value;
            with_good(&bad)
        };
        let (cached, flags, pt, level, orientation, layer, codec) = (8, 25, 26, 27, 28, 29, 30);
        assert_eq!(open_plaintext(&at(codec, 5)), malformed("codec"));
        assert_eq!(open_plaintext(&at(codec, 0xff)), malformed("codec"));
        assert_eq!(
            open_plaintext(&at(orientation, 4)),
            malformed("video orientation")
        );
        assert_eq!(
            open_plaintext(&at(cached, 2)),
            malformed("packet cached flag")
        );
        assert_eq!(
            open_plaintext(&at(flags, 0x40 | FLAG_ORIENTATION)),
            malformed("unknown packet flags")
        );
        assert_eq!(
            open_plaintext(&at(pt, 128)),
            malformed("payload type over 127")
        );
        assert_eq!(
            open_plaintext(&at(level, 1)),
            malformed("audio level without its flag")
        );
        assert_eq!(
            open_plaintext(&at(layer, 4)),
            malformed("packet layer over the bounds")
        );
        assert_eq!(
            open_plaintext(&at(flags, 0)),
            malformed("video orientation without its flag")
        );
        assert_eq!(
            open_plaintext(&at(flags, FLAG_ORIENTATION | FLAG_VOICE)),
            malformed("voice activity without its flag")
        );
        assert_eq!(open_plaintext(&at(codec, 0)), Ok(2), "audio is codec 0");
    }

    /// A control message whose JSON is `json`.
    fn control(json: &str) -> Vec<u8> {
        let mut out = vec![TYPE_CONTROL];
        out.extend_from_slice(&(json.len() as u16).to_be_bytes());
        out.extend_from_slice(json.as_bytes());
        out
    }

    fn publication_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let info = mirror_info();
        let mut value =
            serde_json::to_value(Control::Publication(Cow::Borrowed(&info))).expect("serializable");
        edit(&mut value["publication"]);
        control(&value.to_string())
    }

    #[test]
    fn malformed_control_messages_are_refused() {
        let malformed = |what| Err(RelayWireError::Malformed(what));
        assert_eq!(open_plaintext(&publication_json(|_| {})), Ok(1));
        assert_eq!(
            open_plaintext(&publication_json(|p| {
                let layer = p["layers"][0].clone();
                let layers = p["layers"].as_array_mut().expect("an array");
                layers.push(layer.clone());
                layers.push(layer);
            })),
            malformed("too many layers")
        );
        assert_eq!(
            open_plaintext(&publication_json(|p| terse(p, MAX_PAYLOAD_PARAMS + 1))),
            malformed("too many payload types")
        );
        assert_eq!(
            open_plaintext(&publication_json(|p| {
                p["room"] = "r".repeat(MAX_ROOM_ID + 1).into();
            })),
            malformed("room id too long")
        );
        assert_eq!(
            open_plaintext(&publication_json(|p| p["mid"][0] = 0xff.into())),
            malformed("mid"),
            "str0m would panic reading it as UTF-8"
        );
        assert_eq!(
            open_plaintext(&publication_json(|p| p["layers"][1][0][0] = 0xc3.into())),
            malformed("rid")
        );
        assert_eq!(
            open_plaintext(&publication_json(|p| p["params"][0]["pt"] = 200.into())),
            malformed("payload type over 127")
        );
        let room = "r".repeat(MAX_ROOM_ID + 1);
        assert_eq!(
            open_plaintext(&control(&format!(
                r#"{{"speaker":{{"room":"{room}","participant":null}}}}"#
            ))),
            malformed("room id too long")
        );
        assert_eq!(
            open_plaintext(&control(r#"{"publication_ended":5}"#)),
            Ok(1)
        );
        assert_eq!(
            open_plaintext(&control(r#"{"teleport":5}"#)),
            malformed("control message")
        );
        assert_eq!(
            open_plaintext(&control(r#"{"publication_ended":5} "#)),
            Ok(1)
        );
        assert_eq!(
            open_plaintext(&control(r#"{"publication_ended":5}x"#)),
            malformed("control message")
        );
        assert_eq!(open_plaintext(&control("")), malformed("control message"));
        let big = format!(
            r#"{{"publication_ended":5{}}}"#,
            " ".repeat(MAX_CONTROL_BODY)
        );
        assert_eq!(
            open_plaintext(&control(&big)),
            malformed("control message too large")
        );
    }

    /// Leaves out the absent (null) format parameters of every payload type: JSON that
    /// serde accepts (an absent `Option` field reads as `None`) but a sealer never writes.
    fn terse(publication: &mut serde_json::Value, params: usize) {
        let param = publication["params"][0].clone();
        let all = publication["params"].as_array_mut().expect("an array");
        all.resize(params, param);
        for param in all {
            let format = param["spec"]["format"].as_object_mut().expect("an object");
            format.retain(|_, v| !v.is_null());
        }
    }

    #[test]
    fn an_accepted_publication_can_always_be_sealed_again() {
        // The most payload types, written tersely (about 7 KiB), are accepted: written again in
        // full (about 19 KiB) they still fit the bound, so the relay can go on.
        let most = publication_json(|p| terse(p, MAX_PAYLOAD_PARAMS));
        assert!(most.len() < MAX_CONTROL_BODY, "{}", most.len());
        assert_eq!(open_plaintext(&most), Ok(1));
        // One more is refused.
        assert_eq!(
            open_plaintext(&publication_json(|p| terse(p, MAX_PAYLOAD_PARAMS + 1))),
            Err(RelayWireError::Malformed("too many payload types"))
        );
        // 12 (str0m's default video codecs) are accepted, and go on.
        let fine = publication_json(|p| terse(p, 12));
        let mut datagram = Vec::new();
        seal_plaintext_for_fuzzing(&KEY, 0, &fine, &mut datagram);
        let mut received = Vec::new();
        assert_eq!(
            RelayOpener::new(&KEY).open(&mut datagram, Instant::now(), &mut received),
            Ok(1)
        );
        let (again, _) = round_trip(&received);
        assert_same(&received, &again);
    }
}
