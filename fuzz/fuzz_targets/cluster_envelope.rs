//! The sealed envelope of every record a cluster's nodes read from NATS
//! (`formats::cluster_envelope`). See `meet_fuzz::cluster::envelope` for the input and the
//! checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("cluster_envelope");
    },
    |data: &[u8]| {
        meet_fuzz::cluster::envelope(data);
    }
);
