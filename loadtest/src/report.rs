//! What a load run found: per-endpoint results, percentiles (hdrhistogram), SLO verdicts, a
//! text summary, JSON and a self-contained HTML page with inline SVG plots.

use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::bot::{BotError, BotStats};
use crate::floor::Floor;
use crate::metrics_scrape::{CpuSource, ServerSample};
use crate::spec::{Kind, Scenario};
use protocol::MediaKind;

/// What an endpoint did in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Presenter,
    Viewer,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Presenter => "presenter",
            Role::Viewer => "viewer",
            Role::Member => "member",
        }
    }
}

/// One endpoint's measurements. Times are from the start of its connect (socket open).
#[derive(Debug, Clone, Serialize)]
pub struct EndpointResult {
    pub name: String,
    pub role: Role,
    /// The server URL it was sent to (`--url`; a cluster's node may have sent it on).
    pub url: String,
    pub joined: bool,
    /// Still connected when the run ended (false for churned-out endpoints).
    pub stayed: bool,
    pub error: Option<String>,
    /// Until the server's `joined` answer.
    pub signaling_ms: Option<f64>,
    /// Until ICE and DTLS were connected: the join time.
    pub join_ms: Option<f64>,
    pub first_media_ms: Option<f64>,
    pub first_keyframe_ms: Option<f64>,
    pub packets_expected: u64,
    pub packets_received: u64,
    pub loss_pct: Option<f64>,
    pub audio_jitter_ms: Option<f64>,
    pub video_jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub rx_kbps: Option<f64>,
    pub video_frames: u64,
    pub freezes: u64,
    pub freeze_ms: f64,
    pub server_errors: usize,
    /// End-to-end encryption: received frames that decrypted, and frames dropped because
    /// they did not (all publications together).
    pub frames_decrypted: u64,
    pub decrypt_failures: u64,
    /// End-to-end encryption: frames this endpoint sealed and sent.
    pub frames_sealed: u64,
    /// End-to-end encryption: until the first frame that decrypted, and frames that failed
    /// because the sender had moved to a key this receiver did not hold yet (lost to a key
    /// change; frames sealed before it joined, which it must not read, are not counted).
    pub first_decrypted_ms: Option<f64>,
    pub decrypt_failures_newer_key: u64,
    /// End-to-end encryption: until the first key arrived.
    pub first_key_ms: Option<f64>,
    /// It receives media (false: a viewer that only joins and speaks the key exchange,
    /// `Scenario::media_every`).
    pub receives_media: bool,
    /// End-to-end encryption: keys this endpoint asked for (first asks and asks again), keys
    /// it received that opened, and ones that did not.
    pub key_requests_sent: u64,
    pub keys_received: u64,
    pub keys_refused: u64,
    /// Its signaling connection ended while the run still needed it: the server closed or
    /// dropped it (a churned-out endpoint's own leave is not a loss).
    pub connection_lost: bool,
    /// It had been receiving media, then none arrived for [`MEDIA_STOP_S`] while the run
    /// went on.
    pub media_stopped: bool,
    /// Seconds into the run when the loss (or the last media before the stop) was seen.
    pub lost_at_s: Option<f64>,
}

/// Seconds without any received RTP packet after which an endpoint that had been receiving
/// counts as having lost its media (publishers send audio every 20 ms).
pub const MEDIA_STOP_S: f64 = 5.0;

fn ms_between(from: Instant, to: Option<Instant>) -> Option<f64> {
    to.map(|t| t.saturating_duration_since(from).as_secs_f64() * 1_000.0)
}

impl EndpointResult {
    /// From a bot's measurements taken at `now`. `stayed` counts a stalled video stream at
    /// that moment as one more freeze.
    pub fn from_stats(
        role: Role,
        name: &str,
        stats: &BotStats,
        now: Instant,
        stayed: bool,
    ) -> Self {
        let start = stats.started_at;
        let first_media = stats
            .received
            .values()
            .filter_map(|r| r.first_media_at)
            .min();
        let first_keyframe = stats
            .received
            .values()
            .filter(|r| r.kind == MediaKind::Video)
            .filter_map(|r| r.first_keyframe_at)
            .min();
        let first_decrypted = stats
            .received
            .values()
            .filter_map(|r| r.first_decrypted_at)
            .min();
        let keys = stats.keys.clone().unwrap_or_default();
        let wire = &stats.wire;
        let loss_pct = (wire.packets_expected > 0)
            .then(|| wire.packets_lost() as f64 * 100.0 / wire.packets_expected as f64);
        let rx_kbps = stats.ice_connected_at.and_then(|at| {
            let seconds = now.saturating_duration_since(at).as_secs_f64();
            (seconds > 0.0).then(|| wire.bytes_in as f64 * 8.0 / seconds / 1_000.0)
        });
        let stalled = if stayed {
            wire.stalled_video_streams
        } else {
            0
        };
        Self {
            name: name.to_string(),
            role,
            url: String::new(),
            joined: true,
            stayed,
            error: stats.closed.clone().filter(|_| !stats.running),
            signaling_ms: ms_between(start, Some(stats.joined_at)),
            join_ms: ms_between(start, stats.ice_connected_at),
            first_media_ms: ms_between(start, first_media),
            first_keyframe_ms: ms_between(start, first_keyframe),
            packets_expected: wire.packets_expected,
            packets_received: wire.packets_received,
            loss_pct,
            audio_jitter_ms: wire.audio_jitter_ms,
            video_jitter_ms: wire.video_jitter_ms,
            rtt_ms: wire.rtt_mean().map(|d| d.as_secs_f64() * 1_000.0),
            rx_kbps,
            video_frames: stats.received.values().map(|r| r.video_frames).sum(),
            freezes: wire.freezes + stalled,
            freeze_ms: wire.freeze_time.as_secs_f64() * 1_000.0,
            server_errors: stats.errors,
            frames_decrypted: stats.received.values().map(|r| r.frames_decrypted).sum(),
            decrypt_failures: stats.received.values().map(|r| r.decrypt_failures).sum(),
            frames_sealed: stats.sent.frames_sealed,
            first_decrypted_ms: ms_between(start, first_decrypted),
            decrypt_failures_newer_key: stats
                .received
                .values()
                .map(|r| r.decrypt_failures_newer_key)
                .sum(),
            first_key_ms: ms_between(start, stats.first_key_at),
            receives_media: true,
            key_requests_sent: keys.requests_sent,
            keys_received: keys.keys_received,
            keys_refused: keys.keys_refused,
            // Taken before the run asks the bot to leave, so an ended task is a lost one.
            connection_lost: !stats.running,
            media_stopped: false,
            lost_at_s: None,
        }
    }

    /// An endpoint that never joined.
    pub fn failed(role: Role, name: &str, error: &BotError) -> Self {
        Self {
            name: name.to_string(),
            role,
            url: String::new(),
            joined: false,
            stayed: false,
            error: Some(error.to_string()),
            signaling_ms: None,
            join_ms: None,
            first_media_ms: None,
            first_keyframe_ms: None,
            packets_expected: 0,
            packets_received: 0,
            loss_pct: None,
            audio_jitter_ms: None,
            video_jitter_ms: None,
            rtt_ms: None,
            rx_kbps: None,
            video_frames: 0,
            freezes: 0,
            freeze_ms: 0.0,
            server_errors: 0,
            frames_decrypted: 0,
            decrypt_failures: 0,
            frames_sealed: 0,
            first_decrypted_ms: None,
            decrypt_failures_newer_key: 0,
            first_key_ms: None,
            receives_media: true,
            key_requests_sent: 0,
            keys_received: 0,
            keys_refused: 0,
            connection_lost: false,
            media_stopped: false,
            lost_at_s: None,
        }
    }

