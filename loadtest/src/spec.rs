//! What a load run is: its shape, its size and pace, and what counts as success, read from
//! flags or a TOML file and checked against the hard caps. The runner ([`crate::scenario`])
//! and the report ([`crate::report`]) both read it; neither is needed to describe a run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Most endpoints one run may connect.
pub const MAX_ENDPOINTS: u32 = 5_000;
/// Longest steady phase of one run: long enough for a soak test (`loadtest/soak.sh`, one
/// hour by default).
pub const MAX_DURATION_S: f64 = 4.0 * 3_600.0;
/// Fastest join rate.
pub const MAX_JOIN_RATE: f64 = 1_000.0;
/// Most processes one run may be split over.
pub const MAX_SHARDS: u32 = 64;

/// A scenario that cannot run as written.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("invalid scenario: {0}")]
    Invalid(String),
    #[error("scenario file: {0}")]
    File(String),
}

/// The shape of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// 1–3 presenters send audio and video to viewers who send nothing.
    Broadcast,
    /// Every participant publishes and receives everyone else.
    Meeting,
    /// A broadcast whose viewers keep leaving and being replaced.
    Churn,
}

/// One process's part of a run split over several (`--shard K/N`): the `index`th (from 1) of
/// `count`, written `K/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let invalid = || SpecError::Invalid(format!("a part is K/N with 1 ≤ K ≤ N, not {text:?}"));
        let (index, count) = text.trim().split_once('/').ok_or_else(invalid)?;
        let shard = Shard {
            index: index.trim().parse().map_err(|_| invalid())?,
            count: count.trim().parse().map_err(|_| invalid())?,
        };
        if shard.index == 0 || shard.index > shard.count {
            return Err(invalid());
        }
        Ok(shard)
    }
}

impl Serialize for Shard {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Service level objectives; a run fails when one is missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    /// Highest packet loss over all received streams, in percent.
    pub loss_pct: Option<f64>,
    /// Highest 95th percentile of join time (socket open to ICE connected), in ms.
    pub join_p95_ms: Option<f64>,
    /// Highest 95th percentile of time to the first video keyframe, in ms.
    pub first_frame_p95_ms: Option<f64>,
    /// End-to-end encryption: highest 95th percentile of time from a receiver's join to its
    /// first decrypted frame, in ms.
    pub first_decrypt_p95_ms: Option<f64>,
    /// End-to-end encryption: highest 95th percentile of time from a departure until every
    /// remaining receiver decrypts under a key the departed never had, in ms.
    pub rekeyed_p95_ms: Option<f64>,
    /// Most endpoints that may fail to join or to receive media.
    pub max_failed: u64,
    /// Soak: most growth of the server's resident memory (MiB), open descriptors and async
    /// tasks, from the middle third of the run to its last third (the first third is the
    /// ramp and warm-up). A leak grows; a steady server does not.
    pub rss_growth_mib: Option<f64>,
    pub fd_growth: Option<f64>,
    pub task_growth: Option<f64>,
}

impl Default for Slo {
    fn default() -> Self {
        Self {
            loss_pct: Some(0.5),
            join_p95_ms: None,
            first_frame_p95_ms: None,
            first_decrypt_p95_ms: None,
            rekeyed_p95_ms: None,
            max_failed: 0,
            rss_growth_mib: None,
            fd_growth: None,
            task_growth: None,
        }
    }
}

