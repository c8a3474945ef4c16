//! The registry's error responses: an [`ErrorCode`] from the distribution spec, an HTTP status,
//! a message for people and an optional machine-readable detail, rendered as
//! `{"errors":[{"code","message","detail"}]}` with `Content-Type: application/json`.

use std::fmt;
use std::str::FromStr;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::headers::{API_VERSION, DOCKER_DISTRIBUTION_API_VERSION};

/// The error codes of the OCI distribution spec (and the Docker registry codes clients know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A blob is not in the repository.
    BlobUnknown,
    /// An upload is malformed: bad or out-of-order chunk, wrong size.
    BlobUploadInvalid,
    /// The upload session does not exist (never started, committed, cancelled or expired).
    BlobUploadUnknown,
    /// The content does not match the digest the client gave, or the digest is malformed.
    DigestInvalid,
    /// A manifest refers to a blob the registry does not hold.
    ManifestBlobUnknown,
    /// A manifest is not valid JSON, has the wrong schema or media type, or a bad descriptor.
    ManifestInvalid,
    /// The manifest (by tag or digest) is not in the repository.
    ManifestUnknown,
    /// The repository name does not follow the grammar.
    NameInvalid,
    /// The repository is not known to the registry.
    NameUnknown,
    /// A declared size does not match the content.
    SizeInvalid,
    /// Authentication is required.
    Unauthorized,
    /// The client may not do this.
    Denied,
    /// The operation is not supported by this registry.
    Unsupported,
    /// Rate limited.
    TooManyRequests,
    /// A `Range` or `Content-Range` header cannot be satisfied.
    RangeInvalid,
    /// A backend the registry depends on is unreachable (Docker's `UNAVAILABLE`).
    Unavailable,
    /// Anything else: a bug or a failure the client cannot fix (Docker's `UNKNOWN`).
    Unknown,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 17] = [
        Self::BlobUnknown,
        Self::BlobUploadInvalid,
        Self::BlobUploadUnknown,
        Self::DigestInvalid,
        Self::ManifestBlobUnknown,
        Self::ManifestInvalid,
        Self::ManifestUnknown,
        Self::NameInvalid,
        Self::NameUnknown,
        Self::SizeInvalid,
        Self::Unauthorized,
        Self::Denied,
        Self::Unsupported,
        Self::TooManyRequests,
        Self::RangeInvalid,
        Self::Unavailable,
        Self::Unknown,
    ];

    /// The code as it appears in the JSON (`BLOB_UNKNOWN`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::RangeInvalid => "RANGE_INVALID",
            Self::Unavailable => "UNAVAILABLE",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// The HTTP status Docker's distribution registry answers with for this code.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::BlobUnknown
            | Self::BlobUploadUnknown
            | Self::ManifestUnknown
            | Self::NameUnknown => StatusCode::NOT_FOUND,
            Self::BlobUploadInvalid
            | Self::DigestInvalid
            | Self::ManifestBlobUnknown
            | Self::ManifestInvalid
            | Self::NameInvalid
            | Self::SizeInvalid => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The spec's one-line description, used when no better message is given.
    pub const fn description(self) -> &'static str {
        match self {
            Self::BlobUnknown => "blob unknown to registry",
            Self::BlobUploadInvalid => "blob upload invalid",
            Self::BlobUploadUnknown => "blob upload unknown to registry",
            Self::DigestInvalid => "provided digest did not match uploaded content",
            Self::ManifestBlobUnknown => {
                "manifest references a manifest or blob unknown to registry"
            }
            Self::ManifestInvalid => "manifest invalid",
            Self::ManifestUnknown => "manifest unknown to registry",
            Self::NameInvalid => "invalid repository name",
            Self::NameUnknown => "repository name not known to registry",
            Self::SizeInvalid => "provided length did not match content length",
            Self::Unauthorized => "authentication required",
            Self::Denied => "requested access to the resource is denied",
            Self::Unsupported => "the operation is unsupported",
            Self::TooManyRequests => "too many requests",
            Self::RangeInvalid => "invalid content range",
            Self::Unavailable => "service unavailable",
            Self::Unknown => "unknown error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not a known error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown registry error code {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // `TOO_MANY_REQUESTS` is how people (and some registries) spell the spec's code.
        if text == "TOO_MANY_REQUESTS" {
            return Ok(Self::TooManyRequests);
        }
        Self::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
            .ok_or_else(|| UnknownErrorCode(text.to_owned()))
    }
}

/// One error as it travels over the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    /// Absent (not `null`) when there is none, as Docker's registry does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// The error body: `{"errors":[…]}`. Deserializable so clients and tests can read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<ErrorInfo>,
}

impl ErrorBody {
    /// The codes of the body's errors, in order (unknown codes are skipped).
    pub fn codes(&self) -> Vec<ErrorCode> {
        self.errors
            .iter()
            .filter_map(|error| error.code.parse().ok())
            .collect()
    }
}

/// A registry API error: code, status (the code's own unless overridden), message, detail and
/// extra headers (e.g. `Range` on a 416 so the client knows where to resume). Boxed, so a
/// `Result<_, RegistryError>` stays one pointer wide on every handler's happy path.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryError(Box<Inner>);

