//! The server people talk to: HTTPS and WebSocket signaling, with the SFU in-process.
//!
//! [`start`] brings up everything a meeting needs (storage, the SFU thread, the room hub and
//! the HTTPS listener) and returns the bound addresses, which is what the binary and the
//! integration tests both use.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config_file;
pub mod connections;
pub mod hub;
pub mod journal;
pub mod metrics;
pub mod recording;
pub mod retention;
pub mod rfc3339;
pub mod session;
pub mod store;
pub mod tls;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum_server::tls_rustls::RustlsConfig;

use crate::hub::HubHandle;
use crate::session::SessionLimits;
use crate::store::Store;

/// Largest WebSocket message the transport reads at all. Messages between
/// [`protocol::MAX_MESSAGE_BYTES`] and this are refused with a typed error; bigger ones close
/// the socket with status 1009.
pub const WS_TRANSPORT_LIMIT: usize = 4 * protocol::MAX_MESSAGE_BYTES;

/// What each WebSocket reads at a time, and its initial read buffer. tungstenite's default,
/// 128 KiB, is zero-filled on the first read, so every connection held 128 KiB of memory, the
/// largest single cost of a viewer; signaling messages are a few hundred bytes (an offer a few
/// KiB), and a larger frame still grows the buffer to its length.
const WS_READ_BUFFER: usize = 4 * 1024;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTPS and WSS listener.
    pub http_addr: SocketAddr,
    /// The one UDP port for all media.
    pub media_addr: SocketAddr,
    /// The media address put in ICE candidates, when it differs from `media_addr` (NAT).
    pub advertise_addr: Option<SocketAddr>,
    /// Holds the database and the generated certificate.
    pub data_dir: PathBuf,
    /// Defaults to an SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// A certificate and key (PEM) to use instead of the self-signed one.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra host names for the self-signed certificate.
    pub tls_names: Vec<String>,
    /// The web client's files; relative paths are taken from the working directory.
    pub web_client_dir: PathBuf,
    pub session_limits: SessionLimits,
    pub max_participants_per_room: usize,
    pub keyframe_request_interval: Duration,
    /// Estimate each subscriber's bandwidth (TWCC) and fit simulcast layers to it; without
    /// it, each video gets the layer its tile size asks for.
    pub bandwidth_estimation: bool,
    /// Start a new viewer's video at once from the packets since the publisher's last
    /// keyframe, instead of waiting for the next keyframe.
    pub fast_start: bool,
    /// In a room with more microphones than this, each participant receives only this many,
    /// the loudest; `None` forwards every one.
    pub max_audio_streams: Option<usize>,
    /// Each media worker writes its datagrams from a thread of its own (`Some(true)`) or
    /// itself (`Some(false)`, and `None`: the workers already use every core).
    pub media_send_thread: Option<bool>,
    /// Media workers (threads, each with its own engine; a room spans them); `None`: one per
    /// core with four or more cores, one below.
    pub media_workers: Option<usize>,
    /// Lets clients join free-form rooms without an invitation. Off in production: every
    /// participant then comes with a join token. For development and load tests.
    pub open_rooms: bool,
    /// Where recordings are written; defaults to `recordings` in `data_dir`.
    pub recordings_dir: Option<PathBuf>,
    /// Recordings that ended longer ago than this are deleted; 0 keeps them forever.
    pub recording_retention_days: u32,
    /// Serve the web client's test hooks (`testhooks.js`). Browser tests only: off, the
    /// hooks do not exist for a page, whatever its URL says.
    pub test_hooks: bool,
    /// The bearer token `GET /metrics` requires. `None`: a random one kept in
    /// `<data_dir>/metrics-token`, generated on first start.
    pub metrics_token: Option<String>,
    /// TCP connections one address may hold at once (pages, API calls and WebSockets
    /// together); `None`: no limit (a load test's generator is one address).
    pub max_connections_per_ip: Option<usize>,
    /// Time a client has to finish its TLS handshake, and to send a request's header (the
    /// first request's too) once the connection is up.
    pub request_timeout: Duration,
    /// Joins a cluster of nodes over NATS; `None`: a single server.
    pub cluster: Option<cluster::ClusterConfig>,
}

