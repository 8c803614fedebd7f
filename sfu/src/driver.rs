//! The thin I/O layer around the engines: media workers on every core, one UDP port for every
//! peer, the clock, and the command/event channels to signaling.
//!
//! Each media worker is a thread with its own [`Engine`] (sans-IO, see [`crate::relay`] for
//! how a room spans workers) and its own event loop (mio): no lock is taken per packet and a
//! packet's engine work stays on one core. A participant is placed on a worker when it joins
//! (the one with the fewest participants) and stays there.
//!
//! **One port.** Every worker binds the media port with `SO_REUSEPORT`. A datagram from an
//! address no transport has taken yet lands on any of them (the kernel hashes its 4-tuple);
//! only a STUN binding request may introduce an address, and its USERNAME names the worker
//! that holds the transport (the server's ufrags start with the worker), so a worker forwards
//! such a request to its owner once. When the owner's engine binds the address, the owner
//! opens a socket of its own on the same port *connected* to that peer: the kernel prefers an
//! exact 4-tuple match, so every later datagram of that peer goes straight to the owner's
//! socket, never through another thread. With one worker there is one socket and nothing else.
//!
//! **Between workers** travel, once per pass and destination, batches of relays (a mirrored
//! publication's packets, keyframe requests, layer wants) on a channel, with a wake-up. A
//! worker that stops (a panic, a failed socket) is counted and reported: its participants are
//! told to reconnect (they are placed on the remaining workers) and the others drop its
//! mirrors; the server goes on.
//!
//! On a machine with cores to spare a worker may hand its datagram sends to a second thread
//! (see [`SendThread`]); with a worker per core that is off by default.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use protocol::{ParticipantId, RoomId};
use socket2::{Domain, Socket, Type};
use str0m::net::Transmit;
use tokio::sync::{mpsc, watch};