#[derive(Debug, Clone, PartialEq)]
struct Inner {
    code: ErrorCode,
    status: StatusCode,
    message: String,
    detail: Option<serde_json::Value>,
    headers: HeaderMap,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            code,
            status: code.status(),
            message: message.into(),
            detail: None,
            headers: HeaderMap::new(),
        }))
    }

    /// An error with the code's own description as message.
    pub fn from_code(code: ErrorCode) -> Self {
        Self::new(code, code.description())
    }

    /// Answers with `status` instead of the code's default (e.g. 416 for a chunk that does not
    /// continue the upload, which stays `BLOB_UPLOAD_INVALID`).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.0.status = status;
        self
    }

    pub fn with_detail(mut self, detail: impl Serialize) -> Self {
        // A detail that cannot be serialized is dropped: it is informational, and an error
        // response must not fail to render.
        self.0.detail = serde_json::to_value(detail).ok();
        self
    }

    /// Adds a response header. Invalid values are dropped for the same reason as above.
    pub fn with_header(mut self, name: HeaderName, value: impl AsRef<str>) -> Self {
        if let Ok(value) = HeaderValue::from_str(value.as_ref()) {
            self.0.headers.insert(name, value);
        }
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    pub fn detail(&self) -> Option<&serde_json::Value> {
        self.0.detail.as_ref()
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.0.headers
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            errors: vec![ErrorInfo {
                code: self.0.code.as_str().to_owned(),
                message: self.0.message.clone(),
                detail: self.0.detail.clone(),
            }],
        }
    }

    // Constructors for the common cases, with the detail the spec suggests.

    pub fn blob_unknown(digest: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is unknown to the registry"),
        )
        .with_detail(serde_json::json!({ "digest": digest.to_string() }))
    }

    pub fn blob_upload_unknown(upload: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::BlobUploadUnknown,
            format!("upload {upload} is unknown: never started, finished, cancelled or expired"),
        )
    }

    pub fn blob_upload_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BlobUploadInvalid, message)
    }

    pub fn digest_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DigestInvalid, message)
    }

    pub fn manifest_blob_unknown(digest: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::ManifestBlobUnknown,
            format!("the manifest refers to {digest}, which is not in the registry"),
        )
        .with_detail(serde_json::json!({ "digest": digest.to_string() }))
    }

    pub fn manifest_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ManifestInvalid, message)
    }

    pub fn manifest_unknown(reference: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::ManifestUnknown,
            format!("manifest {reference} is unknown to the registry"),
        )
        .with_detail(serde_json::json!({ "reference": reference.to_string() }))
    }

    pub fn name_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NameInvalid, message)
    }

    pub fn name_unknown(repository: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::NameUnknown,
            format!("repository {repository} is unknown to the registry"),
        )
        .with_detail(serde_json::json!({ "name": repository.to_string() }))
    }

    pub fn size_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::SizeInvalid, message)
    }

    pub fn range_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::RangeInvalid, message)
    }

    /// 416 `RANGE_INVALID` for a blob of `size` bytes, with `Content-Range: bytes */<size>` so
    /// the client learns the size.
    pub fn range_not_satisfiable(message: impl Into<String>, size: u64) -> Self {
        Self::range_invalid(message).with_header(
            header::CONTENT_RANGE,
            crate::range::unsatisfied_content_range(size),
        )
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }

    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Denied, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unknown, message)
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.0.code,
            self.0.status.as_u16(),
            self.0.message
        )
    }
}

impl std::error::Error for RegistryError {}

/// A malformed `Range` is `416 RANGE_INVALID` naming the header.
impl From<crate::range::RangeError> for RegistryError {
    fn from(error: crate::range::RangeError) -> Self {
        Self::range_invalid(error.to_string())
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        // Serializing plain strings and an already-valid `Value` cannot fail; fall back to a
        // fixed body rather than panic if it ever does.
        let body = serde_json::to_vec(&self.body()).unwrap_or_else(|_| {
            br#"{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}"#.to_vec()
        });
        let Inner {
            status,
            headers: extra,
            ..
        } = *self.0;
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.extend(extra);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            DOCKER_DISTRIBUTION_API_VERSION,
            HeaderValue::from_static(API_VERSION),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_have_distribution_statuses() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), code);
            assert!(!code.description().is_empty());
        }
        assert_eq!(
            "TOO_MANY_REQUESTS".parse::<ErrorCode>().unwrap(),
            ErrorCode::TooManyRequests
        );
        assert!("NOPE".parse::<ErrorCode>().is_err());
        assert_eq!(ErrorCode::BlobUnknown.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ErrorCode::ManifestBlobUnknown.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ErrorCode::RangeInvalid.status(),
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert_eq!(ErrorCode::Unauthorized.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn renders_the_spec_json_with_status_and_headers() {
        let error = RegistryError::blob_upload_invalid("chunk starts at 10, upload holds 5")
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .with_header(header::RANGE, "0-4")
            .with_header(header::LOCATION, "bad\nvalue");
        assert_eq!(error.code(), ErrorCode::BlobUploadInvalid);
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::RANGE], "0-4");
        assert_eq!(headers[DOCKER_DISTRIBUTION_API_VERSION], API_VERSION);
        assert!(headers.get(header::LOCATION).is_none());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"errors": [{
                "code": "BLOB_UPLOAD_INVALID",
                "message": "chunk starts at 10, upload holds 5",
            }]})
        );
    }

    #[test]
    fn details_and_codes_survive_a_round_trip() {
        let digest = kraken_core::Digest::of(b"x");
        let error = RegistryError::manifest_blob_unknown(digest);
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let text = serde_json::to_string(&error.body()).unwrap();
        let body: ErrorBody = serde_json::from_str(&text).unwrap();
        assert_eq!(body.codes(), vec![ErrorCode::ManifestBlobUnknown]);
        assert_eq!(
            body.errors[0].detail,
            Some(serde_json::json!({"digest": digest.to_string()}))
        );
        assert!(error.to_string().contains("MANIFEST_BLOB_UNKNOWN (400)"));
    }
}
