//! Scheduled meetings and their invitations.
//!
//! A meeting has exactly one room, whose id is the meeting id. An invitation is one person or
//! one site; its id is the identity carried by the join token (`sub`).

use protocol::Role;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::accounts::check_name;
use super::{Account, Store, StoreError, flag, is_id, new_id, unix_ms};

/// Most invitations one meeting may have (revoked ones included), which bounds a meeting's
/// detail page and its attendance report.
pub const MAX_INVITATIONS: i64 = 5_000;
/// Longest meeting title, in characters.
pub const MAX_TITLE: usize = 200;

/// How people get from the lobby into the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Participants wait until a host opens the room or admits them.
    Host,
    /// The room opens by itself at `starts_at`.
    Scheduled,
}

impl Admission {
    fn as_str(self) -> &'static str {
        match self {
            Admission::Host => "host",
            Admission::Scheduled => "scheduled",
        }
    }

    fn parse(text: &str) -> Admission {
        // A damaged row falls back to the stricter rule.
        if text == "scheduled" {
            Admission::Scheduled
        } else {
            Admission::Host
        }
    }
}

/// Whether a meeting still takes place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeetingStatus {
    Scheduled,
    Cancelled,
}

/// A scheduled meeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Meeting {
    pub id: String,
    pub title: String,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: i64,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub ends_at: i64,
    pub admission: Admission,
    /// The room records itself from the moment it opens.
    pub auto_record: bool,
    /// The organizer marked the meeting confidential.
    pub confidential: bool,
    /// Media is end-to-end encrypted: the server forwards and records only ciphertext
    /// (docs/e2ee.md).
    pub e2ee: bool,
    pub status: MeetingStatus,
    pub organizer_id: String,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl Meeting {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let status: String = row.try_get("status")?;
        Ok(Self {
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            starts_at: row.try_get("starts_at")?,
            ends_at: row.try_get("ends_at")?,
            admission: Admission::parse(&row.try_get::<String, _>("admission")?),
            auto_record: flag(row.try_get("auto_record")?),
            confidential: flag(row.try_get("confidential")?),
            e2ee: flag(row.try_get("e2ee")?),
            status: if status == "scheduled" {
                MeetingStatus::Scheduled
            } else {
                MeetingStatus::Cancelled
            },
            organizer_id: row.try_get("organizer_id")?,
            created_at: row.try_get("created_at")?,
        })
    }

    pub fn is_cancelled(&self) -> bool {
        self.status == MeetingStatus::Cancelled
    }
}

/// A new meeting.
#[derive(Debug, Clone)]
pub struct NewMeeting<'a> {
    pub title: &'a str,
    pub starts_at: i64,
    pub ends_at: i64,
    pub admission: Admission,
    pub auto_record: bool,
    pub confidential: bool,
    pub e2ee: bool,
}

/// Changes to a meeting; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct MeetingPatch<'a> {
    pub title: Option<&'a str>,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub admission: Option<Admission>,
    pub auto_record: Option<bool>,
    pub confidential: Option<bool>,
    pub e2ee: Option<bool>,
}

/// Who is invited: a site (its name is the display name), an account (its display name), or a
/// named person; exactly one of `site_id`, `account_id` and `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Invitee {
    #[schema(value_type = String, example = "participant")]
    /// `host`, `presenter`, `participant` or `viewer`.
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    /// An account, which then finds the meeting among its own (`GET /api/my/meetings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An invitation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub id: String,
    pub meeting_id: String,
    pub role: Role,
    pub name: String,
    pub site_id: Option<String>,
    pub site_code: Option<String>,
    /// The account invited, for an invitation of one account (the organizer's own too).
    pub account_id: Option<String>,
    pub revoked: bool,
}

impl Invitation {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let role: String = row.try_get("role")?;
        Ok(Self {
            id: row.try_get("id")?,
            meeting_id: row.try_get("meeting_id")?,
            // A damaged row gets the least rights.
            role: Role::parse(&role).unwrap_or(Role::Viewer),
            name: row.try_get("name")?,
            site_id: row.try_get("site_id")?,
            site_code: row.try_get("site_code")?,
            account_id: row.try_get("account_id")?,
            revoked: flag(row.try_get("revoked")?),
        })
    }
}

