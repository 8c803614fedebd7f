//! Recordings of rooms: one row per recording, beside its directory of files.
//!
//! The row is what the API lists and what survives a crash: a row still `recording` when the
//! server starts belongs to a recorder that died with the previous process, which is how crash
//! recovery finds it ([`Store::recordings_in_progress`]).

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Store, StoreError};

/// Where a recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    /// A recorder is writing it now.
    Recording,
    /// Stopped by a host (or by the room closing) and its files closed properly.
    Completed,
    /// Cut short: the server stopped or crashed while recording. The files hold what was
    /// written until then.
    Interrupted,
    /// The recorder failed (`error` says why).
    Failed,
}

impl RecordingStatus {
    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingStatus::Recording => "recording",
            RecordingStatus::Completed => "completed",
            RecordingStatus::Interrupted => "interrupted",
            RecordingStatus::Failed => "failed",
        }
    }

    /// The status a stored name stands for.
    pub fn parse(text: &str) -> Option<RecordingStatus> {
        match text {
            "recording" => Some(RecordingStatus::Recording),
            "completed" => Some(RecordingStatus::Completed),
            "interrupted" => Some(RecordingStatus::Interrupted),
            "failed" => Some(RecordingStatus::Failed),
            _ => None,
        }
    }
}

/// One recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRow {
    /// 32 hex characters; also the name of its directory.
    pub id: String,
    /// The room recorded: a meeting id, or an open room's name.
    pub meeting_id: String,
    /// Milliseconds since the Unix epoch.
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub status: RecordingStatus,
    /// Why it failed or was cut short.
    pub error: Option<String>,
    /// Size of its files when it ended.
    pub bytes: i64,
    /// The meeting was end-to-end encrypted: the files hold ciphertext and there is no mix.
    pub e2ee: bool,
}

/// A query on the recordings table with every column of [`RecordingRow`]; a macro, so that
/// the SQL stays one literal string.
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT id, meeting_id, started_at, ended_at, status, error, bytes, e2ee \
             FROM recordings ",
            $rest
        )
    };
}

impl RecordingRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let status: String = row.try_get("status")?;
        Ok(Self {
            id: row.try_get("id")?,
            meeting_id: row.try_get("meeting_id")?,
            started_at: row.try_get("started_at")?,
            ended_at: row.try_get("ended_at")?,
            // Only this module writes the column; an unknown value can only come from a newer
            // server, and "failed" is the reading that promises least about the files.
            status: RecordingStatus::parse(&status).unwrap_or(RecordingStatus::Failed),
            error: row.try_get("error")?,
            bytes: row.try_get("bytes")?,
            e2ee: super::flag(row.try_get("e2ee")?),
        })
    }
}

