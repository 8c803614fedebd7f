//! A minimal reference forwarder, used to test the load tester itself without the product's
//! SFU: one ICE-lite `str0m::Rtc` per participant in frame mode, answering offers the way the
//! product's server does (labels from the offer message) and copying frames from each
//! publication to its subscribers. Keyframe requests travel back to the publisher.
//!
//! It is sans-IO like [`crate::endpoint::Endpoint`]. It makes no attempt at the product's
//! concerns (rooms, limits, keyframe throttling, RTP-level forwarding); it exists so that the
//! endpoint and the bot can be checked against a known-good peer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::{
    MediaKind, ParticipantId, PublicationId, PublicationInfo, PublishTrack, SubscribeTrack,
};
use str0m::change::SdpOffer;
use str0m::media::{KeyframeRequestKind, MediaData, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcError};
use thiserror::Error;

use crate::endpoint::Datagram;

/// Consecutive already-due timeouts fed back into one transport per drain (see the endpoint).
const MAX_DUE_ROUNDS: u32 = 256;

#[derive(Debug, Error)]
pub enum ReferenceSfuError {
    #[error("unknown participant {0}")]
    UnknownParticipant(ParticipantId),
    #[error("participant {0} already has a transport")]
    DuplicateParticipant(ParticipantId),
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("bad candidate: {0}")]
    BadCandidate(String),
    #[error("webrtc: {0}")]
    Rtc(#[from] RtcError),
}

#[derive(Debug)]
struct Peer {
    participant: ParticipantId,
    rtc: Rtc,
    published: Vec<(Mid, PublicationId)>,
    subscribed: Vec<(Mid, PublicationId)>,
    timeout: Instant,
}

/// Work one transport's output causes on another.
enum Job {
    Forward(PublicationId, Box<MediaData>),
    Keyframe(PublicationId, KeyframeRequestKind),
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ReferenceSfu {
    peers: Vec<Peer>,
    next_publication: u64,
    transmits: VecDeque<Datagram>,
    forwarded_frames: u64,
}

impl ReferenceSfu {
    pub fn new() -> Self {
        Self {
            next_publication: 1,
            ..Self::default()
        }
    }

    /// Creates a participant's transport with `local_addr` as its only (host) candidate.
    pub fn add_participant(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        local_addr: SocketAddr,
    ) -> Result<(), ReferenceSfuError> {
        if self.peers.iter().any(|p| p.participant == participant) {
            return Err(ReferenceSfuError::DuplicateParticipant(participant));
        }
        let mut rtc = Rtc::builder().set_ice_lite(true).build(now);
        let candidate = Candidate::host(local_addr, "udp")
            .map_err(|err| ReferenceSfuError::BadCandidate(err.to_string()))?;
        rtc.add_local_candidate(candidate);
        self.peers.push(Peer {
            participant,
            rtc,
            published: Vec::new(),
            subscribed: Vec::new(),
            timeout: now,
        });
        Ok(())
    }

    /// Drops a participant's transport; returns the publications that ended with it.
    pub fn remove_participant(&mut self, participant: ParticipantId) -> Vec<PublicationId> {
        let Some(index) = self.peers.iter().position(|p| p.participant == participant) else {
            return Vec::new();
        };
        let peer = self.peers.remove(index);
        let ended: Vec<PublicationId> = peer.published.iter().map(|(_, p)| *p).collect();
        for other in &mut self.peers {
            other.subscribed.retain(|(_, p)| !ended.contains(p));
        }
        ended
    }

    /// Answers an offer; returns the answer SDP and the publications it created.
    pub fn handle_offer(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        sdp: &str,
        publish: &[PublishTrack],
        subscribe: &[SubscribeTrack],
    ) -> Result<(String, Vec<PublicationInfo>), ReferenceSfuError> {
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|err| ReferenceSfuError::BadSdp(err.to_string()))?;
        let Self {
            peers,
            next_publication,
            ..
        } = self;
        let peer = peers
            .iter_mut()
            .find(|p| p.participant == participant)
            .ok_or(ReferenceSfuError::UnknownParticipant(participant))?;
        let answer = peer.rtc.sdp_api().accept_offer(offer)?;
        let mut added = Vec::new();
        for track in publish {
            let mid = Mid::from(track.mid.as_str());
            if peer.published.iter().any(|(m, _)| *m == mid) {
                continue;
            }
            let Some(media) = peer.rtc.media(mid) else {
                continue;
            };
            let kind = match media.kind() {
                str0m::media::MediaKind::Audio => MediaKind::Audio,
                str0m::media::MediaKind::Video => MediaKind::Video,
            };
            let id = PublicationId(*next_publication);
            *next_publication += 1;
            peer.published.push((mid, id));
            added.push(PublicationInfo {
                id,
                participant_id: participant,
                kind,
                source: track.source,
                muted: false,
            });
        }
        peer.subscribed = subscribe
            .iter()
            .map(|s| (Mid::from(s.mid.as_str()), s.publication_id))
            .collect();
        let answer = answer.to_sdp_string();
        self.drain_all(now);
        Ok((answer, added))
    }

