//! An independent WebRTC client for interoperability tests.
//!
//! [`WebrtcRsClient`] is built on webrtc-rs (`webrtc`/`rtc` 0.21), a different WebRTC stack
//! from the str0m engine inside the SFU, and speaks the product's signaling protocol over a
//! TLS WebSocket. It joins a room, publishes a tone (Opus) and tagged frames (VP8) from
//! `endpoint::media`, subscribes to every other participant's publications as they come and
//! go, and measures what it receives, so that a test can prove who hears and sees whom.
//!
//! Every test that uses it must install a rustls crypto provider first (see
//! [`install_crypto_provider`]): webrtc-rs enables rustls's `ring` feature next to the
//! workspace's `aws-lc-rs`, which leaves the process default ambiguous.
//!
//! ```no_run
//! use std::time::Duration;
//! use meet_testkit::{ClientOptions, WebrtcRsClient};
//!
//! # async fn example(url: String, cert_pem: Vec<u8>) -> anyhow::Result<()> {
//! meet_testkit::install_crypto_provider();
//! let alice = WebrtcRsClient::join(ClientOptions::new(&url, "room", "alice", cert_pem.clone(), 440.0, 1)).await?;
//! let bob = WebrtcRsClient::join(ClientOptions::new(&url, "room", "bob", cert_pem, 880.0, 2)).await?;
//! let a = alice.participant_id();
//! bob.wait_for(Duration::from_secs(15), |s| {
//!     s.received.get(&a).is_some_and(|m| {
//!         m.dominant_frequency_hz.is_some_and(|f| (f - 440.0).abs() <= 15.0)
//!             && m.video_tag == Some(1)
//!     })
//! })
//! .await?;
//! bob.leave().await?;
//! alice.leave().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The client needs a multi-threaded tokio runtime (webrtc-rs drives each connection from a
//! background task), binds its one UDP socket to 127.0.0.1, and keeps mDNS off.

mod dtls;
mod media;
mod peer;
mod session;
mod signaling;
mod state;
mod vp8;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use protocol::{ClientMessage, ParticipantId, PublicationId, RoomId, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use crate::dtls::{CertificateKind, DtlsOptions, OfferedSetup};
pub use crate::media::VIDEO_FRAME_BYTES;
use crate::session::{Command, Parts, Session};
pub use crate::signaling::tls_config_trusting;
use crate::state::Shared;
pub use crate::state::{PublicationMedia, ReceivedMedia, Roster, RosterEvent, SentMedia, Snapshot};

/// How long `join` waits for `joined` and then for the first answer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`WebrtcRsClient::wait_for`] looks again.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Installs aws-lc-rs as the process-wide rustls provider, if no provider is installed yet.
/// Call it at the top of every test.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// How a client joins.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The signaling endpoint, `wss://127.0.0.1:PORT/ws` (or `ws://` for plain TCP).
    pub url: String,
    pub room: String,
    /// Display name.
    pub name: String,
    /// PEM of the server certificate to trust, and the only one trusted.
    pub server_cert_pem: Vec<u8>,
    /// Frequency of the published tone; keep tones of different clients at least 50 Hz apart.
    pub tone_hz: f32,
    /// Tag carried by every published video frame.
    pub video_tag: u64,
    /// Its DTLS certificate and role; webrtc-rs's defaults (ECDSA, `actpass`) unless a test
    /// asks otherwise.
    pub dtls: DtlsOptions,
    /// Rewrites each offer's SDP on its way to the server (the local description keeps
    /// webrtc-rs's own), as a client that writes other SDP would send it: without `a=ssrc`,
    /// without the mid header extension.
    pub offer_rewrite: Option<fn(&str) -> String>,
}

impl ClientOptions {
    /// Options for a client that publishes `tone_hz` and `video_tag`.
    pub fn new(
        url: impl Into<String>,
        room: impl Into<String>,
        name: impl Into<String>,
        server_cert_pem: impl Into<Vec<u8>>,
        tone_hz: f32,
        video_tag: u64,
    ) -> Self {
        Self {
            url: url.into(),
            room: room.into(),
            name: name.into(),
            server_cert_pem: server_cert_pem.into(),
            tone_hz,
            video_tag,
            dtls: DtlsOptions::default(),
            offer_rewrite: None,
        }
    }
}

/// A joined participant backed by a webrtc-rs peer connection.
///
/// Dropping it without [`leave`](Self::leave) drops the signaling socket and the peer
/// connection without a goodbye, like [`abort`](Self::abort).
#[derive(Debug)]
pub struct WebrtcRsClient {
    participant_id: ParticipantId,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    session: Option<JoinHandle<()>>,
}

