//! A simulated participant over real sockets: the signaling WebSocket (TLS), one UDP socket on
//! loopback and an [`Endpoint`] driven by one tokio task.
//!
//! [`Bot::connect`] joins a room and returns once the server accepted the join. From then on the
//! task answers every server message: it subscribes to every publication of every other
//! participant (unless told not to), keeps the roster of who is in the room, and records the
//! errors the server sent. A [`Bot`] handle reads a snapshot of all that, sends a goodbye with
//! [`Bot::leave`], or vanishes without one with [`Bot::abort`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::pending;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol::{
    ClientMessage, ErrorCode, LeaveReason, LobbyEntry, MediaKind, PROTOCOL_VERSION, ParticipantId,
    ParticipantInfo, PublicationId, PublicationInfo, Role, RoomCounts, RoomId, RoomStatus,
    ServerMessage,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use endpoint::keys::{
    DeviceKey, KeyError, KeyEvent, KeyExchange, KeyPolicy, KeyStats, RekeyRecord,
};
use endpoint::wire::{WireStats, WireSummary};
use endpoint::{Endpoint, EndpointConfig, EndpointError, ReceivedStats, SentStats};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Server messages kept in a bot's event log; older ones are dropped.
const MAX_EVENTS: usize = 10_000;

/// Local failures kept; older ones are dropped.
const MAX_FAILURES: usize = 100;

/// Datagrams read in one go after the socket woke the task, before timers get a look in.
const RECV_BATCH: usize = 64;

/// Largest datagram the bot reads; str0m keeps its datagrams well under this.
const RECV_BUFFER: usize = 2_048;

/// What the signaling WebSocket reads at a time. tungstenite zero-fills this much of its read
/// buffer on every read attempt, and the bot's loop polls the socket once per datagram batch:
/// at the default 128 KiB that memset was a third of a viewer's CPU. Signaling messages are a
/// few hundred bytes (an answer a few KiB); a larger frame still grows the buffer.
const WS_READ_BUFFER: usize = 4 * 1024;

/// How long [`Bot::leave`] waits for the server to close the socket after the goodbye.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause before an offer the server refused is offered again.
const OFFER_RETRY: Duration = Duration::from_secs(1);

/// How often [`Bot::wait_until`] looks at the state.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// How many rekeys' wrap times a bot keeps.
const MAX_WRAP_TIMES: usize = 4_096;

/// How many epochs' arrival times a bot keeps per sender.
const MAX_EPOCH_ARRIVALS: usize = 4_096;

#[derive(Debug, Error)]
pub enum BotError {
    #[error("websocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    #[error("udp: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate PEM: {0}")]
    Pem(String),
    #[error("endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    #[error("end-to-end keys: {0}")]
    Keys(#[from] KeyError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the server refused the join: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("the condition did not hold in time; last state: {0:#?}")]
    WaitTimeout(Box<BotSnapshot>),
    #[error("the signaling connection closed")]
    Closed,
    #[error("unexpected message before joining: {0}")]
    Protocol(String),
    /// Sent to another node (its URL), with the node that should carry the media.
    #[error("sent to another node: {0}")]
    Redirect(String, Option<String>),
}

impl From<tungstenite::Error> for BotError {
    fn from(err: tungstenite::Error) -> Self {
        BotError::WebSocket(Box::new(err))
    }
}

/// How to connect one bot.
#[derive(Debug, Clone)]
pub struct BotOptions {
    /// `wss://HOST:PORT/ws`.
    pub url: String,
    pub room: String,
    pub name: String,
    /// A join link's token; when set, `room` and `name` are ignored (they come from it).
    pub token: Option<String>,
    /// Open rooms only: join as `viewer` (or `participant`, the default).
    pub role: Option<Role>,
    pub tls: Arc<rustls::ClientConfig>,
    /// What the bot sends. `local_addr` is where its UDP socket binds (port 0 picks one) and
    /// is replaced by the bound address.
    pub endpoint: EndpointConfig,
    /// Subscribe to every publication of every other participant.
    pub auto_subscribe: bool,
    /// The device public key announced at join for the end-to-end key relay (opaque to the
    /// server). Not the media key: that one is `endpoint.e2ee`.
    pub e2ee_key: Option<String>,
    /// Speak the end-to-end key exchange (`docs/e2ee.md`) with this policy, as a browser
    /// does: a fresh device key announced at join (instead of `e2ee_key`), requests to every
    /// sender seen, answers and rekeys for those who ask, keys installed in the endpoint as
    /// they come. Set `endpoint.e2ee` to [`endpoint::E2eeConfig::exchanged`] with it.
    pub key_exchange: Option<KeyPolicy>,
    /// Limit for the WebSocket connect and for the join answer, each.
    pub join_timeout: Duration,
    /// Send an application `ping` this often.
    pub ping_interval: Option<Duration>,
}

impl BotOptions {
    /// Options for a bot that publishes audio and video from `127.0.0.1:0`.
    pub fn new(
        url: impl Into<String>,
        room: impl Into<String>,
        name: impl Into<String>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            url: url.into(),
            room: room.into(),
            name: name.into(),
            token: None,
            role: None,
            tls,
            endpoint: EndpointConfig::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
            auto_subscribe: true,
            e2ee_key: None,
            key_exchange: None,
            join_timeout: Duration::from_secs(10),
            ping_interval: None,
        }
    }
}

/// A mute change the server announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuteChange {
    pub publication_id: PublicationId,
    pub participant_id: ParticipantId,
    pub muted: bool,
}

