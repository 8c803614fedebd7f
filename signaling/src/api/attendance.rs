//! Attendance of a meeting: per invited site, per province (the missing communes first),
//! and every stay in the room, as JSON or CSV.
//!
//! Present means in the room now: admitted and not left, as the hub's journal records arrivals
//! and departures (within moments of them). Someone waiting in the lobby is not present yet.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use protocol::{Role, RoomId};
use serde::Serialize;
use utoipa::ToSchema;

use super::meetings::owned_meeting;
use super::{ApiError, ApiState, ErrorBody, Path, SignedIn};
use crate::store::{AttendanceRow, Site, SiteKind};

/// An invited site's attendance.
#[derive(Debug, Serialize, ToSchema)]
pub struct SiteAttendance {
    pub site_id: String,
    pub code: String,
    pub name: String,
    pub invited: bool,
    /// Whether someone of this site is in the room now.
    pub present: bool,
    #[serde(with = "crate::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub first_joined_at: Option<i64>,
    #[serde(with = "crate::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_left_at: Option<i64>,
    /// The last connection quality seen: `good`, `fair` or `poor`.
    pub quality: Option<String>,
    /// The province this site is counted under (see `provinces`); null for a site under no
    /// province or central site.
    pub province_id: Option<String>,
    pub province_code: Option<String>,
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
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: i64,
    #[serde(with = "crate::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub left_at: Option<i64>,
    pub leave_reason: Option<String>,
    pub quality: Option<String>,
}

/// A site not in the room.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MissingSite {
    pub site_id: String,
    pub code: String,
    pub name: String,
}

/// The invited sites of one province (the province itself and its communes), or of the
/// central site, or (`site_id` null) of no province at all.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProvinceAttendance {
    /// The province's (or central site's) id; null for the group of sites under neither.
    pub site_id: Option<String>,
    pub code: Option<String>,
    pub name: Option<String>,
    /// Invited sites in this group.
    pub invited: u32,
    /// Of them, those with someone in the room now.
    pub present: u32,
    /// `invited - present`.
    pub absent: u32,
    /// The absent sites, by code.
    pub missing: Vec<MissingSite>,
}

/// The attendance report of a meeting.
#[derive(Debug, Serialize, ToSchema)]
pub struct Attendance {
    pub meeting_id: String,
    pub sites: Vec<SiteAttendance>,
    /// The invited sites grouped by province, the most missing first (then by code, the group
    /// of no province last).
    pub provinces: Vec<ProvinceAttendance>,
    pub rows: Vec<AttendanceEntry>,
}

/// The group a site is counted under: the nearest province at or above it, else the nearest
/// central site, else none. Parent cycles cannot be stored (the import refuses them), but a
/// walk longer than the directory still stops.
fn group_of<'a>(site: &'a Site, directory: &'a HashMap<&str, &'a Site>) -> Option<&'a Site> {
    let mut central = None;
    let mut at = Some(site);
    for _ in 0..=directory.len() {
        let Some(current) = at else {
            break;
        };
        match current.kind {
            SiteKind::Province => return Some(current),
            SiteKind::Central if central.is_none() => central = Some(current),
            _ => {}
        }
        at = current
            .parent_id
            .as_deref()
            .and_then(|id| directory.get(id).copied());
    }
    central
}

