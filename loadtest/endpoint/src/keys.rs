//! The end-to-end key exchange of `docs/e2ee.md` ("Keys"), spoken exactly as the web client
//! speaks it (`web-client/e2ee.js`, `web-client/keywrap.js`), so that bots and browsers hand
//! each other their media keys through the server's `e2ee_keys` relay.
//!
//! Each endpoint has a device key pair (ECDH P-256) whose public half it announces at `join`.
//! A receiver asks each sender it sees for its key (`{"v":1,"t":"req","pub":…}`); the sender
//! answers with its base key wrapped for that receiver (`{"v":1,"t":"key","kid":…,"iv":…,
//! "ct":…}`): AES-128-GCM under `HKDF-SHA256(ECDH(own private, their public), salt = "", info
//! = "meet e2ee wrap v1")`, bound by its AAD to the room, the pair and the KID. A newcomer
//! gets the next generation of the sender's key (the ratchet: it cannot read what was sent
//! before it came); a departure makes a fresh random key in the next epoch, wrapped for
//! everyone who remains and used once it had time to arrive.
//!
//! [`KeyExchange`] is sans-IO like the endpoint: it owns no socket and no clock. Messages from
//! the server go in through `handle_*` with the time they arrived, messages to send and keys
//! to install come out through [`KeyExchange::poll_message`] and [`KeyExchange::poll_event`],
//! and [`KeyExchange::poll_timeout`] says when [`KeyExchange::handle_timeout`] is due. When and
//! how often it answers, rekeys and packs deliveries is its [`KeyPolicy`], the same as the
//! browser's.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use protocol::{ClientMessage, E2eeKeyDelivery, ParticipantId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sframe::{self, BASE_KEY_LEN, BaseKey};

/// HKDF info of the key that wraps media keys between two device keys.
const WRAP_INFO: &[u8] = b"meet e2ee wrap v1";
/// Length of a wrapped key's IV.
const IV_LEN: usize = 12;
/// Generations in one epoch (`KID = epoch × 65536 + generation`).
const GENERATIONS: u32 = 65_536;
/// Longest public key a request may carry (the browser ignores longer ones).
const MAX_PUBLIC_KEY: usize = protocol::MAX_E2EE_PUBLIC_KEY;
/// Rekeys a sender remembers for its measurements.
const MAX_REKEY_RECORDS: usize = 4_096;
/// How often a receiver asks a sender again before giving up.
const MAX_REQUESTS: u32 = 10;

/// base64url as the browser writes it (`toBase64Url`: no padding) and reads it
/// (`fromBase64Url`: with or without padding). Written out here rather than taken from a
/// crate: a dozen lines, and the fuzz workspace's lock file stays as it is.
mod base64url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
            }
        }
        out
    }

    /// `None` for a character outside the alphabet or a length no encoding has.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.trim_end_matches('=');
        if text.len() % 4 == 1 {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        for chunk in text.as_bytes().chunks(4) {
            let mut n = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                let value = ALPHABET.iter().position(|a| a == c)? as u32;
                n |= value << (18 - 6 * i);
            }
            for i in 0..chunk.len() - 1 {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        Some(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("no random bytes")]
    Random,
    #[error("the crypto library refused the operation")]
    Crypto,
    #[error("not a P-256 public key")]
    BadPublicKey,
    #[error("the message is not a key message of this protocol")]
    BadBlob,
    #[error("the wrapped key does not open (another pair, room or KID, or a forgery)")]
    Unwrap,
}

/// A device key pair: ECDH P-256, the private half never leaving this value.
pub struct DeviceKey {
    private: PrivateKey,
    public: String,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log.
        f.debug_struct("DeviceKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A fresh random key pair.
    pub fn generate() -> Result<Self, KeyError> {
        let private = PrivateKey::generate(&ECDH_P256).map_err(|_| KeyError::Random)?;
        Self::from_private(private)
    }

    /// The key pair of a known private scalar (32 bytes, big-endian): test vectors only.
    pub fn from_private_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let private =
            PrivateKey::from_private_key(&ECDH_P256, bytes).map_err(|_| KeyError::Crypto)?;
        Self::from_private(private)
    }

    fn from_private(private: PrivateKey) -> Result<Self, KeyError> {
        let public = private.compute_public_key().map_err(|_| KeyError::Crypto)?;
        Ok(Self {
            public: base64url::encode(public.as_ref()),
            private,
        })
    }

    /// The public key as announced at `join`: the uncompressed point, base64url.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The key that wraps media keys between this device and the one whose public key is
    /// `their_public` (base64url). Both ends derive the same key.
    pub fn wrap_key(&self, their_public: &str) -> Result<WrapKey, KeyError> {
        if their_public.len() > MAX_PUBLIC_KEY {
            return Err(KeyError::BadPublicKey);
        }
        let point = base64url::decode(their_public).ok_or(KeyError::BadPublicKey)?;
        let key = agreement::agree(
            &self.private,
            UnparsedPublicKey::new(&ECDH_P256, &point),
            KeyError::BadPublicKey,
            |shared| {
                let prk = Salt::new(HKDF_SHA256, &[]).extract(shared);
                let mut key = [0; 16];
                prk.expand(&[WRAP_INFO], Len(key.len()))
                    .and_then(|okm| okm.fill(&mut key))
                    .map_err(|_| KeyError::Crypto)?;
                Ok(key)
            },
        )?;
        let unbound = UnboundKey::new(&AES_128_GCM, &key).map_err(|_| KeyError::Crypto)?;
        Ok(WrapKey(LessSafeKey::new(unbound)))
    }
}

/// An output length for HKDF-Expand.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The AES-128-GCM key shared by two device keys.
pub struct WrapKey(LessSafeKey);

impl std::fmt::Debug for WrapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrapKey(..)")
    }
}

