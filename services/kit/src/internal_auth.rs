//! Who may call the services' gRPC APIs: the rules built on
//! [`InternalAuth`] (the settings, in `config`).
//!
//! - A shared token: every call carries `authorization: Bearer <token>`
//!   ([`TokenInterceptor`](crate::grpc::TokenInterceptor) adds it, the
//!   server's filter checks it; health checks are exempt).
//! - Mutual TLS: every service serves with its certificate and accepts only
//!   clients presenting one signed by the deployment's CA
//!   ([`InternalAuth::server_tls`], [`InternalAuth::client_tls`]).
//! - Secure by default: a part started alone refuses to start with neither
//!   ([`InternalAuth::require_protection`]) unless the development flag
//!   `CHATAI_INSECURE_INTERNAL` says so; the all-in-one, whose parts share
//!   one configuration, keeps a generated token in `data/internal-token`
//!   ([`InternalAuth::protect_all_in_one`]), where tools such as `grpcurl`
//!   and `chatai-load` read it.

use std::io::Write;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::{InternalAuth, PemFile};

/// Where the all-in-one keeps the token it generated, relative to its
/// working directory: the folder of the default SQLite file.
pub const TOKEN_FILE: &str = "data/internal-token";

/// Why internal gRPC cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum InternalAuthError {
    #[error(
        "internal gRPC would be open to any process that reaches its ports: set CHATAI_INTERNAL_TOKEN \
         (one secret shared by every part), or CHATAI_INTERNAL_TLS_CERT, CHATAI_INTERNAL_TLS_KEY and \
         CHATAI_INTERNAL_TLS_CA (mutual TLS), or both; for development only, CHATAI_INSECURE_INTERNAL=1 \
         (--insecure-internal) runs without either"
    )]
    Unprotected,
    #[error("cannot create the folder {path} for the internal token: {source}")]
    CreateFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the internal token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the internal token file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the internal token file {path} is empty: delete it and a new token is generated")]
    EmptyFile { path: PathBuf },
}

/// How internal gRPC is protected, once [`InternalAuth::require_protection`]
/// has accepted the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    Token,
    MutualTls,
    TokenAndMutualTls,
    /// Neither: the development flag is set.
    Insecure,
}

/// The token the all-in-one runs with, from [`TOKEN_FILE`].
#[derive(Debug, Clone)]
pub struct TokenFile {
    pub path: PathBuf,
    /// Whether this start generated it (else an earlier one did).
    pub created: bool,
}

impl InternalAuth {
    /// The token, when one is set (an empty value counts as unset).
    pub fn token(&self) -> Option<&str> {
        self.internal_token
            .as_deref()
            .filter(|token| !token.is_empty())
    }

    /// The certificate, key and CA, when mutual TLS is configured.
    fn tls_files(&self) -> Option<(&PemFile, &PemFile, &PemFile)> {
        match (&self.tls.cert, &self.tls.key, &self.tls.ca) {
            (Some(cert), Some(key), Some(ca)) => Some((cert, key, ca)),
            _ => None,
        }
    }

    /// How internal gRPC is protected; [`InternalAuthError::Unprotected`]
    /// when by nothing and the development flag is not set. What a part
    /// started alone checks before it starts.
    pub fn require_protection(&self) -> Result<Protection, InternalAuthError> {
        let protection = match (self.token().is_some(), self.tls_files().is_some()) {
            (true, true) => Protection::TokenAndMutualTls,
            (true, false) => Protection::Token,
            (false, true) => Protection::MutualTls,
            (false, false) if self.insecure_internal => Protection::Insecure,
            (false, false) => return Err(InternalAuthError::Unprotected),
        };
        if protection == Protection::Insecure {
            tracing::warn!(
                "CHATAI_INSECURE_INTERNAL is set and there is neither CHATAI_INTERNAL_TOKEN nor TLS: \
                 any process that reaches the gRPC ports can read every user's messages and events \
                 and act as anyone. Development only."
            );
        }
        Ok(protection)
    }

    /// The all-in-one's rule: with neither a token nor TLS configured (and
    /// not the development flag), the token in `token_file` — generated and
    /// written there (mode 0600) on the first start, read back on later ones
    /// so tools keep working across restarts — becomes this configuration's
    /// token. Returns the file when it was used.
    pub fn protect_all_in_one(
        &mut self,
        token_file: &Path,
    ) -> Result<Option<TokenFile>, InternalAuthError> {
        if self.token().is_some() || self.tls_files().is_some() || self.insecure_internal {
            self.require_protection()?;
            return Ok(None);
        }
        let (token, created) = match read_token_file(token_file)? {
            Some(token) => (token, false),
            None => (create_token_file(token_file)?, true),
        };
        self.internal_token = Some(token);
        Ok(Some(TokenFile {
            path: token_file.to_owned(),
            created,
        }))
    }

