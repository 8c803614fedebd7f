//! The room hub's writes to storage, applied one at a time in the order the hub made them.
//!
//! The hub never waits on the database: it hands each write to this journal and goes on.
//! One task applies them in order, so a participant's leave can never reach the attendance
//! log before its join (which left rows open), nor a recording's end before its start. Each
//! write carries the time of its event, not of its application.

use protocol::{LeaveReason, ParticipantId, Quality, Role, RoomId};
use tokio::sync::{mpsc, oneshot};

use crate::store::{RecordingStatus, Store, StoreError};

/// One write, with the time (ms since the epoch) its event happened.
#[derive(Debug)]
pub enum Write {
    Join {
        room: RoomId,
        participant: ParticipantId,
        invitation: Option<String>,
        name: String,
        site: Option<String>,
        role: Role,
        at_ms: i64,
    },
    Leave {
        participant: ParticipantId,
        reason: LeaveReason,
        at_ms: i64,
    },
    Quality {
        participant: ParticipantId,
        quality: Quality,
    },
    /// A host removed the invitation's holder: the link stops working.
    RevokeInvitation { invitation: String },
    RecordingStarted {
        id: String,
        meeting: String,
        started_at: i64,
        started_by: Option<String>,
        e2ee: bool,
    },
    RecordingFinished {
        id: String,
        status: RecordingStatus,
        ended_at: i64,
        error: Option<String>,
        bytes: i64,
    },
    /// Answered once every write before it was applied.
    Flush(oneshot::Sender<()>),
}

/// A cheap handle to the journal task.
#[derive(Debug, Clone)]
pub struct Journal {
    writes: mpsc::UnboundedSender<Write>,
}

impl Journal {
    /// Starts the task that applies writes to `store`.
    pub fn spawn(store: Store) -> Self {
        let (writes, mut pending) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(write) = pending.recv().await {
                apply_with_retries(&store, write).await;
            }
        });
        Self { writes }
    }

    /// Queues a write; it is applied after every write queued before it.
    pub fn write(&self, write: Write) {
        if self.writes.send(write).is_err() {
            tracing::error!("the storage journal stopped; a write is lost");
        }
    }

    /// Waits until every write queued so far was applied (shutdown).
    pub async fn flush(&self) {
        let (done, applied) = oneshot::channel();
        self.write(Write::Flush(done));
        let _ = applied.await;
    }
}

/// How often a write that failed for the database's sake (locked, busy, a lost connection)
/// is tried again, and the first wait; each wait doubles.
const RETRIES: u32 = 5;
const FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Applies `write`, trying again when the database failed rather than the write: a burst of
/// load that keeps SQLite locked past its busy timeout must not lose the attendance log.
/// Later writes wait meanwhile, so the order holds.
async fn apply_with_retries(store: &Store, write: Write) {
    let mut wait = FIRST_RETRY;
    for _ in 0..RETRIES {
        match apply(store, &write).await {
            Err(StoreError::Database(err)) => {
                tracing::warn!(%err, ?wait, "a write of the room hub failed; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            result => return finish(write, result),
        }
    }
    let result = apply(store, &write).await;
    finish(write, result);
}

fn finish(write: Write, result: Result<(), StoreError>) {
    if let Write::Flush(done) = write {
        let _ = done.send(());
    }
    if let Err(err) = result {
        tracing::error!(%err, "a write of the room hub is lost");
    }
}

async fn apply(store: &Store, write: &Write) -> Result<(), StoreError> {
    match write {
        Write::Join {
            room,
            participant,
            invitation,
            name,
            site,
            role,
            at_ms,
        } => {
            store
                .record_join(
                    room,
                    *participant,
                    invitation.as_deref(),
                    name,
                    site.as_deref(),
                    *role,
                    *at_ms,
                )
                .await
        }
        Write::Leave {
            participant,
            reason,
            at_ms,
        } => store.record_leave(*participant, *reason, *at_ms).await,
        Write::Quality {
            participant,
            quality,
        } => store.record_quality(*participant, *quality).await,
        Write::RevokeInvitation { invitation } => store.revoke_invitation(invitation).await,
        Write::RecordingStarted {
            id,
            meeting,
            started_at,
            started_by,
            e2ee,
        } => {
            store
                .create_recording(id, meeting, *started_at, started_by.as_deref(), *e2ee)
                .await
        }
        Write::RecordingFinished {
            id,
            status,
            ended_at,
            error,
            bytes,
        } => {
            store
                .finish_recording(id, *status, *ended_at, error.as_deref(), *bytes)
                .await
        }
        // Answered by `finish`, once every write before it was applied.
        Write::Flush(_) => Ok(()),
    }
}
