//! How the client does DTLS: its certificate's key type, the role its offer asks for, and the
//! faults a test can give it (a fingerprint that is not its certificate's, a cipher suite the
//! server does not take).

use anyhow::Context as _;
use rtc::crypto::SignatureScheme;
use rtc::peer_connection::certificate::CertificateParams;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject as _;
use webrtc::peer_connection::RTCCertificate;

/// A fixed RSA 2048 key (PKCS#8), for tests only: ring, webrtc-rs's crypto here, imports RSA
/// keys but cannot generate them. It protects nothing.
const RSA_TEST_KEY: &[u8] = include_bytes!("rsa-test-key.pem");

/// The key type of the client's DTLS certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CertificateKind {
    /// webrtc-rs's own: a fresh ECDSA P-256 key, as browsers have.
    #[default]
    Ecdsa,
    /// RSA 2048 with SHA-256 signatures, as GStreamer's webrtcbin (OpenSSL) has.
    Rsa,
}

/// The `a=setup` of the client's offers, which decides the DTLS roles (RFC 8842).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OfferedSetup {
    /// `actpass`, as browsers offer: the server chooses, and str0m takes the DTLS server's
    /// role.
    #[default]
    ActPass,
    /// `active`: the client is the DTLS client, the server the DTLS server.
    Active,
    /// `passive`: the client is the DTLS server, the server the DTLS client.
    Passive,
}

/// How the client does DTLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DtlsOptions {
    pub certificate: CertificateKind,
    pub setup: OfferedSetup,
    /// The offers announce a fingerprint that is not the certificate's (its last byte
    /// changed), as if someone between the client and the server had replaced the certificate.
    pub wrong_fingerprint: bool,
    /// The client offers and accepts only ECDHE-ECDSA with AES-256-CBC-SHA, a suite the server
    /// does not take.
    pub cbc_only: bool,
}

/// The certificate for [`CertificateKind::Rsa`].
pub(crate) fn rsa_certificate() -> anyhow::Result<RTCCertificate> {
    let key =
        PrivatePkcs8KeyDer::from_pem_slice(RSA_TEST_KEY).context("reading the RSA test key")?;
    let provider = rtc::crypto::default_provider().context("webrtc-rs's crypto provider")?;
    let signing_key = provider
        .crypto()
        .import_signing_key(SignatureScheme::RsaPkcs1Sha256, key.secret_pkcs8_der())
        .context("importing the RSA test key")?;
    let params = CertificateParams::new(vec!["meet-testkit".to_owned()])
        .context("certificate parameters")?;
    RTCCertificate::generate_from_signing_key(params, SignatureScheme::RsaPkcs1Sha256, signing_key)
        .context("self-signing the RSA certificate")
}

/// The offer as sent: webrtc-rs's own, with the setup and fingerprint the options ask for. The
/// local description keeps webrtc-rs's `actpass`, which lets it take whichever role the
/// answer leaves it.
pub(crate) fn offer_as_sent(sdp: &str, options: &DtlsOptions) -> String {
    let setup = match options.setup {
        OfferedSetup::ActPass => None,
        OfferedSetup::Active => Some("a=setup:active"),
        OfferedSetup::Passive => Some("a=setup:passive"),
    };
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive("\r\n") {
        let content = line.trim_end_matches("\r\n");
        if let Some(setup) = setup
            && content.starts_with("a=setup:")
        {
            out.push_str(setup);
            out.push_str("\r\n");
        } else if options.wrong_fingerprint && content.starts_with("a=fingerprint:") {
            out.push_str(&altered_fingerprint(content));
            out.push_str("\r\n");
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The fingerprint line with its last hex digit changed.
fn altered_fingerprint(line: &str) -> String {
    let mut chars: Vec<char> = line.chars().collect();
    if let Some(last) = chars.last_mut() {
        *last = if *last == '0' { '1' } else { '0' };
    }
    chars.into_iter().collect()
}

/// The `a=setup` value of an SDP, its first one.
pub(crate) fn setup_of(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|line| line.trim_end().strip_prefix("a=setup:"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\na=fingerprint:sha-256 AB:CD\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:actpass\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=setup:actpass\r\n";

    #[test]
    fn the_offer_says_the_role_and_fingerprint_asked_for() {
        let options = DtlsOptions::default();
        assert_eq!(offer_as_sent(OFFER, &options), OFFER);
        let options = DtlsOptions {
            setup: OfferedSetup::Passive,
            wrong_fingerprint: true,
            ..DtlsOptions::default()
        };
        let sent = offer_as_sent(OFFER, &options);
        assert_eq!(sent.matches("a=setup:passive\r\n").count(), 2);
        assert!(!sent.contains("actpass"));
        assert!(sent.contains("a=fingerprint:sha-256 AB:C0\r\n"));
        assert_eq!(setup_of(&sent).as_deref(), Some("passive"));
    }

    #[test]
    fn the_rsa_test_certificate_is_made() {
        rsa_certificate().expect("an RSA certificate from the committed key");
    }
}
