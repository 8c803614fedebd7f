//! The loopback floor: the least CPU a forwarded packet can cost on this machine, measured
//! beside a load test so that the server's whole-process cost can be stated as a multiple of it.
//!
//! Per packet the floor does what an SFU must do at the very least for each subscriber: seal an
//! RTP-sized payload with AES-128-GCM (as SRTP's AEAD profile does) and hand it to the kernel as
//! one UDP datagram to a 127.0.0.1 socket that another thread drains, as the receiving bots do.
//! It is measured twice: one `send` per packet, and `sendmmsg` batches (one system call for
//! [`DEFAULT_BATCH`] datagrams), the batching issue 17 asks the server to adopt. Nothing else is
//! included (no SRTP bookkeeping, no RTCP, no congestion control), so no real SFU reaches it.

use std::io::IoSlice;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A video RTP packet's payload (a full-MTU VP8 packet carries about this much).
pub const PAYLOAD_BYTES: usize = 1_100;
/// The RTP header in front of it (12 bytes, no extensions), authenticated but not encrypted.
const HEADER_BYTES: usize = 12;
/// The AES-GCM tag after it.
const TAG_BYTES: usize = 16;
/// Datagrams per `sendmmsg` call.
pub const DEFAULT_BATCH: usize = 32;
/// The largest batch: Linux's `UIO_MAXIOV` allows more, but past a few dozen a batch saves
/// nothing more and only delays the first datagram of it.
pub const MAX_BATCH: usize = 64;
/// How often the sender looks at the clock when it runs for a duration: often enough to stop
/// within a millisecond, rarely enough not to add to the figure.
const CLOCK_EVERY: u64 = 256;
/// How long the drain thread waits for a datagram before it looks at its stop flag again.
const DRAIN_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum FloorError {
    #[error("loopback socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("sendmmsg: {0}")]
    Sendmmsg(#[from] nix::Error),
    #[error("AES-GCM key or seal failed")]
    Crypto,
    #[error("CPU clock unavailable: {0}")]
    Clock(String),
    #[error("the drain thread panicked")]
    Drain,
}

/// How long one measurement runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Packets(u64),
    Duration(Duration),
}

/// One way of sending, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorFigures {
    /// Datagrams per system call (1: one `send` each).
    pub batch: usize,
    pub packets: u64,
    /// Datagrams the drain thread read (loopback drops what its receive buffer cannot hold).
    pub received: u64,
    pub wall_s: f64,
    pub packets_per_s: f64,
    /// The sending thread's CPU (seal and system call) per packet.
    pub sender_core_us_per_packet: f64,
    /// The whole process's CPU per packet: the sender and the drain thread, i.e. also the
    /// kernel's delivery to the receiving socket and the receiver's wake-up, which the
    /// server's own loopback figure includes as well.
    pub process_core_us_per_packet: f64,
}

/// The floor, both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    pub payload_bytes: usize,
    /// One `send` per packet.
    pub single: FloorFigures,
    /// `sendmmsg` batches of `batched.batch`.
    pub batched: FloorFigures,
}

impl Floor {
    /// A short text summary, two lines.
    pub fn summary(&self) -> String {
        let line = |name: &str, f: &FloorFigures| {
            format!(
                "floor ({name}): {:.2} core-µs per packet whole process, {:.2} sender thread, \
                 {:.0} packets/s ({} sent, {} drained)\n",
                f.process_core_us_per_packet,
                f.sender_core_us_per_packet,
                f.packets_per_s,
                f.packets,
                f.received
            )
        };
        let batched = format!("sendmmsg × {}", self.batched.batch);
        format!(
            "{}{}",
            line("AES-128-GCM + send", &self.single),
            line(&format!("AES-128-GCM + {batched}"), &self.batched)
        )
    }
}

/// Measures the floor one way then the other, each for `limit`, with `batch` datagrams per
/// `sendmmsg`.
pub fn measure(limit: Limit, batch: usize) -> Result<Floor, FloorError> {
    Ok(Floor {
        payload_bytes: PAYLOAD_BYTES,
        single: measure_one(limit, 1)?,
        batched: measure_one(limit, batch.max(1))?,
    })
}

/// Seals and sends packets of [`PAYLOAD_BYTES`] to a drained loopback socket until `limit`,
/// `batch` datagrams per system call (1: plain `send`; at most [`MAX_BATCH`]).
pub fn measure_one(limit: Limit, batch: usize) -> Result<FloorFigures, FloorError> {
    let batch = batch.clamp(1, MAX_BATCH);
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    receiver.set_read_timeout(Some(DRAIN_POLL))?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let destination = receiver.local_addr()?;
    sender.connect(destination)?;

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drain = {
        let stop = stop.clone();
        let received = received.clone();
        thread::Builder::new()
            .name("floor-drain".into())
            .spawn(move || drain(&receiver, &stop, &received))?
    };

    let result = send_until(&sender, limit, batch);
    stop.store(true, Ordering::Relaxed);
    // The drain thread's CPU belongs to the measurement, so the process clock is read after
    // it has stopped; it stops within one poll interval.
    let joined = drain.join();
    let (packets, wall, sender_cpu, process_start) = result?;
    let process_cpu = cpu_time::ProcessTime::try_now()
        .map_err(|err| FloorError::Clock(err.to_string()))?
        .as_duration()
        .saturating_sub(process_start);
    if joined.is_err() {
        return Err(FloorError::Drain);
    }
    let per_packet = |cpu: Duration| cpu.as_secs_f64() * 1e6 / packets.max(1) as f64;
    Ok(FloorFigures {
        batch,
        packets,
        received: received.load(Ordering::Relaxed),
        wall_s: wall.as_secs_f64(),
        packets_per_s: packets as f64 / wall.as_secs_f64().max(1e-9),
        sender_core_us_per_packet: per_packet(sender_cpu),
        process_core_us_per_packet: per_packet(process_cpu),
    })
}

