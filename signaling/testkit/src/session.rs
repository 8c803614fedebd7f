//! The signaling session: owns the socket and the peer connection, follows the room, and
//! renegotiates whenever the set of subscriptions changes, one offer at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use protocol::{
    ClientMessage, ErrorCode, MediaKind, ParticipantId, PublicationId, PublicationInfo,
    PublishTrack, ServerMessage, SubscribeTrack, TrackSource,
};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};
use webrtc::rtp_transceiver::{RtpSender, RtpTransceiver};

use crate::dtls::{self, DtlsOptions};
use crate::peer::{self, PeerEvent};
use crate::signaling::{self, Incoming, Socket};
use crate::state::{RosterEvent, Shared};

/// How often the client sends an application `ping`.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// How long `leave` waits for the server to close the socket.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// Requests from the client handle.
#[derive(Debug)]
pub(crate) enum Command {
    Send(Box<ClientMessage>, oneshot::Sender<anyhow::Result<()>>),
    Leave(oneshot::Sender<anyhow::Result<()>>),
    Abort(oneshot::Sender<()>),
}

/// One of this client's sending transceivers.
struct Published {
    transceiver: Arc<dyn RtpTransceiver>,
    source: TrackSource,
}

/// The local tracks and their senders, waiting for the first answer.
struct PendingMedia {
    audio: Arc<TrackLocalStaticSample>,
    audio_sender: Arc<dyn RtpSender>,
    video: Arc<TrackLocalStaticSample>,
    video_sender: Arc<dyn RtpSender>,
    tone_hz: f32,
    video_tag: u64,
}

impl PendingMedia {
    /// Spawns the send tasks; they stay idle until the connection is up.
    fn start(self, connected: &watch::Sender<bool>, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(crate::media::send_audio(
                self.audio,
                self.audio_sender,
                connected.subscribe(),
                self.tone_hz,
                Arc::clone(shared),
            )),
            tokio::spawn(crate::media::send_video(
                self.video,
                self.video_sender,
                connected.subscribe(),
                self.video_tag,
                Arc::clone(shared),
            )),
        ]
    }
}

/// What one turn of the loop decided.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

pub(crate) struct Session {
    socket: Socket,
    pc: Arc<dyn PeerConnection>,
    peer_events: mpsc::UnboundedReceiver<PeerEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    me: ParticipantId,
    published: Vec<Published>,
    /// Receive transceivers by the publication they carry.
    subscriptions: BTreeMap<PublicationId, Arc<dyn RtpTransceiver>>,
    /// An offer is in flight; no other may be sent until its answer arrives.
    negotiating: bool,
    /// Something changed while an offer was in flight.
    renegotiate: bool,
    answers: u64,
    /// The error that failed the first negotiation, reported by `join`.
    join_error: Option<String>,
    connected: watch::Sender<bool>,
    media_tasks: Vec<JoinHandle<()>>,
    /// The send tasks, started once the first answer is applied.
    pending_media: Option<PendingMedia>,
    keepalive: tokio::time::Interval,
    end_of_candidates_sent: bool,
    dtls: DtlsOptions,
    offer_rewrite: Option<fn(&str) -> String>,
}

/// Everything `join` hands over to build a session.
pub(crate) struct Parts {
    pub(crate) socket: Socket,
    pub(crate) shared: Arc<Shared>,
    pub(crate) me: ParticipantId,
    pub(crate) existing: Vec<PublicationInfo>,
    pub(crate) tone_hz: f32,
    pub(crate) video_tag: u64,
    pub(crate) dtls: DtlsOptions,
    pub(crate) offer_rewrite: Option<fn(&str) -> String>,
}

