//! Meetings and their invitations, with join links signed fresh on every read.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use protocol::{Role, RoomId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::attendance::cell;
use super::{ApiError, ApiState, ErrorBody, Json, Path, SignedIn};
use crate::SECURITY;
use crate::auth::{JoinGrant, unix_seconds};
use crate::rfc3339::TimeInput;
use crate::store::MAX_INVITATIONS;
use crate::store::{Account, Admission, Invitation, Invitee, Meeting, MeetingPatch, NewMeeting};

/// A join link is valid from this long before the start.
pub(super) const EARLY_SECONDS: i64 = 24 * 3600;
/// A join link is valid until this long after the end.
pub(super) const LATE_SECONDS: i64 = 3600;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMeeting {
    pub title: String,
    #[serde(deserialize_with = "crate::rfc3339::deserialize")]
    #[schema(value_type = TimeInput)]
    pub starts_at: i64,
    #[serde(deserialize_with = "crate::rfc3339::deserialize")]
    #[schema(value_type = TimeInput)]
    pub ends_at: i64,
    /// `host` (the default) or `scheduled`.
    #[serde(default)]
    pub admission: Option<Admission>,
    /// Record from the moment the room opens (default false).
    #[serde(default)]
    pub auto_record: bool,
    /// The meeting is confidential (default false).
    #[serde(default)]
    pub confidential: bool,
    /// End-to-end encrypt the media (default: the value of `confidential`).
    #[serde(default)]
    pub e2ee: Option<bool>,
    #[serde(default)]
    pub invitations: Vec<Invitee>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeeting {
    pub title: Option<String>,
    #[serde(default, deserialize_with = "crate::rfc3339::option::deserialize")]
    #[schema(value_type = Option<TimeInput>)]
    pub starts_at: Option<i64>,
    #[serde(default, deserialize_with = "crate::rfc3339::option::deserialize")]
    #[schema(value_type = Option<TimeInput>)]
    pub ends_at: Option<i64>,
    pub admission: Option<Admission>,
    pub auto_record: Option<bool>,
    pub confidential: Option<bool>,
    /// A room already open keeps the value it opened with until it empties.
    pub e2ee: Option<bool>,
}

/// An invitation as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationView {
    pub id: String,
    pub meeting_id: String,
    #[schema(value_type = String, example = "participant")]
    pub role: Role,
    pub name: String,
    pub site_id: Option<String>,
    pub site_code: Option<String>,
    /// The account invited, for an invitation of one account (the organizer's own too).
    pub account_id: Option<String>,
    pub revoked: bool,
    /// `/#join=<join token>`; absent when the invitation is revoked or the meeting cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_path: Option<String>,
}

/// A meeting with its invitations.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeetingDetail {
    #[serde(flatten)]
    pub meeting: Meeting,
    pub invitations: Vec<InvitationView>,
}

/// The meeting `id` if `account` may see it. Another organizer's meeting is "not found", so
/// that meeting ids cannot be probed.
pub(super) async fn owned_meeting(
    state: &ApiState,
    account: &Account,
    id: &str,
) -> Result<Meeting, ApiError> {
    let meeting = state.store.meeting(id).await?.ok_or(ApiError::NotFound)?;
    if account.is_admin() || meeting.organizer_id == account.id {
        Ok(meeting)
    } else {
        Err(ApiError::NotFound)
    }
}

/// `/#join=<token>`: a join token freshly signed for `invitation`, valid from
/// [`EARLY_SECONDS`] before the meeting to [`LATE_SECONDS`] after it. Every link the API shows
/// comes from here, so they all bind the same identity (the invitation) and are refused the
/// same way once it is revoked or the meeting cancelled (checked at every join).
pub(super) fn join_path(
    state: &ApiState,
    meeting: &Meeting,
    invitation: &Invitation,
) -> Result<String, ApiError> {
    let grant = JoinGrant {
        invitation_id: &invitation.id,
        room: &meeting.id,
        name: &invitation.name,
        role: invitation.role,
        site: invitation.site_id.as_deref(),
        not_before: meeting.starts_at.div_euclid(1000) - EARLY_SECONDS,
        expires: meeting.ends_at.div_euclid(1000) + LATE_SECONDS,
    };
    let token = state.tokens.issue(&grant, unix_seconds()).map_err(|err| {
        tracing::error!(%err, "signing a join token failed");
        ApiError::Internal
    })?;
    Ok(format!("/#join={token}"))
}

/// The invitation as shown, with a freshly signed link while it can be used.
fn view(
    state: &ApiState,
    meeting: &Meeting,
    invitation: Invitation,
) -> Result<InvitationView, ApiError> {
    let join_path = if invitation.revoked || meeting.is_cancelled() {
        None
    } else {
        Some(join_path(state, meeting, &invitation)?)
    };
    Ok(InvitationView {
        id: invitation.id,
        meeting_id: invitation.meeting_id,
        role: invitation.role,
        name: invitation.name,
        site_id: invitation.site_id,
        site_code: invitation.site_code,
        account_id: invitation.account_id,
        revoked: invitation.revoked,
        join_path,
    })
}

