//! A virtual-time world for the media engine: simulated endpoints (the load tester's sans-IO
//! str0m clients) talk to one [`Engine`] over a fake network with per-link loss and delay.
//! No sockets, no sleeping: time is a variable that jumps to the next deadline.
//!
//! With [`Sim::with_workers`] the server is several engines, one per media worker, as the
//! driver runs them: each endpoint belongs to one, and the engines' relays (mirrored
//! publications) are delivered between them at once.

#![allow(dead_code)]

pub mod nodes;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use endpoint::{Endpoint, EndpointConfig};
use protocol::{ClientMessage, ParticipantId, PublicationInfo, RoomId};
use sfu::{Engine, EngineConfig, SfuCommand, SfuEvent};

/// The server's media address in the simulation.
pub const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
    3478,
);

/// The smallest step of virtual time.
const MIN_STEP: Duration = Duration::from_millis(1);

/// Loss and delay of one endpoint's link, each way.
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    /// Fraction of endpoint → server datagrams lost.
    pub loss_up: f64,
    /// Fraction of server → endpoint datagrams lost.
    pub loss_down: f64,
    pub delay: Duration,
    /// Server → endpoint capacity in bits per second (`None`: unlimited). Datagrams queue
    /// behind each other at that rate, and are dropped when the queue holds more than
    /// [`MAX_QUEUE_DELAY`] of traffic, like a router's buffer.
    pub rate_down: Option<u64>,
}

/// The longest a bottleneck queue delays a datagram before it drops new ones.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(150);

/// The clear header of one RTP packet the server sent an endpoint, as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpSeen {
    pub at: Instant,
    pub ssrc: u32,
    pub pt: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// The padding bit: bandwidth probes, not media.
    pub padding: bool,
}

impl RtpSeen {
    /// Reads an SRTP datagram's clear header; `None` for anything else (RTCP, STUN, DTLS).
    fn parse(at: Instant, data: &[u8]) -> Option<Self> {
        let first = *data.first()?;
        let second = *data.get(1)?;
        // RFC 7983 and RFC 5761: RTP is 128..=191 first, and not an RTCP packet type second.
        if !(128..=191).contains(&first) || (192..=223).contains(&second) || data.len() < 12 {
            return None;
        }
        Some(Self {
            at,
            ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
            pt: second & 0x7f,
            seq: u16::from_be_bytes([data[2], data[3]]),
            timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            marker: second & 0x80 != 0,
            padding: first & 0x20 != 0,
        })
    }
}

/// What crossed one endpoint's downlink.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownlinkCount {
    pub delivered: u64,
    pub delivered_bytes: u64,
    /// Dropped by the bottleneck queue (not by random loss).
    pub queue_drops: u64,
}