impl Session {
    /// Builds the peer connection, adds the send tracks and a receive transceiver for every
    /// publication already in the room, and sends the first offer.
    pub(crate) async fn start(
        parts: Parts,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> anyhow::Result<Self> {
        let Parts {
            socket,
            shared,
            me,
            existing,
            tone_hz,
            video_tag,
            dtls,
            offer_rewrite,
        } = parts;
        let (pc, peer_events) = peer::build(Arc::clone(&shared), &dtls).await?;
        let (connected, _) = watch::channel(false);

        let audio = peer::local_track(RtpCodecKind::Audio, peer::opus_codec(), "audio")?;
        let video = peer::local_track(RtpCodecKind::Video, peer::vp8_codec(), "video")?;
        let sendonly = || {
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                ..Default::default()
            })
        };
        let audio_transceiver = pc
            .add_transceiver_from_track(Arc::clone(&audio) as Arc<dyn TrackLocal>, sendonly())
            .await
            .context("adding the audio transceiver")?;
        let video_transceiver = pc
            .add_transceiver_from_track(Arc::clone(&video) as Arc<dyn TrackLocal>, sendonly())
            .await
            .context("adding the video transceiver")?;
        let audio_sender = audio_transceiver
            .sender()
            .await?
            .context("audio transceiver has no sender")?;
        let video_sender = video_transceiver
            .sender()
            .await?
            .context("video transceiver has no sender")?;

        let pending_media = PendingMedia {
            audio,
            audio_sender,
            video,
            video_sender,
            tone_hz,
            video_tag,
        };

        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the first ping is due one period from now.
        keepalive.reset();

