//! See `meet_fuzz::signaling_side::sdp_candidate`.

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use meet_fuzz::signaling_side::{self, Bench};

thread_local! {
    static BENCH: RefCell<Option<Bench>> = const { RefCell::new(None) };
}

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("sdp_candidate");
    },
    |data: &[u8]| {
        BENCH.with_borrow_mut(|bench| {
            let bench = bench.get_or_insert_with(Bench::new);
            signaling_side::sdp_candidate(bench, data);
        });
    }
);
