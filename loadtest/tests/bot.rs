//! Bots over real sockets (TLS WebSocket, loopback UDP) against a small fake signaling server
//! built on the reference forwarder. This checks the bot's driver, not the product's server.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use loadtest::bot::{Bot, BotError, BotOptions, insecure_tls_config, tls_config_trusting_pem};
use loadtest::endpoint::EndpointConfig;
use loadtest::reference_sfu::ReferenceSfu;
use protocol::{
    ClientMessage, ErrorCode, LeaveReason, MediaKind, PROTOCOL_VERSION, ParticipantId,
    ParticipantInfo, PublicationInfo, RoomId, ServerMessage,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

struct Member {
    name: String,
    tx: mpsc::UnboundedSender<ServerMessage>,
    publications: Vec<PublicationInfo>,
    media_connected: bool,
}

struct State {
    sfu: ReferenceSfu,
    media_addr: SocketAddr,
    next_participant: u64,
    members: BTreeMap<ParticipantId, Member>,
}

impl State {
    fn broadcast(&self, except: Option<ParticipantId>, message: &ServerMessage) {
        for (id, member) in &self.members {
            if Some(*id) != except {
                let _ = member.tx.send(message.clone());
            }
        }
    }

    fn remove(&mut self, id: ParticipantId, reason: LeaveReason) {
        if self.members.remove(&id).is_none() {
            return;
        }
        for publication_id in self.sfu.remove_participant(id) {
            self.broadcast(
                None,
                &ServerMessage::PublicationRemoved {
                    publication_id,
                    participant_id: id,
                },
            );
        }
        self.broadcast(
            None,
            &ServerMessage::ParticipantLeft {
                participant_id: id,
                reason,
            },
        );
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .expect("no test task panicked holding the lock")
}

/// A one-room signaling server speaking the product protocol, with the reference forwarder
/// behind it.
struct FakeServer {
    url: String,
    cert_pem: String,
    state: Arc<Mutex<State>>,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])
            .expect("a self-signed certificate");
        let cert_pem = certified.cert.pem();
        let key =
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key.into())
            .expect("server TLS config");
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
        let url = format!("wss://{}/ws", listener.local_addr().expect("tcp addr"));
        let media = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let state = Arc::new(Mutex::new(State {
            sfu: ReferenceSfu::new(),
            media_addr: media.local_addr().expect("udp addr"),
            next_participant: 1,
            members: BTreeMap::new(),
        }));
        let wake = Arc::new(Notify::new());
        tokio::spawn(run_media(media, state.clone(), wake.clone()));
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = accept_state.clone();
                let wake = wake.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(ws) = tokio_tungstenite::accept_async(tls).await else {
                        return;
                    };
                    serve(ws, state, wake).await;
                });
            }
        });
        FakeServer {
            url,
            cert_pem,
            state,
        }
    }

    fn options(&self, name: &str, tone_hz: f32, video_tag: u64) -> BotOptions {
        let tls = tls_config_trusting_pem(self.cert_pem.as_bytes()).expect("pinned config");
        let mut options = BotOptions::new(&self.url, "room", name, tls);
        options.endpoint = EndpointConfig {
            tone_hz,
            video_tag,
            ..options.endpoint
        };
        options
    }

    fn members(&self) -> usize {
        lock(&self.state).members.len()
    }
}