pub struct SimEndpoint {
    pub endpoint: Endpoint,
    pub participant: ParticipantId,
    pub link: Link,
    pub joined_at: Instant,
    /// When the answer carrying each subscription arrived.
    pub answered_at: Vec<Instant>,
    pub errors: Vec<String>,
    pub alive: bool,
    /// When the downlink's bottleneck is free again.
    pub busy_until: Instant,
    pub downlink: DownlinkCount,
    /// Ignore `simulcast_layers`, as a browser whose uplink cannot carry a layer keeps it off.
    pub ignore_layer_requests: bool,
    /// When set, the headers of the RTP packets that reach this endpoint, in arrival order.
    pub rtp_log: Option<Vec<RtpSeen>>,
    /// When this endpoint first sent an SRTP or SRTCP packet: from then on it holds its keys.
    pub first_protected_sent: Option<Instant>,
    /// When not empty, the candidate lines this endpoint puts in its offers and trickles
    /// instead of its own: the server learns its address from its checks (peer-reflexive).
    pub extra_candidates: Vec<String>,
    /// Its offers announce a fingerprint that is not its certificate's.
    pub wrong_fingerprint: bool,
    /// The media worker its transport is on.
    pub worker: usize,
    /// Rewrites each of its offers' SDP before the server sees it, as a client that writes its
    /// own SDP would (no `a=ssrc`, other codecs, other header extensions).
    pub rewrite_offer: Option<fn(&str) -> String>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

pub struct Sim {
    pub now: Instant,
    /// Worker 0's engine (the only one unless the sim has several workers).
    pub engine: Engine,
    /// Workers 1 and up.
    pub workers: Vec<Engine>,
    /// The worker the next joiner goes to when not told (round robin).
    next_worker: usize,
    /// The offer rewrite of the next endpoint to join ([`Sim::join_rewriting`]).
    pending_rewrite: Option<fn(&str) -> String>,
    /// Relays delivered between workers.
    pub relayed: u64,
    pub endpoints: Vec<SimEndpoint>,
    pub publications: Vec<PublicationInfo>,
    pub events: Vec<SfuEvent>,
    /// Endpoint index by address, for delivering datagrams.
    by_addr: HashMap<SocketAddr, usize>,
    /// CPU time this thread spent inside the engine: the server's cost.
    pub engine_busy: Duration,
    network: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    rng: u64,
    next_participant: u64,
    /// Relays worker 0 sent to links (other servers), for [`nodes::Nodes`] to carry.
    pub link_out: Vec<(u16, sfu::engine::Relay)>,
}

impl Sim {
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    pub fn with_config(adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        Self::with_workers(1, adjust)
    }

    /// A server of `workers` engines (media workers), joiners spread round robin unless
    /// [`Sim::join_on`] places them.
    pub fn with_workers(workers: usize, adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        let mut config = EngineConfig::new(SERVER);
        adjust(&mut config);
        config.workers = workers as u16;
        let engine = |worker: usize| {
            let mut config = config.clone();
            config.worker = worker as u16;
            Engine::new(config).expect("engine starts")
        };
        Self {
            now: Instant::now(),
            engine: engine(0),
            workers: (1..workers).map(engine).collect(),
            next_worker: 0,
            pending_rewrite: None,
            relayed: 0,
            endpoints: Vec::new(),
            publications: Vec::new(),
            events: Vec::new(),
            by_addr: HashMap::new(),
            engine_busy: Duration::ZERO,
            network: BinaryHeap::new(),
            seq: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            next_participant: 1,
            link_out: Vec::new(),
        }
    }

    /// Server `node` of a cluster: its publication ids and its participants' ids are its own
    /// (signaling gives a cluster's participants ids unique across it).
    pub fn on_node(node: u16, workers: usize, adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        let mut sim = Self::with_workers(workers, |c| {
            c.publication_ids_from = u64::from(node) << 40;
            adjust(c);
        });
        sim.next_participant = u64::from(node) * 1_000_000 + 1;
        sim.rng ^= u64::from(node) << 32;
        sim
    }

    /// A relay that arrives at the gateway over link `from`.
    pub fn relay_from_link(&mut self, from: u16, relay: sfu::engine::Relay) {
        let now = self.now;
        self.engine.handle_relay(now, from, relay);
        self.pump();
    }

    /// What signaling tells the gateway: `room` spans these links.
    pub fn set_room_links(&mut self, room: &str, links: &[u16]) {
        let now = self.now;
        self.engine.set_room_links(now, &RoomId(room.into()), links);
        self.pump();
    }

    /// A publication of another server's participant, announced by signaling: the endpoints
    /// here subscribe to it.
    pub fn remote_publication(&mut self, info: PublicationInfo) {
        self.publications.push(info.clone());
        for e in self.endpoints.iter_mut().filter(|e| e.alive) {
            e.endpoint.subscribe(info.clone());
        }
        self.pump();
    }

    /// Another server's publication ended.
    pub fn remote_publication_removed(&mut self, publication: protocol::PublicationId) {
        self.publications.retain(|p| p.id != publication);
        for e in self.endpoints.iter_mut().filter(|e| e.alive) {
            e.endpoint.unsubscribe(publication);
        }
        self.pump();
    }

