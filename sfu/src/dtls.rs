//! DTLS through OpenSSL, plugged into str0m through its crypto provider.
//!
//! str0m 0.25 does its DTLS with dimpl 0.9 by default, which offers only ECDHE-ECDSA cipher
//! suites and asks clients for ECDSA certificates only. A peer whose certificate is RSA
//! (GStreamer's webrtcbin, some hardware encoders) therefore cannot connect in either role:
//! as DTLS client it cannot sign for the server's CertificateRequest, as DTLS server it shares
//! no cipher suite with the server's ClientHello. str0m's own OpenSSL backend (its `openssl`
//! feature) needs `str0m-openssl` 0.7, which was never published; the published 0.6 is built on
//! `str0m-proto` 0.7, whose provider type is not the one str0m 0.25 takes. So the SFU
//! implements str0m's published [`DtlsProvider`] seam itself, on OpenSSL's DTLS 1.2, and keeps
//! every other primitive (SRTP, hashes, the STUN HMAC) on str0m's default aws-lc-rs provider:
//! nothing per packet changes.
//!
//! What it accepts: DTLS 1.2; ECDHE with ECDSA or RSA certificates and AES-GCM or
//! ChaCha20-Poly1305 (the suites browsers, libwebrtc, GStreamer, pion and webrtc-rs offer);
//! the extended master secret (RFC 7627), required as dimpl required it; any self-signed peer
//! certificate, which str0m then checks against the offer's `a=fingerprint`; the SRTP profiles
//! dimpl offered, in its order. The server's own certificate stays ECDSA P-256.
//!
//! Time: OpenSSL keeps the handshake's retransmission timer on its own clock (the safe
//! `openssl` API has no way to hand it the time), so the instance only polls it while a
//! handshake runs. A flight lost on the network is sent again about a second later in real
//! time; nothing else depends on the clock.
//!
//! Failures: str0m passes an instance's error on as text from a fixed set of dimpl errors,
//! which cannot say what OpenSSL said. The instance also leaves OpenSSL's reason on its thread
//! ([`take_failure`]), which the engine reads right after the call into str0m that failed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use dimpl::{CertificateError, CryptoError as DimplCryptoError, CryptoOperation, SecurityError};
use openssl::pkey::{Id, PKey};
use openssl::ssl::{
    ErrorCode, HandshakeError, MidHandshakeSslStream, ShutdownState, Ssl, SslContext,
    SslContextBuilder, SslMethod, SslOptions, SslSessionCacheMode, SslStream, SslVerifyMode,
    SslVersion,
};
use openssl::x509::X509;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, KeyingMaterial,
    ProtocolVersion, SrtpProfile,
};

/// The cipher suites offered and accepted: ECDHE key exchange with either certificate type,
/// AEAD ciphers only. Every WebRTC stack in use offers AES-128-GCM with its key type.
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
                       ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
                       ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// The key exchange groups, as browsers order them.
const GROUPS: &str = "X25519:P-256:P-384";

/// The SRTP protection profiles in dimpl's order of preference, so that the per-packet cipher
/// a client ends up with is the one it had before (RFC 5764 §4.1.2: a server picks from its
/// own preference among the client's).
const SRTP_PROFILES: &str = "SRTP_AEAD_AES_256_GCM:SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80";

/// The smallest peer keys taken: RSA keys of 2048 bits and EC keys on P-256 and larger
/// curves, the floor of OpenSSL's security level 2 (Debian's default).
const MIN_RSA_BITS: u32 = 2048;
const MIN_EC_BITS: u32 = 256;

/// The exporter label for DTLS-SRTP keys (RFC 5764 §4.2).
const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// How often a running handshake is polled for OpenSSL's retransmission timer (its first
/// timeout is one second, then doubles).
const HANDSHAKE_POLL: Duration = Duration::from_millis(200);

/// When nothing is scheduled: str0m asks for a deadline, and an hour is as good as never.
const IDLE: Duration = Duration::from_secs(3600);

/// How long after its handshake a connection keeps OpenSSL's state before it settles (see
/// [`Stage::Settled`]). A peer that missed the last flight sends its own again after 1, 2, 4
/// and 8 s (RFC 6347's doubling timer), and each is answered until then.
const SETTLE_AFTER: Duration = Duration::from_secs(16);

/// The DTLS record content type of an alert (RFC 6347).
const ALERT: u8 = 21;

/// Datagrams kept for OpenSSL between two reads. It reads each one as it arrives, so more
/// than a few means it stopped reading; the rest are dropped rather than kept.
const MAX_QUEUED: usize = 16;

