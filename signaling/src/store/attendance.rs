//! The attendance log: who was in which room, when, in what role, how well connected.
//!
//! Rooms of meetings are named by the meeting id; development "open rooms" (no token) have a
//! free-form name and are logged the same way, with no invitation.

use protocol::{LeaveReason, ParticipantId, Quality, Role, RoomId};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, unix_ms};

/// One row of the attendance log: one participant's stay in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttendanceRow {
    pub room: String,
    pub participant_id: ParticipantId,
    pub invitation_id: Option<String>,
    pub display_name: String,
    pub site_id: Option<String>,
    pub role: Role,
    /// Milliseconds since the Unix epoch.
    pub joined_at: i64,
    pub left_at: Option<i64>,
    /// `left`, `timed_out`, `removed`, `server_restart` (the server stopped without closing
    /// it: a crash or kill), or `server_lost` (the cluster's node holding it died).
    pub leave_reason: Option<String>,
    /// The last connection quality seen: `good`, `fair` or `poor`.
    pub quality: Option<String>,
}

/// The column holds the id's display form, `PA<number>` (see `ParticipantId`'s `Display`).
fn parse_participant_id(text: &str) -> Option<ParticipantId> {
    let digits = text.strip_prefix("PA").unwrap_or(text);
    digits.parse().ok().map(ParticipantId)
}

impl AttendanceRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let role: String = row.try_get("role")?;
        Ok(Self {
            room: row.try_get("room")?,
            participant_id: parse_participant_id(&row.try_get::<String, _>("participant_id")?)
                .ok_or_else(|| sqlx::Error::Decode("an attendance row's participant id".into()))?,
            invitation_id: row.try_get("invitation_id")?,
            display_name: row.try_get("display_name")?,
            site_id: row.try_get("site_id")?,
            role: Role::parse(&role).unwrap_or(Role::Viewer),
            joined_at: row.try_get("joined_at")?,
            left_at: row.try_get("left_at")?,
            leave_reason: row.try_get("leave_reason")?,
            quality: row.try_get("quality")?,
        })
    }
}

fn reason_name(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::Left => "left",
        LeaveReason::TimedOut => "timed_out",
        LeaveReason::Removed => "removed",
    }
}

impl Store {
    /// Logs that `participant` entered `room` at `at_ms` (ms since the epoch).
    #[allow(clippy::too_many_arguments)]
    pub async fn record_join(
        &self,
        room: &RoomId,
        participant: ParticipantId,
        invitation_id: Option<&str>,
        name: &str,
        site_id: Option<&str>,
        role: Role,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO attendance (room, participant_id, invitation_id, site_id, role, \
             display_name, joined_at, node) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&room.0)
        .bind(participant.to_string())
        .bind(invitation_id)
        .bind(site_id)
        .bind(role.as_str())
        .bind(name)
        .bind(at_ms)
        .bind(self.node.as_deref().map(str::to_string))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Logs that `participant` left at `at_ms` (ms since the epoch), and why.
    pub async fn record_leave(
        &self,
        participant: ParticipantId,
        reason: LeaveReason,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE attendance SET left_at = $1, leave_reason = $2 \
             WHERE participant_id = $3 AND left_at IS NULL",
        )
        .bind(at_ms)
        .bind(reason_name(reason))
        .bind(participant.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Logs the connection quality of a participant who is present.
    pub async fn record_quality(
        &self,
        participant: ParticipantId,
        quality: Quality,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE attendance SET quality = $1, quality_at = $2 \
             WHERE participant_id = $3 AND left_at IS NULL",
        )
        .bind(quality.as_str())
        .bind(unix_ms())
        .bind(participant.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The attendance log of one room, oldest first.
    pub async fn attendance(&self, room: &RoomId) -> Result<Vec<AttendanceRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT room, participant_id, invitation_id, display_name, site_id, role, \
             joined_at, left_at, leave_reason, quality FROM attendance WHERE room = $1 \
             ORDER BY id",
        )
        .bind(&room.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(AttendanceRow::from_row)
            .collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::stores;

    #[tokio::test]
    async fn joins_leaves_and_quality_are_logged() {
        for t in stores().await {
            let store = &t.store;
            let room = RoomId("0123456789abcdef0123456789abcdef".into());
            store
                .record_join(
                    &room,
                    ParticipantId(1),
                    Some("inv1"),
                    "Hà Giang",
                    Some("site1"),
                    Role::Participant,
                    unix_ms(),
                )
                .await
                .expect("join");
            store
                .record_join(
                    &room,
                    ParticipantId(2),
                    None,
                    "guest",
                    None,
                    Role::Host,
                    unix_ms(),
                )
                .await
                .expect("join");
            store
                .record_quality(ParticipantId(1), Quality::Poor)
                .await
                .expect("quality");
            store
                .record_quality(ParticipantId(1), Quality::Fair)
                .await
                .expect("quality");
            store
                .record_leave(ParticipantId(1), LeaveReason::TimedOut, unix_ms())
                .await
                .expect("leave");
            // Quality after leaving changes nothing: the row is closed.
            store
                .record_quality(ParticipantId(1), Quality::Good)
                .await
                .expect("quality");
            let rows = store.attendance(&room).await.expect("rows");
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0].invitation_id.as_deref(), Some("inv1"));
            assert_eq!(rows[0].site_id.as_deref(), Some("site1"));
            assert_eq!(rows[0].role, Role::Participant);
            assert_eq!(rows[0].quality.as_deref(), Some("fair"));
            assert_eq!(rows[0].leave_reason.as_deref(), Some("timed_out"));
            assert!(
                rows[0]
                    .left_at
                    .is_some_and(|left| left >= rows[0].joined_at)
            );
            assert_eq!(rows[1].role, Role::Host);
            assert_eq!(rows[1].left_at, None);
            assert!(
                store
                    .attendance(&RoomId("other".into()))
                    .await
                    .expect("rows")
                    .is_empty()
            );
            t.finish().await;
        }
    }

