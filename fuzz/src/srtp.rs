//! Client-side SRTP and SRTCP for arbitrary plaintext.
//!
//! str0m encrypts only the packets it builds itself, and keeps its keys private. To make any
//! byte string into a packet the engine authenticates and decrypts, the fuzzed client runs
//! str0m with a [`CryptoProvider`] whose DTLS instances are the default ones wrapped by
//! [`CapturingDtls`]: the wrapper hands every output on unchanged and keeps a copy of the
//! exported DTLS-SRTP keying material. [`SrtpTx`] derives the client's sending keys from it
//! (RFC 3711 section 4.3 key derivation, the same as str0m's) and protects packets with the
//! negotiated profile (AES-128-CM-HMAC-SHA1-80 or AEAD-AES-128/256-GCM) through the crypto
//! provider's own ciphers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};
use str0m::crypto::{
    AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256Gcm, AeadAes256GcmCipher, Aes128CmSha1_80,
    Aes128CmSha1_80Cipher, CryptoError, CryptoProvider,
};

/// The keying material one DTLS handshake exported, its profile, and whether this side was
/// the DTLS client (which picks the left half of the material for sending).
#[derive(Clone)]
pub struct Captured {
    pub material: Vec<u8>,
    pub profile: SrtpProfile,
    pub active: bool,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured")
            .field("profile", &self.profile)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Keying material captured since the last [`take_captured`].
static CAPTURED: Mutex<Option<Captured>> = Mutex::new(None);

/// The keying material of the most recent handshake of a [`capturing_provider`] transport.
pub fn take_captured() -> Option<Captured> {
    CAPTURED.lock().ok()?.take()
}

/// The default crypto provider, with DTLS instances that capture their keying material.
pub fn capturing_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = str0m::crypto::from_feature_flags();
            let inner = provider.dtls_provider;
            provider.dtls_provider = Box::leak(Box::new(CapturingDtls { inner }));
            Arc::new(provider)
        })
        .clone()
}

/// Wraps a DTLS provider; see the module documentation.
#[derive(Debug)]
pub struct CapturingDtls {
    inner: &'static dyn DtlsProvider,
}

impl DtlsProvider for CapturingDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.inner.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = self.inner.new_dtls(cert, now, dtls_version, mtu)?;
        Ok(Box::new(CapturingInstance { inner }))
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

#[derive(Debug)]
struct CapturingInstance {
    inner: Box<dyn DtlsInstance>,
}

impl DtlsInstance for CapturingInstance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let output = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(material, profile) = &output
            && let Ok(mut captured) = CAPTURED.lock()
        {
            *captured = Some(Captured {
                material: material.to_vec(),
                profile: *profile,
                active: self.inner.is_active(),
            });
        }
        output
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

/// The SRTCP index the fuzzer's packets start at, far from the indices the client's own str0m
/// uses for its reports, so that neither looks like a replay of the other.
const FIRST_SRTCP_INDEX: u32 = 0x4000_0000;

/// One direction's keys (RTP or RTCP) and cipher.
enum Direction {
    Cm {
        cipher: Box<dyn Aes128CmSha1_80Cipher>,
        auth: [u8; 20],
        salt: [u8; 14],
    },
    Gcm128 {
        cipher: Box<dyn AeadAes128GcmCipher>,
        salt: [u8; 12],
    },
    Gcm256 {
        cipher: Box<dyn AeadAes256GcmCipher>,
        salt: [u8; 12],
    },
}

/// Protects packets as the client whose handshake was [`Captured`].
pub struct SrtpTx {
    /// The negotiated profile.
    pub profile: SrtpProfile,
    provider: Arc<CryptoProvider>,
    rtp: Direction,
    rtcp: Direction,
    /// The highest extended sequence number sent per SSRC, from which the next one is
    /// extended (its rollover counter guessed as the receiver guesses it).
    highest: HashMap<u32, u64>,
    srtcp_index: u32,
}

impl std::fmt::Debug for SrtpTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpTx")
            .field("profile", &self.profile)
            .field("srtcp_index", &self.srtcp_index)
            .finish_non_exhaustive()
    }
}

/// RFC 3711 section 4.3.1 key derivation with the AES-CM PRF, as str0m does it.
fn derive(provider: &CryptoProvider, master: &[u8], salt: &[u8], label: u8, out: &mut [u8]) {
    let mut input = [0u8; 16];
    input[..salt.len()].copy_from_slice(salt);
    input[7] ^= label;
    let mut block = [0u8; 32];
    let mut round: u16 = 0;
    let mut at = 0;
    while at < out.len() {
        input[14..].copy_from_slice(&round.to_be_bytes());
        match master.len() {
            16 => provider
                .srtp_provider
                .srtp_aes_128_ecb_round(master, &input, &mut block),
            _ => provider
                .srtp_provider
                .srtp_aes_256_ecb_round(master, &input, &mut block),
        }
        let n = (out.len() - at).min(16);
        out[at..at + n].copy_from_slice(&block[..n]);
        at += n;
        round += 1;
    }
}