/// A meeting an account may join, and the invitation it joins with: its own, or else its
/// site's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitedMeeting {
    pub meeting: Meeting,
    pub invitation: Invitation,
}

/// How many meetings "my meetings" lists at most: those not over yet, and those over.
pub const MAX_MY_MEETINGS: i64 = 500;
pub const MAX_MY_PAST_MEETINGS: i64 = 100;

/// What the room hub needs to know about an invitation when someone joins with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinCheck {
    pub invitation_id: String,
    pub meeting_id: String,
    pub title: String,
    /// Milliseconds since the Unix epoch.
    pub starts_at: i64,
    pub ends_at: i64,
    pub admission: Admission,
    pub auto_record: bool,
    /// Media is end-to-end encrypted; clients are told so in `lobby` and `joined`.
    pub e2ee: bool,
    pub cancelled: bool,
    pub revoked: bool,
    pub role: Role,
    pub name: String,
    pub site_id: Option<String>,
    pub site_name: Option<String>,
}

/// An invitee checked against the directory and the accounts: what its invitation stores.
#[derive(Debug)]
struct Resolved {
    role: Role,
    name: String,
    site_id: Option<String>,
    account_id: Option<String>,
}

const MEETING_COLUMNS: &str = "id, title, starts_at, ends_at, admission, auto_record, \
     confidential, e2ee, status, organizer_id, created_at";
const INVITATION_SELECT: &str = "SELECT i.id, i.meeting_id, i.role, i.name, i.site_id, \
     s.code AS site_code, i.account_id, i.revoked \
     FROM invitations i LEFT JOIN sites s ON s.id = i.site_id";
/// A meeting's columns as [`Meeting::from_row`] reads them, and its invitation's as
/// [`Invitation::from_row`] would, prefixed `inv_`, from meetings `m`, invitations `i` and
/// sites `s`.
const INVITED_MEETING_SELECT: &str = "SELECT m.id, m.title, m.starts_at, m.ends_at, \
     m.admission, m.auto_record, m.confidential, m.e2ee, m.status, m.organizer_id, \
     m.created_at, i.id AS inv_id, i.role AS inv_role, i.name AS inv_name, \
     i.site_id AS inv_site_id, s.code AS inv_site_code, i.account_id AS inv_account_id, \
     i.created_at AS inv_created_at \
     FROM invitations i JOIN meetings m ON m.id = i.meeting_id \
     LEFT JOIN sites s ON s.id = i.site_id";

impl InvitedMeeting {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let meeting = Meeting::from_row(row)?;
        let role: String = row.try_get("inv_role")?;
        let invitation = Invitation {
            id: row.try_get("inv_id")?,
            meeting_id: meeting.id.clone(),
            role: Role::parse(&role).unwrap_or(Role::Viewer),
            name: row.try_get("inv_name")?,
            site_id: row.try_get("inv_site_id")?,
            site_code: row.try_get("inv_site_code")?,
            account_id: row.try_get("inv_account_id")?,
            revoked: false,
        };
        Ok(Self {
            meeting,
            invitation,
        })
    }
}

/// One meeting per id, each with the invitation its account joins with: the account's own
/// rather than its site's, then the oldest. `rows` (of [`INVITED_MEETING_SELECT`]) come sorted
/// by meeting.
fn one_per_meeting(rows: &[AnyRow], account_id: &str) -> Result<Vec<InvitedMeeting>, sqlx::Error> {
    let mut out: Vec<(InvitedMeeting, i64)> = Vec::new();
    for row in rows {
        let candidate = InvitedMeeting::from_row(row)?;
        let invited_at: i64 = row.try_get("inv_created_at")?;
        let rank = |m: &InvitedMeeting, at: i64| {
            (m.invitation.account_id.as_deref() != Some(account_id), at)
        };
        match out.last_mut() {
            Some((kept, kept_at)) if kept.meeting.id == candidate.meeting.id => {
                if rank(&candidate, invited_at) < rank(kept, *kept_at) {
                    *kept = candidate;
                    *kept_at = invited_at;
                }
            }
            _ => out.push((candidate, invited_at)),
        }
    }
    Ok(out.into_iter().map(|(m, _)| m).collect())
}

