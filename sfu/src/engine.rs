//! The sans-IO media engine: rooms, participants, publications, subscriptions and forwarders
//! on top of one `str0m::Rtc` per participant.
//!
//! Time is always an argument and the engine never touches a socket. The driver feeds it
//! datagrams, commands and timeouts, and drains datagrams to send ([`Engine::poll_transmit`])
//! and events for signaling ([`Engine::poll_event`]).

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::{ErrorCode, MediaKind, ParticipantId, PublicationId, Quality, RoomId, TrackSource};
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::PayloadParams;
use str0m::ice::StunMessage;
use str0m::media::{Direction, KeyframeRequestKind, Mid, Pt};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::api::{PublicationAnnouncement, SfuCommand, SfuEvent};
use crate::codec::{self, VideoCodec};
use crate::forwarder::{Forwarder, Hold};
use crate::recording::{RecordedCodec, RecordedMedia};
use crate::stats::EngineStats;

/// Largest datagram accepted on the media port. Anything bigger is not WebRTC traffic we sent
/// an MTU for.
pub const MAX_DATAGRAM: usize = 1500;

/// How often each transport reports its statistics (NACK counts, loss, RTT).
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// Source addresses remembered per participant.
const MAX_ADDRS_PER_PARTICIPANT: usize = 4;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The address put in the server's ICE candidate: the media socket's address, or the
    /// public address in front of it.
    pub candidate_addr: SocketAddr,
    /// The shortest interval between two keyframe requests sent to one publication.
    pub keyframe_request_interval: Duration,
    /// Participants allowed in one room.
    pub max_participants_per_room: usize,
    /// Sent video packets kept per subscription to answer NACKs, and for how long. A second
    /// of video covers the round trips of the links this server serves, and bounds memory per
    /// subscriber.
    pub rtx_cache_packets: usize,
    pub rtx_cache_age: Duration,
}

impl EngineConfig {
    pub fn new(candidate_addr: SocketAddr) -> Self {
        Self {
            candidate_addr,
            keyframe_request_interval: Duration::from_secs(1),
            max_participants_per_room: 1_000,
            rtx_cache_packets: 256,
            rtx_cache_age: Duration::from_millis(1500),
        }
    }
}

/// Errors creating the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the crypto provider could not generate a DTLS certificate")]
    DtlsCertificate,
}

/// One inbound track.
#[derive(Debug)]
struct Publication {
    owner: ParticipantId,
    room: RoomId,
    mid: Mid,
    kind: MediaKind,
    muted: bool,
    /// Subscribers as (participant, their send mid).
    subscribers: Vec<(ParticipantId, Mid)>,
    last_keyframe_request: Option<Instant>,
    keyframe_request_pending: bool,
    /// Its room is being recorded: its packets also go to the recording tap.
    recorded: bool,
    source: TrackSource,
}

/// One outbound track to one participant.
#[derive(Debug)]
struct Subscription {
    publication: Option<PublicationId>,
    tx_ssrc: Option<Ssrc>,
    forwarder: Forwarder,
    /// Publisher payload type to this subscriber's payload type.
    pt_map: Vec<(Pt, Pt)>,
    /// NACKs counted from this subscription's egress statistics so far.
    nacks_seen: u64,
}

/// What the engine knows of one published stream's codec, by payload type.
#[derive(Debug, Clone, Copy)]
struct PtInfo {
    pt: Pt,
    video: Option<VideoCodec>,
}

#[derive(Debug)]
struct Participant {
    room: RoomId,
    rtc: Rtc,
    local_ufrag: String,
    addrs: Vec<SocketAddr>,
    /// Publications by their receive mid.
    published: Vec<(Mid, PublicationId)>,
    /// Known incoming SSRCs, so the per-packet lookup avoids str0m's stream table.
    ssrc_cache: Vec<(Ssrc, PublicationId)>,
    /// Codec of each payload type this participant sends, filled after each offer.
    pt_info: Vec<PtInfo>,
    subscriptions: FxHashMap<Mid, Subscription>,
    next_timeout: Instant,
    connected: bool,
    disconnected_reported: bool,
    /// The client closed the transport itself.
    closed_by_peer: bool,
    /// Whether the participant is in the engine's list of transports to drain this pass.
    queued: bool,
    /// Whether its send m-lines become publications (false for viewers).
    may_publish: bool,
    /// The last quality label told to signaling.
    quality: Option<Quality>,
}

#[derive(Debug, Default)]
struct Room {
    participants: Vec<ParticipantId>,
}

