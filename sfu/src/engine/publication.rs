//! The publisher side: a participant's send m-lines become publications, whose packets are
//! mapped to a layer once, measured, cached for fast starts, recorded and handed to the
//! subscriber side; keyframe requests, layer wants, mutes and the room's loudest voices are
//! decided here.

use super::*;

impl Engine {
    /// Brings publications and subscriptions in line with the m-lines just negotiated.
    /// `answer` is the SDP answer to the offer: the first payload type of each m-line in it is
    /// the codec the publisher sends. Returns the subscriptions refused, to be told to the
    /// participant after its answer.
    pub(super) fn reconcile(
        &mut self,
        now: Instant,
        id: ParticipantId,
        mids: &[Mid],
        answer: &str,
        publish: &[protocol::PublishTrack],
        subscribe: &[protocol::SubscribeTrack],
    ) -> Vec<(ErrorCode, String)> {
        let mut refusals = Vec::new();
        // The offer restates every m-line: what waited for a mirror waits again below if
        // still wanted.
        self.awaiting.retain(|(_, p, _)| *p != id);
        let Some(participant) = self.participants.get_mut(&id) else {
            return refusals;
        };
        participant.pt_info = participant
            .rtc
            .codec_config()
            .params()
            .iter()
            .map(|p| PtInfo {
                pt: p.pt(),
                video: VideoCodec::from_str0m(p.spec().codec),
            })
            .collect();
        let room = participant.room.clone();

        // Decide per m-line first, then apply, so that the participant borrow ends.
        let mut to_publish = Vec::new();
        let mut to_unpublish = Vec::new();
        let mut to_bind = Vec::new();
        let mut to_unbind = Vec::new();
        let mut refused_publications = 0;
        for mid in mids {
            let Some(media) = participant.rtc.media(*mid) else {
                continue;
            };
            let direction = media.direction();
            let receiving = matches!(direction, Direction::RecvOnly | Direction::SendRecv);
            let sending = matches!(direction, Direction::SendOnly | Direction::SendRecv);
            let published = participant.published.iter().find(|(m, _)| m == mid);
            match (receiving, published) {
                (true, None) if !participant.may_publish => refused_publications += 1,
                (true, None) => {
                    let kind = match media.kind() {
                        str0m::media::MediaKind::Audio => MediaKind::Audio,
                        str0m::media::MediaKind::Video => MediaKind::Video,
                    };
                    let track = publish.iter().find(|p| p.mid == mid.to_string());
                    let source = track.map(|p| p.source).unwrap_or(match kind {
                        MediaKind::Audio => TrackSource::Microphone,
                        MediaKind::Video => TrackSource::Camera,
                    });
                    let layers = match (kind, track) {
                        (MediaKind::Video, Some(track)) => declared_layers(&track.layers),
                        _ => vec![Layer::plain()],
                    };
                    to_publish.push((*mid, kind, source, layers));
                }
                (false, Some((_, publication))) => to_unpublish.push(*publication),
                _ => {}
            }
            let wanted = subscribe
                .iter()
                .find(|s| s.mid == mid.to_string())
                .map(|s| s.publication_id)
                .filter(|_| sending);
            let current = participant
                .subscriptions
                .get(mid)
                .and_then(|s| s.publication);
            if wanted != current {
                if current.is_some() {
                    to_unbind.push(*mid);
                }
                if let Some(publication) = wanted {
                    to_bind.push((*mid, publication));
                }
            }
        }

        self.stats.refused_publications += refused_publications;
        for (mid, kind, source, layers) in to_publish {
            let publication = PublicationId(self.next_publication);
            self.next_publication += u64::from(self.config.workers.max(1));
            let mut params = self
                .participants
                .get(&id)
                .map(|p| media_params(&p.rtc, mid))
                .unwrap_or_default();
            // Every codec negotiated is kept (a subscriber's m-line is mapped onto each), with
            // the one the publisher sends first: a WebRTC sender uses the answer's first.
            if let Some(first) = first_payload_type(answer, mid)
                && let Some(at) = params.iter().position(|p| p.pt() == first)
            {
                params[..=at].rotate_right(1);
            }
            let codec = sent_codec(&params).map(str::to_owned);
            let announced_layers = layers
                .iter()
                .filter_map(|l| {
                    Some(protocol::SimulcastLayer {
                        rid: l.rid?.to_string(),
                        width: l.width,
                        height: l.height,
                    })
                })
                .collect();
            // The coordinator hears every audio publication (it picks the loudest voices).
            let mirrors = if kind == MediaKind::Audio && !self.coordinates() {
                1
            } else {
                0
            };
            self.publications.insert(
                publication,
                Publication {
                    mirrors,
                    ..Publication::new(NewPublication {
                        owner: id,
                        room: room.clone(),
                        mid,
                        kind,
                        source,
                        muted: false,
                        layers,
                        params,
                        origin: None,
                    })
                },
            );
            self.announce(publication);
            if self.recordings.contains_key(&room) {
                self.record_publication(now, publication);
            }
            if let Some(p) = self.participants.get_mut(&id) {
                p.published.push((mid, publication));
            }
            self.events.push_back(SfuEvent::PublicationAdded {
                participant: id,
                publication: PublicationAnnouncement {
                    id: publication,
                    kind,
                    source,
                    codec,
                    layers: announced_layers,
                },
            });
        }
        for publication in to_unpublish {
            self.remove_publication(publication);
        }
        for mid in to_unbind {
            self.unbind(id, mid);
        }
        for (mid, publication) in to_bind {
            if let Some(refusal) = self.bind(now, id, mid, publication) {
                refusals.push(refusal);
            }
        }
        refusals
    }