    /// Whether this endpoint should have received media (it subscribes to someone).
    fn expects_media(&self, scenario: &Scenario) -> bool {
        self.receives_media
            && self.stayed
            && (self.role != Role::Presenter || scenario.presenters > 1)
    }
}

/// Percentiles of one measurement over the endpoints that have it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Distribution {
    /// Records values with three significant digits, in thousandths of the unit.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        // Fixed bounds: an auto-resizing histogram clamps `saturating_record` to its first size.
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).ok()?;
        for value in values {
            if value.is_finite() && value >= 0.0 {
                histogram.saturating_record((value * 1_000.0) as u64);
            }
        }
        if histogram.is_empty() {
            return None;
        }
        let unit = |v: u64| v as f64 / 1_000.0;
        Some(Self {
            count: histogram.len(),
            min: unit(histogram.min()),
            p50: unit(histogram.value_at_quantile(0.50)),
            p95: unit(histogram.value_at_quantile(0.95)),
            p99: unit(histogram.value_at_quantile(0.99)),
            max: unit(histogram.max()),
            mean: histogram.mean() / 1_000.0,
        })
    }
}

/// What the end-to-end key exchange cost in a run and how fast it was (`--e2ee`). The times
/// come from the generator, whose bots share one process and one clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KeyReport {
    /// Receivers, from the start of their connect to their first decrypted frame, in ms
    /// (those that receive media), and to their first key (all).
    pub first_decrypt_ms: Option<Distribution>,
    pub first_key_ms: Option<Distribution>,
    /// Receivers present at the end whose "rekeyed" came from the frames they opened, and
    /// those (receiving no media) whose came from when they held the new key and the sender
    /// used it.
    pub receivers_by_frames: u64,
    pub receivers_by_key: u64,
    /// Viewers made to leave during the hold (churn).
    pub departures: u64,
    /// From a departure until every receiver that was decrypting before it decrypts under a
    /// key the departed never had, in ms, for the departures that got there in the run (a
    /// departure with no such receiver left at the end is not counted anywhere).
    pub rekeyed_ms: Option<Distribution>,
    /// The 95th percentile of that over every measured departure, those never followed by
    /// such a key counting as beyond any limit: `None` when more than 5% of them were.
    pub rekeyed_p95_ms: Option<f64>,
    /// Departures no new key followed although the run went on long enough for one, and
    /// departures too close to the end of the run to tell.
    pub departures_never_rekeyed: u64,
    pub departures_pending_at_end: u64,
    /// Senders' departure rekeys, how many recipients each was wrapped for, and the time each
    /// took a sender to make and wrap (wall time on the bot's task), in ms.
    pub rekeys: u64,
    pub wraps_per_rekey: Option<Distribution>,
    pub wrap_ms_per_rekey: Option<Distribution>,
    /// Frames receivers failed to decrypt because the sender had moved to a key they did not
    /// hold yet: lost to a key change.
    pub frames_lost_to_rekey: u64,
    /// Keys received that did not open (0 unless something is broken or forged).
    pub keys_refused: u64,
}

impl KeyReport {
    /// The key lines of the summary.
    pub fn summary(&self, server: &ServerSummary) -> String {
        let mut out = String::new();
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let dist = |d: &Option<Distribution>| {
            d.map_or("-".to_string(), |d| {
                format!(
                    "p50 {:.1} p95 {:.1} max {:.1} (n {})",
                    d.p50, d.p95, d.max, d.count
                )
            })
        };
        let _ = writeln!(
            out,
            "keys at the server over the hold: {} e2ee_keys in/s ({} blob B/s), {} e2ee_key out/s ({} B/s)",
            opt(server.key_messages_in_per_s),
            opt(server.key_bytes_in_per_s),
            opt(server.key_messages_out_per_s),
            opt(server.key_bytes_out_per_s),
        );
        let _ = writeln!(
            out,
            "keys: join → first decrypted frame ms {}",
            dist(&self.first_decrypt_ms)
        );
        let _ = writeln!(
            out,
            "keys: join → first key ms {}",
            dist(&self.first_key_ms)
        );
        if self.receivers_by_key > 0 {
            let _ = writeln!(
                out,
                "keys: rekeyed read from frames opened by {} receivers, from keys held and used by {} receiving no media",
                self.receivers_by_frames, self.receivers_by_key
            );
        }
        let _ = writeln!(
            out,
            "keys: {} departures; departure → everyone rekeyed ms {}; p95 over all {} ({} never rekeyed, {} too close to the end)",
            self.departures,
            dist(&self.rekeyed_ms),
            opt(self.rekeyed_p95_ms),
            self.departures_never_rekeyed,
            self.departures_pending_at_end,
        );
        let _ = writeln!(
            out,
            "keys: {} rekeys, wraps per rekey {}, wrap ms per rekey {}; {} frames lost to a rekey; {} keys refused",
            self.rekeys,
            dist(&self.wraps_per_rekey),
            dist(&self.wrap_ms_per_rekey),
            self.frames_lost_to_rekey,
            self.keys_refused,
        );
        out
    }
}

/// One point of the run's timeline (about one a second).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimelineSample {
    pub t_s: f64,
    pub connected: u64,
    /// Received by all endpoints together, in Mbit/s.
    pub rx_mbps: f64,
    /// Packets lost in this interval over packets expected, in percent.
    pub loss_pct: f64,
    pub server_cpu_seconds: Option<f64>,
    pub server_rss_bytes: Option<f64>,
}

/// Server-side figures from `/metrics` deltas over the hold phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerSummary {
    /// The hold's length (everyone connected), in seconds.
    pub hold_s: f64,
    /// The time between the two scrapes the deltas below come from (taken as the hold
    /// started and ended), in seconds.
    pub window_s: Option<f64>,
    /// The metric the CPU figures come from, and its resolution in seconds: 1e-6 for
    /// `meet_process_cpu_seconds`; 1 for `process_cpu_seconds_total` (older servers), which
    /// alone makes a figure over a 10 s window scatter by ±10%.
    pub cpu_metric: Option<&'static str>,
    pub cpu_resolution_s: Option<f64>,
    /// CPU cores in use on average over the window.
    pub cpu_cores: Option<f64>,
    pub forwarded_packets_per_s: Option<f64>,
    /// Server CPU time divided by packets forwarded, in µs.
    pub core_us_per_forwarded_packet: Option<f64>,
    pub rss_baseline_bytes: Option<f64>,
    pub rss_peak_bytes: Option<f64>,
    /// Growth of RSS over the baseline, divided by the receiving endpoints.
    pub rss_per_subscriber_bytes: Option<f64>,
    pub dropped_packets: Option<f64>,
    pub nacks: Option<f64>,
    /// Growth from the middle third of the run to its last third (see [`growth`]): resident
    /// memory in bytes, open descriptors, async tasks.
    pub rss_growth_bytes: Option<f64>,
    pub fd_growth: Option<f64>,
    pub task_growth: Option<f64>,
    /// The highest open descriptors and async tasks seen.
    pub open_fds_peak: Option<f64>,
    pub tasks_peak: Option<f64>,
    /// The end-to-end key relay over the window, per second: `e2ee_keys` messages in,
    /// `e2ee_key` messages out, and their bytes (blobs in, JSON text out).
    pub key_messages_in_per_s: Option<f64>,
    pub key_messages_out_per_s: Option<f64>,
    pub key_bytes_in_per_s: Option<f64>,
    pub key_bytes_out_per_s: Option<f64>,
}