/// Work found while draining one participant's `Rtc`, handled once the borrow ends.
#[derive(Debug)]
// Boxing the packet would allocate once per packet on the hot path; the buffer holding these
// is reused, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Found {
    Rtp(RtpPacket),
    KeyframeRequest(Mid, KeyframeRequestKind),
    /// Cumulative NACKs received on one of this participant's send m-lines.
    Nacks(Mid, u64),
    Connected,
    Disconnected,
    /// The transport's quality label changed.
    Quality(Quality),
}

/// Labels a transport from the loss it reports each way and its round-trip time: the
/// thresholds where calls stay clean (under 2% loss, 300 ms), degrade, or break up.
pub fn classify_quality(loss: Option<f32>, rtt: Option<Duration>) -> Option<Quality> {
    if loss.is_none() && rtt.is_none() {
        return None;
    }
    let loss = loss.unwrap_or(0.0);
    let rtt = rtt.unwrap_or_default();
    Some(if loss < 0.02 && rtt < Duration::from_millis(300) {
        Quality::Good
    } else if loss < 0.08 && rtt < Duration::from_millis(600) {
        Quality::Fair
    } else {
        Quality::Poor
    })
}

/// The SFU's media core.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    dtls_cert: DtlsCert,
    // Ids are generated by the server, so a fast non-keyed hash is safe for these maps; maps
    // keyed by what a remote peer chooses (addresses, ufrags) keep the DoS-resistant default.
    participants: FxHashMap<ParticipantId, Participant>,
    rooms: HashMap<RoomId, Room>,
    publications: FxHashMap<PublicationId, Publication>,
    by_ufrag: HashMap<String, ParticipantId>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    next_publication: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SfuEvent>,
    found: Vec<Found>,
    touched: Vec<ParticipantId>,
    scratch_ids: Vec<ParticipantId>,
    stats: EngineStats,
    /// Rooms being recorded, with their recording ids.
    recordings: FxHashMap<RoomId, String>,
    /// The recording tap's queue (see [`crate::recording`]).
    recorded: VecDeque<RecordedMedia>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        // One certificate for every transport: generating a key pair per participant would
        // make joins cost milliseconds of CPU each.
        let provider = str0m::crypto::from_feature_flags();
        let dtls_cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or(EngineError::DtlsCertificate)?;
        Ok(Self {
            config,
            dtls_cert,
            participants: FxHashMap::default(),
            rooms: HashMap::new(),
            publications: FxHashMap::default(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            next_publication: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            found: Vec::new(),
            touched: Vec::new(),
            scratch_ids: Vec::new(),
            stats: EngineStats::default(),
            recordings: FxHashMap::default(),
            recorded: VecDeque::new(),
        })
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Counts of live objects: (rooms, participants, publications, subscriptions).
    pub fn census(&self) -> (usize, usize, usize, usize) {
        let subscriptions = self
            .publications
            .values()
            .map(|p| p.subscribers.len())
            .sum();
        (
            self.rooms.len(),
            self.participants.len(),
            self.publications.len(),
            subscriptions,
        )
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for signaling.
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let participants = self.participants.values().map(|p| p.next_timeout);
        let keyframes = self.publications.values().filter_map(|p| {
            p.last_keyframe_request
                .filter(|_| p.keyframe_request_pending)
                .map(|t| t + self.config.keyframe_request_interval)
        });
        participants
            .chain(keyframes)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
    }

    /// Advances every participant whose timer is due, and sends keyframe requests that were
    /// held back by the throttle.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.scratch_ids);
        due.extend(
            self.participants
                .iter()
                .filter(|(_, p)| p.next_timeout <= now)
                .map(|(id, _)| *id),
        );
        for &id in &due {
            if let Some(p) = self.participants.get_mut(&id)
                && let Err(err) = p.rtc.handle_input(Input::Timeout(now))
            {
                tracing::debug!(participant = %id, %err, "timeout input failed");
            }
            self.drain(id, now);
        }
        due.clear();
        self.scratch_ids = due;
        let pending: Vec<PublicationId> = self
            .publications
            .iter()
            .filter(|(_, p)| {
                p.keyframe_request_pending
                    && p.last_keyframe_request
                        .is_none_or(|t| now >= t + self.config.keyframe_request_interval)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            self.request_keyframe(id, now);
        }
        self.flush_touched(now);
    }

    /// Feeds one datagram received on the media port.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        if data.len() > MAX_DATAGRAM {
            self.stats.dropped_oversize += 1;
            return;
        }
        let Ok(contents) = data.try_into() else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let Some(id) = self.route(source, data, &input) else {
            self.stats.dropped_unknown_source += 1;
            return;
        };
        let rtp_ssrc = rtp_ssrc(data);
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        let known_before = rtp_ssrc.is_some_and(|ssrc| {
            participant
                .rtc
                .direct_api()
                .stream_rx(&ssrc.into())
                .is_some()
        });
        if let Err(err) = participant.rtc.handle_input(input) {
            self.stats.dropped_malformed += 1;
            tracing::debug!(participant = %id, %err, "input refused by the transport");
        }
        if let Some(ssrc) = rtp_ssrc
            && !known_before
            && participant
                .rtc
                .direct_api()
                .stream_rx(&ssrc.into())
                .is_none()
        {
            self.stats.dropped_unknown_ssrc += 1;
        }
        self.drain(id, now);
        self.flush_touched(now);
    }

    /// Finds the participant a datagram belongs to: by source address once ICE has bound it,
    /// or by the STUN username for a new address.
    fn route(&mut self, source: SocketAddr, data: &[u8], input: &Input) -> Option<ParticipantId> {
        if let Some(id) = self.by_addr.get(&source) {
            return Some(*id);
        }
        // Only a STUN binding request may introduce a new address.
        let stun = StunMessage::parse(data).ok()?;
        let (local_ufrag, _) = stun.split_username()?;
        let id = *self.by_ufrag.get(local_ufrag)?;
        let participant = self.participants.get_mut(&id)?;
        if !participant.rtc.accepts(input) {
            return None;
        }
        // The STUN message integrity is checked by str0m when the input is handled; binding
        // the address only routes later datagrams to the same transport, which checks them.
        if !participant.addrs.contains(&source) {
            // A peer changes address rarely (NAT rebinding, network switch). Bound the list so
            // that spoofed sources cannot grow it, forgetting the oldest address first.
            if participant.addrs.len() >= MAX_ADDRS_PER_PARTICIPANT {
                let oldest = participant.addrs.remove(0);
                if self.by_addr.get(&oldest) == Some(&id) {
                    self.by_addr.remove(&oldest);
                }
            }
            participant.addrs.push(source);
        }
        self.by_addr.insert(source, id);
        Some(id)
    }

    /// Applies one command from signaling.
    pub fn handle_command(&mut self, now: Instant, command: SfuCommand) {
        let participant = command.participant();
        let result = match command {
            SfuCommand::AddParticipant { participant, room } => {
                self.add_participant(now, participant, room)
            }
            SfuCommand::Offer {
                participant,
                sdp,
                publish,
                subscribe,
            } => self.handle_offer(now, participant, &sdp, publish, subscribe),
            SfuCommand::RemoteCandidate {
                participant,
                candidate,
            } => self.add_remote_candidate(participant, &candidate),
            SfuCommand::SetMuted {
                participant,
                publication,
                muted,
            } => self.set_muted(now, participant, publication, muted),
            SfuCommand::RemoveParticipant { participant } => {
                self.remove_participant(participant);
                Ok(())
            }
            SfuCommand::SetPublishing {
                participant,
                allowed,
            } => {
                self.set_publishing(participant, allowed);
                Ok(())
            }
            SfuCommand::Unsubscribe {
                participant,
                publications,
            } => {
                let mids: Vec<Mid> = self
                    .participants
                    .get(&participant)
                    .map(|p| {
                        p.subscriptions
                            .iter()
                            .filter(|(_, s)| {
                                s.publication.is_some_and(|id| publications.contains(&id))
                            })
                            .map(|(mid, _)| *mid)
                            .collect()
                    })
                    .unwrap_or_default();
                for mid in mids {
                    self.unbind(participant, mid);
                }
                Ok(())
            }
            SfuCommand::StartRecording { room, recording_id } => {
                self.start_recording(now, room, recording_id);
                Ok(())
            }
            SfuCommand::StopRecording { room } => {
                self.stop_recording(now, &room);
                Ok(())
            }
        };
        if let (Err((code, message)), Some(participant)) = (result, participant) {
            self.events.push_back(SfuEvent::Refused {
                participant,
                code,
                message,
            });
        }
        self.flush_touched(now);
    }

    fn add_participant(
        &mut self,
        now: Instant,
        id: ParticipantId,
        room: RoomId,
    ) -> Result<(), (ErrorCode, String)> {
        if self.participants.contains_key(&id) {
            return Err((
                ErrorCode::AlreadyJoined,
                format!("participant {id} already has a transport"),
            ));
        }
        let members = self.rooms.get(&room).map_or(0, |r| r.participants.len());
        if members >= self.config.max_participants_per_room {
            return Err((ErrorCode::RoomFull, format!("room {room} is full")));
        }
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_dtls_cert(self.dtls_cert.clone())
            .set_stats_interval(Some(STATS_INTERVAL))
            .build(now);
        let candidate = Candidate::host(self.config.candidate_addr, "udp").map_err(|err| {
            (
                ErrorCode::MediaUnavailable,
                format!("bad server candidate: {err}"),
            )
        })?;
        rtc.add_local_candidate(candidate);
        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        self.by_ufrag.insert(local_ufrag.clone(), id);
        self.rooms
            .entry(room.clone())
            .or_default()
            .participants
            .push(id);
        self.participants.insert(
            id,
            Participant {
                room,
                rtc,
                local_ufrag,
                addrs: Vec::new(),
                published: Vec::new(),
                ssrc_cache: Vec::new(),
                pt_info: Vec::new(),
                subscriptions: FxHashMap::default(),
                next_timeout: now,
                connected: false,
                disconnected_reported: false,
                closed_by_peer: false,
                queued: false,
                may_publish: true,
                quality: None,
            },
        );
        Ok(())
    }

    fn handle_offer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: &str,
        publish: Vec<protocol::PublishTrack>,
        subscribe: Vec<protocol::SubscribeTrack>,
    ) -> Result<(), (ErrorCode, String)> {
        let media_sections = sdp.lines().filter(|l| l.starts_with("m=")).count();
        if media_sections > protocol::MAX_MEDIA_SECTIONS {
            return Err((
                ErrorCode::BadSdp,
                format!(
                    "offer has {media_sections} media sections; the limit is {}",
                    protocol::MAX_MEDIA_SECTIONS
                ),
            ));
        }
        if !sdp.lines().any(|l| l.starts_with("a=fingerprint:")) {
            return Err((ErrorCode::BadSdp, "offer has no DTLS fingerprint".into()));
        }
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|err| (ErrorCode::BadSdp, format!("unparsable offer: {err}")))?;
        let participant = self.participants.get_mut(&id).ok_or((
            ErrorCode::NotJoined,
            format!("participant {id} has no transport"),
        ))?;
        let answer = participant
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|err| (ErrorCode::BadSdp, format!("offer not acceptable: {err}")))?;
        let answer_sdp = answer.to_sdp_string();

        let mids: Vec<Mid> = sdp
            .lines()
            .filter_map(|l| l.strip_prefix("a=mid:"))
            .map(|m| Mid::from(m.trim()))
            .collect();
        self.reconcile(now, id, &mids, &publish, &subscribe);
        self.events.push_back(SfuEvent::Answer {
            participant: id,
            sdp: answer_sdp,
        });
        self.drain(id, now);
        Ok(())
    }

    /// Brings publications and subscriptions in line with the m-lines just negotiated.
    fn reconcile(
        &mut self,
        now: Instant,
        id: ParticipantId,
        mids: &[Mid],
        publish: &[protocol::PublishTrack],
        subscribe: &[protocol::SubscribeTrack],
    ) {
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
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
                    let source = publish
                        .iter()
                        .find(|p| p.mid == mid.to_string())
                        .map(|p| p.source)
                        .unwrap_or(match kind {
                            MediaKind::Audio => TrackSource::Microphone,
                            MediaKind::Video => TrackSource::Camera,
                        });
                    to_publish.push((*mid, kind, source));
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
        for (mid, kind, source) in to_publish {
            let publication = PublicationId(self.next_publication);
            self.next_publication += 1;
            self.publications.insert(
                publication,
                Publication {
                    owner: id,
                    room: room.clone(),
                    mid,
                    kind,
                    muted: false,
                    subscribers: Vec::new(),
                    last_keyframe_request: None,
                    keyframe_request_pending: false,
                    recorded: false,
                    source,
                },
            );
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
            self.bind(now, id, mid, publication);
        }
    }

    /// Points the subscriber's send m-line at a publication of its own room.
    fn bind(&mut self, now: Instant, id: ParticipantId, mid: Mid, publication_id: PublicationId) {
        let Some(publication) = self.publications.get(&publication_id) else {
            // A publication that ended while the offer was in flight: the m-line stays idle.
            return;
        };
        let Some(subscriber) = self.participants.get(&id) else {
            return;
        };
        // Streams never cross rooms, and nobody subscribes to itself.
        if publication.room != subscriber.room || publication.owner == id {
            self.stats.refused_subscriptions += 1;
            return;
        }
        let Some(publisher) = self.participants.get(&publication.owner) else {
            return;
        };
        let publisher_params = media_params(&publisher.rtc, publication.mid);
        let pub_kind = publication.kind;
        let Some(subscriber) = self.participants.get_mut(&id) else {
            return;
        };
        let subscriber_params = media_params(&subscriber.rtc, mid);
        let pt_map = map_payload_types(&publisher_params, &subscriber_params);
        let Some(media) = subscriber.rtc.media(mid) else {
            return;
        };
        let sub_kind = match media.kind() {
            str0m::media::MediaKind::Audio => MediaKind::Audio,
            str0m::media::MediaKind::Video => MediaKind::Video,
        };
        if sub_kind != pub_kind || pt_map.is_empty() {
            self.stats.refused_subscriptions += 1;
            return;
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
            });
        subscription.publication = Some(publication_id);
        subscription.pt_map = pt_map;
        subscription.tx_ssrc = tx_ssrc;
        subscription.forwarder.reset_source();
        if let Some(publication) = self.publications.get_mut(&publication_id) {
            publication.subscribers.push((id, mid));
        }
        if is_video {
            // A late joiner must not wait for the publisher's next periodic keyframe.
            self.request_keyframe(publication_id, now);
        }
    }

    fn unbind(&mut self, id: ParticipantId, mid: Mid) {
        let Some(subscriber) = self.participants.get_mut(&id) else {
            return;
        };
        let Some(subscription) = subscriber.subscriptions.get_mut(&mid) else {
            return;
        };
        if let Some(publication) = subscription.publication.take()
            && let Some(p) = self.publications.get_mut(&publication)
        {
            p.subscribers.retain(|(s, m)| !(*s == id && *m == mid));
        }
    }

    /// What the recording tap has queued, oldest first.
    pub fn poll_recorded(&mut self) -> Option<RecordedMedia> {
        self.recorded.pop_front()
    }

    fn start_recording(&mut self, now: Instant, room: RoomId, recording_id: String) {
        if self.recordings.contains_key(&room) {
            return;
        }
        self.recordings.insert(room.clone(), recording_id.clone());
        self.recorded.push_back(RecordedMedia::Started {
            room: room.clone(),
            recording_id,
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

    fn record_publication(&mut self, now: Instant, id: PublicationId) {
        let Some(publication) = self.publications.get_mut(&id) else {
            return;
        };
        if publication.recorded {
            return;
        }
        publication.recorded = true;
        let kind = publication.kind;
        self.recorded.push_back(RecordedMedia::Track {
            room: publication.room.clone(),
            publication: id,
            participant: publication.owner,
            kind,
            source: publication.source,
            at: now,
        });
        // A video file must start on a keyframe; waiting for the next periodic one could
        // lose seconds.
        if kind == MediaKind::Video {
            self.request_keyframe(id, now);
        }
    }

    fn stop_recording(&mut self, now: Instant, room: &RoomId) {
        if self.recordings.remove(room).is_none() {
            return;
        }
        for publication in self.publications.values_mut() {
            if publication.room == *room {
                publication.recorded = false;
            }
        }
        self.recorded.push_back(RecordedMedia::Stopped {
            room: room.clone(),
            at: now,
        });
    }

    fn set_publishing(&mut self, id: ParticipantId, allowed: bool) {
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

    fn remove_publication(&mut self, publication_id: PublicationId) {
        let Some(publication) = self.publications.remove(&publication_id) else {
            return;
        };
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
        if let Some(owner) = self.participants.get_mut(&publication.owner) {
            owner.published.retain(|(_, p)| *p != publication_id);
            owner.ssrc_cache.retain(|(_, p)| *p != publication_id);
        }
        self.events.push_back(SfuEvent::PublicationRemoved {
            participant: publication.owner,
            publication: publication_id,
        });
    }

    fn remove_participant(&mut self, id: ParticipantId) {
        let Some(participant) = self.participants.get(&id) else {
            return;
        };
        let published: Vec<PublicationId> = participant.published.iter().map(|(_, p)| *p).collect();
        let subscribed: Vec<Mid> = participant.subscriptions.keys().copied().collect();
        for publication in published {
            self.remove_publication(publication);
        }
        for mid in subscribed {
            self.unbind(id, mid);
        }
        let Some(mut participant) = self.participants.remove(&id) else {
            return;
        };
        participant.rtc.disconnect();
        self.by_ufrag.remove(&participant.local_ufrag);
        for addr in &participant.addrs {
            if self.by_addr.get(addr) == Some(&id) {
                self.by_addr.remove(addr);
            }
        }
        if let Some(room) = self.rooms.get_mut(&participant.room) {
            room.participants.retain(|p| *p != id);
            if room.participants.is_empty() {
                self.rooms.remove(&participant.room);
            }
        }
    }

    fn add_remote_candidate(
        &mut self,
        id: ParticipantId,
        candidate: &str,
    ) -> Result<(), (ErrorCode, String)> {
        let participant = self.participants.get_mut(&id).ok_or((
            ErrorCode::NotJoined,
            format!("participant {id} has no transport"),
        ))?;
        let line = candidate.trim().trim_start_matches("a=");
        if line.is_empty() {
            // End of candidates: nothing to do for an ICE-lite server.
            return Ok(());
        }
        // Browsers without media permission hide their address behind an mDNS name. The
        // server cannot resolve it and does not need to: the client's STUN checks reveal the
        // address as a peer-reflexive candidate.
        if line
            .split_whitespace()
            .nth(4)
            .is_some_and(|a| a.ends_with(".local"))
        {
            return Ok(());
        }
        let candidate = Candidate::from_sdp_string(line)
            .map_err(|err| (ErrorCode::BadCandidate, format!("bad candidate: {err}")))?;
        participant.rtc.add_remote_candidate(candidate);
        Ok(())
    }

    fn set_muted(
        &mut self,
        now: Instant,
        id: ParticipantId,
        publication_id: PublicationId,
        muted: bool,
    ) -> Result<(), (ErrorCode, String)> {
        let publication = self
            .publications
            .get_mut(&publication_id)
            .filter(|p| p.owner == id)
            .ok_or((
                ErrorCode::UnknownPublication,
                format!("{publication_id} is not a publication of {id}"),
            ))?;
        let unmuted_video = publication.muted && !muted && publication.kind == MediaKind::Video;
        publication.muted = muted;
        if unmuted_video {
            let subscribers = publication.subscribers.clone();
            for (subscriber, mid) in subscribers {
                if let Some(sub) = self
                    .participants
                    .get_mut(&subscriber)
                    .and_then(|s| s.subscriptions.get_mut(&mid))
                {
                    sub.forwarder.reset_source();
                }
            }
            self.request_keyframe(publication_id, now);
        }
        Ok(())
    }

    /// Asks the publisher for a keyframe, at most once per interval; a request inside the
    /// interval is remembered and sent when the interval ends.
    fn request_keyframe(&mut self, publication_id: PublicationId, now: Instant) {
        let interval = self.config.keyframe_request_interval;
        let Some(publication) = self.publications.get_mut(&publication_id) else {
            return;
        };
        if publication.kind != MediaKind::Video {
            return;
        }
        if publication
            .last_keyframe_request
            .is_some_and(|t| now < t + interval)
        {
            if !publication.keyframe_request_pending {
                publication.keyframe_request_pending = true;
            }
            self.stats.keyframe_requests_throttled += 1;
            return;
        }
        publication.keyframe_request_pending = false;
        publication.last_keyframe_request = Some(now);
        let (owner, mid) = (publication.owner, publication.mid);
        let Some(publisher) = self.participants.get_mut(&owner) else {
            return;
        };
        let mut api = publisher.rtc.direct_api();
        let Some(stream) = api.stream_rx_by_mid(mid, None) else {
            // No packet has arrived yet; the first keyframe is on its way anyway.
            return;
        };
        stream.request_keyframe(KeyframeRequestKind::Pli);
        self.stats.keyframe_requests_sent += 1;
        if !publisher.queued {
            publisher.queued = true;
            self.touched.push(owner);
        }
    }

    /// Drains every output of one participant's transport until it asks for a timeout.
    fn drain(&mut self, id: ParticipantId, now: Instant) {
        let mut found = std::mem::take(&mut self.found);
        let Some(participant) = self.participants.get_mut(&id) else {
            return;
        };
        let mut timeouts_handled = 0;
        loop {
            match participant.rtc.poll_output() {
                Ok(Output::Transmit(transmit)) => {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += transmit.contents.len() as u64;
                    self.transmits.push_back(transmit);
                }
                Ok(Output::Timeout(at)) => {
                    // The pacer asks for a timeout at "now" after a write; honour it here so
                    // packets leave in this pass instead of on the next timer tick.
                    if at <= now && timeouts_handled < 4 {
                        timeouts_handled += 1;
                        if participant.rtc.handle_input(Input::Timeout(now)).is_err() {
                            break;
                        }
                        continue;
                    }
                    participant.next_timeout = at;
                    break;
                }
                Ok(Output::Event(event)) => match event {
                    Event::RtpPacket(packet) => found.push(Found::Rtp(packet)),
                    Event::KeyframeRequest(req) => {
                        found.push(Found::KeyframeRequest(req.mid, req.kind));
                    }
                    Event::MediaEgressStats(stats) => {
                        found.push(Found::Nacks(stats.mid, stats.nacks));
                    }
                    Event::PeerStats(stats) => {
                        let loss = match (stats.egress_loss_fraction, stats.ingress_loss_fraction) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            (a, b) => a.or(b),
                        };
                        if let Some(quality) = classify_quality(loss, stats.rtt)
                            && participant.quality != Some(quality)
                        {
                            participant.quality = Some(quality);
                            found.push(Found::Quality(quality));
                        }
                    }
                    Event::Connected => found.push(Found::Connected),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        found.push(Found::Disconnected);
                    }
                    // The client closed its connection itself (DTLS close_notify), which it
                    // does right after saying goodbye. That is a departure, not a timeout:
                    // signaling learns the reason from the `leave` or the socket closing.
                    Event::Closed => participant.closed_by_peer = true,
                    _ => {}
                },
                Err(err) => {
                    tracing::debug!(participant = %id, %err, "transport failed");
                    participant.next_timeout = now + Duration::from_secs(3600);
                    found.push(Found::Disconnected);
                    break;
                }
            }
        }
        if !participant.rtc.is_alive() && !participant.disconnected_reported {
            found.push(Found::Disconnected);
        }
        for item in found.drain(..) {
            match item {
                Found::Rtp(packet) => self.forward(id, now, packet),
                Found::KeyframeRequest(mid, _kind) => {
                    self.stats.keyframe_requests_received += 1;
                    let publication = self
                        .participants
                        .get(&id)
                        .and_then(|p| p.subscriptions.get(&mid))
                        .and_then(|s| s.publication);
                    if let Some(publication) = publication {
                        self.request_keyframe(publication, now);
                    }
                }
                Found::Nacks(mid, total) => {
                    if let Some(sub) = self
                        .participants
                        .get_mut(&id)
                        .and_then(|p| p.subscriptions.get_mut(&mid))
                    {
                        self.stats.nacks_received += total.saturating_sub(sub.nacks_seen);
                        sub.nacks_seen = sub.nacks_seen.max(total);
                    }
                }
                Found::Quality(quality) => {
                    self.events.push_back(SfuEvent::QualityChanged {
                        participant: id,
                        quality,
                    });
                }
                Found::Connected => {
                    if let Some(p) = self.participants.get_mut(&id)
                        && !p.connected
                    {
                        p.connected = true;
                        self.events
                            .push_back(SfuEvent::MediaConnected { participant: id });
                    }
                }
                Found::Disconnected => {
                    if let Some(p) = self.participants.get_mut(&id)
                        && !p.disconnected_reported
                    {
                        p.disconnected_reported = true;
                        p.next_timeout = now + Duration::from_secs(3600);
                        if !p.closed_by_peer {
                            self.events
                                .push_back(SfuEvent::MediaDisconnected { participant: id });
                        }
                    }
                }
            }
        }
        self.found = found;
    }

    /// Sends one received packet to every subscriber of its publication.
    fn forward(&mut self, publisher_id: ParticipantId, now: Instant, packet: RtpPacket) {
        self.stats.rtp_in += 1;
        let Some(publisher) = self.participants.get_mut(&publisher_id) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let publication_id = match publisher.ssrc_cache.iter().find(|(s, _)| *s == ssrc) {
            Some((_, p)) => *p,
            None => {
                let mid = publisher.rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid());
                let Some(&(_, publication)) =
                    mid.and_then(|mid| publisher.published.iter().find(|(m, _)| *m == mid))
                else {
                    self.stats.dropped_unknown_ssrc += 1;
                    return;
                };
                publisher.ssrc_cache.push((ssrc, publication));
                publication
            }
        };
        let pt = packet.header.payload_type;
        let video_codec = publisher
            .pt_info
            .iter()
            .find(|i| i.pt == pt)
            .and_then(|i| i.video);
        let Some(publication) = self.publications.get(&publication_id) else {
            return;
        };
        if publication.muted {
            self.stats.dropped_muted += 1;
            return;
        }
        let keyframe = video_codec.is_some_and(|c| codec::is_keyframe(c, &packet.payload));
        let is_video = publication.kind == MediaKind::Video;
        if publication.recorded {
            let codec = match video_codec {
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
                seq: *packet.seq_no as u16,
                timestamp: packet.header.timestamp,
                marker: packet.header.marker,
                payload: packet.payload.clone(),
                at: now,
            });
        }
        let ext_vals = ExtensionValues {
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            video_orientation: packet.header.ext_vals.video_orientation,
            ..Default::default()
        };
        let mut wants_keyframe = false;
        for &(subscriber_id, mid) in &publication.subscribers {
            let Some(subscriber) = self.participants.get_mut(&subscriber_id) else {
                continue;
            };
            let Some(subscription) = subscriber.subscriptions.get_mut(&mid) else {
                continue;
            };
            let Some(&(_, out_pt)) = subscription.pt_map.iter().find(|(p, _)| *p == pt) else {
                self.stats.dropped_unmapped_pt += 1;
                continue;
            };
            let rewritten = match subscription.forwarder.rewrite(
                now,
                *ssrc,
                *packet.seq_no,
                packet.header.timestamp,
                keyframe,
            ) {
                Ok(r) => r,
                Err(Hold::AwaitingKeyframe) => {
                    wants_keyframe = true;
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
            let mut api = subscriber.rtc.direct_api();
            let Some(stream) = api.stream_tx(&tx_ssrc) else {
                continue;
            };
            stream.write_rtp(
                RtpWrite::new(
                    out_pt,
                    rewritten.seq_no.into(),
                    rewritten.timestamp,
                    packet.timestamp,
                    packet.payload.clone(),
                )
                .marker(packet.header.marker)
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
        if wants_keyframe {
            self.request_keyframe(publication_id, now);
        }
    }

    /// Lets every transport written to in this pass send what was queued. Draining is enough:
    /// after a write the pacer asks for a timeout at "now", which the drain loop feeds back.
    fn flush_touched(&mut self, now: Instant) {
        while let Some(id) = self.touched.pop() {
            if let Some(p) = self.participants.get_mut(&id) {
                p.queued = false;
            }
            self.drain(id, now);
        }
    }
}

/// The SSRC of an RTP (not RTCP) datagram, read from its clear header.
fn rtp_ssrc(data: &[u8]) -> Option<u32> {
    let first = *data.first()?;
    let second = *data.get(1)?;
    // RFC 7983: 128..=191 is RTP or RTCP; RTCP payload types are 192..=223 (RFC 5761).
    if !(128..=191).contains(&first) || (192..=223).contains(&second) {
        return None;
    }
    Some(u32::from_be_bytes(data.get(8..12)?.try_into().ok()?))
}

/// The payload parameters negotiated on one m-line.
fn media_params(rtc: &Rtc, mid: Mid) -> Vec<PayloadParams> {
    let Some(media) = rtc.media(mid) else {
        return Vec::new();
    };
    let pts = media.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| pts.contains(&p.pt()))
        .cloned()
        .collect()
}

/// Pairs each publisher payload type with the subscriber's payload type for the same codec:
/// the exact same parameters when offered, otherwise the same codec.
fn map_payload_types(publisher: &[PayloadParams], subscriber: &[PayloadParams]) -> Vec<(Pt, Pt)> {
    publisher
        .iter()
        .filter_map(|p| {
            let spec = p.spec();
            subscriber
                .iter()
                .find(|s| s.spec() == spec)
                .or_else(|| subscriber.iter().find(|s| s.spec().codec == spec.codec))
                .map(|s| (p.pt(), s.pt()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_ssrc_reads_only_rtp() {
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 96;
        rtp[8..12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        let mut rtcp = rtp;
        rtcp[1] = 200;
        assert_eq!(rtp_ssrc(&rtcp), None);
        assert_eq!(rtp_ssrc(&rtp[..10]), None);
        assert_eq!(rtp_ssrc(&[0x00, 0x01]), None);
    }

    #[test]
    fn quality_follows_loss_and_rtt() {
        let ms = Duration::from_millis;
        assert_eq!(classify_quality(None, None), None);
        assert_eq!(
            classify_quality(Some(0.0), Some(ms(20))),
            Some(Quality::Good)
        );
        assert_eq!(
            classify_quality(Some(0.05), Some(ms(20))),
            Some(Quality::Fair)
        );
        assert_eq!(
            classify_quality(Some(0.0), Some(ms(450))),
            Some(Quality::Fair)
        );
        assert_eq!(classify_quality(Some(0.2), None), Some(Quality::Poor));
        assert_eq!(classify_quality(None, Some(ms(900))), Some(Quality::Poor));
    }
}