use crate::api::{SfuCommand, SfuEvent};
use crate::engine::{AddressChange, Engine, EngineConfig, EngineError, ufrag_worker};
use crate::links::{LinkPeer, LinkPort, LinkStats};
use crate::recording::RecordedMedia;
use crate::relay::{MAX_LOCAL_WORKERS, Relay, WorkerId, is_link};
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
    /// Media workers (threads, each with its own engine); 0: one per core with four or more
    /// cores, one below (see [`SfuConfig::worker_count`]).
    pub workers: usize,
    /// Each worker sends its datagrams from a second thread (see [`SendThread`]). Worth it
    /// only where that thread gets a core of its own; off by default, the workers using every
    /// core.
    pub send_thread: bool,
    /// The link port: where worker 0 exchanges relays with the other servers of a cluster
    /// (see [`crate::links`]); `None` outside a cluster.
    pub links_bind: Option<SocketAddr>,
    /// Where this server's publication ids start (see
    /// [`EngineConfig::publication_ids_from`]).
    pub publication_ids_from: u64,
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
            workers: 0,
            send_thread: false,
            links_bind: None,
            publication_ids_from: 0,
        }
    }

    /// The workers this configuration runs. By default one per core from four cores on; below
    /// that one: on two cores the signaling runtime, the kernel's network work and the second
    /// worker compete for the same cores, and a 300-viewer broadcast measured here cost 26
    /// core-µs per forwarded packet with two workers against 21 with one (join p95 647 against
    /// 331 ms).
    pub fn worker_count(&self) -> usize {
        let workers = if self.workers == 0 {
            match std::thread::available_parallelism().map_or(1, |n| n.get()) {
                cores if cores >= 4 => cores,
                _ => 1,
            }
        } else {
            self.workers
        };
        workers.clamp(1, usize::from(MAX_LOCAL_WORKERS))
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

/// The longest a worker sleeps in its poll, whatever its engine has scheduled: the snapshot and
/// the inbox are looked at at least this often.
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// How often each worker refreshes its share of the [`SfuSnapshot`]. A tenth of a second keeps a
/// rate taken over a 10 s load-test hold within about 1% (at once a second the packet count
/// lagged the CPU time by up to a second), for a census and a copy of the counters ten times a
/// second.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);

/// A snapshot of the engines for metrics, refreshed by each worker every [`SNAPSHOT_INTERVAL`]
/// and added up.
#[derive(Debug, Clone, Default)]
pub struct SfuSnapshot {
    pub stats: EngineStats,
    pub rooms: usize,
    pub participants: usize,
    pub publications: usize,
    pub subscriptions: usize,
    /// Media workers, how many run, and how many stopped by a failure since the start.
    pub workers: usize,
    pub workers_running: usize,
    pub worker_failures: u64,
    /// The links to other servers (worker 0's).
    pub links: LinkStats,
}

/// What reaches a worker from signaling and from the other workers, in order.
#[derive(Debug)]
enum Input {
    Command(SfuCommand),
    /// One pass's relays from another worker.
    Relays(WorkerId, Vec<Relay>),
    /// A datagram from an address nobody holds yet, that arrived on another worker's socket
    /// and names this worker in its STUN username.
    Datagram(SocketAddr, Vec<u8>),
    /// Another worker stopped: drop its mirrors.
    WorkerGone(WorkerId),
    /// Worker 0: the other servers of the cluster now.
    LinkPeers(Vec<LinkPeer>),
    /// Worker 0: the links a room spans now.
    RoomLinks(RoomId, Vec<WorkerId>),
    /// Stop as if failed (a fault drill, see [`SfuHandle::fail_worker`]).
    Fail(String),
    /// Panic (the driver's own tests).
    #[cfg(test)]
    Panic,
}

/// One worker as the others and signaling see it.
#[derive(Debug)]
struct WorkerLink {
    inbox: Sender<Input>,
    waker: Arc<Waker>,
    running: AtomicBool,
    participants: AtomicUsize,
    snapshot: Mutex<WorkerSnapshot>,
}

impl WorkerLink {
    /// Queues an input and wakes the worker; false when it has stopped.
    fn deliver(&self, input: Input) -> bool {
        self.running.load(Ordering::Acquire)
            && self.inbox.send(input).is_ok()
            && self.waker.wake().is_ok()
    }
}

/// One worker's share of the snapshot.
#[derive(Debug, Clone, Default)]
struct WorkerSnapshot {
    stats: EngineStats,
    rooms: Vec<RoomId>,
    participants: usize,
    publications: usize,
    subscriptions: usize,
    links: LinkStats,
}

/// What the handle and the workers share.
#[derive(Debug)]
struct Shared {
    workers: Vec<WorkerLink>,
    /// Which worker holds each participant's transport.
    placement: Mutex<HashMap<ParticipantId, WorkerId>>,
    /// Workers running, for [`SfuHandle::stopped`].
    running: watch::Sender<usize>,
    failures: AtomicU64,
}

impl Shared {
    fn placement(&self) -> std::sync::MutexGuard<'_, HashMap<ParticipantId, WorkerId>> {
        self.placement
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A worker ended: on a failure its participants are told to reconnect (and will be
    /// placed elsewhere) and the other workers forget its publications.
    /// `events` is the ending worker's own sender, dropped right after: once every worker has
    /// ended, signaling's event channel closes, which is how it learns the SFU stopped.
    fn worker_ended(
        &self,
        worker: WorkerId,
        failure: Option<String>,
        events: &mpsc::UnboundedSender<SfuEvent>,
    ) {
        let Some(link) = self.workers.get(usize::from(worker)) else {
            return;
        };
        link.running.store(false, Ordering::Release);
        self.running.send_modify(|n| *n = n.saturating_sub(1));
        let Some(reason) = failure else {
            return;
        };
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(worker, %reason, "a media worker stopped; its participants reconnect");
        let participants: Vec<ParticipantId> = {
            let mut placement = self.placement();
            let gone: Vec<ParticipantId> = placement
                .iter()
                .filter(|(_, w)| **w == worker)
                .map(|(p, _)| *p)
                .collect();
            for p in &gone {
                placement.remove(p);
            }
            gone
        };
        let _ = events.send(SfuEvent::WorkerFailed {
            worker,
            participants,
        });
        for (index, other) in self.workers.iter().enumerate() {
            if index != usize::from(worker) {
                other.deliver(Input::WorkerGone(worker));
            }
        }
    }
}

/// Signaling's side of the in-process SFU.
#[derive(Debug, Clone)]
pub struct SfuHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    advertised_addr: SocketAddr,
    links_addr: Option<SocketAddr>,
}

impl SfuHandle {
    /// Sends a command to the worker it concerns; false when that worker has stopped.
    pub fn send(&self, command: SfuCommand) -> bool {
        let workers = &self.shared.workers;
        let worker = match &command {
            SfuCommand::AddParticipant { participant, .. } => {
                // The running worker with the fewest participants.
                let Some((index, link)) = workers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.running.load(Ordering::Acquire))
                    .min_by_key(|(_, w)| w.participants.load(Ordering::Relaxed))
                else {
                    return false;
                };
                link.participants.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .placement()
                    .insert(*participant, index as WorkerId);
                index
            }
            SfuCommand::RemoveParticipant { participant } => {
                let Some(worker) = self.shared.placement().remove(participant) else {
                    return true;
                };
                if let Some(link) = workers.get(usize::from(worker)) {
                    link.participants.fetch_sub(1, Ordering::Relaxed);
                }
                usize::from(worker)
            }
            SfuCommand::Shutdown => {
                for link in workers {
                    link.deliver(Input::Command(SfuCommand::Shutdown));
                }
                return true;
            }
            // Worker 0 coordinates rooms: it records them.
            SfuCommand::StartRecording { .. } | SfuCommand::StopRecording { .. } => 0,
            other => match other
                .participant()
                .and_then(|p| self.shared.placement().get(&p).copied())
            {
                Some(worker) => usize::from(worker),
                // Not placed (never joined, or its worker failed): the engine of worker 0
                // refuses it with a typed error.
                None => 0,
            },
        };
        workers
            .get(worker)
            .is_some_and(|link| link.deliver(Input::Command(command)))
    }

    /// The other servers of a cluster, as worker 0 reaches them now (see [`crate::links`]):
    /// a peer no longer listed takes its links' mirrors with it.
    pub fn set_link_peers(&self, peers: Vec<LinkPeer>) -> bool {
        self.shared
            .workers
            .first()
            .is_some_and(|link| link.deliver(Input::LinkPeers(peers)))
    }

    /// The links `room` spans now (none: it spans no other server).
    pub fn set_room_links(&self, room: RoomId, links: Vec<WorkerId>) -> bool {
        self.shared
            .workers
            .first()
            .is_some_and(|link| link.deliver(Input::RoomLinks(room, links)))
    }

    /// The bound link port, in a cluster.
    pub fn links_addr(&self) -> Option<SocketAddr> {
        self.links_addr
    }

    /// Stops one worker as if it had failed: its participants are told to reconnect and land
    /// on the others. For fault drills and tests; nothing in the server calls it.
    pub fn fail_worker(&self, worker: usize, reason: &str) -> bool {
        self.shared
            .workers
            .get(worker)
            .is_some_and(|link| link.deliver(Input::Fail(reason.to_owned())))
    }

    /// The bound media socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address advertised in ICE candidates.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.advertised_addr
    }

    /// Media workers in all, and how many run.
    pub fn workers(&self) -> (usize, usize) {
        let running = self
            .shared
            .workers
            .iter()
            .filter(|w| w.running.load(Ordering::Acquire))
            .count();
        (self.shared.workers.len(), running)
    }

    /// Whether every media worker runs: false once one ended, by a panic, a failed media
    /// socket or [`SfuCommand::Shutdown`].
    pub fn is_running(&self) -> bool {
        let (all, running) = self.workers();
        running == all
    }

    /// Resolves once every worker has ended.
    pub async fn stopped(&self) {
        let mut running = self.shared.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }

    /// The latest counters of every worker added up, at most about a second old.
    pub fn snapshot(&self) -> SfuSnapshot {
        let mut total = SfuSnapshot::default();
        let mut rooms: Vec<RoomId> = Vec::new();
        for link in &self.shared.workers {
            let s = link.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
            total.stats.add(&s.stats);
            rooms.extend(s.rooms.iter().cloned());
            total.participants += s.participants;
            total.publications += s.publications;
            total.subscriptions += s.subscriptions;
            if s.links != LinkStats::default() {
                total.links = s.links.clone();
            }
        }
        rooms.sort();
        rooms.dedup();
        total.rooms = rooms.len();
        (total.workers, total.workers_running) = self.workers();
        total.worker_failures = self.shared.failures.load(Ordering::Relaxed);
        total
    }
}