    /// Picks the layer of recorded simulcast publications that have none yet: the top one as
    /// soon as it arrives, or after a grace period the highest one arriving.
    pub(super) fn choose_recorded_layers(&mut self, now: Instant) {
        let mut chosen = Vec::new();
        for (id, publication) in &mut self.publications {
            if !publication.recorded || publication.recorded_layer.is_some() {
                continue;
            }
            let waited = publication
                .recorded_since
                .is_some_and(|since| now >= since + RECORDING_LAYER_GRACE);
            publication.recorded_layer = recordable_layer(&publication.layers, waited);
            if let Some(layer) = publication.recorded_layer {
                chosen.push((*id, layer));
            }
        }
        for (id, layer) in chosen {
            // The file starts on a keyframe of that layer.
            self.request_keyframe(id, 1 << layer, now);
        }
    }

    /// Tells publishers which of their simulcast layers anyone wants: the lowest always,
    /// the top one while recording, and every layer a subscriber receives, is switching to
    /// or would receive with more bandwidth.
    pub(super) fn update_simulcast_layers(&mut self, now: Instant) {
        for (id, publication) in &mut self.publications {
            let n = publication.layers.len().min(MAX_SIMULCAST_LAYERS);
            if n < 2 {
                continue;
            }
            let mut mask = 1u8;
            if publication.recorded {
                let layer = publication.recorded_layer.map_or(n - 1, usize::from);
                mask |= 1 << layer.min(n - 1);
            }
            for (subscriber, mid) in &publication.subscribers {
                let Some(sub) = self
                    .participants
                    .get(subscriber)
                    .and_then(|p| p.subscriptions.get(mid))
                else {
                    continue;
                };
                for layer in [sub.target, sub.current, sub.max_layer]
                    .into_iter()
                    .flatten()
                {
                    mask |= 1 << layer.min(n as u8 - 1);
                }
            }
            // What the mirrors' subscribers want counts as much as what ours do.
            for (_, layers) in &publication.remote_layers {
                mask |= layers;
            }
            let changed = publication.told_layers.is_none_or(|(told, _)| told != mask);
            let due = publication
                .told_layers
                .is_none_or(|(_, at)| now >= at + LAYERS_EVENT_INTERVAL);
            if changed && due {
                publication.told_layers = Some((mask, now));
                match publication.origin {
                    Some(owner) => self.relays.push_back((
                        owner,
                        Relay::LayerWants {
                            publication: *id,
                            layers: mask,
                        },
                    )),
                    None => self.events.push_back(SfuEvent::SimulcastLayers {
                        participant: publication.owner,
                        publication: *id,
                        active: (0..n).map(|i| mask & (1 << i) != 0).collect(),
                    }),
                }
            }
        }
    }

