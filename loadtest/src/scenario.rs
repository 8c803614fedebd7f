//! Load scenarios: who joins, how fast, for how long, and what counts as success.
//!
//! A run connects real bots ([`crate::bot`]) through the real signaling protocol, ramps them up
//! at a fixed join rate, holds them for a while (replacing some continuously in `churn`), then
//! measures every endpoint, says goodbye and evaluates the SLOs. The server's own CPU and memory
//! are scraped from its `/metrics` page all along. Every run is bounded: endpoint count,
//! duration and join rate have hard caps, and a deadline ends a run whatever happens.
//!
//! A run fails outright, whatever its SLOs, when an endpoint loses its signaling connection
//! (the server closed or dropped it; a churned viewer's own leave does not count), when an
//! endpoint that was receiving media stops receiving any, or when the server stops answering
//! its metrics scrape ([`crate::report::RunError`]). A run whose every endpoint is gone ends
//! its hold early: there is nothing left to measure.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use thiserror::Error;
use tokio::task::JoinSet;

use crate::bot::{Bot, BotError, BotOptions, BotStats};
use crate::floor::{self, Limit};
use crate::metrics_scrape::{MetricsTarget, ScrapeError, ServerSample};
use crate::rekey::{self, Departure};
use crate::report::{
    EndpointResult, MEDIA_STOP_S, NodeReport, Role, RunError, RunErrorKind, RunReport,
    ServerSummary, TimelineSample,
};
use crate::spec::{Kind, MAX_ENDPOINTS, Scenario, SpecError};
use endpoint::{E2eeConfig, EndpointConfig};

/// How long leaving may take at the end before the remaining bots are dropped.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(10);
/// How long presenters get to start sending before viewers join.
const PRESENTER_WARMUP: Duration = Duration::from_secs(5);
/// How late a process may reach `start_at` (busy, or its floor measured late) and still start:
/// later, its part would not run beside the others.
pub const START_LATE_LIMIT: Duration = Duration::from_secs(2);
/// Farthest `start_at` ahead: a run is bounded, and a time further off is a mistake.
const START_AHEAD_LIMIT: Duration = Duration::from_secs(3_600);
/// Churn stops this long before the end, so that every replacement has had time to connect
/// and receive media when the run is measured.
const CHURN_QUIET: Duration = Duration::from_secs(2);
/// Time allowed beyond the planned ramp and hold before a run is cut short.
const DEADLINE_SLACK: Duration = Duration::from_secs(60);
/// Longest wait, after the ramp, for every receiver's media to flow before the hold starts:
/// the hold measures a meeting under way, not the last joiners' handshakes, however slow the
/// machine. Whoever still has none when it ends is reported as such.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// Failed metrics scrapes in a row (one a second, 2 s each at most) after which the server
/// counts as no longer answering: one slow scrape under load is not an outage.
const MISSED_SCRAPES: u32 = 3;
/// How long the loopback floor is measured each way (one send per packet, then batches).
const FLOOR_EACH: Duration = Duration::from_millis(500);
/// Longest wait for one metrics scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("target {0} is not on loopback or a private test network (pass --allow-remote)")]
    RemoteTarget(String),
    #[error("cannot resolve the target {0}: {1}")]
    Resolve(String, String),
    #[error("every presenter failed to join: {0}")]
    NoPresenter(String),
    #[error("no server to connect to")]
    NoNode,
    #[error(
        "the start time passed {0:.1} s ago: start the processes earlier or choose a later \
         --start-at"
    )]
    StartPassed(f64),
    #[error("the start time is {0:.0} s ahead, more than an hour")]
    StartTooFar(f64),
}

impl Scenario {
    fn endpoint_config(&self, role: Role, index: u32) -> EndpointConfig {
        let mut config = EndpointConfig::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
        // Decoding every received Opus packet would dominate a bot's cost; loss and freezes
        // are measured from the RTP headers instead.
        config.analyze_audio = false;
        let publishes = role != Role::Viewer;
        config.light = self.light_viewers && !publishes;
        config.publish_audio = publishes;
        config.publish_video = publishes;
        config.video_fps = self.video_fps;
        let frame_bytes = |kbps: f64| (kbps * 1_000.0 / 8.0 / f64::from(self.video_fps)) as usize;
        config.video_frame_bytes = frame_bytes(f64::from(self.video_kbps));
        if self.simulcast {
            let top = f64::from(self.video_kbps);
            config.simulcast_frame_bytes = vec![
                frame_bytes(top / 8.0),
                frame_bytes(top * 0.4),
                frame_bytes(top),
            ];
        }
        config.video_tag = u64::from(index) + 1;
        config.tone_hz = 300.0 + 20.0 * (index % 40) as f32;
        config
    }
}

/// One server of the run: where endpoints join, and its metrics.
#[derive(Debug, Clone)]
pub struct Node {
    /// `wss://HOST:PORT/ws`.
    pub ws_url: String,
    pub metrics: Option<MetricsTarget>,
}

/// Where the servers are and how to reach them.
#[derive(Debug, Clone)]
pub struct Target {
    /// At least one. This process's endpoints join through the nodes in turn (a cluster's
    /// node that does not hold the room sends them on to the one that does), and each node's
    /// metrics are scraped on their own: the report gives every node and their sum.
    pub nodes: Vec<Node>,
    /// Trusted for every node (a pinned config pins each node's certificate).
    pub tls: Arc<rustls::ClientConfig>,
    /// The address the bots' UDP sockets bind (and advertise).
    pub bind: IpAddr,
    /// Join tokens, for a server that admits invitees only; `None` joins open rooms.
    pub tokens: Option<Arc<Mutex<TokenPool>>>,
}

/// Join tokens for a server that admits invitees only (one per invitation, as organizers'
/// links carry them). Publishers (presenters, meeting members) take from the first lines, the
/// others from the rest; each token is used once, since one invitation is present once. The
/// parts of a split run read the same file and keep their own lines ([`TokenPool::for_part`]).
#[derive(Debug, Default)]
pub struct TokenPool {
    publishers: VecDeque<String>,
    others: VecDeque<String>,
}

impl TokenPool {
    /// One token or join link (`…#join=TOKEN`) per line; blank lines and `#` comments skipped.
    /// The first `publishers` are for publishers.
    pub fn from_lines(text: &str, publishers: usize) -> Self {
        let mut tokens = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.rsplit_once("#join=").map_or(l, |(_, t)| t).to_string());
        let publishers = tokens.by_ref().take(publishers).collect();
        Self {
            publishers,
            others: tokens.collect(),
        }
    }

    /// The tokens of `scenario`'s part of a split run (all of them for the whole run): part K
    /// of N keeps the Kth receiver's line, the (K+N)th, … (the order its receivers take them
    /// in, [`Scenario::receiver_ordinal`]), and part 1 the presenters'.
    pub fn for_part(self, scenario: &Scenario) -> Self {
        let Some(shard) = scenario.shard else {
            return self;
        };
        let keep = |tokens: VecDeque<String>| -> VecDeque<String> {
            tokens
                .into_iter()
                .enumerate()
                .filter(|(n, _)| *n as u32 % shard.count == shard.index - 1)
                .map(|(_, token)| token)
                .collect()
        };
        match scenario.kind {
            // Every member is a publisher, and a receiver that the parts share out.
            Kind::Meeting => Self {
                publishers: keep(self.publishers),
                others: keep(self.others),
            },
            Kind::Broadcast | Kind::Churn => Self {
                publishers: if shard.index == 1 {
                    self.publishers
                } else {
                    VecDeque::new()
                },
                others: keep(self.others),
            },
        }
    }

    /// How many tokens are left.
    pub fn len(&self) -> usize {
        self.publishers.len() + self.others.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&mut self, role: Role) -> Option<String> {
        match role {
            Role::Viewer => self.others.pop_front(),
            _ => self.publishers.pop_front(),
        }
    }
}

