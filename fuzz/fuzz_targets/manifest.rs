//! See `meet_fuzz::recorder::manifest`: an arbitrary `manifest.json` in a directory holding a
//! real recording's files, next to files `recover` must never touch.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

type Files = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

fn real() -> &'static Files {
    static REAL: OnceLock<Files> = OnceLock::new();
    REAL.get_or_init(meet_fuzz::recorder::real_files)
}

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("manifest");
    },
    |data: &[u8]| {
        meet_fuzz::recorder::manifest(data, real());
    }
);
