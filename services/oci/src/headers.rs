//! Header names and values of the registry API that `http` has no constant for.

use http::HeaderName;

/// The digest of the blob or manifest a response carries or a request created.
pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// The id of a blob upload session.
pub const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
/// Sent on every response; Docker clients check it on `GET /v2/`.
pub const DOCKER_DISTRIBUTION_API_VERSION: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
/// The value of [`DOCKER_DISTRIBUTION_API_VERSION`].
pub const API_VERSION: &str = "registry/2.0";
/// Set on a manifest PUT response when the manifest has a `subject` (OCI 1.1 referrers).
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
