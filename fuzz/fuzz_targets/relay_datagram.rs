//! The sealed datagrams that carry relays between the servers of a cluster
//! (`sfu::relay_wire`). See `meet_fuzz::relay_wire::datagram` for the input and the checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("relay_datagram");
    },
    |data: &[u8]| {
        meet_fuzz::relay_wire::datagram(data);
    }
);
