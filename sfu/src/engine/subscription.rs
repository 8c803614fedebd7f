//! The subscriber side: a participant's receive m-lines bound to publications, the layer each
//! video subscription gets (allocation), and starting a subscription from the GOP cache.

use super::*;

impl Engine {
    /// Writes one packet of a publication to each of its subscribers on this engine: starts
    /// the ones that receive nothing yet from the GOP cache, switches layers on keyframes,
    /// rewrites sequence numbers, timestamps and VP8 picture ids, and asks (through the
    /// throttle) for the keyframes that subscribers wait for.
    pub(super) fn fan_out(
        &mut self,
        publication_id: PublicationId,
        now: Instant,
        packet: &MediaPacket,
    ) {
        let Some(publication) = self.publications.get(&publication_id) else {
            return;
        };
        let (layer, keyframe, pt) = (packet.layer, packet.keyframe, packet.pt);
        let is_video = publication.kind == MediaKind::Video;
        let fast_start = is_video && self.config.fast_start;
        let limits = self.config.gop_limits();
        let ext_vals = ExtensionValues {
            audio_level: packet.audio_level,
            voice_activity: packet.voice_activity,
            video_orientation: packet.video_orientation,
            ..Default::default()
        };
        // VP8's picture ids are re-based per subscriber; read where they sit once per packet.
        let vp8 = match packet.codec {
            Some(VideoCodec::Vp8) => crate::vp8::Fields::read(&packet.payload),
            _ => None,
        };
        self.vp8_patches.clear();
        let mut wanted_keyframes = 0u8;
        for &(subscriber_id, mid) in &publication.subscribers {
            let Some(subscriber) = self.participants.get_mut(&subscriber_id) else {
                continue;
            };
            let Some(subscription) = subscriber.subscriptions.get_mut(&mid) else {
                continue;
            };
            // A video subscription that receives nothing yet starts from a cached keyframe
            // (which holds this packet too, when it is of that layer) instead of waiting for
            // the target layer's next one; a live keyframe of the target starts it as always
            // once its subscriber has its keys.
            if fast_start
                && subscription.current.is_none()
                && let Some(target) = subscription.target
                && layer <= target
                && let Some(start) = fast_start_layer(
                    &publication.layers,
                    self.config.fast_start_ceiling(
                        subscriber.estimate,
                        subscriber.connected_at,
                        now,
                        target,
                    ),
                    limits,
                    now,
                )
            {
                if !subscriber.peer_keyed
                    && subscriber
                        .connected_at
                        .is_none_or(|at| now < at + PEER_KEYED_TIMEOUT)
                {
                    // It starts once the subscriber proves it has its SRTP keys (see
                    // `fast_start_waiting`), from what the caches hold then: replayed before,
                    // the packets would wait behind the handshake and grow stale, or reach a
                    // client still installing its keys. A live keyframe of the target waits
                    // too (one asked for by another subscriber, or by this one when the caches
                    // aged out meanwhile): sent now, it would start the subscription on a
                    // keyframe that the client may drop for want of keys, and no replay would
                    // follow. It is cached like any packet and replayed with what follows it.
                    // A handshake that outlasts the cache finds the next keyframe's GOP there:
                    // that keyframe is asked for before the cache ages out.
                    let gop = &publication.layers[usize::from(start)].gop;
                    if gop.expires_within(limits, now, FAST_START_REFRESH_MARGIN) {
                        wanted_keyframes |= 1 << start;
                    }
                    self.stats.dropped_other_layer += 1;
                    continue;
                }
                // Once it has its keys, a live keyframe of the target starts it as always
                // (below); anything else starts it from the cache.
                let gop = &publication.layers[usize::from(start)].gop;
                if !(layer == target && keyframe)
                    && let Some(written) =
                        fast_start_from(now, subscription, &mut subscriber.rtc, gop, limits, start)
                {
                    self.stats.fast_starts += 1;
                    self.stats.fast_start_packets += written;
                    self.stats.rtp_forwarded += written;
                    if !subscriber.queued {
                        subscriber.queued = true;
                        self.touched.push(subscriber_id);
                    }
                    // Replayed if it was of `start`; of another layer otherwise. A start below
                    // the target moves up on the target's next keyframe, asked for by its
                    // next packet.
                    continue;
                }
            }
            if is_video {
                match layer_step(subscription.target, subscription.current, layer, keyframe) {
                    LayerStep::Forward => {}
                    LayerStep::Switch => {
                        // Re-base on the keyframe so the outgoing stream stays contiguous.
                        subscription.forwarder.reset_source();
                        subscription.current = Some(layer);
                        self.stats.layer_switches += 1;
                    }
                    LayerStep::AwaitKeyframe => {
                        wanted_keyframes |= 1 << layer;
                        if fast_start && subscription.current.is_none() {
                            // No cache could start it (above). The same throttled request
                            // round also asks for the lowest layer's keyframe: a small one,
                            // which refills the cache the next joiners start from.
                            wanted_keyframes |= 1;
                        }
                        self.stats.dropped_other_layer += 1;
                        continue;
                    }
                    LayerStep::Skip => {
                        self.stats.dropped_other_layer += 1;
                        continue;
                    }
                }
            }
            let Some(&(_, out_pt)) = subscription.pt_map.iter().find(|(p, _)| *p == pt) else {
                self.stats.dropped_unmapped_pt += 1;
                continue;
            };
            let rewritten = match subscription.forwarder.rewrite(
                now,
                packet.ssrc,
                packet.seq_no,
                packet.timestamp,
                keyframe,
            ) {
                Ok(r) => r,
                Err(Hold::AwaitingKeyframe) => {
                    wanted_keyframes |= 1 << layer;
                    self.stats.held_awaiting_keyframe += 1;
                    continue;
                }
                Err(Hold::Stale) => {
                    self.stats.dropped_stale += 1;
                    continue;
                }
            };
            let Some(tx_ssrc) = subscription.tx_ssrc else {
                continue;
            };
            let payload = match vp8 {
                Some(fields) => match subscription.forwarder.vp8_numbers(fields) {
                    (numbers, true) => self.vp8_patches.get(&packet.payload, fields, numbers),
                    (_, false) => packet.payload.clone(),
                },
                None => packet.payload.clone(),
            };
            let mut api = subscriber.rtc.direct_api();
            let Some(stream) = api.stream_tx(&tx_ssrc) else {
                continue;
            };
            stream.write_rtp(
                RtpWrite::new(
                    out_pt,
                    rewritten.seq_no.into(),
                    rewritten.timestamp,
                    packet.arrival,
                    payload,
                )
                .marker(packet.marker)
                .ext_vals(ext_vals.clone())
                .nackable(is_video),
            );
            self.stats.rtp_forwarded += 1;
            // A flag, not a search of the list: with a thousand subscribers a search per
            // write would make fan-out quadratic.
            if !subscriber.queued {
                subscriber.queued = true;
                self.touched.push(subscriber_id);
            }
        }
        if wanted_keyframes != 0 {
            self.request_keyframe(publication_id, wanted_keyframes, now);
        }
    }