async fn detail(state: &ApiState, meeting: Meeting) -> Result<MeetingDetail, ApiError> {
    let invitations = state
        .store
        .invitations(&meeting.id)
        .await?
        .into_iter()
        .map(|invitation| view(state, &meeting, invitation))
        .collect::<Result<_, _>>()?;
    Ok(MeetingDetail {
        meeting,
        invitations,
    })
}

/// Meetings: one's own, or all of them for an administrator.
#[utoipa::path(get, path = "/api/meetings", operation_id = "list_meetings", tag = "meetings", security(("bearer" = [])),
    responses((status = 200, body = Vec<Meeting>), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<ApiState>,
    signed: SignedIn,
) -> Result<axum::Json<Vec<Meeting>>, ApiError> {
    let organizer = (!signed.account.is_admin()).then_some(signed.account.id.as_str());
    Ok(axum::Json(state.store.meetings(organizer).await?))
}

/// Schedules a meeting (administrators and organizers); its creator is invited as host.
#[utoipa::path(post, path = "/api/meetings", operation_id = "create_meeting", tag = "meetings", security(("bearer" = [])),
    request_body = CreateMeeting,
    responses(
        (status = 201, body = MeetingDetail),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "the account is a site's (official or site_operator): it joins meetings, it does not schedule them", body = ErrorBody),
    ))]
pub(super) async fn create(
    State(state): State<ApiState>,
    signed: SignedIn,
    Json(request): Json<CreateMeeting>,
) -> Result<(StatusCode, axum::Json<MeetingDetail>), ApiError> {
    if !signed.account.role.schedules_meetings() {
        return Err(ApiError::Forbidden(
            "this needs an organizer or an administrator",
        ));
    }
    if request.invitations.len() as i64 >= MAX_INVITATIONS {
        return Err(ApiError::BadRequest(format!(
            "a meeting has at most {MAX_INVITATIONS} invitations"
        )));
    }
    let meeting = state
        .store
        .create_meeting(
            &signed.account,
            &NewMeeting {
                title: &request.title,
                starts_at: request.starts_at,
                ends_at: request.ends_at,
                admission: request.admission.unwrap_or(Admission::Host),
                auto_record: request.auto_record,
                confidential: request.confidential,
                // A confidential meeting is end-to-end encrypted unless the organizer says
                // otherwise (for example, to let a site without a capable browser join).
                e2ee: request.e2ee.unwrap_or(request.confidential),
            },
            &request.invitations,
        )
        .await?;
    tracing::info!(meeting = %meeting.id, organizer = %signed.account.id, "meeting scheduled");
    Ok((
        StatusCode::CREATED,
        axum::Json(detail(&state, meeting).await?),
    ))
}

/// One meeting with its invitations and join links.
#[utoipa::path(get, path = "/api/meetings/{id}", operation_id = "get_meeting", tag = "meetings", security(("bearer" = [])),
    params(("id" = String, Path, description = "meeting id")),
    responses((status = 200, body = MeetingDetail), (status = 404, body = ErrorBody)))]
pub(super) async fn get(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<axum::Json<MeetingDetail>, ApiError> {
    let meeting = owned_meeting(&state, &signed.account, &id).await?;
    Ok(axum::Json(detail(&state, meeting).await?))
}

/// Changes a meeting's title, times, admission, recording or encryption.
#[utoipa::path(patch, path = "/api/meetings/{id}", operation_id = "update_meeting", tag = "meetings", security(("bearer" = [])),
    params(("id" = String, Path, description = "meeting id")),
    request_body = UpdateMeeting,
    responses(
        (status = 200, body = MeetingDetail),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the meeting is cancelled", body = ErrorBody),
    ))]
pub(super) async fn update(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
    Json(request): Json<UpdateMeeting>,
) -> Result<axum::Json<MeetingDetail>, ApiError> {
    owned_meeting(&state, &signed.account, &id).await?;
    let meeting = state
        .store
        .update_meeting(
            &id,
            &MeetingPatch {
                title: request.title.as_deref(),
                starts_at: request.starts_at,
                ends_at: request.ends_at,
                admission: request.admission,
                auto_record: request.auto_record,
                confidential: request.confidential,
                e2ee: request.e2ee,
            },
        )
        .await?;
    Ok(axum::Json(detail(&state, meeting).await?))
}

/// Cancels a meeting: everyone in its room is disconnected and every link stops working.
#[utoipa::path(post, path = "/api/meetings/{id}/cancel", operation_id = "cancel_meeting", tag = "meetings", security(("bearer" = [])),
    params(("id" = String, Path, description = "meeting id")),
    responses((status = 200, body = MeetingDetail), (status = 404, body = ErrorBody)))]
