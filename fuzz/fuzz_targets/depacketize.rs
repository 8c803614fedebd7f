//! The recorder's video depacketizers (`signaling/recorder/src/depack.rs`: VP8, VP9 and AV1
//! frame assembly, keyframe and size parsing, AV1 sequence headers). The module is private to
//! `meet-recorder`, so it is compiled into this target from its source file; it is reached
//! through the crate's public API by `recorder_writers` as well.
//!
//! Input: a format byte, then records (`crate::records`): the kind's low bit is the marker,
//! the body `seq: u16`, `timestamp: u32`, then the payload.

#![no_main]

#[path = "../../signaling/recorder/src/depack.rs"]
#[allow(dead_code, unreachable_pub)]
mod depack;

use depack::{Assembler, VideoFormat};
use libfuzzer_sys::fuzz_target;
use meet_fuzz::records::{Reader, Records};

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("depacketize");
    },
    |data: &[u8]| {
        let Some((&format, rest)) = data.split_first() else {
            return;
        };
        let format = [VideoFormat::Vp8, VideoFormat::Vp9, VideoFormat::Av1][usize::from(format % 3)];
        let mut assembler = Assembler::new(format);
        let mut at_ms = 0;
        for (kind, body) in Records::new(rest) {
            let mut r = Reader::new(body);
            let seq = r.u16();
            let ts = r.u32();
            at_ms += 10;
            if let Some(frame) = assembler.push(seq, ts, kind & 1 == 1, r.rest(), at_ms)
                && let Some(header) = &frame.sequence_header
            {
                let _ = depack::av1_codec_private(header);
            }
        }
    }
);
