//! The cluster secret: what makes a node a member, and the keys every node derives from it.
//!
//! Every node of a cluster reads the same secret (a file an operator distributes, like a
//! NATS credential). Nothing is ever sent under the secret itself: each use has its own key,
//! derived with HKDF-SHA256, so that a key leaked from one use (say, the join-token key in a
//! memory dump) does not forge messages of another.

use std::path::{Path, PathBuf};

use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::hmac;

/// The shortest secret accepted: 32 bytes, as `openssl rand -hex 32` prints 64.
pub const MIN_SECRET_BYTES: usize = 32;

/// Fixed salt: separates these derivations from any other use of the same bytes.
const SALT: &[u8] = b"meet-cluster-v1";

/// Why a secret was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading the cluster secret {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the cluster secret {0} is {1} bytes; it must be at least {MIN_SECRET_BYTES}")]
    TooShort(PathBuf, usize),
}

/// The secret shared by every node of one cluster.
#[derive(Clone)]
pub struct ClusterSecret {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("ClusterSecret { .. }")
    }
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl ClusterSecret {
    /// Reads the secret from a file; surrounding whitespace (a final newline) is not part of
    /// it.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let bytes = std::fs::read(path).map_err(|e| SecretError::Io(path.to_path_buf(), e))?;
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(path.to_path_buf(), trimmed.len()));
        }
        Ok(Self {
            bytes: trimmed.to_vec(),
        })
    }

    /// A secret from bytes (tests); `None` when shorter than [`MIN_SECRET_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= MIN_SECRET_BYTES).then(|| Self {
            bytes: bytes.to_vec(),
        })
    }

    /// 32 bytes for one purpose, named by `label`.
    fn derive(&self, label: &[u8]) -> [u8; 32] {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(&self.bytes);
        let mut out = [0u8; 32];
        let info = [label];
        // Expanding 32 bytes from SHA-256 cannot fail (the limit is 255 blocks).
        if let Ok(okm) = prk.expand(&info, Len(out.len())) {
            let _ = okm.fill(&mut out);
        }
        out
    }

    /// The Ed25519 seed of the join-token key: a link issued by one node verifies on every
    /// other.
    pub fn join_token_seed(&self) -> [u8; 32] {
        self.derive(b"join-token ed25519 seed")
    }

    /// The key of the recordings' file tickets: a ticket issued by one node opens the file on
    /// every other.
    pub fn file_ticket_seed(&self) -> [u8; 32] {
        self.derive(b"file ticket hmac")
    }

    /// The AES-256 key of the relays node `from` sends node `to` over their media link. It
    /// is one direction's, and it changes whenever either node starts again (`*_epoch`: a
    /// random value each draws at start): a sender numbers its datagrams from zero under a
    /// key, so no nonce repeats, and a receiver that starts again cannot be fed datagrams
    /// recorded before.
    pub fn link_key(&self, from: &str, from_epoch: &str, to: &str, to_epoch: &str) -> [u8; 32] {
        let mut label = b"media link aes-256-gcm\0".to_vec();
        for part in [from, from_epoch, to, to_epoch] {
            label.extend_from_slice(part.as_bytes());
            label.push(0);
        }
        self.derive(&label)
    }

    /// The key that authenticates every message a node sends over NATS.
    pub fn message_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.derive(b"nats message hmac"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_direction_and_each_start_of_a_link_has_its_own_key() {
        let secret = ClusterSecret::from_bytes(&[3; 32]).expect("long enough");
        let ab = secret.link_key("a", "1", "b", "1");
        assert_eq!(ab, secret.link_key("a", "1", "b", "1"));
        assert_ne!(ab, secret.link_key("b", "1", "a", "1"));
        assert_ne!(ab, secret.link_key("a", "2", "b", "1"));
        assert_ne!(ab, secret.link_key("a", "1", "b", "2"));
        // Fields cannot slide into each other.
        assert_ne!(
            secret.link_key("a1", "", "b", "1"),
            secret.link_key("a", "1", "b", "1")
        );
    }

    #[test]
    fn a_short_secret_is_refused_and_whitespace_is_not_part_of_it() {
        let dir = std::env::temp_dir().join(format!("meet-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let short = dir.join("short");
        std::fs::write(&short, format!("{}\n", "a".repeat(31))).expect("write");
        assert!(matches!(
            ClusterSecret::from_file(&short),
            Err(SecretError::TooShort(_, 31))
        ));
        let good = dir.join("good");
        std::fs::write(&good, format!("  {}\n", "b".repeat(40))).expect("write");
        let secret = ClusterSecret::from_file(&good).expect("secret");
        let same = ClusterSecret::from_bytes("b".repeat(40).as_bytes()).expect("secret");
        assert_eq!(secret.join_token_seed(), same.join_token_seed());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_use_has_its_own_key_and_each_secret_its_own_keys() {
        let a = ClusterSecret::from_bytes(&[1u8; 32]).expect("secret");
        let b = ClusterSecret::from_bytes(&[2u8; 32]).expect("secret");
        assert_ne!(a.join_token_seed(), b.join_token_seed());
        assert_ne!(a.join_token_seed(), a.derive(b"nats message hmac"));
        assert_eq!(a.join_token_seed(), a.join_token_seed());
    }
}
