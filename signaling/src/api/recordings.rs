//! Recordings of a meeting: the list, their files (with HTTP ranges, so that players can
//! seek), short-lived file tickets and deletion.
//!
//! A recording belongs to its meeting's organizer (and administrators); anyone else is told
//! "not found". Browsers' `<audio>` and `<video>` elements cannot send a bearer header, so a
//! file may also be fetched with a ticket: a random token, valid for ten minutes and for one
//! recording, kept only in this process's memory.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tower_http::services::ServeFile;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ClientAddr, ErrorBody, Path, SignedIn};
use crate::SECURITY;
use crate::retention::{self, RemoveError};
use crate::store::{Account, RecordingRow, RecordingStatus, hex, is_id, unix_ms};

/// How long a file ticket lasts.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Most tickets held at once; beyond it the oldest go first. Only signed-in organizers create
/// tickets, but memory must stay bounded whatever they do.
const MAX_TICKETS: usize = 10_000;

/// One file ticket: what it opens, until when, and the login that asked for it (a ticket
/// dies with its login: logout, a disabled account or a new password end it too).
#[derive(Clone)]
struct Issued {
    recording_id: String,
    expires_at: i64,
    login: String,
}

/// File tickets: ticket → [`Issued`]. Its `Debug` shows how many, never a ticket or login.
#[derive(Clone)]
pub struct FileTickets {
    lifetime: Duration,
    tickets: Arc<Mutex<HashMap<String, Issued>>>,
}

impl std::fmt::Debug for FileTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.tickets.lock().map_or(0, |tickets| tickets.len());
        f.debug_struct("FileTickets")
            .field("lifetime", &self.lifetime)
            .field("held", &held)
            .finish()
    }
}

impl Default for FileTickets {
    fn default() -> Self {
        Self::new(TICKET_LIFETIME)
    }
}

impl FileTickets {
    /// Tickets that last `lifetime` (tests shorten it).
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            tickets: Arc::default(),
        }
    }

    /// A fresh ticket for one recording, asked for by the bearer of `login`, and when it
    /// expires.
    pub fn issue(&self, recording_id: &str, login: &str) -> (String, i64) {
        let now = unix_ms();
        let lifetime = i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(lifetime);
        let ticket = hex(&rand::random::<[u8; 32]>());
        // A poisoned lock only means another request panicked mid-insert; the map is still
        // a valid map.
        let mut tickets = self
            .tickets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tickets.retain(|_, issued| issued.expires_at > now);
        if tickets.len() >= MAX_TICKETS {
            let oldest = tickets
                .iter()
                .min_by_key(|(_, issued)| issued.expires_at)
                .map(|(token, _)| token.clone());
            if let Some(oldest) = oldest {
                tickets.remove(&oldest);
            }
        }
        tickets.insert(
            ticket.clone(),
            Issued {
                recording_id: recording_id.to_string(),
                expires_at,
                login: login.to_string(),
            },
        );
        (ticket, expires_at)
    }

    /// The login behind `ticket` when the ticket is unexpired and was issued for
    /// `recording_id`; the caller checks that the login still stands.
    pub fn admits(&self, ticket: &str, recording_id: &str) -> Option<String> {
        let now = unix_ms();
        let tickets = self
            .tickets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tickets
            .get(ticket)
            .filter(|issued| issued.recording_id == recording_id && issued.expires_at > now)
            .map(|issued| issued.login.clone())
    }

    /// Forgets every ticket issued under `login` (its bearer signed out).
    pub fn forget_login(&self, login: &str) {
        self.tickets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, issued| issued.login != login);
    }
}

/// What a file of a recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// `manifest.json`: the tracks, who sent them, and when each starts and ends.
    Manifest,
    /// `mix.ogg`: everyone's audio mixed (Opus).
    Mix,
    /// `track-<publication>.ogg`: one microphone (Opus).
    Audio,
    /// `track-<publication>.webm`: one camera or screen share (VP8, VP9 or AV1).
    Video,
}

