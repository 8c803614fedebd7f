//! What a load run found: per-endpoint results, percentiles (hdrhistogram), SLO verdicts, a
//! text summary, JSON and a self-contained HTML page with inline SVG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::bot::{BotError, BotStats};
use crate::floor::Floor;
use crate::metrics_scrape::{CpuSource, ServerSample};
use crate::spec::{Kind, Scenario, Shard};
use protocol::MediaKind;

/// What an endpoint did in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointResult {
    pub name: String,
    pub role: Role,
    /// The server URL it was sent to (`--url`; a cluster's node may have sent it on).
    #[serde(default)]
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

/// Every value of one measurement, as an HdrHistogram: thousandths of the unit, three
/// significant digits, up to 2^40 thousandths. The percentiles come from it, and the
/// histograms of several reports add up to the histogram of all their values: that is how
/// the parts of a split run merge (`loadtest merge`), into the percentiles one run of every
/// endpoint would have given, never an average of percentiles.
///
/// In JSON, `{"unit_scale": 1000, "significant_digits": 3, "counts": [[value, count], …]}`:
/// one pair per bucket that holds values, `value` (in thousandths) the highest the bucket
/// holds, so that recording it again fills the same bucket.
#[derive(Clone, PartialEq)]
pub struct Recorded(Histogram<u64>);

impl std::fmt::Debug for Recorded {
    /// The buckets that hold values, as in JSON: the histogram's own form lists every one of
    /// its tens of thousands of buckets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts: Vec<(u64, u64)> = self
            .0
            .iter_recorded()
            .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
            .collect();
        f.debug_struct("Recorded")
            .field("len", &self.0.len())
            .field("counts", &counts)
            .finish()
    }
}

/// Recorded values are thousandths of their unit.
const UNIT_SCALE: u32 = 1_000;
const SIGNIFICANT_DIGITS: u8 = 3;
const HIGHEST_RECORDED: u64 = 1 << 40;

/// A report's histograms by name: the name of the field whose distribution each gives
/// (`join_ms`, `keys.rekeyed_ms`, …).
pub type Histograms = BTreeMap<String, Recorded>;

/// Names of the key histograms.
const FIRST_DECRYPT: &str = "keys.first_decrypt_ms";
const FIRST_KEY: &str = "keys.first_key_ms";
pub const REKEYED: &str = "keys.rekeyed_ms";
pub const WRAPS: &str = "keys.wraps_per_rekey";
pub const WRAP_MS: &str = "keys.wrap_ms_per_rekey";

impl Default for Recorded {
    fn default() -> Self {
        // Fixed bounds: an auto-resizing histogram clamps `saturating_record` to its first
        // size, and histograms that add up must share their bounds.
        Self(
            Histogram::new_with_bounds(1, HIGHEST_RECORDED, SIGNIFICANT_DIGITS)
                .expect("1 to 2^40 with 3 significant digits are valid bounds"),
        )
    }
}

impl Recorded {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut recorded = Self::default();
        for value in values {
            recorded.record(value);
        }
        recorded
    }

    /// Records one value; anything but a finite non-negative number is left out.
    pub fn record(&mut self, value: f64) {
        if value.is_finite() && value >= 0.0 {
            self.0
                .saturating_record((value * f64::from(UNIT_SCALE)) as u64);
        }
    }

    /// How many values it holds.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `other`'s values.
    pub fn add(&mut self, other: &Recorded) -> Result<(), MergeError> {
        self.0
            .add(&other.0)
            .map_err(|err| MergeError::Histogram(format!("{err:?}")))
    }

    /// Its percentiles; `None` when it holds nothing.
    pub fn distribution(&self) -> Option<Distribution> {
        if self.0.is_empty() {
            return None;
        }
        let unit = |v: u64| v as f64 / f64::from(UNIT_SCALE);
        Some(Distribution {
            count: self.0.len(),
            min: unit(self.0.min()),
            p50: unit(self.0.value_at_quantile(0.50)),
            p95: unit(self.0.value_at_quantile(0.95)),
            p99: unit(self.0.value_at_quantile(0.99)),
            max: unit(self.0.max()),
            mean: self.0.mean() / f64::from(UNIT_SCALE),
        })
    }

    /// The `rank`th smallest value (from 1), to the histogram's precision.
    pub fn value_at_rank(&self, rank: u64) -> Option<f64> {
        let mut seen = 0;
        for bucket in self.0.iter_recorded() {
            seen += bucket.count_at_value();
            if seen >= rank {
                return Some(bucket.value_iterated_to() as f64 / f64::from(UNIT_SCALE));
            }
        }
        None
    }
}

/// [`Recorded`] as JSON.
#[derive(Serialize, Deserialize)]
struct RecordedJson {
    unit_scale: u32,
    significant_digits: u8,
    counts: Vec<(u64, u64)>,
}

impl Serialize for Recorded {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RecordedJson {
            unit_scale: UNIT_SCALE,
            significant_digits: SIGNIFICANT_DIGITS,
            counts: self
                .0
                .iter_recorded()
                .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
                .collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Recorded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = RecordedJson::deserialize(deserializer)?;
        if json.unit_scale != UNIT_SCALE || json.significant_digits != SIGNIFICANT_DIGITS {
            return Err(serde::de::Error::custom(format!(
                "a histogram of {} digits in 1/{} of the unit (this loadtest writes {SIGNIFICANT_DIGITS} in 1/{UNIT_SCALE})",
                json.significant_digits, json.unit_scale
            )));
        }
        let mut recorded = Self::default();
        for (value, count) in json.counts {
            // The top bucket's highest value may lie past the bound: the bound is in the
            // same bucket.
            recorded
                .0
                .record_n(value.min(HIGHEST_RECORDED), count)
                .map_err(|err| serde::de::Error::custom(format!("value {value}: {err:?}")))?;
        }
        Ok(recorded)
    }
}

