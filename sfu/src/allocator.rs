//! Splits one subscriber's estimated bandwidth across its video subscriptions.
//!
//! Each video Subscription wants at most the layer that fills the tile it is shown in
//! ([`layer_for_size`]); the allocator gives every visible subscription its lowest layer, then
//! raises subscriptions one step at a time, in priority order, while the estimate allows. A
//! subscription keeps its present layer at the bare cost, but a step up must fit with some
//! headroom, so that an estimate hovering at a layer's bitrate does not make it flap.
//!
//! Pure functions over plain numbers: no engine state, no time, no allocation in the hot path
//! (the engine calls this a few times a second per subscriber, with reused buffers).

/// Bitrates assumed for layers never measured yet (a paused layer keeps its last measure),
/// lowest first, for a three-layer publication; a single-layer publication uses the last.
pub const DEFAULT_LAYER_BITRATES: [u64; 3] = [150_000, 500_000, 1_200_000];

/// Extra share of a layer's bitrate the estimate must cover before a subscription steps up.
const UPGRADE_HEADROOM: f64 = 0.15;

/// Share of the estimate the allocator hands out: the rest absorbs estimate error, RTCP and
/// retransmissions.
const ESTIMATE_SHARE: f64 = 0.9;

/// What one forwarded audio stream is assumed to cost when splitting the estimate.
const AUDIO_BITRATE: u64 = 50_000;

/// Probe targets are rounded up to a multiple of this, so that the measured layer bitrates'
/// small changes do not raise the target a little at each allocation: every raise of the
/// desired bitrate asks str0m for a probe.
const PROBE_STEP: u64 = 50_000;

/// The bits per second an egress `estimate` leaves for video once `audio_streams` forwarded
/// audio streams and the share kept for errors, RTCP and retransmissions are set aside.
pub fn video_budget(estimate: u64, audio_streams: u64) -> u64 {
    ((estimate as f64 * ESTIMATE_SHARE) as u64).saturating_sub(audio_streams * AUDIO_BITRATE)
}

/// What the estimator is asked for, as str0m's `(minimum, desired)`: it sustains the video
/// now `allocated` (padding a gap up to it, never toward layers not sent), and, while some
/// subscription is below the layer its tile wants (`wanted` is what all those layers cost),
/// probes for an estimate whose [`video_budget`] grants them all, steps' headroom included.
/// Asking for the videos' bitrate alone left a subscriber of two videos and two voices just
/// short of its second video for as long as its estimate stayed near what it was asked for.
/// When to ask for which is [`Reprobe`]'s [`Ask`].
pub fn probe_targets(allocated: u64, wanted: u64, audio_streams: u64, ask: Ask) -> (u64, u64) {
    if wanted <= allocated {
        return (allocated, allocated);
    }
    let needed =
        (wanted + audio_streams * AUDIO_BITRATE) as f64 * (1.0 + UPGRADE_HEADROOM) / ESTIMATE_SHARE;
    let full = (needed as u64).div_ceil(PROBE_STEP) * PROBE_STEP;
    let desired = match ask {
        Ask::Plain => wanted,
        Ask::Dip => full - 1,
        Ask::Full => full,
    };
    (allocated, desired)
}

/// What an allocation asks the estimator to probe for while a demand is unmet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The wanted layers' bitrate alone: the first round, when the estimate may still be the
    /// initial guess, which a probe above it would overfill a thin link by.
    Plain,
    /// One bit per second under the full target, so that the next round's rise is a probe.
    Dip,
    /// Everything the wanted layers need; a rise to it asks str0m for a probe.
    Full,
}

/// Longest wait between two probes for a demand that stays unmet, in allocation rounds.
const MAX_REPROBE_ROUNDS: u64 = 32;

/// When a subscriber whose demand stays unmet is probed again. str0m probes when the desired
/// bitrate rises above the estimate, not when it is repeated, and an estimate that sits
/// between what is sent and 1.5 times it is in neither its periodic probes' range nor (for
/// 15 s) its stagnation probes'. So the target rises from plain to full one round (the
/// engine's once-a-second allocation) after the demand was first unmet or last made progress,
/// then dips for a round and rises again 4, 8, 16 and then every 32 rounds after it: a probe
/// each time, soon after a limit lifts, seldom on a link that really is thin, where each
/// probe overfills the bottleneck a little.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reprobe {
    /// The round since which the demand is unmet with no progress.
    since: Option<u64>,
    /// How many layers were granted then (a rise is progress).
    granted: u32,
}

impl Reprobe {
    /// What this allocation `round` asks for, given whether the demand is `unmet` and how
    /// many layers (counted from each subscription's lowest) are `granted`.
    pub fn ask(&mut self, unmet: bool, granted: u32, round: u64) -> Ask {
        if !unmet {
            *self = Self::default();
            return Ask::Plain;
        }
        let since = match self.since {
            Some(since) if granted <= self.granted => since,
            _ => round,
        };
        self.since = Some(since);
        self.granted = granted;
        let next = round - since + 1;
        let dip = if next < MAX_REPROBE_ROUNDS {
            next >= 4 && next.is_power_of_two()
        } else {
            next.is_multiple_of(MAX_REPROBE_ROUNDS)
        };
        match next {
            1 => Ask::Plain,
            _ if dip => Ask::Dip,
            _ => Ask::Full,
        }
    }
}

