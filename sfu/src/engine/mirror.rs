//! Publications mirrored across workers and servers (see [`crate::relay`]): what an owner
//! announces and relays, and what a mirror does with it.
//!
//! Worker 0 is its server's *gateway*: it mirrors every publication of the server (each
//! worker announces to every other), and only it exchanges relays with other servers, over
//! the *links* each room spans ([`Engine::set_room_links`]). Its mirror of a local
//! publication is announced and relayed on over the room's links; its mirror of a publication
//! from a link is announced and relayed on to the other workers and the room's other links.
//! So each packet crosses to a server once, whatever the number of its subscribers there, and
//! wants, layer wants and keyframe requests go back up the same chain to the owner.

use super::*;

/// How long a link's mirror lives without its owner's server announcing it again (every
/// second): an end lost on the way (relays travel over UDP) ends it anyway.
pub(super) const LINK_MIRROR_LIFETIME: Duration = Duration::from_secs(4);

/// The least time between two keyframe requests for the same layers sent over a link.
pub(super) const LINK_KEYFRAME_INTERVAL: Duration = Duration::from_millis(100);

/// The bits of links among a mask of workers and links.
const LINK_BITS: u64 = !0u64 << crate::relay::FIRST_LINK;

impl Engine {
    /// The next message for another worker, oldest first.
    pub fn poll_relay(&mut self) -> Option<(WorkerId, Relay)> {
        self.relays.pop_front()
    }

    /// The next peer address bound to a transport here, or released.
    pub fn poll_address(&mut self) -> Option<AddressChange> {
        self.addresses.pop_front()
    }