/// Groups invited sites by province, the most missing first.
fn provinces(
    sites: &[SiteAttendance],
    directory: &HashMap<&str, &Site>,
) -> Vec<ProvinceAttendance> {
    let mut groups: Vec<ProvinceAttendance> = Vec::new();
    let mut index: HashMap<Option<String>, usize> = HashMap::new();
    for site in sites {
        let group = site.province_id.as_deref().and_then(|id| directory.get(id));
        let key = group.map(|g| g.id.clone());
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(ProvinceAttendance {
                site_id: group.map(|g| g.id.clone()),
                code: group.map(|g| g.code.clone()),
                name: group.map(|g| g.name.clone()),
                invited: 0,
                present: 0,
                absent: 0,
                missing: Vec::new(),
            });
            groups.len() - 1
        });
        let entry = &mut groups[at];
        entry.invited += 1;
        if site.present {
            entry.present += 1;
        } else {
            entry.absent += 1;
            entry.missing.push(MissingSite {
                site_id: site.site_id.clone(),
                code: site.code.clone(),
                name: site.name.clone(),
            });
        }
    }
    for group in &mut groups {
        group.missing.sort_by(|a, b| a.code.cmp(&b.code));
    }
    groups.sort_by(|a, b| {
        b.absent
            .cmp(&a.absent)
            .then_with(|| a.code.is_none().cmp(&b.code.is_none()))
            .then_with(|| a.code.cmp(&b.code))
    });
    groups
}

async fn build(state: &ApiState, meeting_id: &str) -> Result<Attendance, ApiError> {
    let invitations = state.store.invitations(meeting_id).await?;
    let rows = state
        .store
        .attendance(&RoomId(meeting_id.to_string()))
        .await?;
    let all_sites = state.store.sites().await?;
    let directory: HashMap<&str, &Site> = all_sites.iter().map(|s| (s.id.as_str(), s)).collect();
    // Each site's stays, oldest first, found once rather than by a scan per site: a national
    // meeting has thousands of both.
    let mut stays_of: HashMap<&str, Vec<&AttendanceRow>> = HashMap::new();
    for row in &rows {
        if let Some(site_id) = row.site_id.as_deref() {
            stays_of.entry(site_id).or_default().push(row);
        }
    }
    let mut sites: Vec<SiteAttendance> = Vec::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for invitation in &invitations {
        let Some(site_id) = invitation.site_id.as_deref() else {
            continue;
        };
        if !seen.insert(site_id) {
            continue;
        }
        let site = directory.get(site_id).copied();
        let group = site.and_then(|s| group_of(s, &directory));
        let stays = stays_of.get(site_id).map_or(&[][..], Vec::as_slice);
        sites.push(SiteAttendance {
            site_id: site_id.to_string(),
            code: site.map_or_else(String::new, |s| s.code.clone()),
            name: site.map_or_else(|| invitation.name.clone(), |s| s.name.clone()),
            invited: true,
            present: stays.iter().any(|r| r.left_at.is_none()),
            first_joined_at: stays.iter().map(|r| r.joined_at).min(),
            last_left_at: stays.iter().filter_map(|r| r.left_at).max(),
            // The rows are oldest first, so the last one with a quality is the latest seen.
            quality: stays.iter().rev().find_map(|r| r.quality.clone()),
            province_id: group.map(|g| g.id.clone()),
            province_code: group.map(|g| g.code.clone()),
        });
    }
    let provinces = provinces(&sites, &directory);
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
        provinces,
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
pub(super) fn cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    }
}

/// Attendance of a meeting as CSV, one line per stay (times in RFC 3339, UTC), with the
/// province each site is counted under.
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
    let codes: HashMap<&str, (&str, Option<&str>)> = report
        .sites
        .iter()
        .map(|s| {
            (
                s.site_id.as_str(),
                (s.code.as_str(), s.province_code.as_deref()),
            )
        })
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
            "province",
        ])
        .map_err(fail)?;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let time = |ms: i64| crate::rfc3339::format(ms).unwrap_or_default();
    for row in &report.rows {
        let site = row.site_id.as_deref().and_then(|s| codes.get(s));
        let site_code = site.map_or(String::new(), |(code, _)| cell(code));
        let province = site
            .and_then(|(_, province)| *province)
            .map_or(String::new(), cell);
        writer
            .write_record([
                row.participant_id.to_string(),
                text(&row.invitation_id),
                cell(&row.name),
                text(&row.site_id),
                site_code,
                row.role.as_str().to_string(),
                time(row.joined_at),
                row.left_at.map(time).unwrap_or_default(),
                text(&row.leave_reason),
                text(&row.quality),
                province,
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