/// What one video subscription needs to be allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Measured (or assumed) bitrate of each layer in bits per second, lowest first;
    /// `layers` of them are valid.
    pub bitrates: [u64; 3],
    pub layers: u8,
    /// The highest layer worth sending for the tile's size; `None` when the tile is hidden.
    pub max_layer: Option<u8>,
    /// The layer forwarded now, which keeps its place without headroom.
    pub current: Option<u8>,
}

/// The highest layer worth sending to a tile of `width × height` device pixels: the smallest
/// layer at least as large as the tile (within a tenth) in either dimension, which is the
/// size a video fitted into the tile (letterboxed) is shown at, or the largest layer. `None` for a hidden tile. Layers of unknown size (0 × 0) are assumed to halve the
/// size at each step down, which is how browsers configure simulcast.
pub fn layer_for_size(sizes: &[(u32, u32)], tile: Option<(u32, u32)>) -> Option<u8> {
    let top = sizes.len().checked_sub(1)? as u8;
    let Some((width, height)) = tile else {
        // No size reported: send the best the bandwidth allows.
        return Some(top);
    };
    if width == 0 || height == 0 {
        return None;
    }
    let known = sizes.iter().all(|&(w, h)| w > 0 && h > 0);
    for (index, &(w, h)) in sizes.iter().enumerate() {
        let (w, h) = if known {
            (w, h)
        } else {
            // Unknown: only the ratio to the tile matters; assume the top layer is 1280×720.
            let shift = u32::from(top) - index as u32;
            (1280 >> shift, 720 >> shift)
        };
        if u64::from(w) * 10 >= u64::from(width) * 9 || u64::from(h) * 10 >= u64::from(height) * 9 {
            return Some(index as u8);
        }
    }
    Some(top)
}

