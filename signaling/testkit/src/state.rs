//! State shared between the client handle, its signaling session and its media tasks, and
//! the snapshots of it that tests read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use endpoint::media::{ToneAnalyzer, vp8_frame_tag, vp8_is_keyframe};
use protocol::{
    ErrorCode, LeaveReason, MediaKind, ParticipantId, ParticipantInfo, PublicationId,
    PublicationInfo,
};
use rtc::rtp_transceiver::RTCRtpTransceiverId;
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::vp8::Vp8Assembler;

/// What this client received from one sender, summed over that sender's publications.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceivedMedia {
    /// RTP packets received on audio publications.
    pub audio_packets: u64,
    /// RTP payload bytes received on audio publications.
    pub audio_bytes: u64,
    /// Opus frames that decoded.
    pub opus_frames_decoded: u64,
    /// Opus packets that failed to decode.
    pub opus_decode_errors: u64,
    /// The strongest frequency in the last 200 ms of decoded audio, if enough arrived.
    pub dominant_frequency_hz: Option<f32>,
    /// RTP packets received on video publications.
    pub video_packets: u64,
    /// RTP payload bytes received on video publications.
    pub video_bytes: u64,
    /// Complete VP8 frames reassembled from those packets.
    pub video_frames: u64,
    /// How many of those frames were keyframes.
    pub video_keyframes: u64,
    /// The tag carried by the most recent frame that had one.
    pub video_tag: Option<u64>,
}

/// What this client received on one subscribed publication.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicationMedia {
    pub publication_id: PublicationId,
    pub sender: ParticipantId,
    pub kind: MediaKind,
    /// RTP packets received that carried media (padding-only packets excluded).
    pub packets: u64,
    /// Padding-only RTP packets received (bandwidth probes).
    pub padding_packets: u64,
    /// RTP payload bytes received.
    pub bytes: u64,
    /// Opus frames decoded (audio only).
    pub opus_frames_decoded: u64,
    /// Opus packets that failed to decode (audio only).
    pub opus_decode_errors: u64,
    /// Dominant frequency of the recent audio (audio only).
    pub dominant_frequency_hz: Option<f32>,
    /// Complete VP8 frames (video only).
    pub video_frames: u64,
    /// Complete VP8 keyframes (video only).
    pub video_keyframes: u64,
    /// Tag of the most recent tagged frame (video only).
    pub video_tag: Option<u64>,
}

/// What this client sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentMedia {
    /// Opus packets handed to webrtc-rs.
    pub audio_packets: u64,
    /// VP8 frames handed to webrtc-rs.
    pub video_frames: u64,
    /// How many of those frames were keyframes.
    pub video_keyframes: u64,
    /// PLI or FIR packets received from the server for the video track.
    pub keyframe_requests: u64,
    /// Samples webrtc-rs refused to send.
    pub write_errors: u64,
}

/// Something that happened in the room, in the order the server said it.
#[derive(Debug, Clone, PartialEq)]
pub enum RosterEvent {
    /// A participant joined after this client did.
    Joined {
        participant_id: ParticipantId,
        name: String,
    },
    /// A participant left.
    Left {
        participant_id: ParticipantId,
        reason: LeaveReason,
    },
    /// Another participant published a track.
    PublicationAdded(PublicationInfo),
    /// A publication of another participant ended.
    PublicationRemoved {
        publication_id: PublicationId,
        participant_id: ParticipantId,
    },
    /// A publication was muted or unmuted.
    MuteChanged {
        publication_id: PublicationId,
        participant_id: ParticipantId,
        muted: bool,
    },
}

/// The other participants this client knows about, and the room's history as it saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roster {
    /// Participants currently in the room, this client excluded.
    pub participants: BTreeMap<ParticipantId, ParticipantInfo>,
    /// Everything announced since this client joined (the initial participant list excluded).
    pub events: Vec<RosterEvent>,
}

impl Roster {
    /// The reason a participant left, if this client saw it leave.
    pub fn left_reason(&self, participant: ParticipantId) -> Option<LeaveReason> {
        self.events.iter().find_map(|event| match event {
            RosterEvent::Left {
                participant_id,
                reason,
            } if *participant_id == participant => Some(*reason),
            _ => None,
        })
    }

    /// Whether this client saw the participant join after it did.
    pub fn saw_join(&self, participant: ParticipantId) -> bool {
        self.events.iter().any(|event| {
            matches!(event, RosterEvent::Joined { participant_id, .. } if *participant_id == participant)
        })
    }
}