/// Binds the media port once per worker and starts the workers. Events arrive on the
/// returned receiver.
pub fn spawn(
    config: SfuConfig,
) -> Result<(SfuHandle, mpsc::UnboundedReceiver<SfuEvent>), StartError> {
    let count = config.worker_count();
    let multi = count > 1;
    let first = bind_socket(config.bind, multi)?;
    let local_addr = first.local_addr()?;
    let advertised_addr = config.advertise.unwrap_or(local_addr);
    let mut sockets = vec![first];
    for _ in 1..count {
        // The others bind the port the first one got.
        sockets.push(bind_socket(local_addr, true)?);
    }
    let mut links_socket = match config.links_bind {
        Some(addr) => Some(crate::links::bind(addr)?),
        None => None,
    };
    let links_addr = match &links_socket {
        Some(socket) => Some(socket.local_addr()?),
        None => None,
    };
    let mut engine_config = EngineConfig::new(advertised_addr);
    engine_config.keyframe_request_interval = config.keyframe_request_interval;
    engine_config.max_participants_per_room = config.max_participants_per_room;
    engine_config.bandwidth_estimation = config.bandwidth_estimation;
    engine_config.fast_start = config.fast_start;
    engine_config.max_audio_streams = config.max_audio_streams;
    engine_config.workers = count as WorkerId;
    engine_config.publication_ids_from = config.publication_ids_from;
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let mut links = Vec::new();
    let mut parts = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let mut config = engine_config.clone();
        config.worker = index as WorkerId;
        let engine = Engine::new(config)?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (inbox_tx, inbox_rx) = std::sync::mpsc::channel();
        links.push(WorkerLink {
            inbox: inbox_tx,
            waker,
            running: AtomicBool::new(true),
            participants: AtomicUsize::new(0),
            snapshot: Mutex::new(WorkerSnapshot::default()),
        });
        parts.push((engine, poll, socket, inbox_rx));
    }
    let (running, _) = watch::channel(count);
    let shared = Arc::new(Shared {
        workers: links,
        placement: Mutex::new(HashMap::new()),
        running,
        failures: AtomicU64::new(0),
    });
    for (index, (engine, poll, socket, inbox)) in parts.into_iter().enumerate() {
        let egress = if config.send_thread {
            Egress::Thread(SendThread::spawn(socket.try_clone()?)?)
        } else {
            Egress::Inline
        };
        let mut socket = UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, MAIN, Interest::READABLE)?;
        // Worker 0 is the gateway: it alone reads and writes the link port.
        let links = match links_socket.take().filter(|_| index == 0) {
            Some(std) => {
                let mut port = LinkPort::new(UdpSocket::from_std(std));
                poll.registry()
                    .register(&mut port.socket, LINKS, Interest::READABLE)?;
                Some(port)
            }
            None => None,
        };
        let worker = Worker {
            id: index as WorkerId,
            engine,
            poll,
            media: MediaSocket { socket, egress },
            peers: Vec::new(),
            by_peer: HashMap::new(),
            inbox,
            shared: shared.clone(),
            local_addr,
            advertised_addr,
            multi,
            events: event_tx.clone(),
            recording_sink: config.recording_sink.clone(),
            recording_dropped: 0,
            outbox: (0..count).map(|_| Vec::new()).collect(),
            unread: Vec::new(),
            links,
        };
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("sfu-{index}"))
            .spawn(move || {
                let id = worker.id;
                let events = worker.events.clone();
                let mut worker = worker;
                let failure = match std::panic::catch_unwind(AssertUnwindSafe(|| worker.run())) {
                    Ok(Exit::Shutdown) => None,
                    Ok(Exit::Failed(reason)) => Some(reason),
                    Err(panic) => Some(
                        panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".to_owned()),
                    ),
                };
                drop(worker);
                shared.worker_ended(id, failure, &events);
            })?;
    }
    Ok((
        SfuHandle {
            shared,
            local_addr,
            advertised_addr,
            links_addr,
        },
        event_rx,
    ))
}