/// Whether an address is loopback or in a private or benchmarking network.
pub fn is_local_or_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                // 198.18.0.0/15 is set aside for benchmarking (RFC 2544).
                || (a == 198 && (b & 0xfe) == 18)
        }
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Refuses a target that resolves to anything outside loopback and private networks.
pub async fn check_target(url: &str, allow_remote: bool) -> Result<(), ScenarioError> {
    if allow_remote {
        return Ok(());
    }
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let with_port = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|err| ScenarioError::Resolve(authority.to_string(), err.to_string()))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !is_local_or_private(a.ip())) {
        return Err(ScenarioError::RemoteTarget(authority.to_string()));
    }
    Ok(())
}

/// What the progress display shows, updated about once a second.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub phase: &'static str,
    pub elapsed_s: f64,
    pub target: u64,
    pub joined: u64,
    pub failed: u64,
    pub connected: u64,
    /// Endpoints that lost their connection or their media mid-run.
    pub lost: u64,
    pub rx_mbps: f64,
    pub loss_pct: f64,
}

/// Receives progress updates.
pub type ProgressFn = Arc<dyn Fn(&Live) + Send + Sync>;

type JoinOutcome = (Role, String, Result<Bot, BotError>);

/// What the metrics scraper collected, and whether the server kept answering.
#[derive(Debug, Default)]
struct ServerLog {
    /// The node's URL when the run has several, for its outage's message.
    label: Option<String>,
    /// Seconds into the run (the middle of the request) and the figures.
    samples: Vec<(f64, ServerSample)>,
    answered: bool,
    /// Failed scrapes in a row now, and when the first of them started.
    streak: u32,
    streak_since_s: f64,
    /// The first outage ([`MISSED_SCRAPES`] failures in a row).
    outage: Option<RunError>,
}

impl ServerLog {
    fn record(&mut self, t_s: f64, outcome: Result<ServerSample, ScrapeError>) {
        match outcome {
            Ok(sample) => {
                self.answered = true;
                self.streak = 0;
                self.samples.push((t_s, sample));
            }
            Err(err) => {
                if self.streak == 0 {
                    self.streak_since_s = t_s;
                }
                self.streak += 1;
                if self.streak >= MISSED_SCRAPES && self.outage.is_none() {
                    let server = match &self.label {
                        Some(url) => format!("the server at {url}"),
                        None => "the server".to_string(),
                    };
                    let what = if self.answered {
                        format!("stopped answering at {:.1} s", self.streak_since_s)
                    } else {
                        "never answered".to_string()
                    };
                    self.outage = Some(RunError {
                        kind: RunErrorKind::MetricsUnreachable,
                        t_s: Some(self.streak_since_s),
                        endpoints: 0,
                        message: format!(
                            "{server} {what} its metrics scrape ({} in a row failed; last: {err})",
                            self.streak
                        ),
                    });
                }
            }
        }
    }
}

/// What the scrapes of every node collected.
#[derive(Debug, Default)]
struct ServerLogs {
    /// One per node, in the target's order (empty for a node whose metrics are not scraped).
    nodes: Vec<ServerLog>,
    /// The scraped nodes together, from the rounds in which every one of them answered, timed
    /// at the mean of their times: with one node, that node's own samples.
    total: Vec<(f64, ServerSample)>,
}

impl ServerLogs {
    fn new(nodes: &[Node]) -> Self {
        let several = nodes.len() > 1;
        Self {
            nodes: nodes
                .iter()
                .map(|node| ServerLog {
                    label: several.then(|| node.ws_url.clone()),
                    ..ServerLog::default()
                })
                .collect(),
            total: Vec::new(),
        }
    }
}

/// The latest samples after a round of scrapes, each with its time.
#[derive(Debug, Clone, Default)]
struct Scraped {
    total: Option<(f64, ServerSample)>,
    nodes: Vec<Option<(f64, ServerSample)>>,
}

/// One scrape of every node at once, each timed at the middle of its request.
async fn scrape_round(nodes: &[Node], started: Instant, logs: &Mutex<ServerLogs>) {
    let scrapes = nodes.iter().map(|node| async move {
        let metrics = node.metrics.as_ref()?;
        let before = started.elapsed().as_secs_f64();
        let outcome = metrics
            .scrape(SCRAPE_TIMEOUT)
            .await
            .map(|page| ServerSample::from_metrics(&page));
        Some(((before + started.elapsed().as_secs_f64()) / 2.0, outcome))
    });
    let outcomes = futures_util::future::join_all(scrapes).await;
    let mut logs = lock(logs);
    let mut answered = Vec::new();
    let mut every = true;
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let Some((t_s, outcome)) = outcome else {
            continue;
        };
        match &outcome {
            Ok(sample) => answered.push((t_s, *sample)),
            Err(_) => every = false,
        }
        if let Some(log) = logs.nodes.get_mut(index) {
            log.record(t_s, outcome);
        }
    }
    let samples: Vec<ServerSample> = answered.iter().map(|(_, s)| *s).collect();
    if every && let Some(sum) = ServerSample::sum(&samples) {
        let t_s = answered.iter().map(|(t, _)| t).sum::<f64>() / answered.len() as f64;
        logs.total.push((t_s, sum));
    }
}

/// The state of one run in progress.
struct Run<'a> {
    scenario: &'a Scenario,
    target: &'a Target,
    started: Instant,
    progress: Option<ProgressFn>,
    live: Live,
    joins: JoinSet<JoinOutcome>,
    bots: VecDeque<(Role, String, Bot)>,
    results: Vec<EndpointResult>,
    failures: Vec<String>,
    /// The run's own errors (the deadline); the endpoints' losses are in `results`.
    errors: Vec<RunError>,
    /// When each endpoint was first seen disconnected, in seconds into the run.
    lost_at: HashMap<protocol::ParticipantId, f64>,
    /// Per endpoint: RTP packets received at the last sample that saw more, and when.
    media_progress: HashMap<protocol::ParticipantId, (u64, Instant)>,
    /// Endpoints this process started so far, and of them presenters and receivers (churned
    /// replacements included).
    started_here: u32,
    presenters_started: u32,
    receivers_started: u32,
    /// The names of the viewers that receive no media (`Scenario::media_every`).
    without_media: HashSet<String>,
    timeline: Vec<TimelineSample>,
    /// Viewers the run made leave (churn), for the key measurements.
    departures: Vec<Departure>,
    /// Per-bot (expected, lost, bytes) at the previous sample.
    previous: HashMap<protocol::ParticipantId, (u64, u64, u64)>,
    last_sample_at: Instant,
    server: Arc<Mutex<ServerLogs>>,
    /// Endpoints sent to each node, and the node each endpoint was sent to.
    sent_to: Vec<u64>,
    node_of: HashMap<String, usize>,
}

