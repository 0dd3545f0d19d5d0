//! API errors and the class that decides what a caller does with each.
//!
//! The class comes from the error body's `Code` and the `x-acs-retry-after` header, never from
//! the HTTP status alone: throttling arrives as 400 although documents say 403
//! (shared/reference/flow-control.md). Every error keeps `RequestId`, `Code` and `Message` for
//! the report, and never carries a secret.

use std::fmt;

use crate::terminal::escape;

/// What a caller should do with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Flow control: wait (`retry_after_ms` if the server said) and slow the pace. Never applied.
    Throttled { retry_after_ms: Option<u64> },
    /// Worth retrying with backoff.
    Transient,
    /// `DeviceCredentialExsit`: the device already holds a credential.
    AlreadyExists,
    /// `DeviceCredentialNotFound`, `FindDeviceBySnError`.
    NotFound,
    /// `DeviceCredentialNumExceed`: the instance's credential quota is full; halt the run.
    QuotaFull,
    /// This item's parameters were refused; other items may succeed.
    InvalidInput,
    /// A 4xx the table does not know: this item failed, the run goes on.
    ItemFailure,
    /// The source address is blocked for exceeding the per-IP limit (300/s).
    SourceBlocked,
    /// `SignatureNonceUsed`: retry with a fresh nonce once; fatal if it happens again.
    NonceReused,
    /// `InvalidSecurityToken.Expired` from a key the client has since renewed: send the call
    /// once more (paced, not an attempt); fatal if it happens again. Set by the client, never
    /// by [`classify`], which calls the code fatal (a token that cannot be renewed).
    Renewed,
    /// Credentials, permissions, instance or API are wrong: nothing else can succeed; halt.
    Fatal,
}

/// The code the simulator answers for a blocked source address. The documents say only that an
/// IP over 300 calls/s "is blocked"; they name no code, so this one is the simulator's choice and
/// the client also treats it as a block.
pub const IP_BLOCKED_CODE: &str = "Forbidden.IpBlocked";

/// One failed call.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiError {
    pub class: ErrorClass,
    /// HTTP status; `None` for transport failures.
    pub status: Option<u16>,
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    /// The request may have been applied although no answer came back (read timeout, connection
    /// lost after sending). Such a call must be reconciled before it is ever sent again.
    pub ambiguous: bool,
}

impl ApiError {
    /// An error decoded from an HTTP error response.
    pub fn from_response(
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
        retry_after_ms: Option<u64>,
    ) -> Self {
        let class = classify(status, &code, retry_after_ms);
        ApiError {
            class,
            status: Some(status),
            code,
            message,
            request_id,
            ambiguous: false,
        }
    }

    /// A transport failure. `sent` says whether the request may have reached the server.
    pub fn transport(code: &str, message: String, sent: bool) -> Self {
        ApiError {
            class: ErrorClass::Transient,
            status: None,
            code: code.to_owned(),
            message,
            request_id: None,
            ambiguous: sent,
        }
    }