    /// A deterministic pseudo-random number in [0, 1).
    fn random(&mut self) -> f64 {
        // xorshift64*: repeatable runs, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Adds an endpoint to `room`; it offers once its join is processed. Returns its index.
    pub fn join(&mut self, room: &str, adjust: impl FnOnce(&mut EndpointConfig)) -> usize {
        self.join_with(room, adjust, Link::default(), Vec::new())
    }

    /// [`Sim::join`] on a given worker.
    pub fn join_on(
        &mut self,
        worker: usize,
        room: &str,
        adjust: impl FnOnce(&mut EndpointConfig),
    ) -> usize {
        self.next_worker = worker;
        self.join(room, adjust)
    }

    /// How many media workers the server has.
    pub fn worker_count(&self) -> usize {
        1 + self.workers.len()
    }

    /// One worker's engine.
    pub fn worker(&mut self, worker: usize) -> &mut Engine {
        match worker {
            0 => &mut self.engine,
            n => &mut self.workers[n - 1],
        }
    }

    /// Every worker's counters added up.
    pub fn total_stats(&self) -> sfu::EngineStats {
        let mut total = self.engine.stats().clone();
        for engine in &self.workers {
            let s = engine.stats();
            total.rtp_in += s.rtp_in;
            total.rtp_forwarded += s.rtp_forwarded;
            total.keyframe_requests_received += s.keyframe_requests_received;
            total.keyframe_requests_sent += s.keyframe_requests_sent;
            total.keyframe_requests_throttled += s.keyframe_requests_throttled;
            total.layer_switches += s.layer_switches;
            total.fast_starts += s.fast_starts;
            total.rtp_relayed_in += s.rtp_relayed_in;
            total.rtp_relayed_out += s.rtp_relayed_out;
            total.dropped_unknown_source += s.dropped_unknown_source;
            total.dropped_malformed += s.dropped_malformed;
        }
        total
    }

    fn command(&mut self, worker: usize, command: SfuCommand) {
        let now = self.now;
        let started = cpu_time::ThreadTime::now();
        self.worker(worker).handle_command(now, command);
        self.engine_busy += started.elapsed();
    }

    /// [`Sim::join`] for an endpoint whose offers pass through `rewrite` before the server
    /// reads them.
    pub fn join_rewriting(
        &mut self,
        room: &str,
        adjust: impl FnOnce(&mut EndpointConfig),
        rewrite: fn(&str) -> String,
    ) -> usize {
        let index = self.endpoints.len();
        // The first offer goes out during the join: the rewrite must be in place before it.
        self.pending_rewrite = Some(rewrite);
        let joined = self.join(room, adjust);
        debug_assert_eq!(joined, index);
        joined
    }

    /// [`Sim::join`] for an endpoint whose offers announce a fingerprint that is not its
    /// certificate's (its last hex digit changed), as if its certificate had been replaced on
    /// the way.
    pub fn join_impostor(&mut self, room: &str) -> usize {
        self.join_endpoint(room, |_| {}, Link::default(), Vec::new(), true)
    }

    /// [`Sim::join`] for an endpoint on `link` from the start, which offers and trickles
    /// `extra_candidates` (SDP candidate lines without "a=") instead of its own when any.
    pub fn join_with(
        &mut self,
        room: &str,
        adjust: impl FnOnce(&mut EndpointConfig),
        link: Link,
        extra_candidates: Vec<String>,
    ) -> usize {
        self.join_endpoint(room, adjust, link, extra_candidates, false)
    }

    fn join_endpoint(
        &mut self,
        room: &str,
        adjust: impl FnOnce(&mut EndpointConfig),
        link: Link,
        extra_candidates: Vec<String>,
        wrong_fingerprint: bool,
    ) -> usize {
        let index = self.endpoints.len();
        let addr = SocketAddr::from(([127, 0, 1, (index % 250) as u8 + 1], 40_000 + index as u16));
        let mut config = EndpointConfig::new(addr);
        config.tone_hz = 300.0 + 100.0 * index as f32;
        config.video_tag = 1000 + index as u64;
        adjust(&mut config);
        let endpoint = Endpoint::new(self.now, config).expect("endpoint");
        let participant = ParticipantId(self.next_participant);
        self.next_participant += 1;
        let worker = self.next_worker % self.worker_count();
        self.next_worker = worker + 1;
        self.command(
            worker,
            SfuCommand::AddParticipant {
                participant,
                room: RoomId(room.into()),
            },
        );
        let mut sim_endpoint = SimEndpoint {
            endpoint,
            participant,
            link,
            joined_at: self.now,
            answered_at: Vec::new(),
            errors: Vec::new(),
            alive: true,
            busy_until: self.now,
            downlink: DownlinkCount::default(),
            ignore_layer_requests: false,
            rtp_log: None,
            first_protected_sent: None,
            extra_candidates,
            wrong_fingerprint,
            worker,
            rewrite_offer: self.pending_rewrite.take(),
        };
        // A joiner subscribes to everything already published in the room.
        for publication in &self.publications {
            sim_endpoint.endpoint.subscribe(publication.clone());
        }
        self.by_addr.insert(addr, index);
        self.endpoints.push(sim_endpoint);
        self.pump();
        index
    }

    /// Removes an endpoint as signaling would on leave.
    pub fn leave(&mut self, index: usize) {
        let participant = self.endpoints[index].participant;
        self.endpoints[index].alive = false;
        let worker = self.endpoints[index].worker;
        self.command(worker, SfuCommand::RemoveParticipant { participant });
        self.pump();
    }

    /// Reports the sizes at which an endpoint shows its subscribed videos, as its client
    /// would with `video_sizes`.
    pub fn set_video_sizes(&mut self, index: usize, sizes: &[(protocol::PublicationId, u32, u32)]) {
        let participant = self.endpoints[index].participant;
        let sizes = sizes
            .iter()
            .map(|&(publication_id, width, height)| protocol::VideoSize {
                publication_id,
                width,
                height,
            })
            .collect();
        let worker = self.endpoints[index].worker;
        self.command(worker, SfuCommand::SetVideoSizes { participant, sizes });
        self.pump();
    }

    pub fn set_link(&mut self, index: usize, link: Link) {
        self.endpoints[index].link = link;
    }

    /// Runs the world in steps of 100 ms until `done` holds or `limit` passed; returns the
    /// virtual time it took, or `None` if it never held.
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> Option<Duration> {
        let start = self.now;
        while self.now.duration_since(start) < limit {
            if done(self) {
                return Some(self.now.duration_since(start));
            }
            self.run_for(Duration::from_millis(100));
        }
        done(self).then(|| self.now.duration_since(start))
    }

    /// Runs the world for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            let mut next = self.engine.poll_timeout().map_or(end, |at| at.min(end));
            for engine in &self.workers {
                next = engine.poll_timeout().map_or(next, |at| next.min(at));
            }
            for e in self.endpoints.iter().filter(|e| e.alive) {
                next = next.min(e.endpoint.poll_timeout());
            }
            if let Some(Reverse(packet)) = self.network.peek() {
                next = next.min(packet.at);
            }
            // Time moves in steps of at least a millisecond, like a real server's event loop
            // that handles whatever is due in one pass. Without the floor, a thousand endpoints
            // with their own timer phases make the number of steps grow with their count.
            self.now = next.max(self.now + MIN_STEP).min(end);
            while let Some(Reverse(packet)) = self.network.peek() {
                if packet.at > self.now {
                    break;
                }
                let Some(Reverse(packet)) = self.network.pop() else {
                    break;
                };
                self.deliver(packet);
            }
            for worker in 0..self.worker_count() {
                let now = self.now;
                if self
                    .worker(worker)
                    .poll_timeout()
                    .is_some_and(|at| at <= now)
                {
                    let started = cpu_time::ThreadTime::now();
                    self.worker(worker).handle_timeout(now);
                    self.engine_busy += started.elapsed();
                }
            }
            for e in self.endpoints.iter_mut().filter(|e| e.alive) {
                if e.endpoint.poll_timeout() <= self.now
                    && let Err(err) = e.endpoint.handle_timeout(self.now)
                {
                    e.errors.push(err.to_string());
                }
            }
            self.pump();
        }
    }

