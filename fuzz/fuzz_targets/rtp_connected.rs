//! RTP and RTCP from a connected, authenticated participant: the fuzzed plaintext is protected
//! with the client's own SRTP keys (captured from its DTLS handshake), so it passes the
//! engine's authentication and reaches publications, keyframe detection, GOP caches,
//! simulcast, forwarders, NACK/PLI handling and the recording tap. See `meet_fuzz::world`
//! for the set-up and `meet_fuzz::connected` for the input format.
//!
//! One world (engine and both participants, connected) is built per process and reused for
//! [`World::MAX_INPUTS`] inputs, or until an input ended a transport: a DTLS handshake per
//! input would cost more than the input itself. A crash can therefore depend on the inputs
//! before it; `MEET_FUZZ_FRESH=1` builds a new world for every input (slow, for reproducing
//! and minimizing). `MEET_FUZZ_STATS=1` prints the engine's counters before and after each
//! input (what an input reached).

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use meet_fuzz::connected::run_input;
use meet_fuzz::world::World;

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fn fresh_each_input() -> bool {
    std::env::var_os("MEET_FUZZ_FRESH").is_some_and(|v| v != "0")
}

fuzz_target!(
    init: {
        meet_fuzz::seeds::write_if_asked("rtp_connected");
    },
    |data: &[u8]| {
        WORLD.with_borrow_mut(|slot| {
            let stale = slot
                .as_ref()
                .is_none_or(|w| w.inputs >= World::MAX_INPUTS || !w.alive() || fresh_each_input());
            if stale {
                *slot = None;
                *slot = Some(World::new().expect("the harness connects its two participants"));
            }
            let Some(world) = slot.as_mut() else {
                return;
            };
            world.inputs += 1;
            let before = std::env::var_os("MEET_FUZZ_STATS").map(|_| world.engine.stats().clone());
            run_input(world, data);
            if let Some(before) = before {
                eprintln!("before: {before:?}\nafter:  {:?}", world.engine.stats());
                eprintln!(
                    "client alive {} connected {}, peer alive {} connected {} failure {:?}",
                    world.client.rtc.is_alive(),
                    world.client.connected,
                    world.peer.is_alive(),
                    world.peer.is_connected(),
                    world.peer.failure()
                );
            }
        });
    }
);