/// A load scenario, from flags or a TOML file with the same field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub kind: Kind,
    pub room: String,
    /// Publishers in `broadcast` and `churn` (1–3; 0: the presenters are already in the room,
    /// a browser for instance, and the run brings only viewers).
    pub presenters: u32,
    /// Receive-only endpoints in `broadcast` and `churn`.
    pub viewers: u32,
    /// Endpoints that all publish, in `meeting`.
    pub participants: u32,
    /// New endpoints per second during the ramp.
    pub join_rate: f64,
    /// Seconds every endpoint stays connected after the last one joined.
    pub duration_s: f64,
    /// Each publisher's video bitrate in kbit/s (its top layer's, with simulcast).
    pub video_kbps: u32,
    /// Publishers send three simulcast layers (1/8, 2/5 and all of `video_kbps`), as the
    /// web client does; the SFU picks one per viewer.
    pub simulcast: bool,
    pub video_fps: u32,
    /// Viewers replaced per second during the hold in `churn`.
    pub churn_per_s: f64,
    /// End-to-end encryption: every endpoint speaks the key exchange as the web client does
    /// (a device key announced at join, keys asked for and wrapped through the server's
    /// `e2ee_keys` relay, a ratchet on each join, a new key on each departure), publishers
    /// seal every frame (SFrame) with their own key and receivers open what they receive
    /// with the keys they were given before counting it as received media.
    pub e2ee: bool,
    /// Viewers receive lightly ([`endpoint::EndpointConfig::light`]): packets are authenticated,
    /// counted and checked for gaps and keyframes, never reassembled into frames, so that one
    /// host can drive thousands of them. With `e2ee`, each audio packet (one Opus frame) is
    /// opened; video frames, never reassembled, are not.
    pub light_viewers: bool,
    /// End-to-end keys, to compare designs: the least time between two departure rekeys of a
    /// sender, how long requests wait to be answered together, and the deliveries per
    /// `e2ee_keys` message. Unset: the web client's ([`endpoint::keys::KeyPolicy::BROWSER`]).
    pub e2ee_rekey_interval_ms: Option<u64>,
    /// Viewers that receive media: every Nth (1, the default: all). The others join, speak the
    /// key exchange and receive nothing else, so that key distribution can be measured at a
    /// size whose media one host cannot carry; their "rekeyed" is when they held the new key
    /// and the sender used it.
    pub media_every: u32,
    pub e2ee_answer_window_ms: Option<u64>,
    pub e2ee_keys_per_message: Option<usize>,
    /// Measure the loopback floor ([`crate::floor`]) for about a second before the endpoints
    /// start, so that the report states the server's cost as a multiple of it.
    pub measure_floor: bool,
    pub slo: Slo,
    /// This process's part of a run split over several (on one host or several), whose
    /// reports `loadtest merge` makes one. The counts and rates above stay the whole run's:
    /// part K of N runs the Kth receiver, the (K+N)th, and so on (its churned replacements
    /// too), at an Nth of the join and churn rates, with endpoint names and join tokens no
    /// other part uses; part 1 also runs the presenters. `None`: the whole run.
    pub shard: Option<Shard>,
    /// When the endpoints start, in milliseconds since the Unix epoch, so that the parts of a
    /// split run start together (the floor is measured before). `None`: at once.
    pub start_at_unix_ms: Option<u64>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            kind: Kind::Broadcast,
            room: "loadtest".into(),
            presenters: 1,
            viewers: 50,
            participants: 8,
            join_rate: 100.0,
            duration_s: 10.0,
            video_kbps: 1_000,
            simulcast: true,
            video_fps: 30,
            churn_per_s: 5.0,
            e2ee: false,
            light_viewers: false,
            e2ee_rekey_interval_ms: None,
            media_every: 1,
            e2ee_answer_window_ms: None,
            e2ee_keys_per_message: None,
            measure_floor: true,
            slo: Slo::default(),
            shard: None,
            start_at_unix_ms: None,
        }
    }
}

