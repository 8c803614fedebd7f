//! Join tokens: the signed proof that a person or site was invited to a meeting.
//!
//! A token is a JWT signed with the server's Ed25519 key. One algorithm is accepted (`EdDSA`),
//! so `alg: none` and HMAC-with-the-public-key confusion cannot be tried. The key pair is
//! generated on first start and kept in the data directory, so links survive a restart.
//! Tokens are never logged: [`JoinTokens::verify`] reports why a token failed, not the token.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use protocol::Role;
use serde::{Deserialize, Serialize};

/// The `iss` claim of every join token.
pub const ISSUER: &str = "meet-server";
/// The `aud` claim of every join token.
pub const AUDIENCE: &str = "meet-join";

/// What a join token grants: one invitee, one meeting, one role, for a time window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    pub iss: String,
    pub aud: String,
    /// The invitation id: the identity.
    pub sub: String,
    /// The meeting id, which is the room id.
    pub room: String,
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Seconds since the Unix epoch.
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// The facts a join token is issued for.
#[derive(Debug, Clone)]
pub struct JoinGrant<'a> {
    pub invitation_id: &'a str,
    pub room: &'a str,
    pub name: &'a str,
    pub role: Role,
    pub site: Option<&'a str>,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub expires: i64,
}

/// Why a token was refused. The wording goes to the client; the token itself never appears.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not signed with the expected algorithm")]
    WrongAlgorithm,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is not a join token for this server")]
    WrongAudience,
    #[error("the token is malformed")]
    Malformed,
}

/// Errors loading or creating the signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading or writing the signing key {0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error("the signing key {0} is not an Ed25519 PKCS#8 key")]
    Invalid(std::path::PathBuf),
    #[error("generating the signing key failed")]
    Generate,
    #[error("signing a token failed: {0}")]
    Sign(String),
}

/// Issues and verifies join tokens with one Ed25519 key pair.
pub struct JoinTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("JoinTokens { .. }")
    }
}

const KEY_FILE: &str = "join-ed25519.pk8";

