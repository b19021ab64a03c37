//! TLS at the edge (`wss://`): the certificate chain and private key of
//! `CHATAI_TLS_CERT` / `CHATAI_TLS_KEY` (PEM files), read once at start into
//! a rustls acceptor (the ring provider, as every other rustls user in the
//! workspace; TLS 1.2 and 1.3; ALPN `http/1.1`). The handshake itself runs
//! in `accept.rs`, under the same deadline and counts as a request head.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CHATAI_TLS_CERT and CHATAI_TLS_KEY go together: set both or neither")]
    Incomplete,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the TLS certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The error for an unreadable `path`.
fn unreadable(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Read {
        path: path.to_owned(),
        source,
    }
}

/// The acceptor for `cert` and `key`, both PEM files: the certificate chain
/// (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(unreadable(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(unreadable(key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
