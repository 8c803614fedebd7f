//! A deliberately small stand-in for the product's SFU, for testing the webrtc-rs client
//! before the real server exists: the signaling protocol over a TLS WebSocket at `/ws`, and
//! one ICE-lite str0m `Rtc` per participant behind a single UDP socket on 127.0.0.1.
//!
//! It forwards media at frame level (str0m depacketizes and repacketizes), relays keyframe
//! requests to publishers, and asks a publisher for a keyframe whenever one of its video
//! publications gains a subscriber, as a real SFU does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::{
    ClientMessage, ErrorCode, LeaveReason, MediaKind, ParticipantId, ParticipantInfo,
    PublicationId, PublicationInfo, RoomId, ServerMessage,
};
use str0m::change::SdpOffer;
use str0m::media::{KeyframeRequestKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

type ConnId = u64;

/// What the connection tasks tell the core.
enum CoreIn {
    Open(ConnId, mpsc::UnboundedSender<ServerMessage>),
    Message(ConnId, ClientMessage),
    Closed(ConnId),
}

/// Counters a test can read while the server runs.
#[derive(Debug, Default)]
pub struct SfuStats {
    /// Keyframe requests sent to publishers, for new subscribers or relayed PLI/FIR.
    pub keyframe_requests: AtomicU64,
    /// Media frames written to subscribers.
    pub frames_forwarded: AtomicU64,
    /// Candidates trickled by clients that parsed.
    pub candidates: AtomicU64,
    /// Trickled candidates whose address is not loopback: must stay zero.
    pub non_loopback_candidates: AtomicU64,
    /// Empty candidates (end of candidates).
    pub end_of_candidates: AtomicU64,
}

pub struct MiniSfu {
    pub url: String,
    pub cert_pem: Vec<u8>,
    pub stats: Arc<SfuStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for MiniSfu {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl MiniSfu {
    pub async fn start() -> anyhow::Result<Self> {
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
        let cert_pem = certified.cert.pem().into_bytes();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        let stats = Arc::new(SfuStats::default());

        let (core_tx, core_rx) = mpsc::unbounded_channel();
        let core = Core::new(udp, Arc::clone(&stats))?;
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(err) = core.run(core_rx).await {
                tracing::error!("mini SFU core failed: {err:#}");
            }
        })];
        tasks.push(tokio::spawn(async move {
            let ids = AtomicU64::new(1);
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = ids.fetch_add(1, Ordering::Relaxed);
                let acceptor = acceptor.clone();
                let core_tx = core_tx.clone();
                tokio::spawn(async move {
                    if let Err(err) = serve_connection(conn, tcp, acceptor, core_tx).await {
                        tracing::debug!("connection {conn}: {err:#}");
                    }
                });
            }
        }));
        Ok(Self {
            url: format!("wss://127.0.0.1:{port}/ws"),
            cert_pem,
            stats,
            tasks,
        })
    }
}

async fn serve_connection(
    conn: ConnId,
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    core: mpsc::UnboundedSender<CoreIn>,
) -> anyhow::Result<()> {
    let tls = acceptor.accept(tcp).await.context("TLS accept")?;
    let ws = tokio_tungstenite::accept_hdr_async(tls, only_ws_path)
        .await
        .context("WebSocket handshake")?;
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ServerMessage>();
    let _ = core.send(CoreIn::Open(conn, out_tx.clone()));

    // The writer ends, closing the socket, once the core drops its sender after a leave.
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let Ok(text) = serde_json::to_string(&message) else {
                continue;
            };
            if sink.send(Message::text(text)).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    drop(out_tx);

    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Text(text)) => match protocol::decode_client_message(&text) {
                Ok(message) => {
                    let _ = core.send(CoreIn::Message(conn, message));
                }
                Err(err) => tracing::warn!("connection {conn}: {err:?}"),
            },
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = core.send(CoreIn::Closed(conn));
    writer.abort();
    Ok(())
}

/// Accepts the WebSocket upgrade on `/ws` only. The signature is tungstenite's callback's,
/// large error type included.
#[allow(clippy::result_large_err)]
fn only_ws_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == "/ws" {
        Ok(response)
    } else {
        let mut refusal = ErrorResponse::new(Some("not found".into()));
        *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
        Err(refusal)
    }
}