    /// Re-evaluates each room's active speaker and, in rooms with more audio publications
    /// than [`EngineConfig::max_audio_streams`], which are loud enough to be forwarded. The
    /// coordinator does it for every room (it mirrors every audio publication) and tells the
    /// other workers which streams are forwarded.
    pub(super) fn update_speakers(&mut self, now: Instant) {
        if !self.coordinates() {
            return;
        }
        let mut rooms: HashMap<RoomId, Vec<(PublicationId, ParticipantId, f32)>> = HashMap::new();
        for (id, publication) in &self.publications {
            let audio = rooms.entry(publication.room.clone()).or_default();
            if publication.kind == MediaKind::Audio && !publication.muted {
                audio.push((*id, publication.owner, publication.level.loudness(now)));
            }
        }
        // A room without publications left forgets its speaker.
        self.speakers.retain(|room, _| rooms.contains_key(room));
        let mut changes = Vec::new();
        for (room_id, mut audio) in rooms {
            let previous = self.speakers.get(&room_id).copied().flatten();
            let speaker = speaker::choose(previous, audio.iter().map(|(_, o, l)| (*o, *l)));
            if speaker != previous || !self.speakers.contains_key(&room_id) {
                self.speakers.insert(room_id.clone(), speaker);
            }
            if speaker != previous {
                self.events.push_back(SfuEvent::ActiveSpeaker {
                    room: room_id.clone(),
                    participant: speaker,
                });
                self.relay_to_all(Relay::Speaker {
                    room: room_id.clone(),
                    participant: speaker,
                });
            }
            let limit = self.config.max_audio_streams.filter(|k| audio.len() > *k);
            if limit.is_some() {
                // Loudest first; ties keep a stable order so the chosen set does not churn.
                audio.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            }
            for (rank, (publication_id, _, _)) in audio.iter().enumerate() {
                let audible = limit.is_none_or(|k| rank < k);
                if self
                    .publications
                    .get(publication_id)
                    .is_some_and(|p| p.audible != audible)
                {
                    changes.push((*publication_id, audible));
                }
            }
        }
        for (publication, audible) in changes {
            self.set_audible(publication, audible);
            self.relay_to_all(Relay::Audible {
                publication,
                audible,
            });
        }
    }

    /// What the recording tap has queued, oldest first.
    pub fn poll_recorded(&mut self) -> Option<RecordedMedia> {
        self.recorded.pop_front()
    }

    pub(super) fn start_recording(
        &mut self,
        now: Instant,
        room: RoomId,
        recording_id: String,
        e2ee: bool,
    ) {
        if self.recordings.contains_key(&room) {
            return;
        }
        self.recordings.insert(room.clone(), recording_id.clone());
        self.recorded.push_back(RecordedMedia::Started {
            room: room.clone(),
            recording_id,
            e2ee,
            at: now,
        });
        let publications: Vec<PublicationId> = self
            .publications
            .iter()
            .filter(|(_, p)| p.room == room)
            .map(|(id, _)| *id)
            .collect();
        for publication in publications {
            self.record_publication(now, publication);
        }
    }

    pub(super) fn record_publication(&mut self, now: Instant, id: PublicationId) {
        let Some(publication) = self.publications.get_mut(&id) else {
            return;
        };
        if publication.recorded {
            return;
        }
        publication.recorded = true;
        publication.recorded_since = Some(now);
        publication.recorded_layer = recordable_layer(&publication.layers, false);
        let kind = publication.kind;
        let layer = publication.recorded_layer;
        self.recorded.push_back(RecordedMedia::Track {
            room: publication.room.clone(),
            publication: id,
            participant: publication.owner,
            kind,
            source: publication.source,
            at: now,
        });
        // A mirrored publication is recorded from the packets its owner sends here.
        self.update_want(id);
        // A video file must start on a keyframe; waiting for the next periodic one could
        // lose seconds.
        if kind == MediaKind::Video
            && let Some(layer) = layer
        {
            self.request_keyframe(id, 1 << layer, now);
        }
    }