async fn run_media(socket: UdpSocket, state: Arc<Mutex<State>>, wake: Arc<Notify>) {
    let mut buf = vec![0u8; 2_048];
    let local = socket.local_addr().expect("udp addr");
    loop {
        let deadline = lock(&state)
            .sfu
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(50));
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                if let Ok((len, source)) = received {
                    lock(&state).sfu.handle_datagram(Instant::now(), source, local, &buf[..len]);
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                lock(&state).sfu.handle_timeout(Instant::now());
            }
            () = wake.notified() => {}
        }
        let mut out = Vec::new();
        {
            let mut state = lock(&state);
            while let Some(datagram) = state.sfu.poll_transmit() {
                out.push(datagram);
            }
            let connected: Vec<ParticipantId> = state
                .members
                .iter()
                .filter(|(id, m)| !m.media_connected && state.sfu.is_connected(**id))
                .map(|(id, _)| *id)
                .collect();
            for id in connected {
                if let Some(member) = state.members.get_mut(&id) {
                    member.media_connected = true;
                    let _ = member.tx.send(ServerMessage::MediaConnected);
                }
            }
        }
        for datagram in out {
            let _ = socket
                .send_to(&datagram.contents, datagram.destination)
                .await;
        }
    }
}

async fn serve<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut me: Option<ParticipantId> = None;
    loop {
        tokio::select! {
            outgoing = rx.recv() => {
                let Some(message) = outgoing else { break };
                let text = serde_json::to_string(&message).expect("serializable");
                if ws.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            incoming = ws.next() => {
                let Some(Ok(Message::Text(text))) = incoming else {
                    if let Some(id) = me {
                        lock(&state).remove(id, LeaveReason::TimedOut);
                    }
                    return;
                };
                let Ok(message) = serde_json::from_str::<ClientMessage>(text.as_str()) else {
                    let _ = tx.send(ServerMessage::Error { code: ErrorCode::BadMessage, message: "?".into() });
                    continue;
                };
                let now = Instant::now();
                let leaving = {
                let mut state = lock(&state);
                match (message, me) {
                    (ClientMessage::Join { name, .. }, None) => {
                        if name.is_empty() {
                            let _ = tx.send(ServerMessage::Error {
                                code: ErrorCode::InvalidName,
                                message: "empty name".into(),
                            });
                            continue;
                        }
                        let id = ParticipantId(state.next_participant);
                        state.next_participant += 1;
                        let media_addr = state.media_addr;
                        state.sfu.add_participant(now, id, media_addr).expect("transport");
                        let participants = state
                            .members
                            .iter()
                            .map(|(pid, m)| ParticipantInfo {
                                id: *pid,
                                name: m.name.clone(),
                                publications: m.publications.clone(),
                            })
                            .collect();
                        let _ = tx.send(ServerMessage::Joined {
                            protocol_version: PROTOCOL_VERSION,
                            room: RoomId("room".into()),
                            participant_id: id,
                            participants,
                        });
                        state.broadcast(None, &ServerMessage::ParticipantJoined {
                            participant: ParticipantInfo { id, name: name.clone(), publications: Vec::new() },
                        });
                        state.members.insert(id, Member {
                            name,
                            tx: tx.clone(),
                            publications: Vec::new(),
                            media_connected: false,
                        });
                        me = Some(id);
                        false
                    }
                    (ClientMessage::Offer { sdp, publish, subscribe }, Some(id)) => {
                        match state.sfu.handle_offer(now, id, &sdp, &publish, &subscribe) {
                            Ok((answer, added)) => {
                                let _ = tx.send(ServerMessage::Answer { sdp: answer });
                                for publication in added {
                                    if let Some(member) = state.members.get_mut(&id) {
                                        member.publications.push(publication.clone());
                                    }
                                    state.broadcast(None, &ServerMessage::PublicationAdded { publication });
                                }
                            }
                            Err(err) => {
                                let _ = tx.send(ServerMessage::Error {
                                    code: ErrorCode::BadSdp,
                                    message: err.to_string(),
                                });
                            }
                        }
                        wake.notify_one();
                        false
                    }
                    (ClientMessage::Candidate { candidate }, Some(id)) => {
                        if state.sfu.handle_candidate(id, &candidate).is_err() {
                            let _ = tx.send(ServerMessage::Error {
                                code: ErrorCode::BadCandidate,
                                message: candidate,
                            });
                        }
                        wake.notify_one();
                        false
                    }
                    (ClientMessage::SetMuted { publication_id, muted }, Some(id)) => {
                        state.broadcast(None, &ServerMessage::MuteChanged {
                            publication_id,
                            participant_id: id,
                            muted,
                        });
                        false
                    }
                    (ClientMessage::Ping {}, _) => {
                        let _ = tx.send(ServerMessage::Pong);
                        false
                    }
                    (ClientMessage::Leave {}, Some(id)) => {
                        state.remove(id, LeaveReason::Left);
                        true
                    }
                    (_, _) => {
                        let _ = tx.send(ServerMessage::Error {
                            code: ErrorCode::NotJoined,
                            message: "join first".into(),
                        });
                        false
                    }
                }
                };
                if leaving {
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
    }
}

fn publication(bot: &Bot, owner: &Bot, kind: MediaKind) -> Option<PublicationInfo> {
    let snapshot = bot.snapshot();
    snapshot
        .roster
        .participants
        .get(&owner.participant_id())?
        .publications
        .iter()
        .find(|p| p.kind == kind)
        .cloned()
}

/// Waits until `bot` decoded audio and saw a keyframe from every other participant's
/// publications it knows of.
async fn wait_for_media(bot: &Bot, others: usize) {
    bot.wait_until(WAIT, |s| {
        let publications: Vec<_> = s.roster.publications().collect();
        publications.len() == others * 2
            && publications.iter().all(|p| {
                s.received.get(&p.id).is_some_and(|r| match p.kind {
                    MediaKind::Audio => r.audio_frames_decoded >= 25,
                    MediaKind::Video => r.keyframes >= 1 && r.video_frames >= 5,
                })
            })
    })
    .await
    .expect("media from every other participant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_exchange_media_over_real_sockets() {
    let server = FakeServer::start().await;
    let a = Bot::connect(server.options("a", 440.0, 0xA))
        .await
        .expect("a joins");
    let b = Bot::connect(server.options("b", 880.0, 0xB))
        .await
        .expect("b joins");
    assert_ne!(a.participant_id(), b.participant_id());
    assert!(a.local_addr().ip().is_loopback());

    wait_for_media(&a, 1).await;
    wait_for_media(&b, 1).await;

    for (me, other, hz, tag) in [(&a, &b, 880.0, 0xB), (&b, &a, 440.0, 0xA)] {
        let audio = publication(me, other, MediaKind::Audio).expect("audio publication");
        let heard = me.dominant_frequency(audio.id).expect("a tone");
        assert!((heard - hz).abs() <= 10.0, "heard {heard} Hz, want {hz}");
        let video = publication(me, other, MediaKind::Video).expect("video publication");
        let snapshot = me.snapshot();
        assert_eq!(snapshot.received[&video.id].video_tag, Some(tag));
        assert!(snapshot.media_connected_at.is_some());
        assert!(snapshot.ice_connected_at.is_some());
        assert!(snapshot.connected);
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        assert!(snapshot.failures.is_empty(), "{:?}", snapshot.failures);
        assert_eq!(snapshot.roster.own_publications.len(), 2);
    }
    // Media keeps real-time pace: 50 Opus packets and 15 video frames a second.
    let before = a.snapshot();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = a.snapshot();
    let elapsed = window.elapsed().as_secs_f64();
    let audio_rate = (after.sent.audio_packets - before.sent.audio_packets) as f64 / elapsed;
    let video_rate = (after.sent.video_frames - before.sent.video_frames) as f64 / elapsed;
    assert!(
        (45.0..=55.0).contains(&audio_rate),
        "{audio_rate} packets/s"
    );
    assert!((12.0..=18.0).contains(&video_rate), "{video_rate} frames/s");
    let audio = publication(&a, &b, MediaKind::Audio).expect("audio publication");
    let received = after.received[&audio.id].frames - before.received[&audio.id].frames;
    assert!((40..=60).contains(&received), "{received} frames received");

    assert_eq!(a.snapshot().roster.joined, vec![b.participant_id()]);
    assert!(b.snapshot().roster.joined.is_empty(), "a was already there");

    let a_final = a.leave().await;
    assert!(!a_final.running);
    assert_eq!(a_final.closed.as_deref(), Some("left"));
    let snapshot = b
        .wait_until(WAIT, |s| !s.roster.left.is_empty())
        .await
        .expect("b is told");
    assert_eq!(snapshot.roster.left[0].1, LeaveReason::Left);
    assert!(snapshot.roster.participants.is_empty());
    assert!(snapshot.received.values().all(|r| !r.subscribed));
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_bot_vanishes_without_a_goodbye() {
    let server = FakeServer::start().await;
    let a = Bot::connect(server.options("a", 440.0, 1))
        .await
        .expect("a joins");
    let b = Bot::connect(server.options("b", 660.0, 2))
        .await
        .expect("b joins");
    wait_for_media(&a, 1).await;
    let b_id = b.participant_id();
    let last = b.abort().await;
    assert!(!last.running);
    let snapshot = a
        .wait_until(WAIT, |s| !s.roster.left.is_empty())
        .await
        .expect("a is told");
    assert_eq!(snapshot.roster.left, vec![(b_id, LeaveReason::TimedOut)]);
    assert_eq!(server.members(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_changes_reach_the_others_and_stop_the_media() {
    let server = FakeServer::start().await;
    let a = Bot::connect(server.options("a", 440.0, 1))
        .await
        .expect("a joins");
    let b = Bot::connect(server.options("b", 660.0, 2))
        .await
        .expect("b joins");
    wait_for_media(&b, 1).await;
    let audio = publication(&b, &a, MediaKind::Audio).expect("audio publication");

    a.set_muted(MediaKind::Audio, true).expect("running");
    let snapshot = b
        .wait_until(WAIT, |s| !s.roster.mute_changes.is_empty())
        .await
        .expect("b is told");
    assert_eq!(snapshot.roster.mute_changes[0].publication_id, audio.id);
    assert!(snapshot.roster.mute_changes[0].muted);
    assert_eq!(
        snapshot.roster.publication(audio.id).map(|p| p.muted),
        Some(true)
    );

    // Whatever was in flight drains within a few hundred milliseconds, then nothing arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frames = b.snapshot().received[&audio.id].frames;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.snapshot().received[&audio.id].frames, frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_certificates_can_be_refused() {
    let server = FakeServer::start().await;
    match Bot::connect(server.options("", 440.0, 1)).await {
        Err(BotError::Refused { code, .. }) => assert_eq!(code, ErrorCode::InvalidName),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let mut options = server.options("a", 440.0, 1);
    options.tls = tls_config_trusting_pem(other.cert.pem().as_bytes()).expect("config");
    match Bot::connect(options).await {
        Err(BotError::WebSocket(_)) => {}
        other => panic!("another certificate must be refused, got {other:?}"),
    }
    assert!(tls_config_trusting_pem(b"no pem here").is_err());

    let mut options = server.options("a", 440.0, 1);
    options.tls = insecure_tls_config();
    options.ping_interval = Some(Duration::from_millis(50));
    let bot = Bot::connect(options)
        .await
        .expect("any certificate is accepted");
    bot.wait_until(WAIT, |s| s.pongs >= 2).await.expect("pongs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_bot_gets_everyone() {
    let server = FakeServer::start().await;
    let mut bots = Vec::new();
    for (i, hz) in [440.0, 550.0, 660.0].into_iter().enumerate() {
        bots.push(
            Bot::connect(server.options(&format!("bot{i}"), hz, i as u64))
                .await
                .expect("joins"),
        );
    }
    for bot in &bots {
        wait_for_media(bot, 2).await;
        let tones: HashSet<u32> = bot
            .dominant_frequencies()
            .values()
            .map(|hz| (hz / 10.0).round() as u32)
            .collect();
        assert_eq!(tones.len(), 2, "two distinct tones heard");
    }
}