fn check_title(title: &str) -> Result<(), StoreError> {
    let count = title.chars().count();
    if (1..=MAX_TITLE).contains(&count)
        && !title.trim().is_empty()
        && !title.chars().any(char::is_control)
    {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "a title is 1 to {MAX_TITLE} printable characters"
        )))
    }
}

fn check_times(starts_at: i64, ends_at: i64) -> Result<(), StoreError> {
    // The upper bound (year 9999) keeps every derived time, such as a token's expiry in
    // seconds, far from overflow.
    const LATEST: i64 = 253_402_300_799_000;
    if !(0..=LATEST).contains(&starts_at) || !(0..=LATEST).contains(&ends_at) {
        return Err(StoreError::Invalid(
            "times are milliseconds since 1970 and before the year 10000".into(),
        ));
    }
    if ends_at <= starts_at {
        return Err(StoreError::Invalid(
            "ends_at must be after starts_at".into(),
        ));
    }
    Ok(())
}

impl Store {
    /// Schedules a meeting organized by `organizer`, who is invited as host, and invites
    /// `invitees`, all in one transaction.
    pub async fn create_meeting(
        &self,
        organizer: &Account,
        new: &NewMeeting<'_>,
        invitees: &[Invitee],
    ) -> Result<Meeting, StoreError> {
        check_title(new.title)?;
        check_times(new.starts_at, new.ends_at)?;
        if invitees.len() as i64 + 1 > MAX_INVITATIONS {
            return Err(StoreError::Invalid(format!(
                "a meeting has at most {MAX_INVITATIONS} invitations"
            )));
        }
        let mut resolved = Vec::with_capacity(invitees.len());
        for invitee in invitees {
            resolved.push(self.resolve_invitee(invitee).await?);
        }
        let id = new_id();
        let now = unix_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO meetings (id, title, starts_at, ends_at, admission, auto_record, \
             confidential, e2ee, status, organizer_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $8, $9, $10, 'scheduled', $6, $7, $7)",
        )
        .bind(&id)
        .bind(new.title.trim())
        .bind(new.starts_at)
        .bind(new.ends_at)
        .bind(new.admission.as_str())
        .bind(&organizer.id)
        .bind(now)
        .bind(i64::from(new.auto_record))
        .bind(i64::from(new.confidential))
        .bind(i64::from(new.e2ee))
        .execute(&mut *tx)
        .await?;
        // The creator's own invitation names their account, so the meeting is among theirs.
        let creator = Resolved {
            role: Role::Host,
            name: organizer.display_name.clone(),
            site_id: None,
            account_id: Some(organizer.id.clone()),
        };
        for invitee in std::iter::once(creator).chain(resolved) {
            sqlx::query(
                "INSERT INTO invitations (id, meeting_id, role, name, site_id, revoked, \
                 created_at, account_id) VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
            )
            .bind(new_id())
            .bind(&id)
            .bind(invitee.role.as_str())
            .bind(invitee.name)
            .bind(invitee.site_id)
            .bind(now)
            .bind(invitee.account_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.meeting(&id).await?.ok_or(StoreError::NotFound)
    }

    /// The role, display name, site and account of an invitee, checked.
    async fn resolve_invitee(&self, invitee: &Invitee) -> Result<Resolved, StoreError> {
        match (&invitee.site_id, &invitee.account_id, &invitee.name) {
            (Some(site_id), None, None) => {
                let site = self
                    .site(site_id)
                    .await?
                    .ok_or_else(|| StoreError::Invalid(format!("no site has the id {site_id}")))?;
                Ok(Resolved {
                    role: invitee.role,
                    name: site.name,
                    site_id: Some(site.id),
                    account_id: None,
                })
            }
            (None, Some(account_id), None) => {
                let account = self.account(account_id).await?.ok_or_else(|| {
                    StoreError::Invalid(format!("no account has the id {account_id}"))
                })?;
                Ok(Resolved {
                    role: invitee.role,
                    name: account.display_name,
                    site_id: None,
                    account_id: Some(account.id),
                })
            }
            (None, None, Some(name)) => {
                check_name(name, "an invitee's name")?;
                Ok(Resolved {
                    role: invitee.role,
                    name: name.trim().to_string(),
                    site_id: None,
                    account_id: None,
                })
            }
            _ => Err(StoreError::Invalid(
                "an invitee has exactly one of site_id, account_id and name".into(),
            )),
        }
    }

    /// Meetings by start time: those of `organizer_id`, or all of them.
    pub async fn meetings(&self, organizer_id: Option<&str>) -> Result<Vec<Meeting>, StoreError> {
        let rows = match organizer_id {
            Some(organizer) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {MEETING_COLUMNS} FROM meetings WHERE organizer_id = $1 \
                     ORDER BY starts_at, id"
                )))
                .bind(organizer)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {MEETING_COLUMNS} FROM meetings ORDER BY starts_at, id"
                )))
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(Meeting::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// One meeting.
    pub async fn meeting(&self, id: &str) -> Result<Option<Meeting>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MEETING_COLUMNS} FROM meetings WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Meeting::from_row).transpose()?)
    }

    /// Changes a meeting; a cancelled meeting is a [`StoreError::Conflict`].
    pub async fn update_meeting(
        &self,
        id: &str,
        patch: &MeetingPatch<'_>,
    ) -> Result<Meeting, StoreError> {
        let current = self.meeting(id).await?.ok_or(StoreError::NotFound)?;
        if current.is_cancelled() {
            return Err(StoreError::Conflict("the meeting is cancelled".into()));
        }
        let title = patch.title.unwrap_or(&current.title);
        let starts_at = patch.starts_at.unwrap_or(current.starts_at);
        let ends_at = patch.ends_at.unwrap_or(current.ends_at);
        check_title(title)?;
        check_times(starts_at, ends_at)?;
        sqlx::query(
            "UPDATE meetings SET title = $1, starts_at = $2, ends_at = $3, admission = $4, \
             updated_at = $5, auto_record = $7, confidential = $8, e2ee = $9 \
             WHERE id = $6 AND status = 'scheduled'",
        )
        .bind(title.trim())
        .bind(starts_at)
        .bind(ends_at)
        .bind(patch.admission.unwrap_or(current.admission).as_str())
        .bind(unix_ms())
        .bind(id)
        .bind(i64::from(patch.auto_record.unwrap_or(current.auto_record)))
        .bind(i64::from(
            patch.confidential.unwrap_or(current.confidential),
        ))
        .bind(i64::from(patch.e2ee.unwrap_or(current.e2ee)))
        .execute(&self.pool)
        .await?;
        self.meeting(id).await?.ok_or(StoreError::NotFound)
    }

    /// Cancels a meeting (again is harmless). Its links stop working: [`Store::join_check`]
    /// reports it cancelled.
    pub async fn cancel_meeting(&self, id: &str) -> Result<Meeting, StoreError> {
        if !is_id(id) {
            return Err(StoreError::NotFound);
        }
        sqlx::query("UPDATE meetings SET status = 'cancelled', updated_at = $1 WHERE id = $2")
            .bind(unix_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.meeting(id).await?.ok_or(StoreError::NotFound)
    }

    /// The invitations of a meeting, in the order they were made.
    pub async fn invitations(&self, meeting_id: &str) -> Result<Vec<Invitation>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INVITATION_SELECT} WHERE i.meeting_id = $1 ORDER BY i.created_at, i.id"
        )))
        .bind(meeting_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(Invitation::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// One invitation.
    pub async fn invitation(&self, id: &str) -> Result<Option<Invitation>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INVITATION_SELECT} WHERE i.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Invitation::from_row).transpose()?)
    }

    /// Invites one more person or site to a meeting.
    pub async fn add_invitation(
        &self,
        meeting_id: &str,
        invitee: &Invitee,
    ) -> Result<Invitation, StoreError> {
        let meeting = self
            .meeting(meeting_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if meeting.is_cancelled() {
            return Err(StoreError::Conflict("the meeting is cancelled".into()));
        }
        let invitee = self.resolve_invitee(invitee).await?;
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM invitations WHERE meeting_id = $1")
            .bind(meeting_id)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        if count >= MAX_INVITATIONS {
            return Err(StoreError::Invalid(format!(
                "a meeting has at most {MAX_INVITATIONS} invitations"
            )));
        }
        let id = new_id();
        sqlx::query(
            "INSERT INTO invitations (id, meeting_id, role, name, site_id, revoked, created_at, \
             account_id) VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
        )
        .bind(&id)
        .bind(meeting_id)
        .bind(invitee.role.as_str())
        .bind(&invitee.name)
        .bind(&invitee.site_id)
        .bind(unix_ms())
        .bind(&invitee.account_id)
        .execute(&self.pool)
        .await?;
        self.invitation(&id).await?.ok_or(StoreError::NotFound)
    }

    /// Revokes an invitation: its link stops working. Unknown ids are
    /// [`StoreError::NotFound`]; revoking twice is harmless.
    pub async fn revoke_invitation(&self, invitation_id: &str) -> Result<(), StoreError> {
        if !is_id(invitation_id) {
            return Err(StoreError::NotFound);
        }
        let done = sqlx::query("UPDATE invitations SET revoked = 1 WHERE id = $1")
            .bind(invitation_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Everything the hub checks when someone joins with an invitation's token: whether the
    /// invitation and its meeting still stand, the times and the role.
    pub async fn join_check(&self, invitation_id: &str) -> Result<Option<JoinCheck>, StoreError> {
        if !is_id(invitation_id) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT i.id, i.meeting_id, m.title, m.starts_at, m.ends_at, m.admission, \
             m.auto_record, m.e2ee, m.status, i.revoked, i.role, i.name, i.site_id, \
             s.name AS site_name \
             FROM invitations i JOIN meetings m ON m.id = i.meeting_id \
             LEFT JOIN sites s ON s.id = i.site_id WHERE i.id = $1",
        )
        .bind(invitation_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let role: String = row.try_get("role")?;
        Ok(Some(JoinCheck {
            invitation_id: row.try_get("id")?,
            meeting_id: row.try_get("meeting_id")?,
            title: row.try_get("title")?,
            starts_at: row.try_get("starts_at")?,
            ends_at: row.try_get("ends_at")?,
            admission: Admission::parse(&row.try_get::<String, _>("admission")?),
            auto_record: flag(row.try_get("auto_record")?),
            e2ee: flag(row.try_get("e2ee")?),
            cancelled: row.try_get::<String, _>("status")? != "scheduled",
            revoked: flag(row.try_get("revoked")?),
            role: Role::parse(&role).unwrap_or(Role::Viewer),
            name: row.try_get("name")?,
            site_id: row.try_get("site_id")?,
            site_name: row.try_get("site_name")?,
        }))
    }
}

impl Store {
    /// The meetings `account` is invited to, itself or through its site, with the invitation
    /// it joins with; revoked invitations and cancelled meetings left out. Meetings not over
    /// at `now_ms` come by start time (at most [`MAX_MY_MEETINGS`]), then those over, the
    /// latest first (at most [`MAX_MY_PAST_MEETINGS`]).
    pub async fn meetings_of_account(
        &self,
        account: &Account,
        now_ms: i64,
    ) -> Result<Vec<InvitedMeeting>, StoreError> {
        let mut out = Vec::new();
        for (condition, order, limit) in [
            ("m.ends_at > $3", "m.starts_at, m.id", MAX_MY_MEETINGS),
            (
                "m.ends_at <= $3",
                "m.ends_at DESC, m.id",
                MAX_MY_PAST_MEETINGS,
            ),
        ] {
            // The limit counts invitations, of which a meeting may have more than one for the
            // same account, so it bounds the work rather than promising a count of meetings.
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{INVITED_MEETING_SELECT} WHERE i.revoked = 0 AND m.status = 'scheduled' \
                 AND (i.account_id = $1 OR i.site_id = $2) AND {condition} \
                 ORDER BY {order} LIMIT $4"
            )))
            .bind(&account.id)
            .bind(&account.site_id)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            out.extend(one_per_meeting(&rows, &account.id)?);
        }
        Ok(out)
    }

    /// Meeting `meeting_id` and the invitation `account` joins it with, if it is among the
    /// account's meetings (see [`Store::meetings_of_account`]).
    pub async fn meeting_of_account(
        &self,
        account: &Account,
        meeting_id: &str,
    ) -> Result<Option<InvitedMeeting>, StoreError> {
        if !is_id(meeting_id) {
            return Ok(None);
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INVITED_MEETING_SELECT} WHERE i.revoked = 0 AND m.status = 'scheduled' \
             AND (i.account_id = $1 OR i.site_id = $2) AND m.id = $3"
        )))
        .bind(&account.id)
        .bind(&account.site_id)
        .bind(meeting_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(one_per_meeting(&rows, &account.id)?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{self, stores};
    use crate::store::{AccountRole, NewAccount, SiteKind};

    async fn organizer(store: &Store, username: &str) -> Account {
        store
            .create_account(&NewAccount {
                username,
                display_name: "Chị Lan",
                password: "a long password",
                role: AccountRole::Organizer,
            })
            .await
            .expect("account")
    }

    #[tokio::test]
    async fn meetings_invitations_revoke_cancel_and_join_check() {
        for t in stores().await {
            let store = &t.store;
            let lan = organizer(store, "lan").await;
            let other = organizer(store, "minh").await;
            let site = test_support::site(store, "HG", "Hà Giang", SiteKind::Province).await;
            let new = NewMeeting {
                title: "  Giao ban tháng 12 ",
                starts_at: 1_800_000_000_000,
                ends_at: 1_800_003_600_000,
                admission: Admission::Scheduled,
                auto_record: true,
                confidential: true,
                e2ee: true,
            };
            let invitees = [
                Invitee {
                    role: Role::Participant,
                    site_id: Some(site.id.clone()),
                    account_id: None,
                    name: None,
                },
                Invitee {
                    role: Role::Viewer,
                    site_id: None,
                    account_id: None,
                    name: Some("Ông Tư".into()),
                },
            ];
            let meeting = store
                .create_meeting(&lan, &new, &invitees)
                .await
                .expect("meeting");
            assert_eq!(meeting.title, "Giao ban tháng 12");
            assert_eq!(meeting.status, MeetingStatus::Scheduled);
            assert_eq!(meeting.organizer_id, lan.id);
            assert!(meeting.confidential && meeting.e2ee);
            let invitations = store.invitations(&meeting.id).await.expect("list");
            assert_eq!(invitations.len(), 3);
            let host = invitations
                .iter()
                .find(|i| i.role == Role::Host)
                .expect("the creator is invited as host");
            assert_eq!(host.name, "Chị Lan");
            let by_site = invitations
                .iter()
                .find(|i| i.site_id.is_some())
                .expect("the site's invitation");
            assert_eq!(by_site.name, "Hà Giang");
            assert_eq!(by_site.site_code.as_deref(), Some("HG"));

            // Bad input is refused before anything is written.
            for (bad, invitees) in [
                (
                    NewMeeting {
                        title: "",
                        ..new.clone()
                    },
                    vec![],
                ),
                (
                    NewMeeting {
                        ends_at: new.starts_at,
                        ..new.clone()
                    },
                    vec![],
                ),
                (
                    new.clone(),
                    vec![Invitee {
                        role: Role::Viewer,
                        site_id: Some(new_id()),
                        account_id: None,
                        name: None,
                    }],
                ),
                (
                    new.clone(),
                    vec![Invitee {
                        role: Role::Viewer,
                        site_id: None,
                        account_id: None,
                        name: None,
                    }],
                ),
            ] {
                assert!(matches!(
                    store.create_meeting(&lan, &bad, &invitees).await,
                    Err(StoreError::Invalid(_))
                ));
            }
            assert_eq!(store.meetings(None).await.expect("all").len(), 1);
            assert_eq!(store.meetings(Some(&lan.id)).await.expect("own").len(), 1);
            assert!(
                store
                    .meetings(Some(&other.id))
                    .await
                    .expect("own")
                    .is_empty()
            );

            let check = store
                .join_check(&by_site.id)
                .await
                .expect("query")
                .expect("found");
            assert_eq!(check.meeting_id, meeting.id);
            assert_eq!(check.role, Role::Participant);
            assert_eq!(check.site_name.as_deref(), Some("Hà Giang"));
            assert_eq!(check.admission, Admission::Scheduled);
            assert!(check.auto_record, "auto-recording survives storage");
            assert!(check.e2ee, "end-to-end encryption reaches the join check");
            assert_eq!(check.starts_at, new.starts_at);
            assert!(!check.cancelled && !check.revoked);
            assert!(store.join_check(&new_id()).await.expect("query").is_none());
            assert!(store.join_check("nonsense").await.expect("query").is_none());

            let patched = store
                .update_meeting(
                    &meeting.id,
                    &MeetingPatch {
                        title: Some("Renamed"),
                        admission: Some(Admission::Host),
                        ..MeetingPatch::default()
                    },
                )
                .await
                .expect("patched");
            assert_eq!(patched.title, "Renamed");
            assert_eq!(patched.admission, Admission::Host);
            assert!(
                patched.confidential && patched.e2ee,
                "a patch leaves the flags it does not name"
            );
            let patched = store
                .update_meeting(
                    &meeting.id,
                    &MeetingPatch {
                        e2ee: Some(false),
                        ..MeetingPatch::default()
                    },
                )
                .await
                .expect("patched");
            assert!(patched.confidential && !patched.e2ee);
            let reread = store
                .meeting(&meeting.id)
                .await
                .expect("query")
                .expect("found");
            assert!(reread.confidential && !reread.e2ee, "the flags are stored");
            assert!(
                !store
                    .join_check(&by_site.id)
                    .await
                    .expect("query")
                    .expect("found")
                    .e2ee
            );
            let patched = store
                .update_meeting(
                    &meeting.id,
                    &MeetingPatch {
                        confidential: Some(false),
                        e2ee: Some(true),
                        ..MeetingPatch::default()
                    },
                )
                .await
                .expect("patched");
            assert!(!patched.confidential && patched.e2ee);
            assert!(matches!(
                store
                    .update_meeting(
                        &meeting.id,
                        &MeetingPatch {
                            ends_at: Some(0),
                            ..MeetingPatch::default()
                        }
                    )
                    .await,
                Err(StoreError::Invalid(_))
            ));

            let added = store
                .add_invitation(
                    &meeting.id,
                    &Invitee {
                        role: Role::Presenter,
                        site_id: None,
                        account_id: None,
                        name: Some("Anh Hùng".into()),
                    },
                )
                .await
                .expect("added");
            store.revoke_invitation(&added.id).await.expect("revoked");
            assert!(
                store
                    .join_check(&added.id)
                    .await
                    .expect("query")
                    .expect("found")
                    .revoked
            );
            assert!(matches!(
                store.revoke_invitation(&new_id()).await,
                Err(StoreError::NotFound)
            ));

            let cancelled = store.cancel_meeting(&meeting.id).await.expect("cancelled");
            assert_eq!(cancelled.status, MeetingStatus::Cancelled);
            assert!(
                store
                    .join_check(&by_site.id)
                    .await
                    .expect("query")
                    .expect("found")
                    .cancelled
            );
            assert!(matches!(
                store
                    .update_meeting(&meeting.id, &MeetingPatch::default())
                    .await,
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                store.add_invitation(&meeting.id, &invitees[1]).await,
                Err(StoreError::Conflict(_))
            ));
            t.finish().await;
        }
    }

    #[tokio::test]
    async fn an_account_finds_the_meetings_of_its_site_and_its_own() {
        for t in stores().await {
            let store = &t.store;
            let lan = organizer(store, "lan").await;
            let mut sites = Vec::new();
            for code in ["HG", "CB"] {
                sites.push(test_support::site(store, code, code, SiteKind::Province).await);
            }
            let (room, _) = store
                .add_account(&crate::store::AccountDraft {
                    username: "hg.room",
                    display_name: "Phòng họp",
                    role: AccountRole::SiteOperator,
                    site_id: Some(&sites[0].id),
                    password: None,
                })
                .await
                .expect("account");
            let now = unix_ms();
            let hour = 3_600_000;
            let meeting = |title: &'static str, from: i64, to: i64| NewMeeting {
                title,
                starts_at: now + from,
                ends_at: now + to,
                admission: Admission::Host,
                auto_record: false,
                confidential: false,
                e2ee: false,
            };
            let site = |n: usize, role: Role| Invitee {
                role,
                site_id: Some(sites[n].id.clone()),
                account_id: None,
                name: None,
            };
            let current = store
                .create_meeting(
                    &lan,
                    &meeting("now", -hour, hour),
                    &[site(0, Role::Participant)],
                )
                .await
                .expect("meeting");
            // Invited twice, through the site and in person: the personal invitation wins.
            let personal = Invitee {
                role: Role::Presenter,
                site_id: None,
                account_id: Some(room.id.clone()),
                name: None,
            };
            let later = store
                .create_meeting(
                    &lan,
                    &meeting("later", 24 * hour, 25 * hour),
                    &[site(0, Role::Viewer), personal],
                )
                .await
                .expect("meeting");
            let over = store
                .create_meeting(
                    &lan,
                    &meeting("over", -3 * hour, -2 * hour),
                    &[site(0, Role::Viewer)],
                )
                .await
                .expect("meeting");
            let cancelled = store
                .create_meeting(
                    &lan,
                    &meeting("cancelled", hour, 2 * hour),
                    &[site(0, Role::Viewer)],
                )
                .await
                .expect("meeting");
            store.cancel_meeting(&cancelled.id).await.expect("cancel");
            let elsewhere = store
                .create_meeting(
                    &lan,
                    &meeting("elsewhere", -hour, hour),
                    &[site(1, Role::Viewer)],
                )
                .await
                .expect("meeting");

            let mine = store.meetings_of_account(&room, now).await.expect("query");
            let titles: Vec<&str> = mine.iter().map(|m| m.meeting.title.as_str()).collect();
            assert_eq!(titles, ["now", "later", "over"]);
            assert_eq!(mine[0].invitation.role, Role::Participant);
            assert_eq!(mine[1].invitation.role, Role::Presenter);
            assert_eq!(
                mine[1].invitation.account_id.as_deref(),
                Some(room.id.as_str())
            );
            assert_eq!(mine[1].invitation.name, "Phòng họp");
            assert_eq!(mine[0].invitation.site_code.as_deref(), Some("HG"));
            let of_room =
                async |id: &str| store.meeting_of_account(&room, id).await.expect("query");
            // Revokes the invitation through which the room sees a meeting.
            let revoke = async |id: &str| {
                let found = of_room(id).await.expect("its meeting");
                store
                    .revoke_invitation(&found.invitation.id)
                    .await
                    .expect("revoke");
            };
            for id in [&cancelled.id, &elsewhere.id] {
                assert!(of_room(id).await.is_none());
            }
            revoke(&current.id).await;
            assert!(of_room(&current.id).await.is_none());
            // The personal invitation revoked, the site's still stands.
            revoke(&later.id).await;
            let found = of_room(&later.id)
                .await
                .expect("still invited through its site");
            assert_eq!(found.invitation.role, Role::Viewer);
            // The organizer's own invitation names their account.
            let theirs = store.meetings_of_account(&lan, now).await.expect("query");
            assert_eq!(theirs.len(), 4, "every meeting but the cancelled one");
            assert!(theirs.iter().all(|m| m.invitation.role == Role::Host));
            assert!(of_room("nonsense").await.is_none());
            let _ = over;
            t.finish().await;
        }
    }
}