/// What a wrapped key is bound to: `meet e2ee key|room|from|to|kid`.
pub fn wrap_aad(room: &str, from: ParticipantId, to: ParticipantId, kid: u64) -> String {
    format!("meet e2ee key|{room}|{}|{}|{kid}", from.0, to.0)
}

/// A key message as it travels in a blob (field order as the browser writes it).
#[derive(Debug, Serialize, Deserialize)]
struct KeyBlob<'a> {
    v: u32,
    t: &'a str,
    kid: u64,
    iv: &'a str,
    ct: &'a str,
}

#[derive(Debug, Serialize)]
struct RequestBlob<'a> {
    v: u32,
    t: &'a str,
    #[serde(rename = "pub")]
    public: &'a str,
}

/// Any blob, read leniently as the browser reads it: other fields are ignored.
#[derive(Debug, Deserialize)]
struct AnyBlob {
    v: serde_json::Value,
    t: Option<String>,
    kid: Option<serde_json::Value>,
    iv: Option<String>,
    ct: Option<String>,
    #[serde(rename = "pub")]
    public: Option<serde_json::Value>,
}

/// A blob relayed from another participant, once read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blob {
    /// A request for our key, carrying the requester's public key.
    Request { public: String },
    /// A wrapped key.
    Key { kid: u64, iv: String, ct: String },
}

/// The largest KID the browser accepts (`Number.isSafeInteger`).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

impl Blob {
    /// Reads a blob; `None` for anything the browser would ignore too.
    pub fn parse(blob: &str) -> Option<Self> {
        let any: AnyBlob = serde_json::from_str(blob).ok()?;
        if any.v.as_u64() != Some(1) {
            return None;
        }
        match any.t.as_deref()? {
            "req" => {
                let public = any.public?.as_str()?.to_string();
                (public.len() <= MAX_PUBLIC_KEY).then_some(Blob::Request { public })
            }
            "key" => {
                let kid = any.kid?.as_u64().filter(|k| *k <= MAX_SAFE_INTEGER)?;
                Some(Blob::Key {
                    kid,
                    iv: any.iv?,
                    ct: any.ct?,
                })
            }
            _ => None,
        }
    }
}

/// A request for a sender's key, carrying our public key.
pub fn request_blob(public: &str) -> String {
    let blob = RequestBlob {
        v: 1,
        t: "req",
        public,
    };
    // Serializing a struct of strings cannot fail.
    serde_json::to_string(&blob).unwrap_or_default()
}

impl WrapKey {
    /// The blob that carries `base` under `kid`, bound to `aad` ([`wrap_aad`]), with `iv`.
    pub fn wrap_with_iv(
        &self,
        aad: &str,
        kid: u64,
        base: &BaseKey,
        iv: [u8; IV_LEN],
    ) -> Result<String, KeyError> {
        let mut sealed = base.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(aad.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| KeyError::Crypto)?;
        let blob = KeyBlob {
            v: 1,
            t: "key",
            kid,
            iv: &base64url::encode(&iv),
            ct: &base64url::encode(&sealed),
        };
        serde_json::to_string(&blob).map_err(|_| KeyError::Crypto)
    }

    /// [`WrapKey::wrap_with_iv`] with a random IV, as every real message has.
    pub fn wrap(&self, aad: &str, kid: u64, base: &BaseKey) -> Result<String, KeyError> {
        let mut iv = [0; IV_LEN];
        aws_lc_rs::rand::fill(&mut iv).map_err(|_| KeyError::Random)?;
        self.wrap_with_iv(aad, kid, base, iv)
    }

    /// The base key a key blob carries, if it opens under `aad`.
    pub fn unwrap(&self, aad: &str, iv: &str, ct: &str) -> Result<BaseKey, KeyError> {
        let iv: [u8; IV_LEN] = base64url::decode(iv)
            .and_then(|iv| iv.try_into().ok())
            .ok_or(KeyError::Unwrap)?;
        let mut sealed = base64url::decode(ct).ok_or(KeyError::Unwrap)?;
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(iv),
                Aad::from(aad.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| KeyError::Unwrap)?;
        plain.try_into().map_err(|_| KeyError::Unwrap)
    }
}

/// When a key exchange answers, rekeys and asks again: the web client's choices
/// ([`KeyPolicy::BROWSER`]), or shorter ones in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Requests arriving less than this after an answer went out wait, and are answered
    /// together with one ratchet step (zero: each is answered at once, with its own step).
    pub answer_window: Duration,
    /// How long after a departure the new key is made, so that departures in a burst make
    /// one key.
    pub rekey_after_departure: Duration,
    /// Least time between two departure rekeys: departures meanwhile wait for the next one.
    pub rekey_interval: Duration,
    /// How long a new epoch's key travels to receivers before the sender uses it.
    pub rekey_delay: Duration,
    /// Deliveries per `e2ee_keys` message.
    pub deliveries_per_message: usize,
    /// A receiver without a sender's key asks again this long after asking.
    pub request_retry: Option<Duration>,
}

impl KeyPolicy {
    /// What `web-client/e2ee.js` does (docs/e2ee.md, "At the size of the national meeting"):
    /// requests answered together at most every 100 ms, departures answered by one new key
    /// at most every 2 s, 256 deliveries per message, and a request asked again after 3 s.
    pub const BROWSER: KeyPolicy = KeyPolicy {
        answer_window: Duration::from_millis(100),
        rekey_after_departure: Duration::from_millis(100),
        rekey_interval: Duration::from_secs(2),
        rekey_delay: Duration::from_millis(1_000),
        deliveries_per_message: protocol::MAX_E2EE_DELIVERIES,
        request_retry: Some(Duration::from_secs(3)),
    };
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self::BROWSER
    }
}