        let mut session = Session {
            socket,
            pc,
            peer_events,
            commands,
            shared,
            me,
            published: vec![
                Published {
                    transceiver: audio_transceiver,
                    source: TrackSource::Microphone,
                },
                Published {
                    transceiver: video_transceiver,
                    source: TrackSource::Camera,
                },
            ],
            subscriptions: BTreeMap::new(),
            negotiating: false,
            renegotiate: false,
            answers: 0,
            join_error: None,
            connected,
            media_tasks: Vec::new(),
            pending_media: Some(pending_media),
            keepalive,
            end_of_candidates_sent: false,
            dtls,
            offer_rewrite,
        };
        for publication in existing {
            session.add_subscription(&publication).await?;
        }
        session.negotiate().await?;
        Ok(session)
    }

    /// Runs until the first answer is applied; fails if the server refused the offer or the
    /// socket closed first.
    pub(crate) async fn until_first_answer(&mut self) -> anyhow::Result<()> {
        while self.answers == 0 {
            if let Some(error) = self.join_error.take() {
                anyhow::bail!("first negotiation failed: {error}");
            }
            if self.step().await? == Flow::Stop {
                anyhow::bail!("signaling ended before the first answer");
            }
        }
        Ok(())
    }

    /// Runs until the socket closes or the client leaves, then releases everything.
    pub(crate) async fn run(mut self) {
        loop {
            match self.step().await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => break,
                Err(err) => {
                    self.shared.client_error(format!("session failed: {err:#}"));
                    break;
                }
            }
        }
        self.shutdown().await;
    }

    /// Stops the media tasks and closes the peer connection.
    pub(crate) async fn shutdown(&mut self) {
        for task in self.media_tasks.drain(..) {
            task.abort();
        }
        if let Err(err) = self.pc.close().await {
            tracing::debug!("closing the peer connection: {err}");
        }
    }

    async fn step(&mut self) -> anyhow::Result<Flow> {
        tokio::select! {
            incoming = signaling::recv(&mut self.socket) => self.on_incoming(incoming).await,
            Some(event) = self.peer_events.recv() => {
                self.on_peer_event(event).await?;
                Ok(Flow::Continue)
            }
            command = self.commands.recv() => self.on_command(command).await,
            _ = self.keepalive.tick() => {
                self.send(&ClientMessage::Ping {}).await?;
                Ok(Flow::Continue)
            }
        }
    }

    async fn send(&mut self, message: &ClientMessage) -> anyhow::Result<()> {
        signaling::send(&mut self.socket, message).await
    }

    async fn on_command(&mut self, command: Option<Command>) -> anyhow::Result<Flow> {
        match command {
            Some(Command::Send(message, reply)) => {
                let _ = reply.send(self.send(&message).await);
                Ok(Flow::Continue)
            }
            Some(Command::Leave(reply)) => {
                let result = self.leave().await;
                self.shutdown().await;
                let _ = reply.send(result);
                Ok(Flow::Stop)
            }
            Some(Command::Abort(reply)) => {
                // Drop the connection without a goodbye, as a crashed client would.
                self.shutdown().await;
                let _ = reply.send(());
                Ok(Flow::Stop)
            }
            // The handle was dropped: behave as abort.
            None => Ok(Flow::Stop),
        }
    }

    /// Says goodbye and waits, briefly, for the server to close the socket.
    async fn leave(&mut self) -> anyhow::Result<()> {
        self.send(&ClientMessage::Leave {}).await?;
        let drain = async {
            loop {
                match signaling::recv(&mut self.socket).await {
                    Incoming::Closed => break,
                    Incoming::Message(message) => {
                        tracing::debug!("after leave: {message:?}");
                    }
                    _ => {}
                }
            }
        };
        if tokio::time::timeout(LEAVE_GRACE, drain).await.is_err() {
            tracing::debug!("server kept the socket open after leave");
        }
        self.shared.lock().signaling_closed = true;
        Ok(())
    }

    async fn on_incoming(&mut self, incoming: Incoming) -> anyhow::Result<Flow> {
        match incoming {
            Incoming::Message(message) => self.on_server_message(*message).await?,
            Incoming::Unparsable(text, err) => {
                self.shared
                    .client_error(format!("unparsable server message {text}: {err}"));
            }
            Incoming::Other => {}
            Incoming::Closed => {
                self.shared.lock().signaling_closed = true;
                if self.answers == 0 && self.join_error.is_none() {
                    self.join_error = Some("signaling socket closed".into());
                }
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_peer_event(&mut self, event: PeerEvent) -> anyhow::Result<()> {
        match event {
            PeerEvent::Candidate(candidate) => {
                self.send(&ClientMessage::Candidate { candidate }).await?;
            }
            PeerEvent::GatheringComplete => {
                if !self.end_of_candidates_sent {
                    self.end_of_candidates_sent = true;
                    self.send(&ClientMessage::Candidate {
                        candidate: String::new(),
                    })
                    .await?;
                }
            }
            PeerEvent::State(state) => {
                self.shared.lock().peer_state = state;
                if state == RTCPeerConnectionState::Connected {
                    self.connected.send_replace(true);
                }
            }
        }
        Ok(())
    }

    async fn on_server_message(&mut self, message: ServerMessage) -> anyhow::Result<()> {
        match message {
            ServerMessage::Answer { sdp } => self.on_answer(sdp).await?,
            ServerMessage::ParticipantJoined { participant } => {
                let publications = participant.publications.clone();
                {
                    let mut state = self.shared.lock();
                    state.roster.events.push(RosterEvent::Joined {
                        participant_id: participant.id,
                        name: participant.name.clone(),
                    });
                    for publication in &publications {
                        state
                            .publications
                            .insert(publication.id, publication.clone());
                    }
                    state
                        .roster
                        .participants
                        .insert(participant.id, participant);
                }
                for publication in publications {
                    self.add_subscription(&publication).await?;
                }
                self.negotiate_if_needed().await?;
            }
            ServerMessage::ParticipantLeft {
                participant_id,
                reason,
            } => {
                let gone: Vec<PublicationId> = {
                    let mut state = self.shared.lock();
                    state.roster.events.push(RosterEvent::Left {
                        participant_id,
                        reason,
                    });
                    state.roster.participants.remove(&participant_id);
                    state
                        .publications
                        .values()
                        .filter(|p| p.participant_id == participant_id)
                        .map(|p| p.id)
                        .collect()
                };
                for publication in gone {
                    self.remove_subscription(publication).await?;
                }
                self.negotiate_if_needed().await?;
            }
            ServerMessage::PublicationAdded { publication } => {
                {
                    let mut state = self.shared.lock();
                    state
                        .publications
                        .insert(publication.id, publication.clone());
                    if publication.participant_id == self.me {
                        if !state.own_publications.contains(&publication) {
                            state.own_publications.push(publication.clone());
                        }
                    } else {
                        state
                            .roster
                            .events
                            .push(RosterEvent::PublicationAdded(publication.clone()));
                        if let Some(participant) = state
                            .roster
                            .participants
                            .get_mut(&publication.participant_id)
                            && !participant
                                .publications
                                .iter()
                                .any(|p| p.id == publication.id)
                        {
                            participant.publications.push(publication.clone());
                        }
                    }
                }
                if publication.participant_id != self.me {
                    self.add_subscription(&publication).await?;
                    self.negotiate_if_needed().await?;
                }
            }
            ServerMessage::PublicationRemoved {
                publication_id,
                participant_id,
            } => {
                {
                    let mut state = self.shared.lock();
                    if participant_id == self.me {
                        state.own_publications.retain(|p| p.id != publication_id);
                    } else {
                        state.roster.events.push(RosterEvent::PublicationRemoved {
                            publication_id,
                            participant_id,
                        });
                    }
                    if let Some(participant) = state.roster.participants.get_mut(&participant_id) {
                        participant.publications.retain(|p| p.id != publication_id);
                    }
                }
                self.remove_subscription(publication_id).await?;
                self.negotiate_if_needed().await?;
            }
            ServerMessage::MuteChanged {
                publication_id,
                participant_id,
                muted,
            } => {
                let mut state = self.shared.lock();
                state.roster.events.push(RosterEvent::MuteChanged {
                    publication_id,
                    participant_id,
                    muted,
                });
                if let Some(publication) = state.publications.get_mut(&publication_id) {
                    publication.muted = muted;
                }
                if let Some(participant) = state.roster.participants.get_mut(&participant_id)
                    && let Some(publication) = participant
                        .publications
                        .iter_mut()
                        .find(|p| p.id == publication_id)
                {
                    publication.muted = muted;
                }
            }
            ServerMessage::MediaConnected => self.shared.lock().media_connected = true,
            ServerMessage::Pong => self.shared.lock().pongs += 1,
            ServerMessage::Error { code, message } => self.on_error(code, message),
            ServerMessage::Joined { .. } => {
                self.shared
                    .client_error("a second `joined` arrived on the same socket".into());
            }
            ServerMessage::Nodes { .. } => {}
            ServerMessage::Redirect { .. } => {
                self.shared
                    .client_error("a redirect arrived after `joined`".into());
            }
            // This client joins open rooms as a participant: roles, lobby and aggregates do
            // not change what it sends or receives, and it publishes one layer.
            ServerMessage::Lobby { .. }
            | ServerMessage::ActiveSpeaker { .. }
            | ServerMessage::E2eeKey { .. }
            | ServerMessage::SimulcastLayers { .. }
            | ServerMessage::ParticipantUpdated { .. }
            | ServerMessage::RoleChanged { .. }
            | ServerMessage::RoomState { .. }
            | ServerMessage::RoomCounts(_)
            | ServerMessage::LobbyChanged { .. }
            | ServerMessage::RecordingState { .. } => {}
        }
        Ok(())
    }

    fn on_error(&mut self, code: ErrorCode, message: String) {
        tracing::debug!("server error {code:?}: {message}");
        // Errors name no request; while an offer is in flight these can only be about it.
        let about_offer = matches!(
            code,
            ErrorCode::BadSdp | ErrorCode::MediaUnavailable | ErrorCode::BadMessage
        );
        if self.negotiating && about_offer {
            // The offer is dead: the next change sends a fresh one from a clean slate
            // as far as the server is concerned.
            self.negotiating = false;
            if self.answers == 0 {
                self.join_error = Some(format!("{code:?}: {message}"));
            }
        }
        self.shared.lock().server_errors.push((code, message));
    }

    async fn on_answer(&mut self, sdp: String) -> anyhow::Result<()> {
        if !self.negotiating {
            self.shared
                .client_error("an answer arrived with no offer in flight".into());
            return Ok(());
        }
        self.negotiating = false;
        if let Some(setup) = dtls::setup_of(&sdp) {
            self.shared.lock().answer_setup.get_or_insert(setup);
        }
        let applied = match RTCSessionDescription::answer(sdp) {
            Ok(answer) => self.pc.set_remote_description(answer).await,
            Err(err) => Err(err),
        };
        if let Err(err) = applied {
            let message = format!("applying the answer: {err}");
            if self.answers == 0 {
                self.join_error = Some(message.clone());
            }
            self.shared.client_error(message);
            return Ok(());
        }
        self.answers += 1;
        self.shared.lock().negotiations = self.answers;
        if let Some(media) = self.pending_media.take() {
            self.media_tasks = media.start(&self.connected, &self.shared);
        }
        self.negotiate_if_needed().await
    }

    /// Adds a receive-only transceiver for another participant's publication.
    async fn add_subscription(&mut self, publication: &PublicationInfo) -> anyhow::Result<()> {
        if publication.participant_id == self.me || self.subscriptions.contains_key(&publication.id)
        {
            return Ok(());
        }
        let kind = match publication.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let transceiver = self
            .pc
            .add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .with_context(|| format!("adding a receive transceiver for {}", publication.id))?;
        {
            let mut state = self.shared.lock();
            state.transceivers.insert(transceiver.id(), publication.id);
            state.subscribed.push(publication.id);
        }
        self.subscriptions.insert(publication.id, transceiver);
        self.renegotiate = true;
        Ok(())
    }

    /// Stops the receive transceiver of a publication that ended.
    async fn remove_subscription(&mut self, publication: PublicationId) -> anyhow::Result<()> {
        let Some(transceiver) = self.subscriptions.remove(&publication) else {
            return Ok(());
        };
        self.shared.lock().subscribed.retain(|p| *p != publication);
        // The transceiver-to-publication entry stays, so that packets still in flight count.
        transceiver
            .stop()
            .await
            .with_context(|| format!("stopping the receive transceiver for {publication}"))?;
        self.renegotiate = true;
        Ok(())
    }

    async fn negotiate_if_needed(&mut self) -> anyhow::Result<()> {
        if self.renegotiate && !self.negotiating {
            self.negotiate().await?;
        }
        Ok(())
    }

    /// Creates and sends an offer. `publish` and `subscribe` describe every live m-line, not
    /// only the changed ones: the server reconciles the whole set on each offer.
    async fn negotiate(&mut self) -> anyhow::Result<()> {
        self.renegotiate = false;
        let offer = self
            .pc
            .create_offer(None)
            .await
            .context("creating an offer")?;
        let mut sdp = dtls::offer_as_sent(&offer.sdp, &self.dtls);
        if let Some(rewrite) = self.offer_rewrite {
            sdp = rewrite(&sdp);
        }
        self.pc
            .set_local_description(offer)
            .await
            .context("applying the local offer")?;

        // Mids are assigned by `set_local_description`, not before.
        let mut publish = Vec::new();
        for published in &self.published {
            if let Some(mid) = published.transceiver.mid().await? {
                publish.push(PublishTrack {
                    mid,
                    source: published.source,
                    layers: Vec::new(),
                });
            }
        }
        let mut subscribe = Vec::new();
        for (publication, transceiver) in &self.subscriptions {
            if let Some(mid) = transceiver.mid().await? {
                subscribe.push(SubscribeTrack {
                    mid,
                    publication_id: *publication,
                });
            }
        }
        self.send(&ClientMessage::Offer {
            sdp,
            publish,
            subscribe,
        })
        .await?;
        self.negotiating = true;
        Ok(())
    }
}
