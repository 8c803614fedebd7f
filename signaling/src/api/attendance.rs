//! Attendance of a meeting: per invited site, and every stay in the room, as JSON or CSV.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use protocol::{Role, RoomId};
use serde::Serialize;
use utoipa::ToSchema;

use super::meetings::owned_meeting;
use super::{ApiError, ApiState, ErrorBody, Path, SignedIn};
use crate::store::AttendanceRow;

/// An invited site's attendance.
#[derive(Debug, Serialize, ToSchema)]
pub struct SiteAttendance {
    pub site_id: String,
    pub code: String,
    pub name: String,
    pub invited: bool,
    /// Whether someone of this site is in the room now.
    pub present: bool,
    pub first_joined_at: Option<i64>,
    pub last_left_at: Option<i64>,
    /// The last connection quality seen: `good`, `fair` or `poor`.
    pub quality: Option<String>,
}

/// One participant's stay in the room.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttendanceEntry {
    /// The participant's id in the room, as in the protocol (docs/protocol.md): one number per
    /// join, below 2^53.
    pub participant_id: u64,
    pub invitation_id: Option<String>,
    pub name: String,
    pub site_id: Option<String>,
    #[schema(value_type = String, example = "participant")]
    pub role: Role,
    pub joined_at: i64,
    pub left_at: Option<i64>,
    pub leave_reason: Option<String>,
    pub quality: Option<String>,
}

/// The attendance report of a meeting.
#[derive(Debug, Serialize, ToSchema)]
pub struct Attendance {
    pub meeting_id: String,
    pub sites: Vec<SiteAttendance>,
    pub rows: Vec<AttendanceEntry>,
}

async fn build(state: &ApiState, meeting_id: &str) -> Result<Attendance, ApiError> {
    let invitations = state.store.invitations(meeting_id).await?;
    let rows = state
        .store
        .attendance(&RoomId(meeting_id.to_string()))
        .await?;
    let directory: HashMap<String, (String, String)> = state
        .store
        .sites()
        .await?
        .into_iter()
        .map(|s| (s.id, (s.code, s.name)))
        .collect();
    let mut sites: Vec<SiteAttendance> = Vec::new();
    for invitation in &invitations {
        let Some(site_id) = &invitation.site_id else {
            continue;
        };
        if sites.iter().any(|s| &s.site_id == site_id) {
            continue;
        }
        let (code, name) = directory
            .get(site_id)
            .cloned()
            .unwrap_or_else(|| (String::new(), invitation.name.clone()));
        let stays: Vec<&AttendanceRow> = rows
            .iter()
            .filter(|r| r.site_id.as_deref() == Some(site_id))
            .collect();
        sites.push(SiteAttendance {
            site_id: site_id.clone(),
            code,
            name,
            invited: true,
            present: stays.iter().any(|r| r.left_at.is_none()),
            first_joined_at: stays.iter().map(|r| r.joined_at).min(),
            last_left_at: stays.iter().filter_map(|r| r.left_at).max(),
            // The rows are oldest first, so the last one with a quality is the latest seen.
            quality: stays.iter().rev().find_map(|r| r.quality.clone()),
        });
    }
    let rows = rows
        .into_iter()
        .map(|r| AttendanceEntry {
            participant_id: r.participant_id.0,
            invitation_id: r.invitation_id,
            name: r.display_name,
            site_id: r.site_id,
            role: r.role,
            joined_at: r.joined_at,
            left_at: r.left_at,
            leave_reason: r.leave_reason,
            quality: r.quality,
        })
        .collect();
    Ok(Attendance {
        meeting_id: meeting_id.to_string(),
        sites,
        rows,
    })
}

/// Attendance of a meeting.
#[utoipa::path(get, path = "/api/meetings/{id}/attendance", operation_id = "get_attendance", tag = "attendance",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "meeting id")),
    responses((status = 200, body = Attendance), (status = 404, body = ErrorBody)))]
pub(super) async fn report(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<axum::Json<Attendance>, ApiError> {
    let meeting = owned_meeting(&state, &signed.account, &id).await?;
    Ok(axum::Json(build(&state, &meeting.id).await?))
}

/// A spreadsheet would run a cell that starts like a formula; such text gets a leading quote.
fn cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    }
}

/// Attendance of a meeting as CSV, one line per stay (times in milliseconds since the epoch).
#[utoipa::path(get, path = "/api/meetings/{id}/attendance.csv", operation_id = "get_attendance_csv", tag = "attendance",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "meeting id")),
    responses(
        (status = 200, content_type = "text/csv", body = String),
        (status = 404, body = ErrorBody),
    ))]
pub(super) async fn report_csv(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let meeting = owned_meeting(&state, &signed.account, &id).await?;
    let report = build(&state, &meeting.id).await?;
    let codes: HashMap<&str, &str> = report
        .sites
        .iter()
        .map(|s| (s.site_id.as_str(), s.code.as_str()))
        .collect();
    let mut writer = csv::Writer::from_writer(Vec::new());
    let fail = |err: csv::Error| {
        tracing::error!(%err, "writing CSV failed");
        ApiError::Internal
    };
    writer
        .write_record([
            "participant_id",
            "invitation_id",
            "name",
            "site_id",
            "site_code",
            "role",
            "joined_at",
            "left_at",
            "leave_reason",
            "quality",
        ])
        .map_err(fail)?;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    for row in &report.rows {
        let site_code = row
            .site_id
            .as_deref()
            .and_then(|s| codes.get(s))
            .map_or(String::new(), |c| cell(c));
        writer
            .write_record([
                row.participant_id.to_string(),
                text(&row.invitation_id),
                cell(&row.name),
                text(&row.site_id),
                site_code,
                row.role.as_str().to_string(),
                row.joined_at.to_string(),
                row.left_at.map(|t| t.to_string()).unwrap_or_default(),
                text(&row.leave_reason),
                text(&row.quality),
            ])
            .map_err(fail)?;
    }
    let body = writer.into_inner().map_err(|err| {
        tracing::error!(%err, "writing CSV failed");
        ApiError::Internal
    })?;
    let disposition = format!("attachment; filename=\"attendance-{}.csv\"", meeting.id);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}