    pub(super) fn stop_recording(&mut self, now: Instant, room: &RoomId) {
        if self.recordings.remove(room).is_none() {
            return;
        }
        let mut mirrored = Vec::new();
        for (id, publication) in &mut self.publications {
            if publication.room == *room {
                publication.recorded = false;
                publication.recorded_layer = None;
                publication.recorded_since = None;
                if publication.origin.is_some() {
                    mirrored.push(*id);
                }
            }
        }
        for id in mirrored {
            self.update_want(id);
        }
        self.recorded.push_back(RecordedMedia::Stopped {
            room: room.clone(),
            at: now,
        });
    }

    pub(super) fn set_publishing(&mut self, id: ParticipantId, allowed: bool) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        participant.may_publish = allowed;
        if allowed {
            return;
        }
        let published: Vec<PublicationId> = participant.published.iter().map(|(_, p)| *p).collect();
        for publication in published {
            self.remove_publication(publication);
        }
    }

    pub(super) fn remove_publication(&mut self, publication_id: PublicationId) {
        let Some(publication) = self.publications.remove(&publication_id) else {
            return;
        };
        // Its end goes wherever it was announced (a mirror's, on from the gateway).
        let downstream = self.downstream(&publication);
        self.relay_to(downstream, &Relay::PublicationEnded(publication_id));
        if publication.recorded {
            self.recorded.push_back(RecordedMedia::TrackEnded {
                publication: publication_id,
            });
        }
        for (subscriber, mid) in &publication.subscribers {
            if let Some(s) = self.participants.get_mut(subscriber)
                && let Some(sub) = s.subscriptions.get_mut(mid)
            {
                sub.publication = None;
            }
        }
        if publication.origin.is_some() {
            // A mirror's end is its owner's to announce.
            return;
        }
        if let Some(owner) = self.participants.get_mut(&publication.owner) {
            owner.published.retain(|(_, p)| *p != publication_id);
            owner.ssrc_cache.retain(|(_, p, _)| *p != publication_id);
        }
        self.events.push_back(SfuEvent::PublicationRemoved {
            participant: publication.owner,
            publication: publication_id,
        });
    }

    pub(super) fn set_muted(
        &mut self,
        now: Instant,
        id: ParticipantId,
        publication_id: PublicationId,
        muted: bool,
    ) -> Result<(), (ErrorCode, String)> {
        if !self
            .publications
            .get(&publication_id)
            .is_some_and(|p| p.owner == id && p.origin.is_none())
        {
            return Err((
                ErrorCode::UnknownPublication,
                format!("{publication_id} is not a publication of {id}"),
            ));
        }
        self.apply_mute(now, publication_id, muted);
        self.relay_muted(publication_id, muted);
        Ok(())
    }

    /// Mutes or unmutes a publication, owned or mirrored.
    pub(super) fn apply_mute(&mut self, now: Instant, publication_id: PublicationId, muted: bool) {
        let Some(publication) = self.publications.get_mut(&publication_id) else {
            return;
        };
        let unmuted_video = publication.muted && !muted && publication.kind == MediaKind::Video;
        if muted && !publication.muted {
            // Muted packets are dropped before the cache, and the publisher's encoder goes on:
            // after the mute, the cached frames no longer lead to the live ones.
            for layer in &mut publication.layers {
                layer.gop.clear();
            }
        }
        publication.muted = muted;
        if unmuted_video {
            // Each subscriber restarts on a keyframe of its layer, so nobody decodes deltas
            // against a picture from before the mute.
            let mut layers = 0u8;
            for (subscriber, mid) in &publication.subscribers {
                if let Some(sub) = self
                    .participants
                    .get_mut(subscriber)
                    .and_then(|s| s.subscriptions.get_mut(mid))
                {
                    sub.current = None;
                    if let Some(target) = sub.target {
                        layers |= 1 << target;
                    }
                }
            }
            self.request_keyframe(publication_id, layers, now);
        }
    }

    /// Asks the publisher for a keyframe on `layers` (a bit per simulcast layer; 0: only
    /// those already pending), at most once per interval per publication. A request inside
    /// the interval is remembered, for every layer asked meanwhile, and sent when it ends.
    pub(super) fn request_keyframe(
        &mut self,
        publication_id: PublicationId,
        layers: u8,
        now: Instant,
    ) {
        let interval = self.config.keyframe_request_interval;
        let Some(publication) = self.publications.get_mut(&publication_id) else {
            return;
        };
        if publication.kind != MediaKind::Video {
            return;
        }
        if let Some(owner) = publication.origin {
            // Only the owner reaches the publisher; its throttle decides when. Over a link a
            // request goes at most every [`super::mirror::LINK_KEYFRAME_INTERVAL`] for the same layers (its
            // subscribers ask again on each packet they must drop meanwhile).
            if is_link(owner) {
                let recent = publication
                    .last_keyframe_request
                    .is_some_and(|at| now < at + super::mirror::LINK_KEYFRAME_INTERVAL);
                if recent && layers & !publication.keyframe_layers == 0 {
                    return;
                }
                if !recent {
                    publication.keyframe_layers = 0;
                }
                publication.keyframe_layers |= layers;
                publication.last_keyframe_request = Some(now);
            }
            if layers != 0 {
                self.relays.push_back((
                    owner,
                    Relay::KeyframeRequest {
                        publication: publication_id,
                        layers,
                    },
                ));
            }
            return;
        }
        publication.keyframe_layers |= layers;
        if publication.keyframe_layers == 0 {
            publication.keyframe_request_pending = false;
            return;
        }
        if publication
            .last_keyframe_request
            .is_some_and(|t| now < t + interval)
        {
            publication.keyframe_request_pending = true;
            self.stats.keyframe_requests_throttled += 1;
            return;
        }
        let limits = self.config.gop_limits();
        if self.config.fast_start
            && publication.layers.len() > 1
            && publication.layers[0].available
            && !publication.layers[0].gop.fresh(limits, now)
        {
            // A round goes out anyway: it also asks for the lowest layer's keyframe when that
            // layer's cache, where new subscribers start, is stale or soon will be. A small
            // keyframe, and no extra round, so that joiners keep starting at once through a
            // join storm rather than waiting for the throttle.
            publication.keyframe_layers |= 1;
        }
        let wanted = std::mem::take(&mut publication.keyframe_layers);
        publication.keyframe_request_pending = false;
        publication.last_keyframe_request = Some(now);
        let (owner, mid) = (publication.owner, publication.mid);
        let mut rids: [Option<Option<Rid>>; MAX_SIMULCAST_LAYERS] = [None; MAX_SIMULCAST_LAYERS];
        for (index, layer) in publication
            .layers
            .iter()
            .enumerate()
            .take(MAX_SIMULCAST_LAYERS)
        {
            if wanted & (1 << index) != 0 {
                rids[index] = Some(layer.rid);
            }
        }
        let Some(publisher) = self.participants.get_mut(&owner) else {
            return;
        };
        let mut api = publisher.rtc.direct_api();
        for rid in rids.into_iter().flatten() {
            // A layer without packets yet needs no request: its first keyframe is on its way.
            if let Some(stream) = api.stream_rx_by_mid(mid, rid) {
                stream.request_keyframe(KeyframeRequestKind::Pli);
                self.stats.keyframe_requests_sent += 1;
            }
        }
        if !publisher.queued {
            publisher.queued = true;
            self.touched.push(owner);
        }
    }

    /// Sends one received packet to every subscriber of its publication.
    pub(super) fn forward(&mut self, publisher_id: ParticipantId, now: Instant, packet: RtpPacket) {
        self.stats.rtp_in += 1;
        let Some(publisher) = self.participants.get_mut(&publisher_id) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let (publication_id, layer) = match publisher.ssrc_cache.iter().find(|(s, _, _)| *s == ssrc)
        {
            Some(&(_, publication, layer)) => (publication, layer),
            None => {
                let stream = publisher
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()));
                let Some((mid, rid)) = stream else {
                    self.stats.dropped_unknown_ssrc += 1;
                    return;
                };
                let Some(&(_, publication)) = publisher.published.iter().find(|(m, _)| *m == mid)
                else {
                    self.stats.dropped_unknown_ssrc += 1;
                    return;
                };
                let Some(layer) = self
                    .publications
                    .get_mut(&publication)
                    .and_then(|p| layer_index(&mut p.layers, rid))
                else {
                    self.stats.dropped_unknown_ssrc += 1;
                    return;
                };
                // One SSRC per layer: a layer's new SSRC replaces its old one, so that SSRCs a
                // client cycles through never grow the cache.
                publisher
                    .ssrc_cache
                    .retain(|(_, p, l)| !(*p == publication && *l == layer));
                publisher.ssrc_cache.push((ssrc, publication, layer));
                (publication, layer)
            }
        };
        let pt = packet.header.payload_type;
        let video_codec = publisher
            .pt_info
            .iter()
            .find(|i| i.pt == pt)
            .and_then(|i| i.video);
        let keyframe = video_codec.is_some_and(|c| codec::is_keyframe(c, &packet.payload));
        let media = MediaPacket {
            ssrc: *ssrc,
            seq_no: *packet.seq_no,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            pt,
            arrival: packet.timestamp,
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            video_orientation: packet.header.ext_vals.video_orientation,
            payload: packet.payload,
            layer,
            keyframe,
            codec: video_codec,
        };
        let Some(to_subscribers) = self.ingest(publication_id, now, &media) else {
            return;
        };
        self.relay_packet(publication_id, &media, false);
        if to_subscribers {
            self.fan_out(publication_id, now, &media);
        }
    }
}