impl Scenario {
    /// Reads a scenario from TOML; absent fields keep their defaults.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        toml::from_str(text).map_err(|err| SpecError::File(err.to_string()))
    }

    /// Checks the hard caps and the scenario's own consistency.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |why: &str| Err(SpecError::Invalid(why.to_string()));
        if !(self.join_rate > 0.0 && self.join_rate <= MAX_JOIN_RATE) {
            return invalid("join_rate must be in (0, 1000] per second");
        }
        if !(self.duration_s >= 0.0 && self.duration_s <= MAX_DURATION_S) {
            return invalid("duration_s must be in [0, 14400]");
        }
        // The cap is one process's: the parts of a split run each carry their share.
        if self.endpoints_here() > MAX_ENDPOINTS {
            return invalid("more than 5000 endpoints in one process (split the run: --shard)");
        }
        if !(1..=10_000).contains(&self.video_kbps) || !(1..=60).contains(&self.video_fps) {
            return invalid("video_kbps must be 1–10000 and video_fps 1–60");
        }
        if self.media_every == 0 {
            return invalid("media_every must be at least 1");
        }
        if self
            .e2ee_keys_per_message
            .is_some_and(|n| !(1..=protocol::MAX_E2EE_DELIVERIES).contains(&n))
        {
            return invalid("e2ee_keys_per_message must be 1–256");
        }
        if self.room.is_empty() || self.room.chars().count() > 64 {
            return invalid("room must be 1–64 characters");
        }
        if let Some(shard) = self.shard {
            if shard.index == 0 || shard.index > shard.count || shard.count > MAX_SHARDS {
                return invalid("a part is K/N with 1 ≤ K ≤ N ≤ 64");
            }
            let (publishers, receivers) = self.share();
            if publishers + receivers == 0 {
                return Err(SpecError::Invalid(format!(
                    "part {shard} has no endpoint: split the run over fewer parts"
                )));
            }
        }
        match self.kind {
            Kind::Broadcast | Kind::Churn if self.presenters > 3 => {
                invalid("a broadcast has at most 3 presenters")
            }
            Kind::Meeting if self.participants < 2 => invalid("a meeting needs 2 participants"),
            Kind::Churn if !(self.churn_per_s > 0.0 && self.churn_per_s <= MAX_JOIN_RATE) => {
                invalid("churn_per_s must be in (0, 1000]")
            }
            _ => Ok(()),
        }
    }

    /// The key exchange's policy: the web client's, with this run's overrides.
    pub fn key_policy(&self) -> endpoint::keys::KeyPolicy {
        let mut policy = endpoint::keys::KeyPolicy::BROWSER;
        if let Some(ms) = self.e2ee_rekey_interval_ms {
            policy.rekey_interval = std::time::Duration::from_millis(ms);
        }
        if let Some(ms) = self.e2ee_answer_window_ms {
            policy.answer_window = std::time::Duration::from_millis(ms);
        }
        if let Some(n) = self.e2ee_keys_per_message {
            policy.deliveries_per_message = n;
        }
        policy
    }

    /// The publishers (presenters) and receivers (viewers, or a meeting's members) this
    /// process runs: all of them, or its part's (see [`Scenario::shard`]).
    pub fn share(&self) -> (u32, u32) {
        let (publishers, receivers) = match self.kind {
            Kind::Meeting => (0, self.participants),
            Kind::Broadcast | Kind::Churn => (self.presenters, self.viewers),
        };
        match self.shard {
            None => (publishers, receivers),
            Some(Shard { index, count }) => (
                if index == 1 { publishers } else { 0 },
                receivers.saturating_add(count - index) / count,
            ),
        }
    }

    /// The endpoints this process connects at once at the peak.
    pub fn endpoints_here(&self) -> u32 {
        let (publishers, receivers) = self.share();
        publishers.saturating_add(receivers)
    }

    /// The part of the join and churn rates this process keeps.
    pub fn rate_share(&self) -> f64 {
        self.shard.map_or(1.0, |shard| 1.0 / f64::from(shard.count))
    }

    /// The whole run's number of this process's `nth` receiver (from 0, its churned
    /// replacements continuing the count): the same in every part's numbering, so that no
    /// two parts name an endpoint alike.
    pub fn receiver_ordinal(&self, nth: u32) -> u32 {
        match self.shard {
            None => nth,
            Some(Shard { index, count }) => nth.saturating_mul(count).saturating_add(index - 1),
        }
    }

    /// Endpoints connected at once at the peak (the whole run's).
    pub fn total_endpoints(&self) -> u32 {
        match self.kind {
            Kind::Meeting => self.participants,
            Kind::Broadcast | Kind::Churn => self.presenters.saturating_add(self.viewers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_consistency_are_checked() {
        let ok = Scenario::default();
        assert!(ok.validate().is_ok());
        for broken in [
            Scenario {
                viewers: MAX_ENDPOINTS,
                ..Scenario::default()
            },
            Scenario {
                presenters: 4,
                ..Scenario::default()
            },
            Scenario {
                join_rate: 0.0,
                ..Scenario::default()
            },
            Scenario {
                duration_s: f64::NAN,
                ..Scenario::default()
            },
            Scenario {
                kind: Kind::Meeting,
                participants: 1,
                ..Scenario::default()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }

    /// The parts of a split run carry every receiver once and the presenters in part 1, and
    /// number their receivers so that no two parts share a number.
    #[test]
    fn a_split_run_shares_out_its_endpoints() {
        let whole = Scenario {
            presenters: 2,
            viewers: 7,
            ..Scenario::default()
        };
        let part = |index| Scenario {
            shard: Some(Shard { index, count: 3 }),
            ..whole.clone()
        };
        let shares: Vec<(u32, u32)> = (1..=3).map(|k| part(k).share()).collect();
        assert_eq!(shares, [(2, 3), (0, 2), (0, 2)]);
        assert_eq!(whole.share(), (2, 7));
        let mut ordinals: Vec<u32> = (1..=3)
            .flat_map(|k| {
                let part = part(k);
                (0..part.share().1).map(move |n| part.receiver_ordinal(n))
            })
            .collect();
        ordinals.sort_unstable();
        assert_eq!(ordinals, (0..7).collect::<Vec<_>>());
        assert_eq!(whole.receiver_ordinal(4), 4);
        assert!((part(2).rate_share() - 1.0 / 3.0).abs() < 1e-12);

        assert_eq!(
            "2/3".parse::<Shard>().ok(),
            Some(Shard { index: 2, count: 3 })
        );
        for bad in ["0/2", "3/2", "2", "a/b", "1/"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        // A part with nothing to run, and too many parts, are refused.
        let empty = Scenario {
            viewers: 1,
            shard: Some(Shard { index: 3, count: 3 }),
            ..whole.clone()
        };
        assert!(empty.validate().is_err());
        let many = Scenario {
            shard: Some(Shard {
                index: 1,
                count: 65,
            }),
            ..whole.clone()
        };
        assert!(many.validate().is_err());
        // The endpoint cap is one process's: a run too big for one splits.
        let national = Scenario {
            viewers: 8_000,
            ..whole.clone()
        };
        assert!(national.validate().is_err());
        let half = Scenario {
            shard: Some(Shard { index: 2, count: 2 }),
            ..national.clone()
        };
        assert!(half.validate().is_ok());
        let file = Scenario::from_toml("shard = \"2/3\"\nstart_at_unix_ms = 5\n").expect("valid");
        assert_eq!(file.shard, Some(Shard { index: 2, count: 3 }));
        assert_eq!(file.start_at_unix_ms, Some(5));
    }

    #[test]
    fn scenario_files_use_the_field_names() {
        let scenario = Scenario::from_toml(
            "kind = \"meeting\"\nparticipants = 6\n[slo]\nloss_pct = 1.0\njoin_p95_ms = 300\n",
        )
        .expect("valid file");
        assert_eq!(scenario.kind, Kind::Meeting);
        assert_eq!(scenario.participants, 6);
        assert_eq!(scenario.slo.join_p95_ms, Some(300.0));
        assert!(Scenario::from_toml("viewerz = 3").is_err());
    }
}