    /// Points the subscriber's send m-line at a publication of its own room. Returns the
    /// refusal to tell the subscriber when its m-line cannot receive the publication's codec.
    pub(super) fn bind(
        &mut self,
        now: Instant,
        id: ParticipantId,
        mid: Mid,
        publication_id: PublicationId,
    ) -> Option<(ErrorCode, String)> {
        let Some(publication) = self.publications.get(&publication_id) else {
            // A publication that ended while the offer was in flight (the m-line stays idle),
            // or another server's whose mirror has not arrived yet (bound when it does).
            if self.awaiting.len() < MAX_AWAITING {
                self.awaiting.push((publication_id, id, mid));
            }
            return None;
        };
        let subscriber = self.participants.get(&id)?;
        // Streams never cross rooms, and nobody subscribes to itself.
        if publication.room != subscriber.room || publication.owner == id {
            self.stats.refused_subscriptions += 1;
            return None;
        }
        // The publisher's payload types, kept with the publication (its transport may be on
        // another worker).
        let publisher_params = publication.params.clone();
        let pub_kind = publication.kind;
        let subscriber = self.participants.get_mut(&id)?;
        let subscriber_params = media_params(&subscriber.rtc, mid);
        let pt_map = map_payload_types(&publisher_params, &subscriber_params);
        let media = subscriber.rtc.media(mid)?;
        let sub_kind = match media.kind() {
            str0m::media::MediaKind::Audio => MediaKind::Audio,
            str0m::media::MediaKind::Video => MediaKind::Video,
        };
        if sub_kind != pub_kind {
            self.stats.refused_subscriptions += 1;
            return None;
        }
        // The publisher sends its first codec: an m-line that cannot receive that one would
        // be answered with another and stay black, so the subscriber is told which it lacks.
        let sent = publisher_params
            .iter()
            .map(|p| p.spec().codec)
            .find(|c| codec::mime_type(*c).is_some());
        if sent.is_none_or(|codec| !subscriber_params.iter().any(|s| s.spec().codec == codec))
            || pt_map.is_empty()
        {
            self.stats.refused_subscriptions += 1;
            let codec = sent_codec(&publisher_params).unwrap_or("an unknown codec");
            return Some((
                ErrorCode::CodecUnsupported,
                format!(
                    "publication {publication_id} is sent in {codec}, which m-line {mid} does \
                     not offer to receive; receive it on an m-line that offers {codec}"
                ),
            ));
        }
        let clock_rate = subscriber_params
            .first()
            .map_or(90_000, |p| p.spec().clock_rate.get());
        let is_video = pub_kind == MediaKind::Video;
        let (cache_packets, cache_age) = if is_video {
            (self.config.rtx_cache_packets, self.config.rtx_cache_age)
        } else {
            // Audio is not retransmitted: a late audio packet is useless.
            (0, Duration::ZERO)
        };
        let tx_ssrc = subscriber
            .rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .map(|s| {
                s.set_rtx_cache(cache_packets, cache_age, Some(0.15));
                s.ssrc()
            });
        let initial_seq = tx_ssrc.map_or(1, |s| (*s & 0x3fff) as u16);
        let subscription = subscriber
            .subscriptions
            .entry(mid)
            .or_insert_with(|| Subscription {
                publication: None,
                tx_ssrc,
                forwarder: Forwarder::new(clock_rate, is_video, initial_seq),
                pt_map: Vec::new(),
                nacks_seen: 0,
                is_video,
                target: None,
                current: None,
                max_layer: None,
                repairable_until: None,
            });
        let (last_seq, last_ts, last_sent) = subscription.forwarder.position();
        tracing::debug!(
            participant = %id,
            %mid,
            publication = %publication_id,
            ?tx_ssrc,
            ?pt_map,
            ?last_seq,
            last_ts,
            idle_ms = last_sent.map(|at| now.saturating_duration_since(at).as_millis()),
            "subscription bound"
        );
        subscription.publication = Some(publication_id);
        subscription.pt_map = pt_map;
        subscription.tx_ssrc = tx_ssrc;
        subscription.forwarder.reset_source();
        subscription.current = None;
        if let Some(publication) = self.publications.get_mut(&publication_id) {
            publication.subscribers.push((id, mid));
        }
        self.update_want(publication_id);
        if is_video {
            // The layer follows from the allocation at the end of this pass; its first packet
            // asks the publisher for a keyframe, so a late joiner does not wait for the next
            // periodic one.
            self.mark_for_allocation(id);
        }
        None
    }