    /// The rooms with a participant here.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.rooms.keys().cloned().collect()
    }

    /// Whether a datagram from `addr` reaches a transport here.
    pub fn knows_address(&self, addr: SocketAddr) -> bool {
        self.by_addr.contains_key(&addr)
    }

    /// Another worker stopped (it failed): its publications' mirrors end here, as if their
    /// owner had ended them, and it no longer mirrors anything of ours.
    pub fn forget_worker(&mut self, worker: WorkerId) {
        let mirrored: Vec<PublicationId> = self
            .publications
            .iter()
            .filter(|(_, p)| p.origin == Some(worker))
            .map(|(id, _)| *id)
            .collect();
        for publication in mirrored {
            self.remove_publication(publication);
        }
        for p in self.publications.values_mut() {
            if worker < MAX_WORKERS {
                p.mirrors &= !(1u64 << worker);
            }
            p.remote_layers.retain(|(w, _)| *w != worker);
        }
    }

    /// Whether this engine coordinates rooms (speakers, recordings): worker 0.
    pub(super) fn coordinates(&self) -> bool {
        self.config.worker == 0
    }

    fn other_workers(&self) -> impl Iterator<Item = WorkerId> + use<> {
        let me = self.config.worker;
        (0..self.config.workers).filter(move |w| *w != me)
    }

    /// Where news of `p` goes from here (a bit per worker or link): an owner tells the other
    /// workers; the gateway also tells the room's links of what this server publishes, and
    /// tells the other workers and the room's other links of what a link brings. Other
    /// workers' mirrors tell nobody.
    pub(super) fn downstream(&self, p: &Publication) -> u64 {
        let me = self.config.worker;
        let workers = (0..self.config.workers)
            .filter(|w| *w != me)
            .fold(0u64, |mask, w| mask | 1 << w);
        let links = if me == 0 {
            self.links.get(&p.room).copied().unwrap_or(0)
        } else {
            0
        };
        match p.origin {
            None => workers | links,
            Some(_) if me != 0 => 0,
            Some(from) if is_link(from) => (workers | links) & !(1u64 << from),
            Some(_) => links,
        }
    }

    /// Queues `relay` for every worker and link of `mask`.
    pub(super) fn relay_to(&mut self, mut mask: u64, relay: &Relay) {
        while mask != 0 {
            let to = mask.trailing_zeros() as WorkerId;
            mask &= mask - 1;
            self.relays.push_back((to, relay.clone()));
        }
    }

    /// Tells every worker and link downstream that a publication was muted or unmuted.
    pub(super) fn relay_muted(&mut self, publication_id: PublicationId, muted: bool) {
        let Some(p) = self.publications.get(&publication_id) else {
            return;
        };
        let downstream = self.downstream(p);
        self.relay_to(
            downstream,
            &Relay::Muted {
                publication: publication_id,
                muted,
            },
        );
    }

    /// Tells whoever is downstream about a publication (new, or its layers or payload types
    /// changed).
    pub(super) fn announce(&mut self, publication_id: PublicationId) {
        let Some(p) = self.publications.get(&publication_id) else {
            return;
        };
        let downstream = self.downstream(p);
        if downstream == 0 {
            return;
        }
        let relay = Relay::Publication(Box::new(self.mirror_info(publication_id, p)));
        self.relay_to(downstream, &relay);
    }

    fn mirror_info(&self, publication_id: PublicationId, p: &Publication) -> MirrorInfo {
        MirrorInfo {
            id: publication_id,
            owner: p.owner,
            room: p.room.clone(),
            mid: p.mid,
            kind: p.kind,
            source: p.source,
            layers: p
                .layers
                .iter()
                .map(|l| (l.rid, l.width, l.height))
                .collect(),
            params: p.params.clone(),
            muted: p.muted,
        }
    }

    /// Sends a message to every other worker (never over a link: each server decides its
    /// speakers and loudest voices from what its gateway hears).
    pub(super) fn relay_to_all(&mut self, relay: Relay) {
        if self.config.workers < 2 {
            return;
        }
        for worker in self.other_workers() {
            self.relays.push_back((worker, relay.clone()));
        }
    }

    /// Hands one packet to every worker and link whose mirror wants it: once each, whatever
    /// the number of subscribers there. `cached`: from a cache (see [`Relay::Packet`]).
    pub(super) fn relay_packet(
        &mut self,
        publication_id: PublicationId,
        packet: &MediaPacket,
        cached: bool,
    ) {
        let Some(p) = self.publications.get(&publication_id) else {
            return;
        };
        let mut mirrors = p.mirrors;
        while mirrors != 0 {
            let worker = mirrors.trailing_zeros() as WorkerId;
            mirrors &= mirrors - 1;
            self.relays.push_back((
                worker,
                Relay::Packet {
                    publication: publication_id,
                    packet: packet.clone(),
                    cached,
                },
            ));
            self.stats.rtp_relayed_out += 1;
        }
    }

    /// The gateway, once a second: relays over links travel over UDP, so what they say is
    /// said again. Every publication announced over a link is announced again, every link's
    /// mirror says again whether it wants the packets and which layers, and a link's mirror
    /// not announced again for [`LINK_MIRROR_LIFETIME`] ends (its owner's end was lost, or
    /// the link is gone).
    pub(super) fn refresh_links(&mut self, now: Instant) {
        if self.config.worker != 0 || self.links.is_empty() {
            return;
        }
        let expired: Vec<PublicationId> = self
            .publications
            .iter()
            .filter(|(_, p)| {
                p.origin.is_some_and(is_link)
                    && p.announced_at
                        .is_some_and(|at| now >= at + LINK_MIRROR_LIFETIME)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove_publication(id);
        }
        let linked: Vec<PublicationId> = self
            .publications
            .iter()
            .filter(|(_, p)| self.links.contains_key(&p.room))
            .map(|(id, _)| *id)
            .collect();
        for id in linked {
            let Some(p) = self.publications.get(&id) else {
                continue;
            };
            let to_links = self.downstream(p) & LINK_BITS;
            let announcement =
                (to_links != 0).then(|| Relay::Publication(Box::new(self.mirror_info(id, p))));
            let upstream = p.origin.filter(|o| is_link(*o));
            let (wanted, told_layers) = (p.wanted, p.told_layers);
            if let Some(relay) = announcement {
                self.relay_to(to_links, &relay);
            }
            if let Some(origin) = upstream {
                let want = Relay::Want {
                    publication: id,
                    want: wanted,
                };
                let layers = told_layers.map(|(layers, _)| Relay::LayerWants {
                    publication: id,
                    layers,
                });
                self.relays.push_back((origin, want));
                if let Some(layers) = layers {
                    self.relays.push_back((origin, layers));
                }
            }
        }
    }

    /// The gateway: a link is gone (its server left the cluster): every room stops spanning
    /// it.
    pub fn forget_link(&mut self, now: Instant, link: WorkerId) {
        let rooms: Vec<(RoomId, Vec<WorkerId>)> = self
            .links
            .iter()
            .filter(|(_, mask)| *mask & (1u64 << link) != 0)
            .map(|(room, mask)| {
                let rest = (0..MAX_WORKERS)
                    .filter(|l| *l != link && mask & (1u64 << l) != 0)
                    .collect();
                (room.clone(), rest)
            })
            .collect();
        for (room, rest) in rooms {
            self.set_room_links(now, &room, &rest);
        }
    }

    /// The gateway: the links to other servers `room` spans now. A new link is told of every
    /// publication of the room it does not bring itself; a link gone takes its publications'
    /// mirrors with it and no longer receives anything.
    pub fn set_room_links(&mut self, now: Instant, room: &RoomId, links: &[WorkerId]) {
        let mask = links
            .iter()
            .filter(|l| is_link(**l))
            .fold(0u64, |mask, l| mask | 1 << l);
        let before = self.links.get(room).copied().unwrap_or(0);
        if mask == 0 {
            self.links.remove(room);
        } else {
            self.links.insert(room.clone(), mask);
        }
        let gone = before & !mask;
        let added = mask & !before;
        let in_room: Vec<PublicationId> = self
            .publications
            .iter()
            .filter(|(_, p)| p.room == *room)
            .map(|(id, _)| *id)
            .collect();
        for id in in_room {
            let Some(p) = self.publications.get_mut(&id) else {
                continue;
            };
            if p.origin.is_some_and(|o| gone & (1u64 << o) != 0) {
                self.remove_publication(id);
                continue;
            }
            p.mirrors &= !gone;
            p.remote_layers.retain(|(w, _)| gone & (1u64 << w) == 0);
            let to_add = added & self.downstream(&self.publications[&id]);
            if to_add != 0 {
                let relay =
                    Relay::Publication(Box::new(self.mirror_info(id, &self.publications[&id])));
                self.relay_to(to_add, &relay);
            }
            self.update_want(id);
        }
        self.allocate_pending();
        self.flush_touched(now);
    }

    /// A mirror asks its owner for the packets while it has subscribers or records, and tells
    /// it when it no longer needs them.
    pub(super) fn update_want(&mut self, publication_id: PublicationId) {
        let coordinator = self.coordinates();
        let Some(p) = self.publications.get_mut(&publication_id) else {
            return;
        };
        let Some(owner) = p.origin else {
            return;
        };
        // The coordinator hears every audio publication, for the room's loudest voices; the
        // gateway wants what the workers and links downstream want.
        let want = !p.subscribers.is_empty()
            || p.recorded
            || p.mirrors != 0
            || (coordinator && p.kind == MediaKind::Audio);
        if want == p.wanted {
            return;
        }
        p.wanted = want;
        if !want {
            // Whatever arrives next starts from a new keyframe: the cache is no longer fed.
            for layer in &mut p.layers {
                layer.gop.clear();
            }
        }
        self.relays.push_back((
            owner,
            Relay::Want {
                publication: publication_id,
                want,
            },
        ));
    }

    /// The publisher side's work on one packet, owned or mirrored: its layer's bitrate and
    /// presence, the audio level, the GOP cache, the recording. Returns whether it goes on to
    /// the subscribers (audio only when among the room's loudest); `None` when the publication
    /// is gone or muted.
    pub(super) fn ingest(
        &mut self,
        publication_id: PublicationId,
        now: Instant,
        packet: &MediaPacket,
    ) -> Option<bool> {
        let limits = self.config.gop_limits();
        let fast_start = self.config.fast_start;
        let publication = self.publications.get_mut(&publication_id)?;
        if publication.muted {
            self.stats.dropped_muted += 1;
            return None;
        }
        let layer = packet.layer;
        if publication.origin.is_some() {
            // A mirror learns of layers from the packets: the owner found them by rid.
            while publication.layers.len() <= usize::from(layer)
                && publication.layers.len() < MAX_SIMULCAST_LAYERS
            {
                publication.layers.push(Layer::plain());
            }
        }
        if let Some(l) = publication.layers.get_mut(usize::from(layer)) {
            if !l.accepts_source(packet.ssrc) {
                self.stats.dropped_stale += 1;
                return None;
            }
            l.window_bytes += packet.payload.len() as u64;
            if !l.available {
                // A layer (re)appeared: its subscribers may now receive it.
                l.available = true;
                self.layer_changes.push(publication_id);
            }
        }
        if let Some(level) = packet.audio_level {
            publication.level.update(now, level);
        }
        let is_video = publication.kind == MediaKind::Video;
        if is_video
            && fast_start
            && let Some(l) = publication.layers.get_mut(usize::from(layer))
        {
            l.gop.push(
                limits,
                packet.ssrc,
                CachedPacket {
                    seq_no: packet.seq_no,
                    timestamp: packet.timestamp,
                    marker: packet.marker,
                    pt: packet.pt,
                    video_orientation: packet.video_orientation,
                    payload: packet.payload.clone(),
                    arrival: packet.arrival,
                    codec: packet.codec,
                },
                packet.keyframe,
                now,
            );
        }
        if publication.recorded && publication.recorded_layer == Some(layer) {
            let codec = match packet.codec {
                None => RecordedCodec::Opus,
                Some(VideoCodec::Vp8) => RecordedCodec::Vp8,
                Some(VideoCodec::Vp9) => RecordedCodec::Vp9,
                Some(VideoCodec::H264) => RecordedCodec::H264,
                Some(VideoCodec::Av1) => RecordedCodec::Av1,
            };
            self.recorded.push_back(RecordedMedia::Packet {
                publication: publication_id,
                codec,
                clock_rate: if is_video { 90_000 } else { 48_000 },
                seq: packet.seq_no as u16,
                timestamp: packet.timestamp,
                marker: packet.marker,
                payload: packet.payload.clone(),
                at: now,
            });
        }
        if !is_video && !publication.audible {
            self.stats.dropped_not_loudest += 1;
            return Some(false);
        }
        Some(true)
    }

    /// Applies one message from another worker.
    pub fn handle_relay(&mut self, now: Instant, from: WorkerId, relay: Relay) {
        if self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
        }
        match relay {
            Relay::Publication(info) => self.add_mirror(now, from, *info),
            Relay::PublicationEnded(publication) => {
                if self
                    .publications
                    .get(&publication)
                    .is_some_and(|p| p.origin == Some(from))
                {
                    self.remove_publication(publication);
                }
            }
            Relay::Muted { publication, muted } => {
                if self
                    .publications
                    .get(&publication)
                    .is_some_and(|p| p.origin == Some(from))
                {
                    self.apply_mute(now, publication, muted);
                    self.relay_muted(publication, muted);
                }
            }
            Relay::Packet {
                publication,
                packet,
                cached,
            } => {
                let mirrored = self
                    .publications
                    .get(&publication)
                    .is_some_and(|p| p.origin == Some(from) && p.wanted);
                if !mirrored {
                    return;
                }
                self.stats.rtp_relayed_in += 1;
                let Some(to_subscribers) = self.ingest(publication, now, &packet) else {
                    return;
                };
                // The gateway hands it on downstream, every packet of every audio publication
                // included: each server picks its own loudest voices from what it hears.
                self.relay_packet(publication, &packet, cached);
                if to_subscribers && !cached {
                    self.fan_out(publication, now, &packet);
                }
            }
            Relay::Want { publication, want } => {
                if self.is_downstream(publication, from) {
                    self.mirror_wants(now, publication, from, want);
                    self.update_want(publication);
                }
            }
            Relay::LayerWants {
                publication,
                layers,
            } => {
                if self.is_downstream(publication, from)
                    && let Some(p) = self.publications.get_mut(&publication)
                {
                    p.remote_layers.retain(|(w, _)| *w != from);
                    p.remote_layers.push((from, layers));
                }
            }
            Relay::KeyframeRequest {
                publication,
                layers,
            } => {
                // A mirror's request goes on up to the owner, whose throttle decides.
                if self.is_downstream(publication, from) {
                    self.request_keyframe(publication, layers, now);
                }
            }
            // Speakers and loudest voices are each server's own: never taken from a link.
            Relay::Audible { .. } | Relay::Speaker { .. } if is_link(from) => {}
            Relay::Audible {
                publication,
                audible,
            } => self.set_audible(publication, audible),
            Relay::Speaker { room, participant } => {
                if participant.is_some() {
                    self.speakers.insert(room, participant);
                } else {
                    self.speakers.remove(&room);
                }
            }
        }
        self.allocate_pending();
        self.flush_touched(now);
    }

    fn add_mirror(&mut self, now: Instant, from: WorkerId, info: MirrorInfo) {
        if let Some(existing) = self.publications.get_mut(&info.id) {
            // The owner's layers or payload types changed.
            if existing.origin == Some(from) {
                let id = info.id;
                existing.announced_at = is_link(from).then_some(now);
                existing.params = info.params;
                for (index, (rid, width, height)) in info.layers.into_iter().enumerate() {
                    match existing.layers.get_mut(index) {
                        Some(layer) => {
                            (layer.rid, layer.width, layer.height) = (rid, width, height)
                        }
                        None => existing.layers.push(Layer {
                            rid,
                            width,
                            height,
                            ..Layer::plain()
                        }),
                    }
                }
                self.announce(id);
            }
            return;
        }
        let layers = info
            .layers
            .into_iter()
            .take(MAX_SIMULCAST_LAYERS)
            .map(|(rid, width, height)| Layer {
                rid,
                width,
                height,
                ..Layer::plain()
            })
            .collect();
        let room = info.room.clone();
        let id = info.id;
        // A link's publications stay in their room: one announced for a room this server does
        // not share with that link is refused.
        if is_link(from)
            && self
                .links
                .get(&room)
                .is_none_or(|links| links & (1u64 << from) == 0)
        {
            self.stats.dropped_unknown_source += 1;
            return;
        }
        // The coordinator hears every audio publication without asking (levels): a local
        // owner sends it to worker 0 from the start, and `update_want` below asks a link.
        let wanted = self.coordinates() && info.kind == MediaKind::Audio && !is_link(from);
        self.publications.insert(
            info.id,
            Publication {
                wanted,
                announced_at: is_link(from).then_some(now),
                ..Publication::new(NewPublication {
                    owner: info.owner,
                    room: info.room,
                    mid: info.mid,
                    kind: info.kind,
                    source: info.source,
                    muted: info.muted,
                    layers,
                    params: info.params,
                    origin: Some(from),
                })
            },
        );
        if self.recordings.contains_key(&room) {
            self.record_publication(now, id);
        }
        // Subscribers whose offers came before the mirror.
        let mut waiting = Vec::new();
        self.awaiting.retain(|(publication, participant, mid)| {
            let this = *publication == id;
            if this {
                waiting.push((*participant, *mid));
            }
            !this
        });
        for (participant, mid) in waiting {
            if let Some((code, message)) = self.bind(now, participant, mid, id) {
                self.events.push_back(SfuEvent::Refused {
                    participant,
                    code,
                    message,
                });
            }
        }
        self.update_want(id);
        self.announce(id);
    }

    /// Whether `from` may speak for a mirror of `publication` here: its owner's mirrors, or
    /// the gateway's downstream.
    fn is_downstream(&self, publication: PublicationId, from: WorkerId) -> bool {
        from < MAX_WORKERS
            && self
                .publications
                .get(&publication)
                .is_some_and(|p| self.downstream(p) & (1u64 << from) != 0)
    }

    /// Owner: a mirror wants the packets (or no longer does). A new mirror first gets what the
    /// GOP caches hold, so that it can start its subscribers at once.
    fn mirror_wants(
        &mut self,
        now: Instant,
        publication_id: PublicationId,
        from: WorkerId,
        want: bool,
    ) {
        let limits = self.config.gop_limits();
        let Some(p) = self.publications.get_mut(&publication_id) else {
            return;
        };
        if from >= MAX_WORKERS {
            return;
        }
        let bit = 1u64 << from;
        if !want {
            // The coordinator keeps hearing audio: it picks the loudest voices.
            if !(from == 0 && p.kind == MediaKind::Audio) {
                p.mirrors &= !bit;
            }
            p.remote_layers.retain(|(w, _)| *w != from);
            return;
        }
        if p.mirrors & bit != 0 {
            return;
        }
        p.mirrors |= bit;
        for (index, layer) in p.layers.iter().enumerate() {
            let Some(plan) = layer.gop.plan(limits, now) else {
                continue;
            };
            for (n, cached) in layer.gop.packets().enumerate() {
                self.relays.push_back((
                    from,
                    Relay::Packet {
                        publication: publication_id,
                        packet: MediaPacket {
                            ssrc: plan.ssrc,
                            seq_no: cached.seq_no,
                            timestamp: cached.timestamp,
                            marker: cached.marker,
                            pt: cached.pt,
                            arrival: cached.arrival,
                            audio_level: None,
                            voice_activity: None,
                            video_orientation: cached.video_orientation,
                            payload: cached.payload.clone(),
                            layer: index as u8,
                            // The cache holds a GOP from its keyframe's first packet on.
                            keyframe: n == 0,
                            codec: cached.codec,
                        },
                        cached: true,
                    },
                ));
            }
        }
    }

    /// Whether an audio publication is forwarded (among its room's loudest); one forwarded
    /// again restarts contiguous for its subscribers, the skipped stretch not being loss.
    pub(super) fn set_audible(&mut self, publication_id: PublicationId, audible: bool) {
        let Some(publication) = self.publications.get_mut(&publication_id) else {
            return;
        };
        if publication.audible == audible {
            return;
        }
        publication.audible = audible;
        if !audible {
            return;
        }
        for (subscriber, mid) in &publication.subscribers {
            if let Some(sub) = self
                .participants
                .get_mut(subscriber)
                .and_then(|p| p.subscriptions.get_mut(mid))
            {
                sub.forwarder.reset_source();
            }
        }
    }
}
