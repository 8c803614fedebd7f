//! The meeting's mixed audio: every Opus track decoded onto one timeline, summed and encoded
//! again with one encoder.

use std::collections::{HashMap, VecDeque};

use crate::RecorderError;
use crate::oggopus::OggOpusWriter;

/// 20 ms at 48 kHz.
pub(crate) const MIX_FRAME: usize = 960;
/// Gaps up to this long are filled by the decoder's loss concealment; longer ones are
/// silence (a muted or stopped sender), which costs nothing to decode.
const MAX_CONCEALED: u64 = 5 * MIX_FRAME as u64;
/// Audio arriving more than this far ahead of the mix's output is dropped, bounding memory.
const MAX_AHEAD: usize = 10 * 48_000;

struct Input {
    decoder: opus::Decoder,
    next: Option<u64>,
}

/// Sums decoded tracks and encodes the result as 20 ms Opus frames.
pub(crate) struct Mixer {
    writer: OggOpusWriter,
    encoder: opus::Encoder,
    inputs: HashMap<u64, Input>,
    /// Sums from sample `base` on.
    acc: VecDeque<i32>,
    base: u64,
    pcm: Vec<i16>,
    frame: Vec<i16>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixer")
            .field("inputs", &self.inputs.len())
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Mixer {
    pub(crate) fn new(sink: Box<dyn crate::storage::Sink>) -> Result<Self, RecorderError> {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
        // The mix is the recorder's one encoder; a middling complexity keeps it cheap at a
        // quality that is still fine for speech.
        encoder.set_complexity(5)?;
        let pre_skip = u16::try_from(encoder.get_lookahead()?).unwrap_or(312);
        let writer = OggOpusWriter::new(sink, 0x6d69_7800, 1, pre_skip)
            .map_err(|e| RecorderError::io("mix.ogg", e))?;
        Ok(Self {
            writer,
            encoder,
            inputs: HashMap::new(),
            acc: VecDeque::with_capacity(48_000),
            base: 0,
            pcm: vec![0; 5_760],
            frame: vec![0; MIX_FRAME],
            out: vec![0; 1_500],
        })
    }

    pub(crate) fn add_track(&mut self, track: u64) -> Result<(), RecorderError> {
        let decoder = opus::Decoder::new(48_000, opus::Channels::Mono)?;
        self.inputs.insert(
            track,
            Input {
                decoder,
                next: None,
            },
        );
        Ok(())
    }

    pub(crate) fn remove_track(&mut self, track: u64) {
        self.inputs.remove(&track);
    }

    /// Decodes one packet whose first sample belongs at mix sample `pos`.
    pub(crate) fn packet(&mut self, track: u64, pos: u64, payload: &[u8]) {
        let Some(input) = self.inputs.get_mut(&track) else {
            return;
        };
        if let Some(next) = input.next
            && pos > next
            && pos - next <= MAX_CONCEALED
        {
            let mut at = next;
            while at + MIX_FRAME as u64 <= pos {
                // An empty packet asks the decoder to conceal one lost frame.
                let n = input
                    .decoder
                    .decode(&[], &mut self.pcm[..MIX_FRAME], false)
                    .unwrap_or(0);
                add(&mut self.acc, self.base, at, &self.pcm[..n]);
                at += MIX_FRAME as u64;
            }
        }
        // A malformed packet is skipped; the next one conceals it.
        let n = input
            .decoder
            .decode(payload, &mut self.pcm, false)
            .unwrap_or(0);
        add(&mut self.acc, self.base, pos, &self.pcm[..n]);
        input.next = Some(pos + n as u64);
    }

    /// Encodes every whole frame before mix sample `until`.
    pub(crate) fn advance(&mut self, until: u64) -> Result<(), RecorderError> {
        while self.base + MIX_FRAME as u64 <= until {
            for sample in &mut self.frame {
                let sum = self.acc.pop_front().unwrap_or(0);
                // Hard clipping: several loud talkers at once are rare in a meeting, and a
                // limiter would cost more than the rest of the mix.
                *sample = sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
            }
            let len = self.encoder.encode(&self.frame, &mut self.out)?;
            // The granule position counts decoded samples, the encoder's look-ahead included:
            // after the pre-skip is trimmed, input sample i plays at time i.
            self.base += MIX_FRAME as u64;
            self.writer
                .write(self.out[..len].to_vec(), self.base)
                .map_err(|e| RecorderError::io("mix.ogg", e))?;
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self, durable: bool) -> Result<(), RecorderError> {
        self.writer
            .flush(durable)
            .map_err(|e| RecorderError::io("mix.ogg", e))
    }

    pub(crate) fn finish(self) -> Result<(), RecorderError> {
        self.writer
            .finish()
            .map_err(|e| RecorderError::io("mix.ogg", e))
    }
}

fn add(acc: &mut VecDeque<i32>, base: u64, pos: u64, samples: &[i16]) {
    let end = pos.saturating_add(samples.len() as u64);
    if end <= base {
        return;
    }
    let skip = base.saturating_sub(pos) as usize;
    let start = (pos + skip as u64 - base) as usize;
    let needed = (end - base) as usize;
    if needed > MAX_AHEAD {
        return;
    }
    if acc.len() < needed {
        acc.resize(needed, 0);
    }
    for (slot, &s) in acc.range_mut(start..needed).zip(&samples[skip..]) {
        *slot += i32::from(s);
    }
}
