//! `uploads:` of a proxy — budgets on the upload sessions clients open, so no client (or all
//! of them together) can pin unbounded staging disk, sessions or time.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError, ensure, positive_duration};

/// `uploads:` — limits on blob upload sessions (`POST /v2/<name>/blobs/uploads/`).
///
/// Past a session cap the `POST` is refused with 429 `TOOMANYREQUESTS` and a `Retry-After`
/// header; a blob growing past `max_blob_size` is refused with 413 `SIZE_INVALID` and its
/// session dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadLimits {
    /// Upload sessions open at once, all clients together. Each may hold up to
    /// `max_blob_size` of staging disk until it is committed, cancelled or expires.
    pub max_sessions: usize,
    /// Upload sessions open at once per client IP address. Behind a load balancer every
    /// client has the balancer's address: raise this to `max_sessions` there.
    pub max_sessions_per_client: usize,
    /// Largest blob accepted (a layer, a config or a manifest). Checked against
    /// `Content-Length` / `Content-Range` before reading and counted as bytes stream in.
    #[serde(with = "crate::units::bytes")]
    pub max_blob_size: ByteSize,
    /// A session with no request for this long is expired: its staged bytes are removed and
    /// later requests to it get 404 `BLOB_UPLOAD_UNKNOWN`. A request streaming into the
    /// session keeps it alive however long it takes. Docker and containerd push a layer as one
    /// request and commit at once, so minutes are plenty.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_sessions: 1024,
            max_sessions_per_client: 64,
            // Container layers are rarely above a few GiB; ML images with model weights in a
            // layer reach tens of GiB.
            max_blob_size: ByteSize::gib(32),
            idle_timeout: Duration::from_secs(10 * 60),
        }
    }
}

impl Validate for UploadLimits {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            self.max_sessions > 0,
            "max_sessions",
            "must be above 0: no upload could start",
        )?;
        ensure(
            self.max_sessions_per_client > 0,
            "max_sessions_per_client",
            "must be above 0: no upload could start",
        )?;
        ensure(
            self.max_sessions_per_client <= self.max_sessions,
            "max_sessions_per_client",
            format!(
                "must be at most max_sessions ({}): the per-client cap could never be reached",
                self.max_sessions
            ),
        )?;
        ensure(
            self.max_blob_size.0 > 0,
            "max_blob_size",
            "must be above 0 (e.g. `32GiB`)",
        )?;
        positive_duration("idle_timeout", self.idle_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_caps_are_checked() {
        assert!(UploadLimits::default().validate().is_ok());
        let zero = UploadLimits {
            max_sessions: 0,
            ..UploadLimits::default()
        };
        assert!(zero.validate().is_err());
        let above = UploadLimits {
            max_sessions: 4,
            max_sessions_per_client: 5,
            ..UploadLimits::default()
        };
        assert!(above.validate().is_err());
        let no_timeout = UploadLimits {
            idle_timeout: Duration::ZERO,
            ..UploadLimits::default()
        };
        assert!(no_timeout.validate().is_err());
    }
}