/// How much a server figure grew over a run: its highest value in the last third of the
/// samples less its highest in the middle third. The first third (ramp, warm-up, caches
/// filling) is left out; a figure that keeps growing after it is a leak.
pub fn growth(samples: &[(f64, ServerSample)], f: fn(&ServerSample) -> Option<f64>) -> Option<f64> {
    let (first, last) = (samples.first()?.0, samples.last()?.0);
    let third = (last - first) / 3.0;
    if third <= 0.0 {
        return None;
    }
    let highest = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .filter_map(|(_, s)| f(s))
            .reduce(f64::max)
    };
    Some(highest(first + 2.0 * third, last)? - highest(first + third, first + 2.0 * third)?)
}

impl ServerSummary {
    /// `hold_start` and `hold_end` are the scrapes taken as the hold started and ended, with
    /// their times (seconds into the run): rates are over the time between them.
    pub fn from_samples(
        samples: &[(f64, ServerSample)],
        hold_start: Option<(f64, ServerSample)>,
        hold_end: Option<(f64, ServerSample)>,
        hold_s: f64,
        subscribers: u64,
    ) -> Self {
        let delta = |f: fn(&ServerSample) -> Option<f64>| {
            Some(f(&hold_end.as_ref()?.1)? - f(&hold_start.as_ref()?.1)?)
        };
        let window_s = hold_start
            .zip(hold_end)
            .map(|((from, _), (to, _))| to - from)
            .filter(|w| *w > 0.0);
        // The less precise of the two ends decides (a server swapped mid-run, in theory).
        let cpu_source = hold_start
            .zip(hold_end)
            .and_then(|((_, a), (_, b))| Some((a.cpu_source?, b.cpu_source?)))
            .map(|(a, b)| if a == b { a } else { CpuSource::WholeSeconds });
        let rate = |v: Option<f64>| v.zip(window_s).map(|(v, w)| v / w);
        let cpu = delta(|s| s.cpu_seconds);
        let forwarded = delta(|s| s.rtp_forwarded);
        let baseline = samples.first().and_then(|(_, s)| s.rss_bytes);
        let peak = samples
            .iter()
            .filter_map(|(_, s)| s.rss_bytes)
            .reduce(f64::max);
        Self {
            hold_s,
            window_s,
            cpu_metric: cpu_source.map(CpuSource::metric),
            cpu_resolution_s: cpu_source.map(CpuSource::resolution_s),
            cpu_cores: cpu.zip(window_s).map(|(c, w)| c / w),
            forwarded_packets_per_s: forwarded.zip(window_s).map(|(f, w)| f / w),
            core_us_per_forwarded_packet: cpu
                .zip(forwarded)
                .filter(|(_, f)| *f > 0.0)
                .map(|(c, f)| c * 1e6 / f),
            rss_baseline_bytes: baseline,
            rss_peak_bytes: peak,
            rss_per_subscriber_bytes: baseline
                .zip(peak)
                .filter(|_| subscribers > 0)
                .map(|(b, p)| (p - b) / subscribers as f64),
            dropped_packets: delta(|s| s.dropped),
            nacks: delta(|s| s.nacks),
            rss_growth_bytes: growth(samples, |s| s.rss_bytes),
            fd_growth: growth(samples, |s| s.open_fds),
            task_growth: growth(samples, |s| s.tasks),
            open_fds_peak: samples
                .iter()
                .filter_map(|(_, s)| s.open_fds)
                .reduce(f64::max),
            tasks_peak: samples.iter().filter_map(|(_, s)| s.tasks).reduce(f64::max),
            key_messages_in_per_s: rate(delta(|s| s.key_messages_in)),
            key_messages_out_per_s: rate(delta(|s| s.key_messages_out)),
            key_bytes_in_per_s: rate(delta(|s| s.key_bytes_in)),
            key_bytes_out_per_s: rate(delta(|s| s.key_bytes_out)),
        }
    }
}

/// One server node of a run: the endpoints sent to it and its own figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    /// Its signaling URL (`--url`).
    pub url: String,
    /// Its metrics page, when scraped.
    pub metrics_url: Option<String>,
    /// Endpoints this run sent to it. A cluster's node that does not hold the room sends them
    /// on to the one that does, so they may be served elsewhere: `participants_peak` says
    /// where they were.
    pub endpoints: u64,
    /// The most participants its metrics showed (`meet_participants`).
    pub participants_peak: Option<f64>,
    /// Its figures over the hold, as [`RunReport::server`] gives them for every node
    /// together; `rss_per_subscriber_bytes` is per participant it held as the hold started.
    pub server: ServerSummary,
}

/// One SLO verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloCheck {
    pub name: String,
    pub limit: f64,
    pub actual: Option<f64>,
    pub passed: bool,
}

/// What went wrong in a run beyond its measurements. Any of these fails the run whatever the
/// SLOs say: the measurements of a run whose server died or whose endpoints dropped out
/// describe a run that did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunErrorKind {
    /// Endpoints whose signaling connection ended while the run still needed them.
    ConnectionLost,
    /// The server stopped answering (or never answered) its metrics scrape.
    MetricsUnreachable,
    /// Endpoints that had been receiving media and stopped receiving any.
    MediaStopped,
    /// The run reached its deadline before every endpoint joined.
    Deadline,
}

/// One reason a run failed outright.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunError {
    pub kind: RunErrorKind,
    /// Seconds into the run when it was first seen.
    pub t_s: Option<f64>,
    /// Endpoints concerned (0 for the server's metrics and the deadline).
    pub endpoints: u64,
    pub message: String,
}

impl RunError {
    /// One error for every endpoint of `kind`, named after the first one to go.
    fn of_endpoints(kind: RunErrorKind, endpoints: &[&EndpointResult]) -> Option<Self> {
        let first = endpoints.iter().min_by(|a, b| {
            let at = |e: &EndpointResult| e.lost_at_s.unwrap_or(f64::MAX);
            at(a).total_cmp(&at(b))
        })?;
        let count = endpoints.len();
        let plural = if count == 1 { "" } else { "s" };
        let what = match kind {
            RunErrorKind::MediaStopped => {
                format!("stopped receiving media mid-run (no packet for {MEDIA_STOP_S:.0} s)")
            }
            _ => "lost the connection to the server mid-run".to_string(),
        };
        let at = first
            .lost_at_s
            .map_or(String::new(), |t| format!(" at {t:.1} s"));
        let why = match (&first.error, kind) {
            (Some(error), RunErrorKind::ConnectionLost) => format!(": {error}"),
            _ => String::new(),
        };
        Some(Self {
            kind,
            t_s: first.lost_at_s,
            endpoints: count as u64,
            message: format!(
                "{count} endpoint{plural} {what} (first{at}: {}{why})",
                first.name
            ),
        })
    }
}