    /// What a service serves with: its certificate, and client certificates
    /// required, signed by the CA.
    pub fn server_tls(&self) -> Option<ServerTlsConfig> {
        let (cert, key, ca) = self.tls_files()?;
        Some(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(cert.pem(), key.pem()))
                .client_ca_root(Certificate::from_pem(ca.pem()))
                .client_auth_optional(false),
        )
    }

    /// What a client connects with: its certificate, and only servers whose
    /// certificate the CA signed (for the name or address dialled).
    pub fn client_tls(&self) -> Option<ClientTlsConfig> {
        let (cert, key, ca) = self.tls_files()?;
        Some(
            ClientTlsConfig::new()
                .identity(Identity::from_pem(cert.pem(), key.pem()))
                .ca_certificate(Certificate::from_pem(ca.pem())),
        )
    }
}

/// The token in `path` (surrounding white space trimmed), or `None` when
/// there is no such file. For tools that talk to an all-in-one.
pub fn read_token_file(path: &Path) -> Result<Option<String>, InternalAuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(InternalAuthError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(InternalAuthError::EmptyFile {
            path: path.to_owned(),
        });
    }
    tighten_permissions(path)?;
    Ok(Some(token.to_owned()))
}

/// A fresh token: 244 random bits (two v4 UUIDs, from the operating
/// system's generator), as 64 hex digits.
pub fn generate_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes a fresh token to `path`, readable by its owner only; when another
/// process created the file first, its token wins.
fn create_token_file(path: &Path) -> Result<String, InternalAuthError> {
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(|source| InternalAuthError::CreateFolder {
            path: folder.to_owned(),
            source,
        })?;
    }
    let write_error = |source| InternalAuthError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_token_file(path)?.ok_or_else(|| InternalAuthError::EmptyFile {
                path: path.to_owned(),
            });
        }
        Err(source) => return Err(write_error(source)),
    };
    let token = generate_token();
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error)?;
    Ok(token)
}

/// A token file others can read is made the owner's alone (and said so).
fn tighten_permissions(path: &Path) -> Result<(), InternalAuthError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let read_error = |source| InternalAuthError::Read {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(read_error)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the internal token file was readable by others; made it 0600"
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| InternalAuthError::Write {
                    path: path.to_owned(),
                    source,
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InternalTls;

    fn auth(token: Option<&str>, insecure: bool) -> InternalAuth {
        InternalAuth {
            internal_token: token.map(str::to_owned),
            insecure_internal: insecure,
            tls: InternalTls::default(),
        }
    }

    /// A part alone needs a token, TLS or the development flag; an empty
    /// token is no token.
    #[test]
    fn protection_is_required() {
        assert!(matches!(
            auth(None, false).require_protection(),
            Err(InternalAuthError::Unprotected)
        ));
        assert!(matches!(
            auth(Some(""), false).require_protection(),
            Err(InternalAuthError::Unprotected)
        ));
        assert_eq!(
            auth(Some("t"), false).require_protection().ok(),
            Some(Protection::Token)
        );
        assert_eq!(
            auth(None, true).require_protection().ok(),
            Some(Protection::Insecure)
        );
        let message = InternalAuthError::Unprotected.to_string();
        for names in [
            "CHATAI_INTERNAL_TOKEN",
            "CHATAI_INTERNAL_TLS_CERT",
            "CHATAI_INSECURE_INTERNAL=1",
        ] {
            assert!(message.contains(names), "{message}");
        }
    }

    /// The all-in-one writes a 0600 token file once and reads it back on
    /// the next start; a configured token or the flag leaves files alone.
    #[test]
    fn the_all_in_one_keeps_its_token_in_a_file() {
        let folder = tempfile::tempdir().expect("a folder");
        let path = folder.path().join("data").join("internal-token");

        let mut first = auth(None, false);
        let file = first
            .protect_all_in_one(&path)
            .expect("a token file")
            .expect("used");
        assert!(file.created);
        let token = first.token().expect("a token").to_owned();
        assert_eq!(token.len(), 64);
        assert_eq!(
            std::fs::read_to_string(&path).expect("written"),
            format!("{token}\n")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let mut second = auth(None, false);
        let file = second
            .protect_all_in_one(&path)
            .expect("read back")
            .expect("used");
        assert!(!file.created);
        assert_eq!(second.token(), Some(token.as_str()));

        let other = folder.path().join("other");
        let mut configured = auth(Some("mine"), false);
        assert!(
            configured
                .protect_all_in_one(&other)
                .expect("fine")
                .is_none()
        );
        assert_eq!(configured.token(), Some("mine"));
        let mut insecure = auth(None, true);
        assert!(insecure.protect_all_in_one(&other).expect("fine").is_none());
        assert_eq!(insecure.token(), None);
        assert!(!other.exists());
    }

    /// A token file others could read is tightened; an empty one is refused.
    #[cfg(unix)]
    #[test]
    fn token_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let folder = tempfile::tempdir().expect("a folder");
        let path = folder.path().join("internal-token");
        std::fs::write(&path, "  abc \n").expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(
            read_token_file(&path).expect("readable"),
            Some("abc".to_owned())
        );
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "\n").expect("written");
        assert!(matches!(
            read_token_file(&path),
            Err(InternalAuthError::EmptyFile { .. })
        ));
        assert_eq!(
            read_token_file(&folder.path().join("missing")).expect("no file is fine"),
            None
        );
    }
}