impl Config {
    /// Loopback defaults: HTTPS on 8443, media on UDP 10000, state under `./data`, the web
    /// client's files in `./web-client`.
    pub fn new() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8443)),
            media_addr: SocketAddr::from(([127, 0, 0, 1], 10000)),
            advertise_addr: None,
            data_dir: PathBuf::from("data"),
            database_url: None,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
            web_client_dir: PathBuf::from("web-client"),
            session_limits: SessionLimits::default(),
            max_participants_per_room: 1_000,
            keyframe_request_interval: Duration::from_secs(1),
            bandwidth_estimation: true,
            fast_start: true,
            max_audio_streams: Some(5),
            media_send_thread: None,
            media_workers: None,
            open_rooms: false,
            recordings_dir: None,
            recording_retention_days: 90,
            test_hooks: false,
            metrics_token: None,
            max_connections_per_ip: Some(connections::DEFAULT_MAX_PER_IP),
            request_timeout: connections::REQUEST_TIMEOUT,
            cluster: None,
        }
    }

    /// The directory recordings are written to.
    pub fn recordings_dir(&self) -> PathBuf {
        self.recordings_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("recordings"))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// What is wrong with `dir` as the web client's directory: `None` when it holds an
/// `index.html`, otherwise a sentence for the log naming the directory (made absolute against
/// the working directory) and the option that sets it.
pub fn web_client_dir_problem(dir: &std::path::Path) -> Option<String> {
    let index = dir.join("index.html");
    if index.is_file() {
        return None;
    }
    let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    Some(format!(
        "the web client's files are not in {}: it has no index.html, so the pages will answer \
         404 (the API, signaling and media still work); set --web-client-dir \
         (MEET_WEB_CLIENT_DIR, or web_client_dir in the configuration file) to the directory \
         holding index.html",
        shown.display()
    ))
}