    /// A database written by the first schema (times in seconds, a rooms table) keeps its
    /// attendance through the upgrade, in milliseconds.
    #[tokio::test]
    async fn the_first_sqlite_schema_is_upgraded() {
        sqlx::any::install_default_drivers();
        let dir = std::env::temp_dir().join(format!("meet-upgrade-{}", crate::store::new_id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let url = format!("sqlite://{}/old.db", dir.display());
        let pool = sqlx::any::AnyPoolOptions::new()
            .connect(&format!("{url}?mode=rwc"))
            .await
            .expect("connect");
        let mut first = sqlx::migrate!("./migrations/sqlite");
        first.migrations = std::borrow::Cow::Owned(first.migrations[..1].to_vec());
        first.run(&pool).await.expect("the first migration");
        sqlx::query("INSERT INTO rooms (name, created_at) VALUES ('old', 1700000000)")
            .execute(&pool)
            .await
            .expect("insert");
        sqlx::query(
            "INSERT INTO attendance (room, participant_id, display_name, joined_at, left_at, \
             leave_reason) VALUES ('old', 'PA1', 'Bà Ba', 1700000000, 1700000060, 'left')",
        )
        .execute(&pool)
        .await
        .expect("insert");
        pool.close().await;

        let store = Store::open(&url).await.expect("upgraded");
        let rows = store.attendance(&RoomId("old".into())).await.expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].display_name, "Bà Ba");
        assert_eq!(rows[0].joined_at, 1_700_000_000_000);
        assert_eq!(rows[0].left_at, Some(1_700_000_060_000));
        assert_eq!(rows[0].role, Role::Participant);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn everything_survives_a_restart() {
        for t in stores().await {
            let room = RoomId("r".into());
            let account = t
                .store
                .create_account(&crate::store::NewAccount {
                    username: "lan",
                    display_name: "Lan",
                    password: "a long password",
                    role: crate::store::AccountRole::Admin,
                })
                .await
                .expect("account");
            t.store
                .record_join(
                    &room,
                    ParticipantId(7),
                    None,
                    "Hà Giang",
                    None,
                    Role::Viewer,
                    unix_ms(),
                )
                .await
                .expect("join");
            t.store.close().await;
            let reopened = Store::open(&t.url).await.expect("reopen");
            let rows = reopened.attendance(&room).await.expect("query");
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].display_name, "Hà Giang");
            // The process "died" with the participant present: the reopen closed the row.
            assert_eq!(rows[0].leave_reason.as_deref(), Some("server_restart"));
            assert_eq!(
                reopened.account(&account.id).await.expect("query"),
                Some(account)
            );
            reopened.close().await;
            t.finish().await;
        }
    }
}