/// OpenSSL's reason codes (openssl/sslerr.h): a received alert is reported as this offset
/// plus the alert's description (RFC 5246 §7.2), a handshake without a common cipher suite
/// and a client that sent no certificate as these.
const ERR_LIB_SSL: i32 = 20;
const ALERT_REASON_OFFSET: i32 = 1000;
const NO_SHARED_CIPHER: i32 = 193;
const PEER_DID_NOT_RETURN_A_CERTIFICATE: i32 = 199;

thread_local! {
    /// Why the last DTLS instance that failed on this thread failed, in OpenSSL's words.
    static FAILURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Takes the reason the last DTLS handshake that failed on this thread gave, if any since the
/// last call. The engine calls it right after a call into a transport returned a DTLS error:
/// str0m runs the instance synchronously inside that call, on this thread.
pub fn take_failure() -> Option<String> {
    FAILURE.with(|f| f.borrow_mut().take())
}

fn record_failure(reason: String) {
    tracing::debug!(%reason, "DTLS failed");
    FAILURE.with(|f| *f.borrow_mut() = Some(reason));
}

/// str0m's crypto provider for the SFU's transports: str0m's default (aws-lc-rs) for SRTP,
/// hashing and STUN, with DTLS through OpenSSL.
pub fn crypto_provider() -> CryptoProvider {
    static DTLS: OpensslDtls = OpensslDtls;
    CryptoProvider {
        dtls_provider: &DTLS,
        ..str0m::crypto::from_feature_flags()
    }
}

/// Why a certificate cannot serve DTLS.
#[derive(Debug, thiserror::Error)]
#[error("the DTLS certificate is unusable: {0}")]
pub struct CertificateUnusable(#[from] openssl::error::ErrorStack);

/// Checks once that OpenSSL takes the certificate and its key, so that a transport's
/// construction, where str0m cannot report an error, never meets a bad one.
pub fn check_certificate(cert: &DtlsCert) -> Result<(), CertificateUnusable> {
    context_for(cert)?;
    Ok(())
}

/// The provider: certificates come from str0m's default provider (ECDSA P-256, as browsers
/// use), handshakes from OpenSSL.
#[derive(Debug)]
struct OpensslDtls;

impl DtlsProvider for OpensslDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        if dtls_version != DtlsVersion::Dtls12 {
            return Err(CryptoError::Other(format!(
                "OpenSSL's DTLS serves DTLS 1.2 only, not {dtls_version:?}"
            )));
        }
        let context = context_for(cert).map_err(|e| CryptoError::Other(e.to_string()))?;
        let mut ssl = Ssl::new(&context).map_err(|e| CryptoError::Other(e.to_string()))?;
        // Without an MTU OpenSSL cannot size its records and fails the handshake.
        let mtu = u32::try_from(mtu.unwrap_or(str0m::DATAGRAM_MTU_TARGET)).unwrap_or(u32::MAX);
        ssl.set_mtu(mtu)
            .map_err(|e| CryptoError::Other(e.to_string()))?;
        Ok(Box::new(Instance::new(ssl, now)))
    }
}

thread_local! {
    /// The last context built on this thread and the certificate it holds. Each media worker
    /// has one certificate, so each join reuses the context instead of parsing the certificate
    /// and its key and setting up OpenSSL's tables again.
    static CONTEXT: RefCell<Option<(Vec<u8>, SslContext)>> = const { RefCell::new(None) };
}

fn context_for(cert: &DtlsCert) -> Result<SslContext, openssl::error::ErrorStack> {
    let cached = CONTEXT.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(der, _)| *der == cert.certificate)
            .map(|(_, context)| context.clone())
    });
    if let Some(context) = cached {
        return Ok(context);
    }
    let context = build_context(cert)?;
    CONTEXT.with(|c| *c.borrow_mut() = Some((cert.certificate.clone(), context.clone())));
    Ok(context)
}

fn build_context(cert: &DtlsCert) -> Result<SslContext, openssl::error::ErrorStack> {
    let mut ctx = context_builder()?;
    let certificate = X509::from_der(&cert.certificate)?;
    let key = PKey::private_key_from_der(&cert.private_key)?;
    ctx.set_certificate(&certificate)?;
    ctx.set_private_key(&key)?;
    ctx.check_private_key()?;
    Ok(ctx.build())
}