/// Who is in the room, as this bot was told.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roster {
    /// Everyone else in the room now, with their current publications and mute states.
    pub participants: BTreeMap<ParticipantId, ParticipantInfo>,
    /// This bot's own publications, if the server announces them to their owner.
    pub own_publications: Vec<PublicationInfo>,
    /// Participants who joined after this bot, in order.
    pub joined: Vec<ParticipantId>,
    /// Participants who left, with the reason given, in order.
    pub left: Vec<(ParticipantId, LeaveReason)>,
    /// Publications announced after the join, in order (own ones included).
    pub publications_added: Vec<PublicationId>,
    pub publications_removed: Vec<PublicationId>,
    pub mute_changes: Vec<MuteChange>,
    /// Messages about other participants' presence or state received after the join
    /// (joined, left, updated), to measure how signaling grows with room size.
    pub presence_messages: u64,
    /// The last aggregate counts, and how many such messages arrived.
    pub counts: Option<RoomCounts>,
    pub counts_messages: u64,
    /// Hosts: who waits in the lobby now.
    pub lobby: Vec<LobbyEntry>,
    pub room_state: RoomStatus,
    /// This bot's role, as the server last said.
    pub role: Option<Role>,
    /// Whether the server says the meeting is being recorded.
    pub recording: bool,
    /// Active speakers announced, in order (`None`: silence).
    pub active_speakers: Vec<Option<ParticipantId>>,
    /// The last `simulcast_layers` for each of this bot's publications.
    pub simulcast_layers: BTreeMap<PublicationId, Vec<bool>>,
    /// Wrapped media keys relayed to this bot, with their senders, in order.
    pub e2ee_keys: Vec<(ParticipantId, String)>,
}

fn nameless(id: ParticipantId) -> ParticipantInfo {
    ParticipantInfo {
        id,
        name: String::new(),
        role: Role::Participant,
        site: None,
        hand_raised: false,
        quality: None,
        publications: Vec::new(),
        e2ee_key: None,
    }
}

impl Roster {
    /// A publication of another participant present now.
    pub fn publication(&self, id: PublicationId) -> Option<&PublicationInfo> {
        self.publications().find(|p| p.id == id)
    }

    /// Every publication of the other participants present now.
    pub fn publications(&self) -> impl Iterator<Item = &PublicationInfo> {
        self.participants
            .values()
            .flat_map(|p| p.publications.iter())
    }

    fn add_publication(&mut self, publication: PublicationInfo) {
        // A publication announced before its owner (which a server should not do) still
        // lands in the roster, under a nameless entry that the join fills in.
        let participant = self
            .participants
            .entry(publication.participant_id)
            .or_insert_with(|| nameless(publication.participant_id));
        if !participant
            .publications
            .iter()
            .any(|p| p.id == publication.id)
        {
            participant.publications.push(publication);
        }
    }

    fn add_participant(&mut self, participant: ParticipantInfo) {
        let id = participant.id;
        let name = participant.name.clone();
        for publication in participant.publications {
            self.add_publication(publication);
        }
        let entry = self.participants.entry(id).or_insert_with(|| nameless(id));
        entry.name = name;
        entry.role = participant.role;
        entry.site = participant.site;
        entry.hand_raised = participant.hand_raised;
        entry.quality = participant.quality;
        entry.e2ee_key = participant.e2ee_key;
    }
}

/// A bot's state at one moment.
#[derive(Debug, Clone)]
pub struct BotSnapshot {
    pub participant_id: ParticipantId,
    pub room: RoomId,
    pub local_addr: SocketAddr,
    /// When [`Bot::connect`] started.
    pub started_at: Instant,
    /// When the server's `joined` arrived.
    pub joined_at: Instant,
    /// When ICE and DTLS completed on the bot's side.
    pub ice_connected_at: Option<Instant>,
    /// When the server said `media_connected`.
    pub media_connected_at: Option<Instant>,
    /// Whether ICE and DTLS are up now.
    pub connected: bool,
    pub roster: Roster,
    /// The `error` messages the server sent.
    pub errors: Vec<(ErrorCode, String)>,
    pub received: HashMap<PublicationId, ReceivedStats>,
    pub sent: SentStats,
    pub pongs: u64,
    /// Server messages other than answers and pongs, in order (the latest ones).
    pub events: Vec<ServerMessage>,
    /// Whether the bot's task still runs.
    pub running: bool,
    /// Why the signaling connection ended, once it did.
    pub closed: Option<String>,
    /// Local problems: an answer that did not apply, an unreadable server message.
    pub failures: Vec<String>,
}

/// A bot's measurements at one moment (see [`Bot::stats`]).
#[derive(Debug, Clone)]
pub struct BotStats {
    pub participant_id: ParticipantId,
    pub started_at: Instant,
    pub joined_at: Instant,
    pub ice_connected_at: Option<Instant>,
    pub media_connected_at: Option<Instant>,
    pub connected: bool,
    pub running: bool,
    pub closed: Option<String>,
    /// How many `error` messages the server sent.
    pub errors: usize,
    /// How many local failures were recorded.
    pub failures: usize,
    pub received: HashMap<PublicationId, ReceivedStats>,
    pub sent: SentStats,
    pub wire: WireSummary,
    /// The key exchange's counters, when the bot speaks it, and when its first key came.
    pub keys: Option<KeyStats>,
    pub first_key_at: Option<Instant>,
    pub key_traffic: KeyTraffic,
}