/// Runs a scenario to the end and reports it.
pub async fn run(
    scenario: &Scenario,
    target: &Target,
    progress: Option<ProgressFn>,
) -> Result<RunReport, ScenarioError> {
    scenario.validate()?;
    if target.nodes.is_empty() {
        return Err(ScenarioError::NoNode);
    }
    // The floor runs before anything else of the run and before the generator's CPU clock is
    // read, so that neither disturbs the other; its own thread keeps the runtime free.
    let floor = if scenario.measure_floor {
        let measured = tokio::task::spawn_blocking(|| {
            floor::measure(Limit::Duration(FLOOR_EACH), floor::DEFAULT_BATCH)
        })
        .await;
        match measured {
            Ok(Ok(floor)) => Some(floor),
            Ok(Err(err)) => {
                tracing::warn!("the loopback floor could not be measured: {err}");
                None
            }
            Err(err) => {
                tracing::warn!("the loopback floor's thread failed: {err}");
                None
            }
        }
    } else {
        None
    };
    if let Some(at_ms) = scenario.start_at_unix_ms {
        wait_for_start(at_ms, progress.as_ref()).await?;
    }
    let started = Instant::now();
    let started_unix_ms = unix_ms();
    let generator_cpu = cpu_time::ProcessTime::try_now().ok();
    let server = Arc::new(Mutex::new(ServerLogs::new(&target.nodes)));
    let scraped = target.nodes.iter().any(|node| node.metrics.is_some());
    // Aborted when the run ends, however it ends.
    let scraper = scraped.then(|| {
        let (nodes, server) = (target.nodes.clone(), server.clone());
        AbortOnDrop(tokio::spawn(scrape_loop(nodes, started, server)))
    });
    // The first scrape is the baseline for the servers' CPU and memory.
    if scraped {
        wait_for(Duration::from_secs(3), || !lock(&server).total.is_empty()).await;
    }

    let mut run = Run {
        scenario,
        target,
        departures: Vec::new(),
        started,
        progress,
        live: Live {
            target: u64::from(scenario.endpoints_here()),
            ..Live::default()
        },
        joins: JoinSet::new(),
        bots: VecDeque::new(),
        results: Vec::new(),
        failures: Vec::new(),
        errors: Vec::new(),
        lost_at: HashMap::new(),
        media_progress: HashMap::new(),
        started_here: 0,
        presenters_started: 0,
        receivers_started: 0,
        without_media: HashSet::new(),
        timeline: Vec::new(),
        previous: HashMap::new(),
        last_sample_at: started,
        server: server.clone(),
        sent_to: vec![0; target.nodes.len()],
        node_of: HashMap::new(),
    };
    let ramp = Duration::from_secs_f64(
        f64::from(scenario.endpoints_here()) / (scenario.join_rate * scenario.rate_share()),
    );
    let hold = Duration::from_secs_f64(scenario.duration_s);
    let split_presenters =
        scenario.shard.is_some() && scenario.kind != Kind::Meeting && scenario.presenters > 0;
    let warmup = if split_presenters {
        split_receivers_after(scenario)
    } else {
        PRESENTER_WARMUP
    };
    let deadline = started + warmup + ramp + SETTLE_LIMIT + hold + DEADLINE_SLACK;

    let (publishers, receivers) = scenario.share();
    if publishers > 0 {
        run.live.phase = "presenters";
        run.ramp(Role::Presenter, publishers, deadline).await;
        if !run.bots.iter().any(|(role, ..)| *role == Role::Presenter) {
            return Err(ScenarioError::NoPresenter(run.failures.join("; ")));
        }
        run.wait_presenters_sending().await;
    }
    // The parts of a split run with presenters start their receivers together, once part
    // 1's presenters had time to start sending.
    if split_presenters {
        run.live.phase = "presenters";
        run.report_progress();
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + warmup)).await;
    }
    let role = if scenario.kind == Kind::Meeting {
        Role::Member
    } else {
        Role::Viewer
    };
    run.live.phase = "ramp";
    let ramp_started = Instant::now();
    run.ramp(role, receivers, deadline).await;
    let ramp_s = ramp_started.elapsed().as_secs_f64();
    run.live.phase = "settle";
    let settle_started = Instant::now();
    run.settle(deadline).await;
    let settle_s = settle_started.elapsed().as_secs_f64();

    run.live.phase = "hold";
    // The server's figures over the hold come from scrapes taken as it starts and ends (the
    // periodic ones are up to a second off), timed at the middle of their requests.
    let hold_sample = run.scrape_now().await;
    let hold_started = Instant::now();
    run.hold(hold, deadline).await;
    let hold_ended = Instant::now();
    let end_sample = run.scrape_now().await;

    // Everything is measured at one instant, before anyone leaves, so that no endpoint sees
    // the others' departures as freezes.
    let now = Instant::now();
    let finals: Vec<(Role, String, BotStats)> = run
        .bots
        .iter()
        .map(|(role, name, bot)| (*role, name.clone(), bot.stats()))
        .collect();
    for (role, name, stats) in &finals {
        let result = run.result(*role, name, stats, now, true);
        run.results.push(result);
    }
    let keys = scenario.e2ee.then(|| {
        let timelines: Vec<_> = run
            .bots
            .iter()
            .map(|(.., bot)| bot.key_timeline())
            .collect();
        rekey::measure(
            &run.departures,
            &timelines,
            now,
            rekey::settle(&scenario.key_policy()),
        )
    });
    run.live.phase = "leaving";
    run.report_progress();
    run.teardown().await;
    drop(scraper);
    let generator_cpu_s = generator_cpu
        .and_then(|t| t.try_elapsed().ok())
        .map(|d| d.as_secs_f64());

    let (mut server_samples, node_logs) = {
        let mut logs = lock(&server);
        (
            std::mem::take(&mut logs.total),
            std::mem::take(&mut logs.nodes),
        )
    };
    // The scrapes at the hold's ends land between the periodic ones.
    server_samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let hold_s = (hold_ended - hold_started).as_secs_f64();
    // The servers hold every part's receivers.
    let all_receivers = match scenario.kind {
        Kind::Meeting => scenario.participants,
        Kind::Broadcast | Kind::Churn => scenario.viewers,
    };
    let server_summary = ServerSummary::from_samples(
        &server_samples,
        hold_sample.total,
        end_sample.total,
        hold_s,
        u64::from(all_receivers),
    );
    let mut nodes = Vec::with_capacity(target.nodes.len());
    for (index, (node, mut log)) in target.nodes.iter().zip(node_logs).enumerate() {
        run.errors.extend(log.outage.take());
        log.samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let at = |scraped: &Scraped| scraped.nodes.get(index).copied().flatten();
        let (start, end) = (at(&hold_sample), at(&end_sample));
        // Which receivers a node served is the cluster's choice (a join may be redirected):
        // its own count of participants as the hold starts stands for them.
        let served = start.and_then(|(_, s)| s.participants).unwrap_or(0.0) as u64;
        nodes.push(NodeReport {
            url: node.ws_url.clone(),
            metrics_url: node.metrics.as_ref().map(MetricsTarget::url),
            endpoints: run.sent_to.get(index).copied().unwrap_or(0),
            participants_peak: log
                .samples
                .iter()
                .filter_map(|(_, s)| s.participants)
                .reduce(f64::max),
            server: ServerSummary::from_samples(&log.samples, start, end, hold_s, served),
        });
    }
    let report = RunReport::new(
        scenario.clone(),
        started_unix_ms / 1_000,
        started.elapsed().as_secs_f64(),
        ramp_s,
        hold_s,
        run.results,
        run.failures,
        run.errors,
        run.timeline,
        server_samples,
        server_summary,
        generator_cpu_s,
    )
    .with_floor(floor)
    .with_settle(settle_s)
    .with_nodes(nodes)
    .with_started_unix_ms(started_unix_ms);
    Ok(match keys {
        Some((keys, recorded)) => report.with_keys(keys, recorded),
        None => report,
    })
}

