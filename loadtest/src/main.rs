//! `loadtest`: measures what a meeting server can carry, with real WebRTC endpoints joining
//! through the real signaling protocol. See `loadtest --help`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use loadtest::bot::{insecure_tls_config, tls_config_trusting_pem};
use loadtest::metrics_scrape::MetricsTarget;
use loadtest::report::{RunReport, html};
use loadtest::scenario::{self, Live, Node, ProgressFn, Target, TokenPool};
use loadtest::spec::{Kind, Scenario, Shard};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Load tester and capacity benchmark for the meeting server",
    long_about = "Connects simulated participants (str0m endpoints) to a meeting server through \
                  its real WebSocket signaling and UDP media port, measures join times, media \
                  delivery and the server's CPU and memory, and checks SLOs. Exits with status \
                  1 when an SLO fails, an endpoint loses its connection or its media, or the \
                  server stops answering its metrics scrape; 2 when the run could not start. \
                  Waits (--wait-for-server) for the server's certificate and token files and \
                  for the server to answer. Targets outside loopback and private networks are \
                  refused unless --allow-remote is given. A run too big for one generator is \
                  split over several processes (--shard K/N, --start-at) whose JSON reports \
                  `loadtest merge` makes one (see `loadtest merge --help`). `loadtest floor` \
                  measures the loopback floor alone (see `loadtest floor --help`)."
)]
struct Args {
    /// The scenario: broadcast (presenters to viewers), meeting (everyone publishes), churn
    /// (a broadcast whose viewers keep leaving and joining). Default: broadcast, or the
    /// scenario file's.
    #[arg(value_enum)]
    kind: Option<Kind>,
    /// A TOML scenario file (fields as in the JSON report's `scenario`); flags given on the
    /// command line override it.
    #[arg(long, value_name = "FILE.toml")]
    scenario: Option<PathBuf>,
    /// The server's signaling WebSocket. Repeat it (or separate URLs with commas) for the
    /// nodes of a cluster: the endpoints join through them in turn, and each node's metrics
    /// are scraped and reported on their own and summed.
    #[arg(
        long,
        value_name = "URL",
        default_value = "wss://127.0.0.1:8443/ws",
        value_delimiter = ','
    )]
    url: Vec<String>,
    /// The server's Prometheus page; derived from --url when absent. With several --url, one
    /// per --url, in the same order.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    metrics_url: Vec<String>,
    /// Do not scrape server metrics.
    #[arg(long)]
    no_metrics: bool,
    /// The server's metrics token (its `<data-dir>/metrics-token`, or its --metrics-token),
    /// for every node.
    #[arg(long, env = "MEET_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Read the metrics token from this file (e.g. the server's `data/metrics-token`). With
    /// several --url: one file for every node, or one per --url in the same order.
    #[arg(long, value_name = "FILE", conflicts_with = "metrics_token")]
    metrics_token_file: Vec<PathBuf>,
    /// Trust exactly this server certificate (PEM); repeat it for each node of a cluster.
    /// Without it, any certificate is accepted.
    #[arg(long, value_name = "PEM")]
    ca_cert: Vec<PathBuf>,
    /// How long to wait, in seconds, for a server that is still starting: for the --ca-cert
    /// and --metrics-token-file files to appear (a fresh server writes them as it starts), for
    /// `/healthz` to answer `ok` and for the first metrics scrape.
    #[arg(long, value_name = "SECONDS", default_value_t = 20.0)]
    wait_for_server: f64,
    /// Address the endpoints' UDP sockets bind and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Allow a target outside loopback and private networks.
    #[arg(long)]
    allow_remote: bool,
    /// Join tokens or join links, one per line, for a server that admits invitees only
    /// (without it the bots join an open room: start the server with --open-rooms). The first
    /// lines go to the presenters (meeting: to every participant), the rest to viewers; each is
    /// used once.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    #[arg(long)]
    room: Option<String>,
    /// Presenters in broadcast and churn (1–3).
    #[arg(long)]
    presenters: Option<u32>,
    /// Viewers in broadcast and churn.
    #[arg(long)]
    viewers: Option<u32>,
    /// Participants in a meeting.
    #[arg(long)]
    participants: Option<u32>,
    /// Joins per second during the ramp.
    #[arg(long)]
    join_rate: Option<f64>,
    /// Seconds to hold everyone connected after the ramp.
    #[arg(long)]
    duration: Option<f64>,
    /// Video bitrate of each publisher, kbit/s.
    #[arg(long)]
    video_kbps: Option<u32>,
    #[arg(long)]
    video_fps: Option<u32>,
    /// Publishers send one video layer instead of three simulcast layers.
    #[arg(long)]
    no_simulcast: bool,
    /// End-to-end encryption as the web client does it: every endpoint announces a device key,
    /// asks the senders it sees for their keys through the server's relay and answers such
    /// requests with its own key wrapped for the asker; senders ratchet on each join and make
    /// a new key on each departure; every frame is sealed in the SFrame format and opened by
    /// each receiver. The report gives what key distribution cost: key messages and bytes at
    /// the server, join → first decrypted frame, departure → everyone rekeyed, frames lost to
    /// a rekey, the senders' wrap time per rekey.
    #[arg(long)]
    e2ee: bool,
    /// Light viewers: they check SRTP authentication, sequence gaps, loss and keyframes from
    /// each packet without reassembling or decoding frames (with --e2ee they open each audio
    /// packet, not video frames), so that one host can drive thousands. The summary says what
    /// they check and what they drop.
    #[arg(long)]
    light_viewers: bool,
    /// Only every Nth viewer receives media; the others join and (with --e2ee) speak the key
    /// exchange only: key distribution at a size whose media this host cannot carry.
    #[arg(long)]
    media_every: Option<u32>,
    /// --e2ee, to compare designs: least time between two departure rekeys of a sender, in
    /// ms (the web client's: 2000).
    #[arg(long)]
    e2ee_rekey_interval_ms: Option<u64>,
    /// --e2ee, to compare designs: how long key requests wait to be answered together, in ms
    /// (the web client's: 100).
    #[arg(long)]
    e2ee_answer_window_ms: Option<u64>,
    /// --e2ee, to compare designs: wrapped keys per `e2ee_keys` message, 1–256 (the web
    /// client's: 256).
    #[arg(long)]
    e2ee_keys_per_message: Option<usize>,
    /// Measure the loopback floor (AES-128-GCM and one UDP send per packet, then sendmmsg
    /// batches) for about a second before the endpoints start, and state the server's CPU per
    /// forwarded packet as a multiple of it. On by default; `--measure-floor false` skips it.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    measure_floor: Option<bool>,
    /// Viewers replaced per second in churn.
    #[arg(long)]
    churn_rate: Option<f64>,
    /// SLO: highest packet loss, percent (default 0.5).
    #[arg(long)]
    slo_loss: Option<f64>,
    /// SLO: highest p95 join time (socket open to ICE connected), ms.
    #[arg(long)]
    slo_join_p95_ms: Option<f64>,
    /// SLO: highest p95 time to the first video keyframe, ms.
    #[arg(long)]
    slo_first_frame_p95_ms: Option<f64>,
    /// SLO (--e2ee): highest p95 time from a receiver's join to its first decrypted frame, ms.
    #[arg(long)]
    slo_first_decrypt_p95_ms: Option<f64>,
    /// SLO (--e2ee): highest p95 time from a departure until every remaining receiver
    /// decrypts under a key the departed never had, ms.
    #[arg(long)]
    slo_rekeyed_p95_ms: Option<f64>,
    /// SLO: most endpoints that may fail to join or receive media (default 0).
    #[arg(long)]
    slo_max_failed: Option<u64>,
    /// Soak SLO: most growth of the server's RSS, in MiB, from the middle third of the run
    /// to its last third.
    #[arg(long)]
    slo_rss_growth_mib: Option<f64>,
    /// Soak SLO: most growth of the server's open file descriptors, likewise.
    #[arg(long)]
    slo_fd_growth: Option<f64>,
    /// Soak SLO: most growth of the server's async tasks, likewise.
    #[arg(long)]
    slo_task_growth: Option<f64>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the HTML report (inline SVG plots) here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Raise the number of viewers step by step until an SLO fails; report the last pass.
    #[arg(long)]
    find_capacity: bool,
    /// First viewer count of the capacity search.
    #[arg(long, default_value_t = 50)]
    start: u32,
    #[arg(long, default_value_t = 50)]
    step: u32,
    /// Largest viewer count the capacity search tries.
    #[arg(long, default_value_t = 1_000)]
    max: u32,
    /// Run part K of N of a run split over N processes (on this host or others): the
    /// scenario's counts and rates stay the whole run's, this process runs every Nth receiver
    /// from the Kth (and, as part 1, the presenters) at an Nth of the rates, with endpoint
    /// names and --tokens lines of its own. Give every part the same flags and --start-at,
    /// and merge their --json reports with `loadtest merge`.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
    /// Start the endpoints at this time (RFC 3339, e.g. 2026-12-01T09:00:00Z, or Unix
    /// milliseconds), so that the parts of a split run start together: leave the processes
    /// time to start and check their servers. A time more than 2 s past is refused; hosts'
    /// clocks must agree (NTP).
    #[arg(long, value_name = "TIME", value_parser = parse_start_at)]
    start_at: Option<u64>,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    quiet: bool,
}