    pub(super) fn unbind(&mut self, id: ParticipantId, mid: Mid) {
        let Some(subscriber) = self.participants.get_mut(&id) else {
            return;
        };
        let Some(subscription) = subscriber.subscriptions.get_mut(&mid) else {
            return;
        };
        subscription.target = None;
        subscription.current = None;
        if let Some(publication) = subscription.publication.take() {
            if let Some(p) = self.publications.get_mut(&publication) {
                p.subscribers.retain(|(s, m)| !(*s == id && *m == mid));
            }
            self.update_want(publication);
        }
        // What it no longer receives frees bandwidth for its other subscriptions.
        self.mark_for_allocation(id);
    }

    pub(super) fn mark_for_allocation(&mut self, id: ParticipantId) {
        if let Some(p) = self.participants.get_mut(&id)
            && !p.reallocate
        {
            p.reallocate = true;
            self.to_allocate.push(id);
        }
    }

    pub(super) fn set_video_sizes(&mut self, id: ParticipantId, sizes: &[VideoSize]) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        for size in sizes.iter().take(MAX_VIDEO_SIZES) {
            // Larger than any screen means "as large as possible", and bounds the arithmetic.
            let clamp = |v: u32| v.min(16_384);
            participant
                .video_sizes
                .insert(size.publication_id, (clamp(size.width), clamp(size.height)));
        }
        if participant.video_sizes.len() > MAX_SIZES_PER_PARTICIPANT {
            // Forget sizes of publications that ended; a client cannot grow the map further
            // than the publications that exist.
            let publications = &self.publications;
            participant
                .video_sizes
                .retain(|p, _| publications.contains_key(p));
        }
        self.mark_for_allocation(id);
    }

    /// Allocates layers for every participant marked since the last pass.
    pub(super) fn allocate_pending(&mut self) {
        while let Some(publication) = self.layer_changes.pop() {
            let subscribers = self
                .publications
                .get(&publication)
                .map(|p| p.subscribers.iter().map(|(s, _)| *s).collect::<Vec<_>>())
                .unwrap_or_default();
            for subscriber in subscribers {
                self.mark_for_allocation(subscriber);
            }
        }
        let mut pending = std::mem::take(&mut self.to_allocate);
        for id in pending.drain(..) {
            self.allocate(id);
        }
        self.to_allocate = pending;
    }

    /// Splits one subscriber's bandwidth estimate across its video subscriptions (see
    /// [`crate::allocator`]): screen shares first, then the active speaker, then the rest.
    pub(super) fn allocate(&mut self, id: ParticipantId) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        participant.reallocate = false;
        let speaker = self.speakers.get(&participant.room).copied().flatten();
        let mut rows = std::mem::take(&mut self.demand_rows);
        let mut demands = std::mem::take(&mut self.demands);
        let mut allocation = std::mem::take(&mut self.allocation);
        rows.clear();
        let mut audio_streams = 0u64;
        for (mid, sub) in &participant.subscriptions {
            let Some(publication) = sub.publication.and_then(|p| self.publications.get(&p)) else {
                continue;
            };
            if !sub.is_video {
                audio_streams += u64::from(publication.audible);
                continue;
            }
            let mut sizes = [(0, 0); MAX_SIMULCAST_LAYERS];
            let mut bitrates = [0; 3];
            let n = publication.layers.len().min(MAX_SIMULCAST_LAYERS);
            let mut highest_arriving = None;
            for (i, layer) in publication.layers.iter().take(n).enumerate() {
                sizes[i] = (layer.width, layer.height);
                // A layer not measured yet is assumed to cost what browsers send; a plain
                // stream offers no choice, so it costs what it measures (nothing to probe for).
                let assumed = if n > 1 {
                    DEFAULT_LAYER_BITRATES[(3 - n + i).min(2)]
                } else {
                    0
                };
                bitrates[i] = if layer.bitrate > 0 {
                    layer.bitrate
                } else {
                    assumed
                };
                if layer.available {
                    highest_arriving = Some(i as u8);
                }
            }
            // Before any layer arrives (and always for a plain stream) every layer counts as
            // available: the first keyframes are on their way, and the target must be set
            // when they come.
            let top = n.saturating_sub(1) as u8;
            let available = if n == 1 {
                top
            } else {
                highest_arriving.unwrap_or(top)
            };
            let tile = sub
                .publication
                .and_then(|p| participant.video_sizes.get(&p))
                .copied();
            let wanted = allocator::layer_for_size(&sizes[..n], tile);
            let priority = if publication.source == TrackSource::Screen {
                0
            } else if Some(publication.owner) == speaker {
                1
            } else {
                2
            };
            let demand = Demand {
                bitrates,
                layers: n as u8,
                // Only layers that arrive can be sent; a paused one is asked for below.
                max_layer: wanted.map(|w| w.min(available)),
                current: sub.current,
            };
            rows.push((priority, *mid, wanted, demand));
        }
        rows.sort_by_key(|(priority, ..)| *priority);
        demands.clear();
        demands.extend(rows.iter().map(|(.., demand)| *demand));
        let budget = match (self.config.bandwidth_estimation, participant.estimate) {
            (true, Some(estimate)) => allocator::video_budget(estimate, audio_streams),
            _ => u64::MAX,
        };
        allocator::allocate(budget, &demands, &mut allocation);
        let (mut allocated, mut desired, mut granted) = (0u64, 0u64, 0u32);
        for ((_, mid, wanted, demand), target) in rows.iter().zip(&allocation) {
            let cost = |layer: Option<u8>| layer.map_or(0, |l| demand.bitrates[usize::from(l)]);
            allocated += cost(*target);
            granted += target.map_or(0, |l| u32::from(l) + 1);
            // What the tile wants of the layers that arrive: probing for a layer not sent yet
            // (a join's first seconds, a layer its publisher resumes) would only overfill the
            // link; it counts once it arrives.
            desired += cost(
                demand
                    .max_layer
                    .map(|w| w.min(demand.layers.saturating_sub(1))),
            );
            let Some(sub) = participant.subscriptions.get_mut(mid) else {
                continue;
            };
            sub.max_layer = *wanted;
            if sub.target != *target {
                sub.target = *target;
                if target.is_none() {
                    sub.current = None;
                }
            }
        }
        // The estimator probes up to what the tiles want, so a subscriber on a low layer finds
        // out that its link has room, or recovered. It is not asked to sustain more than the
        // media with padding: padding every viewer of a large broadcast toward its next layer
        // would cost the server more than the layers themselves (measured: 400 viewers went
        // from 0% loss to freezes on this machine).
        let round = u64::from(self.ticks / TICKS_PER_MEASURE);
        let ask = participant.reprobe.ask(desired > allocated, granted, round);
        let (minimum, desired) = allocator::probe_targets(allocated, desired, audio_streams, ask);
        if self.config.bandwidth_estimation && participant.bwe_bitrates != (minimum, desired) {
            participant.bwe_bitrates = (minimum, desired);
            participant
                .rtc
                .bwe()
                .set_bitrate(Bitrate::bps(minimum), Bitrate::bps(desired));
        }
        self.demand_rows = rows;
        self.demands = demands;
        self.allocation = allocation;
    }

    /// Starts, from the GOP caches, the video subscriptions of a participant that has just
    /// proved it holds its SRTP keys and that receive nothing yet, rather than on their next
    /// packet (up to a frame interval later).
    pub(super) fn fast_start_waiting(&mut self, id: ParticipantId, now: Instant) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        let Participant {
            subscriptions,
            rtc,
            estimate,
            connected_at,
            queued,
            ..
        } = participant;
        let mut started = false;
        for subscription in subscriptions.values_mut() {
            if subscription.current.is_some() {
                continue;
            }
            if let Some(written) = start_from_cache(
                &self.config,
                &self.publications,
                (*estimate, *connected_at),
                subscription,
                rtc,
                now,
            ) {
                self.stats.fast_starts += 1;
                self.stats.fast_start_packets += written;
                self.stats.rtp_forwarded += written;
                started = true;
            }
        }
        if started && !*queued {
            *queued = true;
            self.touched.push(id);
        }
    }

    /// Repairs a fast start the client could not take: a subscription added by a
    /// renegotiation is replayed when the server answers, and a browser that applies the
    /// answer after the replay arrived has dropped it and asks for a keyframe. A request
    /// within [`FAST_START_REPAIR_WINDOW`] of a fast start is answered by replaying the cache
    /// once more, without asking the publisher. Only then, and only once: any other request
    /// (a receiver that lost packets, most often on a congested link) goes to the publisher,
    /// because a replayed GOP is a burst that a congested link would drop.
    pub(super) fn restart_from_cache(&mut self, id: ParticipantId, mid: Mid, now: Instant) -> bool {
        if !self.config.fast_start {
            return false;
        }
        let Some(participant) = self.participants.get_mut(&id) else {
            return false;
        };
        let Participant {
            subscriptions,
            rtc,
            estimate,
            connected_at,
            queued,
            ..
        } = participant;
        let Some(subscription) = subscriptions
            .get_mut(&mid)
            .filter(|s| s.repairable_until.is_some_and(|until| now < until))
        else {
            return false;
        };
        let Some(written) = start_from_cache(
            &self.config,
            &self.publications,
            (*estimate, *connected_at),
            subscription,
            rtc,
            now,
        ) else {
            return false;
        };
        subscription.repairable_until = None;
        self.stats.keyframe_requests_from_cache += 1;
        self.stats.fast_start_packets += written;
        self.stats.rtp_forwarded += written;
        if !*queued {
            *queued = true;
            self.touched.push(id);
        }
        true
    }
}