/// What the endpoint must do with keys.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// Seal from now on with `base` under `kid`.
    SendWith { kid: u64, base: BaseKey },
    /// `sender`'s key for `kid`: add it to that sender's ring.
    Received {
        sender: ParticipantId,
        kid: u64,
        base: BaseKey,
    },
    /// `sender` left: forget its keys.
    Forget { sender: ParticipantId },
}

impl std::fmt::Debug for KeyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach a log or a panic message.
        match self {
            KeyEvent::SendWith { kid, .. } => write!(f, "SendWith {{ kid: {kid:#x} }}"),
            KeyEvent::Received { sender, kid, .. } => {
                write!(f, "Received {{ sender: {sender}, kid: {kid:#x} }}")
            }
            KeyEvent::Forget { sender } => write!(f, "Forget {{ sender: {sender} }}"),
        }
    }
}

/// One departure rekey of a sender, for the load test's measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyRecord {
    pub epoch: u32,
    /// When the new key was made and wrapped.
    pub made_at: Instant,
    /// When the sender started sealing with it (`None`: not yet, or replaced before use).
    pub used_at: Option<Instant>,
    /// How many recipients it was wrapped for.
    pub wraps: usize,
    /// The departures it answers.
    pub covers: Vec<ParticipantId>,
}

/// Counters of one key exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStats {
    /// Requests for others' keys sent (first asks and asks again).
    pub requests_sent: u64,
    /// Others' keys received that opened, and ones that did not.
    pub keys_received: u64,
    pub keys_refused: u64,
    /// Requests for our key answered, ratchet steps and departure rekeys made.
    pub requests_answered: u64,
    pub ratchets: u64,
    pub rekeys: u64,
    /// Keys wrapped for recipients (one AES-GCM each) and derivations of a wrap key
    /// (one ECDH and one HKDF each).
    pub wraps: u64,
    pub wrap_keys_derived: u64,
    /// `e2ee_keys` messages made, and the deliveries they carry.
    pub messages: u64,
    pub deliveries: u64,
}

/// A sender key: generation `generation` of epoch `epoch`.
#[derive(Clone)]
struct SenderKey {
    epoch: u32,
    generation: u16,
    raw: BaseKey,
}

impl SenderKey {
    fn kid(&self) -> u64 {
        sframe::kid(self.epoch, self.generation)
    }

    fn random(epoch: u32) -> Result<Self, KeyError> {
        let mut raw = [0; BASE_KEY_LEN];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| KeyError::Random)?;
        Ok(Self {
            epoch,
            generation: 0,
            raw,
        })
    }
}

/// A receiver's request to one sender.
#[derive(Debug, Clone, Copy)]
struct Ask {
    at: Instant,
    tries: u32,
    answered: bool,
}

/// One endpoint's side of the key exchange. See the module documentation.
pub struct KeyExchange {
    device: DeviceKey,
    policy: KeyPolicy,
    room: String,
    me: ParticipantId,
    current: Option<SenderKey>,
    /// A new epoch on its way to receivers, and when it is used.
    pending: Option<(SenderKey, Instant)>,
    /// Who holds our key: participant → the public key it was wrapped to.
    recipients: HashMap<ParticipantId, String>,
    /// Wrap keys by public key: one ECDH and HKDF per recipient, not per message.
    wraps: HashMap<String, WrapKey>,
    /// Requests waiting for the next answer.
    requests: Vec<(ParticipantId, String)>,
    answer_due: Option<Instant>,
    last_answer_at: Option<Instant>,
    /// Departures since the last rekey, and when the next rekey is due.
    departed: Vec<ParticipantId>,
    rekey_due: Option<Instant>,
    last_rekey_at: Option<Instant>,
    asked: HashMap<ParticipantId, Ask>,
    /// Requests to send with the next message.
    outgoing_requests: Vec<E2eeKeyDelivery>,
    messages: VecDeque<ClientMessage>,
    events: VecDeque<KeyEvent>,
    stats: KeyStats,
    rekeys: VecDeque<RekeyRecord>,
}