impl Run<'_> {
    fn server_now(&self) -> Option<ServerSample> {
        lock(&self.server).total.last().map(|(_, s)| *s)
    }

    /// Scrapes every node now (those whose metrics are followed) and returns these samples,
    /// or the latest ones where this scrape failed.
    async fn scrape_now(&self) -> Scraped {
        if self.target.nodes.iter().all(|node| node.metrics.is_none()) {
            return Scraped::default();
        }
        scrape_round(&self.target.nodes, self.started, &self.server).await;
        let logs = lock(&self.server);
        Scraped {
            total: logs.total.last().copied(),
            nodes: logs
                .nodes
                .iter()
                .map(|log| log.samples.last().copied())
                .collect(),
        }
    }

    /// An endpoint's result with the URL it was sent to.
    fn sent(&self, mut result: EndpointResult) -> EndpointResult {
        if let Some(node) = self.node_of.get(&result.name) {
            result.url.clone_from(&self.target.nodes[*node].ws_url);
        }
        result
    }

    /// An endpoint's result, with what the run saw of it: when it was lost, whether its media
    /// stopped.
    fn result(
        &self,
        role: Role,
        name: &str,
        stats: &BotStats,
        now: Instant,
        stayed: bool,
    ) -> EndpointResult {
        let mut result = self.sent(EndpointResult::from_stats(role, name, stats, now, stayed));
        result.receives_media = !self.without_media.contains(name);
        let id = stats.participant_id;
        let t_now = now.saturating_duration_since(self.started).as_secs_f64();
        if result.connection_lost {
            result.lost_at_s = Some(self.lost_at.get(&id).copied().unwrap_or(t_now));
        } else if let Some(since) = media_stopped_since(
            self.media_progress.get(&id).copied(),
            stats.wire.packets_received,
            now,
        ) {
            result.media_stopped = true;
            result.lost_at_s = Some(since.saturating_duration_since(self.started).as_secs_f64());
        }
        result
    }

    fn spawn_join(&mut self, role: Role) {
        // Presenters are numbered first, then receivers by their number in the whole run, so
        // that the parts of a split run name their endpoints apart.
        let (index, ordinal) = if role == Role::Presenter {
            self.presenters_started += 1;
            (self.presenters_started - 1, None)
        } else {
            let ordinal = self.scenario.receiver_ordinal(self.receivers_started);
            self.receivers_started += 1;
            let presenters = match self.scenario.kind {
                Kind::Meeting => 0,
                Kind::Broadcast | Kind::Churn => self.scenario.presenters,
            };
            (presenters.saturating_add(ordinal), Some(ordinal))
        };
        let name = format!("{}-{index}", role.as_str());
        // The nodes take this process's endpoints in turn, so that each gets its share of
        // every phase.
        let node = self.started_here as usize % self.target.nodes.len();
        self.started_here += 1;
        self.sent_to[node] += 1;
        self.node_of.insert(name.clone(), node);
        let mut options = BotOptions::new(
            self.target.nodes[node].ws_url.clone(),
            self.scenario.room.clone(),
            name.clone(),
            self.target.tls.clone(),
        );
        if let Some(pool) = &self.target.tokens {
            let Some(token) = lock(pool).take(role) else {
                self.joins.spawn(async move {
                    let error = BotError::Protocol("no join token left for this endpoint".into());
                    (role, name, Err(error))
                });
                return;
            };
            options.token = Some(token);
        }
        options.endpoint = self.scenario.endpoint_config(role, index);
        options.endpoint.local_addr = SocketAddr::new(self.target.bind, 0);
        if self.scenario.e2ee {
            // Keys come as the browser gets them: through the server, from each sender.
            options.endpoint.e2ee = Some(E2eeConfig::exchanged());
            options.key_exchange = Some(self.scenario.key_policy());
        }
        // Viewers join as viewers, so that the server sends them the presenters and counts
        // rather than every other viewer: the national broadcast's shape.
        options.role = Some(match role {
            Role::Viewer => protocol::Role::Viewer,
            Role::Presenter => protocol::Role::Presenter,
            _ => protocol::Role::Participant,
        });
        // Viewers watch the presenters; presenters and members see every other publisher.
        // Viewers beside every `media_every`th only join (and speak the key exchange).
        options.auto_subscribe = true;
        if role == Role::Viewer {
            let with_media = ordinal
                .unwrap_or_default()
                .is_multiple_of(self.scenario.media_every.max(1));
            if !with_media {
                options.auto_subscribe = false;
                self.without_media.insert(name.clone());
            }
        }
        options.ping_interval = Some(Duration::from_secs(10));
        self.joins
            .spawn(async move { (role, name, Bot::connect(options).await) });
    }

    fn on_joined(&mut self, outcome: Result<JoinOutcome, tokio::task::JoinError>) {
        match outcome {
            Ok((role, name, Ok(bot))) => {
                self.live.joined += 1;
                self.bots.push_back((role, name, bot));
            }
            Ok((role, name, Err(err))) => {
                self.live.failed += 1;
                if self.failures.len() < 100 {
                    self.failures.push(format!("{name}: {err}"));
                }
                let result = self.sent(EndpointResult::failed(role, &name, &err));
                self.results.push(result);
            }
            Err(err) => {
                self.live.failed += 1;
                self.failures.push(format!("join task: {err}"));
            }
        }
    }

    /// Starts `count` joins at the scenario's rate and waits for all of them to finish.
    async fn ramp(&mut self, role: Role, count: u32, deadline: Instant) {
        let every =
            Duration::from_secs_f64(1.0 / (self.scenario.join_rate * self.scenario.rate_share()));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sample = sample_interval();
        let mut started = 0;
        let deadline = tokio::time::Instant::from_std(deadline);
        while started < count || !self.joins.is_empty() {
            tokio::select! {
                _ = tick.tick(), if started < count => {
                    self.spawn_join(role);
                    started += 1;
                }
                Some(outcome) = self.joins.join_next() => self.on_joined(outcome),
                _ = sample.tick() => self.sample(),
                () = tokio::time::sleep_until(deadline) => {
                    let pending = self.joins.len();
                    self.errors.push(RunError {
                        kind: RunErrorKind::Deadline,
                        t_s: Some(self.started.elapsed().as_secs_f64()),
                        endpoints: pending as u64,
                        message: format!(
                            "the run reached its deadline during the ramp ({pending} joins unfinished)"
                        ),
                    });
                    self.joins.abort_all();
                    break;
                }
            }
        }
    }

    /// Waits (briefly) until every presenter sends video, so viewers' times to first frame do
    /// not include the presenters' own start-up.
    async fn wait_presenters_sending(&mut self) {
        let until = Instant::now() + PRESENTER_WARMUP;
        while Instant::now() < until {
            let sending = self
                .bots
                .iter()
                .all(|(_, _, bot)| bot.stats().sent.video_frames > 0);
            if sending {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most [`SETTLE_LIMIT`]) until every receiver that is still connected gets
    /// media on each of its subscriptions, video from a keyframe on.
    async fn settle(&mut self, deadline: Instant) {
        let until = (Instant::now() + SETTLE_LIMIT).min(deadline);
        while Instant::now() < until && !self.receivers_receiving() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn receivers_receiving(&self) -> bool {
        self.bots
            .iter()
            .filter(|(role, ..)| matches!(role, Role::Viewer | Role::Member))
            .filter(|(_, name, _)| !self.without_media.contains(name))
            .all(|(.., bot)| {
                let stats = bot.stats();
                let subscribed: Vec<_> = stats.received.values().filter(|r| r.subscribed).collect();
                !bot.is_running()
                    || (!subscribed.is_empty()
                        && subscribed.iter().all(|r| {
                            r.first_media_at.is_some()
                                && (r.kind == protocol::MediaKind::Audio
                                    || r.first_keyframe_at.is_some())
                        }))
            })
    }

    /// Keeps everyone connected for `hold`; in `churn`, replaces viewers meanwhile.
    async fn hold(&mut self, hold: Duration, deadline: Instant) {
        let end = tokio::time::Instant::now() + hold;
        let deadline = tokio::time::Instant::from_std(deadline).min(end);
        let mut sample = sample_interval();
        let churn = self.scenario.kind == Kind::Churn;
        // An encrypted run leaves its last departures time to be answered by a new key.
        let quiet = if self.scenario.e2ee {
            rekey::settle(&self.scenario.key_policy())
        } else {
            CHURN_QUIET
        };
        let every = Duration::from_secs_f64(
            1.0 / (self.scenario.churn_per_s * self.scenario.rate_share()).max(0.001),
        );
        let mut churn_tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut leaving = JoinSet::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                _ = sample.tick() => {
                    self.sample();
                    if !self.bots.is_empty() && self.bots.iter().all(|(.., bot)| !bot.is_running()) {
                        self.failures.push(format!(
                            "the hold ended early at {:.1} s: every endpoint had lost its connection",
                            self.started.elapsed().as_secs_f64()
                        ));
                        break;
                    }
                }
                _ = churn_tick.tick(), if churn && tokio::time::Instant::now() + quiet < end => {
                    // The oldest viewer leaves and a new one takes its place.
                    if let Some(position) = self.bots.iter().position(|(r, ..)| *r == Role::Viewer)
                        && let Some((role, name, bot)) = self.bots.remove(position)
                    {
                        let stats = bot.stats();
                        let result = self.result(role, &name, &stats, Instant::now(), false);
                        self.results.push(result);
                        self.departures.push(Departure {
                            participant: bot.participant_id(),
                            at: Instant::now(),
                        });
                        leaving.spawn(async move { bot.leave().await });
                        self.live.target += 1;
                        self.spawn_join(Role::Viewer);
                    }
                }
                Some(outcome) = self.joins.join_next() => self.on_joined(outcome),
                Some(_) = leaving.join_next() => {}
            }
        }
        // Joins still in flight at the end are waited for briefly, then dropped.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(outcome) = self.joins.join_next().await {
                self.on_joined(outcome);
            }
        })
        .await;
        self.joins.abort_all();
        leaving.abort_all();
    }

    /// Every bot says goodbye at once; those that take too long are dropped.
    async fn teardown(&mut self) {
        let mut leaving = JoinSet::new();
        for (_, _, bot) in self.bots.drain(..) {
            leaving.spawn(async move { bot.leave().await });
        }
        let _ = tokio::time::timeout(TEARDOWN_LIMIT, async {
            while leaving.join_next().await.is_some() {}
        })
        .await;
        leaving.abort_all();
    }

    /// One point of the timeline: throughput and loss since the previous one.
    fn sample(&mut self) {
        let now = Instant::now();
        let interval = now
            .saturating_duration_since(self.last_sample_at)
            .as_secs_f64();
        self.last_sample_at = now;
        let mut connected = 0;
        let (mut expected, mut lost, mut bytes) = (0u64, 0u64, 0u64);
        let mut current = HashMap::with_capacity(self.bots.len());
        let mut progress = HashMap::with_capacity(self.bots.len());
        let mut gone = 0;
        let t_now = now.duration_since(self.started).as_secs_f64();
        for (_, _, bot) in &self.bots {
            let stats = bot.stats();
            connected += u64::from(stats.connected);
            if !stats.running {
                self.lost_at.entry(stats.participant_id).or_insert(t_now);
            }
            let received = stats.wire.packets_received;
            let entry = match self.media_progress.get(&stats.participant_id) {
                Some(&(before, since)) if received <= before => (before, since),
                _ => (received, now),
            };
            progress.insert(stats.participant_id, entry);
            let stalled = media_stopped_since(Some(entry), received, now).is_some();
            gone += u64::from(!stats.running || stalled);
            let totals = (
                stats.wire.packets_expected,
                stats.wire.packets_lost(),
                stats.wire.bytes_in,
            );
            let before = self
                .previous
                .get(&stats.participant_id)
                .copied()
                .unwrap_or_default();
            expected += totals.0.saturating_sub(before.0);
            lost += totals.1.saturating_sub(before.1);
            bytes += totals.2.saturating_sub(before.2);
            current.insert(stats.participant_id, totals);
        }
        self.previous = current;
        self.media_progress = progress;
        let rx_mbps = if interval > 0.0 {
            bytes as f64 * 8.0 / interval / 1e6
        } else {
            0.0
        };
        let loss_pct = if expected > 0 {
            lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        };
        let server = self.server_now();
        self.timeline.push(TimelineSample {
            t_s: now.duration_since(self.started).as_secs_f64(),
            connected,
            rx_mbps,
            loss_pct,
            server_cpu_seconds: server.and_then(|s| s.cpu_seconds),
            server_rss_bytes: server.and_then(|s| s.rss_bytes),
        });
        self.live.connected = connected;
        self.live.lost = gone;
        self.live.rx_mbps = rx_mbps;
        self.live.loss_pct = loss_pct;
        self.report_progress();
    }

    fn report_progress(&mut self) {
        self.live.elapsed_s = self.started.elapsed().as_secs_f64();
        if let Some(progress) = &self.progress {
            progress(&self.live);
        }
    }
}

