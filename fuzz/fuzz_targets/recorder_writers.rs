//! See `meet_fuzz::recorder::writers`: a recording fed arbitrary packets, finished or crashed and recovered.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("recorder_writers");
    },
    |data: &[u8]| {
        meet_fuzz::recorder::writers(data);
    }
);
