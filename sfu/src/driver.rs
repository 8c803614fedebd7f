//! The thin I/O layer around the engine: one UDP socket for every peer, the clock, and the
//! command/event channels to signaling.
//!
//! The engine lives on one dedicated thread with its own single-threaded runtime, so media
//! never crosses threads and no lock is taken per packet. On a machine with cores to spare, the
//! kernel's datagram sends (about a third of the media thread's time in a large broadcast) move
//! to a second thread, which receives the datagrams in batches (see [`SendThread`]).

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use str0m::net::Transmit;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::api::{SfuCommand, SfuEvent};
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::recording::RecordedMedia;
use crate::stats::EngineStats;

/// Where the SFU listens and what it advertises.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The UDP address to bind; port 0 picks a free port.
    pub bind: SocketAddr,
    /// The address put in ICE candidates; defaults to the bound address. Set it to the public
    /// address when the server is behind NAT.
    pub advertise: Option<SocketAddr>,
    /// Shortest interval between keyframe requests to one publisher.
    pub keyframe_request_interval: Duration,
    /// Most participants in one room.
    pub max_participants_per_room: usize,
    /// Estimate each subscriber's bandwidth and fit its simulcast layers to it (see
    /// [`EngineConfig::bandwidth_estimation`]).
    pub bandwidth_estimation: bool,
    /// Start new video subscriptions from the packets since the last keyframe (see
    /// [`EngineConfig::fast_start`]).
    pub fast_start: bool,
    /// Audio streams each subscriber receives at most in a large room, the loudest (see
    /// [`EngineConfig::max_audio_streams`]); `None` forwards all.
    pub max_audio_streams: Option<usize>,
    /// Where recorded rooms' media goes (a recorder thread's bounded channel). Without one,
    /// recording commands are accepted and their media dropped.
    pub recording_sink: Option<std::sync::mpsc::SyncSender<RecordedMedia>>,
    /// Send datagrams from a second thread instead of the media thread (see [`SendThread`]).
    /// Worth it only where that thread gets a core of its own: the default is on with four or
    /// more cores.
    pub send_thread: bool,
}

impl SfuConfig {
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            advertise: None,
            keyframe_request_interval: Duration::from_secs(1),
            max_participants_per_room: 1_000,
            bandwidth_estimation: true,
            fast_start: true,
            max_audio_streams: Some(5),
            recording_sink: None,
            send_thread: std::thread::available_parallelism().is_ok_and(|n| n.get() >= 4),
        }
    }
}

