//! Recordings of a meeting: the list, their files (with HTTP ranges, so that players can
//! seek), short-lived file tickets and deletion.
//!
//! A recording belongs to its meeting's organizer (and administrators); anyone else is told
//! "not found". Browsers' `<audio>` and `<video>` elements cannot send a bearer header, so a
//! file may also be fetched with a ticket: signed, valid for ten minutes, for one recording and
//! while the login that asked for it lasts, on every node of a cluster (see [`FileTickets`]).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
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
use crate::store::{Account, RecordingRow, RecordingStatus, hex, is_id, token_hash, unix_ms};

/// How long a file ticket lasts.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// File tickets: signed, not stored, so that a ticket issued by one node of a cluster opens
/// the file on every other (they derive the same key from the cluster secret; a single server
/// draws one at start). A ticket is `<account>.<expires at, ms>.<HMAC>`, the HMAC covering
/// the recording, the account, the expiry and the hash of the login that asked for it, so it
/// opens one recording until it expires and dies with its login (logout, a disabled account or
/// a new password end it): it verifies only against a login the account still holds. It
/// carries neither the login nor its hash. Its `Debug` shows the lifetime, never the key.
#[derive(Clone)]
pub struct FileTickets {
    lifetime: Duration,
    key: Arc<hmac::Key>,
}

impl std::fmt::Debug for FileTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTickets")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Default for FileTickets {
    fn default() -> Self {
        Self::new(TICKET_LIFETIME)
    }
}

/// A ticket's fields, read before its signature is checked against the account's logins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketClaim {
    pub account_id: String,
    pub expires_at: i64,
    tag: Vec<u8>,
}

impl FileTickets {
    /// Tickets that last `lifetime` (tests shorten it), under a key drawn now: they open files
    /// on this process only, until it stops.
    pub fn new(lifetime: Duration) -> Self {
        Self::with_seed(&rand::random::<[u8; 32]>(), lifetime)
    }

    /// Tickets under a key every node of a cluster derives alike.
    pub fn with_seed(seed: &[u8; 32], lifetime: Duration) -> Self {
        Self {
            lifetime,
            key: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, seed)),
        }
    }

    /// What the HMAC covers; every field has a fixed shape (ids of 32 hex characters, the
    /// login's SHA-256 in hex), so no two claims share a message.
    fn message(recording_id: &str, account_id: &str, expires_at: i64, login_hash: &str) -> String {
        format!("meet file ticket v1\n{recording_id}\n{account_id}\n{expires_at}\n{login_hash}")
    }

    /// A fresh ticket for one recording, asked for by `account_id` signed in with the login
    /// `login` (its bearer token), and when it expires.
    pub fn issue(&self, recording_id: &str, account_id: &str, login: &str) -> (String, i64) {
        let lifetime = i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX);
        let expires_at = unix_ms().saturating_add(lifetime);
        let message = Self::message(recording_id, account_id, expires_at, &token_hash(login));
        let tag = hmac::sign(&self.key, message.as_bytes());
        (
            format!("{account_id}.{expires_at}.{}", hex(tag.as_ref())),
            expires_at,
        )
    }

    /// The claim a well-formed, unexpired ticket makes; `None` for anything else. Its
    /// signature is checked by [`FileTickets::signed_by`] against each login the account holds.
    pub fn claim(&self, ticket: &str, now_ms: i64) -> Option<TicketClaim> {
        let mut parts = ticket.split('.');
        let (account_id, expires_at, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || !is_id(account_id)
            || expires_at.is_empty()
            || expires_at.len() > 15
            || !expires_at.bytes().all(|b| b.is_ascii_digit())
            || tag.len() != 64
        {
            return None;
        }
        let expires_at: i64 = expires_at.parse().ok()?;
        if expires_at <= now_ms {
            return None;
        }
        Some(TicketClaim {
            account_id: account_id.to_string(),
            expires_at,
            tag: unhex(tag)?,
        })
    }

    /// Whether `claim` was signed here for `recording_id` under the login whose hash is
    /// `login_hash` (compared in constant time).
    pub fn signed_by(&self, claim: &TicketClaim, recording_id: &str, login_hash: &str) -> bool {
        let message = Self::message(
            recording_id,
            &claim.account_id,
            claim.expires_at,
            login_hash,
        );
        hmac::verify(&self.key, message.as_bytes(), &claim.tag).is_ok()
    }
}

/// Lowercase hex back to bytes; `None` for anything else.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            };
            Some(digit(pair[0])? << 4 | digit(pair[1])?)
        })
        .collect()
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
    let (ticket, expires_at) = state
        .tickets
        .issue(&row.id, &signed.account.id, &signed.token);
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
            let now = unix_ms();
            let claim = state.tickets.claim(ticket, now).ok_or_else(refused)?;
            let logins = state.store.login_hashes(&claim.account_id, now).await?;
            if !logins
                .iter()
                .any(|login| state.tickets.signed_by(&claim, &id, login))
            {
                return Err(refused());
            }
            let account = state
                .store
                .account(&claim.account_id)
                .await?
                .filter(|account| !account.disabled)
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
    fn tickets_are_bound_to_a_recording_a_login_and_a_key_and_expire() {
        let (recording, account) = ("a".repeat(32), "b".repeat(32));
        let tickets = FileTickets::default();
        let (ticket, expires_at) = tickets.issue(&recording, &account, "login-1");
        let now = unix_ms();
        assert!(expires_at > now);
        assert!(!ticket.contains("login-1") && !ticket.contains(&token_hash("login-1")));
        let claim = tickets.claim(&ticket, now).expect("well formed");
        assert_eq!(
            (claim.account_id.as_str(), claim.expires_at),
            (account.as_str(), expires_at)
        );
        assert!(tickets.signed_by(&claim, &recording, &token_hash("login-1")));
        // Another recording, another login, another key: refused.
        assert!(!tickets.signed_by(&claim, &"c".repeat(32), &token_hash("login-1")));
        assert!(!tickets.signed_by(&claim, &recording, &token_hash("login-2")));
        assert!(!FileTickets::default().signed_by(&claim, &recording, &token_hash("login-1")));
        // Nodes of one cluster share the key: a ticket from one opens on the other.
        let (one, other) = (
            FileTickets::with_seed(&[7; 32], TICKET_LIFETIME),
            FileTickets::with_seed(&[7; 32], TICKET_LIFETIME),
        );
        let (ticket, _) = one.issue(&recording, &account, "login-1");
        let claim = other.claim(&ticket, now).expect("well formed");
        assert!(other.signed_by(&claim, &recording, &token_hash("login-1")));
        // A changed expiry breaks the signature; an expired one is refused before it.
        let (head, tag) = ticket.rsplit_once('.').expect("a tag");
        let (account_part, expiry) = head.split_once('.').expect("an expiry");
        let later = format!(
            "{account_part}.{}.{tag}",
            expiry.parse::<i64>().expect("ms") + 1
        );
        let claim = other.claim(&later, now).expect("well formed");
        assert!(!other.signed_by(&claim, &recording, &token_hash("login-1")));
        assert!(other.claim(&ticket, expires_at + 1).is_none());
        for bad in [
            "",
            "nope",
            "..",
            &format!("{ticket}."),
            &ticket.to_uppercase(),
            &ticket[1..],
        ] {
            assert!(other.claim(bad, now).is_none(), "{bad:?}");
        }
        assert!(!format!("{tickets:?}").contains("key"));
    }
}
