//! `meet-server`: signaling and SFU in one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signaling::store::{AccountRole, NewAccount, Store};
use tracing_subscriber::filter::{self, EnvFilter, FilterExt};
use tracing_subscriber::prelude::*;

/// Secure video meetings: signaling (HTTPS/WSS) and the SFU (one UDP port) in one process.
#[derive(Debug, Parser)]
#[command(name = "meet-server", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    server: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Administration tasks on the server's storage (run beside or instead of the server).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Creates an account, such as the first administrator.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        display_name: String,
        #[arg(long, value_enum, default_value = "admin")]
        role: RoleArg,
        /// Read the password from this environment variable instead of the standard input.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Admin,
    Organizer,
}

/// The server's options. The storage options are global, so that `admin` commands find the
/// same database as the server: `meet-server admin create --data-dir … --username …`.
#[derive(Debug, clap::Args)]
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
    #[arg(long, env = "MEET_DATA_DIR", default_value = "data", global = true)]
    data_dir: PathBuf,
    /// Database URL; defaults to an SQLite file in the data directory.
    #[arg(long, env = "MEET_DATABASE_URL", global = true)]
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
    /// Do not estimate subscribers' bandwidth: every video gets the simulcast layer its tile
    /// size asks for (for links known to be ample, and for tests on a loaded machine where
    /// CPU queueing reads as congestion).
    #[arg(long, env = "MEET_NO_BANDWIDTH_ESTIMATION")]
    no_bandwidth_estimation: bool,
    /// Do not start new video subscriptions from the packets since the publisher's last
    /// keyframe: each waits for the next keyframe, as requested through the one-a-second
    /// throttle (for comparison, or if a client misbehaves on the replayed frames).
    #[arg(long, env = "MEET_NO_FAST_START")]
    no_fast_start: bool,
    /// In a room with more microphones than this, each participant receives only this many,
    /// the loudest (0: every microphone).
    #[arg(long, env = "MEET_MAX_AUDIO_STREAMS", default_value_t = 5)]
    max_audio_streams: usize,
    /// Each media worker writes its datagrams from a thread of its own [default: false; the
    /// workers already use every core].
    #[arg(long, env = "MEET_MEDIA_SEND_THREAD")]
    media_send_thread: Option<bool>,
    /// Media workers: threads each with its own share of the participants; a room spans
    /// them, and clients still see one UDP port [default: one per core with four or more
    /// cores, one below].
    #[arg(long, env = "MEET_MEDIA_WORKERS")]
    media_workers: Option<usize>,
    /// Directory for recordings; defaults to `recordings` in the data directory.
    #[arg(long, env = "MEET_RECORDINGS_DIR")]
    recordings_dir: Option<PathBuf>,
    /// Delete recordings this many days after they ended (0: keep them until deleted).
    #[arg(long, env = "MEET_RECORDING_RETENTION_DAYS", default_value_t = 90)]
    recording_retention_days: u32,
    /// The bearer token `GET /metrics` requires [default: a random token kept in
    /// <data-dir>/metrics-token, generated on first start].
    #[arg(long, env = "MEET_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// TCP connections one address may hold at once: pages, API calls and WebSockets together
    /// (0: no limit, for a load test whose bots all come from one address).
    #[arg(long, env = "MEET_MAX_CONNECTIONS_PER_IP", default_value_t = signaling::connections::DEFAULT_MAX_PER_IP)]
    max_connections_per_ip: usize,
    /// Serve the web client's test hooks (browser tests only: they give any page that asks
    /// synthetic media and let a script read what it shows).
    #[arg(long, env = "MEET_TEST_HOOKS")]
    test_hooks: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    signaling::install_crypto_provider();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Whatever RUST_LOG asks, what carries keys and secrets is never logged.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_filter(filter.and(filter::filter_fn(signaling::loggable))),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.server).await,
        Some(Command::Admin { command }) => admin(cli.server, command).await,
    }
}

/// The storage the server would use with these options.
async fn open_store(args: &Args) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| signaling::store::default_url(&args.data_dir));
    Store::open(&url).await.context("opening the database")
}

async fn admin(args: Args, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Create {
            username,
            display_name,
            role,
            password_env,
        } => {
            let password = match password_env {
                Some(var) => std::env::var(&var)
                    .with_context(|| format!("the environment variable {var} is not set"))?,
                None => {
                    eprintln!("password for {username} (one line on standard input):");
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the password")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let store = open_store(&args).await?;
            let account = store
                .create_account(&NewAccount {
                    username: &username,
                    display_name: &display_name,
                    password: &password,
                    role: match role {
                        RoleArg::Admin => AccountRole::Admin,
                        RoleArg::Organizer => AccountRole::Organizer,
                    },
                })
                .await
                .context("creating the account")?;
            store.close().await;
            println!("created account {} ({})", account.username, account.id);
            Ok(())
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
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
    config.bandwidth_estimation = !args.no_bandwidth_estimation;
    config.fast_start = !args.no_fast_start;
    config.max_audio_streams = (args.max_audio_streams > 0).then_some(args.max_audio_streams);
    config.media_send_thread = args.media_send_thread;
    config.media_workers = args.media_workers.filter(|n| *n > 0);
    config.recordings_dir = args.recordings_dir;
    config.recording_retention_days = args.recording_retention_days;
    config.metrics_token = args.metrics_token;
    config.max_connections_per_ip =
        (args.max_connections_per_ip > 0).then_some(args.max_connections_per_ip);
    // Every connection is a file descriptor: the server's own limits must bind before the
    // shell's default (often 1,024) does.
    match signaling::connections::raise_fd_limit() {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(err) => tracing::warn!(%err, "the open file limit could not be raised"),
    }
    config.test_hooks = args.test_hooks;
    if config.test_hooks {
        tracing::warn!("test mode: the web client's test hooks are served");
    }
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
    match server.run_until_signal().await {
        Ok(()) => Ok(()),
        // Asked twice: the operator wants it gone now, whatever is still being written.
        Err(signaling::ShutdownError::Interrupted) => std::process::exit(130),
        Err(err) => Err(err.into()),
    }
}