/// The whole report of one run. The verdict and its reasons come first.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Every SLO met and no [`RunError`].
    pub passed: bool,
    /// The summary's first line: `PASS: …`, or `FAIL: ` and the first reason.
    pub verdict: String,
    /// Why the run failed outright, most serious first (connection losses, the server's
    /// metrics, stopped media, the deadline).
    pub errors: Vec<RunError>,
    pub scenario: Scenario,
    pub started_unix_s: u64,
    pub elapsed_s: f64,
    pub ramp_s: f64,
    /// From the ramp's end until every receiver got media (or the limit): not measured.
    #[serde(default)]
    pub settle_s: f64,
    /// The hold's length: everyone connected, measured.
    pub hold_s: f64,
    /// Joins per second achieved during the ramp.
    pub join_rate_achieved: f64,
    pub endpoints_total: usize,
    pub endpoints_joined: usize,
    /// Endpoints that failed to join, that should have received media and got none, or that
    /// lost their connection or their media mid-run.
    pub endpoints_failed: u64,
    pub join_ms: Option<Distribution>,
    pub signaling_ms: Option<Distribution>,
    pub first_media_ms: Option<Distribution>,
    pub first_keyframe_ms: Option<Distribution>,
    pub loss_pct: Option<Distribution>,
    /// Lost over expected packets, all endpoints together.
    pub loss_pct_total: Option<f64>,
    pub audio_jitter_ms: Option<Distribution>,
    pub video_jitter_ms: Option<Distribution>,
    pub rtt_ms: Option<Distribution>,
    pub rx_kbps: Option<Distribution>,
    pub freezes_total: u64,
    /// End-to-end encryption, all endpoints together: frames sealed, frames that decrypted
    /// and frames dropped because they did not.
    pub frames_sealed_total: u64,
    pub frames_decrypted_total: u64,
    pub decrypt_failures_total: u64,
    /// End-to-end key distribution (`--e2ee`): what it cost and how fast it was.
    pub keys: Option<KeyReport>,
    /// The servers' figures over the hold: with several nodes, their sum (from the scrapes
    /// in which every node answered).
    pub server: ServerSummary,
    /// Every node (`--url`) with the endpoints sent to it and its own figures.
    pub nodes: Vec<NodeReport>,
    /// The load generator's own CPU time (the whole process).
    pub generator_cpu_s: Option<f64>,
    /// Generator CPU per endpoint per second connected, in core-ms.
    pub generator_core_ms_per_endpoint_s: Option<f64>,
    /// The loopback floor measured by this process just before the endpoints started
    /// (`scenario.measure_floor`), and the server's whole-process CPU per forwarded packet
    /// over the hold as a multiple of the floor's whole-process figure, one send per packet
    /// and in `sendmmsg` batches.
    pub floor: Option<Floor>,
    pub floor_multiple: Option<f64>,
    pub floor_multiple_batched: Option<f64>,
    /// What the receiving endpoints checked, and what they did not (light viewers check less).
    pub receive_checks: String,
    pub slo: Vec<SloCheck>,
    /// Endpoints that failed to join, and other events of the run, as text.
    pub failures: Vec<String>,
    pub timeline: Vec<TimelineSample>,
    pub server_timeline: Vec<(f64, ServerSample)>,
    pub endpoints: Vec<EndpointResult>,
}

/// The first line of a summary: the verdict and, on a failure, its first reason.
fn verdict(errors: &[RunError], slo: &[SloCheck]) -> String {
    let more = |n: usize, what: &str| match n {
        0 => String::new(),
        1 => format!(" (and 1 more {what} below)"),
        n => format!(" (and {n} more {what}s below)"),
    };
    if let Some(first) = errors.first() {
        return format!("FAIL: {}{}", first.message, more(errors.len() - 1, "error"));
    }
    let failed: Vec<&SloCheck> = slo.iter().filter(|c| !c.passed).collect();
    if let Some(first) = failed.first() {
        let actual = first
            .actual
            .map_or("no value".into(), |a| format!("{a:.2}"));
        return format!(
            "FAIL: SLO {}: {actual} over the limit {:.2}{}",
            first.name,
            first.limit,
            more(failed.len() - 1, "failed SLO")
        );
    }
    format!(
        "PASS: all {} SLO checks met; no endpoint lost its connection or media",
        slo.len()
    )
}

