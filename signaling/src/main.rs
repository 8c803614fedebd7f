//! `meet-server`: signaling and SFU in one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use signaling::config_file::{self, MergeError};
use signaling::store::{AccountRole, NewAccount, Store};
use tracing_subscriber::filter::{self, EnvFilter, FilterExt};
use tracing_subscriber::prelude::*;

/// Secure video meetings: signaling (HTTPS/WSS) and the SFU (one UDP port) in one process.
///
/// Every option is also an environment variable (shown as [env: …]) and a key of the
/// configuration file (`--config`): the long option name with `_` for `-`, as in
/// `http_addr = "0.0.0.0:8443"`. The command line wins over the environment, which wins over
/// the file, which wins over the default.
#[derive(Debug, Parser)]
#[command(name = "meet-server", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file: its keys are the long option names with `_` for `-`
    /// (deploy/meet.toml lists them all); an unknown key is an error [default: none].
    #[arg(
        id = config_file::CONFIG_ARG,
        long = "config",
        env = "MEET_CONFIG",
        value_name = "FILE",
        global = true
    )]
    config: Option<PathBuf>,
    /// Log format: `text` for people, `json` (one object a line) for a log collector.
    #[arg(
        long,
        env = "MEET_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(flatten)]
    server: Args,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    #[command(next_help_heading = "Account")]
    Create {
        /// The name the account signs in with (required).
        #[arg(long)]
        username: String,
        /// The name shown to others, such as a person's full name (required).
        #[arg(long)]
        display_name: String,
        /// What the account may do.
        #[arg(long, value_enum, default_value = "admin")]
        role: RoleArg,
        /// Read the password from this environment variable instead of the standard input
        /// [default: one line read from the standard input].
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    /// Everything, including accounts and the site directory.
    Admin,
    /// Schedules and manages their own meetings.
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
    /// Media address to advertise in ICE candidates (public address behind NAT) [default: the
    /// media address].
    #[arg(long, env = "MEET_ADVERTISE_ADDR")]
    advertise_addr: Option<SocketAddr>,
    /// Directory for the database and the generated certificate.
    #[arg(long, env = "MEET_DATA_DIR", default_value = "data", global = true)]
    data_dir: PathBuf,
    /// Database URL: `sqlite://…` or `postgres://USER:PASSWORD@HOST:5432/DATABASE` [default:
    /// sqlite://<data-dir>/meet.db].
    #[arg(long, env = "MEET_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// TLS certificate chain (PEM), with --tls-key [default: a self-signed certificate,
    /// generated into <data-dir>/tls/].
    #[arg(long, env = "MEET_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert [default: none; the self-signed certificate's key].
    #[arg(long, env = "MEET_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra host name or IP for the self-signed certificate (repeatable, or comma-separated)
    /// [default: none; the certificate names localhost and the loopback addresses].
    #[arg(long = "tls-name", env = "MEET_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// Directory of the web client's files (index.html and its scripts); a relative path is
    /// taken from the working directory.
    #[arg(long, env = "MEET_WEB_CLIENT_DIR", default_value = "web-client")]
    web_client_dir: PathBuf,
    /// Most participants in one room.
    #[arg(long, env = "MEET_MAX_PARTICIPANTS", default_value_t = 1000)]
    max_participants_per_room: usize,
    /// Let clients join free-form rooms without an invitation (development and load tests
    /// only: anyone who reaches the server can then join) [default: off].
    #[arg(long, env = "MEET_OPEN_ROOMS")]
    open_rooms: bool,
    /// Do not estimate subscribers' bandwidth: every video gets the simulcast layer its tile
    /// size asks for (for links known to be ample, and for tests on a loaded machine where
    /// CPU queueing reads as congestion) [default: off].
    #[arg(long, env = "MEET_NO_BANDWIDTH_ESTIMATION")]
    no_bandwidth_estimation: bool,
    /// Do not start new video subscriptions from the packets since the publisher's last
    /// keyframe: each waits for the next keyframe, as requested through the one-a-second
    /// throttle (for comparison, or if a client misbehaves on the replayed frames) [default:
    /// off].
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
    /// Directory for recordings [default: <data-dir>/recordings].
    #[arg(long, env = "MEET_RECORDINGS_DIR")]
    recordings_dir: Option<PathBuf>,
    /// Delete recordings this many days after they ended (0: keep them until deleted).
    #[arg(long, env = "MEET_RECORDING_RETENTION_DAYS", default_value_t = 90)]
    recording_retention_days: u32,
    /// The bearer token `GET /metrics` requires [default: a random token kept in
    /// <data-dir>/metrics-token, generated on first start].
    #[arg(long, env = "MEET_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Join a cluster of nodes coordinated by this NATS server (JetStream on: `nats-server
    /// -js`), e.g. `nats://127.0.0.1:4222`; several separated by commas. Every node needs the
    /// same --cluster-secret-file and, for one set of meetings, the same PostgreSQL
    /// --database-url [default: none; a single server].
    #[arg(
        long,
        env = "MEET_CLUSTER",
        value_name = "URL",
        requires = "cluster_secret_file"
    )]
    cluster: Option<String>,
    /// The file holding the cluster's shared secret (at least 32 bytes, e.g. `openssl rand
    /// -hex 32`): nodes without it are refused, and every node derives the join-token key from
    /// it [default: none].
    #[arg(
        long,
        env = "MEET_CLUSTER_SECRET_FILE",
        value_name = "FILE",
        requires = "cluster"
    )]
    cluster_secret_file: Option<PathBuf>,
    /// This node's name in its cluster: letters, digits, '-' and '_' [default: a random one per
    /// start].
    #[arg(long, env = "MEET_NODE_ID", requires = "cluster")]
    node_id: Option<String>,
    /// Where clients reach this node, `https://host:port`: a join for a room another node
    /// holds is sent there [default: https:// and --http-addr].
    #[arg(long, env = "MEET_PUBLIC_URL", requires = "cluster")]
    public_url: Option<String>,
    /// The UDP address where other nodes relay a room's media to this one (open it to the
    /// other nodes only) [default: the media address, next port].
    #[arg(long, env = "MEET_LINKS_ADDR", requires = "cluster")]
    links_addr: Option<std::net::SocketAddr>,
    /// TCP connections one address may hold at once: pages, API calls and WebSockets together
    /// (0: no limit, for a load test whose bots all come from one address).
    #[arg(long, env = "MEET_MAX_CONNECTIONS_PER_IP", default_value_t = signaling::connections::DEFAULT_MAX_PER_IP)]
    max_connections_per_ip: usize,
    /// Serve the web client's test hooks (browser tests only: they give any page that asks
    /// synthetic media and let a script read what it shows) [default: off].
    #[arg(long, env = "MEET_TEST_HOOKS")]
    test_hooks: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    signaling::install_crypto_provider();
    let cli = parse_cli();
    init_logging(cli.log_format);
    match cli.command {
        None => serve(cli.server).await,
        Some(Command::Admin { command }) => admin(cli.server, command).await,
    }
}

