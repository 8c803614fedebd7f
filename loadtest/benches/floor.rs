//! `cargo bench -p loadtest --bench floor [-- PACKETS [BATCH]]`: the loopback floor (AES-128-GCM
//! seal and one UDP datagram per packet to a drained 127.0.0.1 socket, then the same in
//! `sendmmsg` batches), the least a forwarded packet can cost on this machine. Run it beside
//! `cargo bench -p sfu --bench forward` to state the engine's cost as a multiple of it.

use std::process::ExitCode;

use loadtest::floor::{self, DEFAULT_BATCH, Limit};

fn main() -> ExitCode {
    // Cargo passes `--bench` to a harness-less bench target; only numbers are ours.
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse::<u64>().ok());
    let packets = numbers.next().unwrap_or(200_000);
    let batch = numbers
        .next()
        .and_then(|b| usize::try_from(b).ok())
        .unwrap_or(DEFAULT_BATCH);
    match floor::measure(Limit::Packets(packets), batch) {
        Ok(floor) => {
            println!(
                "loopback floor, {} packets of {} payload bytes:",
                packets, floor.payload_bytes
            );
            print!("{}", floor.summary());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("floor: {err}");
            ExitCode::FAILURE
        }
    }
}