/// Logs a warning when `dir` does not hold the web client ([`web_client_dir_problem`]).
/// The binary calls this at start; a relative default resolves against the working directory,
/// which a service manager may set elsewhere than the operator expects.
pub fn warn_if_no_web_client(dir: &std::path::Path) {
    if let Some(problem) = web_client_dir_problem(dir) {
        tracing::warn!("{problem}");
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating the data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("creating the recordings directory {0}: {1}")]
    RecordingsDir(PathBuf, std::io::Error),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Keys(#[from] auth::KeyError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("loading the TLS certificate: {0}")]
    TlsConfig(std::io::Error),
    #[error(transparent)]
    Sfu(#[from] sfu::driver::StartError),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("the metrics token {0}: {1}")]
    MetricsToken(PathBuf, std::io::Error),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
}

/// The longest a shutdown takes: the hub waits up to 5 s for recordings to be finalized, the
/// HTTP listener up to 1 s for its connections, and the storage journal for what is queued.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

/// How serving ended other than by a clean stop.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("the HTTPS listener failed: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Failed(&'static str),
    #[error("a second signal interrupted the shutdown")]
    Interrupted,
}

/// Shared by every request handler.
#[derive(Debug, Clone)]
pub struct AppState {
    hub: HubHandle,
    limits: SessionLimits,
    sfu: sfu::SfuHandle,
    metrics: metrics::Metrics,
    /// What `Authorization: Bearer` must carry for `GET /metrics`.
    metrics_token: std::sync::Arc<str>,
    gate: session::Gate,
    api: api::ApiState,
    cluster: Option<cluster::Cluster>,
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub media_addr: SocketAddr,
    /// The certificate served, PEM: clients in tests pin it.
    pub cert_pem: Vec<u8>,
    pub store: Store,
    pub sfu: sfu::SfuHandle,
    /// Signs join tokens: tests mint their own links with it.
    pub tokens: std::sync::Arc<auth::JoinTokens>,
    pub hub: HubHandle,
    /// Where recordings are written.
    pub recordings_dir: PathBuf,
    /// The bearer token `GET /metrics` requires.
    pub metrics_token: String,
    /// This node's membership of its cluster, when it runs in one.
    pub cluster: Option<cluster::Cluster>,
    /// Deletes recordings past the retention period; stopped at shutdown.
    retention: Option<tokio::task::JoinHandle<()>>,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// The `wss://` URL of the signaling socket.
    pub fn ws_url(&self) -> String {
        format!("wss://{}/ws", self.http_addr)
    }

    /// Stops accepting connections and waits for the listener to end.
    pub async fn shutdown(self) {
        // In a cluster, give the rooms and the lease up first: the clients told next rejoin
        // through another node, which then takes each room at once instead of sending them
        // back here until this node's lease runs out.
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        // Then every client is told, so that pages say the meeting ended instead of trying to
        // reconnect to a server that is going away.
        self.hub.shutdown().await;
        if let Some(retention) = &self.retention {
            retention.abort();
        }
        self.handle.graceful_shutdown(Some(Duration::from_secs(1)));
        let _ = self.task.await;
    }

    /// Serves until the listener fails, the media engine or the room hub stops (a panic, a
    /// failed socket), or the process is asked to stop (SIGTERM, as systemd and container
    /// runtimes send, or SIGINT / Ctrl-C), then shuts down: joins are refused, every client is
    /// told `server_stopping` (it reconnects), recordings are finished (up to
    /// [`SHUTDOWN_RECORDING_WAIT`](crate::hub)), the attendance log is written with the real
    /// leave times, and the listener closes. A failure is an error, so that the process exits
    /// non-zero and its supervisor restarts it, rather than serving pages for meetings it can
    /// no longer hold. A second signal during the shutdown ends it at once
    /// ([`ShutdownError::Interrupted`]).
    pub async fn run_until_signal(mut self) -> Result<(), ShutdownError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).map_err(ShutdownError::Io)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(ShutdownError::Io)?;
        let sfu = self.sfu.clone();
        let hub = self.hub.clone();
        let outcome = tokio::select! {
            result = &mut self.task => {
                return match result {
                    Ok(result) => result.map_err(ShutdownError::Io),
                    Err(err) => Err(ShutdownError::Io(std::io::Error::other(err))),
                };
            }
            () = sfu.stopped() => {
                tracing::error!("the media engine stopped; shutting down");
                Err(ShutdownError::Failed("the media engine stopped"))
            }
            () = hub.stopped() => {
                tracing::error!("the room hub stopped; shutting down");
                Err(ShutdownError::Failed("the room hub stopped"))
            }
            _ = terminate.recv() => {
                tracing::info!(signal = "SIGTERM", bound = ?SHUTDOWN_BOUND, "stopping");
                Ok(())
            }
            _ = interrupt.recv() => {
                tracing::info!(signal = "SIGINT", bound = ?SHUTDOWN_BOUND, "stopping");
                Ok(())
            }
        };
        let started = std::time::Instant::now();
        tokio::select! {
            () = self.shutdown() => {}
            _ = terminate.recv() => {
                tracing::warn!("a second signal: stopping at once");
                return Err(ShutdownError::Interrupted);
            }
            _ = interrupt.recv() => {
                tracing::warn!("a second signal: stopping at once");
                return Err(ShutdownError::Interrupted);
            }
            () = tokio::time::sleep(SHUTDOWN_BOUND) => {
                tracing::warn!(bound = ?SHUTDOWN_BOUND, "the shutdown took too long; stopping");
            }
        }
        tracing::info!(elapsed = ?started.elapsed(), "stopped");
        outcome
    }

    /// Waits until the listener ends (it ends only on error or shutdown).
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(std::io::Error::other(err)),
        }
    }
}