/// Percentiles of one measurement over the endpoints that have it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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
    /// Records values with three significant digits, in thousandths of the unit
    /// ([`Recorded`]).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        Recorded::of(values).distribution()
    }
}

/// What the end-to-end key exchange cost in a run and how fast it was (`--e2ee`). The times
/// come from the generator, whose bots share one process and one clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSummary {
    /// The hold's length (everyone connected), in seconds.
    pub hold_s: f64,
    /// The time between the two scrapes the deltas below come from (taken as the hold
    /// started and ended), in seconds.
    pub window_s: Option<f64>,
    /// The metric the CPU figures come from, and its resolution in seconds: 1e-6 for
    /// `meet_process_cpu_seconds`; 1 for `process_cpu_seconds_total` (older servers), which
    /// alone makes a figure over a 10 s window scatter by ±10%.
    /// Read back from a report, it is found again from the resolution
    /// ([`ServerSummary::restore_cpu_metric`]): a borrowed name cannot outlive the text.
    #[serde(skip_deserializing)]
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

/// Core-µs per forwarded packet, from CPU (cores, or core-seconds) and forwarded packets over
/// the same time (per second, or in all); none when nothing was forwarded.
fn core_us_per_packet(cpu: Option<f64>, forwarded: Option<f64>) -> Option<f64> {
    cpu.zip(forwarded)
        .filter(|(_, f)| *f > 0.0)
        .map(|(c, f)| c * 1e6 / f)
}

/// What each subscriber added to the server's memory, from the baseline to the peak.
fn bytes_per_subscriber(baseline: Option<f64>, peak: Option<f64>, subscribers: u64) -> Option<f64> {
    baseline
        .zip(peak)
        .filter(|_| subscribers > 0)
        .map(|(b, p)| (p - b) / subscribers as f64)
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
            core_us_per_forwarded_packet: core_us_per_packet(cpu, forwarded),
            rss_baseline_bytes: baseline,
            rss_peak_bytes: peak,
            rss_per_subscriber_bytes: bytes_per_subscriber(baseline, peak, subscribers),
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

    /// Sets `cpu_metric` again after reading a report: the metric of the resolution given.
    pub fn restore_cpu_metric(&mut self) {
        self.cpu_metric = [CpuSource::Precise, CpuSource::WholeSeconds]
            .into_iter()
            .find(|source| Some(source.resolution_s()) == self.cpu_resolution_s)
            .map(CpuSource::metric);
    }

    /// Several nodes' figures taken together, for when no one scrape saw them all (the parts
    /// of a split run that each scraped other nodes): rates, counts, growths and peaks add up
    /// (a sum of peaks bounds the peak of the sum from above), each figure only where every
    /// node has it; the CPU metric is the coarser; the cost per forwarded packet and the
    /// memory per subscriber (of `subscribers`) come from the sums.
    pub fn sum(nodes: &[ServerSummary], subscribers: u64) -> Self {
        let total = |f: fn(&ServerSummary) -> Option<f64>| -> Option<f64> {
            if nodes.is_empty() {
                return None;
            }
            nodes.iter().map(f).sum()
        };
        let coarse = nodes
            .iter()
            .any(|n| n.cpu_metric == Some(CpuSource::WholeSeconds.metric()));
        let cpu_source = if nodes.is_empty() || nodes.iter().any(|n| n.cpu_metric.is_none()) {
            None
        } else if coarse {
            Some(CpuSource::WholeSeconds)
        } else {
            Some(CpuSource::Precise)
        };
        let cpu_cores = total(|n| n.cpu_cores);
        let forwarded = total(|n| n.forwarded_packets_per_s);
        let baseline = total(|n| n.rss_baseline_bytes);
        let peak = total(|n| n.rss_peak_bytes);
        Self {
            hold_s: nodes.iter().map(|n| n.hold_s).fold(0.0, f64::max),
            window_s: nodes.iter().filter_map(|n| n.window_s).reduce(f64::min),
            cpu_metric: cpu_source.map(CpuSource::metric),
            cpu_resolution_s: cpu_source.map(CpuSource::resolution_s),
            cpu_cores,
            forwarded_packets_per_s: forwarded,
            core_us_per_forwarded_packet: core_us_per_packet(cpu_cores, forwarded),
            rss_baseline_bytes: baseline,
            rss_peak_bytes: peak,
            rss_per_subscriber_bytes: bytes_per_subscriber(baseline, peak, subscribers),
            dropped_packets: total(|n| n.dropped_packets),
            nacks: total(|n| n.nacks),
            rss_growth_bytes: total(|n| n.rss_growth_bytes),
            fd_growth: total(|n| n.fd_growth),
            task_growth: total(|n| n.task_growth),
            open_fds_peak: total(|n| n.open_fds_peak),
            tasks_peak: total(|n| n.tasks_peak),
            key_messages_in_per_s: total(|n| n.key_messages_in_per_s),
            key_messages_out_per_s: total(|n| n.key_messages_out_per_s),
            key_bytes_in_per_s: total(|n| n.key_bytes_in_per_s),
            key_bytes_out_per_s: total(|n| n.key_bytes_out_per_s),
        }
    }
}

/// One server node of a run: the endpoints sent to it and its own figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloCheck {
    pub name: String,
    pub limit: f64,
    pub actual: Option<f64>,
    pub passed: bool,
}

