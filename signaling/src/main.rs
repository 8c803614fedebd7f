//! `meet-server`: signaling and SFU in one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Secure video meetings: signaling (HTTPS/WSS) and the SFU (one UDP port) in one process.
#[derive(Debug, Parser)]
#[command(name = "meet-server", version)]
struct Args {
    /// HTTPS and WebSocket listen address.
    #[arg(long, env = "MEET_HTTP_ADDR", default_value = "127.0.0.1:8443")]
    http_addr: SocketAddr,
    /// UDP address for all media.
    #[arg(long, env = "MEET_MEDIA_ADDR", default_value = "127.0.0.1:10000")]
    media_addr: SocketAddr,
    /// Media address to advertise in ICE candidates (public address behind NAT).
    #[arg(long, env = "MEET_ADVERTISE_ADDR")]
    advertise_addr: Option<SocketAddr>,
    /// Directory for the database and the generated certificate.
    #[arg(long, env = "MEET_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Database URL; defaults to an SQLite file in the data directory.
    #[arg(long, env = "MEET_DATABASE_URL")]
    database_url: Option<String>,
    /// TLS certificate chain (PEM). Without it a self-signed certificate is generated.
    #[arg(long, env = "MEET_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "MEET_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra host name or IP for the self-signed certificate (repeatable).
    #[arg(long = "tls-name", env = "MEET_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// Directory of the web client's files.
    #[arg(long, env = "MEET_WEB_CLIENT_DIR")]
    web_client_dir: Option<PathBuf>,
    /// Most participants in one room.
    #[arg(long, env = "MEET_MAX_PARTICIPANTS", default_value_t = 1000)]
    max_participants_per_room: usize,
    /// Let clients join free-form rooms without an invitation (development and load tests
    /// only: anyone who reaches the server can then join).
    #[arg(long, env = "MEET_OPEN_ROOMS")]
    open_rooms: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    signaling::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = signaling::Config::new();
    config.http_addr = args.http_addr;
    config.media_addr = args.media_addr;
    config.advertise_addr = args.advertise_addr;
    config.data_dir = args.data_dir;
    config.database_url = args.database_url;
    config.tls_cert = args.tls_cert;
    config.tls_key = args.tls_key;
    config.tls_names = args.tls_names;
    if let Some(dir) = args.web_client_dir {
        config.web_client_dir = dir;
    }
    config.max_participants_per_room = args.max_participants_per_room;
    config.open_rooms = args.open_rooms;
    if config.open_rooms {
        tracing::warn!("open rooms: anyone who reaches this server can join without an invitation");
    }
    let server = signaling::start(config)
        .await
        .context("starting the server")?;
    tracing::info!(
        "open https://{} (media on udp {})",
        server.http_addr,
        server.media_addr
    );
    server
        .run_until_signal()
        .await
        .context("the HTTPS listener failed")?;
    Ok(())
}
