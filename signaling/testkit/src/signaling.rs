//! The signaling WebSocket: TLS that trusts exactly the server certificate it was given, and
//! JSON messages tagged by `"type"`.

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::{ClientMessage, ServerMessage};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A rustls client configuration that trusts only the certificates in `pem`, with the
/// aws-lc-rs provider named explicitly: webrtc-rs turns rustls's `ring` feature on too, so the
/// process-level default provider is ambiguous.
pub fn tls_config_trusting(pem: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.context("server certificate PEM is malformed")?;
        roots
            .add(cert)
            .context("server certificate is not a usable trust anchor")?;
    }
    anyhow::ensure!(!roots.is_empty(), "no certificate in the server PEM");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Opens the signaling socket. `wss://` URLs trust only `server_cert_pem`; `ws://` URLs are
/// plain TCP.
pub(crate) async fn connect(url: &str, server_cert_pem: &[u8]) -> anyhow::Result<Socket> {
    let connector = if url.starts_with("wss://") {
        Some(Connector::Rustls(Arc::new(tls_config_trusting(
            server_cert_pem,
        )?)))
    } else {
        None
    };
    let (socket, _response) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector)
            .await
            .with_context(|| format!("connecting the signaling socket {url}"))?;
    Ok(socket)
}

pub(crate) async fn send(socket: &mut Socket, message: &ClientMessage) -> anyhow::Result<()> {
    let text = serde_json::to_string(message).context("serializing a client message")?;
    socket
        .send(Message::text(text))
        .await
        .context("sending on the signaling socket")
}

/// What one read from the socket produced.
#[derive(Debug)]
pub(crate) enum Incoming {
    Message(Box<ServerMessage>),
    /// A text frame that is not a server message this protocol version knows.
    Unparsable(String, String),
    /// A frame that carries no message (ping, pong, binary).
    Other,
    Closed,
}

pub(crate) async fn recv(socket: &mut Socket) -> Incoming {
    match socket.next().await {
        Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerMessage>(&text) {
            Ok(message) => Incoming::Message(Box::new(message)),
            Err(err) => Incoming::Unparsable(text.to_string(), err.to_string()),
        },
        Some(Ok(Message::Close(_))) | None => Incoming::Closed,
        Some(Ok(_)) => Incoming::Other,
        Some(Err(err)) => {
            tracing::debug!("signaling socket error: {err}");
            Incoming::Closed
        }
    }
}