/// Errors starting the SFU.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the media socket: {0}")]
    Bind(#[from] io::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A snapshot of the engine for metrics, refreshed by the SFU thread.
#[derive(Debug, Clone, Default)]
pub struct SfuSnapshot {
    pub stats: EngineStats,
    pub rooms: usize,
    pub participants: usize,
    pub publications: usize,
    pub subscriptions: usize,
}

/// Signaling's side of the in-process SFU.
#[derive(Debug, Clone)]
pub struct SfuHandle {
    commands: mpsc::UnboundedSender<SfuCommand>,
    local_addr: SocketAddr,
    advertised_addr: SocketAddr,
    snapshot: Arc<Mutex<SfuSnapshot>>,
}

impl SfuHandle {
    /// Sends a command; returns false when the SFU thread has stopped.
    pub fn send(&self, command: SfuCommand) -> bool {
        self.commands.send(command).is_ok()
    }

    /// The bound media socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address advertised in ICE candidates.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.advertised_addr
    }

    /// Whether the SFU thread still runs: false once it ended, whether by a panic, a failed
    /// media socket or [`SfuCommand::Shutdown`].
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Resolves once the SFU thread has ended.
    pub async fn stopped(&self) {
        self.commands.closed().await;
    }

    /// The latest counters, at most about a second old.
    pub fn snapshot(&self) -> SfuSnapshot {
        self.snapshot
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// Binds the media socket and starts the SFU thread. Events arrive on the returned receiver.
pub fn spawn(
    config: SfuConfig,
) -> Result<(SfuHandle, mpsc::UnboundedReceiver<SfuEvent>), StartError> {
    let socket = bind_socket(config.bind)?;
    let local_addr = socket.local_addr()?;
    let advertised_addr = config.advertise.unwrap_or(local_addr);
    let mut engine_config = EngineConfig::new(advertised_addr);
    engine_config.keyframe_request_interval = config.keyframe_request_interval;
    engine_config.max_participants_per_room = config.max_participants_per_room;
    engine_config.bandwidth_estimation = config.bandwidth_estimation;
    engine_config.fast_start = config.fast_start;
    engine_config.max_audio_streams = config.max_audio_streams;
    let engine = Engine::new(engine_config)?;
    let egress = if config.send_thread {
        Egress::Thread(SendThread::spawn(socket.try_clone()?)?)
    } else {
        Egress::Inline
    };
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let snapshot = Arc::new(Mutex::new(SfuSnapshot::default()));
    let thread_snapshot = snapshot.clone();
    std::thread::Builder::new()
        .name("sfu".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(err) => {
                    tracing::error!(%err, "cannot start the SFU runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let socket = match UdpSocket::from_std(socket) {
                    Ok(s) => s,
                    Err(err) => {
                        tracing::error!(%err, "cannot register the media socket");
                        return;
                    }
                };
                run(
                    engine,
                    MediaSocket { socket, egress },
                    advertised_addr,
                    command_rx,
                    event_tx,
                    thread_snapshot,
                    config.recording_sink,
                )
                .await;
            });
        })?;
    Ok((
        SfuHandle {
            commands: command_tx,
            local_addr,
            advertised_addr,
            snapshot,
        },
        event_rx,
    ))
}

fn bind_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    // Large buffers absorb bursts (a keyframe fanned out to many subscribers) without loss.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Datagrams read per wake-up before timers and commands get a turn.
const READ_BATCH: usize = 256;