pub(super) async fn cancel(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<axum::Json<MeetingDetail>, ApiError> {
    owned_meeting(&state, &signed.account, &id).await?;
    let meeting = state.store.cancel_meeting(&id).await?;
    // Stored first, then the room closed: a rejoin in between is refused by the join check.
    state.rooms.close_room(&RoomId(meeting.id.clone()));
    tracing::info!(target: SECURITY, event = "meeting_cancelled", meeting = %meeting.id, by = %signed.account.id, ip = %signed.ip, "meeting cancelled");
    Ok(axum::Json(detail(&state, meeting).await?))
}

/// Invites one more person or site.
#[utoipa::path(post, path = "/api/meetings/{id}/invitations", operation_id = "invite_to_meeting", tag = "meetings",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "meeting id")),
    request_body = Invitee,
    responses(
        (status = 201, body = InvitationView),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the meeting is cancelled", body = ErrorBody),
    ))]
pub(super) async fn invite(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
    Json(invitee): Json<Invitee>,
) -> Result<(StatusCode, axum::Json<InvitationView>), ApiError> {
    let meeting = owned_meeting(&state, &signed.account, &id).await?;
    let invitation = state.store.add_invitation(&id, &invitee).await?;
    tracing::info!(target: SECURITY, event = "invitation_created", meeting = %id, invitation = %invitation.id, role = invitation.role.as_str(), by = %signed.account.id, ip = %signed.ip, "invitation created");
    Ok((
        StatusCode::CREATED,
        axum::Json(view(&state, &meeting, invitation)?),
    ))
}

/// Revokes an invitation: its link stops working and a present invitee is removed.
#[utoipa::path(delete, path = "/api/meetings/{id}/invitations/{invitation_id}", operation_id = "revoke_invitation", tag = "meetings",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "meeting id"),
        ("invitation_id" = String, Path, description = "invitation id"),
    ),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn uninvite(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path((id, invitation_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    owned_meeting(&state, &signed.account, &id).await?;
    let invitation = state
        .store
        .invitation(&invitation_id)
        .await?
        .filter(|i| i.meeting_id == id)
        .ok_or(ApiError::NotFound)?;
    state.store.revoke_invitation(&invitation.id).await?;
    state.rooms.revoke_invitation(&invitation.id);
    tracing::info!(target: SECURITY, event = "invitation_revoked", meeting = %id, invitation = %invitation.id, by = %signed.account.id, ip = %signed.ip, "invitation revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `https://HOST` of a request, from its `Host` header (HTTP/1.1) or its URI's authority
/// (HTTP/2), when that is a plain host name or address with an optional port; `None`
/// otherwise, and links are then written relative.
fn public_origin(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    let plain = !host.is_empty()
        && host.len() <= 261
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    plain.then(|| format!("https://{host}"))
}

/// Every standing invitation of a meeting with its join link, as CSV (`code,name,role,link`):
/// `code` is the site's code (empty for a person), `link` is absolute (`https://HOST/#join=…`,
/// the host this request was sent to) or, when the request names no plain host, relative.
/// The links are signed now, as the meeting page signs them.
#[utoipa::path(get, path = "/api/meetings/{id}/invitations.csv", operation_id = "export_invitations", tag = "meetings",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "meeting id")),
    responses(
        (status = 200, description = "`code,name,role,link`, one line per invitation not revoked", content_type = "text/csv", body = String),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the meeting is cancelled: its links do not work", body = ErrorBody),
    ))]
pub(super) async fn invitations_csv(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let meeting = owned_meeting(&state, &signed.account, &id).await?;
    if meeting.is_cancelled() {
        return Err(ApiError::Conflict(
            "the meeting is cancelled: its links do not work".into(),
        ));
    }
    let origin = public_origin(&headers, &uri).unwrap_or_default();
    let invitations = state.store.invitations(&meeting.id).await?;
    let fail = |err: csv::Error| {
        tracing::error!(%err, "writing CSV failed");
        ApiError::Internal
    };
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(64 + invitations.len() * 400));
    writer
        .write_record(["code", "name", "role", "link"])
        .map_err(fail)?;
    let mut exported = 0;
    for invitation in invitations.iter().filter(|i| !i.revoked) {
        let link = format!("{origin}{}", join_path(&state, &meeting, invitation)?);
        writer
            .write_record([
                cell(invitation.site_code.as_deref().unwrap_or_default()).as_str(),
                cell(&invitation.name).as_str(),
                invitation.role.as_str(),
                link.as_str(),
            ])
            .map_err(fail)?;
        exported += 1;
    }
    let body = writer.into_inner().map_err(|err| {
        tracing::error!(%err, "writing CSV failed");
        ApiError::Internal
    })?;
    tracing::info!(target: SECURITY, event = "invitations_exported", meeting = %meeting.id, count = exported, by = %signed.account.id, ip = %signed.ip, "invitation links exported");
    let disposition = format!("attachment; filename=\"invitations-{}.csv\"", meeting.id);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}