impl Args {
    fn scenario(&self) -> Result<Scenario> {
        let mut scenario = match &self.scenario {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Scenario::from_toml(&text)?
            }
            None => Scenario::default(),
        };
        if let Some(kind) = self.kind {
            scenario.kind = kind;
        }
        let set = |field: &mut u32, value: Option<u32>| {
            if let Some(value) = value {
                *field = value;
            }
        };
        set(&mut scenario.presenters, self.presenters);
        set(&mut scenario.viewers, self.viewers);
        set(&mut scenario.participants, self.participants);
        set(&mut scenario.video_kbps, self.video_kbps);
        set(&mut scenario.video_fps, self.video_fps);
        if self.no_simulcast {
            scenario.simulcast = false;
        }
        if self.e2ee {
            scenario.e2ee = true;
        }
        if self.light_viewers {
            scenario.light_viewers = true;
        }
        if let Some(every) = self.media_every {
            scenario.media_every = every;
        }
        if self.e2ee_rekey_interval_ms.is_some() {
            scenario.e2ee_rekey_interval_ms = self.e2ee_rekey_interval_ms;
        }
        if self.e2ee_answer_window_ms.is_some() {
            scenario.e2ee_answer_window_ms = self.e2ee_answer_window_ms;
        }
        if self.e2ee_keys_per_message.is_some() {
            scenario.e2ee_keys_per_message = self.e2ee_keys_per_message;
        }
        if let Some(measure) = self.measure_floor {
            scenario.measure_floor = measure;
        }
        if let Some(room) = &self.room {
            scenario.room.clone_from(room);
        }
        if let Some(rate) = self.join_rate {
            scenario.join_rate = rate;
        }
        if let Some(duration) = self.duration {
            scenario.duration_s = duration;
        }
        if let Some(rate) = self.churn_rate {
            scenario.churn_per_s = rate;
        }
        if self.slo_loss.is_some() {
            scenario.slo.loss_pct = self.slo_loss;
        }
        if self.slo_join_p95_ms.is_some() {
            scenario.slo.join_p95_ms = self.slo_join_p95_ms;
        }
        if self.slo_first_frame_p95_ms.is_some() {
            scenario.slo.first_frame_p95_ms = self.slo_first_frame_p95_ms;
        }
        if self.slo_first_decrypt_p95_ms.is_some() {
            scenario.slo.first_decrypt_p95_ms = self.slo_first_decrypt_p95_ms;
        }
        if self.slo_rekeyed_p95_ms.is_some() {
            scenario.slo.rekeyed_p95_ms = self.slo_rekeyed_p95_ms;
        }
        if self.slo_rss_growth_mib.is_some() {
            scenario.slo.rss_growth_mib = self.slo_rss_growth_mib;
        }
        if self.slo_fd_growth.is_some() {
            scenario.slo.fd_growth = self.slo_fd_growth;
        }
        if self.slo_task_growth.is_some() {
            scenario.slo.task_growth = self.slo_task_growth;
        }
        if let Some(max) = self.slo_max_failed {
            scenario.slo.max_failed = max;
        }
        if self.shard.is_some() {
            scenario.shard = self.shard;
        }
        if self.start_at.is_some() {
            scenario.start_at_unix_ms = self.start_at;
        }
        scenario.validate()?;
        Ok(scenario)
    }

    /// Each node's metrics page, in --url's order, from --metrics-url or derived from --url;
    /// `None` with --no-metrics.
    fn metrics_urls(&self) -> Result<Vec<Option<String>>> {
        if self.url.is_empty() {
            bail!("--url is empty");
        }
        let given = self.metrics_url.len();
        if given != 0 && given != self.url.len() {
            bail!(
                "{given} --metrics-url for {} --url: give one per --url, in the same order",
                self.url.len()
            );
        }
        let files = self.metrics_token_file.len();
        if files > 1 && files != self.url.len() {
            bail!(
                "{files} --metrics-token-file for {} --url: give one for every node, or one per --url",
                self.url.len()
            );
        }
        self.url
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let authority = authority(url)?;
                if self.no_metrics {
                    return Ok(None);
                }
                Ok(Some(match self.metrics_url.get(index) {
                    Some(url) => url.clone(),
                    None => format!("https://{authority}/metrics"),
                }))
            })
            .collect()
    }

    /// The metrics token of the node at `index`: its file's (read again on each try), or the
    /// one given for every node.
    fn metrics_token(&self, index: usize) -> Result<Option<String>> {
        let file = match self.metrics_token_file.as_slice() {
            [] => return Ok(self.metrics_token.clone()),
            [one] => one,
            files => &files[index],
        };
        let token =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        if token.trim().is_empty() {
            bail!("{} is empty", file.display());
        }
        Ok(Some(token.trim().to_string()))
    }

    /// The join tokens, read once: the operator's own file, so a missing one is an error at once.
    fn tokens(&self, scenario: &Scenario) -> Result<Option<Arc<Mutex<TokenPool>>>> {
        let Some(path) = &self.tokens else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let publishers = match scenario.kind {
            Kind::Meeting => scenario.participants,
            Kind::Broadcast | Kind::Churn => scenario.presenters,
        } as usize;
        let pool = TokenPool::from_lines(&text, publishers).for_part(scenario);
        if pool.len() < scenario.endpoints_here() as usize {
            bail!(
                "{} holds {} tokens for this process's {} endpoints",
                path.display(),
                pool.len(),
                scenario.endpoints_here()
            );
        }
        Ok(Some(Arc::new(Mutex::new(pool))))
    }

    /// Reads the server's files and checks that it answers, retrying for --wait-for-server
    /// seconds: a server started a moment ago may not have written its certificate and token
    /// yet, nor be listening. Each try reads the files again, so a certificate replaced by a
    /// fresh server is picked up.
    async fn target(&self, scenario: &Scenario) -> Result<Target> {
        let tokens = self.tokens(scenario)?;
        let metrics_urls = self.metrics_urls()?;
        // A malformed URL is no reason to wait.
        for url in metrics_urls.iter().flatten() {
            MetricsTarget::new(url, insecure_tls_config())?;
        }
        let wait = Duration::try_from_secs_f64(self.wait_for_server)
            .context("--wait-for-server must be a number of seconds")?;
        let deadline = Instant::now() + wait;
        let mut tries = 0u32;
        loop {
            tries += 1;
            match self.try_target(&metrics_urls).await {
                Ok((tls, nodes)) => {
                    return Ok(Target {
                        nodes,
                        tls,
                        bind: self.bind,
                        tokens,
                    });
                }
                Err(err) if Instant::now() < deadline => {
                    tracing::debug!("the server is not ready yet: {err:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => {
                    return Err(err.context(format!(
                        "the server at {} was not ready after {:.0} s ({tries} tries; \
                         --wait-for-server sets how long to wait)",
                        self.url.join(", "),
                        self.wait_for_server
                    )));
                }
            }
        }
    }

    /// One try: the certificates, the metrics tokens, every node's `/healthz`, and a first
    /// metrics scrape of each.
    async fn try_target(
        &self,
        metrics_urls: &[Option<String>],
    ) -> Result<(Arc<rustls::ClientConfig>, Vec<Node>)> {
        let tls = if self.ca_cert.is_empty() {
            insecure_tls_config()
        } else {
            // One config pins every node's certificate: a cluster's redirect may send a bot
            // to any of them.
            let mut pem = Vec::new();
            for path in &self.ca_cert {
                pem.extend(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                );
                pem.push(b'\n');
            }
            tls_config_trusting_pem(&pem).with_context(|| {
                let files: Vec<String> = self
                    .ca_cert
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                format!("reading {}", files.join(", "))
            })?
        };
        let mut nodes = Vec::with_capacity(self.url.len());
        for (index, (url, metrics_url)) in self.url.iter().zip(metrics_urls).enumerate() {
            let authority = authority(url)?;
            let health = MetricsTarget::new(&format!("https://{authority}/healthz"), tls.clone())?;
            let body = health
                .get("/healthz", Duration::from_secs(2))
                .await
                .with_context(|| format!("https://{authority}/healthz"))?;
            if body.trim() != "ok" {
                bail!("https://{authority}/healthz answered {:?}", body.trim());
            }
            let metrics = match metrics_url {
                Some(metrics_url) => {
                    let metrics = MetricsTarget::new(metrics_url, tls.clone())?
                        .with_token(self.metrics_token(index)?);
                    metrics.scrape(Duration::from_secs(2)).await.with_context(|| {
                        format!("scraping {metrics_url} (pass the server's token with --metrics-token-file, or --no-metrics)")
                    })?;
                    Some(metrics)
                }
                None => None,
            };
            nodes.push(Node {
                ws_url: url.clone(),
                metrics,
            });
        }
        Ok((tls, nodes))
    }
}

