//! Records a meeting: each publication into its own file as its RTP packets arrive (Opus into
//! Ogg, VP8/VP9/AV1 into WebM, never decoding video), one mixed audio file of the whole
//! meeting, and a JSON manifest that lets a player line the files up.
//!
//! Files are written incrementally and handed to the OS on every [`Recording::flush`], so a
//! killed process loses at most about a second; [`recover`] makes such a directory playable and
//! marks it interrupted. Any write error stops the recording: the caller drops it and tells the
//! host, and what was flushed before stays recoverable.
//!
//! A caller (one thread per recording, or the media thread: a meeting of 10 audio+video
//! publishers costs about 2% of a core) does:
//!
//! 1. on start-up, [`recover`] for every recording directory left by a previous process;
//! 2. [`Recording::create`], then [`Recording::add_track`] for each publication;
//! 3. [`Recording::packet`] for every RTP packet, [`Recording::flush`] every ~500 ms, and a
//!    keyframe request for each track [`Recording::wants_keyframe`] lists;
//! 4. [`Recording::end_track`] when a publication ends, [`Recording::finish`] at the end.
//!
//! An end-to-end encrypted meeting ([`Recording::create_e2ee`], docs/e2ee.md) is recorded as
//! received: each file holds the encrypted frames byte for byte, there is no mix (the audio
//! cannot be decoded), and only the clear prefix of a frame is ever read: VP8's frame tag and
//! keyframe header (its first 10 bytes), Opus's TOC byte. The manifest says `"e2ee": true`.

mod depack;
mod mix;
mod oggopus;
mod storage;
mod webm;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use depack::{Assembler, VideoFormat};
use mix::Mixer;
use oggopus::{
    MAX_PACKET_SAMPLES, OPUS_RATE, OggOpusWriter, encrypted_packet_samples, finalize_ogg,
    packet_samples,
};
pub use storage::{FsStorage, Sink, Storage};
use webm::{VideoTrackHeader, WebmWriter, finalize_webm};

const MANIFEST: &str = "manifest.json";
const MIX_FILE: &str = "mix.ogg";
/// The mix is encoded this far behind the newest packet, so that audio from every sender,
/// each with its own network delay, is summed before the frame is encoded.
const MIX_DELAY_MS: u64 = 100;
/// Audio packets held to put reordered ones back in sequence: 80 ms at 20 ms a packet.
const AUDIO_REORDER: usize = 4;
/// Gaps in an audio track up to this long (in 48 kHz samples, 60 s) are filled with empty
/// Opus frames, so granule positions keep counting real time across them.
const MAX_FILL: i64 = 60 * 48_000;
/// Every flush hands data to the OS (enough for a killed process); every this many flushes
/// (about 2 s) it is also made durable against a power cut, without an fsync storm.
const SYNC_EVERY: u32 = 4;
/// Used for the track header when a keyframe does not carry its size.
const DEFAULT_SIZE: (u16, u16) = (640, 480);

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// A publication's negotiated codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    Av1,
    H264,
}

/// A publication to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// The publication id.
    pub track: u64,
    pub participant_id: u64,
    /// The participant's display name.
    pub participant: String,
    pub kind: MediaKind,
    /// `microphone`, `camera` or `screen`.
    pub source: String,
    pub codec: Codec,
    pub clock_rate: u32,
}

/// One RTP packet of a recorded publication.
#[derive(Debug, Clone, Copy)]
pub struct MediaPacket<'a> {
    pub track: u64,
    pub seq: u16,
    pub rtp_timestamp: u32,
    pub marker: bool,
    pub payload: &'a [u8],
    /// Arrival, in milliseconds since the recording started.
    pub at_ms: u64,
}

/// What a recorded file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Manifest,
    Audio,
    Video,
    Mix,
}

/// One file of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The file name inside the recording's directory.
    pub name: String,
    pub bytes: u64,
    pub kind: FileKind,
}

/// A finished or recovered recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub files: Vec<FileInfo>,
    /// `completed`, `interrupted` or `failed`.
    pub status: String,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("writing {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("the recording stopped after an earlier write error")]
    Stopped,
    #[error("{0} already holds a recording")]
    Exists(PathBuf),
    #[error("manifest: {0}")]
    Manifest(#[from] serde_json::Error),
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
}

impl RecorderError {
    fn io(file: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            file: file.into(),
            source,
        }
    }
}