fn sample_interval() -> tokio::time::Interval {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// When an endpoint received its last RTP packet, if it had been receiving and nothing came
/// for [`MEDIA_STOP_S`] up to `now`. `progress`: the packets it had received at the last
/// sample that saw them grow, and when; `received`: its packets now.
fn media_stopped_since(
    progress: Option<(u64, Instant)>,
    received: u64,
    now: Instant,
) -> Option<Instant> {
    let (packets, since) = progress?;
    let stopped = packets > 0
        && received <= packets
        && now.saturating_duration_since(since).as_secs_f64() >= MEDIA_STOP_S;
    stopped.then_some(since)
}

/// A task that ends with its handle.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn scrape_loop(nodes: Vec<Node>, started: Instant, logs: Arc<Mutex<ServerLogs>>) {
    let mut interval = sample_interval();
    loop {
        interval.tick().await;
        // A missed scrape leaves a hole in the timeline; several in a row fail the run.
        scrape_round(&nodes, started, &logs).await;
    }
}

/// In a split run with presenters, when every part's receivers start, from the run's start:
/// once part 1's presenters have had their share of the ramp and [`PRESENTER_WARMUP`] to
/// start sending, so that no part's receivers wait for them. Every part finds the same time
/// from the same scenario.
fn split_receivers_after(scenario: &Scenario) -> Duration {
    let presenters = f64::from(scenario.presenters) / (scenario.join_rate * scenario.rate_share());
    Duration::from_secs_f64(presenters) + PRESENTER_WARMUP
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sleeps until `at_ms` (Unix ms) on this host's clock; refuses a time long past or far off.
/// The parts of a split run on several hosts need those hosts' clocks in step (NTP).
async fn wait_for_start(at_ms: u64, progress: Option<&ProgressFn>) -> Result<(), ScenarioError> {
    let now_ms = unix_ms();
    if now_ms > at_ms {
        let late = Duration::from_millis(now_ms - at_ms);
        if late > START_LATE_LIMIT {
            return Err(ScenarioError::StartPassed(late.as_secs_f64()));
        }
        return Ok(());
    }
    let ahead = Duration::from_millis(at_ms - now_ms);
    if ahead > START_AHEAD_LIMIT {
        return Err(ScenarioError::StartTooFar(ahead.as_secs_f64()));
    }
    if let Some(progress) = progress {
        progress(&Live {
            phase: "waiting for the start time",
            ..Live::default()
        });
    }
    tokio::time::sleep(ahead).await;
    Ok(())
}

async fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !condition() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The samples stay readable even if a holder panicked mid-push.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One step of a capacity search.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityStep {
    pub viewers: u32,
    pub passed: bool,
    pub report: RunReport,
}

/// Raises the number of viewers from `start` by `step` (up to `max`) until an SLO fails.
/// Returns every step run; the last passing one is the capacity.
pub async fn find_capacity(
    base: &Scenario,
    target: &Target,
    start: u32,
    step: u32,
    max: u32,
    progress: Option<ProgressFn>,
) -> Result<Vec<CapacityStep>, ScenarioError> {
    let mut steps = Vec::new();
    let mut viewers = start.max(1);
    while viewers <= max.min(MAX_ENDPOINTS) {
        let mut scenario = base.clone();
        scenario.viewers = viewers;
        scenario.room = format!("{}-{viewers}", base.room);
        let report = run(&scenario, target, progress.clone()).await?;
        let passed = report.passed;
        steps.push(CapacityStep {
            viewers,
            passed,
            report,
        });
        if !passed || step == 0 {
            break;
        }
        // The servers forget the previous step's participants before the next one starts.
        let scraped: Vec<&MetricsTarget> = target
            .nodes
            .iter()
            .filter_map(|n| n.metrics.as_ref())
            .collect();
        let until = Instant::now() + Duration::from_secs(15);
        while !scraped.is_empty() && Instant::now() < until {
            let pages =
                futures_util::future::join_all(scraped.iter().map(|m| m.scrape(SCRAPE_TIMEOUT)))
                    .await;
            let empty = pages.iter().all(|page| {
                page.as_ref()
                    .ok()
                    .and_then(|m| m.sum("meet_participants", ""))
                    .is_none_or(|n| n == 0.0)
            });
            if empty {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        viewers = viewers.saturating_add(step);
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Slo;

    #[test]
    fn media_stops_only_after_it_started_and_then_went_quiet() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs_f64(MEDIA_STOP_S + 0.5);
        // Receiving, then nothing new for longer than the limit.
        assert_eq!(media_stopped_since(Some((100, t0)), 100, later), Some(t0));
        // New packets since: still flowing.
        assert_eq!(media_stopped_since(Some((100, t0)), 101, later), None);
        // Quiet, but not for long enough.
        assert_eq!(media_stopped_since(Some((100, t0)), 100, t0), None);
        // Never received anything (a presenter nobody sends to, a viewer still joining).
        assert_eq!(media_stopped_since(Some((0, t0)), 0, later), None);
        assert_eq!(media_stopped_since(None, 0, later), None);
    }

    #[test]
    fn a_run_of_failed_scrapes_is_an_outage() {
        let refused = || {
            Err(ScrapeError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )))
        };
        let mut log = ServerLog::default();
        log.record(1.0, Ok(ServerSample::default()));
        // A slow scrape or two is not an outage.
        log.record(2.0, refused());
        log.record(3.0, refused());
        log.record(4.0, Ok(ServerSample::default()));
        assert!(log.outage.is_none());
        for t in [5.0, 6.0, 7.0, 8.0] {
            log.record(t, refused());
        }
        let outage = log.outage.expect("an outage");
        assert_eq!(outage.kind, RunErrorKind::MetricsUnreachable);
        assert_eq!(outage.t_s, Some(5.0));
        assert!(
            outage
                .message
                .starts_with("the server stopped answering at 5.0 s"),
            "{}",
            outage.message
        );
        assert_eq!(log.samples.len(), 2);

        let mut never = ServerLog::default();
        for t in [1.0, 2.0, 3.0] {
            never.record(t, refused());
        }
        let outage = never.outage.expect("an outage");
        assert!(outage.message.starts_with("the server never answered"));
    }

    #[test]
    fn only_loopback_and_private_targets_pass() {
        for ip in [
            "127.0.0.1",
            "127.8.9.1",
            "::1",
            "10.1.2.3",
            "192.168.0.9",
            "fd00::1",
        ] {
            assert!(is_local_or_private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:db8::1", "172.32.0.1", "100.64.0.1"] {
            assert!(!is_local_or_private(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[tokio::test]
    async fn remote_targets_are_refused_unless_allowed() {
        assert!(check_target("wss://127.0.0.1:8443/ws", false).await.is_ok());
        assert!(check_target("wss://[::1]:8443/ws", false).await.is_ok());
        assert!(matches!(
            check_target("wss://1.1.1.1:8443/ws", false).await,
            Err(ScenarioError::RemoteTarget(_))
        ));
        assert!(check_target("wss://1.1.1.1:8443/ws", true).await.is_ok());
    }

    /// The real server in this process, on free loopback ports and a fresh data directory.
    async fn test_server(
        tag: &str,
        open_rooms: bool,
    ) -> (signaling::RunningServer, std::path::PathBuf) {
        signaling::install_crypto_provider();
        let data_dir = std::env::temp_dir().join(format!(
            "meet-loadtest-{tag}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut config = signaling::Config::new();
        config.http_addr = "127.0.0.1:0".parse().expect("addr");
        config.media_addr = "127.0.0.1:0".parse().expect("addr");
        config.data_dir = data_dir.clone();
        config.open_rooms = open_rooms;
        let server = signaling::start(config).await.expect("server starts");
        (server, data_dir)
    }

    /// Runs `scenario` against a fresh real server with open rooms (its metrics scraped
    /// when `metrics`), then stops the server and removes its data.
    async fn run_against_test_server(tag: &str, scenario: &Scenario, metrics: bool) -> RunReport {
        let (server, data_dir) = test_server(tag, true).await;
        let tls = crate::bot::tls_config_trusting_pem(&server.cert_pem).expect("pinned cert");
        let metrics = metrics.then(|| {
            MetricsTarget::new(
                &format!("https://{}/metrics", server.http_addr),
                tls.clone(),
            )
            .expect("metrics url")
            .with_token(Some(server.metrics_token.clone()))
        });
        let target = Target {
            nodes: vec![Node {
                ws_url: server.ws_url(),
                metrics,
            }],
            tls,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tokens: None,
        };
        check_target(&target.nodes[0].ws_url, false)
            .await
            .expect("loopback");
        let report = run(scenario, &target, None).await.expect("run");
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(&data_dir);
        report
    }

    #[test]
    fn tokens_are_split_between_publishers_and_the_rest() {
        let text =
            "# links from the organizer page\nhttps://h/#join=p1\n\np2\nv1\nhttps://h/#join=v2\n";
        let mut pool = TokenPool::from_lines(text, 2);
        assert_eq!(pool.len(), 4);
        assert_eq!(pool.take(Role::Viewer).as_deref(), Some("v1"));
        assert_eq!(pool.take(Role::Presenter).as_deref(), Some("p1"));
        assert_eq!(pool.take(Role::Member).as_deref(), Some("p2"));
        assert_eq!(pool.take(Role::Presenter), None);
        assert_eq!(pool.take(Role::Viewer).as_deref(), Some("v2"));
        assert!(pool.is_empty());
    }

    /// The parts of a split run take their own receivers' lines of one file, in the order
    /// their receivers join; part 1 the presenters'.
    #[test]
    fn the_parts_of_a_split_run_share_out_the_tokens() {
        let text = "p1\nv0\nv1\nv2\nv3\nv4\n";
        let part = |index, kind| {
            let scenario = Scenario {
                kind,
                presenters: 1,
                viewers: 5,
                participants: 6,
                shard: Some(crate::spec::Shard { index, count: 2 }),
                ..Scenario::default()
            };
            let publishers = if kind == Kind::Meeting { 6 } else { 1 };
            let mut pool = TokenPool::from_lines(text, publishers).for_part(&scenario);
            let role = if kind == Kind::Meeting {
                Role::Member
            } else {
                Role::Viewer
            };
            let presenters: Vec<String> = if kind == Kind::Meeting {
                Vec::new()
            } else {
                std::iter::from_fn(|| pool.take(Role::Presenter)).collect()
            };
            let receivers: Vec<String> = std::iter::from_fn(|| pool.take(role)).collect();
            (presenters, receivers)
        };
        assert_eq!(
            part(1, Kind::Broadcast),
            (
                vec!["p1".into()],
                vec!["v0".into(), "v2".into(), "v4".into()]
            )
        );
        assert_eq!(
            part(2, Kind::Broadcast),
            (vec![], vec!["v1".into(), "v3".into()])
        );
        assert_eq!(part(2, Kind::Meeting).1, ["v0", "v2", "v4"]);
        let whole = TokenPool::from_lines(text, 1).for_part(&Scenario::default());
        assert_eq!(whole.len(), 6);
    }

    /// With join tokens against a server that admits invitees only: presenters and viewers
    /// take their invitations' roles, and everyone receives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invited_endpoints_join_a_server_without_open_rooms() {
        use protocol::Role as Invited;
        use signaling::store::{AccountRole, Admission, Invitee, NewAccount, NewMeeting};
        let (server, data_dir) = test_server("tokens", false).await;
        let organizer = server
            .store
            .create_account(&NewAccount {
                username: "operator",
                display_name: "Operator",
                password: "a long enough password",
                role: AccountRole::Organizer,
            })
            .await
            .expect("organizer");
        let now_ms = signaling::store::unix_ms();
        let invitees: Vec<Invitee> = (0..6)
            .map(|i| Invitee {
                role: if i < 2 {
                    Invited::Presenter
                } else {
                    Invited::Viewer
                },
                site_id: None,
                account_id: None,
                name: Some(format!("Site {i}")),
            })
            .collect();
        let meeting = server
            .store
            .create_meeting(
                &organizer,
                &NewMeeting {
                    title: "Load test",
                    starts_at: now_ms - 60_000,
                    ends_at: now_ms + 3_600_000,
                    admission: Admission::Scheduled,
                    auto_record: false,
                    confidential: false,
                    e2ee: false,
                },
                &invitees,
            )
            .await
            .expect("meeting");
        let now = signaling::auth::unix_seconds();
        let mut invitations = server.store.invitations(&meeting.id).await.expect("list");
        // The presenters' lines first, as an operator's file would have it.
        invitations.retain(|i| i.role != Invited::Host);
        invitations.sort_by_key(|i| i.role != Invited::Presenter);
        let lines: Vec<String> = invitations
            .iter()
            .map(|i| {
                server
                    .tokens
                    .issue(
                        &signaling::auth::JoinGrant {
                            invitation_id: &i.id,
                            room: &meeting.id,
                            name: &i.name,
                            role: i.role,
                            site: None,
                            not_before: now - 60,
                            expires: now + 3600,
                        },
                        now,
                    )
                    .expect("signed")
            })
            .collect();
        let tls = crate::bot::tls_config_trusting_pem(&server.cert_pem).expect("pinned cert");
        let target = Target {
            nodes: vec![Node {
                ws_url: server.ws_url(),
                metrics: None,
            }],
            tls,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tokens: Some(Arc::new(Mutex::new(TokenPool::from_lines(
                &lines.join("\n"),
                2,
            )))),
        };
        // Two presenters, so that each has someone to receive too.
        let scenario = Scenario {
            presenters: 2,
            viewers: 4,
            join_rate: 20.0,
            duration_s: 4.0,
            video_kbps: 200,
            video_fps: 15,
            slo: Slo {
                loss_pct: None,
                ..Slo::default()
            },
            ..Scenario::default()
        };
        let report = run(&scenario, &target, None).await.expect("run");
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(&data_dir);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.endpoints.len(), 6);
        for endpoint in &report.endpoints {
            assert!(endpoint.joined, "{endpoint:?}");
            assert!(endpoint.packets_received > 0, "{endpoint:?}");
        }
    }

    /// An encrypted meeting (`--e2ee`) against the real server: every endpoint gets the
    /// others' keys through the server's relay, seals what it sends and decrypts what it
    /// receives, and the report counts both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encrypted_meeting_against_the_real_server() {
        let scenario = Scenario {
            kind: Kind::Meeting,
            participants: 3,
            join_rate: 20.0,
            duration_s: 3.0,
            video_kbps: 200,
            video_fps: 15,
            e2ee: true,
            slo: Slo {
                loss_pct: None,
                ..Slo::default()
            },
            ..Scenario::default()
        };
        let report = run_against_test_server("e2ee", &scenario, false).await;

        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.endpoints.len(), 3);
        for endpoint in &report.endpoints {
            assert!(endpoint.frames_sealed > 0, "{endpoint:?}");
            assert!(endpoint.frames_decrypted > 0, "{endpoint:?}");
            assert!(endpoint.video_frames > 0, "{endpoint:?}");
            // Frames that came before a sender's key are not decoded; none fails after it.
            assert_eq!(endpoint.decrypt_failures_newer_key, 0, "{endpoint:?}");
            assert!(endpoint.first_decrypted_ms.is_some(), "{endpoint:?}");
            assert!(endpoint.key_requests_sent >= 2, "{endpoint:?}");
            assert!(endpoint.keys_received >= 2, "{endpoint:?}");
            assert_eq!(endpoint.keys_refused, 0, "{endpoint:?}");
        }
        assert!(report.passed, "{:?}", report.slo);
        let keys = report.keys.as_ref().expect("key figures");
        assert_eq!(keys.first_decrypt_ms.map(|d| d.count), Some(3));
        assert_eq!((keys.departures, keys.frames_lost_to_rekey), (0, 0));
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["scenario"]["e2ee"], true);
        assert!(
            json["frames_decrypted_total"]
                .as_u64()
                .is_some_and(|n| n > 0)
        );
        assert!(json["frames_sealed_total"].as_u64().is_some_and(|n| n > 0));
        assert!(report.summary().contains("end-to-end encryption"));
        assert!(report.summary().contains("join → first decrypted frame"));
    }

    /// An encrypted churn (`churn --e2ee`) against the real server, light viewers, half of them
    /// without media (`media_every`): each departure is measured until the remaining viewers
    /// decrypt under (or hold, for those without media) a new key, and the server's key
    /// counters are read. Only outcomes are asserted, never timings.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encrypted_churn_measures_key_distribution() {
        let scenario = Scenario {
            kind: Kind::Churn,
            presenters: 1,
            viewers: 6,
            join_rate: 20.0,
            duration_s: 12.0,
            churn_per_s: 1.0,
            video_kbps: 200,
            video_fps: 15,
            e2ee: true,
            light_viewers: true,
            media_every: 2,
            slo: Slo {
                loss_pct: None,
                ..Slo::default()
            },
            ..Scenario::default()
        };
        let report = run_against_test_server("e2ee-churn", &scenario, true).await;

        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let keys = report.keys.as_ref().expect("key figures");
        assert!(keys.departures >= 3, "{keys:?}");
        let accounted = keys.rekeyed_ms.map_or(0, |d| d.count)
            + keys.departures_never_rekeyed
            + keys.departures_pending_at_end;
        assert!(accounted <= keys.departures, "{keys:?}");
        assert_eq!(keys.keys_refused, 0);
        // The server tells the presenter of each departure: every one is answered by a new
        // key (those too close to the end aside).
        assert_eq!(keys.departures_never_rekeyed, 0, "{keys:?}");
        assert!(keys.rekeys >= 1, "{keys:?}");
        assert!(
            keys.receivers_by_frames >= 1 && keys.receivers_by_key >= 1,
            "{keys:?}"
        );
        // Every viewer, churned or not, got the presenter's key, and those with media
        // decrypted its audio.
        for endpoint in report.endpoints.iter().filter(|e| e.role == Role::Viewer) {
            assert!(endpoint.first_key_ms.is_some(), "{endpoint:?}");
            assert_eq!(
                endpoint.first_decrypted_ms.is_some(),
                endpoint.receives_media,
                "{endpoint:?}"
            );
        }
        assert!(
            report
                .server
                .key_messages_out_per_s
                .is_some_and(|n| n > 0.0),
            "{:?}",
            report.server
        );
        let json = serde_json::to_value(&report).expect("serializes");
        assert!(json["keys"]["first_decrypt_ms"]["p95"].is_number());
    }

    /// The whole load tester against the real server in this process: 2 presenters and 20
    /// viewers for 10 s. Only outcomes are asserted, never timings.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_broadcast_against_the_real_server() {
        let scenario = Scenario {
            presenters: 2,
            viewers: 20,
            join_rate: 50.0,
            duration_s: 10.0,
            video_kbps: 300,
            video_fps: 15,
            slo: Slo {
                loss_pct: None,
                ..Slo::default()
            },
            ..Scenario::default()
        };
        let report = run_against_test_server("smoke", &scenario, true).await;

        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.verdict.starts_with("PASS"), "{}", report.verdict);
        // The server's precise CPU gauge, over the scrapes at the hold's ends.
        assert_eq!(report.server.cpu_metric, Some("meet_process_cpu_seconds"));
        assert!(report.server.window_s.is_some_and(|w| w > 0.0));
        assert!(report.server.cpu_cores.is_some());
        assert_eq!(report.endpoints.len(), 22);
        for endpoint in &report.endpoints {
            assert!(endpoint.joined, "{endpoint:?}");
            assert!(endpoint.join_ms.is_some(), "{endpoint:?}");
            assert!(endpoint.first_media_ms.is_some(), "{endpoint:?}");
            assert!(endpoint.packets_received > 0, "{endpoint:?}");
        }
        assert!(report.passed, "{:?}", report.slo);
        assert!(!report.server_timeline.is_empty());
        let json = serde_json::to_string(&report).expect("serializes");
        let value: serde_json::Value = serde_json::from_str(&json).expect("well-formed JSON");
        assert_eq!(value["endpoints"].as_array().map(Vec::len), Some(22));
        assert!(value["join_ms"]["p95"].is_number(), "{}", value["join_ms"]);
        let html = crate::report::html(&report);
        assert!(html.contains("<svg"));
    }
}
