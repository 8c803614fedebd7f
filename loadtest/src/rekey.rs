//! How fast a run's end-to-end keys moved, from the bots' key timelines: when each departure
//! was answered by a new key that every remaining receiver decrypts under, and what the
//! senders' rekeys cost. The per-endpoint figures (first decrypted frame, frames lost to a
//! rekey) come with the endpoints' results ([`crate::report::KeyReport`] gathers them).

use std::time::{Duration, Instant};

use endpoint::keys::KeyPolicy;
use protocol::ParticipantId;

use crate::bot::KeyTimeline;
use crate::report::{Histograms, KeyReport, REKEYED, Recorded, WRAP_MS, WRAPS};

/// How long after a departure its answer may still come: the senders' wait before a rekey
/// (their interval, or a burst's), the new key's delay, and three seconds for the rest. A
/// departure younger than this when the run is measured, and not answered yet, is too close
/// to the end to tell.
pub fn settle(policy: &KeyPolicy) -> Duration {
    policy.rekey_interval.max(policy.rekey_after_departure)
        + policy.rekey_delay
        + Duration::from_secs(3)
}

/// A viewer the run made leave, and when it said goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    pub participant: ParticipantId,
    pub at: Instant,
}

/// The key figures of a run: `timelines` are the bots present when it is measured (`now`),
/// senders and receivers alike. With them, the histograms of departure → rekeyed, wraps per
/// rekey and wrap time per rekey, for merging parts of a split run.
pub fn measure(
    departures: &[Departure],
    timelines: &[KeyTimeline],
    now: Instant,
    settle: Duration,
) -> (KeyReport, Histograms) {
    let senders: Vec<&KeyTimeline> = timelines.iter().filter(|t| t.sends).collect();
    let by_frames = timelines
        .iter()
        .filter(|t| !t.sends && !t.epochs_opened.is_empty())
        .count();
    let by_key = timelines
        .iter()
        .filter(|t| !t.sends && t.epochs_opened.is_empty() && !t.epochs_received.is_empty())
        .count();
    let mut rekeyed = Vec::new();
    let mut never = 0;
    let mut pending = 0;
    for departure in departures {
        match rekeyed_after(departure, &senders, timelines) {
            Rekeyed::After(after) => rekeyed.push(after.as_secs_f64() * 1_000.0),
            Rekeyed::Nobody => {}
            Rekeyed::Not if now.saturating_duration_since(departure.at) < settle => pending += 1,
            Rekeyed::Not => never += 1,
        }
    }
    let measured = rekeyed.len() + never;
    // The 95th percentile with the departures never answered at the top, beyond any value.
    let rekeyed_p95_ms = if measured == 0 || never * 20 > measured {
        None
    } else {
        let mut values = rekeyed.clone();
        values.sort_by(f64::total_cmp);
        let rank = (measured * 95).div_ceil(100).max(1);
        values.get(rank - 1).copied()
    };
    let records = || senders.iter().flat_map(|t| t.rekeys.iter());
    let recorded = [
        (REKEYED, Recorded::of(rekeyed)),
        (WRAPS, Recorded::of(records().map(|r| r.wraps as f64))),
        (
            WRAP_MS,
            Recorded::of(
                senders
                    .iter()
                    .flat_map(|t| t.rekey_wrap_times.iter())
                    .map(|d| d.as_secs_f64() * 1_000.0),
            ),
        ),
    ];
    let report = KeyReport {
        departures: departures.len() as u64,
        receivers_by_frames: by_frames as u64,
        receivers_by_key: by_key as u64,
        rekeyed_ms: recorded[0].1.distribution(),
        rekeyed_p95_ms,
        departures_never_rekeyed: never as u64,
        departures_pending_at_end: pending,
        rekeys: records().count() as u64,
        wraps_per_rekey: recorded[1].1.distribution(),
        wrap_ms_per_rekey: recorded[2].1.distribution(),
        ..KeyReport::default()
    };
    let recorded = recorded
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(name, values)| (name.to_string(), values))
        .collect();
    (report, recorded)
}