impl FileKind {
    fn content_type(self) -> &'static str {
        match self {
            FileKind::Manifest => "application/json",
            FileKind::Mix | FileKind::Audio => "audio/ogg",
            FileKind::Video => "video/webm",
        }
    }
}

/// The kind of a file a recording may hold, by its name; None for any other name. Only these
/// names are ever listed or served, which also keeps every path inside the recording's
/// directory (no `/`, no `..`).
pub fn file_kind(name: &str) -> Option<FileKind> {
    match name {
        "manifest.json" => return Some(FileKind::Manifest),
        "mix.ogg" => return Some(FileKind::Mix),
        _ => {}
    }
    let (publication, extension) = name.strip_prefix("track-")?.split_once('.')?;
    if publication.is_empty()
        || publication.len() > 20
        || !publication.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    match extension {
        "ogg" => Some(FileKind::Audio),
        "webm" => Some(FileKind::Video),
        _ => None,
    }
}

/// One file of a recording.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingFile {
    pub name: String,
    pub kind: FileKind,
    pub bytes: u64,
}

/// A recording as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingView {
    pub id: String,
    pub meeting_id: String,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    #[serde(with = "crate::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<i64>,
    pub status: RecordingStatus,
    /// Why it failed or was cut short.
    pub error: Option<String>,
    /// Size of its files when it ended (0 while recording).
    pub bytes: i64,
    /// The meeting was end-to-end encrypted: the track files hold the media as it was
    /// received, encrypted, which only a browser holding the keys can play, and there is no
    /// mix.
    pub e2ee: bool,
    /// What its directory holds now: the manifest, the mix, then the tracks by name.
    pub files: Vec<RecordingFile>,
}

/// A file ticket.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ticket {
    /// Pass as `?ticket=` on the recording's file URLs.
    pub ticket: String,
    #[serde(with = "crate::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: i64,
}

/// The recordable files in a recording's directory. A directory that does not exist (the
/// recorder never wrote anything) holds nothing.
async fn files(dir: &FsPath) -> Result<Vec<RecordingFile>, std::io::Error> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut out = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(kind) = file_kind(&name) else {
            continue;
        };
        let metadata = entry.metadata().await?;
        if metadata.is_file() {
            out.push(RecordingFile {
                name,
                kind,
                bytes: metadata.len(),
            });
        }
    }
    out.sort_by(|a, b| (a.kind.order(), &a.name).cmp(&(b.kind.order(), &b.name)));
    Ok(out)
}

impl FileKind {
    fn order(self) -> u8 {
        match self {
            FileKind::Manifest => 0,
            FileKind::Mix => 1,
            FileKind::Audio | FileKind::Video => 2,
        }
    }
}

async fn view(state: &ApiState, row: RecordingRow) -> Result<RecordingView, ApiError> {
    let files = match retention::recording_dir(&state.recordings_dir, &row.id) {
        Some(dir) => files(&dir).await.map_err(|err| {
            tracing::error!(recording = %row.id, %err, "listing a recording's files failed");
            ApiError::Internal
        })?,
        None => Vec::new(),
    };
    Ok(RecordingView {
        id: row.id,
        meeting_id: row.meeting_id,
        started_at: row.started_at,
        ended_at: row.ended_at,
        status: row.status,
        error: row.error,
        bytes: row.bytes,
        e2ee: row.e2ee,
        files,
    })
}

/// The recording `id`, if `account` may see it: its meeting's organizer, or an administrator
/// (who also sees recordings of open rooms, which have no meeting). Anything else is "not
/// found", so that ids cannot be probed.
async fn owned_recording(
    state: &ApiState,
    account: &Account,
    id: &str,
) -> Result<RecordingRow, ApiError> {
    if !is_id(id) {
        return Err(ApiError::NotFound);
    }
    let row = state.store.recording(id).await?.ok_or(ApiError::NotFound)?;
    if account.is_admin() {
        return Ok(row);
    }
    match state.store.meeting(&row.meeting_id).await? {
        Some(meeting) if meeting.organizer_id == account.id => Ok(row),
        _ => Err(ApiError::NotFound),
    }
}