/// Allocates `budget` bits per second across `demands` (in priority order, most important
/// first) and writes each one's layer to `out` (`None`: not forwarded). The first visible
/// demand always gets at least its lowest layer: a subscriber on a thin link sees the main
/// video at low quality rather than nothing.
pub fn allocate(budget: u64, demands: &[Demand], out: &mut Vec<Option<u8>>) {
    out.clear();
    out.resize(demands.len(), None);
    let mut remaining = budget as f64;
    let cost = |d: &Demand, layer: u8| d.bitrates[usize::from(layer).min(2)] as f64;
    let mut first_visible = true;
    for (slot, demand) in out.iter_mut().zip(demands) {
        if demand.max_layer.is_none() || demand.layers == 0 {
            continue;
        }
        let base = cost(demand, 0);
        if first_visible || base <= remaining {
            *slot = Some(0);
            remaining -= base;
            first_visible = false;
        }
    }
    // Step up one layer at a time, round by round, so that bandwidth is shared rather than
    // taken by the first subscription alone.
    loop {
        let mut raised = false;
        for (slot, demand) in out.iter_mut().zip(demands) {
            let (Some(layer), Some(max)) = (*slot, demand.max_layer) else {
                continue;
            };
            let next = layer + 1;
            if next > max || next >= demand.layers {
                continue;
            }
            let step = cost(demand, next) - cost(demand, layer);
            let needed = if demand.current.is_some_and(|c| c >= next) {
                step
            } else {
                step + cost(demand, next) * UPGRADE_HEADROOM
            };
            if needed <= remaining {
                remaining -= step;
                *slot = Some(next);
                raised = true;
            }
        }
        if !raised {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: [(u32, u32); 3] = [(320, 180), (640, 360), (1280, 720)];

    fn demand(max_layer: Option<u8>, current: Option<u8>) -> Demand {
        Demand {
            bitrates: DEFAULT_LAYER_BITRATES,
            layers: 3,
            max_layer,
            current,
        }
    }

    #[test]
    fn the_tile_size_picks_the_smallest_layer_that_fills_it() {
        assert_eq!(layer_for_size(&SIZES, Some((160, 90))), Some(0));
        assert_eq!(layer_for_size(&SIZES, Some((320, 180))), Some(0));
        assert_eq!(layer_for_size(&SIZES, Some((600, 338))), Some(1));
        assert_eq!(layer_for_size(&SIZES, Some((900, 506))), Some(2));
        assert_eq!(layer_for_size(&SIZES, Some((3840, 2160))), Some(2));
        assert_eq!(layer_for_size(&SIZES, Some((0, 0))), None);
        assert_eq!(layer_for_size(&SIZES, None), Some(2));
        // A tall narrow tile shows the video letterboxed, 100 px wide.
        assert_eq!(layer_for_size(&SIZES, Some((100, 700))), Some(0));
        // Unknown sizes: halving steps below 1280×720.
        assert_eq!(layer_for_size(&[(0, 0); 3], Some((300, 170))), Some(0));
        assert_eq!(layer_for_size(&[(0, 0)], Some((300, 170))), Some(0));
        assert_eq!(layer_for_size(&[], Some((300, 170))), None);
    }

    #[test]
    fn a_thin_link_gets_the_low_layer_and_a_wide_one_the_top() {
        let mut out = Vec::new();
        allocate(300_000, &[demand(Some(2), None)], &mut out);
        assert_eq!(out, [Some(0)]);
        allocate(3_000_000, &[demand(Some(2), None)], &mut out);
        assert_eq!(out, [Some(2)]);
        // The tile caps the layer whatever the bandwidth.
        allocate(3_000_000, &[demand(Some(1), None)], &mut out);
        assert_eq!(out, [Some(1)]);
        // Even below the lowest layer's rate, the main video keeps its lowest layer.
        allocate(50_000, &[demand(Some(2), None)], &mut out);
        assert_eq!(out, [Some(0)]);
    }

    #[test]
    fn bandwidth_is_shared_in_priority_order_and_hidden_tiles_get_nothing() {
        let mut out = Vec::new();
        let demands = [
            demand(Some(2), None),
            demand(None, Some(2)),
            demand(Some(2), None),
            demand(Some(2), None),
        ];
        // 150k × 3 visible = 450k, then one step to the mid layer for the first only.
        allocate(900_000, &demands, &mut out);
        assert_eq!(out, [Some(1), None, Some(0), Some(0)]);
        // Not even the lowest layers fit: the first keeps its own, the rest wait.
        allocate(200_000, &demands, &mut out);
        assert_eq!(out, [Some(0), None, None, None]);
    }

    #[test]
    fn stepping_up_needs_headroom_but_staying_does_not() {
        let mut out = Vec::new();
        // Exactly the mid layer's rate: not enough to step up...
        allocate(500_000, &[demand(Some(2), Some(0))], &mut out);
        assert_eq!(out, [Some(0)]);
        // ...but enough to stay there.
        allocate(500_000, &[demand(Some(2), Some(1))], &mut out);
        assert_eq!(out, [Some(1)]);
    }

    #[test]
    fn an_estimate_that_reaches_the_probe_target_grants_every_wanted_layer() {
        // Two videos and two voices, as a participant of a three-person meeting receives:
        // whatever layers the tiles want and whichever are forwarded now, an estimate at the
        // desired bitrate must leave the budget for all of them, or the estimator settles just
        // short of a paused video and it stays paused.
        let mut out = Vec::new();
        for wanted in [0u8, 1, 2] {
            for current in [None, Some(0), Some(1)] {
                let demands = [demand(Some(wanted), current), demand(Some(wanted), None)];
                let cost = |layer: u8| DEFAULT_LAYER_BITRATES[usize::from(layer)];
                let allocated = current.map_or(0, cost);
                let wanted_cost = 2 * cost(wanted);
                let (minimum, desired) = probe_targets(allocated, wanted_cost, 2, Ask::Full);
                assert_eq!(minimum, allocated, "padding sustains only what is sent");
                allocate(video_budget(desired, 2), &demands, &mut out);
                assert_eq!(
                    out,
                    [Some(wanted); 2],
                    "wanted {wanted}, current {current:?}"
                );
            }
        }
        // Everything wanted is sent: nothing to probe for.
        assert_eq!(
            probe_targets(1_000_000, 1_000_000, 3, Ask::Full),
            (1_000_000, 1_000_000)
        );
        // Jitter in the measured bitrates does not move the target (a raise is a probe).
        assert_eq!(
            probe_targets(150_000, 300_000, 2, Ask::Full),
            probe_targets(150_000, 300_400, 2, Ask::Full)
        );
        let (_, dipped) = probe_targets(150_000, 300_000, 2, Ask::Dip);
        assert_eq!(dipped + 1, probe_targets(150_000, 300_000, 2, Ask::Full).1);
    }

    #[test]
    fn an_unmet_demand_is_probed_again_ever_less_often_and_soon_after_progress() {
        let mut reprobe = Reprobe::default();
        // Rounds at which the target rises (from plain or from a dip), each a probe.
        let mut probes = Vec::new();
        let mut last = None;
        for round in 100..200 {
            let ask = reprobe.ask(true, 1, round);
            if ask == Ask::Full && last != Some(Ask::Full) {
                probes.push(round - 100);
            }
            last = Some(ask);
        }
        assert_eq!(probes, [1, 4, 8, 16, 32, 64, 96]);
        // A layer granted is progress: the count starts over.
        assert_eq!(reprobe.ask(true, 2, 200), Ask::Plain);
        assert_eq!(reprobe.ask(true, 2, 201), Ask::Full);
        // A met demand needs no probe, and starts over when unmet again.
        assert_eq!(reprobe.ask(false, 3, 202), Ask::Plain);
        assert_eq!(reprobe.ask(true, 2, 203), Ask::Plain);
        assert_eq!(reprobe.ask(true, 2, 204), Ask::Full);
    }
}