/// Reads and discards datagrams until told to stop.
fn drain(socket: &UdpSocket, stop: &AtomicBool, received: &AtomicU64) {
    let mut buf = [0u8; 2_048];
    while !stop.load(Ordering::Relaxed) {
        if socket.recv(&mut buf).is_ok() {
            received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The sending loop: returns the packets sent, the wall time, the sender thread's CPU and the
/// process CPU clock at the start.
fn send_until(
    socket: &UdpSocket,
    limit: Limit,
    batch: usize,
) -> Result<(u64, Duration, Duration, Duration), FloorError> {
    let key = UnboundKey::new(&AES_128_GCM, &[0x42; 16]).map_err(|_| FloorError::Crypto)?;
    let key = LessSafeKey::new(key);
    let packet_len = HEADER_BYTES + PAYLOAD_BYTES + TAG_BYTES;
    // Every buffer is allocated before the clocks start: the loop allocates nothing.
    let mut buffers = vec![vec![0x5a_u8; packet_len]; batch];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch, None);
    let addresses: Vec<Option<SockaddrStorage>> = vec![None; batch];
    let fd = socket.as_raw_fd();

    let thread_start =
        cpu_time::ThreadTime::try_now().map_err(|err| FloorError::Clock(err.to_string()))?;
    let process_start = cpu_time::ProcessTime::try_now()
        .map_err(|err| FloorError::Clock(err.to_string()))?
        .as_duration();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut counter = 0u64;
    let mut next_clock = CLOCK_EVERY;
    loop {
        let done = match limit {
            Limit::Packets(n) => sent >= n,
            Limit::Duration(d) if sent >= next_clock => {
                next_clock = sent + CLOCK_EVERY;
                started.elapsed() >= d
            }
            Limit::Duration(_) => false,
        };
        if done {
            break;
        }
        let this_batch = match limit {
            Limit::Packets(n) => batch.min(usize::try_from(n - sent).unwrap_or(batch)),
            Limit::Duration(_) => batch,
        };
        for buffer in buffers.iter_mut().take(this_batch) {
            counter += 1;
            seal(&key, counter, buffer)?;
        }
        if batch == 1 {
            // A full loopback receive queue drops the datagram, as a real network would; the
            // sender's cost is the same either way.
            let _ = socket.send(&buffers[0]);
        } else {
            let slices: [[IoSlice<'_>; 1]; MAX_BATCH] =
                std::array::from_fn(|i| [IoSlice::new(buffers.get(i).map_or(&[][..], |b| b))]);
            // sendmmsg may send fewer than asked when the socket's buffer is full; the rest is
            // dropped like lost datagrams rather than retried, so that a batch stays one
            // system call as it would be in a server.
            let _ = sendmmsg(
                fd,
                &mut headers,
                slices[..this_batch].iter(),
                &addresses[..this_batch],
                [],
                MsgFlags::empty(),
            )?
            .count();
        }
        sent += this_batch as u64;
    }
    let wall = started.elapsed();
    let sender_cpu = thread_start.elapsed();
    Ok((sent, wall, sender_cpu, process_start))
}

/// Seals `packet` (header, payload, room for the tag) in place under a nonce made from
/// `counter`, as SRTP's AES-GCM profile does with its packet index.
fn seal(key: &LessSafeKey, counter: u64, packet: &mut [u8]) -> Result<(), FloorError> {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    let (header, rest) = packet.split_at_mut(HEADER_BYTES);
    header[2..4].copy_from_slice(&(counter as u16).to_be_bytes());
    let (payload, tag_out) = rest.split_at_mut(PAYLOAD_BYTES);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&*header),
            payload,
        )
        .map_err(|_| FloorError::Crypto)?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_runs_and_reports_positive_figures() {
        let floor = measure(Limit::Packets(300), DEFAULT_BATCH).expect("floor");
        for (figures, batch) in [(&floor.single, 1), (&floor.batched, DEFAULT_BATCH)] {
            assert_eq!(figures.batch, batch);
            assert_eq!(figures.packets, 300);
            assert!(figures.received <= figures.packets);
            assert!(figures.wall_s > 0.0);
            assert!(figures.packets_per_s > 0.0 && figures.packets_per_s.is_finite());
            assert!(figures.sender_core_us_per_packet.is_finite());
            assert!(figures.sender_core_us_per_packet >= 0.0);
            assert!(figures.process_core_us_per_packet.is_finite());
            assert!(figures.process_core_us_per_packet > 0.0);
        }
        assert_eq!(floor.payload_bytes, PAYLOAD_BYTES);
        assert!(floor.summary().contains("sendmmsg × 32"));
    }

    #[test]
    fn a_partial_last_batch_sends_exactly_the_packets_asked() {
        let figures = measure_one(Limit::Packets(45), 32).expect("floor");
        assert_eq!(figures.packets, 45);
    }

    #[test]
    fn a_duration_limit_ends() {
        let figures = measure_one(Limit::Duration(Duration::from_millis(20)), 8).expect("floor");
        assert!(figures.packets > 0);
    }
}