impl std::fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyExchange")
            .field("device", &self.device)
            .field("me", &self.me)
            .field("kid", &self.current.as_ref().map(SenderKey::kid))
            .field("recipients", &self.recipients.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl KeyExchange {
    pub fn new(device: DeviceKey, policy: KeyPolicy) -> Self {
        Self {
            device,
            policy,
            room: String::new(),
            me: ParticipantId(0),
            current: None,
            pending: None,
            recipients: HashMap::new(),
            wraps: HashMap::new(),
            requests: Vec::new(),
            answer_due: None,
            last_answer_at: None,
            departed: Vec::new(),
            rekey_due: None,
            last_rekey_at: None,
            asked: HashMap::new(),
            outgoing_requests: Vec::new(),
            messages: VecDeque::new(),
            events: VecDeque::new(),
            stats: KeyStats::default(),
            rekeys: VecDeque::new(),
        }
    }

    /// The public key to announce at `join`.
    pub fn public_key(&self) -> &str {
        self.device.public_key()
    }

    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    /// A (re)joined session: who we are in which room. Everyone is asked again.
    pub fn joined(&mut self, room: &str, me: ParticipantId) {
        self.room = room.to_string();
        self.me = me;
        self.asked.clear();
    }

    /// Makes our first sender key, if there is none yet, and says to seal with it.
    pub fn start_sending(&mut self) -> Result<(), KeyError> {
        if self.current.is_none() {
            self.use_key(SenderKey::random(0)?);
        }
        Ok(())
    }

    /// The KID we seal under now.
    pub fn current_kid(&self) -> Option<u64> {
        self.current.as_ref().map(SenderKey::kid)
    }

    /// Asks `participant` (whose public key the roster shows) for its key, once per session.
    pub fn want(&mut self, now: Instant, participant: ParticipantId, public: Option<&str>) {
        if public.is_none() || participant == self.me || self.asked.contains_key(&participant) {
            return;
        }
        self.asked.insert(
            participant,
            Ask {
                at: now,
                tries: 1,
                answered: false,
            },
        );
        self.queue_request(participant);
        self.flush_requests();
    }

    fn queue_request(&mut self, participant: ParticipantId) {
        self.stats.requests_sent += 1;
        self.outgoing_requests.push(E2eeKeyDelivery {
            participant_id: participant,
            blob: request_blob(self.device.public_key()),
        });
    }

    fn flush_requests(&mut self) {
        let requests = std::mem::take(&mut self.outgoing_requests);
        self.flush(requests);
    }

    /// A blob relayed from `from`; `from_public` is the key the roster shows for it (none
    /// for a participant we cannot see, such as a viewer asking for our key).
    pub fn handle_blob(
        &mut self,
        now: Instant,
        from: ParticipantId,
        from_public: Option<&str>,
        blob: &str,
    ) -> Result<(), KeyError> {
        let result = match Blob::parse(blob).ok_or(KeyError::BadBlob)? {
            Blob::Request { public } => {
                // A participant we can see is wrapped to with the key the roster shows.
                let public = from_public.map_or(public, str::to_string);
                self.requests.push((from, public));
                if self.answer_due.is_none() {
                    let earliest = self
                        .last_answer_at
                        .map_or(now, |at| at + self.policy.answer_window);
                    self.answer_due = Some(earliest.max(now));
                }
                Ok(())
            }
            Blob::Key { kid, iv, ct } => self.handle_key(from, from_public, kid, &iv, &ct),
        };
        self.handle_timeout(now)?;
        result
    }

    fn handle_key(
        &mut self,
        from: ParticipantId,
        from_public: Option<&str>,
        kid: u64,
        iv: &str,
        ct: &str,
    ) -> Result<(), KeyError> {
        let Some(public) = from_public else {
            // Only a sender we can see, with the key the server showed us, is believed.
            self.stats.keys_refused += 1;
            return Err(KeyError::BadPublicKey);
        };
        let aad = wrap_aad(&self.room, from, self.me, kid);
        let opened = self
            .wrap_key(public)
            .and_then(|wrap| wrap.unwrap(&aad, iv, ct));
        let base = match opened {
            Ok(base) => base,
            Err(err) => {
                self.stats.keys_refused += 1;
                return Err(err);
            }
        };
        self.stats.keys_received += 1;
        if let Some(ask) = self.asked.get_mut(&from) {
            ask.answered = true;
        }
        self.events.push_back(KeyEvent::Received {
            sender: from,
            kid,
            base,
        });
        Ok(())
    }

    /// `participant` left (or can no longer be seen): its keys are forgotten, and ours is
    /// replaced if it held it.
    pub fn participant_left(
        &mut self,
        now: Instant,
        participant: ParticipantId,
    ) -> Result<(), KeyError> {
        self.asked.remove(&participant);
        self.requests.retain(|(p, _)| *p != participant);
        self.events.push_back(KeyEvent::Forget {
            sender: participant,
        });
        if let Some(public) = self.recipients.remove(&participant) {
            if !self.recipients.values().any(|p| *p == public) {
                self.wraps.remove(&public);
            }
            self.departed.push(participant);
            self.rekey_soon(now);
        }
        self.handle_timeout(now)
    }

    fn rekey_soon(&mut self, now: Instant) {
        if self.rekey_due.is_some() || self.current.is_none() {
            return;
        }
        let soonest = now + self.policy.rekey_after_departure;
        let allowed = self
            .last_rekey_at
            .map_or(soonest, |at| at + self.policy.rekey_interval);
        // A key on its way is put in use before the next is made: replacing it first would
        // postpone its use, and departures every second would postpone it for ever.
        let pending = self.pending.as_ref().map_or(soonest, |(_, at)| *at);
        self.rekey_due = Some(soonest.max(allowed).max(pending));
    }

    /// When [`KeyExchange::handle_timeout`] is due next, if anything is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.policy.request_retry.and_then(|after| {
            self.asked
                .values()
                .filter(|a| !a.answered && a.tries < MAX_REQUESTS)
                .map(|a| a.at + after)
                .min()
        });
        [
            self.answer_due,
            self.rekey_due,
            self.pending.as_ref().map(|(_, at)| *at),
            retry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Does what is due at `now`: answers, a rekey, a switch to the new epoch, requests
    /// asked again.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), KeyError> {
        if self.answer_due.is_some_and(|at| at <= now) {
            self.answer_due = None;
            self.answer(now)?;
        }
        if let Some((_, at)) = &self.pending
            && *at <= now
            && let Some((next, _)) = self.pending.take()
        {
            let epoch = next.epoch;
            self.use_key(next);
            if let Some(record) = self.rekeys.iter_mut().rev().find(|r| r.epoch == epoch) {
                record.used_at = Some(now);
            }
        }
        if self.rekey_due.is_some_and(|at| at <= now) {
            self.rekey_due = None;
            self.rekey(now)?;
        }
        if let Some(after) = self.policy.request_retry {
            let mut again = Vec::new();
            for (participant, ask) in &mut self.asked {
                if !ask.answered && ask.tries < MAX_REQUESTS && ask.at + after <= now {
                    ask.at = now;
                    ask.tries += 1;
                    again.push(*participant);
                }
            }
            again.sort();
            for participant in again {
                self.queue_request(participant);
            }
            self.flush_requests();
        }
        Ok(())
    }

    /// Answers the requests waiting: newcomers get the next generation (one step for all of
    /// them), which everyone who holds this one derives by themselves.
    fn answer(&mut self, now: Instant) -> Result<(), KeyError> {
        let requests = std::mem::take(&mut self.requests);
        if requests.is_empty() {
            return Ok(());
        }
        self.last_answer_at = Some(now);
        if self.current.is_none() {
            self.use_key(SenderKey::random(0)?);
        }
        let mut answered: Vec<ParticipantId> = Vec::with_capacity(requests.len());
        let mut newcomer = false;
        for (from, public) in requests {
            // A key that is not a P-256 point is not answered; nothing else changes.
            if self.wrap_key(&public).is_err() {
                continue;
            }
            let known = self.recipients.insert(from, public.clone());
            newcomer |= known.as_ref() != Some(&public);
            // A recipient that changed keys leaves no wrap key behind: asking again and again
            // with new keys must not grow the cache.
            if let Some(old) = known.filter(|old| *old != public)
                && !self.recipients.values().any(|p| *p == old)
            {
                self.wraps.remove(&old);
            }
            if !answered.contains(&from) {
                answered.push(from);
            }
        }
        if newcomer && let Some(current) = &self.current {
            let next = if u32::from(current.generation) + 1 < GENERATIONS {
                SenderKey {
                    epoch: current.epoch,
                    generation: current.generation + 1,
                    raw: sframe::ratchet(&current.raw),
                }
            } else {
                SenderKey::random(current.epoch + 1)?
            };
            self.stats.ratchets += 1;
            self.use_key(next);
        }
        let mut deliveries = Vec::with_capacity(answered.len() * 2);
        for to in answered {
            self.stats.requests_answered += 1;
            if let Some(current) = self.current.clone() {
                deliveries.push(self.wrap_for(to, &current)?);
            }
            if let Some((pending, _)) = self.pending.clone() {
                deliveries.push(self.wrap_for(to, &pending)?);
            }
        }
        self.flush(deliveries);
        Ok(())
    }

    /// A fresh key in the next epoch for everyone who remains, used once it had time to
    /// arrive. The departed never receive it.
    fn rekey(&mut self, now: Instant) -> Result<(), KeyError> {
        let Some(current) = &self.current else {
            return Ok(());
        };
        let epoch = self
            .pending
            .as_ref()
            .map_or(current.epoch, |(p, _)| p.epoch)
            + 1;
        let next = SenderKey::random(epoch)?;
        let mut recipients: Vec<ParticipantId> = self.recipients.keys().copied().collect();
        recipients.sort();
        let mut deliveries = Vec::with_capacity(recipients.len());
        for to in &recipients {
            deliveries.push(self.wrap_for(*to, &next)?);
        }
        self.flush(deliveries);
        self.stats.rekeys += 1;
        self.last_rekey_at = Some(now);
        self.pending = Some((next, now + self.policy.rekey_delay));
        if self.rekeys.len() >= MAX_REKEY_RECORDS {
            self.rekeys.pop_front();
        }
        self.rekeys.push_back(RekeyRecord {
            epoch,
            made_at: now,
            used_at: None,
            wraps: recipients.len(),
            covers: std::mem::take(&mut self.departed),
        });
        Ok(())
    }

    fn wrap_key(&mut self, public: &str) -> Result<&WrapKey, KeyError> {
        if !self.wraps.contains_key(public) {
            let wrap = self.device.wrap_key(public)?;
            self.stats.wrap_keys_derived += 1;
            self.wraps.insert(public.to_string(), wrap);
        }
        self.wraps.get(public).ok_or(KeyError::Crypto)
    }

    fn wrap_for(
        &mut self,
        to: ParticipantId,
        key: &SenderKey,
    ) -> Result<E2eeKeyDelivery, KeyError> {
        let public = self.recipients.get(&to).cloned().ok_or(KeyError::Crypto)?;
        let aad = wrap_aad(&self.room, self.me, to, key.kid());
        let blob = self.wrap_key(&public)?.wrap(&aad, key.kid(), &key.raw)?;
        self.stats.wraps += 1;
        Ok(E2eeKeyDelivery {
            participant_id: to,
            blob,
        })
    }

    fn use_key(&mut self, key: SenderKey) {
        self.events.push_back(KeyEvent::SendWith {
            kid: key.kid(),
            base: key.raw,
        });
        self.current = Some(key);
    }

    fn flush(&mut self, deliveries: Vec<E2eeKeyDelivery>) {
        let per_message = self
            .policy
            .deliveries_per_message
            .clamp(1, protocol::MAX_E2EE_DELIVERIES);
        let mut deliveries = deliveries.into_iter().peekable();
        while deliveries.peek().is_some() {
            let keys: Vec<E2eeKeyDelivery> = deliveries.by_ref().take(per_message).collect();
            self.stats.messages += 1;
            self.stats.deliveries += keys.len() as u64;
            self.messages.push_back(ClientMessage::E2eeKeys { keys });
        }
    }

    /// The next `e2ee_keys` message to send.
    pub fn poll_message(&mut self) -> Option<ClientMessage> {
        self.messages.pop_front()
    }

    /// The next key for the endpoint to install or forget.
    pub fn poll_event(&mut self) -> Option<KeyEvent> {
        self.events.pop_front()
    }

    pub fn stats(&self) -> &KeyStats {
        &self.stats
    }

    /// Departure rekeys made, oldest first (the latest few thousand).
    pub fn rekeys(&self) -> impl Iterator<Item = &RekeyRecord> {
        self.rekeys.iter()
    }

    /// How many participants hold our key now.
    pub fn recipients(&self) -> usize {
        self.recipients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The vector the browser's own code computed (web-client/tests/wrap-vector.mjs).
    #[derive(Debug, Deserialize)]
    struct Vector {
        room: String,
        sender: u64,
        recipient: u64,
        kid: u64,
        sender_private: String,
        recipient_private: String,
        base_key: String,
        iv: String,
        sender_public: String,
        recipient_public: String,
        request_blob: String,
        key_blob: String,
    }

    fn vector() -> Vector {
        serde_json::from_str(include_str!("../tests/data/e2ee-wrap-vector.json"))
            .expect("the committed vector")
    }

    #[test]
    fn the_browsers_wrap_vector_is_computed_and_opened_byte_for_byte() {
        let v = vector();
        let sender = DeviceKey::from_private_bytes(&hex(&v.sender_private)).expect("key");
        let recipient = DeviceKey::from_private_bytes(&hex(&v.recipient_private)).expect("key");
        assert_eq!(sender.public_key(), v.sender_public);
        assert_eq!(recipient.public_key(), v.recipient_public);
        assert_eq!(request_blob(recipient.public_key()), v.request_blob);

        let base: BaseKey = hex(&v.base_key).try_into().expect("16 bytes");
        let iv: [u8; IV_LEN] = hex(&v.iv).try_into().expect("12 bytes");
        let (from, to) = (ParticipantId(v.sender), ParticipantId(v.recipient));
        let aad = wrap_aad(&v.room, from, to, v.kid);
        let wrapped = sender
            .wrap_key(recipient.public_key())
            .expect("wrap key")
            .wrap_with_iv(&aad, v.kid, &base, iv)
            .expect("wraps");
        assert_eq!(wrapped, v.key_blob);

        let Some(Blob::Key { kid, iv, ct }) = Blob::parse(&v.key_blob) else {
            panic!("the vector's blob is a key");
        };
        assert_eq!(kid, v.kid);
        let unwrap = recipient.wrap_key(sender.public_key()).expect("wrap key");
        assert_eq!(unwrap.unwrap(&aad, &iv, &ct), Ok(base));
        for other in [
            wrap_aad("elsewhere", from, to, kid),
            wrap_aad(&v.room, ParticipantId(v.sender + 1), to, kid),
            wrap_aad(&v.room, from, ParticipantId(v.recipient + 1), kid),
            wrap_aad(&v.room, from, to, kid + 1),
        ] {
            assert_eq!(
                unwrap.unwrap(&other, &iv, &ct),
                Err(KeyError::Unwrap),
                "{other}"
            );
        }
    }

    #[test]
    fn blobs_are_read_as_the_browser_reads_them() {
        let v = vector();
        assert_eq!(
            Blob::parse(&v.request_blob),
            Some(Blob::Request {
                public: v.recipient_public
            })
        );
        for bad in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"v":2,"t":"key","kid":1,"iv":"a","ct":"b"}"#,
            r#"{"v":1,"t":"key","kid":-1,"iv":"a","ct":"b"}"#,
            r#"{"v":1,"t":"key","kid":1.5,"iv":"a","ct":"b"}"#,
            r#"{"v":1,"t":"key","kid":9007199254740992,"iv":"a","ct":"b"}"#,
            r#"{"v":1,"t":"key","kid":1,"iv":7,"ct":"b"}"#,
            r#"{"v":1,"t":"req","pub":7}"#,
            r#"{"v":1,"t":"hello"}"#,
        ] {
            assert_eq!(Blob::parse(bad), None, "{bad}");
        }
        let long = format!(r#"{{"v":1,"t":"req","pub":"{}"}}"#, "a".repeat(257));
        assert_eq!(Blob::parse(&long), None);
        // Unknown fields are ignored, as JSON.parse does.
        assert!(Blob::parse(r#"{"v":1,"t":"req","pub":"x","extra":[1]}"#).is_some());
    }

    #[test]
    fn base64url_round_trips_as_the_browser_writes_and_reads_it() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(97) ^ 0xa5).collect();
            let text = base64url::encode(&bytes);
            assert!(!text.contains(['=', '+', '/']), "{text}");
            assert_eq!(base64url::decode(&text), Some(bytes.clone()), "{text}");
            let padded = format!("{text}{}", "=".repeat((4 - text.len() % 4) % 4));
            assert_eq!(base64url::decode(&padded), Some(bytes), "{padded}");
        }
        assert_eq!(base64url::encode(b"\xfb\xff"), "-_8");
        for bad in ["A", "AAAAA", "a+b/", "ab c", "é"] {
            assert_eq!(base64url::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_keys_and_blobs_are_refused_without_panicking() {
        let device = DeviceKey::generate().expect("key");
        for public in [
            "",
            "!!",
            "AAAA",
            &"A".repeat(300),
            &device.public_key()[1..],
        ] {
            assert!(device.wrap_key(public).is_err(), "{public}");
        }
        let wrap = device.wrap_key(device.public_key()).expect("own key pairs");
        for (iv, ct) in [("", ""), ("!!", "AAAA"), ("oKGio6Slpqeoqaqr", "AAAA")] {
            assert_eq!(wrap.unwrap("aad", iv, ct), Err(KeyError::Unwrap));
        }
    }

    const ROOM: &str = "room";
    const SENDER: ParticipantId = ParticipantId(1);

    /// A sender and receivers wired back to back, delivering every message at once.
    struct World {
        now: Instant,
        parties: Vec<(ParticipantId, KeyExchange)>,
        /// What each receiver installed: (receiver, sender, kid).
        installed: Vec<(ParticipantId, ParticipantId, u64)>,
        sending: HashMap<ParticipantId, u64>,
        /// Deliveries to these are lost on the way.
        lost: std::collections::HashSet<ParticipantId>,
    }

    impl World {
        fn new(policy: KeyPolicy) -> Self {
            let mut sender = KeyExchange::new(DeviceKey::generate().expect("key"), policy);
            sender.joined(ROOM, SENDER);
            sender.start_sending().expect("key");
            let mut world = Self {
                now: Instant::now(),
                parties: vec![(SENDER, sender)],
                installed: Vec::new(),
                sending: HashMap::new(),
                lost: std::collections::HashSet::new(),
            };
            world.pump();
            world
        }

        fn public(&self, id: ParticipantId) -> String {
            self.party(id).public_key().to_string()
        }

        fn party(&self, id: ParticipantId) -> &KeyExchange {
            &self
                .parties
                .iter()
                .find(|(p, _)| *p == id)
                .expect("party")
                .1
        }

        fn party_mut(&mut self, id: ParticipantId) -> &mut KeyExchange {
            &mut self
                .parties
                .iter_mut()
                .find(|(p, _)| *p == id)
                .expect("party")
                .1
        }

        fn join(&mut self, id: ParticipantId, policy: KeyPolicy) {
            let mut receiver = KeyExchange::new(DeviceKey::generate().expect("key"), policy);
            receiver.joined(ROOM, id);
            let public = self.public(SENDER);
            receiver.want(self.now, SENDER, Some(&public));
            self.parties.push((id, receiver));
            self.pump();
        }

        fn leave(&mut self, id: ParticipantId) {
            self.parties.retain(|(p, _)| *p != id);
            let now = self.now;
            self.party_mut(SENDER)
                .participant_left(now, id)
                .expect("departure");
            self.pump();
        }

        /// Moves time on by `by`, waking every party whenever it asked to be, as a driver
        /// does.
        fn advance(&mut self, by: Duration) {
            let until = self.now + by;
            loop {
                let next = self
                    .parties
                    .iter()
                    .filter_map(|(_, p)| p.poll_timeout())
                    .min()
                    .filter(|at| *at <= until);
                let Some(at) = next else {
                    break;
                };
                self.now = self.now.max(at);
                let now = self.now;
                for (_, party) in &mut self.parties {
                    party.handle_timeout(now).expect("timeout");
                }
                self.pump();
            }
            self.now = until;
        }

        /// Delivers every message (the sender's blobs name the roster key of the sender,
        /// which receivers see; requests come from viewers the sender cannot see).
        fn pump(&mut self) {
            loop {
                let mut mail = Vec::new();
                for (id, party) in &mut self.parties {
                    while let Some(ClientMessage::E2eeKeys { keys }) = party.poll_message() {
                        mail.extend(keys.into_iter().map(|k| (*id, k)));
                    }
                    while let Some(event) = party.poll_event() {
                        match event {
                            KeyEvent::SendWith { kid, .. } => {
                                self.sending.insert(*id, kid);
                            }
                            KeyEvent::Received { sender, kid, .. } => {
                                self.installed.push((*id, sender, kid));
                            }
                            KeyEvent::Forget { .. } => {}
                        }
                    }
                }
                if mail.is_empty() {
                    return;
                }
                let sender_public = self.public(SENDER);
                let now = self.now;
                for (from, delivery) in mail {
                    if self.lost.contains(&delivery.participant_id) {
                        continue;
                    }
                    let shown = (from == SENDER).then_some(sender_public.as_str());
                    if let Some((_, to)) = self
                        .parties
                        .iter_mut()
                        .find(|(p, _)| *p == delivery.participant_id)
                    {
                        let _ = to.handle_blob(now, from, shown, &delivery.blob);
                    }
                }
            }
        }

        fn kids_of(&self, receiver: ParticipantId) -> Vec<u64> {
            self.installed
                .iter()
                .filter(|(r, _, _)| *r == receiver)
                .map(|(_, _, kid)| *kid)
                .collect()
        }
    }

    /// Every request answered and every departure rekeyed at once: the protocol's steps one
    /// by one.
    const AT_ONCE: KeyPolicy = KeyPolicy {
        answer_window: Duration::ZERO,
        rekey_after_departure: Duration::ZERO,
        rekey_interval: Duration::ZERO,
        ..KeyPolicy::BROWSER
    };

    #[test]
    fn a_newcomer_gets_the_next_generation_and_a_departure_a_new_epoch() {
        let mut w = World::new(AT_ONCE);
        assert_eq!(w.sending[&SENDER], sframe::kid(0, 0));
        w.join(ParticipantId(2), AT_ONCE);
        assert_eq!(w.kids_of(ParticipantId(2)), vec![sframe::kid(0, 1)]);
        assert_eq!(w.sending[&SENDER], sframe::kid(0, 1));
        w.join(ParticipantId(3), AT_ONCE);
        assert_eq!(w.kids_of(ParticipantId(3)), vec![sframe::kid(0, 2)]);

        w.leave(ParticipantId(3));
        // The new epoch reaches the one who stayed, and is used a second later.
        assert_eq!(
            w.kids_of(ParticipantId(2)),
            vec![sframe::kid(0, 1), sframe::kid(1, 0)]
        );
        assert_eq!(w.sending[&SENDER], sframe::kid(0, 2));
        w.advance(Duration::from_millis(1_000));
        assert_eq!(w.sending[&SENDER], sframe::kid(1, 0));
        let record = w.party(SENDER).rekeys().last().expect("a rekey").clone();
        assert_eq!(record.covers, vec![ParticipantId(3)]);
        assert_eq!(record.wraps, 1);
        // One ECDH and HKDF per recipient, whatever the number of keys wrapped for it.
        let stats = w.party(SENDER).stats();
        assert_eq!((stats.wrap_keys_derived, stats.wraps), (2, 3));
    }

    #[test]
    fn requests_in_one_window_are_answered_together_with_one_ratchet_step() {
        let policy = KeyPolicy::BROWSER;
        let mut w = World::new(policy);
        // The first request after a quiet spell is answered at once.
        w.join(ParticipantId(2), policy);
        assert_eq!(w.kids_of(ParticipantId(2)), vec![sframe::kid(0, 1)]);
        let before = w.party(SENDER).stats().clone();
        // Ten more arrive together: they wait for the window, then get one generation.
        for id in 3..13 {
            w.join(ParticipantId(id), policy);
        }
        assert!(w.kids_of(ParticipantId(3)).is_empty());
        w.advance(policy.answer_window);
        for id in 3..13 {
            assert_eq!(
                w.kids_of(ParticipantId(id)),
                vec![sframe::kid(0, 2)],
                "{id}"
            );
        }
        let after = w.party(SENDER).stats();
        assert_eq!(after.ratchets - before.ratchets, 1);
        assert_eq!(
            after.messages - before.messages,
            1,
            "one message for all ten"
        );
        assert_eq!(after.deliveries - before.deliveries, 10);
    }

    #[test]
    fn departures_within_the_interval_make_one_new_key_for_those_who_remain() {
        let policy = KeyPolicy::BROWSER;
        let mut w = World::new(policy);
        for id in 2..14 {
            w.join(ParticipantId(id), policy);
            w.advance(policy.answer_window);
        }
        w.leave(ParticipantId(3));
        w.advance(policy.rekey_after_departure);
        let first = w.party(SENDER).rekeys().last().expect("a rekey").clone();
        assert_eq!(
            (first.epoch, first.covers.clone()),
            (1, vec![ParticipantId(3)])
        );
        let left_at = w.now;
        // Two more leave within the interval: nothing until it has passed, then one key.
        w.leave(ParticipantId(4));
        w.advance(Duration::from_millis(300));
        w.leave(ParticipantId(5));
        w.advance(Duration::from_millis(1_500));
        assert_eq!(w.party(SENDER).rekeys().count(), 1);
        let messages = w.party(SENDER).stats().messages;
        w.advance(policy.rekey_interval);
        let second = w.party(SENDER).rekeys().last().expect("a rekey").clone();
        assert_eq!(second.epoch, 2);
        assert_eq!(second.covers, vec![ParticipantId(4), ParticipantId(5)]);
        assert_eq!(second.wraps, 9);
        assert_eq!(
            w.party(SENDER).stats().messages - messages,
            1,
            "one message for all"
        );
        for id in (2..14).filter(|id| ![3, 4, 5].contains(id)) {
            assert!(
                w.kids_of(ParticipantId(id)).contains(&sframe::kid(2, 0)),
                "{id}"
            );
        }
        // The sender seals with it within the interval (or the burst's wait) and the delay of
        // a departure it was told of: the bound docs/e2ee.md states.
        w.advance(policy.rekey_delay);
        assert_eq!(w.sending[&SENDER], sframe::kid(2, 0));
        let used = second.made_at + policy.rekey_delay;
        let bound = policy.rekey_interval.max(policy.rekey_after_departure) + policy.rekey_delay;
        assert!(used.duration_since(left_at) <= bound);
    }

    #[test]
    fn departures_every_second_still_see_each_new_key_used() {
        // An interval no longer than the delay: each new key must still be used before the
        // next replaces it.
        let policy = KeyPolicy {
            rekey_interval: Duration::from_millis(1_000),
            ..KeyPolicy::BROWSER
        };
        let mut w = World::new(policy);
        for id in 2..20 {
            w.join(ParticipantId(id), policy);
            w.advance(policy.answer_window);
        }
        for id in 2..12 {
            w.leave(ParticipantId(id));
            w.advance(Duration::from_millis(900));
        }
        let rekeys: Vec<RekeyRecord> = w.party(SENDER).rekeys().cloned().collect();
        assert!(rekeys.len() >= 4, "{rekeys:?}");
        let last_epoch = rekeys.last().map(|r| r.epoch);
        for record in rekeys.iter().filter(|r| Some(r.epoch) != last_epoch) {
            let used = record.used_at.expect("every key but the latest was used");
            assert_eq!(used - record.made_at, policy.rekey_delay, "{record:?}");
        }
    }

    #[test]
    fn a_recipient_asking_with_new_keys_leaves_no_wrap_key_behind() {
        let mut w = World::new(AT_ONCE);
        w.join(ParticipantId(2), AT_ONCE);
        for _ in 0..5 {
            let other = DeviceKey::generate().expect("key");
            let now = w.now;
            let blob = request_blob(other.public_key());
            w.party_mut(SENDER)
                .handle_blob(now, ParticipantId(2), None, &blob)
                .expect("a request");
            w.pump();
        }
        let sender = w.party(SENDER);
        assert_eq!(sender.stats().wrap_keys_derived, 6);
        assert_eq!((sender.recipients.len(), sender.wraps.len()), (1, 1));
    }

    #[test]
    fn a_request_left_unanswered_is_asked_again() {
        let policy = KeyPolicy::BROWSER;
        let retry = policy.request_retry.expect("the browser asks again");
        let mut w = World::new(policy);
        // The server refuses the first answer (its queue for the receiver is full).
        w.lost.insert(ParticipantId(2));
        w.join(ParticipantId(2), policy);
        assert!(w.kids_of(ParticipantId(2)).is_empty());
        w.lost.clear();
        w.advance(retry);
        w.advance(policy.answer_window);
        assert_eq!(w.kids_of(ParticipantId(2)).len(), 1);
        assert_eq!(w.party(ParticipantId(2)).stats().requests_sent, 2);
        // Answered, it asks no more.
        w.advance(retry * 3);
        assert_eq!(w.party(ParticipantId(2)).stats().requests_sent, 2);
    }
}