/// `--start-at`: an RFC 3339 time or Unix milliseconds.
fn parse_start_at(text: &str) -> Result<u64> {
    if let Ok(ms) = text.trim().parse::<u64>() {
        return Ok(ms);
    }
    let ms = formats::rfc3339::parse(text.trim())
        .map_err(|err| anyhow::anyhow!("{err}, or Unix milliseconds"))?;
    u64::try_from(ms).context("a time before 1970")
}

/// `HOST:PORT` of a `wss://HOST:PORT/PATH` URL.
fn authority(url: &str) -> Result<&str> {
    let Some(rest) = url.strip_prefix("wss://") else {
        bail!("--url must be wss://HOST:PORT/PATH, not {url:?}");
    };
    Ok(rest.split('/').next().unwrap_or_default())
}

fn progress_bar(quiet: bool) -> (Option<ProgressFn>, Option<ProgressBar>) {
    if quiet {
        return (None, None);
    }
    let bar = ProgressBar::new(0);
    let style =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} joined {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    let shown = bar.clone();
    let update: ProgressFn = Arc::new(move |live: &Live| {
        shown.set_length(live.target);
        shown.set_position(live.joined);
        shown.set_message(format!(
            "{} | {} failed | {} lost | {} connected | {:.1} Mbit/s | loss {:.2}%",
            live.phase, live.failed, live.lost, live.connected, live.rx_mbps, live.loss_pct
        ));
    });
    (Some(update), Some(bar))
}

