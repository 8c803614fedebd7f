//! Who is speaking, from the audio levels publishers put in the clear RTP header extension
//! (RFC 6464). The SFU never decodes audio: each packet's level updates a smoothed loudness
//! per publication, and a room's active speaker is chosen a few times a second with
//! hysteresis, so that a cough or a crossing word does not move the spotlight.

use std::time::{Duration, Instant};

/// How much each packet (20 ms of audio) moves the smoothed loudness: a time constant of
/// about 200 ms, long enough to ride over syllables, short enough to follow turns.
const SMOOTHING: f32 = 0.1;

/// Loudness (dB above -127 dBov) below which a publication is not speaking: -60 dBov, well
/// above a silent microphone's noise floor and below quiet speech.
pub const SPEAKING_THRESHOLD: f32 = 67.0;

/// How much louder another speaker must be to take over from the present one.
pub const SWITCH_MARGIN: f32 = 6.0;

/// A publication that sent no level for this long is silent (muted, DTX, gone).
const STALE_AFTER: Duration = Duration::from_millis(500);

/// The smoothed loudness of one audio publication.
#[derive(Debug, Clone, Copy, Default)]
pub struct LevelMeter {
    loudness: f32,
    last_at: Option<Instant>,
}

impl LevelMeter {
    /// Takes one packet's level in dBov (0 loudest, -127 silence).
    pub fn update(&mut self, now: Instant, level: i8) {
        let loudness = f32::from(level.clamp(-127, 0)) + 127.0;
        self.loudness += (loudness - self.loudness) * SMOOTHING;
        self.last_at = Some(now);
    }

    /// The smoothed loudness at `now`; zero once the publication fell silent.
    pub fn loudness(&self, now: Instant) -> f32 {
        match self.last_at {
            Some(at) if now.saturating_duration_since(at) < STALE_AFTER => self.loudness,
            _ => 0.0,
        }
    }
}

/// Picks the active speaker among `(candidate, loudness)` pairs. The present speaker stays
/// while it speaks unless someone is [`SWITCH_MARGIN`] louder; when it stops, the loudest
/// speaker takes over; when nobody speaks, the last speaker keeps the spotlight.
pub fn choose<T: Copy + PartialEq>(
    current: Option<T>,
    candidates: impl IntoIterator<Item = (T, f32)>,
) -> Option<T> {
    let mut loudest: Option<(T, f32)> = None;
    let mut current_loudness = None;
    for (candidate, loudness) in candidates {
        if Some(candidate) == current {
            current_loudness = Some(loudness);
        }
        if loudness >= SPEAKING_THRESHOLD && loudest.is_none_or(|(_, l)| loudness > l) {
            loudest = Some((candidate, loudness));
        }
    }
    match (loudest, current_loudness) {
        (None, Some(_)) => current,
        (None, None) => None,
        (Some((candidate, _)), None) => Some(candidate),
        (Some((candidate, loudness)), Some(present)) => {
            if present >= SPEAKING_THRESHOLD && loudness < present + SWITCH_MARGIN {
                current
            } else {
                Some(candidate)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(level: i8, packets: usize, start: Instant) -> LevelMeter {
        let mut meter = LevelMeter::default();
        for i in 0..packets {
            meter.update(start + Duration::from_millis(20 * i as u64), level);
        }
        meter
    }

    #[test]
    fn the_meter_follows_the_level_and_falls_silent() {
        let t0 = Instant::now();
        let loud = fed(-10, 50, t0);
        let at = t0 + Duration::from_millis(1000);
        assert!((loud.loudness(at) - 117.0).abs() < 1.0);
        let quiet = fed(-90, 50, t0);
        assert!(quiet.loudness(at) < SPEAKING_THRESHOLD);
        assert_eq!(loud.loudness(at + Duration::from_secs(1)), 0.0);
        // A single loud packet in silence does not make a speaker.
        let mut blip = fed(-127, 50, t0);
        blip.update(at, 0);
        assert!(blip.loudness(at) < SPEAKING_THRESHOLD);
    }

    #[test]
    fn the_speaker_changes_only_for_a_clearly_louder_voice() {
        assert_eq!(choose(None, [(1, 80.0), (2, 90.0)]), Some(2));
        assert_eq!(choose(Some(1), [(1, 80.0), (2, 84.0)]), Some(1));
        assert_eq!(choose(Some(1), [(1, 80.0), (2, 87.0)]), Some(2));
        // The speaker stops: the next voice takes over at once.
        assert_eq!(choose(Some(1), [(1, 20.0), (2, 70.0)]), Some(2));
        // Nobody speaks: the last speaker stays.
        assert_eq!(choose(Some(1), [(1, 10.0), (2, 20.0)]), Some(1));
        // The speaker left, nobody speaks.
        assert_eq!(choose(Some(3), [(1, 10.0)]), None);
        assert_eq!(choose::<u8>(None, []), None);
    }
}