    fn deliver(&mut self, packet: InFlight) {
        if packet.destination == SERVER {
            // The datagram reaches the worker that owns its sender's transport, as the
            // driver's per-peer sockets make the kernel deliver it.
            let worker = self
                .by_addr
                .get(&packet.source)
                .map_or(0, |i| self.endpoints[*i].worker);
            let now = self.now;
            let started = cpu_time::ThreadTime::now();
            self.worker(worker).handle_datagram(
                now,
                packet.source,
                packet.destination,
                &packet.contents,
            );
            self.engine_busy += started.elapsed();
        } else if let Some(&index) = self.by_addr.get(&packet.destination)
            && let Some(e) = self.endpoints.get_mut(index).filter(|e| e.alive)
        {
            if let Some(log) = e.rtp_log.as_mut()
                && let Some(seen) = RtpSeen::parse(self.now, &packet.contents)
            {
                log.push(seen);
            }
            if let Err(err) = e.endpoint.handle_datagram(
                self.now,
                packet.source,
                packet.destination,
                &packet.contents,
            ) {
                e.errors.push(err.to_string());
            }
        }
    }

    /// Injects a raw datagram into the server, as if it came from `source`.
    pub fn inject(&mut self, source: SocketAddr, contents: &[u8]) {
        self.engine
            .handle_datagram(self.now, source, SERVER, contents);
        self.pump();
    }