impl RunReport {
    /// `run_errors` are the run's own (the server's metrics, the deadline); the endpoints'
    /// losses are found in `endpoints`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: Scenario,
        started_unix_s: u64,
        elapsed_s: f64,
        ramp_s: f64,
        hold_s: f64,
        endpoints: Vec<EndpointResult>,
        failures: Vec<String>,
        run_errors: Vec<RunError>,
        timeline: Vec<TimelineSample>,
        server_timeline: Vec<(f64, ServerSample)>,
        server: ServerSummary,
        generator_cpu_s: Option<f64>,
    ) -> Self {
        let joined: Vec<&EndpointResult> = endpoints.iter().filter(|e| e.joined).collect();
        let dist = |f: fn(&EndpointResult) -> Option<f64>| {
            Distribution::of(joined.iter().filter_map(|e| f(e)))
        };
        let receivers = || joined.iter().filter(|e| e.expects_media(&scenario));
        // In an encrypted run, media that never decrypted is no media.
        let no_media = |e: &EndpointResult| {
            e.expects_media(&scenario)
                && (e.first_media_ms.is_none() || (scenario.e2ee && e.frames_decrypted == 0))
        };
        // A viewer that only speaks the key exchange fails without a key.
        let no_key = |e: &EndpointResult| {
            scenario.e2ee && !e.receives_media && e.stayed && e.first_key_ms.is_none()
        };
        let endpoints_failed = (endpoints.len() - joined.len()) as u64
            + joined
                .iter()
                .filter(|e| e.connection_lost || e.media_stopped || no_media(e) || no_key(e))
                .count() as u64;

        let lost: Vec<&EndpointResult> = joined
            .iter()
            .copied()
            .filter(|e| e.connection_lost)
            .collect();
        let stopped: Vec<&EndpointResult> = joined
            .iter()
            .copied()
            .filter(|e| e.media_stopped && !e.connection_lost)
            .collect();
        let mut errors: Vec<RunError> = [
            RunError::of_endpoints(RunErrorKind::ConnectionLost, &lost),
            RunError::of_endpoints(RunErrorKind::MediaStopped, &stopped),
        ]
        .into_iter()
        .flatten()
        .chain(run_errors)
        .collect();
        errors.sort_by(|a, b| {
            a.kind.cmp(&b.kind).then(
                a.t_s
                    .unwrap_or(f64::MAX)
                    .total_cmp(&b.t_s.unwrap_or(f64::MAX)),
            )
        });

        let expected: u64 = joined.iter().map(|e| e.packets_expected).sum();
        let received: u64 = joined.iter().map(|e| e.packets_received).sum();
        let loss_pct_total = (expected > 0)
            .then(|| expected.saturating_sub(received) as f64 * 100.0 / expected as f64);
        let join_ms = dist(|e| e.join_ms);
        let first_keyframe_ms = Distribution::of(receivers().filter_map(|e| e.first_keyframe_ms));
        let endpoint_seconds: f64 = timeline
            .windows(2)
            .map(|w| (w[1].t_s - w[0].t_s) * w[1].connected as f64)
            .sum();

        let mut slo = vec![
            SloCheck {
                name: "run errors".into(),
                limit: 0.0,
                actual: Some(errors.len() as f64),
                passed: errors.is_empty(),
            },
            SloCheck {
                name: "failed endpoints".into(),
                limit: scenario.slo.max_failed as f64,
                actual: Some(endpoints_failed as f64),
                passed: endpoints_failed <= scenario.slo.max_failed,
            },
        ];
        let mut check = |name: &str, limit: Option<f64>, actual: Option<f64>| {
            if let Some(limit) = limit {
                slo.push(SloCheck {
                    name: name.into(),
                    limit,
                    actual,
                    passed: actual.is_some_and(|a| a <= limit),
                });
            }
        };
        check(
            "packet loss %",
            scenario.slo.loss_pct,
            loss_pct_total.or(Some(0.0)),
        );
        check(
            "join time p95 ms",
            scenario.slo.join_p95_ms,
            join_ms.map(|d| d.p95),
        );
        check(
            "first keyframe p95 ms",
            scenario.slo.first_frame_p95_ms,
            first_keyframe_ms.map(|d| d.p95),
        );
        check(
            "server RSS growth MiB",
            scenario.slo.rss_growth_mib,
            server.rss_growth_bytes.map(|b| b / 1_048_576.0),
        );
        check(
            "server descriptor growth",
            scenario.slo.fd_growth,
            server.fd_growth,
        );
        check(
            "server task growth",
            scenario.slo.task_growth,
            server.task_growth,
        );
        let passed = errors.is_empty() && slo.iter().all(|c| c.passed);
        Self {
            passed,
            verdict: verdict(&errors, &slo),
            errors,
            // The ramp joined the scenario's receivers; churned replacements came later.
            join_rate_achieved: if ramp_s > 0.0 {
                let ramped = match scenario.kind {
                    Kind::Meeting => scenario.participants,
                    _ => scenario.viewers,
                };
                f64::from(ramped) / ramp_s
            } else {
                0.0
            },
            endpoints_total: endpoints.len(),
            endpoints_joined: joined.len(),
            endpoints_failed,
            join_ms,
            signaling_ms: dist(|e| e.signaling_ms),
            first_media_ms: Distribution::of(receivers().filter_map(|e| e.first_media_ms)),
            first_keyframe_ms,
            loss_pct: dist(|e| e.loss_pct),
            loss_pct_total,
            audio_jitter_ms: dist(|e| e.audio_jitter_ms),
            video_jitter_ms: dist(|e| e.video_jitter_ms),
            rtt_ms: dist(|e| e.rtt_ms),
            rx_kbps: dist(|e| e.rx_kbps),
            freezes_total: joined.iter().map(|e| e.freezes).sum(),
            frames_sealed_total: joined.iter().map(|e| e.frames_sealed).sum(),
            frames_decrypted_total: joined.iter().map(|e| e.frames_decrypted).sum(),
            decrypt_failures_total: joined.iter().map(|e| e.decrypt_failures).sum(),
            keys: None,
            nodes: Vec::new(),
            generator_core_ms_per_endpoint_s: generator_cpu_s
                .filter(|_| endpoint_seconds > 0.0)
                .map(|cpu| cpu * 1_000.0 / endpoint_seconds),
            generator_cpu_s,
            floor: None,
            floor_multiple: None,
            floor_multiple_batched: None,
            receive_checks: receive_checks(&scenario).to_string(),
            server,
            slo,
            failures,
            scenario,
            started_unix_s,
            elapsed_s,
            ramp_s,
            settle_s: 0.0,
            hold_s,
            timeline,
            server_timeline,
            endpoints,
        }
    }

    /// Adds what the key exchange cost (`--e2ee`), with its SLO checks.
    pub fn with_keys(mut self, mut keys: KeyReport) -> Self {
        let receivers = self
            .endpoints
            .iter()
            .filter(|e| e.joined && e.role != Role::Presenter);
        keys.first_decrypt_ms =
            Distribution::of(receivers.clone().filter_map(|e| e.first_decrypted_ms));
        keys.first_key_ms = Distribution::of(receivers.filter_map(|e| e.first_key_ms));
        keys.frames_lost_to_rekey = self
            .endpoints
            .iter()
            .map(|e| e.decrypt_failures_newer_key)
            .sum();
        keys.keys_refused = self.endpoints.iter().map(|e| e.keys_refused).sum();
        let slo = &self.scenario.slo;
        for (name, limit, actual) in [
            (
                "first decrypted p95 ms",
                slo.first_decrypt_p95_ms,
                keys.first_decrypt_ms.map(|d| d.p95),
            ),
            ("rekeyed p95 ms", slo.rekeyed_p95_ms, keys.rekeyed_p95_ms),
        ] {
            if let Some(limit) = limit {
                self.slo.push(SloCheck {
                    name: name.into(),
                    limit,
                    actual,
                    passed: actual.is_some_and(|a| a <= limit),
                });
            }
        }
        self.passed = self.errors.is_empty() && self.slo.iter().all(|c| c.passed);
        self.verdict = verdict(&self.errors, &self.slo);
        self.keys = Some(keys);
        self
    }

    /// The time between the ramp and the hold, spent waiting for every receiver's media.
    pub fn with_settle(mut self, settle_s: f64) -> Self {
        self.settle_s = settle_s;
        self
    }

    /// Adds each node's endpoints and figures.
    pub fn with_nodes(mut self, nodes: Vec<NodeReport>) -> Self {
        self.nodes = nodes;
        self
    }

    /// Adds the loopback floor measured in the same run, and the server's cost as a multiple
    /// of it.
    pub fn with_floor(mut self, floor: Option<Floor>) -> Self {
        let multiple = |floor_us: f64| {
            self.server
                .core_us_per_forwarded_packet
                .filter(|_| floor_us > 0.0)
                .map(|server_us| server_us / floor_us)
        };
        self.floor_multiple = floor
            .as_ref()
            .and_then(|f| multiple(f.single.process_core_us_per_packet));
        self.floor_multiple_batched = floor
            .as_ref()
            .and_then(|f| multiple(f.batched.process_core_us_per_packet));
        self.floor = floor;
        self
    }

    /// How the server's CPU figures were measured, for the summary and the HTML page.
    pub fn cpu_source_note(&self) -> String {
        let server = &self.server;
        let Some(metric) = server.cpu_metric else {
            return "server CPU: not measured (metrics not scraped or no CPU metric)".into();
        };
        let resolution = server.cpu_resolution_s.unwrap_or(1.0);
        let shown = if resolution < 1e-3 {
            format!("{:.0} µs", resolution * 1e6)
        } else {
            format!("{resolution:.0} s")
        };
        let window = match server.window_s {
            Some(window) => {
                let scatter = resolution * 100.0 / window;
                let scatter = if scatter < 0.01 {
                    "<0.01%".to_string()
                } else {
                    format!("{scatter:.2}%")
                };
                format!(
                    ", ±{scatter} of the window; over {window:.2} s between the scrapes at the hold's start and end"
                )
            }
            None => "; no figure over the hold (no second scrape during it)".into(),
        };
        let fallback = if metric == crate::metrics_scrape::COARSE_CPU_METRIC {
            format!(
                " (the server has no {}: fell back to the whole-second counter)",
                crate::metrics_scrape::PRECISE_CPU_METRIC
            )
        } else {
            String::new()
        };
        format!("server CPU from {metric}, resolution {shown}{window}{fallback}")
    }

    /// A plain-text summary table for the terminal. Its first line is the verdict (`PASS` or
    /// `FAIL` and the first reason); the run's errors follow, then the measurements.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let s = &self.scenario;
        let _ = writeln!(out, "{}", self.verdict);
        for error in &self.errors {
            let _ = writeln!(out, "error: {}", error.message);
        }
        let _ = writeln!(
            out,
            "scenario {:?}: {} endpoints ({} joined, {} failed) in {:.1} s, ramp {:.1} s ({:.0} joins/s), settle {:.1} s, hold {:.1} s",
            s.kind,
            self.endpoints_total,
            self.endpoints_joined,
            self.endpoints_failed,
            self.elapsed_s,
            self.ramp_s,
            self.join_rate_achieved,
            self.settle_s,
            self.hold_s
        );
        let _ = writeln!(
            out,
            "{:<24} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "measure", "count", "p50", "p95", "p99", "max", "mean"
        );
        let rows = [
            ("join time ms", &self.join_ms),
            ("signaling join ms", &self.signaling_ms),
            ("first media ms", &self.first_media_ms),
            ("first keyframe ms", &self.first_keyframe_ms),
            ("loss %", &self.loss_pct),
            ("audio jitter ms", &self.audio_jitter_ms),
            ("video jitter ms", &self.video_jitter_ms),
            ("rtt ms (ICE)", &self.rtt_ms),
            ("received kbit/s", &self.rx_kbps),
        ];
        for (name, dist) in rows {
            match dist {
                Some(d) => {
                    let _ = writeln!(
                        out,
                        "{name:<24} {:>7} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                        d.count, d.p50, d.p95, d.p99, d.max, d.mean
                    );
                }
                None => {
                    let _ = writeln!(out, "{name:<24} {:>7}", "-");
                }
            }
        }
        let opt =
            |v: Option<f64>, scale: f64| v.map_or("-".to_string(), |v| format!("{:.2}", v * scale));
        let _ = writeln!(
            out,
            "loss total {}%, freezes {}; generator {} core-ms per endpoint-second",
            opt(self.loss_pct_total, 1.0),
            self.freezes_total,
            opt(self.generator_core_ms_per_endpoint_s, 1.0),
        );
        let servers = match self.nodes.len() {
            0 | 1 => "server over the hold".to_string(),
            n => format!("servers over the hold ({n} nodes together)"),
        };
        let _ = writeln!(
            out,
            "{servers}: {} cores, {} fwd pkt/s, {} core-µs/fwd pkt, RSS peak {} MiB, {} KiB/subscriber",
            opt(self.server.cpu_cores, 1.0),
            opt(self.server.forwarded_packets_per_s, 1.0),
            opt(self.server.core_us_per_forwarded_packet, 1.0),
            opt(self.server.rss_peak_bytes, 1.0 / 1_048_576.0),
            opt(self.server.rss_per_subscriber_bytes, 1.0 / 1_024.0),
        );
        if self.nodes.len() > 1 {
            for node in &self.nodes {
                let _ = writeln!(
                    out,
                    "node {}: {} endpoints sent, {} participants at most; {} cores, {} fwd pkt/s, {} core-µs/fwd pkt, RSS peak {} MiB",
                    node.url,
                    node.endpoints,
                    node.participants_peak
                        .map_or("-".to_string(), |n| format!("{n:.0}")),
                    opt(node.server.cpu_cores, 1.0),
                    opt(node.server.forwarded_packets_per_s, 1.0),
                    opt(node.server.core_us_per_forwarded_packet, 1.0),
                    opt(node.server.rss_peak_bytes, 1.0 / 1_048_576.0),
                );
            }
        }
        let _ = writeln!(out, "{}", self.cpu_source_note());
        if self.server.open_fds_peak.is_some() || self.server.tasks_peak.is_some() {
            let _ = writeln!(
                out,
                "server growth (middle → last third of the run): RSS {} MiB, descriptors {} (peak {}), tasks {} (peak {})",
                opt(self.server.rss_growth_bytes, 1.0 / 1_048_576.0),
                opt(self.server.fd_growth, 1.0),
                opt(self.server.open_fds_peak, 1.0),
                opt(self.server.task_growth, 1.0),
                opt(self.server.tasks_peak, 1.0),
            );
        }
        if let Some(floor) = &self.floor {
            out.push_str(&floor.summary());
            if let Some(multiple) = self.floor_multiple {
                let _ = writeln!(
                    out,
                    "whole-process core-µs per forwarded packet = {multiple:.1}× the floor \
                     ({:.1}× the sendmmsg floor), measured in this run",
                    self.floor_multiple_batched.unwrap_or(f64::NAN)
                );
            }
        }
        let _ = writeln!(out, "{}", self.receive_checks);
        if s.e2ee {
            let _ = writeln!(
                out,
                "end-to-end encryption: {} frames sealed, {} decrypted, {} failed to decrypt",
                self.frames_sealed_total, self.frames_decrypted_total, self.decrypt_failures_total
            );
        }
        if let Some(keys) = &self.keys {
            out.push_str(&keys.summary(&self.server));
        }
        for check in &self.slo {
            let _ = writeln!(
                out,
                "SLO {:<24} limit {:>8.2} actual {:>10} {}",
                check.name,
                check.limit,
                opt(check.actual, 1.0),
                if check.passed { "PASS" } else { "FAIL" }
            );
        }
        for failure in self.failures.iter().take(5) {
            let _ = writeln!(out, "failure: {failure}");
        }
        out
    }
}