/// Key messages on a bot's signaling socket: `e2ee_keys` sent and `e2ee_key` received, with
/// their bytes (the JSON text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyTraffic {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
}

/// What a bot's key exchange did over the run, for the load test's key measurements.
#[derive(Debug, Clone)]
pub struct KeyTimeline {
    pub participant_id: ParticipantId,
    /// When the bot joined the room (the server's `joined`).
    pub joined_at: Instant,
    /// It publishes media, under a key of its own (its departure rekeys follow).
    pub sends: bool,
    /// As a sender: its departure rekeys, and the time each took to make and wrap.
    pub rekeys: Vec<RekeyRecord>,
    pub rekey_wrap_times: Vec<Duration>,
    /// As a receiver: for each sender, the epochs whose frames it opened, first time each,
    /// and the epochs whose keys it received, with when each first came.
    pub epochs_opened: HashMap<ParticipantId, Vec<(u64, Instant)>>,
    pub epochs_received: HashMap<ParticipantId, Vec<(u64, Instant)>>,
}

/// State shared by the task and the handle. The lock is never held across an await.
#[derive(Debug)]
struct Shared {
    endpoint: Endpoint,
    participant_id: ParticipantId,
    room: RoomId,
    local_addr: SocketAddr,
    started_at: Instant,
    joined_at: Instant,
    media_connected_at: Option<Instant>,
    roster: Roster,
    errors: Vec<(ErrorCode, String)>,
    pongs: u64,
    events: VecDeque<ServerMessage>,
    running: bool,
    closed: Option<String>,
    failures: VecDeque<String>,
    auto_subscribe: bool,
    /// No offer goes out before this (a refused offer backs off).
    next_offer_at: Instant,
    /// Loss, jitter, RTT and freezes read from the datagrams' clear headers.
    wire: WireStats,
    /// The end-to-end key exchange, when the bot speaks it, and what it cost.
    keys: Option<KeyExchange>,
    key_traffic: KeyTraffic,
    rekey_wrap_times: VecDeque<Duration>,
    /// When each sender's epochs' keys first came.
    epochs_received: HashMap<ParticipantId, VecDeque<(u64, Instant)>>,
}

impl Shared {
    fn snapshot(&self) -> BotSnapshot {
        BotSnapshot {
            participant_id: self.participant_id,
            room: self.room.clone(),
            local_addr: self.local_addr,
            started_at: self.started_at,
            joined_at: self.joined_at,
            ice_connected_at: self.endpoint.connected_at(),
            media_connected_at: self.media_connected_at,
            connected: self.endpoint.is_connected(),
            roster: self.roster.clone(),
            errors: self.errors.clone(),
            received: self.endpoint.stats().clone(),
            sent: self.endpoint.sent().clone(),
            pongs: self.pongs,
            events: self.events.iter().cloned().collect(),
            running: self.running,
            closed: self.closed.clone(),
            failures: self.failures.iter().cloned().collect(),
        }
    }

    fn fail(&mut self, failure: String) {
        if self.failures.len() >= MAX_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(failure);
    }

    fn log(&mut self, message: &ServerMessage) {
        if matches!(message, ServerMessage::Answer { .. } | ServerMessage::Pong) {
            return;
        }
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(message.clone());
    }

    fn subscribe(&mut self, publication: &PublicationInfo) {
        if self.auto_subscribe && publication.participant_id != self.participant_id {
            self.endpoint.subscribe(publication.clone());
        }
    }

