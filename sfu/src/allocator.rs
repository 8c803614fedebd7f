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
}