/// Everything a test may want to assert on, taken at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub participant_id: ParticipantId,
    pub roster: Roster,
    /// Received media per sender.
    pub received: HashMap<ParticipantId, ReceivedMedia>,
    /// Received media per subscribed publication, including ended ones.
    pub publications: HashMap<PublicationId, PublicationMedia>,
    pub sent: SentMedia,
    /// This client's own publications, if the server announced them to it.
    pub own_publications: Vec<PublicationInfo>,
    /// Publications this client currently subscribes to.
    pub subscribed: Vec<PublicationId>,
    /// Whether the server said `media_connected`.
    pub media_connected: bool,
    /// The webrtc-rs peer connection state.
    pub peer_state: RTCPeerConnectionState,
    /// Answers applied so far (one per completed negotiation).
    pub negotiations: u64,
    /// The `a=setup` of the first answer: the server's DTLS role (`passive`: DTLS server,
    /// `active`: DTLS client).
    pub answer_setup: Option<String>,
    /// Errors the server sent.
    pub server_errors: Vec<(ErrorCode, String)>,
    /// Problems on this side: unparsable server messages, failed renegotiations.
    pub client_errors: Vec<String>,
    /// `pong` messages received.
    pub pongs: u64,
    /// Whether the signaling socket has closed.
    pub signaling_closed: bool,
}

/// Per-publication receive state, including the decoders.
#[derive(Debug)]
pub(crate) struct RxPublication {
    pub(crate) info: PublicationInfo,
    pub(crate) packets: u64,
    pub(crate) padding_packets: u64,
    pub(crate) bytes: u64,
    pub(crate) tone: Option<ToneAnalyzer>,
    pub(crate) opus_decode_errors: u64,
    pub(crate) assembler: Vp8Assembler,
    pub(crate) video_frames: u64,
    pub(crate) video_keyframes: u64,
    pub(crate) video_tag: Option<u64>,
}

impl RxPublication {
    fn new(info: PublicationInfo) -> Self {
        let tone = match info.kind {
            MediaKind::Audio => ToneAnalyzer::new().ok(),
            MediaKind::Video => None,
        };
        Self {
            info,
            packets: 0,
            padding_packets: 0,
            bytes: 0,
            tone,
            opus_decode_errors: 0,
            assembler: Vp8Assembler::default(),
            video_frames: 0,
            video_keyframes: 0,
            video_tag: None,
        }
    }

    /// Accounts for one received RTP packet.
    pub(crate) fn push(&mut self, packet: &rtc::rtp::Packet) {
        if packet.payload.is_empty() {
            self.padding_packets += 1;
            return;
        }
        self.packets += 1;
        self.bytes += packet.payload.len() as u64;
        match self.info.kind {
            MediaKind::Audio => {
                let decoded = self
                    .tone
                    .as_mut()
                    .is_some_and(|tone| tone.push_packet(&packet.payload).is_ok());
                if !decoded {
                    self.opus_decode_errors += 1;
                }
            }
            MediaKind::Video => {
                if let Some(frame) = self.assembler.push(packet) {
                    self.video_frames += 1;
                    if vp8_is_keyframe(&frame) {
                        self.video_keyframes += 1;
                    }
                    if let Some(tag) = vp8_frame_tag(&frame) {
                        self.video_tag = Some(tag);
                    }
                }
            }
        }
    }

