//! Stable error codes across gRPC: a service puts the client-facing code
//! (an [`ErrorCode`]: `dialog_not_found`, `forbidden`, …) in the
//! `chatai-error-code` metadata of its `Status`, and the gateway turns it into
//! the `code` of an `error` frame.

use tonic::{Code, Status};

use crate::error_code::ErrorCode;

const ERROR_CODE: &str = "chatai-error-code";

/// A `Status` carrying a stable, client-facing error code.
pub fn with_code(code: Code, error_code: ErrorCode, message: impl Into<String>) -> Status {
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(
        ERROR_CODE,
        tonic::metadata::MetadataValue::from_static(error_code.as_str()),
    );
    status
}

/// The stable error code of a `Status`, as written, if the service set one
/// (parse it into an [`ErrorCode`] to act on it).
pub fn error_code(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(ERROR_CODE)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code set by a service is read back by the gateway.
    #[test]
    fn code_round_trips() {
        let status = with_code(Code::NotFound, ErrorCode::DialogNotFound, "no such dialog");
        assert_eq!(error_code(&status), Some("dialog_not_found"));
        assert_eq!(error_code(&Status::internal("x")), None);
    }
}
