//! The SFU core forwarding one publisher to N subscribers in-process, with real DTLS-SRTP
//! endpoints on a virtual network. Prints the server's core-µs per forwarded packet: the
//! real time spent inside the engine (single-threaded) divided by packets written to
//! subscribers.
//!
//! Run: `cargo bench -p sfu --bench forward` (add `-- 1 10 100` to choose N). With `NO_BWE=1`
//! the subscribers run without bandwidth estimation, and so without str0m's leaky pacer. With
//! `WORKERS=W` the server is W media workers' engines (the publisher on one, the subscribers
//! spread over all, the publication mirrored to the others): the figure is then the CPU of
//! every engine together, hand-offs included, divided by the packets forwarded. The engines
//! run in turn on this one thread, so it shows what the hand-off costs, not how the workers
//! scale on several cores.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::Duration;

use sim::Sim;

fn measure(subscribers: usize) -> (f64, u64, Duration) {
    // Room for the publisher and every subscriber.
    let workers = std::env::var("WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    let mut sim = Sim::with_workers(workers, |c| {
        c.max_participants_per_room = subscribers + 1;
        c.bandwidth_estimation = std::env::var_os("NO_BWE").is_none();
    });
    // One publisher: Opus every 20 ms and ~1 Mbps of video (30 fps of 4 kB frames).
    sim.join("bench", |c| {
        c.video_fps = 30;
        c.video_frame_bytes = 4_000;
        c.keyframe_interval = Some(Duration::from_secs(2));
    });
    for _ in 0..subscribers {
        sim.join("bench", |c| {
            c.publish_audio = false;
            c.publish_video = false;
            c.analyze_audio = false;
        });
    }
    // Let every subscriber connect and get its first keyframe.
    sim.run_for(Duration::from_secs(3));
    let forwarded_before = sim.total_stats().rtp_forwarded;
    let busy_before = sim.engine_busy;
    sim.run_for(Duration::from_secs(2));
    let forwarded = sim.total_stats().rtp_forwarded - forwarded_before;
    let busy = sim.engine_busy - busy_before;
    let per_packet = busy.as_secs_f64() * 1e6 / forwarded.max(1) as f64;
    (per_packet, forwarded, busy)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1, 10, 100, 1000]
    } else {
        sizes
    };
    println!("subscribers  packets_forwarded  engine_cpu_ms  core_us_per_forwarded_packet");
    for n in sizes {
        let (per_packet, forwarded, busy) = measure(n);
        println!(
            "{n:>11}  {forwarded:>17}  {:>13.1}  {per_packet:>28.2}",
            busy.as_secs_f64() * 1e3
        );
    }
}