    /// Moves queued datagrams onto the network, feeds engine events back to the endpoints,
    /// and sends offers that are due.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            // Relays between workers arrive at once (a channel in the real driver).
            for from in 0..self.worker_count() {
                while let Some((to, relay)) = self.worker(from).poll_relay() {
                    progressed = true;
                    if sfu::engine::is_link(to) {
                        assert_eq!(from, 0, "only the gateway speaks over links");
                        self.link_out.push((to, relay));
                        continue;
                    }
                    self.relayed += 1;
                    let now = self.now;
                    let started = cpu_time::ThreadTime::now();
                    self.worker(usize::from(to))
                        .handle_relay(now, from as u16, relay);
                    self.engine_busy += started.elapsed();
                }
            }
            let mut transmits = Vec::new();
            for worker in 0..self.worker_count() {
                while let Some(t) = self.worker(worker).poll_transmit() {
                    transmits.push(t);
                }
            }
            for t in transmits {
                progressed = true;
                let index = self.by_addr.get(&t.destination).copied();
                let link = index.map(|i| self.endpoints[i].link).unwrap_or_default();
                if self.random() < link.loss_down {
                    continue;
                }
                let mut delay = link.delay;
                if let (Some(i), Some(rate)) = (index, link.rate_down) {
                    let e = &mut self.endpoints[i];
                    let start = e.busy_until.max(self.now);
                    if start.duration_since(self.now) > MAX_QUEUE_DELAY {
                        e.downlink.queue_drops += 1;
                        continue;
                    }
                    let bits = t.contents.len() as u64 * 8;
                    e.busy_until = start + Duration::from_nanos(bits * 1_000_000_000 / rate);
                    delay += e.busy_until.duration_since(self.now);
                }
                if let Some(i) = index {
                    let e = &mut self.endpoints[i];
                    e.downlink.delivered += 1;
                    e.downlink.delivered_bytes += t.contents.len() as u64;
                }
                self.send(t.source, t.destination, t.contents.to_vec(), delay);
            }
            for i in 0..self.endpoints.len() {
                if !self.endpoints[i].alive {
                    continue;
                }
                while let Some(d) = self.endpoints[i].endpoint.poll_transmit() {
                    progressed = true;
                    let e = &mut self.endpoints[i];
                    if e.first_protected_sent.is_none()
                        && d.contents.first().is_some_and(|b| (128..=191).contains(b))
                    {
                        e.first_protected_sent = Some(self.now);
                    }
                    let link = e.link;
                    if self.random() < link.loss_up {
                        continue;
                    }
                    self.send(d.source, d.destination, d.contents, link.delay);
                }
                let e = &mut self.endpoints[i];
                if !e.endpoint.offer_in_flight()
                    && e.endpoint.has_pending_changes()
                    && let Some(ClientMessage::Offer {
                        sdp,
                        publish,
                        subscribe,
                    }) = e.endpoint.create_offer()
                {
                    progressed = true;
                    let participant = e.participant;
                    let mut sdp = sdp;
                    if !e.extra_candidates.is_empty() {
                        sdp = sdp
                            .split_inclusive('\n')
                            .filter(|l| !l.starts_with("a=candidate:"))
                            .collect();
                        for line in &e.extra_candidates {
                            sdp.push_str(&format!("a={line}\r\n"));
                        }
                    }
                    if e.wrong_fingerprint {
                        sdp = sdp
                            .split_inclusive('\n')
                            .map(|l| match l.strip_prefix("a=fingerprint:") {
                                Some(rest) => {
                                    let rest = rest.trim_end();
                                    let last = if rest.ends_with('0') { '1' } else { '0' };
                                    format!("a=fingerprint:{}{last}\r\n", &rest[..rest.len() - 1])
                                }
                                None => l.to_owned(),
                            })
                            .collect();
                    }
                    if let Some(rewrite) = e.rewrite_offer {
                        sdp = rewrite(&sdp);
                    }
                    let own = e.endpoint.local_candidates().into_iter();
                    let candidates: Vec<String> = if e.extra_candidates.is_empty() {
                        own.filter_map(|c| match c {
                            ClientMessage::Candidate { candidate } => Some(candidate),
                            _ => None,
                        })
                        .collect()
                    } else {
                        e.extra_candidates.clone()
                    };
                    let worker = e.worker;
                    self.command(
                        worker,
                        SfuCommand::Offer {
                            participant,
                            sdp,
                            publish,
                            subscribe,
                        },
                    );
                    for candidate in candidates {
                        self.command(
                            worker,
                            SfuCommand::RemoteCandidate {
                                participant,
                                candidate,
                            },
                        );
                    }
                }
            }
            let mut events = Vec::new();
            for worker in 0..self.worker_count() {
                while let Some(event) = self.worker(worker).poll_event() {
                    events.push(event);
                }
            }
            for event in events {
                progressed = true;
                self.handle_event(event);
            }
            if !progressed {
                break;
            }
        }
    }

    fn send(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        contents: Vec<u8>,
        delay: Duration,
    ) {
        self.seq += 1;
        self.network.push(Reverse(InFlight {
            at: self.now + delay,
            seq: self.seq,
            source,
            destination,
            contents,
        }));
    }

    fn handle_event(&mut self, event: SfuEvent) {
        let now = self.now;
        match &event {
            SfuEvent::Answer { participant, sdp } => {
                if let Some(e) = self.by_participant(*participant) {
                    e.answered_at.push(now);
                    if let Err(err) = e.endpoint.handle_answer(now, sdp) {
                        e.errors.push(err.to_string());
                    }
                }
            }
            SfuEvent::Refused {
                participant,
                code,
                message,
            } => {
                if let Some(e) = self.by_participant(*participant) {
                    e.errors.push(message.clone());
                    // Only these refuse the offer itself; the others (a codec an m-line lacks,
                    // media matching no m-line) come besides its answer.
                    if matches!(
                        code,
                        protocol::ErrorCode::BadSdp
                            | protocol::ErrorCode::MediaUnavailable
                            | protocol::ErrorCode::NotJoined
                            | protocol::ErrorCode::Forbidden
                            | protocol::ErrorCode::RoomFull
                            | protocol::ErrorCode::AlreadyJoined
                    ) {
                        e.endpoint.offer_refused();
                    }
                    // Without a transport (room full) every later offer would be refused
                    // too: the endpoint gives up, as signaling would close its socket.
                    if matches!(
                        code,
                        protocol::ErrorCode::RoomFull | protocol::ErrorCode::NotJoined
                    ) {
                        e.alive = false;
                    }
                }
            }
            SfuEvent::PublicationAdded {
                participant,
                publication,
            } => {
                let info = publication.info(*participant);
                self.publications.push(info.clone());
                for e in self.endpoints.iter_mut().filter(|e| e.alive) {
                    if e.participant != *participant {
                        e.endpoint.subscribe(info.clone());
                    }
                }
            }
            SfuEvent::PublicationRemoved { publication, .. } => {
                self.publications.retain(|p| p.id != *publication);
                for e in self.endpoints.iter_mut().filter(|e| e.alive) {
                    e.endpoint.unsubscribe(*publication);
                }
            }
            SfuEvent::SimulcastLayers {
                participant,
                active,
                ..
            } => {
                let active = active.clone();
                if let Some(e) = self.by_participant(*participant)
                    && !e.ignore_layer_requests
                {
                    e.endpoint.set_active_layers(&active);
                }
            }
            // Signaling closes its session; the engine already dropped its transport.
            SfuEvent::TransportFailed { participant, .. } => {
                if let Some(e) = self.by_participant(*participant) {
                    e.alive = false;
                }
            }
            SfuEvent::MediaConnected { .. }
            | SfuEvent::WorkerFailed { .. }
            | SfuEvent::MediaDisconnected { .. }
            | SfuEvent::QualityChanged { .. }
            | SfuEvent::ActiveSpeaker { .. } => {}
        }
        self.events.push(event);
    }

    fn by_participant(&mut self, participant: ParticipantId) -> Option<&mut SimEndpoint> {
        self.endpoints
            .iter_mut()
            .find(|e| e.participant == participant && e.alive)
    }

    /// The one publication of `kind` of an endpoint.
    pub fn publication(&self, index: usize, kind: protocol::MediaKind) -> PublicationInfo {
        self.publications_of(index)
            .into_iter()
            .find(|p| p.kind == kind)
            .unwrap_or_else(|| panic!("endpoint {index} publishes no {kind:?}"))
    }

    /// The publications of one endpoint, by kind.
    pub fn publications_of(&self, index: usize) -> Vec<PublicationInfo> {
        let participant = self.endpoints[index].participant;
        self.publications
            .iter()
            .filter(|p| p.participant_id == participant)
            .cloned()
            .collect()
    }
}