/// The command line, with the configuration file's values for what the command line and the
/// environment leave unset. Exits, as clap does, on a request for help or on an error.
fn parse_cli() -> Cli {
    let command = Cli::command();
    let merged = match config_file::merge_args(&command, std::env::args_os().collect()) {
        Ok(merged) => merged,
        Err(MergeError::Cli(err)) => err.exit(),
        Err(MergeError::File(err)) => {
            eprintln!("error: {err}");
            std::process::exit(2);
        }
    };
    let parsed = command
        .try_get_matches_from(&merged.args)
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches));
    match parsed {
        Ok(cli) => cli,
        Err(err) => {
            if err.use_stderr()
                && let Some(path) = &merged.path
                && !merged.applied.is_empty()
            {
                let _ = err.print();
                eprintln!(
                    "note: the configuration file {} set {}",
                    path.display(),
                    merged.applied.join(", ")
                );
                std::process::exit(err.exit_code());
            }
            err.exit()
        }
    }
}

/// Logs to standard output, as text or JSON lines. Whatever `RUST_LOG` asks, what carries keys
/// and secrets is never logged ([`signaling::loggable`]), in either format.
fn init_logging(format: LogFormat) {
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info"))
            .and(filter::filter_fn(signaling::loggable))
    };
    match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_filter(filter()))
            .init(),
        // One object a line, the event's fields at its top level (`message`, `level`,
        // `target`, `timestamp`, the fields), as log collectors read them.
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_filter(filter()),
            )
            .init(),
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
    if args.media_addr.ip().is_unspecified() && args.advertise_addr.is_none() {
        tracing::warn!(
            "media listens on {} but no --advertise-addr (MEET_ADVERTISE_ADDR, advertise_addr in \
             the configuration file) is set: clients are told to send media to an unspecified \
             address and cannot connect; set it to the address clients reach this host at",
            args.media_addr
        );
    }
    config.data_dir = args.data_dir;
    config.database_url = args.database_url;
    config.tls_cert = args.tls_cert;
    config.tls_key = args.tls_key;
    config.tls_names = args.tls_names;
    signaling::warn_if_no_web_client(&args.web_client_dir);
    config.web_client_dir = args.web_client_dir;
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
    if let (Some(url), Some(secret_file)) = (args.cluster, args.cluster_secret_file) {
        config.cluster = Some(signaling::cluster::ClusterConfig {
            url,
            secret: signaling::cluster::ClusterSecret::from_file(&secret_file)?,
            node_id: args.node_id,
            public_url: args.public_url,
            links_addr: args.links_addr,
        });
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