/// What went wrong in a run beyond its measurements. Any of these fails the run whatever the
/// SLOs say: the measurements of a run whose server died or whose endpoints dropped out
/// describe a run that did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// Every SLO met and no [`RunError`].
    pub passed: bool,
    /// The summary's first line: `PASS: …`, or `FAIL: ` and the first reason.
    pub verdict: String,
    /// Why the run failed outright, most serious first (connection losses, the server's
    /// metrics, stopped media, the deadline).
    pub errors: Vec<RunError>,
    pub scenario: Scenario,
    /// The parts of a split run this report merges (`loadtest merge`); empty for one
    /// process's own report.
    #[serde(default)]
    pub merged_parts: Vec<Shard>,
    pub started_unix_s: u64,
    /// The same, to the millisecond.
    #[serde(default)]
    pub started_unix_ms: u64,
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
    #[serde(default)]
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
    /// Every measurement's values, by the name of the field it gives ([`Recorded`]): what
    /// `loadtest merge` adds up.
    #[serde(default)]
    pub histograms: Histograms,
}

/// What a report is built from.
struct Parts {
    scenario: Scenario,
    started_unix_ms: u64,
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
    /// Endpoints connected times seconds, for the generator's cost per endpoint.
    endpoint_seconds: f64,
    histograms: Histograms,
}

/// The endpoints' measurements as histograms, each over the endpoints it concerns.
fn endpoint_histograms(scenario: &Scenario, endpoints: &[EndpointResult]) -> Histograms {
    let joined = || endpoints.iter().filter(|e| e.joined);
    let receivers = || joined().filter(|e| e.expects_media(scenario));
    let of = |f: fn(&EndpointResult) -> Option<f64>| Recorded::of(joined().filter_map(f));
    [
        ("join_ms", of(|e| e.join_ms)),
        ("signaling_ms", of(|e| e.signaling_ms)),
        (
            "first_media_ms",
            Recorded::of(receivers().filter_map(|e| e.first_media_ms)),
        ),
        (
            "first_keyframe_ms",
            Recorded::of(receivers().filter_map(|e| e.first_keyframe_ms)),
        ),
        ("loss_pct", of(|e| e.loss_pct)),
        ("audio_jitter_ms", of(|e| e.audio_jitter_ms)),
        ("video_jitter_ms", of(|e| e.video_jitter_ms)),
        ("rtt_ms", of(|e| e.rtt_ms)),
        ("rx_kbps", of(|e| e.rx_kbps)),
    ]
    .into_iter()
    .filter(|(_, recorded)| !recorded.is_empty())
    .map(|(name, recorded)| (name.to_string(), recorded))
    .collect()
}