/// What became of one departure.
enum Rekeyed {
    /// Every receiver that held a sender's key before it held a newer epoch this long after.
    After(Duration),
    /// A receiver never did (yet), or a sender never answered it.
    Not,
    /// Nobody who held a key before it is left to tell.
    Nobody,
}

/// Whether, and how long after `departure`, every receiver that was decrypting each sender
/// before it decrypted under a newer epoch than the departed could have held.
fn rekeyed_after(
    departure: &Departure,
    senders: &[&KeyTimeline],
    timelines: &[KeyTimeline],
) -> Rekeyed {
    let mut latest: Option<Instant> = None;
    for sender in senders {
        // The rekey that answered this departure: the one that names it.
        let Some(record) = sender
            .rekeys
            .iter()
            .find(|r| r.covers.contains(&departure.participant))
        else {
            return Rekeyed::Not;
        };
        let epoch = u64::from(record.epoch);
        for receiver in timelines {
            if receiver.participant_id == sender.participant_id {
                continue;
            }
            // A receiver that opens frames is rekeyed by the first it opens under the new
            // epoch; one that receives no media (`media_every`), when it held the new key and
            // the sender sealed with it, which is when its first frame would have opened.
            let (epochs, by_key) = match receiver.epochs_opened.get(&sender.participant_id) {
                Some(opened) => (opened, false),
                None => match receiver.epochs_received.get(&sender.participant_id) {
                    Some(received) => (received, true),
                    None => continue,
                },
            };
            if !epochs.iter().any(|(_, at)| *at < departure.at) {
                continue;
            }
            let Some((_, at)) = epochs.iter().find(|(e, _)| *e >= epoch) else {
                return Rekeyed::Not;
            };
            let at = match (by_key, record.used_at) {
                (false, _) => *at,
                (true, Some(used)) => (*at).max(used),
                (true, None) => return Rekeyed::Not,
            };
            latest = latest.max(Some(at));
        }
    }
    match latest {
        Some(at) => Rekeyed::After(at.saturating_duration_since(departure.at)),
        None => Rekeyed::Nobody,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use endpoint::keys::RekeyRecord;

    use super::*;

    const SETTLE: Duration = Duration::from_secs(6);

    fn sender(id: u64, start: Instant, rekeys: &[(u32, u64, Vec<u64>)]) -> KeyTimeline {
        KeyTimeline {
            participant_id: ParticipantId(id),
            joined_at: start,
            sends: true,
            rekeys: rekeys
                .iter()
                .map(|(epoch, at_ms, covers)| RekeyRecord {
                    epoch: *epoch,
                    made_at: start + Duration::from_millis(*at_ms),
                    used_at: None,
                    wraps: 2,
                    covers: covers.iter().map(|c| ParticipantId(*c)).collect(),
                })
                .collect(),
            rekey_wrap_times: vec![Duration::from_millis(3); rekeys.len()],
            epochs_opened: HashMap::new(),
            epochs_received: HashMap::new(),
        }
    }

    fn receiver(id: u64, start: Instant, from: u64, epochs: &[(u64, u64)]) -> KeyTimeline {
        KeyTimeline {
            participant_id: ParticipantId(id),
            joined_at: start,
            sends: false,
            rekeys: Vec::new(),
            rekey_wrap_times: Vec::new(),
            epochs_opened: HashMap::from([(
                ParticipantId(from),
                epochs
                    .iter()
                    .map(|(e, at)| (*e, start + Duration::from_millis(*at)))
                    .collect(),
            )]),
            epochs_received: HashMap::new(),
        }
    }

    #[test]
    fn a_departure_is_rekeyed_when_the_slowest_remaining_receiver_decrypts_the_new_epoch() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let timelines = vec![
            sender(1, t0, &[(1, 1_100, vec![9]), (2, 5_000, vec![8])]),
            receiver(2, t0, 1, &[(0, 100), (1, 2_100), (2, 6_000)]),
            receiver(3, t0, 1, &[(0, 200), (1, 2_600), (2, 6_100)]),
            // Joined after the departure: not a receiver that had to be rekeyed.
            receiver(4, t0, 1, &[(1, 3_000), (2, 6_050)]),
        ];
        let departures = [
            Departure {
                participant: ParticipantId(9),
                at: at(1_000),
            },
            Departure {
                participant: ParticipantId(8),
                at: at(4_900),
            },
            // Nobody named it and no rekey followed: never, since it is old.
            Departure {
                participant: ParticipantId(7),
                at: at(1_500),
            },
            // Too recent to tell.
            Departure {
                participant: ParticipantId(6),
                at: at(19_000),
            },
        ];
        let (report, recorded) = measure(&departures, &timelines, at(20_000), SETTLE);
        assert_eq!(recorded.get(REKEYED).map(Recorded::len), Some(2));
        assert_eq!(report.departures, 4);
        assert_eq!(report.rekeyed_ms.map(|d| d.count), Some(2));
        assert_eq!(
            (
                report.departures_never_rekeyed,
                report.departures_pending_at_end
            ),
            (1, 1)
        );
        // One in three never rekeyed is beyond the 5% a 95th percentile allows.
        assert_eq!(report.rekeyed_p95_ms, None);
        assert_eq!(report.rekeys, 2);
        assert_eq!(report.wraps_per_rekey.map(|d| d.max), Some(2.0));

        // 1.6 s for the first (the slower receiver), 1.2 s for the second.
        let (report, _) = measure(&departures[..2], &timelines, at(20_000), SETTLE);
        assert_eq!(report.rekeyed_p95_ms, Some(1_600.0));
        let (report, _) = measure(&departures[1..2], &timelines, at(20_000), SETTLE);
        assert_eq!(report.rekeyed_p95_ms, Some(1_200.0));
    }

    #[test]
    fn a_receiver_without_media_is_rekeyed_once_it_holds_the_key_and_the_sender_uses_it() {
        let t0 = Instant::now();
        let mut presenter = sender(1, t0, &[(1, 1_100, vec![9])]);
        presenter.rekeys[0].used_at = Some(t0 + Duration::from_millis(2_100));
        let mut listener = receiver(3, t0, 1, &[]);
        listener.epochs_opened.clear();
        listener.epochs_received.insert(
            ParticipantId(1),
            vec![(0, t0), (1, t0 + Duration::from_millis(1_200))],
        );
        let timelines = vec![
            presenter,
            receiver(2, t0, 1, &[(0, 100), (1, 2_150)]),
            listener,
        ];
        let departure = Departure {
            participant: ParticipantId(9),
            at: t0 + Duration::from_millis(1_000),
        };
        let (report, _) = measure(
            &[departure],
            &timelines,
            t0 + Duration::from_secs(30),
            SETTLE,
        );
        // The one with media opened the new epoch at 2.15 s, the other held its key at 1.2 s
        // and the sender used it from 2.1 s.
        assert_eq!(report.rekeyed_p95_ms, Some(1_150.0));
        assert_eq!(
            (report.receivers_by_frames, report.receivers_by_key),
            (1, 1)
        );
    }

    #[test]
    fn a_sender_that_never_rekeys_leaves_every_departure_unanswered() {
        let t0 = Instant::now();
        let timelines = vec![sender(1, t0, &[]), receiver(2, t0, 1, &[(0, 100)])];
        let departure = Departure {
            participant: ParticipantId(9),
            at: t0 + Duration::from_millis(1_000),
        };
        let (report, _) = measure(
            &[departure],
            &timelines,
            t0 + Duration::from_secs(30),
            SETTLE,
        );
        assert_eq!(report.departures_never_rekeyed, 1);
        assert_eq!(report.rekeyed_p95_ms, None);
    }
}
