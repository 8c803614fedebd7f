//! One WebSocket session: decodes client messages, refuses bad ones with a typed error, keeps
//! the connection alive, and hands joined participants' requests to the hub.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use protocol::{
    ClientMessage, ErrorCode, LeaveReason, PROTOCOL_VERSION, ParticipantId, ServerMessage,
    decode_client_message,
};
use tokio::sync::mpsc;

use std::sync::Arc;

use protocol::{Role, RoomId};

use crate::SECURITY;
use crate::auth::JoinTokens;
use crate::cluster::Placement;
use crate::hub::{Arrival, HubHandle, MeetingInfo, OUTBOUND_QUEUE, Outbound};
use crate::store::Store;

/// What decides who may enter: join tokens, the invitations behind them, and whether rooms
/// without invitations exist at all.
#[derive(Debug, Clone)]
pub struct Gate {
    pub tokens: Arc<JoinTokens>,
    pub store: Store,
    /// Tokenless joins to free-form rooms (development and load tests only).
    pub open_rooms: bool,
    /// This node's cluster, which says where each room is held.
    pub cluster: Option<crate::cluster::Cluster>,
}

/// Limits of one session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// How often the server pings an idle client.
    pub heartbeat_interval: Duration,
    /// A client silent for this long is considered gone.
    pub heartbeat_timeout: Duration,
    /// Sustained messages per second allowed from one socket.
    pub messages_per_second: f64,
    /// Burst of messages allowed above the sustained rate.
    pub message_burst: f64,
    /// A socket that has not sent `join` this long after it opened is closed: an
    /// unauthenticated socket holds a file descriptor and memory, so it may not idle.
    pub join_deadline: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            messages_per_second: 20.0,
            message_burst: 60.0,
            join_deadline: Duration::from_secs(10),
        }
    }
}

/// Longest room or display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// A token bucket: cheap, and fair to bursts such as trickled candidates.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimiter {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            rate,
            burst,
            last: Instant::now(),
        }
    }

    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn error_text(code: ErrorCode, message: impl Into<String>) -> Utf8Bytes {
    let message = ServerMessage::Error {
        code,
        message: message.into(),
    };
    serde_json::to_string(&message)
        .unwrap_or_else(|_| "{}".to_string())
        .into()
}

/// What to tell a client whose socket failed to read: the error code, the close status
/// (RFC 6455 §7.4.1) and a reason; `None` when the connection itself is gone.
fn receive_failure(err: axum::Error) -> Option<(ErrorCode, u16, &'static str)> {
    use tungstenite::Error;
    let inner = err.into_inner();
    match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => Some((
            ErrorCode::MessageTooLarge,
            1009,
            "the message or frame is too large",
        )),
        Some(Error::Utf8(_)) => Some((ErrorCode::BadMessage, 1007, "the text is not UTF-8")),
        Some(Error::Protocol(_)) => Some((
            ErrorCode::BadMessage,
            1002,
            "the frames break the WebSocket protocol",
        )),
        Some(Error::ConnectionClosed | Error::AlreadyClosed | Error::Io(_)) => None,
        _ => Some((ErrorCode::BadMessage, 1002, "the socket could not be read")),
    }
}

fn valid_name(name: &str) -> bool {
    let trimmed = name.trim();
    !trimmed.is_empty()
        && trimmed.chars().count() <= MAX_NAME_CHARS
        && !trimmed.chars().any(char::is_control)
}

/// What the session should do after a client message.
enum Next {
    Continue,
    Close(LeaveReason),
}

struct Session {
    hub: HubHandle,
    gate: Gate,
    participant: Option<ParticipantId>,
    outbound_tx: mpsc::Sender<Outbound>,
    /// The client's address, for the security log.
    ip: IpAddr,
    /// Who the join claims to be (an invitation id, or a name in an open room), for the
    /// security log when it is refused.
    claimed: Option<String>,
}

/// Where a join that passed the checks went.
enum Joined {
    /// Into this node's hub (the room, or its lobby).
    Here,
    /// To the node at this URL, which holds the room.
    Elsewhere(String),
}