/// What the receivers of a run check, and what light viewers leave out.
pub fn receive_checks(scenario: &Scenario) -> &'static str {
    if scenario.light_viewers {
        if scenario.e2ee {
            "light viewers: checked SRTP authentication and decryption, packets, sequence gaps, \
             loss, jitter, freezes, first media, first keyframe (VP8 payload descriptor), the \
             end-to-end decryption of every audio packet; not checked: frame reassembly, video \
             frames' decryption and tag, audio tone identity"
        } else {
            "light viewers: checked SRTP authentication and decryption, packets, sequence gaps, \
             loss, jitter, freezes, first media, first keyframe (VP8 payload descriptor) and the \
             sender's tag at each frame start; not checked: frame reassembly, audio tone \
             identity, end-to-end decryption"
        }
    } else {
        "viewers: checked SRTP, packets, loss, jitter, freezes, reassembled frames, first media \
         and keyframe, the sender's tag in each frame, end-to-end decryption when on; not \
         checked: audio tone identity (Opus is not decoded in load runs)"
    }
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const MARGIN: f64 = 44.0;

/// A line chart of `points` as an inline SVG.
fn line_chart(title: &str, unit: &str, points: &[(f64, f64)]) -> String {
    let mut svg = format!(
        "<h3>{}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\">",
        escape(title)
    );
    if points.is_empty() {
        svg.push_str("<text x=\"20\" y=\"40\">no data</text></svg>");
        return svg;
    }
    let x_max = points
        .iter()
        .map(|p| p.0)
        .fold(f64::MIN, f64::max)
        .max(1e-9);
    let x_min = points.iter().map(|p| p.0).fold(f64::MAX, f64::min);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let sx = |x: f64| MARGIN + (x - x_min) / (x_max - x_min).max(1e-9) * (WIDTH - 2.0 * MARGIN);
    let sy = |y: f64| HEIGHT - MARGIN - y / y_max * (HEIGHT - 2.0 * MARGIN);
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
        .collect();
    let _ = write!(
        svg,
        "<line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\
         <line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"#888\"/>\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\
         <text x=\"{m}\" y=\"{t}\" font-size=\"11\">{:.2} {}</text>\
         <text x=\"{m}\" y=\"{xl}\" font-size=\"11\">{:.0} s</text>\
         <text x=\"{r}\" y=\"{xl}\" font-size=\"11\" text-anchor=\"end\">{:.0} s</text></svg>",
        path.join(" "),
        y_max,
        escape(unit),
        x_min,
        x_max,
        m = MARGIN,
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN,
        t = MARGIN - 6.0,
        xl = HEIGHT - MARGIN + 16.0,
    );
    svg
}