async fn run(
    mut engine: Engine,
    mut media: MediaSocket,
    advertised_addr: SocketAddr,
    mut commands: mpsc::UnboundedReceiver<SfuCommand>,
    events: mpsc::UnboundedSender<SfuEvent>,
    snapshot: Arc<Mutex<SfuSnapshot>>,
    recording_sink: Option<std::sync::mpsc::SyncSender<RecordedMedia>>,
) {
    let mut buf = vec![0u8; 2048];
    let mut recording_dropped = 0u64;
    let mut next_snapshot = Instant::now();
    loop {
        let deadline = engine
            .poll_timeout()
            .min(Instant::now() + Duration::from_millis(100));
        tokio::select! {
            readable = media.socket.readable() => {
                if let Err(err) = readable {
                    tracing::error!(%err, "media socket failed");
                    return;
                }
                for _ in 0..READ_BATCH {
                    match media.socket.try_recv_from(&mut buf) {
                        Ok((n, source)) => {
                            // The engine sees the advertised address as the destination, so
                            // that ICE pairs match the candidate it handed out behind NAT.
                            engine.handle_datagram(Instant::now(), source, advertised_addr, &buf[..n]);
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                        Err(err) => {
                            // ICMP errors surface here on Linux; they concern one peer only.
                            tracing::debug!(%err, "media socket read error");
                            break;
                        }
                    }
                }
            }
            command = commands.recv() => {
                let Some(mut command) = command else {
                    return;
                };
                loop {
                    if matches!(command, SfuCommand::Shutdown) {
                        tracing::info!("the SFU stops");
                        return;
                    }
                    engine.handle_command(Instant::now(), command);
                    let Ok(next) = commands.try_recv() else {
                        break;
                    };
                    command = next;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        if engine.poll_timeout() <= now {
            engine.handle_timeout(now);
        }
        if !media.send(&mut engine) {
            tracing::error!("the media send thread stopped");
            return;
        }
        while let Some(event) = engine.poll_event() {
            if events.send(event).is_err() {
                return;
            }
        }
        while let Some(media) = engine.poll_recorded() {
            // Never wait on the recorder: a full queue loses recorded media, not live media.
            if let Some(sink) = &recording_sink
                && sink.try_send(media).is_err()
            {
                recording_dropped += 1;
            }
        }
        if now >= next_snapshot {
            next_snapshot = now + Duration::from_secs(1);
            let (rooms, participants, publications, subscriptions) = engine.census();
            if let Ok(mut s) = snapshot.lock() {
                *s = SfuSnapshot {
                    stats: EngineStats {
                        recording_dropped,
                        dropped_send_queue_full: media.dropped(),
                        ..engine.stats().clone()
                    },
                    rooms,
                    participants,
                    publications,
                    subscriptions,
                };
            }
        }
    }
}

/// Sends one datagram; a failure concerns that datagram only.
fn send_datagram(transmit: &Transmit, send: impl FnOnce(&[u8], SocketAddr) -> io::Result<usize>) {
    match send(&transmit.contents, transmit.destination) {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
            // The kernel buffer is full: this datagram is lost like any other UDP loss, and
            // NACK/RTX repairs it.
        }
        Err(err) => tracing::debug!(%err, "media socket send error"),
    }
}

/// The media socket, and how the engine's datagrams reach it.
struct MediaSocket {
    socket: UdpSocket,
    egress: Egress,
}

impl MediaSocket {
    /// Sends (or hands over) everything the engine has to send. False when the send thread
    /// has stopped.
    fn send(&mut self, engine: &mut Engine) -> bool {
        match &mut self.egress {
            Egress::Inline => {
                while let Some(transmit) = engine.poll_transmit() {
                    send_datagram(&transmit, |data, to| self.socket.try_send_to(data, to));
                }
                true
            }
            Egress::Thread(thread) => thread.hand_over(|| engine.poll_transmit()),
        }
    }

    /// Datagrams dropped because the send thread was behind.
    fn dropped(&self) -> u64 {
        match &self.egress {
            Egress::Inline => 0,
            Egress::Thread(thread) => thread.dropped,
        }
    }
}

/// How the media thread's datagrams reach the socket.
enum Egress {
    /// Sent by the media thread itself, as soon as each pass ends.
    Inline,
    Thread(SendThread),
}

/// Batches of datagrams in flight to the send thread at most; beyond that the media thread
/// is producing faster than the kernel takes them, and the batch is dropped like a full socket
/// buffer drops datagrams.
const SEND_QUEUE_BATCHES: usize = 64;

/// Batches the media thread keeps for reuse.
const SPARE_BATCHES: usize = SEND_QUEUE_BATCHES + 2;

/// A thread that writes the media thread's datagrams to the shared socket.
///
/// The media thread hands over everything one pass produced as one batch (one channel
/// operation per pass, not per packet). The send thread returns each batch once written, and
/// the media thread drops the datagrams and reuses the vector: memory is freed by the thread
/// that allocated it, so neither thread takes the allocator's lock for the other's memory, and
/// the steady state allocates nothing.
struct SendThread {
    batches: SyncSender<Vec<Transmit>>,
    returned: Receiver<Vec<Transmit>>,
    spare: Vec<Vec<Transmit>>,
    /// Datagrams dropped because the send thread was behind.
    dropped: u64,
}

impl SendThread {
    fn spawn(socket: std::net::UdpSocket) -> io::Result<Self> {
        let (batches, to_send) = std::sync::mpsc::sync_channel::<Vec<Transmit>>(SEND_QUEUE_BATCHES);
        let (sent, returned) = std::sync::mpsc::sync_channel(SPARE_BATCHES);
        std::thread::Builder::new()
            .name("sfu-send".into())
            .spawn(move || {
                while let Ok(batch) = to_send.recv() {
                    for transmit in &batch {
                        send_datagram(transmit, |data, to| socket.send_to(data, to));
                    }
                    match sent.try_send(batch) {
                        Ok(()) => {}
                        // More batches are out than the media thread keeps: this one is
                        // freed here instead.
                        Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Disconnected(_)) => break,
                    }
                }
            })?;
        Ok(Self {
            batches,
            returned,
            spare: Vec::new(),
            dropped: 0,
        })
    }

    /// Hands everything `next` yields (the engine's datagrams of one pass) over as one batch.
    /// False when the send thread has stopped.
    fn hand_over(&mut self, mut next: impl FnMut() -> Option<Transmit>) -> bool {
        while let Ok(mut batch) = self.returned.try_recv() {
            batch.clear();
            if self.spare.len() < SPARE_BATCHES {
                self.spare.push(batch);
            }
        }
        let Some(first) = next() else {
            return true;
        };
        let mut batch = self.spare.pop().unwrap_or_default();
        batch.push(first);
        while let Some(transmit) = next() {
            batch.push(transmit);
        }
        match self.batches.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(mut batch)) => {
                self.dropped += batch.len() as u64;
                batch.clear();
                self.spare.push(batch);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::net::Protocol;

    fn datagram(to: SocketAddr, byte: u8) -> Transmit {
        Transmit {
            proto: Protocol::Udp,
            source: to,
            destination: to,
            contents: vec![byte; 100].into(),
        }
    }

    #[test]
    fn the_send_thread_writes_every_batch_in_order_and_returns_the_batches() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let to = receiver.local_addr().expect("addr");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut thread = SendThread::spawn(sender).expect("spawn");

        // Three passes of 10 datagrams each, numbered.
        for pass in 0..3u8 {
            let mut queue: Vec<Transmit> = (0..10).map(|i| datagram(to, pass * 10 + i)).collect();
            queue.reverse();
            assert!(thread.hand_over(|| queue.pop()));
        }
        // A pass with nothing to send hands nothing over.
        assert!(thread.hand_over(|| None));
        let mut buf = [0u8; 200];
        for expected in 0..30u8 {
            let n = receiver.recv(&mut buf).expect("datagram arrives");
            assert_eq!(&buf[..n], &[expected; 100][..]);
        }
        // Each batch comes back to be reused once written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while thread.spare.len() < 3 && Instant::now() < deadline {
            assert!(thread.hand_over(|| None));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(thread.spare.len(), 3);
        assert!(
            thread
                .spare
                .iter()
                .all(|b| b.is_empty() && b.capacity() >= 10)
        );
        assert_eq!(thread.dropped, 0);
    }

    /// The media thread's side of a send thread that never runs: a queue of one batch, and
    /// the thread's ends of both channels for the test to keep or drop.
    fn without_a_thread() -> (
        SendThread,
        Receiver<Vec<Transmit>>,
        SyncSender<Vec<Transmit>>,
    ) {
        let (batches, to_send) = std::sync::mpsc::sync_channel(1);
        let (sent, returned) = std::sync::mpsc::sync_channel(1);
        let thread = SendThread {
            batches,
            returned,
            spare: Vec::new(),
            dropped: 0,
        };
        (thread, to_send, sent)
    }

    #[test]
    fn a_send_thread_that_stopped_is_reported() {
        let (mut thread, to_send, _sent) = without_a_thread();
        drop(to_send);
        let to: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let mut one = Some(datagram(to, 1));
        assert!(!thread.hand_over(|| one.take()));
    }

    #[test]
    fn a_full_send_queue_drops_the_batch_and_counts_its_datagrams() {
        // Nothing takes the batches: the queue of one fills.
        let (mut thread, _to_send, _sent) = without_a_thread();
        let to: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let mut first: Vec<Transmit> = (0..4).map(|i| datagram(to, i)).collect();
        assert!(thread.hand_over(|| first.pop()));
        let mut second: Vec<Transmit> = (0..3).map(|i| datagram(to, i)).collect();
        assert!(thread.hand_over(|| second.pop()));
        assert_eq!(thread.dropped, 3);
        assert_eq!(thread.spare.len(), 1, "the dropped batch is kept for reuse");
    }
}