fn write_reports(args: &Args, report: &RunReport, extra: Option<&serde_json::Value>) -> Result<()> {
    if let Some(path) = &args.json {
        let json = match extra {
            Some(value) => serde_json::to_string_pretty(value)?,
            None => serde_json::to_string_pretty(report)?,
        };
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run(args: Args) -> Result<bool> {
    let scenario = args.scenario()?;
    if args.find_capacity && (scenario.shard.is_some() || scenario.start_at_unix_ms.is_some()) {
        bail!("--find-capacity runs in one process: no --shard or --start-at");
    }
    // A start time already past is refused before any server is waited for.
    if let Some(at_ms) = scenario.start_at_unix_ms {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let late_ms = scenario::START_LATE_LIMIT.as_millis() as u64;
        if now_ms > at_ms.saturating_add(late_ms) {
            bail!(
                "--start-at is {:.1} s past: choose a later time",
                (now_ms - at_ms) as f64 / 1_000.0
            );
        }
    }
    // Nothing is sent to a target before it is known to be allowed.
    for url in &args.url {
        scenario::check_target(url, args.allow_remote).await?;
    }
    for url in args.metrics_urls()?.iter().flatten() {
        scenario::check_target(url, args.allow_remote).await?;
    }
    let target = args.target(&scenario).await?;
    let (progress, bar) = progress_bar(args.quiet);

    if args.find_capacity {
        if scenario.kind == Kind::Meeting {
            bail!("--find-capacity raises viewers: use broadcast or churn");
        }
        let steps = scenario::find_capacity(
            &scenario, &target, args.start, args.step, args.max, progress,
        )
        .await?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        for step in &steps {
            println!(
                "{} viewers: {}",
                step.viewers,
                if step.passed { "pass" } else { "FAIL" }
            );
            print!("{}", step.report.summary());
        }
        let capacity = steps.iter().filter(|s| s.passed).map(|s| s.viewers).max();
        match capacity {
            Some(n) => println!("capacity: {n} viewers (last step passing every SLO)"),
            None => println!(
                "capacity: below {} viewers (the first step failed)",
                args.start
            ),
        }
        let json = serde_json::json!({ "capacity_viewers": capacity, "steps": steps });
        if let Some(last) = steps.last() {
            write_reports(&args, &last.report, Some(&json))?;
        }
        // The search succeeded when it found a passing step.
        return Ok(capacity.is_some());
    }

    let report = scenario::run(&scenario, &target, progress).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print!("{}", report.summary());
    write_reports(&args, &report, None)?;
    Ok(report.passed)
}

/// `loadtest merge`: one report of a split run's parts.
#[derive(Debug, Parser)]
#[command(
    name = "loadtest merge",
    about = "Merges the JSON reports (--json) of the parts of a split run (--shard K/N) into one \
             report: every part's endpoints and counts together, every percentile from the \
             parts' histograms added up (what one process running every endpoint would have \
             measured), the SLOs checked again. Writes the merged JSON report to standard \
             output and its summary to standard error; exits with 1 when the merged run \
             fails, 2 when the reports do not merge"
)]
struct MergeArgs {
    /// The parts' JSON reports, every part once.
    #[arg(required = true, value_name = "REPORT.json")]
    reports: Vec<PathBuf>,
    /// Also write the HTML report here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// No summary on standard error.
    #[arg(long)]
    quiet: bool,
}

