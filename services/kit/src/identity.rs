//! Who is calling a service: the [`Caller`] carried in gRPC metadata.
//!
//! The gateway verifies the client's JWT and passes its claims on as metadata
//! (`chatai-caller-id`, `chatai-caller-role`, the display name as UTF-8 in
//! binary metadata `chatai-caller-name-bin` — ASCII metadata cannot carry
//! "Ольга" — and the connection the request came from as
//! `chatai-connection-id`). A plain `chatai-caller-name` from an internal
//! caller is still read when there is no binary one. Internal
//! callers (billing, CRM, admin tools) send role `service`. Services trust this
//! metadata because internal gRPC is closed by the shared internal token (see
//! [`crate::grpc`]) when one is configured.

use std::fmt;
use std::str::FromStr;

use tonic::metadata::{MetadataMap, MetadataValue};

const ID: &str = "chatai-caller-id";
const ROLE: &str = "chatai-caller-role";
const NAME: &str = "chatai-caller-name";
const NAME_BIN: &str = "chatai-caller-name-bin";
const CONNECTION: &str = "chatai-connection-id";

/// The longest display name that travels between the parts, in bytes. The
/// gateway cuts a token's `name` to it ([`bounded_name`]); presence refuses
/// a longer one.
pub const MAX_NAME_BYTES: usize = 256;

/// `name` cut to at most [`MAX_NAME_BYTES`] bytes, at a character boundary.
pub fn bounded_name(mut name: String) -> String {
    if name.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// The role a caller acts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An end user talking to the assistant.
    User,
    /// A human support operator.
    Operator,
    /// An administrator: may read any dialog, gets analytics.
    Admin,
    /// A trusted internal caller (another service, billing, CRM).
    Service,
}

impl Role {
    /// The role as written in tokens and metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    /// Whether this role may read anything (admins and internal services).
    pub fn is_privileged(self) -> bool {
        matches!(self, Role::Admin | Role::Service)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role string that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Role::User),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            "service" => Ok(Role::Service),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// The verified identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The numeric id from the token's `sub` (0 for internal services).
    pub id: i64,
    pub role: Role,
    /// Display name, when the token had one.
    pub name: Option<String>,
    /// The gateway connection the request came from, when it came from one.
    pub connection_id: Option<String>,
}

/// Why the caller metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("request carries no caller identity")]
    Missing,
    #[error("caller id is not a number")]
    BadId,
    #[error(transparent)]
    BadRole(#[from] UnknownRole),
}

impl From<IdentityError> for tonic::Status {
    fn from(err: IdentityError) -> Self {
        tonic::Status::unauthenticated(err.to_string())
    }
}

impl Caller {
    /// An internal service calling on its own behalf.
    pub fn service() -> Self {
        Caller {
            id: 0,
            role: Role::Service,
            name: None,
            connection_id: None,
        }
    }

    /// Reads the caller from request metadata.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Self, IdentityError> {
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        let role: Role = text(ROLE).ok_or(IdentityError::Missing)?.parse()?;
        let id = match (text(ID), role) {
            (Some(id), _) => id.parse().map_err(|_| IdentityError::BadId)?,
            (None, Role::Service) => 0,
            (None, _) => return Err(IdentityError::Missing),
        };
        Ok(Caller {
            id,
            role,
            name: read_name(metadata),
            connection_id: text(CONNECTION).map(str::to_owned),
        })
    }

    /// Writes the caller into request metadata (the name, any text, as
    /// binary metadata).
    pub fn write_metadata(&self, metadata: &mut MetadataMap) {
        metadata.insert(ID, MetadataValue::from(self.id));
        metadata.insert(ROLE, MetadataValue::from_static(self.role.as_str()));
        if let Some(name) = &self.name {
            metadata.insert_bin(NAME_BIN, MetadataValue::from_bytes(name.as_bytes()));
        }
        if let Some(conn) = self.connection_id.as_deref().and_then(|c| c.parse().ok()) {
            metadata.insert(CONNECTION, conn);
        }
    }
}

/// The caller's display name: the binary entry (UTF-8) when there is one,
/// else the ASCII one.
fn read_name(metadata: &MetadataMap) -> Option<String> {
    let binary = metadata
        .get_bin(NAME_BIN)
        .and_then(|value| value.to_bytes().ok())
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok());
    binary.or_else(|| {
        metadata
            .get(NAME)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    })
}

/// A request from this service acting as itself (`Caller::service()` in
/// its metadata), with a deadline when `timeout` is given.
pub fn service_request<T>(message: T, timeout: Option<std::time::Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    Caller::service().write_metadata(request.metadata_mut());
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller written into metadata reads back the same.
    #[test]
    fn metadata_round_trip() {
        let caller = Caller {
            id: 456,
            role: Role::User,
            name: Some("Ann".into()),
            connection_id: Some("gw1:7".into()),
        };
        let mut md = MetadataMap::new();
        caller.write_metadata(&mut md);
        assert_eq!(Caller::from_metadata(&md).unwrap(), caller);
    }

    /// A long name is cut at a character boundary, at most the limit.
    #[test]
    fn a_long_name_is_bounded() {
        assert_eq!(bounded_name("Ann".into()), "Ann");
        let long = "Ж".repeat(200); // 400 bytes
        let cut = bounded_name(long);
        assert_eq!(cut.len(), MAX_NAME_BYTES);
        assert!(cut.chars().all(|c| c == 'Ж'));
        let odd = format!("a{}", "Ж".repeat(200)); // the limit falls inside a character
        assert_eq!(bounded_name(odd).len(), MAX_NAME_BYTES - 1);
    }

    /// A name outside ASCII travels whole (as binary metadata).
    #[test]
    fn a_non_ascii_name_round_trips() {
        let caller = Caller {
            id: 9201,
            role: Role::Operator,
            name: Some("Ольга".into()),
            connection_id: None,
        };
        let mut md = MetadataMap::new();
        caller.write_metadata(&mut md);
        assert_eq!(Caller::from_metadata(&md).unwrap(), caller);
    }

    /// An internal caller's plain ASCII name is still read.
    #[test]
    fn a_plain_name_is_read() {
        let mut md = MetadataMap::new();
        md.insert(ROLE, MetadataValue::from_static("service"));
        md.insert(NAME, MetadataValue::from_static("billing"));
        let caller = Caller::from_metadata(&md).unwrap();
        assert_eq!(caller.name.as_deref(), Some("billing"));
    }

    /// Requests without identity, or with a bad role or id, are refused.
    #[test]
    fn missing_or_bad_identity_is_refused() {
        let md = MetadataMap::new();
        assert!(matches!(
            Caller::from_metadata(&md),
            Err(IdentityError::Missing)
        ));
        let mut md = MetadataMap::new();
        md.insert(ROLE, MetadataValue::from_static("root"));
        assert!(Caller::from_metadata(&md).is_err());
        let mut md = MetadataMap::new();
        md.insert(ROLE, MetadataValue::from_static("user"));
        md.insert(ID, MetadataValue::from_static("abc"));
        assert!(matches!(
            Caller::from_metadata(&md),
            Err(IdentityError::BadId)
        ));
    }

    /// An internal service needs no id.
    #[test]
    fn service_needs_no_id() {
        let mut md = MetadataMap::new();
        md.insert(ROLE, MetadataValue::from_static("service"));
        assert_eq!(Caller::from_metadata(&md).unwrap().role, Role::Service);
    }
}