/// A histogram of `values` as an inline SVG bar chart.
fn histogram_chart(title: &str, unit: &str, values: &[f64]) -> String {
    let mut svg = format!(
        "<h3>{}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\">",
        escape(title)
    );
    if values.is_empty() {
        svg.push_str("<text x=\"20\" y=\"40\">no data</text></svg>");
        return svg;
    }
    const BUCKETS: usize = 30;
    let max = values.iter().copied().fold(0.0, f64::max).max(1e-9);
    let mut counts = [0u64; BUCKETS];
    for v in values {
        let i = ((v / max) * (BUCKETS as f64 - 1.0)).round() as usize;
        counts[i.min(BUCKETS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bar = (WIDTH - 2.0 * MARGIN) / BUCKETS as f64;
    for (i, count) in counts.iter().enumerate() {
        let h = *count as f64 / top * (HEIGHT - 2.0 * MARGIN);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#2ca02c\"><title>{count}</title></rect>",
            MARGIN + i as f64 * bar,
            HEIGHT - MARGIN - h,
            bar - 1.0,
            h
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\
         <text x=\"{m}\" y=\"{t}\" font-size=\"11\">{top} endpoints</text>\
         <text x=\"{m}\" y=\"{xl}\" font-size=\"11\">0</text>\
         <text x=\"{r}\" y=\"{xl}\" font-size=\"11\" text-anchor=\"end\">{max:.1} {}</text></svg>",
        escape(unit),
        m = MARGIN,
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN,
        t = MARGIN - 6.0,
        xl = HEIGHT - MARGIN + 16.0,
    );
    svg
}

/// A self-contained HTML page: the summary, the SLOs and the plots.
pub fn html(report: &RunReport) -> String {
    let joins: Vec<f64> = report.endpoints.iter().filter_map(|e| e.join_ms).collect();
    let bitrate: Vec<(f64, f64)> = report.timeline.iter().map(|s| (s.t_s, s.rx_mbps)).collect();
    let loss: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .map(|s| (s.t_s, s.loss_pct))
        .collect();
    // The precise CPU figure is plotted per scrape interval. The whole-second counter of an
    // older server moves in steps of a second, so one-second intervals alternate between zero
    // and double: it is averaged over five intervals, and the chart says so.
    let precise = report.server.cpu_resolution_s.is_some_and(|r| r < 1e-3)
        || report
            .server_timeline
            .iter()
            .any(|(_, s)| s.cpu_source == Some(crate::metrics_scrape::CpuSource::Precise));
    let span = if precise { 2 } else { 6 };
    let cpu: Vec<(f64, f64)> = report
        .server_timeline
        .windows(span)
        .filter_map(|w| {
            let (first, last) = (w.first()?, w.last()?);
            let dt = last.0 - first.0;
            let dc = last.1.cpu_seconds? - first.1.cpu_seconds?;
            (dt > 0.0).then(|| (last.0, dc / dt * 100.0))
        })
        .collect();
    let cpu_title = if precise {
        format!(
            "Server CPU ({}, 1 µs resolution, per scrape interval)",
            crate::metrics_scrape::PRECISE_CPU_METRIC
        )
    } else {
        format!(
            "Server CPU ({}: whole seconds, averaged over 5 s; the server has no {})",
            crate::metrics_scrape::COARSE_CPU_METRIC,
            crate::metrics_scrape::PRECISE_CPU_METRIC
        )
    };
    let rss: Vec<(f64, f64)> = report
        .server_timeline
        .iter()
        .filter_map(|(t, s)| Some((*t, s.rss_bytes? / 1_048_576.0)))
        .collect();
    let mut page = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Load test report</title>\
         <style>body{font-family:sans-serif;max-width:900px;margin:2em auto}\
         pre{background:#f4f4f4;padding:1em;overflow-x:auto}.pass{color:#080}.fail{color:#b00}</style>\
         </head><body><h1>Load test report</h1>",
    );
    let _ = write!(
        page,
        "<p class=\"{}\">{}</p>",
        if report.passed { "pass" } else { "fail" },
        escape(&report.verdict)
    );
    if !report.errors.is_empty() {
        page.push_str("<ul class=\"fail\">");
        for error in &report.errors {
            let _ = write!(page, "<li>{}</li>", escape(&error.message));
        }
        page.push_str("</ul>");
    }
    let _ = write!(
        page,
        "<p>Hold {:.1} s. {}.</p>",
        report.hold_s,
        escape(&report.cpu_source_note())
    );
    let _ = write!(page, "<pre>{}</pre>", escape(&report.summary()));
    page.push_str(&histogram_chart(
        "Join time distribution (socket open to ICE connected)",
        "ms",
        &joins,
    ));
    page.push_str(&line_chart(
        "Received bitrate, all endpoints",
        "Mbit/s",
        &bitrate,
    ));
    page.push_str(&line_chart("Packet loss per interval", "%", &loss));
    page.push_str(&line_chart(&cpu_title, "% of one core", &cpu));
    page.push_str(&line_chart("Server resident memory", "MiB", &rss));
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_compares_the_last_third_with_the_middle_third() {
        let sample = |rss: f64| ServerSample {
            rss_bytes: Some(rss),
            ..ServerSample::default()
        };
        // A ramp (0 → 100), then steady with noise: no growth.
        let steady: Vec<_> = (0..90)
            .map(|t| {
                let rss = if t < 30 {
                    f64::from(t) * 3.0
                } else {
                    100.0 + f64::from(t % 3)
                };
                (f64::from(t), sample(rss))
            })
            .collect();
        assert_eq!(growth(&steady, |s| s.rss_bytes), Some(0.0));
        // A leak of one unit a second keeps growing after the ramp.
        let leaking: Vec<_> = (0..90)
            .map(|t| (f64::from(t), sample(100.0 + f64::from(t))))
            .collect();
        assert_eq!(growth(&leaking, |s| s.rss_bytes), Some(30.0));
        assert_eq!(growth(&leaking[..1], |s| s.rss_bytes), None);
    }

    #[test]
    fn percentiles_come_from_the_values() {
        let d = Distribution::of((1..=100).map(f64::from)).expect("values");
        assert_eq!(d.count, 100);
        assert!((d.p50 - 50.0).abs() < 0.1, "{d:?}");
        assert!((d.p99 - 99.0).abs() < 0.1, "{d:?}");
        assert!(Distribution::of([f64::NAN]).is_none());
    }

    /// A viewer that joined and received media (`lost_at_s`: lost its connection then).
    fn viewer(name: &str, lost_at_s: Option<f64>) -> EndpointResult {
        let mut result = EndpointResult::failed(Role::Viewer, name, &BotError::Timeout("unused"));
        result.joined = true;
        result.stayed = true;
        result.error = None;
        result.join_ms = Some(40.0);
        result.first_media_ms = Some(120.0);
        result.packets_expected = 1_000;
        result.packets_received = 1_000;
        if let Some(t) = lost_at_s {
            result.connection_lost = true;
            result.lost_at_s = Some(t);
            result.error = Some("websocket: IO error: peer closed connection".into());
        }
        result
    }

    fn report(endpoints: Vec<EndpointResult>, run_errors: Vec<RunError>) -> RunReport {
        RunReport::new(
            Scenario::default(),
            0,
            20.0,
            1.0,
            15.0,
            endpoints,
            Vec::new(),
            run_errors,
            Vec::new(),
            Vec::new(),
            ServerSummary::default(),
            None,
        )
    }

    /// The operator's case: the server died mid-run. Losses come before anything else, in the
    /// text (its first line says FAIL and why) and in the JSON (`passed`, `verdict`, `errors`
    /// lead), and the SLO results count them.
    #[test]
    fn a_lost_connection_fails_the_run_and_leads_the_summary() {
        let metrics = RunError {
            kind: RunErrorKind::MetricsUnreachable,
            t_s: Some(6.0),
            endpoints: 0,
            message: "the server stopped answering at 6.0 s its metrics scrape (3 in a row \
                      failed; last: i/o: Connection refused)"
                .into(),
        };
        let endpoints = vec![
            viewer("viewer-1", Some(6.3)),
            viewer("viewer-2", Some(6.1)),
            viewer("viewer-3", None),
        ];
        let report = report(endpoints, vec![metrics]);
        assert!(!report.passed);
        assert_eq!(report.errors.len(), 2);
        assert_eq!(report.errors[0].kind, RunErrorKind::ConnectionLost);
        assert_eq!(report.errors[0].endpoints, 2);
        assert_eq!(report.errors[1].kind, RunErrorKind::MetricsUnreachable);
        assert_eq!(report.endpoints_failed, 2);

        let summary = report.summary();
        let lines: Vec<&str> = summary.lines().collect();
        assert!(
            lines[0].starts_with("FAIL: 2 endpoints lost the connection"),
            "{summary}"
        );
        // Named after the first to go, with its reason.
        assert!(lines[0].contains("viewer-2"), "{summary}");
        assert!(lines[0].contains("at 6.1 s"), "{summary}");
        assert!(lines[0].contains("peer closed connection"), "{summary}");
        assert!(lines[0].contains("1 more error"), "{summary}");
        assert!(lines[1].starts_with("error: 2 endpoints"), "{summary}");
        assert!(
            lines[2].starts_with("error: the server stopped answering"),
            "{summary}"
        );
        assert!(lines[3].starts_with("scenario "), "{summary}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("SLO run errors") && l.ends_with("FAIL")),
            "{summary}"
        );

        let json = serde_json::to_string(&report).expect("serializes");
        assert!(
            json.starts_with("{\"passed\":false,\"verdict\":\"FAIL: 2 endpoints"),
            "{json}"
        );
        let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(value["errors"][0]["kind"], "connection_lost");
        assert_eq!(value["errors"][1]["kind"], "metrics_unreachable");
        assert_eq!(value["endpoints"][1]["connection_lost"], true);
        assert!(html(&report).contains("<p class=\"fail\">FAIL: 2 endpoints"));
    }

    /// An SLO miss alone fails with the SLO named first; a clean run passes and says so. A
    /// churned-out viewer (left as the scenario says, connection not lost) is no failure.
    #[test]
    fn the_first_line_is_the_verdict() {
        let mut churned = viewer("viewer-9", None);
        churned.stayed = false;
        let clean = report(vec![viewer("viewer-1", None), churned], Vec::new());
        assert!(clean.passed, "{}", clean.summary());
        assert!(clean.errors.is_empty());
        assert!(
            clean.summary().starts_with("PASS: all 3 SLO checks met"),
            "{}",
            clean.summary()
        );

        let mut lossy = viewer("viewer-1", None);
        lossy.packets_received = 900;
        let lossy = report(vec![lossy], Vec::new());
        assert!(!lossy.passed);
        assert!(lossy.errors.is_empty());
        assert!(
            lossy
                .summary()
                .starts_with("FAIL: SLO packet loss %: 10.00 over the limit 0.50"),
            "{}",
            lossy.summary()
        );
    }

    /// The report says where the CPU figure came from and how fine it is.
    #[test]
    fn the_cpu_source_and_hold_are_stated() {
        let sample = |t: f64, cpu: f64, source: CpuSource| {
            (
                t,
                ServerSample {
                    cpu_seconds: Some(cpu),
                    cpu_source: Some(source),
                    rtp_forwarded: Some(t * 1_000.0),
                    ..ServerSample::default()
                },
            )
        };
        let (a, b) = (
            sample(5.0, 1.25, CpuSource::Precise),
            sample(15.0, 3.75, CpuSource::Precise),
        );
        let server = ServerSummary::from_samples(&[a, b], Some(a), Some(b), 10.0, 1);
        assert_eq!(server.window_s, Some(10.0));
        assert_eq!(server.cpu_cores, Some(0.25));
        assert_eq!(server.cpu_metric, Some("meet_process_cpu_seconds"));
        assert_eq!(server.cpu_resolution_s, Some(1e-6));
        let mut precise = report(vec![viewer("viewer-1", None)], Vec::new());
        precise.server = server;
        let summary = precise.summary();
        assert!(summary.contains("hold 15.0 s"), "{summary}");
        assert!(
            summary.contains("server CPU from meet_process_cpu_seconds, resolution 1 µs"),
            "{summary}"
        );

        let (a, b) = (
            sample(5.0, 1.0, CpuSource::WholeSeconds),
            sample(15.0, 4.0, CpuSource::WholeSeconds),
        );
        let mut coarse = precise.clone();
        coarse.server = ServerSummary::from_samples(&[a, b], Some(a), Some(b), 10.0, 1);
        let summary = coarse.summary();
        assert!(
            summary.contains("process_cpu_seconds_total, resolution 1 s, ±10.00% of the window"),
            "{summary}"
        );
        assert!(summary.contains("fell back"), "{summary}");
        assert!(html(&coarse).contains("whole seconds"));
    }

    #[test]
    fn charts_escape_and_survive_empty_data() {
        assert!(line_chart("a<b", "%", &[]).contains("a&lt;b"));
        assert!(line_chart("x", "y", &[(0.0, 1.0), (1.0, 2.0)]).contains("polyline"));
        assert!(histogram_chart("x", "ms", &[0.0, 5.0, 10.0]).contains("rect"));
    }
}