/// The layers a publisher declared for a video m-line, bounded and checked; one plain layer
/// when it declared none.
pub(super) fn declared_layers(declared: &[protocol::SimulcastLayer]) -> Vec<Layer> {
    let mut layers: Vec<Layer> = Vec::new();
    for layer in declared.iter().take(MAX_SIMULCAST_LAYERS) {
        let valid = !layer.rid.is_empty()
            && layer.rid.len() <= 16
            && layer
                .rid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let rid = Rid::from(layer.rid.as_str());
        if !valid || layers.iter().any(|l| l.rid == Some(rid)) {
            continue;
        }
        layers.push(Layer {
            rid: Some(rid),
            width: layer.width.min(16_384),
            height: layer.height.min(16_384),
            ..Layer::plain()
        });
    }
    if layers.is_empty() {
        layers.push(Layer::plain());
    }
    layers
}

/// The layer a recording takes: a plain stream's only one; for simulcast the top layer once
/// it arrives, or, when `settle` (the top did not come in time), the highest arriving.
pub(super) fn recordable_layer(layers: &[Layer], settle: bool) -> Option<u8> {
    let top = layers.len().checked_sub(1)?;
    if top == 0 || layers[top].available {
        return Some(top as u8);
    }
    if !settle {
        return None;
    }
    layers.iter().rposition(|l| l.available).map(|i| i as u8)
}

/// The layer index of a stream with `rid`. A rid the publisher did not declare takes the
/// plain layer's place or is appended (order of appearance, size unknown), up to the limit.
pub(super) fn layer_index(layers: &mut Vec<Layer>, rid: Option<Rid>) -> Option<u8> {
    let Some(rid) = rid else {
        return Some(0);
    };
    if let Some(index) = layers.iter().position(|l| l.rid == Some(rid)) {
        return Some(index as u8);
    }
    if let [only] = layers.as_mut_slice()
        && only.rid.is_none()
    {
        only.rid = Some(rid);
        return Some(0);
    }
    if layers.len() >= MAX_SIMULCAST_LAYERS {
        return None;
    }
    layers.push(Layer {
        rid: Some(rid),
        ..Layer::plain()
    });
    Some(layers.len() as u8 - 1)
}