/// Endpoints connected times seconds over a timeline.
fn endpoint_seconds(timeline: &[TimelineSample]) -> f64 {
    timeline
        .windows(2)
        .map(|w| (w[1].t_s - w[0].t_s) * w[1].connected as f64)
        .sum()
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
        let histograms = endpoint_histograms(&scenario, &endpoints);
        Self::build(Parts {
            endpoint_seconds: endpoint_seconds(&timeline),
            scenario,
            started_unix_ms: started_unix_s.saturating_mul(1_000),
            elapsed_s,
            ramp_s,
            hold_s,
            endpoints,
            failures,
            run_errors,
            timeline,
            server_timeline,
            server,
            generator_cpu_s,
            histograms,
        })
    }

    /// The report of `parts`: the endpoints' losses and counts from the endpoints, their
    /// percentiles from the histograms, then the SLOs and the verdict.
    fn build(parts: Parts) -> Self {
        let Parts {
            scenario,
            started_unix_ms,
            elapsed_s,
            ramp_s,
            hold_s,
            endpoints,
            failures,
            run_errors,
            timeline,
            server_timeline,
            server,
            generator_cpu_s,
            endpoint_seconds,
            histograms,
        } = parts;
        let joined: Vec<&EndpointResult> = endpoints.iter().filter(|e| e.joined).collect();
        let dist = |name: &str| histograms.get(name).and_then(Recorded::distribution);
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
        let join_ms = dist("join_ms");
        let first_keyframe_ms = dist("first_keyframe_ms");

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
            // The ramp joined this process's receivers; churned replacements came later.
            join_rate_achieved: if ramp_s > 0.0 {
                f64::from(scenario.share().1) / ramp_s
            } else {
                0.0
            },
            endpoints_total: endpoints.len(),
            endpoints_joined: joined.len(),
            endpoints_failed,
            join_ms,
            signaling_ms: dist("signaling_ms"),
            first_media_ms: dist("first_media_ms"),
            first_keyframe_ms,
            loss_pct: dist("loss_pct"),
            loss_pct_total,
            audio_jitter_ms: dist("audio_jitter_ms"),
            video_jitter_ms: dist("video_jitter_ms"),
            rtt_ms: dist("rtt_ms"),
            rx_kbps: dist("rx_kbps"),
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
            merged_parts: Vec::new(),
            started_unix_s: started_unix_ms / 1_000,
            started_unix_ms,
            elapsed_s,
            ramp_s,
            settle_s: 0.0,
            hold_s,
            timeline,
            server_timeline,
            endpoints,
            histograms,
        }
    }

    /// Adds what the key exchange cost (`--e2ee`), with its SLO checks. `recorded`: the
    /// departures' and rekeys' histograms ([`crate::rekey::measure`]).
    pub fn with_keys(mut self, keys: KeyReport, recorded: Histograms) -> Self {
        let receivers = self
            .endpoints
            .iter()
            .filter(|e| e.joined && e.role != Role::Presenter);
        let first_decrypt = Recorded::of(receivers.clone().filter_map(|e| e.first_decrypted_ms));
        let first_key = Recorded::of(receivers.filter_map(|e| e.first_key_ms));
        for (name, values) in [(FIRST_DECRYPT, first_decrypt), (FIRST_KEY, first_key)]
            .into_iter()
            .map(|(name, values)| (name.to_string(), values))
            .chain(recorded)
        {
            if !values.is_empty() {
                self.histograms.insert(name, values);
            }
        }
        self.apply_keys(keys)
    }

    /// Sets the key figures: their distributions from the report's histograms, what the
    /// endpoints lost or refused, and the key SLOs, then the verdict again.
    /// `keys.rekeyed_p95_ms` is taken as given.
    fn apply_keys(mut self, mut keys: KeyReport) -> Self {
        let dist = |name: &str| self.histograms.get(name).and_then(Recorded::distribution);
        keys.first_decrypt_ms = dist(FIRST_DECRYPT);
        keys.first_key_ms = dist(FIRST_KEY);
        keys.rekeyed_ms = dist(REKEYED);
        keys.wraps_per_rekey = dist(WRAPS);
        keys.wrap_ms_per_rekey = dist(WRAP_MS);
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

    /// When the run started, to the millisecond.
    pub fn with_started_unix_ms(mut self, started_unix_ms: u64) -> Self {
        self.started_unix_ms = started_unix_ms;
        self.started_unix_s = started_unix_ms / 1_000;
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
        if let Some(shard) = s.shard {
            let _ = writeln!(
                out,
                "part {shard} of a split run (`loadtest merge` makes one report of every part's)"
            );
        }
        if !self.merged_parts.is_empty() {
            let parts: Vec<String> = self.merged_parts.iter().map(Shard::to_string).collect();
            let _ = writeln!(
                out,
                "merged from parts {}: percentiles from their histograms added up",
                parts.join(", ")
            );
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

/// Why reports do not merge.
#[derive(Debug, Error)]
pub enum MergeError {
    #[error("no report to merge")]
    Empty,
    #[error("report {0} ran a whole run (no --shard): only the parts of one split run merge")]
    NotAPart(usize),
    #[error("the reports are not parts of one run: {0}")]
    DifferentRuns(String),
    #[error("part {0} comes twice")]
    Twice(Shard),
    #[error("part {0} is missing")]
    Missing(Shard),
    #[error("histograms do not add up: {0}")]
    Histogram(String),
}

/// One report of the parts of a split run (`--shard K/N`, one per process): every part's
/// endpoints, errors and counts together, every percentile from the parts' histograms added
/// up (as one process running every endpoint would have measured them, never an average of
/// the parts' percentiles), the SLOs checked again on those. Times in the run are from the
/// earliest part's start; the ramp and settle are the longest part's, the hold the shortest.
/// The servers' figures are those of the first part that scraped every node (with the same
/// `--url`s, part 1), else each node's from the first part that scraped it, added up. In an
/// encrypted churn, departure → rekeyed is measured in the part that holds the senders (part
/// 1, with the presenters) against its own receivers: the other parts' departures are counted
/// but not measured, since no process sees both a sender's rekeys and their receivers' keys.
pub fn merge(mut reports: Vec<RunReport>) -> Result<RunReport, MergeError> {
    if reports.is_empty() {
        return Err(MergeError::Empty);
    }
    for report in &mut reports {
        report.server.restore_cpu_metric();
        for node in &mut report.nodes {
            node.server.restore_cpu_metric();
        }
    }
    // One process's whole run stands for itself; parts must all be there.
    if reports.len() > 1 || reports[0].scenario.shard.is_some() {
        check_parts(&mut reports)?;
    }
    let mut scenario = reports[0].scenario.clone();
    scenario.shard = None;
    let parts: Vec<Shard> = reports.iter().filter_map(|r| r.scenario.shard).collect();
    let label = |report: &RunReport| match (reports.len(), report.scenario.shard) {
        (2.., Some(shard)) => format!("part {shard}: "),
        _ => String::new(),
    };

    let mut histograms = Histograms::new();
    for report in &reports {
        for (name, recorded) in &report.histograms {
            histograms.entry(name.clone()).or_default().add(recorded)?;
        }
    }
    let start_ms = |r: &RunReport| {
        if r.started_unix_ms > 0 {
            r.started_unix_ms
        } else {
            r.started_unix_s.saturating_mul(1_000)
        }
    };
    let started_unix_ms = reports.iter().map(start_ms).min().unwrap_or_default();
    let offset_s = |r: &RunReport| (start_ms(r) - started_unix_ms) as f64 / 1_000.0;
    let elapsed_s = reports
        .iter()
        .map(|r| offset_s(r) + r.elapsed_s)
        .fold(0.0, f64::max);
    let longest = |f: fn(&RunReport) -> f64| reports.iter().map(f).fold(0.0, f64::max);
    let hold_s = reports
        .iter()
        .map(|r| r.hold_s)
        .reduce(f64::min)
        .unwrap_or_default();
    // The endpoints' own losses are found again in the endpoints; the parts' other errors
    // (their scrapes, their deadlines) are kept, named after their part.
    let run_errors = reports
        .iter()
        .flat_map(|r| {
            r.errors
                .iter()
                .filter(|e| {
                    !matches!(
                        e.kind,
                        RunErrorKind::ConnectionLost | RunErrorKind::MediaStopped
                    )
                })
                .map(move |e| RunError {
                    t_s: e.t_s.map(|t| t + offset_s(r)),
                    message: format!("{}{}", label(r), e.message),
                    ..e.clone()
                })
        })
        .collect();
    let failures = reports
        .iter()
        .flat_map(|r| r.failures.iter().map(move |f| format!("{}{f}", label(r))))
        .collect();
    let generator_cpu_s = reports
        .iter()
        .map(|r| r.generator_cpu_s)
        .sum::<Option<f64>>();
    let endpoint_seconds = reports.iter().map(|r| endpoint_seconds(&r.timeline)).sum();
    let servers = merged_servers(&reports, &scenario);
    let timeline = merged_timeline(&reports, started_unix_ms, servers.source);
    let floor = reports.iter().find_map(|r| r.floor.clone());
    let settle_s = longest(|r| r.settle_s);
    let ramp_s = longest(|r| r.ramp_s);
    let keys = merged_keys(&reports, &histograms);
    let endpoints = reports.into_iter().flat_map(|r| r.endpoints).collect();
    let mut merged = RunReport::build(Parts {
        scenario,
        started_unix_ms,
        elapsed_s,
        ramp_s,
        hold_s,
        endpoints,
        failures,
        run_errors,
        timeline,
        server_timeline: servers.timeline,
        server: servers.server,
        generator_cpu_s,
        endpoint_seconds,
        histograms,
    })
    .with_settle(settle_s)
    .with_nodes(servers.nodes)
    .with_floor(floor);
    merged.merged_parts = parts;
    Ok(match keys {
        Some(keys) => merged.apply_keys(keys),
        None => merged,
    })
}

/// Checks that `reports` are every part of one split run, and puts them in order.
fn check_parts(reports: &mut [RunReport]) -> Result<(), MergeError> {
    for (n, report) in reports.iter().enumerate() {
        if report.scenario.shard.is_none() {
            return Err(MergeError::NotAPart(n + 1));
        }
    }
    reports.sort_by_key(|r| r.scenario.shard);
    let whole = |r: &RunReport| Scenario {
        shard: None,
        ..r.scenario.clone()
    };
    let first = &reports[0];
    let count = first.scenario.shard.map_or(1, |s| s.count);
    for report in &reports[1..] {
        if report.scenario.shard.map(|s| s.count) != Some(count) {
            return Err(MergeError::DifferentRuns(format!(
                "parts of {count} and parts of {}",
                report.scenario.shard.map_or(1, |s| s.count)
            )));
        }
        if whole(report) != whole(first) {
            return Err(MergeError::DifferentRuns(format!(
                "part {} ran another scenario than part {} (or started at another time)",
                report
                    .scenario
                    .shard
                    .map_or(String::new(), |s| s.to_string()),
                first
                    .scenario
                    .shard
                    .map_or(String::new(), |s| s.to_string()),
            )));
        }
    }
    for pair in reports.windows(2) {
        if pair[0].scenario.shard == pair[1].scenario.shard
            && let Some(shard) = pair[0].scenario.shard
        {
            return Err(MergeError::Twice(shard));
        }
    }
    for index in 1..=count {
        let shard = Shard { index, count };
        if !reports.iter().any(|r| r.scenario.shard == Some(shard)) {
            return Err(MergeError::Missing(shard));
        }
    }
    Ok(())
}

/// The servers as the parts of a split run saw them together.
struct MergedServers {
    server: ServerSummary,
    timeline: Vec<(f64, ServerSample)>,
    nodes: Vec<NodeReport>,
    /// The report they come from, when one part scraped every node.
    source: Option<usize>,
}

/// The servers' figures of merged parts, their timeline and every node.
fn merged_servers(reports: &[RunReport], scenario: &Scenario) -> MergedServers {
    // Every node any part sent endpoints to, the endpoints of every part, the figures of the
    // first part that scraped it.
    let mut nodes: Vec<NodeReport> = Vec::new();
    for report in reports {
        for node in &report.nodes {
            match nodes.iter_mut().find(|n| n.url == node.url) {
                Some(known) => {
                    known.endpoints += node.endpoints;
                    if known.metrics_url.is_none() && node.metrics_url.is_some() {
                        known.metrics_url.clone_from(&node.metrics_url);
                        known.participants_peak = node.participants_peak;
                        known.server = node.server;
                    }
                }
                None => nodes.push(node.clone()),
            }
        }
    }
    let scraped: Vec<&str> = nodes
        .iter()
        .filter(|n| n.metrics_url.is_some())
        .map(|n| n.url.as_str())
        .collect();
    let source = reports.iter().position(|r| {
        !r.server_timeline.is_empty()
            && scraped.iter().all(|url| {
                r.nodes
                    .iter()
                    .any(|n| n.url == *url && n.metrics_url.is_some())
            })
    });
    match source {
        Some(index) => {
            let report = &reports[index];
            // One part saw every node: its figures, each node's included, are one view.
            for node in &mut nodes {
                if let Some(own) = report.nodes.iter().find(|n| n.url == node.url) {
                    node.participants_peak = own.participants_peak;
                    node.server = own.server;
                }
            }
            MergedServers {
                server: report.server,
                timeline: report.server_timeline.clone(),
                nodes,
                source: Some(index),
            }
        }
        None => {
            let figures: Vec<ServerSummary> = nodes
                .iter()
                .filter(|n| n.metrics_url.is_some())
                .map(|n| n.server)
                .collect();
            let receivers = match scenario.kind {
                Kind::Meeting => scenario.participants,
                Kind::Broadcast | Kind::Churn => scenario.viewers,
            };
            let server = if figures.is_empty() {
                reports.first().map(|r| r.server).unwrap_or_default()
            } else {
                ServerSummary::sum(&figures, u64::from(receivers))
            };
            MergedServers {
                server,
                timeline: Vec::new(),
                nodes,
                source: None,
            }
        }
    }
}

/// The parts' timelines on the earliest start's clock, one point a second: endpoints and
/// bitrate added up, loss weighted by bitrate, the servers' figures from `server_source`.
fn merged_timeline(
    reports: &[RunReport],
    started_unix_ms: u64,
    server_source: Option<usize>,
) -> Vec<TimelineSample> {
    let mut seconds: BTreeMap<i64, Vec<Option<TimelineSample>>> = BTreeMap::new();
    for (index, report) in reports.iter().enumerate() {
        let start_ms = if report.started_unix_ms > 0 {
            report.started_unix_ms
        } else {
            report.started_unix_s.saturating_mul(1_000)
        };
        let offset_s = start_ms.saturating_sub(started_unix_ms) as f64 / 1_000.0;
        for sample in &report.timeline {
            // A part samples about once a second: where two of its points round to the same
            // second, the later stands.
            let second = (offset_s + sample.t_s).round() as i64;
            seconds
                .entry(second)
                .or_insert_with(|| vec![None; reports.len()])[index] = Some(*sample);
        }
    }
    seconds
        .into_iter()
        .map(|(second, samples)| {
            let present = || samples.iter().flatten();
            let rx_mbps: f64 = present().map(|s| s.rx_mbps).sum();
            let loss_pct = if rx_mbps > 0.0 {
                present().map(|s| s.loss_pct * s.rx_mbps).sum::<f64>() / rx_mbps
            } else {
                present().map(|s| s.loss_pct).fold(0.0, f64::max)
            };
            let server = server_source.and_then(|index| samples[index]);
            TimelineSample {
                t_s: second as f64,
                connected: present().map(|s| s.connected).sum(),
                rx_mbps,
                loss_pct,
                server_cpu_seconds: server.and_then(|s| s.server_cpu_seconds),
                server_rss_bytes: server.and_then(|s| s.server_rss_bytes),
            }
        })
        .collect()
}

/// The parts' key counters added up, with the 95th percentile of departure → rekeyed over
/// every measured departure from the added histograms (those never rekeyed at the top).
fn merged_keys(reports: &[RunReport], histograms: &Histograms) -> Option<KeyReport> {
    let parts: Vec<&KeyReport> = reports.iter().filter_map(|r| r.keys.as_ref()).collect();
    if parts.is_empty() {
        return None;
    }
    let sum = |f: fn(&KeyReport) -> u64| parts.iter().map(|k| f(k)).sum::<u64>();
    let never = sum(|k| k.departures_never_rekeyed);
    let rekeyed = histograms.get(REKEYED);
    Some(KeyReport {
        receivers_by_frames: sum(|k| k.receivers_by_frames),
        receivers_by_key: sum(|k| k.receivers_by_key),
        departures: sum(|k| k.departures),
        rekeyed_p95_ms: p95_with_misses(rekeyed, never),
        departures_never_rekeyed: never,
        departures_pending_at_end: sum(|k| k.departures_pending_at_end),
        rekeys: sum(|k| k.rekeys),
        ..KeyReport::default()
    })
}

/// The 95th percentile of `measured` values and `misses` beyond any value: `None` when more
/// than 5% missed or nothing was measured.
pub fn p95_with_misses(measured: Option<&Recorded>, misses: u64) -> Option<f64> {
    let count = measured.map_or(0, Recorded::len) + misses;
    if count == 0 || misses * 20 > count {
        return None;
    }
    measured?.value_at_rank((count * 95).div_ceil(100).max(1))
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
    use crate::spec::Slo;

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

    /// Values spread over three orders of magnitude, the same for the same seed.
    fn values(seed: u64, count: usize, scale: f64) -> Vec<f64> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 33) % 100_000) as f64 / 100.0 * scale
            })
            .collect()
    }

    /// `count` viewers named from `first`, each with its own measurements; every seventh
    /// lost packets, and the one at `lost` (if any) lost its connection.
    fn viewers(first: usize, count: usize, scale: f64, lost: Option<usize>) -> Vec<EndpointResult> {
        let join = values(first as u64, count, scale);
        let media = values(first as u64 + 1, count, scale * 3.0);
        let rtt = values(first as u64 + 2, count, 0.05 * scale);
        (0..count)
            .map(|i| {
                let mut endpoint = viewer(&format!("viewer-{}", first + i), None);
                endpoint.join_ms = Some(join[i]);
                endpoint.signaling_ms = Some(join[i] / 3.0);
                endpoint.first_media_ms = Some(join[i] + media[i]);
                endpoint.first_keyframe_ms = Some(join[i] + media[i] + 5.0);
                endpoint.rtt_ms = Some(rtt[i]);
                endpoint.rx_kbps = Some(400.0 + rtt[i]);
                endpoint.frames_decrypted = 300;
                endpoint.first_decrypted_ms = Some(join[i] + media[i] + 9.0);
                endpoint.first_key_ms = Some(join[i] + 2.0);
                if i % 7 == 0 {
                    endpoint.packets_received = 990;
                }
                endpoint.loss_pct = Some(
                    (endpoint.packets_expected - endpoint.packets_received) as f64 * 100.0
                        / endpoint.packets_expected as f64,
                );
                if lost == Some(first + i) {
                    endpoint.connection_lost = true;
                    endpoint.lost_at_s = Some(9.0);
                    endpoint.error = Some("websocket: closed".into());
                }
                endpoint
            })
            .collect()
    }

    fn part_of(
        scenario: &Scenario,
        shard: Option<Shard>,
        endpoints: Vec<EndpointResult>,
        rekeyed: &[f64],
        never: u64,
    ) -> RunReport {
        let report = RunReport::new(
            Scenario {
                shard,
                ..scenario.clone()
            },
            1_700_000_000,
            30.0,
            2.0,
            15.0,
            endpoints,
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            ServerSummary::default(),
            None,
        );
        let recorded = Histograms::from([(REKEYED.to_string(), Recorded::of(rekeyed.to_vec()))]);
        let keys = KeyReport {
            departures: rekeyed.len() as u64 + never,
            departures_never_rekeyed: never,
            rekeyed_p95_ms: p95_with_misses(recorded.get(REKEYED), never),
            ..KeyReport::default()
        };
        report.with_keys(keys, recorded)
    }

    /// Two parts' reports, written as JSON and read back, merge into the report that one
    /// process running both parts' endpoints gives: the same counts, the same percentiles
    /// (from the histograms added up, not an average of the parts' percentiles), the same
    /// errors, SLOs and verdict.
    #[test]
    fn merged_parts_equal_one_run_of_all_their_endpoints() {
        let scenario = Scenario {
            viewers: 100,
            e2ee: true,
            slo: Slo {
                join_p95_ms: Some(600.0),
                rekeyed_p95_ms: Some(2_000.0),
                ..Slo::default()
            },
            ..Scenario::default()
        };
        let (fast, slow) = (viewers(0, 40, 1.0, None), viewers(40, 60, 8.0, Some(55)));
        let (rekeyed_fast, rekeyed_slow) = (values(7, 30, 2.0), values(8, 50, 20.0));
        let part = |index, endpoints: &[EndpointResult], rekeyed: &[f64], never| {
            let report = part_of(
                &scenario,
                Some(Shard { index, count: 2 }),
                endpoints.to_vec(),
                rekeyed,
                never,
            );
            let json = serde_json::to_string(&report).expect("serializes");
            serde_json::from_str::<RunReport>(&json).expect("reads back")
        };
        // Given in the wrong order: the parts are put in order.
        let merged = merge(vec![
            part(2, &slow, &rekeyed_slow, 1),
            part(1, &fast, &rekeyed_fast, 0),
        ])
        .expect("the parts merge");
        let all: Vec<EndpointResult> = fast.iter().chain(&slow).cloned().collect();
        let rekeyed_all: Vec<f64> = rekeyed_fast.iter().chain(&rekeyed_slow).copied().collect();
        let one = part_of(&scenario, None, all, &rekeyed_all, 1);

        assert_eq!(merged.scenario, scenario);
        assert_eq!(
            merged.merged_parts,
            [Shard { index: 1, count: 2 }, Shard { index: 2, count: 2 }]
        );
        assert_eq!(merged.histograms, one.histograms);
        for (name, merged_d, one_d) in [
            ("join_ms", merged.join_ms, one.join_ms),
            ("signaling_ms", merged.signaling_ms, one.signaling_ms),
            ("first_media_ms", merged.first_media_ms, one.first_media_ms),
            (
                "first_keyframe_ms",
                merged.first_keyframe_ms,
                one.first_keyframe_ms,
            ),
            ("loss_pct", merged.loss_pct, one.loss_pct),
            ("rtt_ms", merged.rtt_ms, one.rtt_ms),
            ("rx_kbps", merged.rx_kbps, one.rx_kbps),
        ] {
            assert!(merged_d.is_some(), "{name}");
            assert_eq!(merged_d, one_d, "{name}");
        }
        let (merged_keys, one_keys) = (
            merged.keys.clone().expect("keys"),
            one.keys.clone().expect("keys"),
        );
        assert_eq!(merged_keys, one_keys);
        assert_eq!(merged_keys.rekeyed_ms.map(|d| d.count), Some(80));
        assert_eq!(merged_keys.departures, 81);
        assert_eq!(
            (
                merged.endpoints_total,
                merged.endpoints_joined,
                merged.endpoints_failed
            ),
            (100, 100, 1)
        );
        assert_eq!(merged.endpoints_failed, one.endpoints_failed);
        assert_eq!(merged.loss_pct_total, one.loss_pct_total);
        assert_eq!(merged.errors, one.errors);
        assert_eq!(merged.slo, one.slo);
        assert_eq!((merged.passed, &merged.verdict), (one.passed, &one.verdict));
        assert!(!merged.passed, "{}", merged.verdict);

        // Averaging the parts' percentiles would not have given these.
        let (p1, p2) = (
            part(1, &fast, &rekeyed_fast, 0),
            part(2, &slow, &rekeyed_slow, 1),
        );
        let p95 = |r: &RunReport| r.join_ms.map(|d| d.p95).unwrap_or_default();
        assert_ne!(p95(&merged), (p95(&p1) + p95(&p2)) / 2.0);
        assert_eq!(
            merged.join_ms.map(|d| d.count),
            Some(p1.join_ms.map_or(0, |d| d.count) + p2.join_ms.map_or(0, |d| d.count))
        );
        let summary = merged.summary();
        assert!(summary.contains("merged from parts 1/2, 2/2"), "{summary}");
    }

    /// Only every part of one split run merges, each once.
    #[test]
    fn reports_of_other_runs_or_missing_parts_do_not_merge() {
        let scenario = Scenario::default();
        let part = |shard: Option<Shard>, scenario: &Scenario| {
            part_of(scenario, shard, viewers(0, 3, 1.0, None), &[], 0)
        };
        let shard = |index, count| Some(Shard { index, count });
        assert!(matches!(merge(Vec::new()), Err(MergeError::Empty)));
        assert!(matches!(
            merge(vec![part(shard(1, 2), &scenario), part(None, &scenario)]),
            Err(MergeError::NotAPart(2))
        ));
        assert!(matches!(
            merge(vec![
                part(shard(1, 2), &scenario),
                part(shard(1, 2), &scenario)
            ]),
            Err(MergeError::Twice(_))
        ));
        assert!(matches!(
            merge(vec![
                part(shard(1, 3), &scenario),
                part(shard(2, 3), &scenario)
            ]),
            Err(MergeError::Missing(Shard { index: 3, count: 3 }))
        ));
        let other = Scenario {
            viewers: 51,
            ..scenario.clone()
        };
        assert!(matches!(
            merge(vec![
                part(shard(1, 2), &scenario),
                part(shard(2, 2), &other)
            ]),
            Err(MergeError::DifferentRuns(_))
        ));
        assert!(matches!(
            merge(vec![
                part(shard(1, 2), &scenario),
                part(shard(2, 3), &scenario)
            ]),
            Err(MergeError::DifferentRuns(_))
        ));
        assert!(matches!(
            merge(vec![part(shard(2, 2), &scenario)]),
            Err(MergeError::Missing(Shard { index: 1, count: 2 }))
        ));
        // One process's whole run alone stands for itself.
        let alone = merge(vec![part(None, &scenario)]).expect("one report");
        assert_eq!(alone.endpoints_total, 3);
    }

    /// Parts that each scraped another node: every node's figures from its part, the
    /// servers' figures their sum. Parts that scraped every node: the first one's figures.
    #[test]
    fn merged_servers_are_every_node_once() {
        let scenario = Scenario::default();
        let node = |url: &str, cores: f64, forwarded: f64| NodeReport {
            url: url.into(),
            metrics_url: Some(format!("{url}/metrics")),
            endpoints: 2,
            participants_peak: Some(4.0),
            server: ServerSummary {
                cpu_metric: Some(CpuSource::Precise.metric()),
                cpu_resolution_s: Some(1e-6),
                cpu_cores: Some(cores),
                forwarded_packets_per_s: Some(forwarded),
                ..ServerSummary::default()
            },
        };
        let part = |index, nodes: Vec<NodeReport>| {
            let mut report = part_of(
                &scenario,
                Some(Shard { index, count: 2 }),
                viewers(index as usize * 10, 2, 1.0, None),
                &[],
                0,
            )
            .with_nodes(nodes);
            report.server = report.nodes[0].server;
            report.server_timeline = vec![(1.0, ServerSample::default())];
            // As read back from a report, which leaves the metric's name out.
            report.server.cpu_metric = None;
            report
        };
        let merged = merge(vec![
            part(1, vec![node("wss://a", 0.5, 1_000.0)]),
            part(2, vec![node("wss://b", 1.5, 3_000.0)]),
        ])
        .expect("merges");
        assert_eq!(merged.nodes.len(), 2);
        assert_eq!(merged.nodes[1].server.cpu_cores, Some(1.5));
        assert_eq!(merged.server.cpu_cores, Some(2.0));
        assert_eq!(merged.server.forwarded_packets_per_s, Some(4_000.0));
        assert_eq!(merged.server.core_us_per_forwarded_packet, Some(500.0));
        assert_eq!(merged.server.cpu_metric, Some("meet_process_cpu_seconds"));
        assert!(merged.server_timeline.is_empty());

        let both = || vec![node("wss://a", 0.5, 1_000.0), node("wss://b", 1.5, 3_000.0)];
        let mut second = part(2, both());
        second.server.cpu_cores = Some(9.0);
        let merged = merge(vec![part(1, both()), second]).expect("merges");
        assert_eq!(merged.server.cpu_cores, Some(0.5));
        assert_eq!(merged.server_timeline.len(), 1);
        assert_eq!(merged.nodes.iter().map(|n| n.endpoints).sum::<u64>(), 8);
    }

    /// A histogram written as JSON reads back bucket for bucket, and its percentiles with it.
    #[test]
    fn histograms_read_back_exactly() {
        let mut recorded = Recorded::of(values(3, 500, 40.0));
        recorded.record(0.0);
        recorded.record(1e12);
        let json = serde_json::to_value(&recorded).expect("serializes");
        assert_eq!(json["unit_scale"], 1_000);
        assert_eq!(json["significant_digits"], 3);
        let back: Recorded = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, recorded);
        assert_eq!(back.distribution(), recorded.distribution());
        assert_eq!(back.len(), 502);
        let other = serde_json::json!({"unit_scale": 1, "significant_digits": 3, "counts": []});
        assert!(serde_json::from_value::<Recorded>(other).is_err());
    }

    /// The 95th percentile with misses counted beyond every value, to the histogram's
    /// three significant digits.
    #[test]
    fn the_p95_counts_misses_at_the_top() {
        let near = |value: Option<f64>, expected: f64| {
            value.is_some_and(|v| (v - expected).abs() <= expected * 1e-3)
        };
        let measured = Recorded::of((1..=19).map(f64::from));
        // 20 departures, one never rekeyed: the 19th of 20 is the slowest rekeyed one.
        assert!(near(p95_with_misses(Some(&measured), 1), 19.0));
        assert!(near(p95_with_misses(Some(&measured), 0), 19.0));
        // Two in 21 missed: more than 5%.
        assert_eq!(p95_with_misses(Some(&measured), 2), None);
        let many = Recorded::of((1..=100).map(f64::from));
        assert_eq!(
            p95_with_misses(Some(&many), 0),
            many.distribution().map(|d| d.p95)
        );
        assert!(near(p95_with_misses(Some(&many), 0), 95.0));
        assert!(near(p95_with_misses(Some(&many), 5), 100.0));
        assert_eq!(p95_with_misses(None, 0), None);
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