    fn snapshot(&self) -> PublicationMedia {
        PublicationMedia {
            publication_id: self.info.id,
            sender: self.info.participant_id,
            kind: self.info.kind,
            packets: self.packets,
            padding_packets: self.padding_packets,
            bytes: self.bytes,
            opus_frames_decoded: self.tone.as_ref().map_or(0, |t| t.frames_decoded()),
            opus_decode_errors: self.opus_decode_errors,
            dominant_frequency_hz: self.tone.as_ref().and_then(|t| t.dominant_frequency()),
            video_frames: self.video_frames,
            video_keyframes: self.video_keyframes,
            video_tag: self.video_tag,
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) participant_id: ParticipantId,
    pub(crate) roster: Roster,
    /// Every publication ever announced, own ones included, so that late packets still map.
    pub(crate) publications: HashMap<PublicationId, PublicationInfo>,
    pub(crate) own_publications: Vec<PublicationInfo>,
    /// Which subscribed publication each receive transceiver carries.
    pub(crate) transceivers: HashMap<RTCRtpTransceiverId, PublicationId>,
    pub(crate) subscribed: Vec<PublicationId>,
    pub(crate) rx: HashMap<PublicationId, RxPublication>,
    /// Packets that arrived on a transceiver this client cannot map to a publication.
    pub(crate) unmapped_packets: u64,
    pub(crate) sent: SentMedia,
    pub(crate) media_connected: bool,
    pub(crate) peer_state: RTCPeerConnectionState,
    pub(crate) negotiations: u64,
    pub(crate) answer_setup: Option<String>,
    pub(crate) server_errors: Vec<(ErrorCode, String)>,
    pub(crate) client_errors: Vec<String>,
    pub(crate) pongs: u64,
    pub(crate) signaling_closed: bool,
}

/// The state behind a mutex that is never held across an `.await`.
#[derive(Debug)]
pub(crate) struct Shared(Mutex<State>);

impl Shared {
    pub(crate) fn new(participant_id: ParticipantId, participants: Vec<ParticipantInfo>) -> Self {
        let mut publications = HashMap::new();
        let mut roster = Roster::default();
        for participant in participants {
            for publication in &participant.publications {
                publications.insert(publication.id, publication.clone());
            }
            roster.participants.insert(participant.id, participant);
        }
        Self(Mutex::new(State {
            participant_id,
            roster,
            publications,
            own_publications: Vec::new(),
            transceivers: HashMap::new(),
            subscribed: Vec::new(),
            rx: HashMap::new(),
            unmapped_packets: 0,
            sent: SentMedia::default(),
            media_connected: false,
            peer_state: RTCPeerConnectionState::New,
            negotiations: 0,
            answer_setup: None,
            server_errors: Vec::new(),
            client_errors: Vec::new(),
            pongs: 0,
            signaling_closed: false,
        }))
    }

    /// Locks the state. A panic elsewhere while holding it leaves counters, not invariants,
    /// so a poisoned lock is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Accounts for an RTP packet that arrived on a receive transceiver.
    pub(crate) fn record_rtp(&self, transceiver: RTCRtpTransceiverId, packet: &rtc::rtp::Packet) {
        let mut state = self.lock();
        let Some(publication) = state.transceivers.get(&transceiver).copied() else {
            state.unmapped_packets += 1;
            return;
        };
        let Some(info) = state.publications.get(&publication).cloned() else {
            state.unmapped_packets += 1;
            return;
        };
        state
            .rx
            .entry(publication)
            .or_insert_with(|| RxPublication::new(info))
            .push(packet);
    }

    pub(crate) fn client_error(&self, message: String) {
        tracing::warn!("{message}");
        self.lock().client_errors.push(message);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        let publications: HashMap<PublicationId, PublicationMedia> = state
            .rx
            .iter()
            .map(|(id, rx)| (*id, rx.snapshot()))
            .collect();
        Snapshot {
            participant_id: state.participant_id,
            roster: state.roster.clone(),
            received: per_sender(publications.values()),
            publications,
            sent: state.sent.clone(),
            own_publications: state.own_publications.clone(),
            subscribed: state.subscribed.clone(),
            media_connected: state.media_connected,
            peer_state: state.peer_state,
            negotiations: state.negotiations,
            answer_setup: state.answer_setup.clone(),
            server_errors: state.server_errors.clone(),
            client_errors: state.client_errors.clone(),
            pongs: state.pongs,
            signaling_closed: state.signaling_closed,
        }
    }
}

/// Sums per-publication media into per-sender totals. With several publications of one kind
/// from one sender, the frequency and tag come from whichever publication is visited last.
fn per_sender<'a>(
    publications: impl Iterator<Item = &'a PublicationMedia>,
) -> HashMap<ParticipantId, ReceivedMedia> {
    let mut out: HashMap<ParticipantId, ReceivedMedia> = HashMap::new();
    for publication in publications {
        let entry = out.entry(publication.sender).or_default();
        match publication.kind {
            MediaKind::Audio => {
                entry.audio_packets += publication.packets;
                entry.audio_bytes += publication.bytes;
                entry.opus_frames_decoded += publication.opus_frames_decoded;
                entry.opus_decode_errors += publication.opus_decode_errors;
                if publication.dominant_frequency_hz.is_some() {
                    entry.dominant_frequency_hz = publication.dominant_frequency_hz;
                }
            }
            MediaKind::Video => {
                entry.video_packets += publication.packets;
                entry.video_bytes += publication.bytes;
                entry.video_frames += publication.video_frames;
                entry.video_keyframes += publication.video_keyframes;
                if publication.video_tag.is_some() {
                    entry.video_tag = publication.video_tag;
                }
            }
        }
    }
    out
}