    /// Adds a trickled candidate (`candidate:` line; empty for end of candidates).
    pub fn handle_candidate(
        &mut self,
        participant: ParticipantId,
        candidate: &str,
    ) -> Result<(), ReferenceSfuError> {
        let peer = self.peer_mut(participant)?;
        let line = candidate.trim().trim_start_matches("a=");
        if line.is_empty() {
            return Ok(());
        }
        let candidate = Candidate::from_sdp_string(line)
            .map_err(|err| ReferenceSfuError::BadCandidate(err.to_string()))?;
        peer.rtc.add_remote_candidate(candidate);
        Ok(())
    }

    /// Routes a datagram to the transport that accepts it; others are dropped.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let Ok(receive) = Receive::new(Protocol::Udp, source, destination, data) else {
            return;
        };
        let input = Input::Receive(now, receive);
        let Some(peer) = self.peers.iter_mut().find(|p| p.rtc.accepts(&input)) else {
            return;
        };
        if peer.rtc.handle_input(input).is_err() {
            peer.rtc.disconnect();
        }
        self.drain_all(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in &mut self.peers {
            if peer.timeout <= now && peer.rtc.handle_input(Input::Timeout(now)).is_err() {
                peer.rtc.disconnect();
            }
        }
        self.drain_all(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.iter().map(|p| p.timeout).min()
    }

    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    /// Whether a participant's transport completed ICE and DTLS.
    pub fn is_connected(&self, participant: ParticipantId) -> bool {
        self.peers
            .iter()
            .any(|p| p.participant == participant && p.rtc.is_connected())
    }

    /// Frames written to subscribers so far.
    pub fn forwarded_frames(&self) -> u64 {
        self.forwarded_frames
    }

    fn peer_mut(&mut self, participant: ParticipantId) -> Result<&mut Peer, ReferenceSfuError> {
        self.peers
            .iter_mut()
            .find(|p| p.participant == participant)
            .ok_or(ReferenceSfuError::UnknownParticipant(participant))
    }

    /// Drains every transport, applying forwarded frames and keyframe requests until quiet.
    fn drain_all(&mut self, now: Instant) {
        loop {
            let mut jobs = Vec::new();
            for peer in &mut self.peers {
                drain_peer(peer, now, &mut self.transmits, &mut jobs);
            }
            if jobs.is_empty() {
                return;
            }
            for job in jobs {
                self.apply(job);
            }
        }
    }

    fn apply(&mut self, job: Job) {
        match job {
            Job::Forward(publication, data) => {
                for peer in &mut self.peers {
                    let Some(&(mid, _)) = peer.subscribed.iter().find(|(_, p)| *p == publication)
                    else {
                        continue;
                    };
                    let Some(writer) = peer.rtc.writer(mid) else {
                        continue;
                    };
                    let Some(pt) = writer.match_params(data.params) else {
                        continue;
                    };
                    // Writes before the subscriber's ICE completes are refused; losing those
                    // frames is what a real SFU does too.
                    if writer
                        .write(pt, data.network_time, data.time, data.data.clone())
                        .is_ok()
                    {
                        self.forwarded_frames += 1;
                    }
                }
            }
            Job::Keyframe(publication, kind) => {
                for peer in &mut self.peers {
                    let Some(&(mid, _)) = peer.published.iter().find(|(_, p)| *p == publication)
                    else {
                        continue;
                    };
                    if let Some(mut writer) = peer.rtc.writer(mid) {
                        // A request the publisher's m-line did not negotiate is dropped.
                        let _ = writer.request_keyframe(None, kind);
                    }
                }
            }
        }
    }
}

fn drain_peer(
    peer: &mut Peer,
    now: Instant,
    transmits: &mut VecDeque<Datagram>,
    jobs: &mut Vec<Job>,
) {
    let mut rounds = 0;
    loop {
        if !peer.rtc.is_alive() {
            peer.timeout = now + Duration::from_secs(3_600);
            return;
        }
        let output = match peer.rtc.poll_output() {
            Ok(output) => output,
            Err(_) => {
                peer.rtc.disconnect();
                continue;
            }
        };
        match output {
            Output::Timeout(at) => {
                if at <= now && rounds < MAX_DUE_ROUNDS {
                    rounds += 1;
                    if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
                        peer.rtc.disconnect();
                    }
                    continue;
                }
                peer.timeout = at.max(now + Duration::from_micros(100));
                return;
            }
            Output::Transmit(t) => transmits.push_back(Datagram {
                source: t.source,
                destination: t.destination,
                contents: t.contents.into(),
            }),
            Output::Event(Event::MediaData(data)) => {
                if let Some(&(_, publication)) = peer.published.iter().find(|(m, _)| *m == data.mid)
                {
                    jobs.push(Job::Forward(publication, Box::new(data)));
                }
            }
            Output::Event(Event::KeyframeRequest(request)) => {
                if let Some(&(_, publication)) =
                    peer.subscribed.iter().find(|(m, _)| *m == request.mid)
                {
                    jobs.push(Job::Keyframe(publication, request.kind));
                }
            }
            Output::Event(_) => {}
        }
    }
}