/// The length of an RTP header as a receiver parses it (fixed part, CSRCs, extension),
/// capped at the packet's length.
pub fn rtp_header_len(packet: &[u8]) -> usize {
    let Some(&first) = packet.first() else {
        return 0;
    };
    let mut len = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0
        && let Some(words) = packet.get(len + 2..len + 4)
    {
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    len.min(packet.len())
}

/// The rollover counter str0m 0.25 guesses for a 16-bit sequence number (its `extend_u16`,
/// RFC 3711 appendix A), reproduced exactly, quirks included: a number more than half the
/// range before the highest one seen, while the rollover counter is 0, does not give counter
/// -1 (nor 0) but 2^48 - 1 (the mask of the counter wraps it). The fuzzed client encrypts with
/// the same guess, so that such packets, which a malicious client can make, authenticate.
pub fn extend_like_str0m(previous: Option<u64>, seq: u16) -> u64 {
    const MAX: u64 = 1 << 16;
    const HALF: u64 = MAX / 2;
    const ROC_MASK: i64 = (u64::MAX >> 16) as i64;
    let seq = u64::from(seq);
    let Some(previous) = previous else {
        return seq;
    };
    let roc = (previous >> 16) as i64;
    let prev_seq = previous & (MAX - 1);
    let v = if prev_seq < HALF {
        if seq > HALF + prev_seq {
            (roc - 1) & ROC_MASK
        } else {
            roc
        }
    } else if prev_seq > seq + HALF {
        (roc + 1) & ROC_MASK
    } else {
        roc
    };
    (v as u64).wrapping_mul(MAX).wrapping_add(seq)
}

impl SrtpTx {
    /// The sending context of the side that captured `captured`; `None` for a profile this
    /// harness does not know.
    pub fn new(provider: Arc<CryptoProvider>, captured: &Captured) -> Option<Self> {
        let (key_len, salt_len) = match captured.profile {
            SrtpProfile::AES128_CM_SHA1_80 => (16, 14),
            SrtpProfile::AEAD_AES_128_GCM => (16, 12),
            SrtpProfile::AEAD_AES_256_GCM => (32, 12),
            _ => return None,
        };
        let mat = &captured.material;
        if mat.len() != 2 * (key_len + salt_len) {
            return None;
        }
        // Layout: client key, server key, client salt, server salt. The DTLS client (active)
        // sends with the client's half.
        let (k, s) = if captured.active {
            (0, 2 * key_len)
        } else {
            (key_len, 2 * key_len + salt_len)
        };
        let master = &mat[k..k + key_len];
        let master_salt = &mat[s..s + salt_len];
        let direction = |key_label: u8, auth_label: u8, salt_label: u8| -> Direction {
            let mut key = vec![0u8; key_len];
            derive(&provider, master, master_salt, key_label, &mut key);
            match captured.profile {
                SrtpProfile::AES128_CM_SHA1_80 => {
                    let mut auth = [0u8; 20];
                    derive(&provider, master, master_salt, auth_label, &mut auth);
                    let mut salt = [0u8; 14];
                    derive(&provider, master, master_salt, salt_label, &mut salt);
                    let mut k16 = [0u8; 16];
                    k16.copy_from_slice(&key);
                    Direction::Cm {
                        cipher: provider
                            .srtp_provider
                            .aes_128_cm_sha1_80()
                            .create_cipher(k16, true),
                        auth,
                        salt,
                    }
                }
                SrtpProfile::AEAD_AES_128_GCM => {
                    let mut salt = [0u8; 12];
                    derive(&provider, master, master_salt, salt_label, &mut salt);
                    let mut k16 = [0u8; 16];
                    k16.copy_from_slice(&key);
                    Direction::Gcm128 {
                        cipher: provider
                            .srtp_provider
                            .aead_aes_128_gcm()
                            .create_cipher(k16, true),
                        salt,
                    }
                }
                _ => {
                    let mut salt = [0u8; 12];
                    derive(&provider, master, master_salt, salt_label, &mut salt);
                    let mut k32 = [0u8; 32];
                    k32.copy_from_slice(&key);
                    Direction::Gcm256 {
                        cipher: provider
                            .srtp_provider
                            .aead_aes_256_gcm()
                            .create_cipher(k32, true),
                        salt,
                    }
                }
            }
        };
        let rtp = direction(LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT);
        let rtcp = direction(LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT);
        Some(Self {
            profile: captured.profile,
            provider,
            rtp,
            rtcp,
            highest: HashMap::new(),
            srtcp_index: FIRST_SRTCP_INDEX,
        })
    }

    /// The extended sequence number (SRTP index) of `seq` on `ssrc`, as the receiver (str0m)
    /// guesses it from the highest one it has seen: [`extend_like_str0m`].
    fn index(&mut self, ssrc: u32, seq: u16) -> u64 {
        let index = extend_like_str0m(self.highest.get(&ssrc).copied(), seq);
        let highest = self.highest.entry(ssrc).or_insert(index);
        *highest = (*highest).max(index);
        index
    }

    /// SRTP-protects one plaintext RTP packet (header as given, however malformed). `None`
    /// for less than a fixed header, which has no SSRC or sequence number to key it with.
    pub fn protect_rtp(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        if plain.len() < 12 {
            return None;
        }
        let seq = u16::from_be_bytes([plain[2], plain[3]]);
        let ssrc = u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]);
        let index = self.index(ssrc, seq);
        let hlen = rtp_header_len(plain);
        let (header, body) = plain.split_at(hlen);
        let hmac = self.provider.sha1_hmac_provider;
        match &mut self.rtp {
            Direction::Cm { cipher, auth, salt } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, index);
                let mut out = vec![0u8; plain.len() + 16];
                out[..hlen].copy_from_slice(header);
                cipher.encrypt(&iv, body, &mut out[hlen..]).ok()?;
                out.truncate(plain.len() + Aes128CmSha1_80::HMAC_TAG_LEN);
                Aes128CmSha1_80::rtp_hmac(
                    |k, p| hmac.sha1_hmac(k, p),
                    auth,
                    &mut out,
                    index,
                    plain.len(),
                );
                Some(out)
            }
            Direction::Gcm128 { cipher, salt } => {
                let iv = AeadAes128Gcm::rtp_iv(*salt, ssrc, (index >> 16) as u32, seq);
                let mut out = vec![0u8; plain.len() + AeadAes128Gcm::TAG_LEN];
                out[..hlen].copy_from_slice(header);
                cipher.encrypt(&iv, header, body, &mut out[hlen..]).ok()?;
                Some(out)
            }
            Direction::Gcm256 { cipher, salt } => {
                let iv = AeadAes256Gcm::rtp_iv(*salt, ssrc, (index >> 16) as u32, seq);
                let mut out = vec![0u8; plain.len() + AeadAes256Gcm::TAG_LEN];
                out[..hlen].copy_from_slice(header);
                cipher.encrypt(&iv, header, body, &mut out[hlen..]).ok()?;
                Some(out)
            }
        }
    }

    /// SRTCP-protects one plaintext (compound) RTCP packet, encrypted (E flag set). `None`
    /// for less than the 8 bytes of a first header and sender SSRC.
    pub fn protect_rtcp(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        if plain.len() < 8 {
            return None;
        }
        let ssrc = u32::from_be_bytes([plain[4], plain[5], plain[6], plain[7]]);
        let index = self.srtcp_index;
        self.srtcp_index = (self.srtcp_index + 1) & 0x7fff_ffff;
        let e_and_index = (0x8000_0000 | index).to_be_bytes();
        let (head, body) = plain.split_at(8);
        let hmac = self.provider.sha1_hmac_provider;
        match &mut self.rtcp {
            Direction::Cm { cipher, auth, salt } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, u64::from(index));
                let mut out = vec![0u8; plain.len() + 16];
                out[..8].copy_from_slice(head);
                cipher.encrypt(&iv, body, &mut out[8..]).ok()?;
                out.truncate(plain.len());
                out.extend_from_slice(&e_and_index);
                let tag_at = out.len();
                out.resize(tag_at + Aes128CmSha1_80::HMAC_TAG_LEN, 0);
                Aes128CmSha1_80::rtcp_hmac(|k, p| hmac.sha1_hmac(k, p), auth, &mut out, tag_at);
                Some(out)
            }
            Direction::Gcm128 { cipher, salt } => {
                let iv = AeadAes128Gcm::rtcp_iv(*salt, ssrc, index);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(head);
                aad[8..].copy_from_slice(&e_and_index);
                let mut out = vec![0u8; plain.len() + AeadAes128Gcm::TAG_LEN];
                out[..8].copy_from_slice(head);
                cipher.encrypt(&iv, &aad, body, &mut out[8..]).ok()?;
                out.extend_from_slice(&e_and_index);
                Some(out)
            }
            Direction::Gcm256 { cipher, salt } => {
                let iv = AeadAes256Gcm::rtcp_iv(*salt, ssrc, index);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(head);
                aad[8..].copy_from_slice(&e_and_index);
                let mut out = vec![0u8; plain.len() + AeadAes256Gcm::TAG_LEN];
                out[..8].copy_from_slice(head);
                cipher.encrypt(&iv, &aad, body, &mut out[8..]).ok()?;
                out.extend_from_slice(&e_and_index);
                Some(out)
            }
        }
    }
}