/// Recordings of a meeting, newest first.
#[utoipa::path(get, path = "/api/meetings/{id}/recordings", operation_id = "list_recordings", tag = "recordings",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "meeting id")),
    responses((status = 200, body = [RecordingView]), (status = 404, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<axum::Json<Vec<RecordingView>>, ApiError> {
    let meeting = super::meetings::owned_meeting(&state, &signed.account, &id).await?;
    let mut out = Vec::new();
    for row in state.store.recordings(&meeting.id).await? {
        out.push(view(&state, row).await?);
    }
    Ok(axum::Json(out))
}

/// A ticket that lets media elements fetch this recording's files for ten minutes.
#[utoipa::path(post, path = "/api/recordings/{id}/ticket", operation_id = "create_recording_ticket", tag = "recordings",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "recording id")),
    responses((status = 200, body = Ticket), (status = 404, body = ErrorBody)))]
pub(super) async fn ticket(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<axum::Json<Ticket>, ApiError> {
    let row = owned_recording(&state, &signed.account, &id).await?;
    let (ticket, expires_at) = state.tickets.issue(&row.id, &signed.token);
    tracing::info!(target: SECURITY, event = "recording_ticket", recording = %row.id, account = %signed.account.id, ip = %signed.ip, "recording file ticket issued");
    Ok(axum::Json(Ticket { ticket, expires_at }))
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    ticket: Option<String>,
    download: Option<String>,
}

/// One file of a recording. Honours `Range: bytes=a-b` (206 with `Content-Range`; 416 when
/// it cannot be satisfied).
#[utoipa::path(get, path = "/api/recordings/{id}/files/{name}", operation_id = "get_recording_file", tag = "recordings",
    security(("bearer" = []), ("ticket" = [])),
    params(
        ("id" = String, Path, description = "recording id"),
        ("name" = String, Path, description = "`manifest.json`, `mix.ogg`, `track-<n>.ogg` or `track-<n>.webm`"),
        ("ticket" = Option<String>, Query, description = "a file ticket, instead of the bearer header"),
        ("download" = Option<String>, Query, description = "`1`: answer as an attachment"),
    ),
    responses(
        (status = 200, description = "the file: `application/json`, `audio/ogg` or `video/webm`"),
        (status = 206, description = "the range asked for"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 416, description = "the range is outside the file"),
    ))]
pub(super) async fn file(
    State(state): State<ApiState>,
    Path((id, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    // Both checks are rules of shape, so answering them before authentication reveals
    // nothing; and neither a bad id nor a bad name ever reaches the file system.
    if !is_id(&id) {
        return Err(ApiError::NotFound);
    }
    let kind = file_kind(&name).ok_or(ApiError::NotFound)?;
    let query = Query::<FileQuery>::try_from_uri(request.uri())
        .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?
        .0;
    let (mut parts, body) = request.into_parts();
    let Ok(ClientAddr(ip)) = ClientAddr::from_request_parts(&mut parts, &state).await;
    let (row, account) = match query.ticket.as_deref() {
        Some(ticket) => {
            let refused = || {
                tracing::warn!(target: SECURITY, event = "recording_ticket_refused", recording = %id, file = %name, %ip, "recording file refused: bad ticket");
                ApiError::Unauthorized(
                    "the ticket is unknown, expired, for another recording, or its login ended",
                )
            };
            let login = state.tickets.admits(ticket, &id).ok_or_else(refused)?;
            let account = state
                .store
                .account_for_token(&login, unix_ms())
                .await?
                .ok_or_else(refused)?;
            // The ticket was issued to someone allowed to see this recording.
            let row = state
                .store
                .recording(&id)
                .await?
                .ok_or(ApiError::NotFound)?;
            (row, account)
        }
        None => {
            let signed = SignedIn::from_request_parts(&mut parts, &state).await?;
            let row = owned_recording(&state, &signed.account, &id).await?;
            (row, signed.account)
        }
    };
    // A player reads a file in many ranges: its first read stands for the access.
    let first_read = parts
        .headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .is_none_or(|r| r.trim_start().starts_with("bytes=0-"));
    if first_read {
        tracing::info!(target: SECURITY, event = "recording_read", recording = %row.id, file = %name, account = %account.id, %ip, "recording file read");
    }
    let path: PathBuf = retention::recording_dir(&state.recordings_dir, &row.id)
        .ok_or(ApiError::NotFound)?
        .join(&name);
    match tokio::fs::metadata(&path).await {
        Ok(metadata) if metadata.is_file() => {}
        _ => return Err(ApiError::NotFound),
    }
    let request = Request::from_parts(parts, body);
    let response = ServeFile::new(&path)
        .try_call(request)
        .await
        .map_err(|err| {
            tracing::error!(recording = %row.id, file = %name, %err, "serving a recording file failed");
            ApiError::Internal
        })?;
    let mut response = response.map(Body::new);
    if response.status() == StatusCode::NOT_FOUND {
        // Removed between the check and the read.
        return Err(ApiError::NotFound);
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kind.content_type()),
    );
    if query.download.as_deref() == Some("1") {
        // Both parts of the file name are checked above: hex and a fixed set of names.
        let disposition = format!("attachment; filename=\"recording-{}-{}\"", row.id, name);
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}

/// Deletes a recording: its files, then its row. Refused while it is being recorded.
#[utoipa::path(delete, path = "/api/recordings/{id}", operation_id = "delete_recording", tag = "recordings",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "recording id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the recording is still running", body = ErrorBody),
    ))]
