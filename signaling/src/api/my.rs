//! "My meetings": what a signed-in account, a site's above all, is invited to, and one-click
//! join. The server signs the join token of the account's invitation (its own, or its site's)
//! exactly as for a link, so the same identity, binding and revocation hold; no link changes
//! hands.

use axum::extract::State;
use protocol::Role;
use serde::Serialize;
use utoipa::ToSchema;

use super::meetings::{LATE_SECONDS, join_path};
use super::{ApiError, ApiState, ErrorBody, Path, SignedIn};
use crate::SECURITY;
use crate::auth::unix_seconds;
use crate::store::{InvitedMeeting, MeetingStatus, unix_ms};

/// A meeting as its invitee sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyMeeting {
    pub meeting_id: String,
    pub title: String,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: i64,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub ends_at: i64,
    /// The role the account joins in: `host`, `presenter`, `participant` or `viewer`.
    #[schema(value_type = String, example = "participant")]
    pub role: Role,
    /// Media is end-to-end encrypted (docs/e2ee.md).
    pub e2ee: bool,
    /// The meeting's status: always `scheduled` here, as cancelled meetings are left out.
    pub status: MeetingStatus,
}

/// The meetings of the signed-in account, by when they take place.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyMeetings {
    /// Started and not ended yet, by start.
    pub now: Vec<MyMeeting>,
    /// Not started yet, soonest first.
    pub upcoming: Vec<MyMeeting>,
    /// Ended, the latest first (at most 100).
    pub past: Vec<MyMeeting>,
}

/// Where the browser goes to join.
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinLink {
    /// `/#join=<join token>`, to open on this server.
    pub join_path: String,
}

fn item(invited: InvitedMeeting) -> MyMeeting {
    MyMeeting {
        meeting_id: invited.meeting.id,
        title: invited.meeting.title,
        starts_at: invited.meeting.starts_at,
        ends_at: invited.meeting.ends_at,
        role: invited.invitation.role,
        e2ee: invited.meeting.e2ee,
        status: invited.meeting.status,
    }
}

/// The meetings that invite the signed-in account or its site: now, upcoming and past.
/// Revoked invitations and cancelled meetings are left out.
#[utoipa::path(get, path = "/api/my/meetings", operation_id = "list_my_meetings", tag = "my", security(("bearer" = [])),
    responses((status = 200, body = MyMeetings), (status = 401, body = ErrorBody)))]
pub(super) async fn meetings(
    State(state): State<ApiState>,
    signed: SignedIn,
) -> Result<axum::Json<MyMeetings>, ApiError> {
    let now = unix_ms();
    let mut out = MyMeetings {
        now: Vec::new(),
        upcoming: Vec::new(),
        past: Vec::new(),
    };
    for invited in state
        .store
        .meetings_of_account(&signed.account, now)
        .await?
    {
        let group = if invited.meeting.ends_at <= now {
            &mut out.past
        } else if invited.meeting.starts_at <= now {
            &mut out.now
        } else {
            &mut out.upcoming
        };
        group.push(item(invited));
    }
    Ok(axum::Json(out))
}

/// Joins one of the account's meetings: the server signs the join token of its invitation
/// (its own, else its site's). A meeting that is not among the account's (another site's, a
/// revoked invitation, a cancelled meeting) is "not found", so that ids cannot be probed.
#[utoipa::path(post, path = "/api/my/meetings/{id}/join", operation_id = "join_my_meeting", tag = "my", security(("bearer" = [])),
    params(("id" = String, Path, description = "meeting id")),
    responses(
        (status = 200, body = JoinLink),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the meeting ended more than an hour ago: its links no longer work", body = ErrorBody),
    ))]
pub(super) async fn join(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<axum::Json<JoinLink>, ApiError> {
    let invited = state
        .store
        .meeting_of_account(&signed.account, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if invited.meeting.ends_at.div_euclid(1000) + LATE_SECONDS <= unix_seconds() {
        return Err(ApiError::Conflict(
            "the meeting is over: its links no longer work".into(),
        ));
    }
    let join_path = join_path(&state, &invited.meeting, &invited.invitation)?;
    tracing::info!(target: SECURITY, event = "join_link_issued", account = %signed.account.id, meeting = %invited.meeting.id, invitation = %invited.invitation.id, ip = %signed.ip, "join link issued to a signed-in account");
    Ok(axum::Json(JoinLink { join_path }))
}