/// The layer a video subscription that receives nothing yet can start from now: the highest
/// layer up to `highest` (its target, or lower, see [`EngineConfig::fast_start_ceiling`]) whose
/// cache holds a complete GOP within the bounds. A layer below the target is a smaller GOP: a
/// thumbnail at once, then the target on its next keyframe, rather than nothing until then.
/// Only layers that arrive count: a paused layer's cache would start a picture that does not
/// move.
pub(super) fn fast_start_layer(
    layers: &[Layer],
    highest: u8,
    limits: GopLimits,
    now: Instant,
) -> Option<u8> {
    let top = usize::from(highest).min(layers.len().checked_sub(1)?);
    (0..=top)
        .rev()
        .find(|&i| layers[i].available && layers[i].gop.ready(limits, now))
        .map(|i| i as u8)
}

/// Starts a video subscription from its publication's caches: on the layer
/// [`fast_start_layer`] picks under the subscriber's ceiling (see
/// [`EngineConfig::fast_start_ceiling`]; `link` is its bandwidth estimate and when its
/// transport connected). Returns the packets written, or `None` when nothing could start it.
pub(super) fn start_from_cache(
    config: &EngineConfig,
    publications: &FxHashMap<PublicationId, Publication>,
    link: (Option<u64>, Option<Instant>),
    subscription: &mut Subscription,
    rtc: &mut Rtc,
    now: Instant,
) -> Option<u64> {
    let (true, Some(publication), Some(target)) = (
        subscription.is_video,
        subscription.publication,
        subscription.target,
    ) else {
        return None;
    };
    let publication = publications.get(&publication).filter(|p| !p.muted)?;
    let limits = config.gop_limits();
    let highest = config.fast_start_ceiling(link.0, link.1, now, target);
    let start = fast_start_layer(&publication.layers, highest, limits, now)?;
    let gop = &publication.layers[usize::from(start)].gop;
    fast_start_from(now, subscription, rtc, gop, limits, start)
}

