//! See `meet_fuzz::recorder::readers`: arbitrary Ogg and WebM files made playable by `recover`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("recorder_readers");
    },
    |data: &[u8]| {
        meet_fuzz::recorder::readers(data);
    }
);