    fn handle_server_message(&mut self, now: Instant, message: ServerMessage) {
        self.log(&message);
        match message {
            ServerMessage::Joined { .. } => self.fail("a second joined message".into()),
            ServerMessage::Answer { sdp } => {
                self.wire.learn_payload_types(&sdp);
                if let Err(err) = self.endpoint.handle_answer(now, &sdp) {
                    self.fail(format!("answer: {err}"));
                }
            }
            ServerMessage::ParticipantJoined { participant } => {
                self.roster.presence_messages += 1;
                if participant.id == self.participant_id {
                    return;
                }
                self.roster.joined.push(participant.id);
                for publication in &participant.publications {
                    self.subscribe(publication);
                }
                let id = participant.id;
                self.roster.add_participant(participant);
                self.want_key(now, id);
            }
            ServerMessage::ParticipantLeft {
                participant_id,
                reason,
            } => {
                self.roster.presence_messages += 1;
                self.roster.left.push((participant_id, reason));
                if let Some(participant) = self.roster.participants.remove(&participant_id) {
                    for publication in participant.publications {
                        self.endpoint.unsubscribe(publication.id);
                    }
                }
                if let Some(keys) = &mut self.keys
                    && let Err(err) = keys.participant_left(now, participant_id)
                {
                    self.fail(format!("keys: {err}"));
                }
            }
            ServerMessage::PublicationAdded { publication } => {
                self.roster.publications_added.push(publication.id);
                if publication.participant_id == self.participant_id {
                    if !self
                        .roster
                        .own_publications
                        .iter()
                        .any(|p| p.id == publication.id)
                    {
                        self.roster.own_publications.push(publication);
                    }
                    return;
                }
                self.subscribe(&publication);
                let owner = publication.participant_id;
                self.roster.add_publication(publication);
                self.want_key(now, owner);
            }
            ServerMessage::PublicationRemoved {
                publication_id,
                participant_id,
            } => {
                self.roster.publications_removed.push(publication_id);
                self.roster
                    .own_publications
                    .retain(|p| p.id != publication_id);
                if let Some(participant) = self.roster.participants.get_mut(&participant_id) {
                    participant.publications.retain(|p| p.id != publication_id);
                }
                self.endpoint.unsubscribe(publication_id);
            }
            ServerMessage::MuteChanged {
                publication_id,
                participant_id,
                muted,
            } => {
                self.roster.mute_changes.push(MuteChange {
                    publication_id,
                    participant_id,
                    muted,
                });
                let publications = self
                    .roster
                    .participants
                    .get_mut(&participant_id)
                    .map(|p| &mut p.publications)
                    .into_iter()
                    .flatten()
                    .chain(self.roster.own_publications.iter_mut());
                for publication in publications {
                    if publication.id == publication_id {
                        publication.muted = muted;
                    }
                }
            }
            ServerMessage::MediaConnected => {
                self.media_connected_at.get_or_insert(now);
            }
            ServerMessage::ParticipantUpdated { participant } => {
                self.roster.presence_messages += 1;
                if participant.id != self.participant_id {
                    let id = participant.id;
                    self.roster.add_participant(participant);
                    self.want_key(now, id);
                }
            }
            ServerMessage::RoleChanged { role } => self.roster.role = Some(role),
            ServerMessage::RoomState { open, locked } => {
                self.roster.room_state = RoomStatus { open, locked };
            }
            ServerMessage::RoomCounts(counts) => {
                self.roster.counts = Some(counts);
                self.roster.counts_messages += 1;
            }
            ServerMessage::LobbyChanged { waiting } => self.roster.lobby = waiting,
            ServerMessage::RecordingState { active, .. } => self.roster.recording = active,
            ServerMessage::E2eeKey { from, blob } => match &mut self.keys {
                Some(keys) => {
                    let shown = self
                        .roster
                        .participants
                        .get(&from)
                        .and_then(|p| p.e2ee_key.as_deref());
                    // A blob that does not open is counted by the exchange, as the browser
                    // ignores it; nothing else changes.
                    let _ = keys.handle_blob(now, from, shown, &blob);
                }
                None => self.roster.e2ee_keys.push((from, blob)),
            },
            ServerMessage::ActiveSpeaker { participant_id } => {
                self.roster.active_speakers.push(participant_id);
            }
            ServerMessage::SimulcastLayers {
                publication_id,
                active,
            } => {
                let own_video = self
                    .roster
                    .own_publications
                    .iter()
                    .any(|p| p.id == publication_id && p.kind == MediaKind::Video);
                if own_video {
                    self.endpoint.set_active_layers(&active);
                }
                self.roster.simulcast_layers.insert(publication_id, active);
            }
            ServerMessage::Lobby { .. } => self.fail("a lobby message after admission".into()),
            ServerMessage::Redirect { .. } => self.fail("a redirect after admission".into()),
            // A bot is told where to go by its operator, not by the cluster.
            ServerMessage::Nodes { .. } => {}
            ServerMessage::Pong => self.pongs += 1,
            ServerMessage::Error { code, message } => {
                self.errors.push((code, message));
                // An offer the server could not take is answered by an error instead of an
                // answer; without rolling back, no further offer could ever go out.
                let offer_refused = matches!(
                    code,
                    ErrorCode::BadSdp | ErrorCode::MediaUnavailable | ErrorCode::NotJoined
                );
                if offer_refused && self.endpoint.offer_in_flight() {
                    self.endpoint.offer_refused();
                    self.next_offer_at = now + OFFER_RETRY;
                }
            }
        }
    }

    fn handle_text(&mut self, now: Instant, text: &str) {
        match serde_json::from_str::<ServerMessage>(text) {
            Ok(message) => {
                if matches!(message, ServerMessage::E2eeKey { .. }) {
                    self.key_traffic.messages_received += 1;
                    self.key_traffic.bytes_received += text.len() as u64;
                }
                self.handle_server_message(now, message);
                self.apply_keys();
            }
            Err(err) => self.fail(format!("unreadable server message: {err}")),
        }
    }

    /// Asks `participant` for its key once it publishes, if the bot speaks the key exchange
    /// and the roster shows a key for it: as the browser, it does not ask those who send
    /// nothing (viewers).
    fn want_key(&mut self, now: Instant, participant: ParticipantId) {
        if let Some(keys) = &mut self.keys {
            let public = self
                .roster
                .participants
                .get(&participant)
                .filter(|p| !p.publications.is_empty())
                .and_then(|p| p.e2ee_key.as_deref());
            keys.want(now, participant, public);
        }
    }

    /// Runs the key exchange's timers, timing the ones that made a rekey.
    fn key_timeout(&mut self, now: Instant) {
        let Some(keys) = &mut self.keys else {
            return;
        };
        let rekeys = keys.stats().rekeys;
        let started = Instant::now();
        let result = keys.handle_timeout(now);
        if keys.stats().rekeys > rekeys {
            if self.rekey_wrap_times.len() >= MAX_WRAP_TIMES {
                self.rekey_wrap_times.pop_front();
            }
            self.rekey_wrap_times.push_back(started.elapsed());
        }
        if let Err(err) = result {
            self.fail(format!("keys: {err}"));
        }
        self.apply_keys();
    }