/// Starts a video subscription on `layer`'s cached GOP: writes the cached packets, from the
/// keyframe on, to the subscriber's stream (see [`Forwarder::begin_replay`] for their sequence
/// numbers and timestamps) and makes `layer` the current one, so that live packets follow.
/// Returns the packets written, or `None`, having written nothing, when the cache cannot start
/// it: no complete GOP within the limits, a payload type the subscriber did not negotiate, or
/// no outgoing stream.
///
/// Per packet this is a reference count on the shared payload and a write into the stream's
/// queue, as for live forwarding; only a VP8 packet whose picture id must be re-based for this
/// subscriber is copied.
pub(super) fn fast_start_from(
    now: Instant,
    subscription: &mut Subscription,
    rtc: &mut Rtc,
    gop: &GopCache,
    limits: GopLimits,
    layer: u8,
) -> Option<u64> {
    let plan = gop.plan(limits, now)?;
    let pt_map = &subscription.pt_map;
    let out_pt = |pt: Pt| pt_map.iter().find(|(p, _)| *p == pt).map(|(_, out)| *out);
    if gop.packets().any(|p| out_pt(p.pt).is_none()) {
        return None;
    }
    let tx_ssrc = subscription.tx_ssrc?;
    let mut api = rtc.direct_api();
    let stream = api.stream_tx(&tx_ssrc)?;
    let forwarder = &mut subscription.forwarder;
    forwarder.reset_source();
    let start = forwarder.begin_replay(
        now,
        plan.ssrc,
        plan.first_seq,
        plan.last_timestamp,
        plan.frames,
    );
    let mut frame = 0u32;
    let mut previous: Option<u32> = None;
    let mut written = 0;
    for packet in gop.packets() {
        if previous.is_some_and(|ts| ts != packet.timestamp) {
            frame += 1;
        }
        previous = Some(packet.timestamp);
        let (Some(pt), Ok(rewritten)) = (
            out_pt(packet.pt),
            forwarder.rewrite_replayed(now, start, packet.seq_no, frame),
        ) else {
            continue;
        };
        // A replay is one subscriber's: its numbering is its own, so a copy is its own too.
        let payload = match crate::vp8::Fields::read(&packet.payload)
            .filter(|_| packet.codec == Some(VideoCodec::Vp8))
        {
            Some(fields) => match forwarder.vp8_numbers(fields) {
                (numbers, true) => crate::vp8::patched(&packet.payload, fields, numbers),
                (_, false) => packet.payload.clone(),
            },
            None => packet.payload.clone(),
        };
        // The wallclock of every replayed packet is that of the newest cached one, which is
        // where the compressed frames sit on the live timeline: sender reports stay true.
        stream.write_rtp(
            RtpWrite::new(
                pt,
                rewritten.seq_no.into(),
                rewritten.timestamp,
                plan.last_arrival,
                payload,
            )
            .marker(packet.marker)
            .ext_vals(ExtensionValues {
                video_orientation: packet.video_orientation,
                ..Default::default()
            })
            .nackable(true),
        );
        written += 1;
    }
    subscription.current = Some(layer);
    subscription.repairable_until = Some(now + FAST_START_REPAIR_WINDOW);
    Some(written)
}

/// What to do with one packet of `layer` for a subscription that should receive `target`
/// and receives `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LayerStep {
    Forward,
    /// A keyframe of the target layer: switch to it now.
    Switch,
    /// The target layer, but not a keyframe: ask for one and keep the current layer.
    AwaitKeyframe,
    Skip,
}

pub(super) fn layer_step(
    target: Option<u8>,
    current: Option<u8>,
    layer: u8,
    keyframe: bool,
) -> LayerStep {
    let Some(target) = target else {
        return LayerStep::Skip;
    };
    if layer == target && current != Some(target) {
        return if keyframe {
            LayerStep::Switch
        } else {
            LayerStep::AwaitKeyframe
        };
    }
    if current == Some(layer) {
        LayerStep::Forward
    } else {
        LayerStep::Skip
    }
}