/// Runs one session until the socket closes or the participant leaves.
pub async fn run(socket: WebSocket, hub: HubHandle, limits: SessionLimits, gate: Gate, ip: IpAddr) {
    let (mut sink, mut stream) = socket.split();
    let (outbound_tx, mut outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let mut session = Session {
        hub,
        gate,
        participant: None,
        outbound_tx,
        ip,
        claimed: None,
    };
    let mut limiter = RateLimiter::new(limits.messages_per_second, limits.message_burst);
    let mut heartbeat = tokio::time::interval(limits.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let join_deadline = tokio::time::sleep(limits.join_deadline);
    tokio::pin!(join_deadline);
    let mut joined = false;
    let reason = loop {
        joined |= session.participant.is_some();
        tokio::select! {
            () = &mut join_deadline, if !joined => {
                if crate::metrics::Refusal::JoinTimeout.count() {
                    tracing::info!("socket closed: no join within the deadline");
                }
                let text = error_text(ErrorCode::JoinTimeout, "no join arrived in time");
                let _ = sink.send(Message::Text(text)).await;
                let _ = sink.send(Message::Close(None)).await;
                break LeaveReason::TimedOut;
            }
            incoming = stream.next() => {
                let message = match incoming {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        // Oversized frames and protocol violations end up here; say which.
                        tracing::debug!(%err, "websocket receive failed");
                        if let Some((code, close, reason)) = receive_failure(err) {
                            let _ = sink.send(Message::Text(error_text(code, reason))).await;
                            let _ = sink.send(Message::Close(Some(CloseFrame {
                                code: close,
                                reason: reason.into(),
                            }))).await;
                        }
                        break LeaveReason::TimedOut;
                    }
                    None => break LeaveReason::TimedOut,
                };
                last_heard = Instant::now();
                match message {
                    Message::Text(text) => {
                        if !limiter.allow(Instant::now()) {
                            if crate::metrics::Refusal::MessagesRateLimited.count() {
                                tracing::info!(participant = ?session.participant, "messages over the rate limit");
                            }
                            let text = error_text(ErrorCode::RateLimited, "too many messages; slow down");
                            if sink.send(Message::Text(text)).await.is_err() {
                                break LeaveReason::TimedOut;
                            }
                            continue;
                        }
                        match session.handle_text(text.as_str()).await {
                            Ok(Next::Continue) => {}
                            Ok(Next::Close(reason)) => break reason,
                            Err((code, message)) => {
                                let fatal = code.is_fatal();
                                let text = error_text(code, message);
                                if sink.send(Message::Text(text)).await.is_err() || fatal {
                                    let _ = sink.send(Message::Close(None)).await;
                                    break LeaveReason::Removed;
                                }
                            }
                        }
                    }
                    Message::Binary(_) => {
                        let text = error_text(
                            ErrorCode::BinaryNotSupported,
                            "binary messages are not part of the protocol",
                        );
                        if sink.send(Message::Text(text)).await.is_err() {
                            break LeaveReason::TimedOut;
                        }
                    }
                    Message::Close(_) => break LeaveReason::TimedOut,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            outbound = outbound_rx.recv() => match outbound {
                Some(Outbound::Text(text)) => {
                    if sink.send(Message::Text(Utf8Bytes::from(text.as_ref()))).await.is_err() {
                        break LeaveReason::TimedOut;
                    }
                }
                Some(Outbound::Close(text)) => {
                    let sent = sink.send(Message::Text(Utf8Bytes::from(text.as_ref()))).await;
                    let closed = sink.send(Message::Close(None)).await;
                    tracing::debug!(?sent, ?closed, "session closed by the server");
                    // The hub removed this participant already.
                    session.participant = None;
                    break LeaveReason::Removed;
                }
                None => break LeaveReason::Removed,
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > limits.heartbeat_timeout {
                    tracing::debug!(participant = ?session.participant, "client went silent");
                    break LeaveReason::TimedOut;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break LeaveReason::TimedOut;
                }
            }
        }
    };
    if let Some(participant) = session.participant {
        session.hub.leave(participant, reason);
    }
    // Wait (briefly) for the client to answer our close, as RFC 6455 section 7.1.1 asks:
    // dropping the TCP connection at once can reset it under data the client has not read
    // yet, losing the message that says why the session ended.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// How long a closing session waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

impl Session {
    async fn handle_text(&mut self, text: &str) -> Result<Next, (ErrorCode, String)> {
        let message = decode_client_message(text).map_err(|e| (e.code, e.message))?;
        match (message, self.participant) {
            (ClientMessage::Ping {}, _) => {
                let pong = serde_json::to_string(&ServerMessage::Pong)
                    .unwrap_or_else(|_| "{}".to_string());
                let _ = self.outbound_tx.try_send(Outbound::Text(pong.into()));
                Ok(Next::Continue)
            }
            (
                ClientMessage::Join {
                    protocol_version,
                    token,
                    room,
                    name,
                    role,
                    resume,
                    e2ee_key,
                    media,
                },
                None,
            ) => {
                let room_asked = room.clone();
                let outcome = self
                    .join(
                        protocol_version,
                        token,
                        room,
                        name,
                        role,
                        resume,
                        e2ee_key,
                        media,
                    )
                    .await;
                if let Ok(Joined::Elsewhere(url)) = &outcome {
                    tracing::info!(
                        target: SECURITY,
                        event = "redirected",
                        invitation = self.claimed.as_deref(),
                        ip = %self.ip,
                        %url,
                        "sent to the node holding the room"
                    );
                    // The media stays here, near the client (see `ClientMessage::Join`'s `media`).
                    let media = self.gate.cluster.as_ref().map(|c| c.node_id().to_string());
                    let text = serde_json::to_string(&ServerMessage::Redirect {
                        url: url.clone(),
                        media,
                    })
                    .unwrap_or_else(|_| "{}".to_string());
                    // Sent, then the socket closes: the client joins there.
                    let _ = self.outbound_tx.try_send(Outbound::Close(text.into()));
                    return Ok(Next::Continue);
                }
                match &outcome {
                    Ok(_) => tracing::info!(
                        target: SECURITY,
                        event = "joined",
                        participant = self.participant.map(|p| p.to_string()),
                        invitation = self.claimed.as_deref(),
                        ip = %self.ip,
                        "joined"
                    ),
                    Err((code, why)) => tracing::warn!(
                        target: SECURITY,
                        event = "join_refused",
                        ?code,
                        reason = %why,
                        claimed = self.claimed.as_deref(),
                        room = room_asked.as_ref().map(|r| r.0.as_str()),
                        ip = %self.ip,
                        "join refused"
                    ),
                }
                outcome.map(|_| Next::Continue)
            }
            (ClientMessage::Join { .. }, Some(_)) => Err((
                ErrorCode::AlreadyJoined,
                "this socket has already joined a room".into(),
            )),
            (ClientMessage::Leave {}, _) => Ok(Next::Close(LeaveReason::Left)),
            (_, None) => Err((ErrorCode::NotJoined, "join a room first".into())),
            (message, Some(participant)) => {
                self.hub.message(participant, message);
                Ok(Next::Continue)
            }
        }
    }

    /// Checks a join and hands it to the hub.
    #[allow(clippy::too_many_arguments)]
    async fn join(
        &mut self,
        protocol_version: u32,
        token: Option<String>,
        room: Option<RoomId>,
        name: Option<String>,
        role: Option<Role>,
        resume: Option<String>,
        e2ee_key: Option<String>,
        media: Option<String>,
    ) -> Result<Joined, (ErrorCode, String)> {
        if protocol_version != PROTOCOL_VERSION {
            return Err((
                ErrorCode::VersionMismatch,
                format!(
                    "this server speaks protocol version {PROTOCOL_VERSION}, \
                     not {protocol_version}"
                ),
            ));
        }
        let mut arrival = match token {
            Some(token) => self.admit_token(&token, room.as_ref()).await?,
            None => self.open_room_arrival(room, name, role)?,
        };
        arrival.resume = resume;
        if let Some(key) = &e2ee_key {
            let well_formed = !key.is_empty()
                && key.len() <= protocol::MAX_E2EE_PUBLIC_KEY
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='));
            if !well_formed {
                return Err((
                    ErrorCode::BadMessage,
                    format!(
                        "e2ee_key must be 1–{} base64url characters",
                        protocol::MAX_E2EE_PUBLIC_KEY
                    ),
                ));
            }
        }
        arrival.e2ee_key = e2ee_key;
        // Only a well-formed node id goes on; whether it is a live member is the hub's to see.
        arrival.media = media.filter(|m| crate::cluster::valid_node_id(m));
        // In a cluster the room is held by one node: the join is served there.
        if let Some(cluster) = &self.gate.cluster
            && let Placement::Elsewhere(node) = cluster.place(&arrival.room).await
        {
            return Ok(Joined::Elsewhere(node.url));
        }
        let id = self.hub.join(arrival, self.outbound_tx.clone()).await?;
        self.participant = Some(id);
        if let Some(cluster) = &self.gate.cluster {
            // After the hub's answer, which it queued before replying.
            let urls = cluster.nodes().into_iter().map(|n| n.url).collect();
            if let Ok(text) = serde_json::to_string(&ServerMessage::Nodes { urls }) {
                let _ = self.outbound_tx.try_send(Outbound::Text(text.into()));
            }
        }
        Ok(Joined::Here)
    }
}

impl Session {
    /// Checks a join token and the invitation behind it. The identity comes from the token
    /// and storage, never from the message.
    async fn admit_token(
        &mut self,
        token: &str,
        room: Option<&RoomId>,
    ) -> Result<Arrival, (ErrorCode, String)> {
        let invalid = |why: &str| (ErrorCode::InvalidToken, why.to_string());
        let claims = self
            .gate
            .tokens
            .verify(token)
            .map_err(|err| invalid(&err.to_string()))?;
        self.claimed = Some(claims.sub.clone());
        if room.is_some_and(|r| r.0 != claims.room) {
            return Err(invalid("the token is for another meeting"));
        }
        let check = self
            .gate
            .store
            .join_check(&claims.sub)
            .await
            .map_err(|err| {
                tracing::warn!(%err, "invitation lookup failed");
                (
                    ErrorCode::MediaUnavailable,
                    "the server could not check your invitation; try again".to_string(),
                )
            })?
            .ok_or_else(|| invalid("the invitation does not exist"))?;
        if check.meeting_id != claims.room {
            return Err(invalid("the token is for another meeting"));
        }
        if check.cancelled {
            return Err(invalid("the meeting was cancelled"));
        }
        if check.revoked {
            return Err(invalid("the invitation was withdrawn"));
        }
        Ok(Arrival {
            room: RoomId(check.meeting_id),
            name: check.name,
            // Storage is the authority: an organizer may have changed the role since.
            role: check.role,
            site_id: check.site_id,
            site_name: check.site_name,
            invitation: Some(check.invitation_id),
            meeting: Some(MeetingInfo {
                title: check.title,
                starts_at: check.starts_at,
                admission: check.admission,
                auto_record: check.auto_record,
                e2ee: check.e2ee,
            }),
            resume: None,
            e2ee_key: None,
            media: None,
        })
    }

    /// A tokenless join, allowed only on servers started with open rooms.
    fn open_room_arrival(
        &mut self,
        room: Option<RoomId>,
        name: Option<String>,
        role: Option<Role>,
    ) -> Result<Arrival, (ErrorCode, String)> {
        if !self.gate.open_rooms {
            return Err((
                ErrorCode::TokenRequired,
                "this server admits invited participants only: open your invitation link".into(),
            ));
        }
        self.claimed = name.as_ref().map(|n| format!("open room guest {n:?}"));
        let (Some(room), Some(name)) = (room, name) else {
            return Err((
                ErrorCode::InvalidName,
                "a join without a token names a room and a display name".into(),
            ));
        };
        if !valid_name(&room.0) || !valid_name(&name) {
            return Err((
                ErrorCode::InvalidName,
                format!(
                    "room and display names must be 1 to {MAX_NAME_CHARS} printable characters"
                ),
            ));
        }
        let role = role.unwrap_or(Role::Participant);
        // Nobody hosts an open room: there is no invitation to prove the right to.
        if role == Role::Host {
            return Err((ErrorCode::Forbidden, "open rooms have no hosts".into()));
        }
        Ok(Arrival {
            room: RoomId(room.0.trim().to_string()),
            name: name.trim().to_string(),
            role,
            site_id: None,
            site_name: None,
            invitation: None,
            meeting: None,
            resume: None,
            e2ee_key: None,
            media: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_a_burst_then_refuses() {
        let mut limiter = RateLimiter::new(10.0, 5.0);
        let now = Instant::now();
        let allowed = (0..20).filter(|_| limiter.allow(now)).count();
        assert_eq!(allowed, 5);
        assert!(limiter.allow(now + Duration::from_millis(150)));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("Xã Tân Lập"));
        assert!(!valid_name("   "));
        assert!(!valid_name("a\u{0}b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