    /// Installs in the endpoint what the key exchange decided.
    fn apply_keys(&mut self) {
        let Some(keys) = &mut self.keys else {
            return;
        };
        let mut failure = None;
        while let Some(event) = keys.poll_event() {
            match event {
                KeyEvent::SendWith { kid, base } => {
                    if let Err(err) = self.endpoint.set_send_key(kid, &base) {
                        failure = Some(format!("send key: {err}"));
                    }
                }
                KeyEvent::Received { sender, kid, base } => {
                    self.endpoint.add_receive_key(sender, kid, &base);
                    let (epoch, _) = endpoint::sframe::split_kid(kid);
                    let arrivals = self.epochs_received.entry(sender).or_default();
                    if !arrivals.iter().any(|(e, _)| *e == epoch) {
                        if arrivals.len() >= MAX_EPOCH_ARRIVALS {
                            arrivals.pop_front();
                        }
                        arrivals.push_back((epoch, Instant::now()));
                    }
                }
                KeyEvent::Forget { sender } => self.endpoint.forget_sender(sender),
            }
        }
        if let Some(failure) = failure {
            self.fail(failure);
        }
    }

    fn key_timeline(&self) -> KeyTimeline {
        KeyTimeline {
            participant_id: self.participant_id,
            joined_at: self.joined_at,
            sends: {
                let config = self.endpoint.config();
                config.publish_audio || config.publish_video
            },
            rekeys: self
                .keys
                .as_ref()
                .map(|k| k.rekeys().cloned().collect())
                .unwrap_or_default(),
            rekey_wrap_times: self.rekey_wrap_times.iter().copied().collect(),
            epochs_opened: self.endpoint.epochs_opened(),
            epochs_received: self
                .epochs_received
                .iter()
                .map(|(sender, arrivals)| (*sender, arrivals.iter().copied().collect()))
                .collect(),
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves counters, not invariants, half-updated: reading
    // them is still better than propagating the panic into every caller.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug)]
enum Command {
    Send(ClientMessage),
    SetMuted { kind: MediaKind, muted: bool },
    Leave,
}

/// A connected bot. Dropping it stops the bot as abruptly as [`Bot::abort`].
#[derive(Debug)]
pub struct Bot {
    participant_id: ParticipantId,
    room: RoomId,
    local_addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    commands: mpsc::UnboundedSender<Command>,
    task: Option<JoinHandle<()>>,
}

impl Bot {
    /// Opens the WebSocket, joins, binds the UDP socket and starts the bot's task. Fails with
    /// [`BotError::Refused`] when the server answers the join with an error.
    pub async fn connect(options: BotOptions) -> Result<Bot, BotError> {
        let started_at = Instant::now();
        let mut keys = match options.key_exchange {
            Some(policy) => Some(KeyExchange::new(DeviceKey::generate()?, policy)),
            None => None,
        };
        let e2ee_key = match &keys {
            Some(keys) => Some(keys.public_key().to_string()),
            None => options.e2ee_key.clone(),
        };
        // A node of a cluster that does not hold the room sends the bot to the one that does.
        let mut url = options.url.clone();
        let mut media = None;
        let mut redirects = 0;
        let (ws, joined, early) = loop {
            let mut ws = open_and_join(&options, &url, e2ee_key.clone(), media.clone()).await?;
            match tokio::time::timeout(options.join_timeout, wait_joined(&mut ws))
                .await
                .map_err(|_| BotError::Timeout("join"))?
            {
                Ok((joined, early)) => break (ws, joined, early),
                Err(BotError::Redirect(to, hint)) if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    url = websocket_url(&to)?;
                    // The node that sent us carries our media, as a browser's page would ask.
                    media = hint;
                }
                Err(err) => return Err(err),
            }
        };
        let joined_at = Instant::now();
        let ServerMessage::Joined {
            participant_id,
            room,
            participants,
            role,
            room_state,
            counts,
            ..
        } = joined
        else {
            return Err(BotError::Protocol(
                "wait_joined returned another message".into(),
            ));
        };

        let socket = UdpSocket::bind(options.endpoint.local_addr).await?;
        let local_addr = socket.local_addr()?;
        let mut config = EndpointConfig {
            local_addr,
            ..options.endpoint.clone()
        };
        if let Some(e2ee) = &mut config.e2ee {
            e2ee.sender = Some(participant_id);
        }
        let publishes = config.publish_audio || config.publish_video;
        let endpoint = Endpoint::new(Instant::now(), config)?;
        if let Some(keys) = &mut keys {
            keys.joined(&room.0, participant_id);
            if publishes {
                keys.start_sending()?;
            }
        }

        let mut shared = Shared {
            endpoint,
            participant_id,
            room: room.clone(),
            local_addr,
            started_at,
            joined_at,
            media_connected_at: None,
            roster: Roster {
                role: Some(role),
                room_state,
                counts: Some(counts),
                ..Roster::default()
            },
            errors: Vec::new(),
            pongs: 0,
            events: VecDeque::new(),
            running: true,
            closed: None,
            failures: VecDeque::new(),
            auto_subscribe: options.auto_subscribe,
            next_offer_at: joined_at,
            wire: WireStats::default(),
            keys,
            key_traffic: KeyTraffic::default(),
            rekey_wrap_times: VecDeque::new(),
            epochs_received: HashMap::new(),
        };
        for participant in participants {
            if participant.id == participant_id {
                continue;
            }
            for publication in &participant.publications {
                shared.subscribe(publication);
            }
            let id = participant.id;
            shared.roster.add_participant(participant);
            shared.want_key(joined_at, id);
        }
        for message in early {
            shared.handle_server_message(joined_at, message);
        }
        shared.apply_keys();

        let shared = Arc::new(Mutex::new(shared));
        let (commands, command_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            ws,
            socket,
            shared: shared.clone(),
            local_addr,
            candidates_sent: false,
            out: Vec::new(),
        };
        let task = tokio::spawn(driver.run(command_rx, options.ping_interval));
        Ok(Bot {
            participant_id,
            room,
            local_addr,
            shared,
            commands,
            task: Some(task),
        })
    }

    pub fn participant_id(&self) -> ParticipantId {
        self.participant_id
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The bot's UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn snapshot(&self) -> BotSnapshot {
        lock(&self.shared).snapshot()
    }

    /// The measurements alone, without the roster and event log that [`Bot::snapshot`]
    /// copies: cheap enough to take from thousands of bots every second.
    pub fn stats(&self) -> BotStats {
        let shared = lock(&self.shared);
        BotStats {
            participant_id: shared.participant_id,
            started_at: shared.started_at,
            joined_at: shared.joined_at,
            ice_connected_at: shared.endpoint.connected_at(),
            media_connected_at: shared.media_connected_at,
            connected: shared.endpoint.is_connected(),
            running: shared.running,
            closed: shared.closed.clone(),
            errors: shared.errors.len(),
            failures: shared.failures.len(),
            received: shared.endpoint.stats().clone(),
            sent: shared.endpoint.sent().clone(),
            wire: shared.wire.summary(Instant::now()),
            keys: shared.keys.as_ref().map(|k| k.stats().clone()),
            first_key_at: shared
                .epochs_received
                .values()
                .filter_map(|arrivals| arrivals.iter().map(|(_, at)| *at).min())
                .min(),
            key_traffic: shared.key_traffic,
        }
    }

    /// What the bot's key exchange did: its rekeys as a sender, the epochs it opened as a
    /// receiver. Copies every record: call it to measure a run, not every second.
    pub fn key_timeline(&self) -> KeyTimeline {
        lock(&self.shared).key_timeline()
    }

    /// Whether the bot's task still runs (its signaling connection is open).
    pub fn is_running(&self) -> bool {
        lock(&self.shared).running
    }

    /// The tone heard on one received audio publication. Runs a spectral scan.
    pub fn dominant_frequency(&self, publication: PublicationId) -> Option<f32> {
        lock(&self.shared).endpoint.dominant_frequency(publication)
    }

    /// The tone heard on every received audio publication. Runs a spectral scan for each.
    pub fn dominant_frequencies(&self) -> HashMap<PublicationId, f32> {
        let shared = lock(&self.shared);
        shared
            .endpoint
            .stats()
            .keys()
            .filter_map(|id| Some((*id, shared.endpoint.dominant_frequency(*id)?)))
            .collect()
    }

    /// Sends any client message as is (for protocol tests).
    pub fn send(&self, message: ClientMessage) -> Result<(), BotError> {
        self.commands
            .send(Command::Send(message))
            .map_err(|_| BotError::Closed)
    }

    /// Stops or resumes sending one kind of media and, when the server announced the bot's
    /// own publication of that kind, tells it with `set_muted`.
    pub fn set_muted(&self, kind: MediaKind, muted: bool) -> Result<(), BotError> {
        self.commands
            .send(Command::SetMuted { kind, muted })
            .map_err(|_| BotError::Closed)
    }

    /// Waits until `condition` holds for a snapshot, checking every 10 ms.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&BotSnapshot) -> bool,
    ) -> Result<BotSnapshot, BotError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snapshot = self.snapshot();
            if condition(&snapshot) {
                return Ok(snapshot);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BotError::WaitTimeout(Box::new(snapshot)));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Says goodbye: sends `leave`, closes the media transport cleanly, waits (up to 5 s) for
    /// the server to close the socket, and returns the final state.
    pub async fn leave(mut self) -> BotSnapshot {
        if let Some(mut task) = self.task.take() {
            // The task ends by itself once the server closed the socket (or gave up waiting),
            // after recording why; only a task stuck beyond that is aborted.
            if self.commands.send(Command::Leave).is_ok() {
                let limit = LEAVE_TIMEOUT + Duration::from_secs(1);
                if tokio::time::timeout(limit, &mut task).await.is_err() {
                    task.abort();
                    let _ = task.await;
                }
            } else {
                let _ = task.await;
            }
        }
        self.snapshot()
    }

    /// Vanishes without a goodbye: the task stops, the WebSocket's TCP connection is dropped
    /// without a close frame and the UDP socket closes, like a crashed or unplugged client.
    pub async fn abort(mut self) -> BotSnapshot {
        if let Some(task) = self.task.take() {
            task.abort();
            // Awaiting the aborted task guarantees its sockets are closed on return.
            let _ = task.await;
        }
        let mut shared = lock(&self.shared);
        shared.running = false;
        shared.closed.get_or_insert_with(|| "aborted".into());
        shared.snapshot()
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Sends one message; returns its length in bytes.
async fn send(ws: &mut Ws, message: &ClientMessage) -> Result<usize, BotError> {
    let text = serde_json::to_string(message)?;
    let bytes = text.len();
    ws.send(Message::text(text)).await?;
    Ok(bytes)
}

/// Reads until `joined`; keeps anything else that arrives first to handle afterwards.
/// Redirects a join follows at most (a cluster sends a join once, to the room's holder).
const MAX_REDIRECTS: usize = 3;

/// The signaling URL of a node's `https://host:port` origin.
fn websocket_url(origin: &str) -> Result<String, BotError> {
    let host = origin
        .strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|host| !host.is_empty() && !host.contains('/'))
        .ok_or_else(|| BotError::Protocol(format!("a redirect to {origin:?}")))?;
    Ok(format!("wss://{host}/ws"))
}

/// Opens the signaling socket at `url` and sends the join.
async fn open_and_join(
    options: &BotOptions,
    url: &str,
    e2ee_key: Option<String>,
    media: Option<String>,
) -> Result<Ws, BotError> {
    let connector = Connector::Rustls(options.tls.clone());
    let (mut ws, _response) = tokio::time::timeout(
        options.join_timeout,
        tokio_tungstenite::connect_async_tls_with_config(
            url,
            Some(WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER)),
            true,
            Some(connector),
        ),
    )
    .await
    .map_err(|_| BotError::Timeout("websocket connect"))??;
    send(
        &mut ws,
        &match &options.token {
            Some(token) => ClientMessage::Join {
                protocol_version: PROTOCOL_VERSION,
                token: Some(token.clone()),
                room: None,
                name: None,
                role: None,
                resume: None,
                e2ee_key,
                media,
            },
            None => ClientMessage::Join {
                protocol_version: PROTOCOL_VERSION,
                token: None,
                room: Some(RoomId(options.room.clone())),
                name: Some(options.name.clone()),
                role: options.role,
                resume: None,
                e2ee_key,
                media,
            },
        },
    )
    .await?;
    Ok(ws)
}

async fn wait_joined(ws: &mut Ws) -> Result<(ServerMessage, Vec<ServerMessage>), BotError> {
    let mut early = Vec::new();
    loop {
        let Some(message) = ws.next().await else {
            return Err(BotError::Closed);
        };
        match message? {
            Message::Text(text) => match serde_json::from_str::<ServerMessage>(text.as_str())? {
                joined @ ServerMessage::Joined { .. } => return Ok((joined, early)),
                ServerMessage::Error { code, message } => {
                    return Err(BotError::Refused { code, message });
                }
                ServerMessage::Redirect { url, media } => {
                    return Err(BotError::Redirect(url, media));
                }
                other => early.push(other),
            },
            Message::Close(_) => return Err(BotError::Closed),
            _ => {}
        }
    }
}

/// How long a bot whose write failed keeps reading the server's last messages.
const LAST_WORDS_TIMEOUT: Duration = Duration::from_millis(500);

/// The bot's task: owns the sockets and moves data between them and the endpoint.
struct Driver {
    ws: Ws,
    socket: UdpSocket,
    shared: Arc<Mutex<Shared>>,
    local_addr: SocketAddr,
    candidates_sent: bool,
    /// Datagrams taken from the endpoint, sent outside the lock.
    out: Vec<endpoint::Datagram>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        ping_interval: Option<Duration>,
    ) {
        let result = self.run_loop(&mut commands, ping_interval).await;
        if result.is_err() {
            self.read_last_words().await;
        }
        let mut shared = lock(&self.shared);
        shared.running = false;
        let reason = match result {
            Ok(reason) => reason,
            Err(err) => err.to_string(),
        };
        shared.closed.get_or_insert(reason);
    }