impl Store {
    /// Notes that a recording of `meeting_id` started; `started_by` is the host's invitation
    /// (none in open rooms); `e2ee` that the media it holds is end-to-end encrypted.
    pub async fn create_recording(
        &self,
        id: &str,
        meeting_id: &str,
        started_at: i64,
        started_by: Option<&str>,
        e2ee: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO recordings (id, meeting_id, started_at, status, bytes, started_by, \
             e2ee) VALUES ($1, $2, $3, $4, 0, $5, $6)",
        )
        .bind(id)
        .bind(meeting_id)
        .bind(started_at)
        .bind(RecordingStatus::Recording.as_str())
        .bind(started_by)
        .bind(i64::from(e2ee))
        .execute(&self.pool)
        .await
        .map_err(|err| {
            if super::is_unique_violation(&err) {
                StoreError::Conflict("a recording with this id exists".to_string())
            } else {
                StoreError::Database(err)
            }
        })?;
        Ok(())
    }

    /// Notes how a recording ended. [`StoreError::NotFound`] if there is no such recording.
    pub async fn finish_recording(
        &self,
        id: &str,
        status: RecordingStatus,
        ended_at: i64,
        error: Option<&str>,
        bytes: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE recordings SET status = $1, ended_at = $2, error = $3, bytes = $4 \
             WHERE id = $5",
        )
        .bind(status.as_str())
        .bind(ended_at)
        .bind(error)
        .bind(bytes)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// One recording.
    pub async fn recording(&self, id: &str) -> Result<Option<RecordingRow>, StoreError> {
        let row = sqlx::query(select!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(RecordingRow::from_row).transpose()?)
    }

    /// The recordings of one room, newest first.
    pub async fn recordings(&self, meeting_id: &str) -> Result<Vec<RecordingRow>, StoreError> {
        let rows = sqlx::query(select!(
            "WHERE meeting_id = $1 ORDER BY started_at DESC, id"
        ))
        .bind(meeting_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(RecordingRow::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Recordings still marked `recording`. At start no recorder runs yet, so these were cut
    /// short by the previous process and need recovering.
    pub async fn recordings_in_progress(&self) -> Result<Vec<RecordingRow>, StoreError> {
        let rows = sqlx::query(select!("WHERE status = $1 ORDER BY started_at, id"))
            .bind(RecordingStatus::Recording.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(RecordingRow::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Forgets a recording (its files are the caller's to remove). [`StoreError::NotFound`]
    /// if there is no such recording.
    pub async fn delete_recording(&self, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM recordings WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Recordings that ended before `ended_before` (milliseconds), oldest first: what the
    /// retention period lets go. A recording still running never qualifies.
    pub async fn recordings_older_than(
        &self,
        ended_before: i64,
    ) -> Result<Vec<RecordingRow>, StoreError> {
        let rows = sqlx::query(select!(
            "WHERE ended_at IS NOT NULL AND ended_at < $1 AND status <> $2 \
             ORDER BY ended_at, id"
        ))
        .bind(ended_before)
        .bind(RecordingStatus::Recording.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(RecordingRow::from_row)
            .collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::new_id;
    use crate::store::test_support::stores;

    #[tokio::test]
    async fn recordings_are_created_finished_listed_and_deleted() {
        for t in stores().await {
            let store = &t.store;
            let first = new_id();
            let second = new_id();
            let elsewhere = new_id();
            store
                .create_recording(&first, "room-a", 1_000, Some("inv1"), false)
                .await
                .expect("create");
            store
                .create_recording(&second, "room-a", 2_000, None, true)
                .await
                .expect("create");
            store
                .create_recording(&elsewhere, "room-b", 1_500, None, false)
                .await
                .expect("create");
            assert!(matches!(
                store
                    .create_recording(&first, "room-a", 3_000, None, false)
                    .await,
                Err(StoreError::Conflict(_))
            ));

            let row = store.recording(&first).await.expect("query").expect("row");
            assert_eq!(
                row,
                RecordingRow {
                    id: first.clone(),
                    meeting_id: "room-a".into(),
                    started_at: 1_000,
                    ended_at: None,
                    status: RecordingStatus::Recording,
                    error: None,
                    bytes: 0,
                    e2ee: false,
                }
            );
            let encrypted = store.recording(&second).await.expect("query").expect("row");
            assert!(encrypted.e2ee, "an encrypted recording is stored as one");
            let running: Vec<String> = store
                .recordings_in_progress()
                .await
                .expect("query")
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(running, [first.clone(), elsewhere.clone(), second.clone()]);

            store
                .finish_recording(&first, RecordingStatus::Completed, 5_000, None, 4_321)
                .await
                .expect("finish");
            store
                .finish_recording(
                    &elsewhere,
                    RecordingStatus::Failed,
                    6_000,
                    Some("disk full"),
                    10,
                )
                .await
                .expect("finish");
            assert!(matches!(
                store
                    .finish_recording(&new_id(), RecordingStatus::Completed, 1, None, 0)
                    .await,
                Err(StoreError::NotFound)
            ));
            let row = store.recording(&first).await.expect("query").expect("row");
            assert_eq!(row.status, RecordingStatus::Completed);
            assert_eq!(row.ended_at, Some(5_000));
            assert_eq!(row.bytes, 4_321);
            let failed = store
                .recording(&elsewhere)
                .await
                .expect("query")
                .expect("row");
            assert_eq!(failed.error.as_deref(), Some("disk full"));

            // Newest first, only this room.
            let listed: Vec<String> = store
                .recordings("room-a")
                .await
                .expect("query")
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(listed, [second.clone(), first.clone()]);
            assert_eq!(
                store.recordings_in_progress().await.expect("query").len(),
                1
            );

            // Retention: only ended recordings before the limit, never a running one.
            let old: Vec<String> = store
                .recordings_older_than(5_500)
                .await
                .expect("query")
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(old, [first.as_str()]);
            assert_eq!(
                store
                    .recordings_older_than(i64::MAX)
                    .await
                    .expect("query")
                    .len(),
                2
            );

            store.delete_recording(&first).await.expect("delete");
            assert_eq!(store.recording(&first).await.expect("query"), None);
            assert!(matches!(
                store.delete_recording(&first).await,
                Err(StoreError::NotFound)
            ));
            assert_eq!(store.recordings("room-a").await.expect("query").len(), 1);
            t.finish().await;
        }
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            RecordingStatus::Recording,
            RecordingStatus::Completed,
            RecordingStatus::Interrupted,
            RecordingStatus::Failed,
        ] {
            assert_eq!(RecordingStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).expect("serializes"),
                serde_json::Value::String(status.as_str().to_string())
            );
        }
        assert_eq!(RecordingStatus::parse("Completed"), None);
    }
}
