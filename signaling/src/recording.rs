//! The recorder thread: turns the SFU's recording tap into files, one directory per
//! recording, with the `meet-recorder` writers.
//!
//! Writing files must never slow the media thread, so the SFU hands packets over a bounded
//! channel (see `sfu::recording`) and this thread does all the disk work, flushing every
//! half second so that a killed process loses at most about a second. When a write fails
//! (disk full, an I/O error) that recording stops cleanly and the hub is told, so that it can
//! tell the hosts; the meeting goes on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use protocol::{MediaKind, ParticipantId, PublicationId, RoomId, TrackSource};
use recorder::{Codec, MediaPacket, Recording, TrackInfo};
use sfu::recording::{RecordedCodec, RecordedMedia};
use tokio::sync::mpsc::UnboundedSender;

use crate::store::RecordingStatus;

/// Recorded media queued between the SFU and the recorder before the SFU starts dropping it
/// (about ten seconds of a large meeting).
pub const RECORDING_QUEUE: usize = 64 * 1024;

/// How often open recordings are flushed to the operating system.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// What the hub tells the recorder of participants' display names, for the manifests: a
/// message, not a shared map, so that the recorder owns its state and could run in another
/// process. Applied in order before a track's name is looked up, and at least twice a
/// second, so that the channel stays short whether or not anything is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameUpdate {
    /// Admitted to a room under this name.
    Admitted(ParticipantId, String),
    Left(ParticipantId),
}

/// The hub's side of the names channel.
pub type Names = Sender<NameUpdate>;

/// What the recorder tells the hub.
#[derive(Debug, Clone)]
pub struct RecordingFinished {
    pub room: RoomId,
    pub recording_id: String,
    pub status: RecordingStatus,
    pub bytes: i64,
    pub error: Option<String>,
}

/// Starts the recorder thread; returns the sink to give the SFU and the hub's names channel.
pub fn spawn(
    root: PathBuf,
    finished: UnboundedSender<RecordingFinished>,
) -> std::io::Result<(SyncSender<RecordedMedia>, Names)> {
    let (sink, media) = std::sync::mpsc::sync_channel(RECORDING_QUEUE);
    let (names, name_updates) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || {
            Recorder {
                root,
                name_updates,
                names: HashMap::new(),
                finished,
                rooms: HashMap::new(),
                tracks: HashMap::new(),
            }
            .run(media);
        })?;
    Ok((sink, names))
}

struct Active {
    recording: Recording,
    id: String,
    started: Instant,
}

/// A publication of a recorded room; its file starts with its first packet, which says
/// the codec.
struct Track {
    room: RoomId,
    participant: ParticipantId,
    kind: MediaKind,
    source: TrackSource,
    added: bool,
}

struct Recorder {
    root: PathBuf,
    name_updates: Receiver<NameUpdate>,
    /// Display names of the participants in rooms, by the hub's updates.
    names: HashMap<ParticipantId, String>,
    finished: UnboundedSender<RecordingFinished>,
    rooms: HashMap<RoomId, Active>,
    tracks: HashMap<PublicationId, Track>,
}

/// Applies the hub's name updates received so far, in order.
fn apply_name_updates(updates: &Receiver<NameUpdate>, names: &mut HashMap<ParticipantId, String>) {
    while let Ok(update) = updates.try_recv() {
        match update {
            NameUpdate::Admitted(id, name) => {
                names.insert(id, name);
            }
            NameUpdate::Left(id) => {
                names.remove(&id);
            }
        }
    }
}

fn since(start: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(start).as_millis() as u64
}

/// Bytes of every file in a recording's directory.
pub fn directory_bytes(dir: &Path) -> i64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len() as i64)
                .sum()
        })
        .unwrap_or(0)
}