/// Everything of a context but its certificate.
fn context_builder() -> Result<SslContextBuilder, openssl::error::ErrorStack> {
    let mut ctx = SslContextBuilder::new(SslMethod::dtls())?;
    ctx.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    ctx.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    ctx.set_cipher_list(CIPHERS)?;
    ctx.set_groups_list(GROUPS)?;
    ctx.set_tlsext_use_srtp(SRTP_PROFILES)?;
    // Both sides must show a certificate, and any self-signed one will do: WebRTC
    // authenticates it by its fingerprint in the SDP, which str0m compares after the
    // handshake. OpenSSL still checks that the peer holds its key (CertificateVerify and the
    // key exchange's signature).
    ctx.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        |_, _| true,
    );
    // Every transport is a new session: no resumption, whose abbreviated handshake would
    // skip the certificates that the fingerprint check needs.
    ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
    // The MTU is str0m's (set on each connection), not one queried from a socket OpenSSL
    // never sees.
    ctx.set_options(SslOptions::NO_TICKET | SslOptions::NO_QUERY_MTU);
    Ok(ctx)
}

/// The datagrams between OpenSSL and str0m: each read hands OpenSSL one received datagram,
/// each write of OpenSSL's is one datagram to send (it writes a record at a time).
#[derive(Debug, Default)]
struct Datagrams {
    incoming: VecDeque<Vec<u8>>,
    outgoing: VecDeque<Vec<u8>>,
}

impl io::Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(datagram) = self.incoming.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // OpenSSL reads into a buffer of a whole record or more; a longer datagram is cut,
        // and OpenSSL discards the record that does not parse.
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        Ok(n)
    }
}

impl io::Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a connection's handshake is.
enum Stage {
    /// Not started: str0m has not said the role yet.
    Ready(Ssl, Datagrams),
    Handshaking(MidHandshakeSslStream<Datagrams>),
    Connected(SslStream<Datagrams>),
    /// Connected long enough that the peer has the last flight, without OpenSSL's state: a
    /// transport carries no data channel, so all that can still come over DTLS is an alert,
    /// whose content type is in the clear. Its record buffers, handshake buffer and session
    /// were about 60 KiB per participant, kept for the life of the meeting. What is lost: a
    /// close_notify of ours (the peer learns of the end from signaling, or its consent
    /// checks) and the last flight for a peer that missed it more than four times.
    Settled,
    /// The handshake or the connection failed.
    Failed,
}

impl Stage {
    fn datagrams(&mut self) -> Option<&mut Datagrams> {
        match self {
            Stage::Ready(_, d) => Some(d),
            Stage::Handshaking(s) => Some(s.get_mut()),
            Stage::Connected(s) => Some(s.get_mut()),
            Stage::Settled | Stage::Failed => None,
        }
    }
}

