//! Persistent state in an embedded SQLite file.
//!
//! Only the attendance log lives here for now; every query goes through [`Store`] so that a
//! PostgreSQL implementation can sit behind the same methods.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::{LeaveReason, ParticipantId, RoomId};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The server's storage.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// How a scheduled meeting's room opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Participants wait until a host opens the room or admits them.
    Host,
    /// The room opens by itself at the scheduled start.
    Scheduled,
}

/// What the server checks about an invitation when its token is used.
#[derive(Debug, Clone)]
pub struct JoinCheck {
    pub invitation_id: String,
    pub meeting_id: String,
    pub title: String,
    pub starts_at: i64,
    pub ends_at: i64,
    pub admission: Admission,
    pub cancelled: bool,
    pub revoked: bool,
    pub role: protocol::Role,
    pub name: String,
    pub site_id: Option<String>,
    pub site_name: Option<String>,
}

/// One row of the attendance log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AttendanceRow {
    pub room: String,
    pub participant_id: String,
    pub display_name: String,
    pub joined_at: i64,
    pub left_at: Option<i64>,
    pub leave_reason: Option<String>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let store = Self { pool };
        store.close_dangling().await?;
        Ok(store)
    }

    /// Marks attendance left open by a previous process (a crash or kill) as ended.
    async fn close_dangling(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE attendance SET left_at = ?, leave_reason = 'server_restart' \
             WHERE left_at IS NULL",
        )
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What a join token's invitation stands for now. (Interim: the storage rewrite brings
    /// meetings and invitations; until then no invitation exists.)
    pub async fn join_check(&self, _invitation_id: &str) -> Result<Option<JoinCheck>, StoreError> {
        Ok(None)
    }

    pub async fn revoke_invitation(&self, _invitation_id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    pub async fn record_quality(
        &self,
        _participant: ParticipantId,
        _quality: protocol::Quality,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    pub async fn record_join(
        &self,
        room: &RoomId,
        participant: ParticipantId,
        _invitation_id: Option<&str>,
        name: &str,
        _site_id: Option<&str>,
        _role: protocol::Role,
    ) -> Result<(), StoreError> {
        let now = unix_now();
        sqlx::query("INSERT INTO rooms (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(&room.0)
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO attendance (room, participant_id, display_name, joined_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(&room.0)
        .bind(participant.to_string())
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn record_leave(
        &self,
        participant: ParticipantId,
        reason: LeaveReason,
    ) -> Result<(), StoreError> {
        let reason = match reason {
            LeaveReason::Left => "left",
            LeaveReason::TimedOut => "timed_out",
            LeaveReason::Removed => "removed",
        };
        sqlx::query(
            "UPDATE attendance SET left_at = ?, leave_reason = ? \
             WHERE participant_id = ? AND left_at IS NULL",
        )
        .bind(unix_now())
        .bind(reason)
        .bind(participant.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The attendance log of one room, oldest first.
    pub async fn attendance(&self, room: &RoomId) -> Result<Vec<AttendanceRow>, StoreError> {
        Ok(sqlx::query_as::<_, AttendanceRow>(
            "SELECT room, participant_id, display_name, joined_at, left_at, leave_reason \
             FROM attendance WHERE room = ? ORDER BY id",
        )
        .bind(&room.0)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn attendance_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("meet-db-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let url = format!("sqlite://{}/test.db", dir.display());
        let room = RoomId("r".into());
        {
            let store = Store::open(&url).await.expect("open");
            store
                .record_join(
                    &room,
                    ParticipantId(7),
                    None,
                    "Hà Giang",
                    None,
                    protocol::Role::Participant,
                )
                .await
                .expect("join");
        }
        let store = Store::open(&url).await.expect("reopen");
        let rows = store.attendance(&room).await.expect("query");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].display_name, "Hà Giang");
        // The process "died" with the participant present: the reopen closed the row.
        assert_eq!(rows[0].leave_reason.as_deref(), Some("server_restart"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