impl JoinTokens {
    /// Loads the key pair from `keys_dir`, generating it on first use.
    pub fn load_or_generate(keys_dir: &Path) -> Result<Self, KeyError> {
        let path = keys_dir.join(KEY_FILE);
        let pkcs8 = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| KeyError::Generate)?;
                std::fs::create_dir_all(keys_dir)
                    .map_err(|e| KeyError::Io(keys_dir.to_path_buf(), e))?;
                write_private(&path, document.as_ref())
                    .map_err(|e| KeyError::Io(path.clone(), e))?;
                document.as_ref().to_vec()
            }
            Err(err) => return Err(KeyError::Io(path, err)),
        };
        Self::from_pkcs8(&pkcs8).ok_or(KeyError::Invalid(path))
    }

    /// A key pair from a PKCS#8 document; `None` when it is not an Ed25519 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Option<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).ok()?;
        Some(Self {
            encoding: EncodingKey::from_ed_der(pkcs8),
            decoding: DecodingKey::from_ed_der(pair.public_key().as_ref()),
        })
    }

    /// The key pair of an Ed25519 seed: every node of a cluster derives the same one from
    /// the cluster secret, so that each verifies the links the others issue.
    pub fn from_seed(seed: &[u8; 32]) -> Option<Self> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
        Self::from_pkcs8(pair.to_pkcs8().ok()?.as_ref())
    }

    /// A fresh key pair that lives only in memory (tests).
    pub fn ephemeral() -> Result<Self, KeyError> {
        let document =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(document.as_ref()).ok_or(KeyError::Generate)
    }

    /// Signs a join token for `grant`, issued at `now` (seconds since the epoch).
    pub fn issue(&self, grant: &JoinGrant<'_>, now: i64) -> Result<String, KeyError> {
        let claims = JoinClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: grant.invitation_id.into(),
            room: grant.room.into(),
            name: grant.name.into(),
            role: grant.role,
            site: grant.site.map(str::to_string),
            iat: now,
            nbf: grant.not_before,
            exp: grant.expires,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Checks the signature, algorithm, issuer, audience and validity window of `token`.
    /// Whether the invitation still stands is the caller's question (it needs storage).
    pub fn verify(&self, token: &str) -> Result<JoinClaims, TokenError> {
        // The header is read first only to name a wrong algorithm clearly; the validation
        // below accepts EdDSA alone whatever the header says.
        match jsonwebtoken::decode_header(token) {
            Ok(header) if header.alg != Algorithm::EdDSA => return Err(TokenError::WrongAlgorithm),
            Ok(_) => {}
            Err(_) => return Err(TokenError::Malformed),
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        jsonwebtoken::decode::<JoinClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                match err.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                    ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                        TokenError::WrongAudience
                    }
                    _ => TokenError::Malformed,
                }
            })
    }
}

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(now: i64) -> JoinGrant<'static> {
        JoinGrant {
            invitation_id: "inv1",
            room: "room1",
            name: "Xã Tân Lập",
            role: Role::Participant,
            site: Some("site1"),
            not_before: now - 60,
            expires: now + 3600,
        }
    }

    #[test]
    fn a_token_round_trips() {
        let tokens = JoinTokens::ephemeral().expect("key");
        let now = unix_seconds();
        let token = tokens.issue(&grant(now), now).expect("signed");
        let claims = tokens.verify(&token).expect("valid");
        assert_eq!(claims.sub, "inv1");
        assert_eq!(claims.room, "room1");
        assert_eq!(claims.role, Role::Participant);
        assert_eq!(claims.site.as_deref(), Some("site1"));
    }

    #[test]
    fn times_are_enforced() {
        let tokens = JoinTokens::ephemeral().expect("key");
        let now = unix_seconds();
        let mut expired = grant(now);
        expired.not_before = now - 7200;
        expired.expires = now - 3600;
        let token = tokens.issue(&expired, now - 7200).expect("signed");
        assert_eq!(tokens.verify(&token), Err(TokenError::Expired));
        let mut early = grant(now);
        early.not_before = now + 3600;
        early.expires = now + 7200;
        let token = tokens.issue(&early, now).expect("signed");
        assert_eq!(tokens.verify(&token), Err(TokenError::NotYetValid));
    }

    #[test]
    fn another_key_or_a_tampered_token_is_refused() {
        let tokens = JoinTokens::ephemeral().expect("key");
        let other = JoinTokens::ephemeral().expect("key");
        let now = unix_seconds();
        let token = other.issue(&grant(now), now).expect("signed");
        assert_eq!(tokens.verify(&token), Err(TokenError::BadSignature));
        // Change the role in the payload and keep the signature.
        let token = tokens.issue(&grant(now), now).expect("signed");
        let parts: Vec<&str> = token.split('.').collect();
        let payload = String::from_utf8(base64_url_decode(parts[1]).expect("payload is base64url"))
            .expect("utf-8")
            .replace("\"participant\"", "\"host\"");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            base64_url_encode(payload.as_bytes()),
            parts[2]
        );
        assert_eq!(tokens.verify(&tampered), Err(TokenError::BadSignature));
    }

    #[test]
    fn alg_none_and_hmac_are_refused() {
        let tokens = JoinTokens::ephemeral().expect("key");
        let now = unix_seconds();
        let token = tokens.issue(&grant(now), now).expect("signed");
        let parts: Vec<&str> = token.split('.').collect();
        let none = format!(
            "{}.{}.",
            base64_url_encode(br#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert_eq!(tokens.verify(&none), Err(TokenError::Malformed));
        let hs = format!(
            "{}.{}.{}",
            base64_url_encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(tokens.verify(&hs), Err(TokenError::WrongAlgorithm));
        assert_eq!(tokens.verify("not a token"), Err(TokenError::Malformed));
        assert_eq!(tokens.verify(""), Err(TokenError::Malformed));
    }

    #[test]
    fn the_key_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("meet-keys-{}", std::process::id()));
        let first = JoinTokens::load_or_generate(&dir).expect("generated");
        let now = unix_seconds();
        let token = first.issue(&grant(now), now).expect("signed");
        let second = JoinTokens::load_or_generate(&dir).expect("loaded");
        assert!(second.verify(&token).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    fn base64_url_encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    fn base64_url_decode(text: &str) -> Option<Vec<u8>> {
        let mut bits = 0u32;
        let mut count = 0;
        let mut out = Vec::new();
        for c in text.bytes() {
            let v = ALPHABET.iter().position(|a| *a == c)? as u32;
            bits = (bits << 6) | v;
            count += 6;
            if count >= 8 {
                count -= 8;
                out.push((bits >> count) as u8);
                bits &= (1 << count) - 1;
            }
        }
        Some(out)
    }
}