/// One transport's DTLS connection.
struct Instance {
    stage: Stage,
    /// What OpenSSL wrote, taken from it after each call into it: str0m polls for output on
    /// every pass of every transport, which then costs no call into OpenSSL.
    outgoing: VecDeque<Vec<u8>>,
    active: Option<bool>,
    /// The time str0m last gave.
    now: Instant,
    /// When a running handshake is polled next.
    poll_at: Option<Instant>,
    /// What the handshake produced, until str0m takes it: the peer's certificate first (str0m
    /// checks its fingerprint before it installs keys), then the SRTP keys, then "connected".
    peer_cert: Option<Vec<u8>>,
    keying_material: Option<(Vec<u8>, SrtpProfile)>,
    connected: bool,
    connected_told: bool,
    application_data: VecDeque<Vec<u8>>,
    close_received: bool,
    close_told: bool,
    close_sent: bool,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("active", &self.active)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl Instance {
    fn new(ssl: Ssl, now: Instant) -> Self {
        Self {
            stage: Stage::Ready(ssl, Datagrams::default()),
            outgoing: VecDeque::new(),
            active: None,
            now,
            poll_at: None,
            peer_cert: None,
            keying_material: None,
            connected: false,
            connected_told: false,
            application_data: VecDeque::new(),
            close_received: false,
            close_told: false,
            close_sent: false,
        }
    }

    /// Runs the handshake as far as the datagrams received allow, or reads what arrived on
    /// an established connection.
    fn drive(&mut self) -> Result<(), DtlsImplError> {
        let Some(active) = self.active else {
            return Ok(());
        };
        let stage = std::mem::replace(&mut self.stage, Stage::Failed);
        let result = match stage {
            Stage::Ready(ssl, datagrams) => {
                if active {
                    ssl.connect(datagrams)
                } else {
                    ssl.accept(datagrams)
                }
            }
            Stage::Handshaking(mid) => mid.handshake(),
            Stage::Connected(stream) => {
                self.stage = Stage::Connected(stream);
                return self.read();
            }
            Stage::Settled => {
                self.stage = Stage::Settled;
                return Ok(());
            }
            Stage::Failed => return Ok(()),
        };
        match result {
            Ok(stream) => {
                let established = established(&stream);
                self.stage = Stage::Connected(stream);
                match established {
                    Ok(Established {
                        peer_cert,
                        keys,
                        profile,
                    }) => {
                        self.peer_cert = Some(peer_cert);
                        self.keying_material = Some((keys, profile));
                        self.connected = true;
                        // str0m calls back at the time asked for, and only then.
                        self.poll_at = Some(self.now + SETTLE_AFTER);
                        // Records that came behind the handshake's last flight.
                        self.read()
                    }
                    Err(reason) => {
                        record_failure(reason);
                        self.fail();
                        Err(DimplCryptoError::OperationFailed(
                            CryptoOperation::ExtractSrtpKeyingMaterial,
                        )
                        .into())
                    }
                }
            }
            Err(HandshakeError::WouldBlock(mid)) => {
                self.stage = Stage::Handshaking(mid);
                self.collect();
                Ok(())
            }
            Err(HandshakeError::Failure(mid)) => {
                let (reason, error) = describe(mid.error());
                self.stage = Stage::Handshaking(mid);
                record_failure(reason);
                self.fail();
                Err(error)
            }
            Err(HandshakeError::SetupFailure(stack)) => {
                record_failure(format!("DTLS setup failed: {stack}"));
                Err(DimplCryptoError::OperationFailed(CryptoOperation::CreateCipher).into())
            }
        }
    }

    /// Reads the application data (SCTP) and alerts that arrived on the connection.
    fn read(&mut self) -> Result<(), DtlsImplError> {
        let Stage::Connected(stream) = &mut self.stage else {
            return Ok(());
        };
        // A DTLS record carries up to 2^14 bytes of plaintext. On the stack, not kept: records
        // after the handshake are rare, and every transport holding 16 KiB for them is not.
        let mut buf = [0; 1 << 14];
        loop {
            match stream.ssl_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if self.application_data.len() < MAX_QUEUED {
                        self.application_data.push_back(buf[..n].to_vec());
                    }
                }
                Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                    break;
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    self.close_received = true;
                    break;
                }
                Err(e) => {
                    if stream.get_shutdown().contains(ShutdownState::RECEIVED) {
                        self.close_received = true;
                        break;
                    }
                    let (reason, error) = describe(&e);
                    record_failure(reason);
                    self.fail();
                    return Err(error);
                }
            }
        }
        // Reading may have made OpenSSL answer: its last flight again, for a peer that
        // missed it.
        self.collect();
        Ok(())
    }

    /// Takes what OpenSSL wrote.
    fn collect(&mut self) {
        if let Some(datagrams) = self.stage.datagrams() {
            self.outgoing.extend(datagrams.outgoing.drain(..));
        }
    }

    /// Ends the connection, keeping what OpenSSL still had to send (its alert).
    fn fail(&mut self) {
        self.collect();
        self.stage = Stage::Failed;
        self.poll_at = None;
    }
}

/// What an established connection hands str0m.
struct Established {
    peer_cert: Vec<u8>,
    keys: Vec<u8>,
    profile: SrtpProfile,
}

/// The peer's certificate and the SRTP keys of an established connection, or why it cannot be
/// used.
fn established(stream: &SslStream<Datagrams>) -> Result<Established, String> {
    let ssl = stream.ssl();
    if ssl.extms_support() != Some(true) {
        return Err("the peer did not negotiate the extended master secret (RFC 7627)".into());
    }
    let certificate = ssl
        .peer_certificate()
        .ok_or("the peer sent no certificate")?;
    // The verification callback accepts any certificate (see `context_builder`), which also
    // waives OpenSSL's own key size policy: the floor is kept here.
    let key = certificate
        .public_key()
        .map_err(|e| format!("the peer's certificate has no usable key: {e}"))?;
    let floor = match key.id() {
        Id::RSA => MIN_RSA_BITS,
        Id::EC => MIN_EC_BITS,
        _ => 0,
    };
    if key.bits() < floor {
        return Err(format!(
            "the peer's key has {} bits, fewer than the {floor} required",
            key.bits()
        ));
    }
    let peer_cert = certificate
        .to_der()
        .map_err(|e| format!("the peer's certificate cannot be encoded: {e}"))?;
    let profile = match ssl.selected_srtp_profile().map(|p| p.name()) {
        Some("SRTP_AEAD_AES_256_GCM") => SrtpProfile::AEAD_AES_256_GCM,
        Some("SRTP_AEAD_AES_128_GCM") => SrtpProfile::AEAD_AES_128_GCM,
        Some("SRTP_AES128_CM_SHA1_80") => SrtpProfile::AES128_CM_SHA1_80,
        Some(other) => return Err(format!("the peer chose the SRTP profile {other}")),
        None => return Err("no SRTP protection profile in common".into()),
    };
    let mut keys = vec![0; profile.keying_material_len()];
    ssl.export_keying_material(&mut keys, SRTP_EXPORTER_LABEL, None)
        .map_err(|e| format!("exporting the SRTP keys failed: {e}"))?;
    Ok(Established {
        peer_cert,
        keys,
        profile,
    })
}

