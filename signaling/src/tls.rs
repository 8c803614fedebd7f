//! The HTTPS certificate: a configured one, or a self-signed one generated on first start and
//! kept in the data directory so that browsers only have to accept it once.

use std::path::{Path, PathBuf};

/// Certificate errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading or writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate chain and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    std::fs::write(path, data).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Loads the configured certificate, or the self-signed one from `data_dir`, creating it on
/// first use for `localhost` and the loopback addresses plus `extra_names`.
pub fn load_or_generate(
    configured: Option<(&Path, &Path)>,
    data_dir: &Path,
    extra_names: &[String],
) -> Result<PemPair, TlsError> {
    if let Some((cert, key)) = configured {
        return Ok(PemPair {
            cert: read(cert)?,
            key: read(key)?,
        });
    }
    let dir = data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok(PemPair {
            cert: read(&cert_path)?,
            key: read(&key_path)?,
        });
    }
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(extra_names.iter().cloned());
    let certified = rcgen::generate_simple_self_signed(names)?;
    let pair = PemPair {
        cert: certified.cert.pem().into_bytes(),
        key: certified.signing_key.serialize_pem().into_bytes(),
    };
    write(&key_path, &pair.key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600));
    }
    write(&cert_path, &pair.cert)?;
    Ok(pair)
}