/// Checks that endpoint `receiver` hears `sender`'s tone and sees `sender`'s video tag.
pub fn assert_receives(sim: &Sim, receiver: usize, sender: usize) {
    assert_receives_from(sim, receiver, sim, sender);
}

/// [`assert_receives`] for a receiver and a sender that may be on different servers.
pub fn assert_receives_from(rx_sim: &Sim, receiver: usize, tx_sim: &Sim, sender: usize) {
    use protocol::MediaKind;
    let sender_config = tx_sim.endpoints[sender].endpoint.config().clone();
    let publications = tx_sim.publications_of(sender);
    assert_eq!(
        publications.len(),
        2,
        "sender {sender} publishes audio and video"
    );
    let rx = &rx_sim.endpoints[receiver].endpoint;
    for publication in publications {
        let stats = rx
            .stats()
            .get(&publication.id)
            .unwrap_or_else(|| panic!("{receiver} has no stats for {}", publication.id));
        match publication.kind {
            MediaKind::Audio => {
                assert!(
                    stats.audio_frames_decoded >= 50,
                    "{receiver} decoded {} Opus frames from {sender}",
                    stats.audio_frames_decoded
                );
                let heard = rx
                    .dominant_frequency(publication.id)
                    .expect("enough audio to analyse");
                assert!(
                    (heard - sender_config.tone_hz).abs() <= 10.0,
                    "{receiver} heard {heard} Hz from {sender}, who sends {} Hz",
                    sender_config.tone_hz
                );
            }
            MediaKind::Video => {
                assert!(
                    stats.video_frames >= 10,
                    "{receiver} got {} video frames from {sender}",
                    stats.video_frames
                );
                assert_eq!(stats.video_tag, Some(sender_config.video_tag));
            }
        }
    }
}