/// The HTTP routes. `test_hooks` serves the web client's test hooks (browser tests only).
pub fn app(state: AppState, web_client_dir: PathBuf, test_hooks: bool) -> Router {
    web::with_security_headers(
        Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics_text))
            .route("/ws", get(websocket))
            .nest("/api", api::router(state.api.clone()))
            .fallback_service(web::client_files(web_client_dir, test_hooks))
            .with_state(state),
    )
}

/// `ok` while the server can hold meetings: its media engine and its room hub both run.
/// Otherwise 503, so that a load balancer or supervisor takes the node out.
async fn healthz(State(state): State<AppState>) -> Response {
    let (workers, running) = state.sfu.workers();
    if running == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "the media engine stopped").into_response();
    }
    if running < workers {
        // The meetings go on, on the remaining workers, with less capacity: a load balancer
        // should send new meetings elsewhere and an operator restart this server when it can.
        let text = format!(
            "degraded: {} of {workers} media workers stopped",
            workers - running
        );
        return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    }
    if !state.hub.is_running() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the room hub stopped").into_response();
    }
    "ok".into_response()
}

async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let matches = aws_lc_rs::constant_time::verify_slices_are_equal(
        presented.as_bytes(),
        state.metrics_token.as_bytes(),
    )
    .is_ok();
    if !matches {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the metrics need the server's metrics token (Authorization: Bearer)",
        )
            .into_response();
    }
    let body = state.metrics.render(&state.sfu, state.cluster.as_ref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Whether a browser's Origin names this server. Non-browser clients send no Origin.
fn origin_allowed(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

async fn websocket(
    State(state): State<AppState>,
    api::ClientAddr(ip): api::ClientAddr,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers) {
        return (StatusCode::FORBIDDEN, "foreign origin").into_response();
    }
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(WS_TRANSPORT_LIMIT)
        .max_frame_size(WS_TRANSPORT_LIMIT)
        .on_upgrade(move |socket| session::run(socket, state.hub, state.limits, state.gate, ip))
}

/// Finalizes recordings a previous process left open (a crash or `kill -9`): their files
/// are made playable as far as they got, and they are marked interrupted.
async fn recover_interrupted_recordings(store: &Store, recordings_dir: &std::path::Path) {
    let rows = match store.recordings_in_progress().await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(%err, "interrupted recordings not listed");
            return;
        }
    };
    for row in rows {
        let dir = recordings_dir.join(&row.id);
        let recovered = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || recorder::recover(&dir)).await
        };
        let (status, ended_at, error) = match recovered {
            Ok(Ok(Some(summary))) => (
                store::RecordingStatus::Interrupted,
                row.started_at + summary.duration_ms as i64,
                None,
            ),
            Ok(Ok(None)) => (
                store::RecordingStatus::Interrupted,
                row.started_at,
                Some("the server stopped before anything was written".to_string()),
            ),
            Ok(Err(err)) => (
                store::RecordingStatus::Failed,
                row.started_at,
                Some(format!("recovery failed: {err}")),
            ),
            Err(err) => (
                store::RecordingStatus::Failed,
                row.started_at,
                Some(format!("recovery failed: {err}")),
            ),
        };
        let bytes = recording::directory_bytes(&dir);
        tracing::info!(recording = %row.id, ?status, "interrupted recording finalized");
        if let Err(err) = store
            .finish_recording(&row.id, status, ended_at, error.as_deref(), bytes)
            .await
        {
            tracing::warn!(%err, "interrupted recording not finalized");
        }
    }
}

