//! The gateway's links to the other servers of a cluster: one UDP socket of its own (the
//! *link port*), over which worker 0 exchanges relays (see [`crate::relay`]) with the other
//! servers' gateways, sealed per direction (see [`crate::relay_wire`]).
//!
//! Signaling names the peers ([`LinkPeer`]: which link each is, its link port, the keys of both
//! directions, derived from the cluster secret) and which rooms span which links. A datagram
//! from an address that is no peer's, or that does not open under that peer's key, or that
//! was seen before, is dropped and counted ([`LinkStats`]): nothing else is disturbed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::UdpSocket;

use crate::relay::{Relay, WorkerId, is_link};
use crate::relay_wire::{RelayOpener, RelaySealer, RelayWireError};

/// Another server of the cluster, as this one reaches it.
#[derive(Clone)]
pub struct LinkPeer {
    /// How this server's engines name it ([`crate::relay::FIRST_LINK`] and up).
    pub link: WorkerId,
    /// Its link port.
    pub addr: SocketAddr,
    /// AES-256 keys: of what this server sends it, and of what it sends this server.
    pub send_key: [u8; 32],
    pub receive_key: [u8; 32],
}

impl std::fmt::Debug for LinkPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("LinkPeer")
            .field("link", &self.link)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What crossed the links, and what was refused, since the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Media packets among the relays (each crosses once per server that wants it).
    pub packets_in: u64,
    pub packets_out: u64,
    /// Datagrams from an address that is no peer's.
    pub refused_unknown_source: u64,
    /// Datagrams that did not open under their peer's key.
    pub refused_forged: u64,
    /// Datagrams seen before, or too old.
    pub refused_replayed: u64,
    /// Datagrams that opened but did not parse (a peer with another version, or a bug).
    pub refused_malformed: u64,
    /// Relays for a link without a peer, and datagrams the kernel would not take.
    pub dropped_out: u64,
}

/// One peer: its keys' state and this pass's relays for it.
struct Peer {
    link: WorkerId,
    addr: SocketAddr,
    keys: ([u8; 32], [u8; 32]),
    sealer: RelaySealer,
    opener: RelayOpener,
    queue: Vec<Relay>,
}

/// Datagrams read from the link port per turn before the rest of the worker's loop.
const READ_BATCH: usize = 256;

/// Worker 0's link port.
pub(crate) struct LinkPort {
    pub(crate) socket: UdpSocket,
    peers: Vec<Peer>,
    by_addr: HashMap<SocketAddr, usize>,
    stats: LinkStats,
    /// Reused buffers: the datagram being sealed, the one read, and the relays it brought.
    datagram: Vec<u8>,
    buf: Vec<u8>,
    received: Vec<Relay>,
}

/// The largest datagram read from the link port: a publication's announcement with many
/// payload types outgrows a media datagram.
const MAX_DATAGRAM: usize = 65_536;

impl LinkPort {
    pub(crate) fn new(socket: UdpSocket) -> Self {
        Self {
            socket,
            peers: Vec::new(),
            by_addr: HashMap::new(),
            stats: LinkStats::default(),
            datagram: Vec::with_capacity(2048),
            buf: vec![0; MAX_DATAGRAM],
            received: Vec::new(),
        }
    }

    pub(crate) fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The peers now; returns the links that are gone. A peer that stays (same link, address
    /// and keys) keeps its sequence numbers and replay window.
    pub(crate) fn set_peers(&mut self, peers: Vec<LinkPeer>) -> Vec<WorkerId> {
        let mut old: Vec<Peer> = std::mem::take(&mut self.peers);
        for new in peers {
            if !is_link(new.link) || self.peers.iter().any(|p| p.link == new.link) {
                continue;
            }
            let keys = (new.send_key, new.receive_key);
            let kept = old
                .iter()
                .position(|p| p.link == new.link && p.addr == new.addr && p.keys == keys);
            let peer = match kept {
                Some(index) => old.swap_remove(index),
                None => Peer {
                    link: new.link,
                    addr: new.addr,
                    keys,
                    sealer: RelaySealer::new(&new.send_key),
                    opener: RelayOpener::new(&new.receive_key),
                    queue: Vec::new(),
                },
            };
            self.peers.push(peer);
        }
        self.by_addr = self
            .peers
            .iter()
            .enumerate()
            .map(|(index, p)| (p.addr, index))
            .collect();
        old.iter()
            .map(|p| p.link)
            .filter(|link| !self.peers.iter().any(|p| p.link == *link))
            .collect()
    }

    /// Queues a relay for the peer of `link`, sent by [`LinkPort::flush`].
    pub(crate) fn queue(&mut self, link: WorkerId, relay: Relay) {
        match self.peers.iter_mut().find(|p| p.link == link) {
            Some(peer) => peer.queue.push(relay),
            None => self.stats.dropped_out += 1,
        }
    }

    /// Seals each peer's queued relays into as few datagrams as they fit and sends them.
    pub(crate) fn flush(&mut self) {
        for peer in &mut self.peers {
            let mut start = 0;
            while start < peer.queue.len() {
                let taken = peer.sealer.seal(&peer.queue[start..], &mut self.datagram);
                if taken == 0 {
                    break;
                }
                self.stats.packets_out += peer.queue[start..start + taken]
                    .iter()
                    .filter(|r| matches!(r, Relay::Packet { .. }))
                    .count() as u64;
                start += taken;
                match self.socket.send_to(&self.datagram, peer.addr) {
                    Ok(_) => {
                        self.stats.datagrams_out += 1;
                        self.stats.bytes_out += self.datagram.len() as u64;
                    }
                    // A full buffer or an unreachable peer loses this datagram like any UDP
                    // loss: what it said is said again (see `Engine::refresh_links`).
                    Err(_) => self.stats.dropped_out += 1,
                }
            }
            peer.queue.clear();
        }
    }

    /// Reads up to a batch of datagrams and hands each relay of each genuine one to
    /// `deliver` with the link it came over. Returns whether datagrams may be left to read.
    pub(crate) fn read(&mut self, mut deliver: impl FnMut(WorkerId, Relay)) -> bool {
        let mut buf = std::mem::take(&mut self.buf);
        let mut more = true;
        for _ in 0..READ_BATCH {
            let (n, source) = match self.socket.recv_from(&mut buf) {
                Ok(received) => received,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                // ICMP errors from a peer that went away surface here; they concern it only.
                Err(_) => continue,
            };
            self.open(source, &mut buf[..n], Instant::now(), &mut deliver);
        }
        self.buf = buf;
        more
    }

    /// One datagram from `source`.
    fn open(
        &mut self,
        source: SocketAddr,
        data: &mut [u8],
        now: Instant,
        deliver: &mut impl FnMut(WorkerId, Relay),
    ) {
        let Some(peer) = self
            .by_addr
            .get(&source)
            .and_then(|index| self.peers.get_mut(*index))
        else {
            self.stats.refused_unknown_source += 1;
            return;
        };
        let len = data.len() as u64;
        match peer.opener.open(data, now, &mut self.received) {
            Ok(_) => {
                self.stats.datagrams_in += 1;
                self.stats.bytes_in += len;
                for relay in self.received.drain(..) {
                    if matches!(relay, Relay::Packet { .. }) {
                        self.stats.packets_in += 1;
                    }
                    deliver(peer.link, relay);
                }
            }
            Err(RelayWireError::Forged) => self.stats.refused_forged += 1,
            Err(RelayWireError::Replayed) => self.stats.refused_replayed += 1,
            Err(_) => self.stats.refused_malformed += 1,
        }
    }
}

/// Binds a link port.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
