//! The REST API for organizers and administrators (docs/api.md): accounts, the site
//! directory, meetings, invitations, attendance and recordings. Nested at `/api` by
//! [`crate::app`].
//!
//! Handlers stay thin: they check who is asking, call [`Store`], and shape the answer. The API
//! does not know the room hub; what it needs from live rooms is [`RoomControl`].

mod accounts;
mod attendance;
mod bearer;
mod cluster;
mod error;
mod meetings;
mod my;
mod recordings;
mod sites;
pub mod throttle;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, patch, post};
use utoipa::OpenApi;

use crate::auth::JoinTokens;
use crate::store::Store;

pub use bearer::{Admin, SignedIn};
pub use error::{ApiError, ErrorBody};
pub use recordings::{FileKind, FileTickets, TICKET_LIFETIME, file_kind};

/// Largest JSON body in general.
pub const JSON_LIMIT: usize = 64 * 1024;
/// Largest body creating a meeting, which may carry thousands of invitees.
pub const MEETING_LIMIT: usize = 1024 * 1024;
/// Largest CSV import of sites.
pub const CSV_LIMIT: usize = 4 * 1024 * 1024;
/// Largest CSV import of accounts: 150,000 accounts take about 8 MiB.
pub const ACCOUNTS_CSV_LIMIT: usize = 16 * 1024 * 1024;

/// What the API needs from live rooms; the hub implements it.
pub trait RoomControl: Send + Sync + std::fmt::Debug {
    /// Disconnects everyone in the room (`room_closed`): its meeting was cancelled.
    fn close_room(&self, room: &protocol::RoomId);
    /// Removes whoever is present with this invitation: it was revoked.
    fn revoke_invitation(&self, invitation_id: &str);
}

/// A [`RoomControl`] with no live rooms behind it, until the hub implements the trait.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRoomControl;

impl RoomControl for NoRoomControl {
    fn close_room(&self, room: &protocol::RoomId) {
        tracing::debug!(%room, "no live rooms to close");
    }

    fn revoke_invitation(&self, _invitation_id: &str) {}
}

/// Shared by every API handler.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub store: Store,
    pub tokens: Arc<JoinTokens>,
    pub rooms: Arc<dyn RoomControl>,
    /// Where recordings are written, one directory per recording id.
    pub recordings_dir: PathBuf,
    /// File tickets for media elements, which cannot send a bearer header.
    pub tickets: FileTickets,
    /// Failed sign-ins per username.
    pub login_throttle: throttle::LoginThrottle,
    /// This node's cluster, when it runs in one (`GET /api/cluster`).
    pub cluster: Option<crate::cluster::Cluster>,
}

impl ApiState {
    /// The API's state, with no file tickets issued yet.
    pub fn new(
        store: Store,
        tokens: Arc<JoinTokens>,
        rooms: Arc<dyn RoomControl>,
        recordings_dir: PathBuf,
    ) -> Self {
        Self {
            store,
            tokens,
            rooms,
            recordings_dir,
            tickets: FileTickets::default(),
            login_throttle: throttle::LoginThrottle::default(),
            cluster: None,
        }
    }
}

/// A JSON body whose rejections (malformed JSON, unknown fields, a wrong content type) are
/// answered in the API's error shape instead of axum's plain text.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// Where a request comes from: the TCP peer's address. A request that carries none (a test
/// calling the router directly) counts as the unspecified address.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(
                std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                |info| info.0.ip(),
            );
        Ok(Self(peer))
    }
}

/// Query parameters whose rejections (an unknown parameter, a number that is not one) are
/// answered in the API's error shape.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Path parameters whose rejections (such as invalid percent-encoding) are answered in the
/// API's error shape.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The API's routes, to be nested at `/api`.
pub fn router<S>(state: ApiState) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/login", post(accounts::login))
        .route("/activate", post(accounts::activate))
        .route("/logout", post(accounts::logout))
        .route("/me", get(accounts::me))
        .route("/my/meetings", get(my::meetings))
        .route("/my/meetings/{id}/join", post(my::join))
        .route("/accounts", get(accounts::list).post(accounts::create))
        .route(
            "/accounts/import",
            post(accounts::import).layer(DefaultBodyLimit::max(ACCOUNTS_CSV_LIMIT)),
        )
        .route("/accounts/{id}", patch(accounts::update))
        .route(
            "/accounts/{id}/activation",
            post(accounts::reissue_activation),
        )
        .route("/sites", get(sites::list).post(sites::create))
        .route(
            "/sites/import",
            post(sites::import).layer(DefaultBodyLimit::max(CSV_LIMIT)),
        )
        .route(
            "/meetings",
            get(meetings::list)
                .post(meetings::create)
                .layer(DefaultBodyLimit::max(MEETING_LIMIT)),
        )
        .route("/meetings/{id}", get(meetings::get).patch(meetings::update))
        .route("/meetings/{id}/cancel", post(meetings::cancel))
        .route("/meetings/{id}/invitations", post(meetings::invite))
        .route(
            "/meetings/{id}/invitations.csv",
            get(meetings::invitations_csv),
        )
        .route(
            "/meetings/{id}/invitations/{invitation_id}",
            axum::routing::delete(meetings::uninvite),
        )
        .route("/meetings/{id}/attendance", get(attendance::report))
        .route("/meetings/{id}/attendance.csv", get(attendance::report_csv))
        .route("/meetings/{id}/recordings", get(recordings::list))
        .route(
            "/recordings/{id}",
            axum::routing::delete(recordings::delete),
        )
        .route("/recordings/{id}/ticket", post(recordings::ticket))
        .route("/recordings/{id}/files/{name}", get(recordings::file))
        .route("/cluster", get(cluster::view))
        .route("/openapi.json", get(openapi_json))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .layer(axum::middleware::map_response(no_store))
        .with_state(state)
}

/// Answers carry login tokens, join links and attendance: no cache may keep them.
async fn no_store(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

#[derive(OpenApi)]
#[openapi(
    info(title = "meet-server API", description = "Accounts, sites, meetings, invitations, attendance and recordings (docs/api.md)."),
    paths(
        accounts::login,
        accounts::activate,
        accounts::logout,
        accounts::me,
        my::meetings,
        my::join,
        accounts::list,
        accounts::create,
        accounts::import,
        accounts::update,
        accounts::reissue_activation,
        sites::list,
        sites::create,
        sites::import,
        meetings::list,
        meetings::create,
        meetings::get,
        meetings::update,
        meetings::cancel,
        meetings::invite,
        meetings::invitations_csv,
        meetings::uninvite,
        attendance::report,
        attendance::report_csv,
        recordings::list,
        recordings::ticket,
        recordings::file,
        recordings::delete,
        cluster::view,
        openapi_json,
    ),
    components(schemas(ErrorBody, crate::rfc3339::TimeInput)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Declares the bearer token scheme that the handlers' `security` refers to.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        // Recording files also take a file ticket in the query, for media elements.
        components.add_security_scheme(
            "ticket",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("ticket"))),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The OpenAPI document, generated from the handlers so that it cannot drift from them.
#[utoipa::path(get, path = "/api/openapi.json", operation_id = "get_openapi", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> impl IntoResponse {
    match openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(err) => {
            tracing::error!(%err, "the OpenAPI document does not serialize");
            ApiError::Internal.into_response()
        }
    }
}