    /// A 5xx (or an unknown answer): the server got the call and may have applied it.
    pub fn may_have_applied(&self) -> bool {
        self.ambiguous || matches!(self.status, Some(s) if s >= 500)
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("class", &self.class)
            .field("status", &self.status)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("request_id", &self.request_id)
            .field("ambiguous", &self.ambiguous)
            .finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Code, message and RequestId are the server's words: escaped wherever they are shown.
        let (code, message) = (escape(&self.code), escape(&self.message));
        match self.status {
            Some(s) => write!(f, "{code} (HTTP {s}): {message}")?,
            None => write!(f, "{code}: {message}")?,
        }
        if let Some(id) = &self.request_id {
            write!(f, " [RequestId {}]", escape(id))?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// The class of an error response. `retry_after_ms` is the `x-acs-retry-after` header: since
/// mid-2026 the official SDKs treat any error carrying it as throttling (flow-control.md).
pub fn classify(status: u16, code: &str, retry_after_ms: Option<u64>) -> ErrorClass {
    use ErrorClass::*;
    if retry_after_ms.is_some() {
        return Throttled { retry_after_ms };
    }
    match code {
        "Throttling" | "Throttling.User" | "Throttling.Api" | "SystemOverFlow"
        | "ApplyTokenOverFlow" | "ServiceUnavailable" => Throttled {
            retry_after_ms: None,
        },
        "InternalError" => Transient,
        "DeviceCredentialExsit" => AlreadyExists,
        "DeviceCredentialNotFound" | "FindDeviceBySnError" => NotFound,
        "DeviceCredentialNumExceed" => QuotaFull,
        "SignatureNonceUsed" => NonceReused,
        IP_BLOCKED_CODE => SourceBlocked,
        "ParameterCheckFailed" | "ParameterFieldCheckFailed" => InvalidInput,
        c if c.starts_with("InvalidParameter") => InvalidInput,
        "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingSecurityToken"
        | "CheckAccountInfoFailed"
        | "InstancePermissionCheckFailed"
        | "PermissionCheckFailed"
        | "MqttInstanceNotFound"
        | "MqttOwnerCheckError"
        | "InvalidAction.NotFound"
        | "ApiNotSupport" => Fatal,
        c if c.starts_with("InvalidAccessKeyId")
            || c.starts_with("InvalidSecurityToken")
            || c.starts_with("InvalidTimeStamp")
            || c.starts_with("Forbidden") =>
        {
            Fatal
        }
        // `Missing{ParameterName}`: after the fatal `MissingSecurityToken` above.
        c if c.starts_with("Missing") => InvalidInput,
        _ if status == 403 => Fatal,
        _ if status >= 500 => Transient,
        _ => ItemFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorClass::*;
    use super::*;

    #[test]
    fn every_documented_code_has_its_class() {
        let table: &[(u16, &str, ErrorClass)] = &[
            (
                400,
                "Throttling",
                Throttled {
                    retry_after_ms: None,
                },
            ),
            (
                400,
                "Throttling.User",
                Throttled {
                    retry_after_ms: None,
                },
            ),
            (
                400,
                "Throttling.Api",
                Throttled {
                    retry_after_ms: None,
                },
            ),
            (
                500,
                "SystemOverFlow",
                Throttled {
                    retry_after_ms: None,
                },
            ),
            (
                400,
                "ApplyTokenOverFlow",
                Throttled {
                    retry_after_ms: None,
                },
            ),
            (
                503,
                "ServiceUnavailable",
                Throttled {
                    retry_after_ms: None,
                },
            ),
            (500, "InternalError", Transient),
            (502, "", Transient),
            (504, "SomethingNew", Transient),
            (400, "DeviceCredentialExsit", AlreadyExists),
            (400, "DeviceCredentialNotFound", NotFound),
            (500, "FindDeviceBySnError", NotFound),
            (400, "DeviceCredentialNumExceed", QuotaFull),
            (400, "ParameterCheckFailed", InvalidInput),
            (400, "ParameterFieldCheckFailed", InvalidInput),
            (400, "InvalidParameter.ClientId", InvalidInput),
            (400, "MissingClientId", InvalidInput),
            (404, "InvalidAccessKeyId.NotFound", Fatal),
            (400, "InvalidAccessKeyId.Inactive", Fatal),
            (400, "SignatureDoesNotMatch", Fatal),
            (400, "IncompleteSignature", Fatal),
            (400, "InvalidSecurityToken.Expired", Fatal),
            (400, "InvalidSecurityToken.MismatchWithAccessKey", Fatal),
            (400, "MissingSecurityToken", Fatal),
            (400, "InvalidTimeStamp.Expired", Fatal),
            (400, "InvalidTimeStamp.Format", Fatal),
            (400, "SignatureNonceUsed", NonceReused),
            (400, "CheckAccountInfoFailed", Fatal),
            (400, "InstancePermissionCheckFailed", Fatal),
            (400, "PermissionCheckFailed", Fatal),
            (500, "MqttInstanceNotFound", Fatal),
            (500, "MqttOwnerCheckError", Fatal),
            (404, "InvalidAction.NotFound", Fatal),
            (404, "ApiNotSupport", Fatal),
            (403, "Forbidden.RAM", Fatal),
            (403, "SomethingElse", Fatal),
            (403, IP_BLOCKED_CODE, SourceBlocked),
            (400, "SomethingElse", ItemFailure),
            (404, "SomethingElse", ItemFailure),
        ];
        for &(status, code, want) in table {
            assert_eq!(classify(status, code, None), want, "{status} {code}");
        }
    }

    #[test]
    fn retry_after_header_means_throttled_whatever_the_code() {
        for code in ["InternalError", "SomethingNew", "DeviceCredentialExsit"] {
            assert_eq!(
                classify(500, code, Some(1500)),
                Throttled {
                    retry_after_ms: Some(1500)
                }
            );
        }
    }

    #[test]
    fn transport_failures_are_transient_and_ambiguous_only_once_sent() {
        let before = ApiError::transport("Transport.Connect", "refused".into(), false);
        let after = ApiError::transport("Transport.Timeout", "read timeout".into(), true);
        assert_eq!(before.class, Transient);
        assert!(!before.ambiguous && !before.may_have_applied());
        assert!(after.ambiguous && after.may_have_applied());
        let e500 = ApiError::from_response(500, "InternalError".into(), "x".into(), None, None);
        assert!(e500.may_have_applied());
    }
}