/// Reads one part's report.
fn read_report(path: &std::path::Path) -> Result<RunReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if value.get("steps").is_some() {
        bail!(
            "{} is a capacity search's report: only runs merge",
            path.display()
        );
    }
    if value.get("histograms").is_none() {
        bail!(
            "{} has no histograms: it was written by a loadtest older than split runs",
            path.display()
        );
    }
    serde_json::from_value(value)
        .with_context(|| format!("{} is not a loadtest report", path.display()))
}

fn merge_main(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = MergeArgs::parse_from(args);
    let merged = args
        .reports
        .iter()
        .map(|path| read_report(path))
        .collect::<Result<Vec<_>>>()
        .and_then(|reports| Ok(loadtest::report::merge(reports)?))
        .and_then(|merged| {
            let json = serde_json::to_string_pretty(&merged)?;
            if let Some(path) = &args.html {
                std::fs::write(path, html(&merged))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok((merged, json))
        });
    match merged {
        Ok((merged, json)) => {
            println!("{json}");
            if !args.quiet {
                eprint!("{}", merged.summary());
            }
            if merged.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// `loadtest floor`: the loopback floor alone, without a server.
#[derive(Debug, Parser)]
#[command(
    name = "loadtest floor",
    about = "Measures the loopback floor: AES-128-GCM seal of a 1,100-byte payload and one UDP \
             datagram per packet to a 127.0.0.1 socket another thread drains, then the same in \
             sendmmsg batches; prints core-µs per packet (sender thread and whole process) and \
             packets/s"
)]
struct FloorArgs {
    /// Packets sent each way.
    #[arg(long, default_value_t = 200_000)]
    packets: u64,
    /// Datagrams per sendmmsg call (1–64).
    #[arg(long, default_value_t = loadtest::floor::DEFAULT_BATCH)]
    batch: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

fn floor_main(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = FloorArgs::parse_from(args);
    match loadtest::floor::measure(loadtest::floor::Limit::Packets(args.packets), args.batch) {
        Ok(floor) if args.json => match serde_json::to_string_pretty(&floor) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
        },
        Ok(floor) => {
            print!("{}", floor.summary());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    // One crypto provider for the whole process (see ARCHITECTURE.md).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // `floor` and `merge` are commands of their own; the scenarios stay the first
    // positional argument.
    let mut raw = std::env::args_os();
    let command = std::env::args_os().nth(1);
    if command.as_ref().is_some_and(|arg| arg == "floor") {
        raw.next();
        raw.next();
        return floor_main(std::iter::once("loadtest floor".into()).chain(raw));
    }
    if command.as_ref().is_some_and(|arg| arg == "merge") {
        raw.next();
        raw.next();
        return merge_main(std::iter::once("loadtest merge".into()).chain(raw));
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