fn bind_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    // Large buffers absorb bursts (a keyframe fanned out to many subscribers) without loss.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A socket on the media port connected to one peer, so that the kernel delivers that peer's
/// datagrams to this worker only.
fn connected_socket(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    socket.connect(&peer.into())?;
    Ok(UdpSocket::from_std(socket.into()))
}

/// Datagrams read from one socket per turn before timers, inputs and other sockets get theirs.
const READ_BATCH: usize = 256;

/// The event loop's tokens: the waker, the media port's shared socket, the link port (worker
/// 0 in a cluster), then peers' sockets.
const WAKE: Token = Token(0);
const MAIN: Token = Token(1);
const LINKS: Token = Token(2);
const FIRST_PEER: usize = 3;

/// How a worker's loop ended.
enum Exit {
    Shutdown,
    Failed(String),
}

/// One media worker: an engine, its sockets, its inbox, and its share of the outbox.
struct Worker {
    id: WorkerId,
    engine: Engine,
    poll: Poll,
    media: MediaSocket,
    /// Sockets connected to the peers whose transports are here (several workers only), by
    /// token index, and by peer.
    peers: Vec<Option<(SocketAddr, UdpSocket)>>,
    by_peer: HashMap<SocketAddr, usize>,
    inbox: Receiver<Input>,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    advertised_addr: SocketAddr,
    multi: bool,
    events: mpsc::UnboundedSender<SfuEvent>,
    recording_sink: Option<SyncSender<RecordedMedia>>,
    recording_dropped: u64,
    /// This pass's relays, by destination worker.
    outbox: Vec<Vec<Relay>>,
    /// Sockets whose last read stopped at the batch limit, to read on the next turn (the
    /// poll is edge-triggered: it will not say so again).
    unread: Vec<Token>,
    /// Worker 0 in a cluster: the link port.
    links: Option<LinkPort>,
}