struct Participant {
    conn: ConnId,
    name: String,
    room: RoomId,
    rtc: Rtc,
    published: Vec<PublicationId>,
    /// The subscriber's send m-lines and the publication each carries.
    subscriptions: HashMap<Mid, PublicationId>,
    connected: bool,
}

struct Publication {
    info: PublicationInfo,
    mid: Mid,
}

struct Core {
    udp: UdpSocket,
    local: SocketAddr,
    stats: Arc<SfuStats>,
    conns: HashMap<ConnId, mpsc::UnboundedSender<ServerMessage>>,
    participants: HashMap<ParticipantId, Participant>,
    publications: HashMap<PublicationId, Publication>,
    next_participant: u64,
    next_publication: u64,
}

impl Core {
    fn new(udp: UdpSocket, stats: Arc<SfuStats>) -> anyhow::Result<Self> {
        let local = udp.local_addr()?;
        Ok(Self {
            udp,
            local,
            stats,
            conns: HashMap::new(),
            participants: HashMap::new(),
            publications: HashMap::new(),
            next_participant: 1,
            next_publication: 1,
        })
    }

    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<CoreIn>) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 2000];
        loop {
            let next = self.drive().await;
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(next));
            tokio::select! {
                received = self.udp.recv_from(&mut buf) => {
                    let (n, source) = received?;
                    self.on_datagram(source, &buf[..n]);
                }
                message = inbox.recv() => match message {
                    Some(message) => self.on_core_in(message),
                    None => return Ok(()),
                },
                _ = sleep => {}
            }
        }
    }

    fn on_datagram(&mut self, source: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if let Some(participant) = self
            .participants
            .values_mut()
            .find(|p| p.rtc.accepts(&input))
            && let Err(err) = participant.rtc.handle_input(input)
        {
            tracing::warn!("str0m input: {err}");
        }
    }

    /// Drains every `Rtc` until each only waits for a future timeout, acting on the events
    /// (which may give other `Rtc`s work), and returns the earliest timeout.
    async fn drive(&mut self) -> Instant {
        loop {
            let now = Instant::now();
            let mut next = now + std::time::Duration::from_millis(100);
            let mut transmits = Vec::new();
            let mut events = Vec::new();
            for (id, participant) in &mut self.participants {
                loop {
                    match participant.rtc.poll_output() {
                        Ok(Output::Transmit(t)) => {
                            transmits.push((t.destination, t.contents.to_vec()));
                        }
                        Ok(Output::Event(event)) => events.push((*id, event)),
                        Ok(Output::Timeout(at)) => {
                            if at <= now {
                                let _ = participant.rtc.handle_input(Input::Timeout(now));
                                continue;
                            }
                            next = next.min(at);
                            break;
                        }
                        Err(err) => {
                            tracing::warn!("str0m output: {err}");
                            break;
                        }
                    }
                }
            }
            for (destination, contents) in transmits {
                let _ = self.udp.send_to(&contents, destination).await;
            }
            if events.is_empty() {
                return next;
            }
            for (id, event) in events {
                self.on_event(id, event);
            }
        }
    }

    fn on_event(&mut self, id: ParticipantId, event: Event) {
        match event {
            Event::Connected => {
                if let Some(participant) = self.participants.get_mut(&id)
                    && !participant.connected
                {
                    participant.connected = true;
                    let conn = participant.conn;
                    self.send(conn, ServerMessage::MediaConnected);
                }
            }
            Event::MediaData(data) => {
                let Some(source) = self
                    .participants
                    .get(&id)
                    .and_then(|p| {
                        p.published.iter().find(|pid| {
                            self.publications
                                .get(pid)
                                .is_some_and(|x| x.mid == data.mid)
                        })
                    })
                    .copied()
                else {
                    return;
                };
                for (sub_id, subscriber) in &mut self.participants {
                    if *sub_id == id {
                        continue;
                    }
                    let mids: Vec<Mid> = subscriber
                        .subscriptions
                        .iter()
                        .filter(|(_, p)| **p == source)
                        .map(|(m, _)| *m)
                        .collect();
                    for mid in mids {
                        let Some(writer) = subscriber.rtc.writer(mid) else {
                            continue;
                        };
                        let Some(pt) = writer.match_params(data.params) else {
                            continue;
                        };
                        if writer
                            .write(pt, data.network_time, data.time, data.data.clone())
                            .is_ok()
                        {
                            self.stats.frames_forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Event::KeyframeRequest(request) => {
                let Some(publication) = self
                    .participants
                    .get(&id)
                    .and_then(|p| p.subscriptions.get(&request.mid))
                    .copied()
                else {
                    return;
                };
                self.request_keyframe(publication, request.kind);
            }
            _ => {}
        }
    }

    fn request_keyframe(&mut self, publication: PublicationId, kind: KeyframeRequestKind) {
        let Some(publication) = self.publications.get(&publication) else {
            return;
        };
        let Some(publisher) = self.participants.get_mut(&publication.info.participant_id) else {
            return;
        };
        if let Some(mut writer) = publisher.rtc.writer(publication.mid)
            && writer.request_keyframe(None, kind).is_ok()
        {
            self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send(&self, conn: ConnId, message: ServerMessage) {
        if let Some(out) = self.conns.get(&conn) {
            let _ = out.send(message);
        }
    }

    /// Sends to every participant of `room` but `except`.
    fn broadcast(&self, room: &RoomId, except: Option<ParticipantId>, message: &ServerMessage) {
        for (id, participant) in &self.participants {
            if participant.room == *room && Some(*id) != except {
                self.send(participant.conn, message.clone());
            }
        }
    }

    fn participant_of(&self, conn: ConnId) -> Option<ParticipantId> {
        self.participants
            .iter()
            .find(|(_, p)| p.conn == conn)
            .map(|(id, _)| *id)
    }

    fn on_core_in(&mut self, message: CoreIn) {
        match message {
            CoreIn::Open(conn, out) => {
                self.conns.insert(conn, out);
            }
            CoreIn::Closed(conn) => {
                if let Some(id) = self.participant_of(conn) {
                    self.remove_participant(id, LeaveReason::TimedOut);
                }
                self.conns.remove(&conn);
            }
            CoreIn::Message(conn, message) => {
                if let Err((code, text)) = self.on_message(conn, message) {
                    self.send(
                        conn,
                        ServerMessage::Error {
                            code,
                            message: text,
                        },
                    );
                }
            }
        }
    }

    fn on_message(
        &mut self,
        conn: ConnId,
        message: ClientMessage,
    ) -> Result<(), (ErrorCode, String)> {
        let joined = self.participant_of(conn);
        match (message, joined) {
            (
                ClientMessage::Join {
                    protocol_version,
                    room,
                    name,
                },
                None,
            ) => {
                if protocol_version != protocol::PROTOCOL_VERSION {
                    return Err((ErrorCode::VersionMismatch, "wrong version".into()));
                }
                let id = ParticipantId(self.next_participant);
                self.next_participant += 1;
                let mut rtc = Rtc::builder().set_ice_lite(true).build(Instant::now());
                let candidate = Candidate::host(self.local, "udp")
                    .map_err(|e| (ErrorCode::MediaUnavailable, e.to_string()))?;
                rtc.add_local_candidate(candidate);
                let participants = self.room_info(&room);
                self.send(
                    conn,
                    ServerMessage::Joined {
                        protocol_version: protocol::PROTOCOL_VERSION,
                        room: room.clone(),
                        participant_id: id,
                        participants,
                    },
                );
                self.broadcast(
                    &room,
                    None,
                    &ServerMessage::ParticipantJoined {
                        participant: ParticipantInfo {
                            id,
                            name: name.clone(),
                            publications: Vec::new(),
                        },
                    },
                );
                self.participants.insert(
                    id,
                    Participant {
                        conn,
                        name,
                        room,
                        rtc,
                        published: Vec::new(),
                        subscriptions: HashMap::new(),
                        connected: false,
                    },
                );
                Ok(())
            }
            (ClientMessage::Join { .. }, Some(_)) => {
                Err((ErrorCode::AlreadyJoined, "already joined".into()))
            }
            (_, None) => Err((ErrorCode::NotJoined, "join first".into())),
            (
                ClientMessage::Offer {
                    sdp,
                    publish,
                    subscribe,
                },
                Some(id),
            ) => self.on_offer(id, &sdp, &publish, &subscribe),
            (ClientMessage::Candidate { candidate }, Some(id)) => {
                if candidate.is_empty() {
                    self.stats.end_of_candidates.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let candidate = Candidate::from_sdp_string(&candidate)
                    .map_err(|e| (ErrorCode::BadCandidate, e.to_string()))?;
                if !candidate.addr().ip().is_loopback() {
                    self.stats
                        .non_loopback_candidates
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Some(participant) = self.participants.get_mut(&id) {
                    participant.rtc.add_remote_candidate(candidate);
                }
                self.stats.candidates.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            (ClientMessage::SetMuted { .. }, Some(_)) => Ok(()),
            (ClientMessage::Ping {}, Some(id)) => {
                if let Some(p) = self.participants.get(&id) {
                    self.send(p.conn, ServerMessage::Pong);
                }
                Ok(())
            }
            (ClientMessage::Leave {}, Some(id)) => {
                self.remove_participant(id, LeaveReason::Left);
                // Dropping the sender makes the writer close the socket.
                self.conns.remove(&conn);
                Ok(())
            }
        }
    }

    fn room_info(&self, room: &RoomId) -> Vec<ParticipantInfo> {
        self.participants
            .iter()
            .filter(|(_, p)| p.room == *room)
            .map(|(id, p)| ParticipantInfo {
                id: *id,
                name: p.name.clone(),
                publications: p
                    .published
                    .iter()
                    .filter_map(|pid| self.publications.get(pid))
                    .map(|x| x.info.clone())
                    .collect(),
            })
            .collect()
    }

    fn on_offer(
        &mut self,
        id: ParticipantId,
        sdp: &str,
        publish: &[protocol::PublishTrack],
        subscribe: &[protocol::SubscribeTrack],
    ) -> Result<(), (ErrorCode, String)> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| (ErrorCode::BadSdp, e.to_string()))?;
        let Some(participant) = self.participants.get_mut(&id) else {
            return Err((ErrorCode::NotJoined, "no transport".into()));
        };
        let answer = participant
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| (ErrorCode::BadSdp, e.to_string()))?;
        let conn = participant.conn;
        let room = participant.room.clone();

        let mut added = Vec::new();
        for track in publish {
            let mid = Mid::from(track.mid.as_str());
            let already = participant
                .published
                .iter()
                .any(|p| self.publications.get(p).is_some_and(|x| x.mid == mid));
            let Some(media) = participant.rtc.media(mid) else {
                continue;
            };
            if already {
                continue;
            }
            let kind = if media.kind().is_audio() {
                MediaKind::Audio
            } else {
                MediaKind::Video
            };
            let info = PublicationInfo {
                id: PublicationId(self.next_publication),
                participant_id: id,
                kind,
                source: track.source,
                muted: false,
            };
            self.next_publication += 1;
            participant.published.push(info.id);
            self.publications.insert(
                info.id,
                Publication {
                    info: info.clone(),
                    mid,
                },
            );
            added.push(info);
        }

        let before = std::mem::take(&mut participant.subscriptions);
        for track in subscribe {
            let mid = Mid::from(track.mid.as_str());
            let usable = participant.rtc.media(mid).is_some_and(|m| !m.disabled())
                && self
                    .publications
                    .get(&track.publication_id)
                    .is_some_and(|p| p.info.participant_id != id);
            if usable {
                participant.subscriptions.insert(mid, track.publication_id);
            }
        }
        let fresh: Vec<PublicationId> = participant
            .subscriptions
            .iter()
            .filter(|(mid, p)| before.get(mid) != Some(p))
            .map(|(_, p)| *p)
            .collect();

        self.send(
            conn,
            ServerMessage::Answer {
                sdp: answer.to_sdp_string(),
            },
        );
        for info in added {
            self.broadcast(
                &room,
                None,
                &ServerMessage::PublicationAdded { publication: info },
            );
        }
        for publication in fresh {
            let is_video = self
                .publications
                .get(&publication)
                .is_some_and(|p| p.info.kind == MediaKind::Video);
            if is_video {
                self.request_keyframe(publication, KeyframeRequestKind::Pli);
            }
        }
        Ok(())
    }

    fn remove_participant(&mut self, id: ParticipantId, reason: LeaveReason) {
        let Some(participant) = self.participants.remove(&id) else {
            return;
        };
        for publication in &participant.published {
            self.publications.remove(publication);
            self.broadcast(
                &participant.room,
                None,
                &ServerMessage::PublicationRemoved {
                    publication_id: *publication,
                    participant_id: id,
                },
            );
        }
        self.broadcast(
            &participant.room,
            None,
            &ServerMessage::ParticipantLeft {
                participant_id: id,
                reason,
            },
        );
    }
}