impl WebrtcRsClient {
    /// Connects, joins the room, publishes audio and video, subscribes to everything already
    /// published, and returns once the first answer has been applied. Media flows once ICE
    /// and DTLS complete; wait for that with [`wait_for`](Self::wait_for).
    pub async fn join(opts: ClientOptions) -> anyhow::Result<Self> {
        let mut socket = signaling::connect(&opts.url, &opts.server_cert_pem).await?;
        signaling::send(
            &mut socket,
            &ClientMessage::Join {
                protocol_version: protocol::PROTOCOL_VERSION,
                token: None,
                room: Some(RoomId(opts.room.clone())),
                name: Some(opts.name.clone()),
                role: None,
                resume: None,
                e2ee_key: None,
                media: None,
            },
        )
        .await?;
        let (me, participants) = tokio::time::timeout(JOIN_TIMEOUT, async {
            loop {
                match signaling::recv(&mut socket).await {
                    signaling::Incoming::Message(message) => match *message {
                        ServerMessage::Joined {
                            participant_id,
                            participants,
                            ..
                        } => return Ok((participant_id, participants)),
                        ServerMessage::Error { code, message } => {
                            anyhow::bail!("join refused: {code:?}: {message}")
                        }
                        other => tracing::debug!("before joined: {other:?}"),
                    },
                    signaling::Incoming::Unparsable(text, err) => {
                        anyhow::bail!("unparsable server message {text}: {err}")
                    }
                    signaling::Incoming::Other => {}
                    signaling::Incoming::Closed => {
                        anyhow::bail!("signaling socket closed before joined")
                    }
                }
            }
        })
        .await
        .context("timed out waiting for joined")??;

        let existing = participants
            .iter()
            .flat_map(|p| p.publications.iter().cloned())
            .collect();
        let shared = Arc::new(Shared::new(me, participants));
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let parts = Parts {
            socket,
            shared: Arc::clone(&shared),
            me,
            existing,
            tone_hz: opts.tone_hz,
            video_tag: opts.video_tag,
            dtls: opts.dtls,
            offer_rewrite: opts.offer_rewrite,
        };
        let mut session = Session::start(parts, commands_rx).await?;
        let first = tokio::time::timeout(JOIN_TIMEOUT, session.until_first_answer()).await;
        let failure = match first {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err),
            Err(_) => Some(anyhow::anyhow!("timed out waiting for the first answer")),
        };
        if let Some(err) = failure {
            session.shutdown().await;
            return Err(err);
        }
        Ok(Self {
            participant_id: me,
            shared,
            commands: commands_tx,
            session: Some(tokio::spawn(session.run())),
        })
    }

    /// The id the server gave this client.
    pub fn participant_id(&self) -> ParticipantId {
        self.participant_id
    }

    /// What this client received, per sender.
    pub async fn received(&self) -> HashMap<ParticipantId, ReceivedMedia> {
        self.shared.snapshot().received
    }

    /// What this client received, per subscribed publication (ended ones included).
    pub async fn received_publications(&self) -> HashMap<PublicationId, PublicationMedia> {
        self.shared.snapshot().publications
    }

    /// The participants this client knows about and the events it saw.
    pub async fn roster(&self) -> Roster {
        self.shared.snapshot().roster
    }

    /// Everything at once.
    pub async fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Polls the snapshot until `condition` holds, or fails with the last snapshot after
    /// `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&Snapshot) -> bool,
    ) -> anyhow::Result<Snapshot> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snapshot = self.shared.snapshot();
            if condition(&snapshot) {
                return Ok(snapshot);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("condition not met within {timeout:?}; last snapshot: {snapshot:#?}");
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Sends a raw client message, for protocol tests. Offers sent this way bypass the
    /// client's negotiation state and will confuse it.
    pub async fn send(&self, message: ClientMessage) -> anyhow::Result<()> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Send(Box::new(message), reply))
            .map_err(|_| anyhow::anyhow!("the session has ended"))?;
        done.await.context("the session ended before sending")?
    }

    /// Tells the server a publication of this client is muted or not.
    pub async fn set_muted(
        &self,
        publication_id: PublicationId,
        muted: bool,
    ) -> anyhow::Result<()> {
        self.send(ClientMessage::SetMuted {
            publication_id,
            muted,
        })
        .await
    }

    /// Says goodbye, waits briefly for the server to close the socket, and closes the peer
    /// connection.
    pub async fn leave(mut self) -> anyhow::Result<()> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Leave(reply))
            .map_err(|_| anyhow::anyhow!("the session has already ended"))?;
        let result = done.await.context("the session ended before leaving")?;
        if let Some(session) = self.session.take() {
            let _ = session.await;
        }
        result
    }

    /// Drops the signaling socket and the peer connection without a goodbye, as a crashed
    /// client would.
    pub async fn abort(mut self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Abort(reply)).is_ok() {
            let _ = done.await;
        }
        if let Some(session) = self.session.take() {
            let _ = session.await;
        }
    }
}
