//! Publications mirrored across workers (see [`crate::relay`]): what an owner announces and
//! relays, and what a mirror does with it.

use super::*;

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

    /// Tells every other worker about an owned publication (new, or its layers or payload
    /// types changed).
    pub(super) fn announce(&mut self, publication_id: PublicationId) {
        if self.config.workers < 2 {
            return;
        }
        let Some(p) = self.publications.get(&publication_id) else {
            return;
        };
        if p.origin.is_some() {
            return;
        }
        let info = MirrorInfo {
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
        };
        for worker in self.other_workers() {
            self.relays
                .push_back((worker, Relay::Publication(Box::new(info.clone()))));
        }
    }

    /// Sends an owned publication's message to every other worker.
    pub(super) fn relay_to_all(&mut self, relay: Relay) {
        if self.config.workers < 2 {
            return;
        }
        for worker in self.other_workers() {
            self.relays.push_back((worker, relay.clone()));
        }
    }

    /// Hands one packet of an owned publication to every worker whose mirror wants it: once
    /// per worker, whatever the number of subscribers there.
    pub(super) fn relay_packet(&mut self, publication_id: PublicationId, packet: &MediaPacket) {
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
                    cached: false,
                },
            ));
            self.stats.rtp_relayed_out += 1;
        }
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
        // The coordinator hears every audio publication, for the room's loudest voices.
        let want =
            !p.subscribers.is_empty() || p.recorded || (coordinator && p.kind == MediaKind::Audio);
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
                if self.ingest(publication, now, &packet) == Some(true) && !cached {
                    self.fan_out(publication, now, &packet);
                }
            }
            Relay::Want { publication, want } => self.mirror_wants(now, publication, from, want),
            Relay::LayerWants {
                publication,
                layers,
            } => {
                if let Some(p) = self.publications.get_mut(&publication)
                    && p.origin.is_none()
                {
                    p.remote_layers.retain(|(w, _)| *w != from);
                    p.remote_layers.push((from, layers));
                }
            }
            Relay::KeyframeRequest {
                publication,
                layers,
            } => {
                if self
                    .publications
                    .get(&publication)
                    .is_some_and(|p| p.origin.is_none())
                {
                    self.request_keyframe(publication, layers, now);
                }
            }
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
        // The coordinator hears every audio publication without asking (levels).
        let wanted = self.coordinates() && info.kind == MediaKind::Audio;
        self.publications.insert(
            info.id,
            Publication {
                wanted,
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
            self.record_publication(now, info.id);
        }
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
        if p.origin.is_some() || from >= MAX_WORKERS {
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