impl Worker {
    fn run(&mut self) -> Exit {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 2048];
        let mut next_snapshot = Instant::now();
        let mut ready = Vec::new();
        loop {
            let now = Instant::now();
            let timeout = if self.unread.is_empty() {
                self.engine
                    .poll_timeout()
                    .map_or(IDLE_WAKE, |at| at.saturating_duration_since(now))
                    .min(IDLE_WAKE)
            } else {
                Duration::ZERO
            };
            if let Err(err) = self.poll.poll(&mut events, Some(timeout))
                && err.kind() != io::ErrorKind::Interrupted
            {
                return Exit::Failed(format!("polling: {err}"));
            }
            ready.clear();
            ready.append(&mut self.unread);
            ready.extend(events.iter().map(|e| e.token()).filter(|t| *t != WAKE));
            for &token in &ready {
                if let Err(err) = self.read(token, &mut buf) {
                    return Exit::Failed(format!("the media socket failed: {err}"));
                }
            }
            match self.drain_inbox() {
                Ok(()) => {}
                Err(exit) => return exit,
            }
            let now = Instant::now();
            if self.engine.poll_timeout().is_some_and(|at| at <= now) {
                self.engine.handle_timeout(now);
            }
            if !self.flush() {
                return Exit::Failed("the media send thread stopped".into());
            }
            if now >= next_snapshot {
                next_snapshot = now + SNAPSHOT_INTERVAL;
                self.publish_snapshot();
            }
        }
    }

    /// Reads up to a batch of datagrams from one socket into the engine.
    fn read(&mut self, token: Token, buf: &mut [u8]) -> io::Result<()> {
        if token == LINKS {
            let Some(links) = &mut self.links else {
                return Ok(());
            };
            let engine = &mut self.engine;
            let now = Instant::now();
            if links.read(|link, relay| engine.handle_relay(now, link, relay)) {
                self.unread.push(token);
            }
            return Ok(());
        }
        for _ in 0..READ_BATCH {
            let received = if token == MAIN {
                self.media.socket.recv_from(buf)
            } else {
                let Some(Some((peer, socket))) = self.peers.get(token.0 - FIRST_PEER) else {
                    return Ok(());
                };
                let peer = *peer;
                socket.recv(buf).map(|n| (n, peer))
            };
            match received {
                Ok((n, source)) => self.datagram(token == MAIN, source, &buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // ICMP errors surface here on Linux; they concern one peer only.
                Err(err) if token != MAIN || err.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::debug!(%err, "media socket read error");
                    return Ok(());
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::debug!(%err, "media socket read error");
                    return Ok(());
                }
            }
        }
        self.unread.push(token);
        Ok(())
    }

    /// One datagram: to this engine, or (a binding request from a new address that names
    /// another worker) to the worker that holds its transport.
    fn datagram(&mut self, shared_socket: bool, source: SocketAddr, data: &[u8]) {
        if self.multi
            && shared_socket
            && !self.engine.knows_address(source)
            && let Some(owner) = ufrag_worker(data)
            && owner != self.id
            && let Some(link) = self.shared.workers.get(usize::from(owner))
        {
            link.deliver(Input::Datagram(source, data.to_vec()));
            return;
        }
        // The engine sees the advertised address as the destination, so that ICE pairs match
        // the candidate it handed out behind NAT.
        self.engine
            .handle_datagram(Instant::now(), source, self.advertised_addr, data);
    }

    fn drain_inbox(&mut self) -> Result<(), Exit> {
        loop {
            let input = match self.inbox.try_recv() {
                Ok(input) => input,
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(Exit::Shutdown),
            };
            let now = Instant::now();
            match input {
                Input::Command(SfuCommand::Shutdown) => return Err(Exit::Shutdown),
                Input::Command(command) => self.engine.handle_command(now, command),
                Input::Relays(from, relays) => {
                    for relay in relays {
                        self.engine.handle_relay(now, from, relay);
                    }
                }
                Input::Datagram(source, data) => {
                    self.engine
                        .handle_datagram(now, source, self.advertised_addr, &data);
                }
                Input::WorkerGone(worker) => self.engine.forget_worker(worker),
                Input::LinkPeers(peers) => {
                    if let Some(links) = &mut self.links {
                        for gone in links.set_peers(peers) {
                            self.engine.forget_link(now, gone);
                        }
                    }
                }
                Input::RoomLinks(room, links) => self.engine.set_room_links(now, &room, &links),
                Input::Fail(reason) => return Err(Exit::Failed(reason)),
                #[cfg(test)]
                Input::Panic => panic!("a panic injected by a test"),
            }
        }
    }

    /// Sends what the engine produced: datagrams, then relays (before events, so that a worker
    /// knows a publication before signaling hears of it), then events, recorded media and
    /// the sockets of newly bound or released peers.
    fn flush(&mut self) -> bool {
        if !self.media.send(&mut self.engine) {
            return false;
        }
        while let Some((to, relay)) = self.engine.poll_relay() {
            if is_link(to) {
                if let Some(links) = &mut self.links {
                    links.queue(to, relay);
                }
            } else if let Some(batch) = self.outbox.get_mut(usize::from(to)) {
                batch.push(relay);
            }
        }
        if let Some(links) = &mut self.links {
            links.flush();
        }
        for (to, batch) in self.outbox.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let batch = std::mem::take(batch);
            if let Some(link) = self.shared.workers.get(to) {
                link.deliver(Input::Relays(self.id, batch));
            }
        }
        while let Some(event) = self.engine.poll_event() {
            if self.events.send(event).is_err() {
                return true;
            }
        }
        while let Some(media) = self.engine.poll_recorded() {
            // Never wait on the recorder: a full queue loses recorded media, not live media.
            if let Some(sink) = &self.recording_sink
                && sink.try_send(media).is_err()
            {
                self.recording_dropped += 1;
            }
        }
        while let Some(change) = self.engine.poll_address() {
            if self.multi {
                self.peer_socket(change);
            }
        }
        true
    }

    /// Opens (or closes) the socket connected to a peer whose transport is here.
    fn peer_socket(&mut self, change: AddressChange) {
        match change {
            AddressChange::Bound(peer) => {
                if self.by_peer.contains_key(&peer) {
                    return;
                }
                let mut socket = match connected_socket(self.local_addr, peer) {
                    Ok(socket) => socket,
                    Err(err) => {
                        // Its datagrams keep arriving on the shared socket, forwarded here.
                        tracing::debug!(%err, %peer, "no socket of its own for a peer");
                        return;
                    }
                };
                let index = match self.peers.iter().position(Option::is_none) {
                    Some(free) => free,
                    None => {
                        self.peers.push(None);
                        self.peers.len() - 1
                    }
                };
                let token = Token(FIRST_PEER + index);
                if self
                    .poll
                    .registry()
                    .register(&mut socket, token, Interest::READABLE)
                    .is_err()
                {
                    return;
                }
                self.peers[index] = Some((peer, socket));
                self.by_peer.insert(peer, index);
                // Datagrams the kernel queued on the shared socket before this one existed
                // are read there as usual.
            }
            AddressChange::Released(peer) => {
                if let Some(index) = self.by_peer.remove(&peer)
                    && let Some((_, mut socket)) = self.peers[index].take()
                {
                    let _ = self.poll.registry().deregister(&mut socket);
                }
            }
        }
    }

    fn publish_snapshot(&mut self) {
        let (_, participants, publications, subscriptions) = self.engine.census();
        let snapshot = WorkerSnapshot {
            stats: EngineStats {
                recording_dropped: self.recording_dropped,
                dropped_send_queue_full: self.media.dropped(),
                ..self.engine.stats().clone()
            },
            rooms: self.engine.rooms(),
            participants,
            publications,
            subscriptions,
            links: self
                .links
                .as_ref()
                .map(|l| l.stats().clone())
                .unwrap_or_default(),
        };
        if let Some(link) = self.shared.workers.get(usize::from(self.id)) {
            *link.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
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
                    send_datagram(&transmit, |data, to| self.socket.send_to(data, to));
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

    /// A worker that panics is reported, with the participants it held; the others go on and
    /// new participants are placed on them.
    #[test]
    fn a_panicking_worker_is_reported_and_the_others_go_on() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut config = SfuConfig::new("127.0.0.1:0".parse().expect("addr"));
            config.workers = 2;
            let (sfu, mut events) = spawn(config).expect("spawn");
            for n in 1..=4 {
                assert!(sfu.send(SfuCommand::AddParticipant {
                    participant: ParticipantId(n),
                    room: RoomId("r".into()),
                }));
            }
            let on_one: Vec<ParticipantId> = {
                let placement = sfu.shared.placement();
                let mut ids: Vec<_> = placement
                    .iter()
                    .filter(|(_, w)| **w == 1)
                    .map(|(p, _)| *p)
                    .collect();
                ids.sort();
                ids
            };
            assert_eq!(on_one.len(), 2, "participants spread over the workers");
            assert!(sfu.shared.workers[1].deliver(Input::Panic));
            let failed = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match events.recv().await {
                        Some(SfuEvent::WorkerFailed {
                            worker,
                            mut participants,
                        }) => {
                            participants.sort();
                            return (worker, participants);
                        }
                        Some(_) => {}
                        None => panic!("events ended"),
                    }
                }
            })
            .await
            .expect("the failure is reported");
            assert_eq!(failed, (1, on_one));
            assert_eq!(sfu.workers(), (2, 1));
            assert!(!sfu.is_running());
            assert_eq!(sfu.snapshot().worker_failures, 1);
            // A new participant goes to the worker that runs.
            assert!(sfu.send(SfuCommand::AddParticipant {
                participant: ParticipantId(9),
                room: RoomId("r".into()),
            }));
            assert_eq!(sfu.shared.placement().get(&ParticipantId(9)), Some(&0));
            assert!(sfu.send(SfuCommand::Shutdown));
            tokio::time::timeout(Duration::from_secs(10), sfu.stopped())
                .await
                .expect("the last worker stops");
        });
    }

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
