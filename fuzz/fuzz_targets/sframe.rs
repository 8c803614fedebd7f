//! See `meet_fuzz::sframe::run`: SFrame headers, opening arbitrary frames, seal/open round trips.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("sframe");
    },
    |data: &[u8]| {
        meet_fuzz::sframe::run(data);
    }
);