const STATUS_RECORDING: &str = "recording";
const STATUS_COMPLETED: &str = "completed";
const STATUS_INTERRUPTED: &str = "interrupted";
const STATUS_FAILED: &str = "failed";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    recording_id: String,
    room: String,
    started_at_unix_ms: i64,
    status: String,
    duration_ms: Option<u64>,
    /// The media is end-to-end encrypted: the files hold the frames as received, and only a
    /// key holder's player can decode them. Absent from older manifests: not encrypted.
    #[serde(default)]
    e2ee: bool,
    tracks: Vec<ManifestTrack>,
    /// `None` (`null`) when the recording is end-to-end encrypted: the server cannot decode
    /// the audio to mix it.
    mix: Option<ManifestMix>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ManifestTrack {
    track: u64,
    participant_id: u64,
    participant: String,
    kind: MediaKind,
    source: String,
    codec: Codec,
    clock_rate: u32,
    added_offset_ms: u64,
    /// Set once the first media is written; `None` for a skipped or silent track.
    file: Option<String>,
    /// Where the file's time 0 is on the recording's timeline.
    start_offset_ms: Option<u64>,
    end_offset_ms: Option<u64>,
    warning: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ManifestMix {
    file: String,
    start_offset_ms: u64,
    end_offset_ms: Option<u64>,
}

/// Extends a wrapping RTP counter to 64 bits around the highest value seen.
#[derive(Debug, Default)]
struct Unwrap {
    last: Option<(i64, u32)>,
}

impl Unwrap {
    fn extend(&mut self, value: u32, bits: u32) -> i64 {
        let Some((ext, raw)) = self.last else {
            self.last = Some((0, value));
            return 0;
        };
        let shift = 32 - bits;
        let diff = i64::from((value.wrapping_sub(raw) << shift) as i32 >> shift);
        let extended = ext + diff;
        if diff > 0 {
            self.last = Some((extended, value));
        }
        extended
    }
}

struct AudioTrack {
    seq: Unwrap,
    ts: Unwrap,
    reorder: BTreeMap<i64, (i64, u64, Vec<u8>)>,
    next_seq: Option<i64>,
    writer: Option<OggOpusWriter>,
    base_ts: i64,
    start_ms: u64,
    /// Granule position (48 kHz samples from the track's start) the next packet should have.
    expected: i64,
    last_toc: u8,
    /// The packets are end-to-end encrypted past their TOC byte.
    e2ee: bool,
    /// After an encrypted packet whose length could not be read, the latest position its
    /// audio may reach: a gap up to there may be its own audio and is not filled.
    uncertain_until: i64,
}

struct VideoTrack {
    assembler: Assembler,
    format: VideoFormat,
    writer: Option<WebmWriter>,
    base_ts: i64,
    need_keyframe: bool,
    frame_ms: u64,
}

enum Track {
    Audio(Box<AudioTrack>),
    Video(Box<VideoTrack>),
    /// Not recorded (unsupported codec) or already ended: its packets are ignored.
    Inactive,
}

/// A recording in progress. Feed it packets from one thread; it does no locking.
pub struct Recording {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    manifest: Manifest,
    tracks: HashMap<u64, Track>,
    mixer: Option<Mixer>,
    now_ms: u64,
    failed: bool,
    flushes: u32,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("dir", &self.dir)
            .field("tracks", &self.tracks.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn track_file(track: u64, kind: MediaKind) -> String {
    match kind {
        MediaKind::Audio => format!("track-{track}.ogg"),
        MediaKind::Video => format!("track-{track}.webm"),
    }
}

impl Recording {
    /// Creates `dir` and starts a recording in it, with the manifest saying `recording`.
    pub fn create(
        dir: &Path,
        recording_id: &str,
        room: &str,
        started_at_unix_ms: i64,
    ) -> Result<Self, RecorderError> {
        Self::create_with_storage(
            dir,
            recording_id,
            room,
            started_at_unix_ms,
            Arc::new(FsStorage),
        )
    }

    /// [`Recording::create`] for an end-to-end encrypted meeting: frames are written as
    /// received (encrypted) and no mix is made.
    pub fn create_e2ee(
        dir: &Path,
        recording_id: &str,
        room: &str,
        started_at_unix_ms: i64,
    ) -> Result<Self, RecorderError> {
        Self::create_inner(
            dir,
            recording_id,
            room,
            started_at_unix_ms,
            Arc::new(FsStorage),
            true,
        )
    }

    /// [`Recording::create`] writing through `storage` (tests inject failing writers here).
    pub fn create_with_storage(
        dir: &Path,
        recording_id: &str,
        room: &str,
        started_at_unix_ms: i64,
        storage: Arc<dyn Storage>,
    ) -> Result<Self, RecorderError> {
        Self::create_inner(dir, recording_id, room, started_at_unix_ms, storage, false)
    }

    fn create_inner(
        dir: &Path,
        recording_id: &str,
        room: &str,
        started_at_unix_ms: i64,
        storage: Arc<dyn Storage>,
        e2ee: bool,
    ) -> Result<Self, RecorderError> {
        fs::create_dir_all(dir).map_err(|e| RecorderError::io(dir.display().to_string(), e))?;
        if dir.join(MANIFEST).exists() {
            return Err(RecorderError::Exists(dir.to_path_buf()));
        }
        let manifest = Manifest {
            recording_id: recording_id.to_owned(),
            room: room.to_owned(),
            started_at_unix_ms,
            status: STATUS_RECORDING.to_owned(),
            duration_ms: None,
            e2ee,
            tracks: Vec::new(),
            // Mixing decodes every track, which ciphertext does not allow.
            mix: (!e2ee).then(|| ManifestMix {
                file: MIX_FILE.to_owned(),
                start_offset_ms: 0,
                end_offset_ms: None,
            }),
        };
        write_manifest(&*storage, dir, &manifest)?;
        let mixer = if e2ee {
            None
        } else {
            let sink = storage
                .create(&dir.join(MIX_FILE))
                .map_err(|e| RecorderError::io(MIX_FILE, e))?;
            Some(Mixer::new(sink)?)
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            storage,
            manifest,
            tracks: HashMap::new(),
            mixer,
            now_ms: 0,
            failed: false,
            flushes: 0,
        })
    }

    /// Starts recording a publication. An unsupported codec is not an error: the track is
    /// listed in the manifest with a warning and its packets are ignored.
    pub fn add_track(&mut self, info: TrackInfo, at_ms: u64) -> Result<(), RecorderError> {
        self.check()?;
        if self.tracks.contains_key(&info.track) {
            tracing::warn!(track = info.track, "track added twice; ignored");
            return Ok(());
        }
        let (track, warning) = match (info.kind, info.codec) {
            (MediaKind::Audio, Codec::Opus) => {
                if let Some(mixer) = &mut self.mixer {
                    mixer.add_track(info.track)?;
                }
                (
                    Track::Audio(Box::new(AudioTrack {
                        seq: Unwrap::default(),
                        ts: Unwrap::default(),
                        reorder: BTreeMap::new(),
                        next_seq: None,
                        writer: None,
                        base_ts: 0,
                        start_ms: 0,
                        expected: 0,
                        last_toc: 0,
                        e2ee: self.manifest.e2ee,
                        uncertain_until: 0,
                    })),
                    None,
                )
            }
            (MediaKind::Video, Codec::Vp9 | Codec::Av1) if self.manifest.e2ee => (
                Track::Inactive,
                Some(format!(
                    "{:?} is not recorded in an end-to-end encrypted meeting, which sends VP8: \
                     its frame headers would be read from ciphertext",
                    info.codec
                )),
            ),
            (MediaKind::Video, Codec::Vp8 | Codec::Vp9 | Codec::Av1) => {
                let format = match info.codec {
                    Codec::Vp9 => VideoFormat::Vp9,
                    Codec::Av1 => VideoFormat::Av1,
                    _ => VideoFormat::Vp8,
                };
                (
                    Track::Video(Box::new(VideoTrack {
                        assembler: Assembler::new(format),
                        format,
                        writer: None,
                        base_ts: 0,
                        need_keyframe: true,
                        frame_ms: 0,
                    })),
                    None,
                )
            }
            (MediaKind::Video, Codec::H264) => (
                Track::Inactive,
                Some(
                    "H.264 is not recorded: WebM cannot hold it, and rewriting it for Matroska \
                     needs its parameter sets"
                        .to_owned(),
                ),
            ),
            (kind, codec) => (
                Track::Inactive,
                Some(format!(
                    "{codec:?} is not a codec for {kind:?} tracks; not recorded"
                )),
            ),
        };
        if let Some(warning) = &warning {
            tracing::warn!(track = info.track, %warning, "track not recorded");
        }
        self.tracks.insert(info.track, track);
        self.manifest.tracks.push(ManifestTrack {
            track: info.track,
            participant_id: info.participant_id,
            participant: info.participant,
            kind: info.kind,
            source: info.source,
            codec: info.codec,
            clock_rate: info.clock_rate.max(1),
            added_offset_ms: at_ms,
            file: None,
            start_offset_ms: None,
            end_offset_ms: None,
            warning,
        });
        let result = write_manifest(&*self.storage, &self.dir, &self.manifest);
        self.guard(result)
    }

    /// Records one packet. Packets of unknown, ended or skipped tracks and malformed payloads
    /// are ignored; an `Err` means the recording cannot go on (disk full, write error).
    pub fn packet(&mut self, packet: &MediaPacket<'_>) -> Result<(), RecorderError> {
        self.check()?;
        let result = self.packet_inner(packet);
        self.guard(result)
    }

    fn packet_inner(&mut self, packet: &MediaPacket<'_>) -> Result<(), RecorderError> {
        self.now_ms = self.now_ms.max(packet.at_ms);
        let Some(track) = self.tracks.get_mut(&packet.track) else {
            return Ok(());
        };
        let Some(info) = self
            .manifest
            .tracks
            .iter_mut()
            .find(|t| t.track == packet.track)
        else {
            return Ok(());
        };
        let mut ctx = Ctx {
            storage: &*self.storage,
            dir: &self.dir,
            mixer: self.mixer.as_mut(),
            info,
            manifest_changed: false,
        };
        match track {
            Track::Audio(audio) => audio_packet(audio, packet, &mut ctx)?,
            Track::Video(video) => video_packet(video, packet, &mut ctx)?,
            Track::Inactive => {}
        }
        if ctx.manifest_changed {
            write_manifest(&*self.storage, &self.dir, &self.manifest)?;
        }
        if let Some(mixer) = &mut self.mixer {
            mixer.advance(self.now_ms.saturating_sub(MIX_DELAY_MS) * 48)?;
        }
        Ok(())
    }

    /// Stops recording a publication and finalizes its file.
    pub fn end_track(&mut self, track: u64, at_ms: u64) -> Result<(), RecorderError> {
        self.check()?;
        self.now_ms = self.now_ms.max(at_ms);
        let result = self.end_track_inner(track);
        let result =
            result.and_then(|()| write_manifest(&*self.storage, &self.dir, &self.manifest));
        self.guard(result)
    }

    fn end_track_inner(&mut self, track: u64) -> Result<(), RecorderError> {
        let Some(state) = self.tracks.get_mut(&track) else {
            return Ok(());
        };
        let state = std::mem::replace(state, Track::Inactive);
        let Some(info) = self.manifest.tracks.iter_mut().find(|t| t.track == track) else {
            return Ok(());
        };
        let mut ctx = Ctx {
            storage: &*self.storage,
            dir: &self.dir,
            mixer: self.mixer.as_mut(),
            info,
            manifest_changed: false,
        };
        let duration_ms = match state {
            Track::Audio(mut audio) => {
                // Whatever the reorder buffer holds is written now, gaps and all.
                while let Some((seq, (ts, at_ms, payload))) = audio.reorder.pop_first() {
                    audio.next_seq = Some(seq + 1);
                    audio_write(&mut audio, ts, at_ms, payload, &mut ctx)?;
                }
                match audio.writer.take() {
                    Some(writer) => {
                        writer.finish().map_err(|e| ctx.io_error(e))?;
                        Some((audio.expected.max(0) as u64).saturating_mul(1000) / OPUS_RATE)
                    }
                    None => None,
                }
            }
            Track::Video(mut video) => match video.writer.take() {
                Some(mut writer) => {
                    writer.flush(true).map_err(|e| ctx.io_error(e))?;
                    let last = writer.last_ms();
                    drop(writer);
                    let file = self.dir.join(track_file(track, MediaKind::Video));
                    finalize_webm(&file).map_err(|e| ctx.io_error(e))?;
                    Some(last + video.frame_ms)
                }
                None => None,
            },
            Track::Inactive => None,
        };
        if let Some(mixer) = &mut self.mixer {
            mixer.remove_track(track);
        }
        if let (Some(duration), Some(start)) = (duration_ms, info_start(&self.manifest, track))
            && let Some(info) = self.manifest.tracks.iter_mut().find(|t| t.track == track)
        {
            info.end_offset_ms = Some(start + duration);
        }
        Ok(())
    }

    /// Hands everything written so far to the OS (and now and then to the disk). Call it
    /// about every 500 ms: a killed process then loses less than a second.
    pub fn flush(&mut self) -> Result<(), RecorderError> {
        self.check()?;
        let result = self.flush_inner();
        self.guard(result)
    }

    fn flush_inner(&mut self) -> Result<(), RecorderError> {
        self.flushes = self.flushes.wrapping_add(1);
        let durable = self.flushes.is_multiple_of(SYNC_EVERY);
        if let Some(mixer) = &mut self.mixer {
            mixer.advance(self.now_ms.saturating_sub(MIX_DELAY_MS) * 48)?;
            mixer.flush(durable)?;
        }
        for (&id, track) in &mut self.tracks {
            match track {
                Track::Audio(audio) => {
                    if let Some(writer) = &mut audio.writer {
                        writer
                            .flush(durable)
                            .map_err(|e| RecorderError::io(track_file(id, MediaKind::Audio), e))?;
                    }
                }
                Track::Video(video) => {
                    if let Some(writer) = &mut video.writer {
                        writer
                            .flush(durable)
                            .map_err(|e| RecorderError::io(track_file(id, MediaKind::Video), e))?;
                    }
                }
                Track::Inactive => {}
            }
        }
        Ok(())
    }

    /// Ends every track, completes the mix and marks the manifest `completed`. After a write
    /// error it finalizes what reached the disk and marks the recording `failed`.
    pub fn finish(mut self, at_ms: u64) -> Result<Summary, RecorderError> {
        if self.failed {
            // Writers are dropped without writing more; finalizing cuts any half-written tail.
            self.tracks.clear();
            self.mixer = None;
            return finalize_dir(&self.dir, &mut self.manifest, STATUS_FAILED);
        }
        self.now_ms = self.now_ms.max(at_ms);
        let ids: Vec<u64> = self.tracks.keys().copied().collect();
        for id in ids {
            self.end_track_inner(id)?;
        }
        if let Some(mut mixer) = self.mixer.take() {
            mixer.advance(self.now_ms * 48)?;
            mixer.finish()?;
        }
        if let Some(mix) = &mut self.manifest.mix {
            let info = finalize_ogg(&self.dir.join(&mix.file))
                .map_err(|e| RecorderError::io(MIX_FILE, e))?;
            mix.end_offset_ms = Some(info.duration_ms);
        }
        self.manifest.status = STATUS_COMPLETED.to_owned();
        self.manifest.duration_ms = Some(self.now_ms);
        write_manifest(&*self.storage, &self.dir, &self.manifest)?;
        summary(&self.dir, &self.manifest)
    }

    /// Video tracks still waiting for a keyframe (their first, or the next after a lost
    /// frame): the caller asks their publishers for one.
    pub fn wants_keyframe(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .tracks
            .iter()
            .filter(|(_, t)| matches!(t, Track::Video(v) if v.need_keyframe))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn check(&self) -> Result<(), RecorderError> {
        if self.failed {
            Err(RecorderError::Stopped)
        } else {
            Ok(())
        }
    }

    /// Remembers a failure: after one, the files are only consistent up to the last flush,
    /// so nothing more is written.
    fn guard(&mut self, result: Result<(), RecorderError>) -> Result<(), RecorderError> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

fn info_start(manifest: &Manifest, track: u64) -> Option<u64> {
    manifest
        .tracks
        .iter()
        .find(|t| t.track == track)?
        .start_offset_ms
}

/// What per-packet processing needs besides the track itself.
struct Ctx<'a> {
    storage: &'a dyn Storage,
    dir: &'a Path,
    mixer: Option<&'a mut Mixer>,
    info: &'a mut ManifestTrack,
    manifest_changed: bool,
}

impl Ctx<'_> {
    fn io_error(&self, e: io::Error) -> RecorderError {
        RecorderError::io(track_file(self.info.track, self.info.kind), e)
    }

    /// Creates the track's file when its first media is written, and notes where it starts.
    fn start_file(&mut self, at_ms: u64) -> Result<Box<dyn Sink>, RecorderError> {
        let name = track_file(self.info.track, self.info.kind);
        let sink = self
            .storage
            .create(&self.dir.join(&name))
            .map_err(|e| self.io_error(e))?;
        self.info.file = Some(name);
        self.info.start_offset_ms = Some(at_ms);
        self.manifest_changed = true;
        Ok(sink)
    }
}

fn audio_packet(
    audio: &mut AudioTrack,
    packet: &MediaPacket<'_>,
    ctx: &mut Ctx<'_>,
) -> Result<(), RecorderError> {
    let seq = audio.seq.extend(u32::from(packet.seq), 16);
    let ts = audio.ts.extend(packet.rtp_timestamp, 32);
    let next = *audio.next_seq.get_or_insert(seq);
    if seq < next {
        // A duplicate, or later than the reorder buffer waits.
        return Ok(());
    }
    audio
        .reorder
        .entry(seq)
        .or_insert_with(|| (ts, packet.at_ms, packet.payload.to_vec()));
    loop {
        let held = audio.reorder.len();
        let Some(entry) = audio.reorder.first_entry() else {
            break;
        };
        if Some(*entry.key()) != audio.next_seq && held <= AUDIO_REORDER {
            break;
        }
        let (seq, (ts, at_ms, payload)) = entry.remove_entry();
        audio.next_seq = Some(seq + 1);
        audio_write(audio, ts, at_ms, payload, ctx)?;
    }
    Ok(())
}

/// Writes one in-order Opus packet to the track's file and the mix.
fn audio_write(
    audio: &mut AudioTrack,
    ts: i64,
    at_ms: u64,
    payload: Vec<u8>,
    ctx: &mut Ctx<'_>,
) -> Result<(), RecorderError> {
    let counted = if audio.e2ee {
        encrypted_packet_samples(&payload)
    } else {
        packet_samples(&payload).map(|samples| (samples, true))
    };
    let Some((samples, exact)) = counted else {
        return Ok(());
    };
    let clock = i64::from(ctx.info.clock_rate);
    let writer = match &mut audio.writer {
        Some(writer) => writer,
        None => {
            let sink = ctx.start_file(at_ms)?;
            let channels = if payload[0] & 0x04 != 0 { 2 } else { 1 };
            let writer = OggOpusWriter::new(sink, ctx.info.track as u32, channels, 0)
                .map_err(|e| ctx.io_error(e))?;
            audio.base_ts = ts;
            audio.start_ms = at_ms;
            audio.expected = 0;
            audio.last_toc = payload[0];
            audio.writer.insert(writer)
        }
    };
    // Saturating: timestamps come from the network, and a hostile jump must not overflow.
    let position = (ts - audio.base_ts).saturating_mul(OPUS_RATE as i64) / clock;
    if position < audio.expected {
        // Overlaps what was written: a duplicate with a new sequence number.
        return Ok(());
    }
    let gap = position - audio.expected;
    if gap > 0 && gap <= MAX_FILL {
        // The previous packet may have been longer than it could be counted (encrypted): the
        // gap is filled only past the longest it can be, never over its own audio.
        audio.expected = audio.expected.max(audio.uncertain_until.min(position));
        // A TOC byte alone is a frame of zero bytes, which a decoder conceals (RFC 6716
        // section 3.2.1): the file keeps its timing through losses and silences.
        let filler = audio.last_toc & 0xfc;
        let filler_samples = packet_samples(&[filler]).unwrap_or(960) as i64;
        while audio.expected + filler_samples <= position {
            audio.expected += filler_samples;
            writer
                .write(vec![filler], audio.expected as u64)
                .map_err(|e| ctx.io_error(e))?;
        }
    }
    audio.expected = position + samples as i64;
    audio.uncertain_until = if exact {
        0
    } else {
        position + MAX_PACKET_SAMPLES as i64
    };
    audio.last_toc = payload[0];
    if let Some(mixer) = ctx.mixer.as_deref_mut() {
        mixer.packet(
            ctx.info.track,
            (audio.start_ms * 48).saturating_add(position as u64),
            &payload,
        );
    }
    writer
        .write(payload, audio.expected as u64)
        .map_err(|e| ctx.io_error(e))
}

fn video_packet(
    video: &mut VideoTrack,
    packet: &MediaPacket<'_>,
    ctx: &mut Ctx<'_>,
) -> Result<(), RecorderError> {
    let Some(frame) = video.assembler.push(
        packet.seq,
        packet.rtp_timestamp,
        packet.marker,
        packet.payload,
        packet.at_ms,
    ) else {
        return Ok(());
    };
    if frame.after_loss {
        video.need_keyframe = true;
    }
    if video.need_keyframe && !frame.keyframe {
        return Ok(());
    }
    video.need_keyframe = false;
    let clock = u64::from(ctx.info.clock_rate);
    let writer = match &mut video.writer {
        Some(writer) => writer,
        None => {
            let sink = ctx.start_file(frame.at_ms)?;
            let (width, height) = frame.size.unwrap_or(DEFAULT_SIZE);
            let header = VideoTrackHeader {
                codec_id: match video.format {
                    VideoFormat::Vp8 => "V_VP8",
                    VideoFormat::Vp9 => "V_VP9",
                    VideoFormat::Av1 => "V_AV1",
                },
                width,
                height,
                codec_private: frame
                    .sequence_header
                    .as_deref()
                    .map(depack::av1_codec_private),
            };
            let writer = WebmWriter::new(sink, &header).map_err(|e| ctx.io_error(e))?;
            video.base_ts = frame.ts;
            video.writer.insert(writer)
        }
    };
    let ms = ((frame.ts - video.base_ts).max(0) as u64).saturating_mul(1000) / clock;
    if ms > writer.last_ms() {
        video.frame_ms = ms - writer.last_ms();
    }
    writer
        .write_frame(ms, frame.keyframe, &frame.data)
        .map_err(|e| ctx.io_error(e))
}

fn write_manifest(
    storage: &dyn Storage,
    dir: &Path,
    manifest: &Manifest,
) -> Result<(), RecorderError> {
    let json = serde_json::to_vec_pretty(manifest)?;
    storage
        .replace(&dir.join(MANIFEST), &json)
        .map_err(|e| RecorderError::io(MANIFEST, e))
}

fn summary(dir: &Path, manifest: &Manifest) -> Result<Summary, RecorderError> {
    let mut files = Vec::new();
    let mut add = |name: &str, kind: FileKind| -> Result<(), RecorderError> {
        let bytes = fs::metadata(dir.join(name))
            .map_err(|e| RecorderError::io(name, e))?
            .len();
        files.push(FileInfo {
            name: name.to_owned(),
            bytes,
            kind,
        });
        Ok(())
    };
    add(MANIFEST, FileKind::Manifest)?;
    for track in &manifest.tracks {
        if let Some(file) = &track.file {
            let kind = match track.kind {
                MediaKind::Audio => FileKind::Audio,
                MediaKind::Video => FileKind::Video,
            };
            add(file, kind)?;
        }
    }
    if let Some(mix) = &manifest.mix
        && dir.join(&mix.file).exists()
    {
        add(&mix.file, FileKind::Mix)?;
    }
    Ok(Summary {
        files,
        status: manifest.status.clone(),
        duration_ms: manifest.duration_ms.unwrap_or(0),
    })
}

/// Finalizes one media file: `Some(duration)` when it plays, `None` when it is missing or
/// not even its headers reached the disk (then it is removed: there is nothing to play).
fn finalize_file(dir: &Path, name: &str, kind: FileKind) -> Result<Option<u64>, RecorderError> {
    let path = dir.join(name);
    let result = match kind {
        FileKind::Video => finalize_webm(&path).map(|i| (i.playable, i.duration_ms)),
        _ => finalize_ogg(&path).map(|i| (i.playable, i.duration_ms)),
    };
    match result {
        Ok((true, duration_ms)) => Ok(Some(duration_ms)),
        Ok((false, _)) => {
            fs::remove_file(&path).map_err(|e| RecorderError::io(name, e))?;
            Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RecorderError::io(name, e)),
    }
}

/// Makes every file in `dir` playable as far as it got and gives the manifest `status`.
fn finalize_dir(
    dir: &Path,
    manifest: &mut Manifest,
    status: &str,
) -> Result<Summary, RecorderError> {
    let mut duration_ms = 0u64;
    for track in &mut manifest.tracks {
        let kind = match track.kind {
            MediaKind::Audio => FileKind::Audio,
            MediaKind::Video => FileKind::Video,
        };
        // The manifest is read back from disk, so its file names are not trusted: only the
        // name the recorder itself gives this track is ever opened, cut or removed. Anything
        // else (`../../meet.db`, an absolute path) is left alone and reported.
        let expected = track_file(track.track, track.kind);
        if track.file.as_ref().is_some_and(|name| *name != expected) {
            track.file = None;
            track.warning = Some("the manifest named a file this recorder never writes".to_owned());
            continue;
        }
        let Some(name) = track.file.clone() else {
            // A file created just before the process died, whose first media had not yet been
            // flushed, is not in the manifest; it holds nothing playable.
            match fs::remove_file(dir.join(track_file(track.track, track.kind))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(RecorderError::io(track_file(track.track, track.kind), e));
                }
                _ => continue,
            }
        };
        match finalize_file(dir, &name, kind)? {
            Some(media_ms) => {
                let end = track.start_offset_ms.unwrap_or(0) + media_ms;
                track.end_offset_ms = Some(end);
                duration_ms = duration_ms.max(end);
            }
            None => {
                track.file = None;
                track.warning =
                    Some("no media reached the disk before the recording stopped".to_owned());
            }
        }
    }
    if manifest
        .mix
        .as_ref()
        .is_some_and(|mix| mix.file != MIX_FILE)
    {
        manifest.mix = None;
    }
    if let Some(mix) = &mut manifest.mix {
        mix.end_offset_ms = finalize_file(dir, &mix.file, FileKind::Mix)?;
        duration_ms = duration_ms.max(mix.end_offset_ms.unwrap_or(0));
    }
    manifest.status = status.to_owned();
    manifest.duration_ms = Some(duration_ms);
    let json = serde_json::to_vec_pretty(manifest)?;
    storage::replace_file(&dir.join(MANIFEST), &json)
        .map_err(|e| RecorderError::io(MANIFEST, e))?;
    summary(dir, manifest)
}

/// Finalizes a recording whose process died: if `dir`'s manifest still says `recording`, every
/// file is cut back to its last complete page or block and gets its duration, and the
/// manifest says `interrupted`. Returns `None` for a directory without an unfinished
/// recording.
pub fn recover(dir: &Path) -> Result<Option<Summary>, RecorderError> {
    let path = dir.join(MANIFEST);
    let json = match fs::read(&path) {
        Ok(json) => json,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RecorderError::io(MANIFEST, e)),
    };
    let mut manifest: Manifest = serde_json::from_slice(&json)?;
    if manifest.status != STATUS_RECORDING {
        return Ok(None);
    }
    finalize_dir(dir, &mut manifest, STATUS_INTERRUPTED).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_can_move_to_a_recorder_thread() {
        fn send<T: Send>() {}
        send::<Recording>();
    }

    #[test]
    fn counters_unwrap() {
        let mut seq = Unwrap::default();
        assert_eq!(seq.extend(65_534, 16), 0);
        assert_eq!(seq.extend(65_535, 16), 1);
        assert_eq!(seq.extend(0, 16), 2);
        assert_eq!(seq.extend(65_535, 16), 1);
        let mut ts = Unwrap::default();
        assert_eq!(ts.extend(u32::MAX - 959, 32), 0);
        assert_eq!(ts.extend(0, 32), 960);
    }
}
