//! A room's recording: started and stopped by hosts (or when the room empties), its row written
//! through the journal, everyone told.

use protocol::{RoomId, ServerMessage};
use sfu::SfuCommand;

use crate::journal::Write;
use crate::recording::RecordingFinished;
use crate::store::{new_id, unix_ms};

use super::Hub;
use super::fanout::encode;

impl Hub {
    pub(super) fn start_recording(&mut self, room_id: &RoomId, started_by: Option<String>) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if room.recording.is_some() {
            return;
        }
        let recording_id = new_id();
        let started_at = unix_ms();
        let e2ee = room.e2ee;
        room.recording = Some((recording_id.clone(), started_at));
        self.sfu.send(SfuCommand::StartRecording {
            room: room_id.clone(),
            recording_id: recording_id.clone(),
            e2ee,
        });
        self.journal.write(Write::RecordingStarted {
            id: recording_id.clone(),
            meeting: room_id.0.clone(),
            started_at,
            started_by,
            e2ee,
        });
        tracing::info!(room = %room_id, recording = %recording_id, e2ee, "recording requested");
        self.broadcast_all(
            room_id,
            &encode(&ServerMessage::RecordingState {
                active: true,
                recording_id: Some(recording_id),
                started_at: Some(started_at),
                error: None,
            }),
        );
    }

    /// Stops the room's recording, if any; `error` says why when it stopped by itself.
    pub(super) fn stop_recording(&mut self, room_id: &RoomId, error: Option<String>) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some((recording_id, _)) = room.recording.take() else {
            return;
        };
        self.sfu.send(SfuCommand::StopRecording {
            room: room_id.clone(),
        });
        self.broadcast_all(
            room_id,
            &encode(&ServerMessage::RecordingState {
                active: false,
                recording_id: Some(recording_id),
                started_at: None,
                error,
            }),
        );
    }

    /// The recorder closed a recording: stopped, finished or failed.
    pub(super) fn recording_finished(&mut self, finished: RecordingFinished) {
        let still_running = self.rooms.get(&finished.room).is_some_and(|r| {
            r.recording
                .as_ref()
                .is_some_and(|(id, _)| *id == finished.recording_id)
        });
        if still_running {
            // It stopped by itself: a write failed. The meeting goes on; the hosts learn why.
            let error = finished
                .error
                .clone()
                .unwrap_or_else(|| "the recording stopped".to_string());
            self.stop_recording(&finished.room, Some(error));
        }
        if let Some((waiting, _, _)) = &mut self.shutdown {
            waiting.retain(|id| *id != finished.recording_id);
            if waiting.is_empty()
                && let Some((_, done, _)) = self.shutdown.take()
            {
                self.finish_shutdown(done);
            }
        }
        self.journal.write(Write::RecordingFinished {
            id: finished.recording_id,
            status: finished.status,
            ended_at: unix_ms(),
            error: finished.error,
            bytes: finished.bytes,
        });
    }
}