    /// After a failed write, reads what the server sent before it closed: its last message
    /// usually says why (a shutdown, a removal), and a write racing the close must not lose it.
    async fn read_last_words(&mut self) {
        let deadline = tokio::time::Instant::now() + LAST_WORDS_TIMEOUT;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match message {
                Message::Text(text) => {
                    lock(&self.shared).handle_text(Instant::now(), text.as_str());
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    }

    /// Runs until the signaling connection ends; returns why.
    async fn run_loop(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        ping_interval: Option<Duration>,
    ) -> Result<String, BotError> {
        let mut ping = ping_interval.map(|every| {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        let mut buf = vec![0u8; RECV_BUFFER];
        self.flush().await?;
        loop {
            let deadline = {
                let shared = lock(&self.shared);
                let mut deadline = shared.endpoint.poll_timeout();
                if shared.endpoint.has_pending_changes() && !shared.endpoint.offer_in_flight() {
                    deadline = deadline.min(shared.next_offer_at);
                }
                if let Some(at) = shared.keys.as_ref().and_then(KeyExchange::poll_timeout) {
                    deadline = deadline.min(at);
                }
                deadline
            };
            let ping_tick = async {
                match ping.as_mut() {
                    Some(interval) => {
                        interval.tick().await;
                    }
                    None => pending::<()>().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    // The handle is gone; Drop aborts the task as well.
                    None => return Ok("the bot handle was dropped".into()),
                    Some(Command::Send(message)) => {
                        send(&mut self.ws, &message).await?;
                    }
                    Some(Command::SetMuted { kind, muted }) => self.set_muted(kind, muted).await?,
                    Some(Command::Leave) => return Ok(self.leave().await),
                },
                message = self.ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        lock(&self.shared).handle_text(Instant::now(), text.as_str());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Ok(format!("the server closed the socket: {frame:?}"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Err(err.into()),
                    None => return Ok("the server dropped the connection".into()),
                },
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((len, source)) = received {
                        self.receive(&mut buf, len, source);
                    }
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    let mut shared = lock(&self.shared);
                    let now = Instant::now();
                    shared.key_timeout(now);
                    if let Err(err) = shared.endpoint.handle_timeout(now) {
                        shared.fail(format!("endpoint: {err}"));
                    }
                }
                () = ping_tick => {
                    send(&mut self.ws, &ClientMessage::Ping {}).await?;
                }
            }
            self.flush().await?;
        }
    }

    /// Feeds one received datagram and whatever else is already queued on the socket.
    fn receive(&mut self, buf: &mut [u8], len: usize, source: SocketAddr) {
        let now = Instant::now();
        let mut shared = lock(&self.shared);
        let mut next = Some((len, source));
        let mut batch = 0;
        while let Some((len, source)) = next {
            let data = buf.get(..len).unwrap_or_default();
            shared.wire.on_receive(now, data);
            if let Err(err) = shared
                .endpoint
                .handle_datagram(now, source, self.local_addr, data)
            {
                shared.fail(format!("endpoint: {err}"));
            }
            batch += 1;
            next = if batch < RECV_BATCH {
                self.socket.try_recv_from(buf).ok()
            } else {
                None
            };
        }
    }

    /// Sends what the endpoint queued: datagrams, then a new offer (and the candidates after
    /// the first one).
    async fn flush(&mut self) -> Result<(), BotError> {
        let mut signaling = Vec::new();
        {
            let mut shared = lock(&self.shared);
            let now = Instant::now();
            if now >= shared.next_offer_at
                && let Some(offer) = shared.endpoint.create_offer()
            {
                signaling.push(offer);
                if !self.candidates_sent {
                    self.candidates_sent = true;
                    signaling.extend(shared.endpoint.local_candidates());
                }
            }
            while let Some(datagram) = shared.endpoint.poll_transmit() {
                shared.wire.on_send(now, &datagram.contents);
                self.out.push(datagram);
            }
            if let Some(keys) = &mut shared.keys {
                while let Some(message) = keys.poll_message() {
                    signaling.push(message);
                }
            }
        }
        for datagram in self.out.drain(..) {
            match self
                .socket
                .try_send_to(&datagram.contents, datagram.destination)
            {
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    // Loss is part of UDP; a send that still fails is dropped like one.
                    let _ = self
                        .socket
                        .send_to(&datagram.contents, datagram.destination)
                        .await;
                }
                _ => {}
            }
        }
        let mut key_messages = 0;
        let mut key_bytes = 0;
        for message in &signaling {
            let bytes = send(&mut self.ws, message).await?;
            if matches!(message, ClientMessage::E2eeKeys { .. }) {
                key_messages += 1;
                key_bytes += bytes as u64;
            }
        }
        if key_messages > 0 {
            let mut shared = lock(&self.shared);
            shared.key_traffic.messages_sent += key_messages;
            shared.key_traffic.bytes_sent += key_bytes;
        }
        Ok(())
    }

    async fn set_muted(&mut self, kind: MediaKind, muted: bool) -> Result<(), BotError> {
        let publication = {
            let mut shared = lock(&self.shared);
            shared.endpoint.set_paused(kind, muted);
            shared
                .roster
                .own_publications
                .iter()
                .find(|p| p.kind == kind)
                .map(|p| p.id)
        };
        if let Some(publication_id) = publication {
            send(
                &mut self.ws,
                &ClientMessage::SetMuted {
                    publication_id,
                    muted,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Says goodbye and waits for the server to close; returns why the connection ended.
    async fn leave(&mut self) -> String {
        if let Err(err) = send(&mut self.ws, &ClientMessage::Leave {}).await {
            return format!("leave could not be sent: {err}");
        }
        {
            let mut shared = lock(&self.shared);
            if let Err(err) = shared.endpoint.close(Instant::now()) {
                shared.fail(format!("endpoint close: {err}"));
            }
        }
        // The close queued an RTCP BYE and a DTLS close_notify; the offer part of flush is
        // inert because the endpoint no longer offers once closed.
        let _ = self.flush().await;
        let wait = async {
            while let Some(message) = self.ws.next().await {
                match message {
                    Ok(Message::Text(text)) => {
                        lock(&self.shared).handle_text(Instant::now(), text.as_str());
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let reason = match tokio::time::timeout(LEAVE_TIMEOUT, wait).await {
            Ok(()) => "left".to_string(),
            Err(_) => "left; the server did not close the socket in time".to_string(),
        };
        let _ = self.ws.close(None).await;
        reason
    }
}

/// A TLS client config that trusts exactly the certificate(s) in `cert_pem` (the server's
/// self-signed certificate), whatever name or validity period they carry.
pub fn tls_config_trusting_pem(cert_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, BotError> {
    let pinned = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| BotError::Pem(err.to_string()))?;
    if pinned.is_empty() {
        return Err(BotError::Pem("no certificate in the PEM data".into()));
    }
    client_config(Some(pinned))
}

/// A TLS client config that accepts any server certificate, for load tests against one's own
/// server. Handshake signatures are still checked.
pub fn insecure_tls_config() -> Arc<rustls::ClientConfig> {
    client_config(None).expect("the aws-lc-rs provider supports rustls' default protocol versions")
}

fn client_config(
    pinned: Option<Vec<CertificateDer<'static>>>,
) -> Result<Arc<rustls::ClientConfig>, BotError> {
    // The provider is named explicitly so that whatever is (or is not) installed as the
    // process default does not matter.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = PinnedVerifier {
        pinned,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts a server certificate that is byte-for-byte one of the pinned ones (or any, when
/// nothing is pinned) and verifies the handshake signatures made with it.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: Option<Vec<CertificateDer<'static>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            None => Ok(ServerCertVerified::assertion()),
            Some(pinned) if pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) => {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