/// OpenSSL's reason for a failure, in its own words (the strings other stacks' logs show, such
/// as "no shared cipher" or "sslv3 alert handshake failure" for an alert the peer sent), and
/// the closest of the errors str0m's interface can carry.
fn describe(error: &openssl::ssl::Error) -> (String, DtlsImplError) {
    let stack = error.ssl_error().map(|s| s.errors()).unwrap_or_default();
    let mut reasons: Vec<&str> = Vec::new();
    for reason in stack.iter().filter_map(|e| e.reason()) {
        if !reasons.contains(&reason) {
            reasons.push(reason);
        }
    }
    let reason = if reasons.is_empty() {
        error.to_string()
    } else {
        reasons.join(": ")
    };
    let code = stack
        .iter()
        .find(|e| e.library_code() == ERR_LIB_SSL)
        .map(|e| e.reason_code());
    let mapped: DtlsImplError = match code {
        Some(c) if (ALERT_REASON_OFFSET..ALERT_REASON_OFFSET + 256).contains(&c) => {
            SecurityError::FatalAlert {
                description: u8::try_from(c - ALERT_REASON_OFFSET).unwrap_or(u8::MAX),
            }
            .into()
        }
        Some(NO_SHARED_CIPHER) => SecurityError::NoMutuallyAcceptableCipherSuite.into(),
        Some(PEER_DID_NOT_RETURN_A_CERTIFICATE) => {
            CertificateError::NoClientCertificateReceived.into()
        }
        // Anything else as a failed decryption, which is how str0m's own OpenSSL backend
        // reports every failure.
        _ => DimplCryptoError::OperationFailed(CryptoOperation::Decrypt).into(),
    };
    (reason, mapped)
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.active.get_or_insert(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        if matches!(self.stage, Stage::Settled) {
            // Every record is encrypted now; an alert is a close_notify or a fatal one, and
            // either ends the connection.
            if packet.first() == Some(&ALERT) {
                self.close_received = true;
            }
            return Ok(());
        }
        // str0m hands an empty packet to start a client's handshake.
        if !packet.is_empty()
            && let Some(datagrams) = self.stage.datagrams()
            && datagrams.incoming.len() < MAX_QUEUED
        {
            datagrams.incoming.push_back(packet.to_vec());
        }
        self.drive()
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        if let Some(datagram) = self.outgoing.pop_front() {
            if datagram.len() <= buf.len() {
                buf[..datagram.len()].copy_from_slice(&datagram);
                return DtlsOutput::Packet(&buf[..datagram.len()]);
            }
            // OpenSSL fragments to the MTU str0m gave, well under str0m's buffer.
            let needed = datagram.len();
            self.outgoing.push_front(datagram);
            return DtlsOutput::BufferTooSmall { needed };
        }
        if let Some(cert) = self.peer_cert.take() {
            if cert.len() <= buf.len() {
                buf[..cert.len()].copy_from_slice(&cert);
                return DtlsOutput::PeerCert(&buf[..cert.len()]);
            }
            // str0m cannot take it, so it cannot check its fingerprint: the connection
            // cannot be used, and str0m fails on this output.
            record_failure(format!(
                "the peer's certificate is {} bytes, more than the {} str0m can check",
                cert.len(),
                buf.len()
            ));
            self.keying_material = None;
            self.connected = false;
            self.fail();
            return DtlsOutput::BufferTooSmall { needed: cert.len() };
        }
        if let Some((keys, profile)) = self.keying_material.take() {
            return DtlsOutput::KeyingMaterial(KeyingMaterial::new(&keys), profile);
        }
        if self.connected && !self.connected_told {
            self.connected_told = true;
            return DtlsOutput::Connected;
        }
        while let Some(data) = self.application_data.pop_front() {
            if data.len() <= buf.len() {
                buf[..data.len()].copy_from_slice(&data);
                return DtlsOutput::ApplicationData(&buf[..data.len()]);
            }
            tracing::debug!(len = data.len(), "DTLS application data too large, dropped");
        }
        if self.close_received && !self.close_told {
            self.close_told = true;
            return DtlsOutput::CloseNotify;
        }
        DtlsOutput::Timeout(self.poll_at.unwrap_or(self.now + IDLE))
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.now = now;
        // A connected stage's only timeout is when it settles. Each branch moves it on: a
        // timeout left in the past would have str0m call back on every pass.
        if matches!(self.stage, Stage::Connected(_)) && self.poll_at.is_some_and(|at| now >= at) {
            self.poll_at = if self.close_sent {
                // Closing: nothing to settle for.
                None
            } else if self.outgoing.is_empty() && self.application_data.is_empty() {
                self.stage = Stage::Settled;
                None
            } else {
                // str0m has not taken what is waiting yet.
                Some(now + HANDSHAKE_POLL)
            };
        }
        let handshaking = matches!(self.stage, Stage::Ready(..) | Stage::Handshaking(_));
        if !handshaking || self.active.is_none() {
            return Ok(());
        }
        if self.poll_at.is_none_or(|at| now >= at) {
            self.poll_at = Some(now + HANDSHAKE_POLL);
            // OpenSSL sends its last flight again if its own timer ran out.
            self.drive()?;
        }
        Ok(())
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        let Stage::Connected(stream) = &mut self.stage else {
            return Ok(0);
        };
        if data.is_empty() || self.close_sent {
            return Ok(0);
        }
        match stream.ssl_write(data) {
            Ok(n) => {
                self.collect();
                Ok(n)
            }
            Err(e) => {
                let (reason, error) = describe(&e);
                record_failure(reason);
                self.fail();
                Err(error)
            }
        }
    }

    fn is_active(&self) -> bool {
        self.active.unwrap_or(false)
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.connected.then_some(ProtocolVersion::DTLS1_2)
    }

    fn is_closing(&self) -> bool {
        self.close_sent || self.close_received
    }

    fn is_closed(&self) -> bool {
        // Closed once the close_notify has been handed to str0m.
        self.close_sent && self.outgoing.is_empty()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        if let Stage::Connected(stream) = &mut self.stage
            && !self.close_sent
        {
            // A failed shutdown leaves nothing to send; the connection is over either way.
            let _ = stream.shutdown();
            self.collect();
        }
        self.close_sent = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::rsa::Rsa;
    use openssl::x509::X509NameBuilder;

    const MTU: usize = 1150;

    /// A self-signed RSA certificate, as GStreamer's webrtcbin makes (2048 bits).
    fn rsa_cert(bits: u32) -> DtlsCert {
        let key = PKey::from_rsa(Rsa::generate(bits).expect("key")).expect("pkey");
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_text("CN", "rsa-peer").expect("cn");
        let name = name.build();
        let mut builder = X509::builder().expect("builder");
        builder.set_version(2).expect("version");
        builder.set_subject_name(&name).expect("subject");
        builder.set_issuer_name(&name).expect("issuer");
        builder.set_pubkey(&key).expect("pubkey");
        let not_before = Asn1Time::days_from_now(0).expect("time");
        let not_after = Asn1Time::days_from_now(30).expect("time");
        builder.set_not_before(&not_before).expect("not before");
        builder.set_not_after(&not_after).expect("not after");
        builder.sign(&key, MessageDigest::sha256()).expect("sign");
        DtlsCert {
            certificate: builder.build().to_der().expect("der"),
            private_key: key.private_key_to_der().expect("key der"),
        }
    }

    fn ecdsa_cert() -> DtlsCert {
        crypto_provider()
            .dtls_provider
            .generate_certificate()
            .expect("certificate")
    }

    fn openssl(cert: &DtlsCert, now: Instant) -> Box<dyn DtlsInstance> {
        OpensslDtls
            .new_dtls(cert, now, DtlsVersion::Dtls12, Some(MTU))
            .expect("instance")
    }

    /// str0m's default DTLS (dimpl), as the load-test bots and the SFU's tests use.
    fn dimpl(cert: &DtlsCert, now: Instant) -> Box<dyn DtlsInstance> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .new_dtls(cert, now, DtlsVersion::Dtls12, Some(MTU))
            .expect("instance")
    }

    /// What one side produced in a handshake.
    #[derive(Debug, Default)]
    struct Side {
        connected: bool,
        peer_cert: Option<Vec<u8>>,
        keys: Option<(Vec<u8>, SrtpProfile)>,
        error: Option<String>,
    }

    /// Polls `from` until it asks for a timeout, delivering its datagrams to `to`.
    fn pump(from: &mut dyn DtlsInstance, side: &mut Side, to: &mut dyn DtlsInstance) -> Side {
        let mut other = Side::default();
        let mut buf = vec![0; 2000];
        loop {
            match from.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => {
                    let p = p.to_vec();
                    if let Err(e) = to.handle_packet(&p) {
                        other.error = Some(e.to_string());
                    }
                }
                DtlsOutput::Connected => side.connected = true,
                DtlsOutput::PeerCert(c) => side.peer_cert = Some(c.to_vec()),
                DtlsOutput::KeyingMaterial(k, p) => side.keys = Some((k.to_vec(), p)),
                DtlsOutput::Timeout(_) => break,
                other => panic!("unexpected output {other:?}"),
            }
        }
        other
    }

    /// Runs a handshake between a client and a server; returns both sides.
    fn handshake(
        mut client: Box<dyn DtlsInstance>,
        mut server: Box<dyn DtlsInstance>,
        now: Instant,
    ) -> (Side, Side) {
        handshake_between(client.as_mut(), server.as_mut(), now)
    }

    fn handshake_between(
        client: &mut dyn DtlsInstance,
        server: &mut dyn DtlsInstance,
        now: Instant,
    ) -> (Side, Side) {
        client.set_active(true);
        server.set_active(false);
        let (mut c, mut s) = (Side::default(), Side::default());
        for result in [client.handle_timeout(now), server.handle_timeout(now)] {
            if let Err(e) = result {
                panic!("timeout: {e}: {:?}", take_failure());
            }
        }
        // str0m starts a client with an empty packet.
        client.handle_packet(&[]).expect("start");
        for _ in 0..20 {
            let from_client = pump(client, &mut c, server);
            s.error = s.error.or(from_client.error);
            let from_server = pump(server, &mut s, client);
            c.error = c.error.or(from_server.error);
            if (c.connected && s.connected) || c.error.is_some() || s.error.is_some() {
                break;
            }
        }
        (c, s)
    }

    fn assert_connected(c: &Side, s: &Side, client_cert: &DtlsCert, server_cert: &DtlsCert) {
        assert!(c.connected && s.connected, "{c:?} {s:?}");
        assert_eq!(c.peer_cert.as_deref(), Some(&server_cert.certificate[..]));
        assert_eq!(s.peer_cert.as_deref(), Some(&client_cert.certificate[..]));
        let (client_keys, server_keys) = (c.keys.as_ref(), s.keys.as_ref());
        assert!(client_keys.is_some());
        assert_eq!(client_keys, server_keys);
    }

    #[test]
    fn rsa_and_ecdsa_peers_connect_in_either_role() {
        let now = Instant::now();
        let (rsa, ecdsa) = (rsa_cert(2048), ecdsa_cert());
        // The server's ECDSA certificate with an RSA client: the CertificateRequest must take
        // RSA signatures.
        let (c, s) = handshake(openssl(&rsa, now), openssl(&ecdsa, now), now);
        assert_connected(&c, &s, &rsa, &ecdsa);
        // The server as DTLS client of an RSA server: its ClientHello must offer ECDHE-RSA.
        let (c, s) = handshake(openssl(&ecdsa, now), openssl(&rsa, now), now);
        assert_connected(&c, &s, &ecdsa, &rsa);
    }

    #[test]
    fn a_settled_connection_lets_openssl_go_and_still_hears_the_peers_close() {
        let now = Instant::now();
        let (ours, theirs) = (ecdsa_cert(), ecdsa_cert());
        let mut client = openssl(&theirs, now);
        let context = context_for(&ours).expect("context");
        let mut ssl = Ssl::new(&context).expect("ssl");
        ssl.set_mtu(MTU as u32).expect("mtu");
        let mut server = Instance::new(ssl, now);
        let (c, s) = handshake_between(client.as_mut(), &mut server, now);
        assert_connected(&c, &s, &theirs, &ours);
        // OpenSSL keeps the connection while a peer may still miss the last flight, and asks
        // str0m to call back when it settles...
        let mut buf = vec![0; 2000];
        assert!(matches!(
            server.poll_output(&mut buf),
            DtlsOutput::Timeout(at) if at == now + SETTLE_AFTER
        ));
        let before = now + SETTLE_AFTER - Duration::from_millis(1);
        server.handle_timeout(before).expect("timeout");
        assert!(matches!(server.stage, Stage::Connected(_)));
        // ...and not after.
        server.handle_timeout(now + SETTLE_AFTER).expect("timeout");
        assert!(matches!(server.stage, Stage::Settled));
        assert_eq!(server.protocol_version(), Some(ProtocolVersion::DTLS1_2));
        // A record that is no alert changes nothing; the peer's close_notify is heard.
        server
            .handle_packet(&[23, 254, 253, 0, 1, 0, 0, 0, 0, 0, 9, 0, 2, 1, 2])
            .expect("ignored");
        assert!(!server.is_closing());
        client.close().expect("close");
        let mut side = Side::default();
        let delivered = pump(client.as_mut(), &mut side, &mut server);
        assert_eq!(delivered.error, None);
        assert!(matches!(
            server.poll_output(&mut buf),
            DtlsOutput::CloseNotify
        ));
        assert!(server.is_closing());
        // Its own close has nothing to send and is over at once.
        server.close().expect("close");
        assert!(server.is_closed());
        assert!(matches!(
            server.poll_output(&mut buf),
            DtlsOutput::Timeout(_)
        ));
    }

    #[test]
    fn a_connection_closed_before_it_settles_asks_for_no_more_timeouts() {
        let now = Instant::now();
        let (ours, theirs) = (ecdsa_cert(), ecdsa_cert());
        let mut client = openssl(&theirs, now);
        let mut server = openssl(&ours, now);
        let (c, s) = handshake_between(client.as_mut(), server.as_mut(), now);
        assert_connected(&c, &s, &theirs, &ours);
        server.close().expect("close");
        let mut buf = vec![0; 2000];
        while !matches!(server.poll_output(&mut buf), DtlsOutput::Timeout(_)) {}
        let settle = now + SETTLE_AFTER;
        server.handle_timeout(settle).expect("timeout");
        // A timeout in the past would have str0m call back on every pass.
        assert!(matches!(
            server.poll_output(&mut buf),
            DtlsOutput::Timeout(at) if at > settle
        ));
    }

    #[test]
    fn dimpl_peers_connect_in_either_role_with_the_same_srtp_profile() {
        let now = Instant::now();
        let (ours, theirs) = (ecdsa_cert(), ecdsa_cert());
        let (c, s) = handshake(dimpl(&theirs, now), openssl(&ours, now), now);
        assert_connected(&c, &s, &theirs, &ours);
        assert_eq!(s.keys.map(|k| k.1), Some(SrtpProfile::AEAD_AES_256_GCM));
        let (c, s) = handshake(openssl(&ours, now), dimpl(&theirs, now), now);
        assert_connected(&c, &s, &ours, &theirs);
        assert_eq!(c.keys.map(|k| k.1), Some(SrtpProfile::AEAD_AES_256_GCM));
    }

    #[test]
    fn a_failed_handshake_leaves_openssls_reason() {
        let now = Instant::now();
        let _ = take_failure();
        // dimpl offers ECDSA suites only: an RSA server has none of them.
        let (c, s) = handshake(
            dimpl(&ecdsa_cert(), now),
            openssl(&rsa_cert(2048), now),
            now,
        );
        assert!(!c.connected && !s.connected);
        assert!(s.error.is_some(), "{s:?}");
        assert_eq!(take_failure().as_deref(), Some("no shared cipher"));
        assert_eq!(take_failure(), None);
    }

    #[test]
    fn a_short_rsa_key_is_refused() {
        let now = Instant::now();
        let _ = take_failure();
        // Only a peer below OpenSSL's security level can even use such a key.
        let weak = rsa_cert(1024);
        let mut builder = context_builder().expect("builder");
        builder.set_security_level(0);
        builder
            .set_certificate(&X509::from_der(&weak.certificate).expect("cert"))
            .expect("set cert");
        builder
            .set_private_key(&PKey::private_key_from_der(&weak.private_key).expect("key"))
            .expect("set key");
        let mut ssl = Ssl::new(&builder.build()).expect("ssl");
        ssl.set_mtu(MTU as u32).expect("mtu");
        let peer = Instance::new(ssl, now);
        let (c, s) = handshake(Box::new(peer), openssl(&ecdsa_cert(), now), now);
        assert!(!s.connected && s.peer_cert.is_none(), "{s:?}");
        assert!(s.error.is_some() || c.error.is_some(), "{c:?} {s:?}");
        let reason = take_failure().expect("a reason");
        assert!(reason.contains("1024 bits"), "{reason}");
    }

    #[test]
    fn garbage_is_not_a_handshake_and_never_panics() {
        let now = Instant::now();
        let cert = ecdsa_cert();
        for active in [false, true] {
            let mut instance = openssl(&cert, now);
            instance.set_active(active);
            if let Err(e) = instance.handle_timeout(now) {
                panic!("timeout: {e}: {:?}", take_failure());
            }
            let mut buf = vec![0; 2000];
            for datagram in [
                &[][..],
                &[22][..],
                &[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff][..],
                &[23; 1500][..],
                &[21, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 40][..],
            ] {
                let _ = instance.handle_packet(datagram);
                while !matches!(instance.poll_output(&mut buf), DtlsOutput::Timeout(_)) {}
            }
            assert_eq!(instance.is_active(), active);
            assert_eq!(instance.protocol_version(), None);
        }
        let _ = take_failure();
    }
}
