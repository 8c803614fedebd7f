//! `sfu::codec::is_keyframe`, which reads the payload descriptor of every video packet a
//! publisher sends: the first byte picks the codec, the rest is the payload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu::codec::{VideoCodec, is_keyframe};

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("keyframe");
    },
    |data: &[u8]| {
        let Some((&selector, payload)) = data.split_first() else {
            return;
        };
        let codec = [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264, VideoCodec::Av1]
            [usize::from(selector % 4)];
        let keyframe = is_keyframe(codec, payload);
        // Only descriptors are read: what follows a truncated one cannot matter, and an empty
        // payload is never a keyframe.
        if payload.is_empty() {
            assert!(!keyframe);
        }
    }
);