pub(super) async fn delete(
    State(state): State<ApiState>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = owned_recording(&state, &signed.account, &id).await?;
    if row.status == RecordingStatus::Recording {
        return Err(ApiError::Conflict(
            "the recording is still running; stop it first".to_string(),
        ));
    }
    match retention::remove_recording(&state.store, &state.recordings_dir, &row.id).await {
        Ok(()) => {
            tracing::info!(target: SECURITY, event = "recording_deleted", recording = %row.id, by = %signed.account.id, ip = %signed.ip, "recording deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(RemoveError::Store(err)) => Err(err.into()),
        Err(RemoveError::Files(dir, err)) => {
            tracing::error!(dir = %dir.display(), %err, "removing a recording's files failed");
            Err(ApiError::Internal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recording_file_names_are_accepted() {
        assert_eq!(file_kind("manifest.json"), Some(FileKind::Manifest));
        assert_eq!(file_kind("mix.ogg"), Some(FileKind::Mix));
        assert_eq!(file_kind("track-12.ogg"), Some(FileKind::Audio));
        assert_eq!(file_kind("track-0.webm"), Some(FileKind::Video));
        for bad in [
            "",
            "..",
            "../manifest.json",
            "track-.ogg",
            "track-1a.ogg",
            "track-1.mp4",
            "track-1.ogg.webm",
            "track-1/x.ogg",
            "Mix.ogg",
            "mix.ogg ",
            "track-123456789012345678901.ogg",
            "meet.db",
        ] {
            assert_eq!(file_kind(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tickets_are_bound_to_a_recording_and_a_login_and_expire() {
        let tickets = FileTickets::default();
        let (ticket, expires_at) = tickets.issue("a", "login-1");
        assert!(expires_at > unix_ms());
        assert_eq!(ticket.len(), 64);
        assert_eq!(tickets.admits(&ticket, "a").as_deref(), Some("login-1"));
        assert!(tickets.admits(&ticket, "b").is_none());
        assert!(tickets.admits("nope", "a").is_none());
        let (other, _) = tickets.issue("a", "login-2");
        tickets.forget_login("login-1");
        assert!(tickets.admits(&ticket, "a").is_none());
        assert!(tickets.admits(&other, "a").is_some());
        assert!(!format!("{tickets:?}").contains(&other));
        let short = FileTickets::new(Duration::ZERO);
        let (ticket, _) = short.issue("a", "login-1");
        assert!(short.admits(&ticket, "a").is_none());
    }
}
