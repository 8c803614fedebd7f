//! Several servers of a cluster in one virtual-time world: each a [`Sim`] with its own
//! endpoints and workers, their gateways' relays carried between them over links, and
//! signaling's part played by the harness (which rooms span which links, and every server's
//! endpoints told of every publication of their room).

use super::*;
use sfu::relay::FIRST_LINK;

/// How often relays cross between servers: a link's latency, in virtual time.
const LINK_STEP: Duration = Duration::from_millis(5);

/// The link by which every server names server `j`.
pub fn link(j: usize) -> u16 {
    FIRST_LINK + j as u16
}

pub struct Nodes {
    pub servers: Vec<Sim>,
    /// How many of each server's events were already handed to the others.
    events_seen: Vec<usize>,
    /// Media packets carried from server `i` to server `j`, by `(i, j)`.
    pub packets: HashMap<(usize, usize), u64>,
    /// Every relay carried, media packets included.
    pub relays: u64,
    /// Servers whose relays are no longer carried (failed, or cut off).
    pub down: Vec<usize>,
    /// The share of relays other than media packets lost on the way, at random.
    pub control_loss: f64,
    /// Relays other than media packets lost so far.
    pub control_lost: u64,
    rng: u64,
}

impl Nodes {
    /// `count` servers of `workers` media workers each.
    pub fn new(count: usize, workers: usize, adjust: impl Fn(&mut EngineConfig)) -> Self {
        Self {
            servers: (0..count)
                .map(|i| Sim::on_node(i as u16, workers, &adjust))
                .collect(),
            events_seen: vec![0; count],
            packets: HashMap::new(),
            relays: 0,
            down: Vec::new(),
            control_loss: 0.0,
            control_lost: 0,
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    /// A deterministic pseudo-random number in [0, 1) (xorshift64*, as [`Sim`]'s).
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `room` spans the servers as a star: `origin` links to every other, each other to the
    /// origin only (as signaling links a room's edges to its holder).
    pub fn link_star(&mut self, room: &str, origin: usize) {
        let edges: Vec<u16> = (0..self.servers.len())
            .filter(|j| *j != origin)
            .map(link)
            .collect();
        self.servers[origin].set_room_links(room, &edges);
        for j in 0..self.servers.len() {
            if j != origin {
                self.servers[j].set_room_links(room, &[link(origin)]);
            }
        }
        self.exchange();
    }

    /// Runs every server for `duration` of virtual time, carrying relays every
    /// [`LINK_STEP`].
    pub fn run_for(&mut self, duration: Duration) {
        let mut left = duration;
        while !left.is_zero() {
            let step = left.min(LINK_STEP);
            for server in &mut self.servers {
                server.run_for(step);
            }
            self.exchange();
            left -= step;
        }
    }

    /// Carries what the gateways sent over links, and tells every server's endpoints of the
    /// publications the others announced, until nothing is left to carry.
    pub fn exchange(&mut self) {
        loop {
            let mut carried = false;
            for i in 0..self.servers.len() {
                let events: Vec<SfuEvent> = self.servers[i].events[self.events_seen[i]..].to_vec();
                self.events_seen[i] = self.servers[i].events.len();
                for event in events {
                    for j in 0..self.servers.len() {
                        if j == i {
                            continue;
                        }
                        match &event {
                            SfuEvent::PublicationAdded {
                                participant,
                                publication,
                            } => self.servers[j].remote_publication(publication.info(*participant)),
                            SfuEvent::PublicationRemoved { publication, .. } => {
                                self.servers[j].remote_publication_removed(*publication)
                            }
                            _ => {}
                        }
                    }
                }
                let out = std::mem::take(&mut self.servers[i].link_out);
                for (to, relay) in out {
                    let j = usize::from(to - FIRST_LINK);
                    if self.down.contains(&i) || self.down.contains(&j) || j >= self.servers.len() {
                        continue;
                    }
                    carried = true;
                    self.relays += 1;
                    if !matches!(relay, sfu::engine::Relay::Packet { .. })
                        && self.random() < self.control_loss
                    {
                        self.control_lost += 1;
                        continue;
                    }
                    let mut relay = relay;
                    if let sfu::engine::Relay::Packet { packet, .. } = &mut relay {
                        *self.packets.entry((i, j)).or_default() += 1;
                        // Each server's clock is its own: a packet arrives when it arrives.
                        packet.arrival = self.servers[j].now;
                    }
                    self.servers[j].relay_from_link(link(i), relay);
                }
            }
            if !carried {
                return;
            }
        }
    }
}
