//! The thin I/O layer around the engine: one UDP socket for every peer, the clock, and the
//! command/event channels to signaling.
//!
//! The engine lives on one dedicated thread with its own single-threaded runtime, so media
//! never crosses threads and no lock is taken per packet.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
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
                    socket,
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
    socket: UdpSocket,
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
            readable = socket.readable() => {
                if let Err(err) = readable {
                    tracing::error!(%err, "media socket failed");
                    return;
                }
                for _ in 0..READ_BATCH {
                    match socket.try_recv_from(&mut buf) {
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
                let Some(command) = command else {
                    return;
                };
                engine.handle_command(Instant::now(), command);
                while let Ok(command) = commands.try_recv() {
                    engine.handle_command(Instant::now(), command);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        if engine.poll_timeout() <= now {
            engine.handle_timeout(now);
        }
        while let Some(transmit) = engine.poll_transmit() {
            match socket.try_send_to(&transmit.contents, transmit.destination) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // The kernel buffer is full: this datagram is lost like any other UDP
                    // loss, and NACK/RTX repairs it.
                }
                Err(err) => tracing::debug!(%err, "media socket send error"),
            }
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
