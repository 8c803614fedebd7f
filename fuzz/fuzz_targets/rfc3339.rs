//! RFC 3339 times, which every time field of the REST API reads (`formats::rfc3339`). See
//! `meet_fuzz::api_text::rfc3339` for the input and the checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("rfc3339");
    },
    |data: &[u8]| {
        meet_fuzz::api_text::rfc3339(data);
    }
);