/// Starts the whole server.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
    let database_url = config
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", config.data_dir.join("meet.db").display()));
    // A cluster's node knows its id before it opens the storage: its attendance rows carry it.
    let mut cluster_config = config.cluster.clone();
    if let Some(c) = &mut cluster_config {
        c.node_id.get_or_insert_with(cluster::random_node_id);
    }
    let node_id = cluster_config.as_ref().and_then(|c| c.node_id.clone());
    let store = Store::open_as_node(&database_url, node_id.as_deref()).await?;
    let recordings_dir = config.recordings_dir();
    std::fs::create_dir_all(&recordings_dir)
        .map_err(|e| StartError::RecordingsDir(recordings_dir.clone(), e))?;
    let retention = retention::spawn(
        store.clone(),
        recordings_dir.clone(),
        config.recording_retention_days,
    );
    let tokens = std::sync::Arc::new(match &config.cluster {
        // Every node signs and verifies with the key the cluster secret gives.
        Some(cluster) => auth::JoinTokens::from_seed(&cluster.secret.join_token_seed())
            .ok_or(auth::KeyError::Generate)?,
        None => auth::JoinTokens::load_or_generate(&config.data_dir.join("keys"))?,
    });

    recover_interrupted_recordings(&store, &recordings_dir).await;
    let (finished_tx, finished_rx) = tokio::sync::mpsc::unbounded_channel();
    let (recording_sink, names) = recording::spawn(recordings_dir.clone(), finished_tx)
        .map_err(|e| StartError::RecordingsDir(recordings_dir.clone(), e))?;

    let mut sfu_config = sfu::SfuConfig::new(config.media_addr);
    sfu_config.advertise = config.advertise_addr;
    sfu_config.keyframe_request_interval = config.keyframe_request_interval;
    sfu_config.max_participants_per_room = config.max_participants_per_room;
    sfu_config.bandwidth_estimation = config.bandwidth_estimation;
    sfu_config.fast_start = config.fast_start;
    sfu_config.max_audio_streams = config.max_audio_streams;
    sfu_config.recording_sink = Some(recording_sink);
    if let Some(send_thread) = config.media_send_thread {
        sfu_config.send_thread = send_thread;
    }
    sfu_config.workers = config.media_workers.unwrap_or(0);
    if let Some(cluster) = &config.cluster {
        // The media link port: beside the media port (the next one), on the same address.
        let media = config.media_addr;
        let port = if media.port() == 0 {
            0
        } else {
            media.port().saturating_add(1)
        };
        sfu_config.links_bind = Some(
            cluster
                .links_addr
                .unwrap_or(SocketAddr::new(media.ip(), port)),
        );
    }
    // A node of a cluster reads the members before its SFU starts: publication ids keep their
    // value on every node that mirrors them, so each node numbers its own from a base no
    // member uses.
    let connecting = match &cluster_config {
        Some(cluster_config) => Some(cluster::Cluster::connect(cluster_config).await?),
        None => None,
    };
    if let Some(connecting) = &connecting {
        sfu_config.publication_ids_from = connecting.publication_base();
    }
    let publications_from = sfu_config.publication_ids_from;
    let (sfu, sfu_events) = sfu::driver::spawn(sfu_config)?;

    let configured = config.tls_cert.as_deref().zip(config.tls_key.as_deref());
    let pem = tls::load_or_generate(configured, &config.data_dir, &config.tls_names)?;
    let tls_config = RustlsConfig::from_pem(pem.cert.clone(), pem.key.clone())
        .await
        .map_err(StartError::TlsConfig)?;

    let connection_limits = connections::ConnectionLimits::new(config.max_connections_per_ip);
    let metrics_token = match &config.metrics_token {
        Some(token) => token.clone(),
        None => metrics::load_or_generate_token(&config.data_dir)
            .map_err(|(path, e)| StartError::MetricsToken(path, e))?,
    };

    let listener = std::net::TcpListener::bind(config.http_addr)
        .map_err(|e| StartError::Bind(config.http_addr, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| StartError::Bind(config.http_addr, e))?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.http_addr, e))?;
    let handle = axum_server::Handle::new();
    let cluster = match (&cluster_config, connecting) {
        (Some(cluster_config), Some(connecting)) => {
            // Others reach the link port at the media address clients are given.
            let links_addr = sfu.links_addr().map(|bound| {
                let ip = match (bound.ip().is_unspecified(), config.advertise_addr) {
                    (true, Some(advertised)) => advertised.ip(),
                    _ => bound.ip(),
                };
                SocketAddr::new(ip, bound.port())
            });
            Some(
                connecting
                    .join(
                        cluster_config.public_url.clone(),
                        http_addr,
                        sfu.local_addr(),
                        links_addr,
                        publications_from,
                    )
                    .await?,
            )
        }
        _ => None,
    };
    let (media, sfu_events) = cluster::media::Media::start(
        sfu.clone(),
        sfu_events,
        cluster
            .as_ref()
            .zip(cluster_config.as_ref().map(|c| &c.secret)),
    )
    .await;
    let hub = hub::spawn(
        media,
        sfu_events,
        store.clone(),
        config.max_participants_per_room,
        names,
        finished_rx,
    );
    if let Some(cluster) = &cluster {
        cluster.start_room_sync(hub.clone(), store.clone());
    }
    let state = AppState {
        hub: hub.clone(),
        limits: config.session_limits,
        sfu: sfu.clone(),
        metrics: metrics::Metrics::new(),
        metrics_token: metrics_token.as_str().into(),
        gate: session::Gate {
            tokens: tokens.clone(),
            store: store.clone(),
            open_rooms: config.open_rooms,
            cluster: cluster.clone(),
        },
        api: api::ApiState {
            cluster: cluster.clone(),
            // Every node of a cluster signs and verifies file tickets with one key.
            tickets: match &config.cluster {
                Some(cluster) => api::FileTickets::with_seed(
                    &cluster.secret.file_ticket_seed(),
                    api::TICKET_LIFETIME,
                ),
                None => api::FileTickets::default(),
            },
            ..api::ApiState::new(
                store.clone(),
                tokens.clone(),
                std::sync::Arc::new(hub.clone()),
                recordings_dir.clone(),
            )
        },
        cluster: cluster.clone(),
    };
    let router = app(state, config.web_client_dir.clone(), config.test_hooks);
    let acceptor = connections::LimitingAcceptor {
        inner: axum_server::tls_rustls::RustlsAcceptor::new(tls_config)
            .handshake_timeout(config.request_timeout),
        limits: connection_limits.clone(),
    };
    let mut server = axum_server::from_tcp(listener)
        .map_err(|e| StartError::Bind(http_addr, e))?
        .acceptor(acceptor)
        .first_request_timeout(config.request_timeout)
        .handle(handle.clone());
    server
        .http_builder()
        .http1()
        .header_read_timeout(config.request_timeout);
    let task = tokio::spawn(async move {
        server
            .serve(router.into_make_service_with_connect_info::<SocketAddr>())
            .await
    });
    tracing::info!(%http_addr, media = %sfu.local_addr(), "server started");
    Ok(RunningServer {
        http_addr,
        media_addr: sfu.local_addr(),
        cert_pem: pem.cert,
        store,
        sfu,
        tokens,
        hub,
        recordings_dir,
        metrics_token,
        cluster,
        retention,
        handle,
        task,
    })
}

/// Installs the process-wide rustls crypto provider. Every binary and test calls this first:
/// with more than one provider compiled in, rustls cannot pick one by itself.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The log target of security events: sign-ins and their failures, lockouts, account changes,
/// joins and refused joins, removals, role changes, recording access. Each carries `event`
/// (a stable name), who (`username`, `account`, `participant`, `by`) and from where (`ip`), so
/// that an operator can route them apart: `RUST_LOG=info,security=info` and the JSON log
/// format (docs/security.md lists them).
pub const SECURITY: &str = "security";

/// Whether an event may reach the log at all, whatever `RUST_LOG` asks. The WebSocket library
/// traces every message and frame it reads or writes, verbatim or as hex: signaling messages
/// carry join tokens, resume secrets, end-to-end encryption public keys and wrapped media
/// keys, none of which may be logged (docs/e2ee.md). Its TRACE events are dropped; its DEBUG
/// ones (handshakes, close frames) stay. The binary filters its log with this.
pub fn loggable(metadata: &tracing::Metadata<'_>) -> bool {
    let target = metadata.target();
    let websocket = target == "tungstenite" || target.starts_with("tungstenite::");
    !(websocket && *metadata.level() == tracing::Level::TRACE)
}