impl Recorder {
    fn run(mut self, media: Receiver<RecordedMedia>) {
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match media.recv_timeout(wait) {
                Ok(item) => self.handle(item),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // The SFU is gone: finish what is open so the files are complete.
                    let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
                    for room in rooms {
                        self.stop(&room, Instant::now());
                    }
                    return;
                }
            }
            if Instant::now() >= next_flush {
                next_flush = Instant::now() + FLUSH_INTERVAL;
                apply_name_updates(&self.name_updates, &mut self.names);
                self.flush_all();
            }
        }
    }

    fn handle(&mut self, item: RecordedMedia) {
        match item {
            RecordedMedia::Started {
                room,
                recording_id,
                e2ee,
                at,
            } => self.start(room, recording_id, e2ee, at),
            RecordedMedia::Track {
                room,
                publication,
                participant,
                kind,
                source,
                ..
            } => {
                if self.rooms.contains_key(&room) {
                    self.tracks.insert(
                        publication,
                        Track {
                            room,
                            participant,
                            kind,
                            source,
                            added: false,
                        },
                    );
                }
            }
            RecordedMedia::Packet {
                publication,
                codec,
                clock_rate,
                seq,
                timestamp,
                marker,
                payload,
                at,
            } => {
                let Some(track) = self.tracks.get_mut(&publication) else {
                    return;
                };
                let Some(active) = self.rooms.get_mut(&track.room) else {
                    return;
                };
                let at_ms = since(active.started, at);
                let mut result = Ok(());
                if !track.added {
                    track.added = true;
                    apply_name_updates(&self.name_updates, &mut self.names);
                    let participant = self
                        .names
                        .get(&track.participant)
                        .cloned()
                        .unwrap_or_else(|| track.participant.to_string());
                    result = active.recording.add_track(
                        TrackInfo {
                            track: publication.0,
                            participant_id: track.participant.0,
                            participant,
                            kind: match track.kind {
                                MediaKind::Audio => recorder::MediaKind::Audio,
                                MediaKind::Video => recorder::MediaKind::Video,
                            },
                            source: source_name(track.source).to_string(),
                            codec: match codec {
                                RecordedCodec::Opus => Codec::Opus,
                                RecordedCodec::Vp8 => Codec::Vp8,
                                RecordedCodec::Vp9 => Codec::Vp9,
                                RecordedCodec::H264 => Codec::H264,
                                RecordedCodec::Av1 => Codec::Av1,
                            },
                            clock_rate,
                        },
                        at_ms,
                    );
                }
                let result = result.and_then(|()| {
                    active.recording.packet(&MediaPacket {
                        track: publication.0,
                        seq,
                        rtp_timestamp: timestamp,
                        marker,
                        payload: &payload,
                        at_ms,
                    })
                });
                if let Err(err) = result {
                    let room = track.room.clone();
                    self.fail(&room, err.to_string());
                }
            }
            RecordedMedia::TrackEnded { publication } => {
                let Some(track) = self.tracks.remove(&publication) else {
                    return;
                };
                if !track.added {
                    return;
                }
                let Some(active) = self.rooms.get_mut(&track.room) else {
                    return;
                };
                let at_ms = since(active.started, Instant::now());
                if let Err(err) = active.recording.end_track(publication.0, at_ms) {
                    self.fail(&track.room, err.to_string());
                }
            }
            RecordedMedia::Stopped { room, at } => self.stop(&room, at),
        }
    }

    fn start(&mut self, room: RoomId, recording_id: String, e2ee: bool, at: Instant) {
        let dir = self.root.join(&recording_id);
        let started_at = crate::store::unix_ms();
        // An encrypted meeting's frames are written as received; its audio cannot be mixed.
        let created = if e2ee {
            Recording::create_e2ee(&dir, &recording_id, &room.0, started_at)
        } else {
            Recording::create(&dir, &recording_id, &room.0, started_at)
        };
        match created {
            Ok(recording) => {
                tracing::info!(%room, recording = %recording_id, e2ee, "recording started");
                self.rooms.insert(
                    room,
                    Active {
                        recording,
                        id: recording_id,
                        started: at,
                    },
                );
            }
            Err(err) => {
                tracing::warn!(%room, recording = %recording_id, %err, "recording could not start");
                let _ = self.finished.send(RecordingFinished {
                    room,
                    recording_id,
                    status: RecordingStatus::Failed,
                    bytes: directory_bytes(&dir),
                    error: Some(err.to_string()),
                });
            }
        }
    }

    fn stop(&mut self, room: &RoomId, at: Instant) {
        let Some(active) = self.rooms.remove(room) else {
            return;
        };
        self.tracks.retain(|_, t| t.room != *room);
        let dir = self.root.join(&active.id);
        let at_ms = since(active.started, at);
        let (status, error) = match active.recording.finish(at_ms) {
            Ok(_) => (RecordingStatus::Completed, None),
            Err(err) => (RecordingStatus::Failed, Some(err.to_string())),
        };
        tracing::info!(%room, recording = %active.id, ?status, "recording stopped");
        let _ = self.finished.send(RecordingFinished {
            room: room.clone(),
            recording_id: active.id,
            status,
            bytes: directory_bytes(&dir),
            error,
        });
    }

    /// Stops a recording whose writes failed. What was flushed stays playable.
    fn fail(&mut self, room: &RoomId, error: String) {
        let Some(active) = self.rooms.remove(room) else {
            return;
        };
        self.tracks.retain(|_, t| t.room != *room);
        tracing::warn!(%room, recording = %active.id, %error, "recording failed");
        let dir = self.root.join(&active.id);
        // Close the files as far as they got; the write error may repeat, which changes
        // nothing.
        let _ = active
            .recording
            .finish(since(active.started, Instant::now()));
        let _ = self.finished.send(RecordingFinished {
            room: room.clone(),
            recording_id: active.id,
            status: RecordingStatus::Failed,
            bytes: directory_bytes(&dir),
            error: Some(error),
        });
    }

    fn flush_all(&mut self) {
        let failed: Vec<(RoomId, String)> = self
            .rooms
            .iter_mut()
            .filter_map(|(room, active)| {
                active
                    .recording
                    .flush()
                    .err()
                    .map(|err| (room.clone(), err.to_string()))
            })
            .collect();
        for (room, error) in failed {
            self.fail(&room, error);
        }
    }
}

fn source_name(source: TrackSource) -> &'static str {
    match source {
        TrackSource::Microphone => "microphone",
        TrackSource::Camera => "camera",
        TrackSource::Screen => "screen",
    }
}
