//! Manifests: `GET` and `HEAD` by tag or digest, `PUT` with every reference checked against
//! the origins before anything is stored (manifests are blobs in the repository's namespace,
//! tags go to build-index).

use axum::body::Body;
use axum::response::Response;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, StatusCode};
use kraken_core::{Digest, Namespace};
use kraken_oci::headers::{DOCKER_CONTENT_DIGEST, OCI_SUBJECT};
use kraken_oci::response::{self, ManifestResponse};
use kraken_oci::{MAX_MANIFEST_SIZE, Manifest, Reference, RegistryError, Route, TaggedName};
use tonic::Code;

use super::{
    OriginsError, ReferenceError, Registry, Result, check_manifest_references, clip, origins_error,
    repository, tag_error,
};
use crate::metrics as m;

impl Registry {
    pub(super) async fn get_manifest(
        &self,
        name: &str,
        reference: &str,
        head: bool,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let reference: Reference = reference.parse().map_err(|error| match error {
            kraken_oci::ReferenceError::Tag(_) => RegistryError::manifest_unknown(clip(reference)),
            other => other.into(),
        })?;
        let digest = match &reference {
            Reference::Digest(digest) => *digest,
            Reference::Tag(tag) => {
                let tagged = TaggedName::new(repository.clone(), tag.clone());
                match self.tags.get(&tagged).await.map_err(tag_error)? {
                    Some(digest) => digest,
                    None => return Err(self.unknown_manifest(&repository, &reference).await),
                }
            }
        };
        let body = match self
            .origins
            .fetch(&repository, &digest, MAX_MANIFEST_SIZE)
            .await
        {
            Ok(body) => body,
            Err(OriginsError::NotFound { .. } | OriginsError::TooLarge { .. }) => {
                return Err(RegistryError::manifest_unknown(&reference));
            }
            Err(error) => return Err(origins_error(error)),
        };
        let manifest = Manifest::parse(None, &body)
            .map_err(|_| RegistryError::manifest_unknown(&reference))?;
        Ok(ManifestResponse::new(&digest, manifest.media_type()).body(body, head))
    }

    /// `NAME_UNKNOWN` when the repository has no tags at all, else `MANIFEST_UNKNOWN`.
    async fn unknown_manifest(
        &self,
        repository: &Namespace,
        reference: &Reference,
    ) -> RegistryError {
        match self
            .tags
            .list_repository(repository.as_str(), 1, None)
            .await
        {
            Ok(page) if page.tags.is_empty() => RegistryError::name_unknown(repository),
            _ => RegistryError::manifest_unknown(reference),
        }
    }

    pub(super) async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let result = self.store_manifest(name, reference, headers, body).await;
        let outcome = match &result {
            Ok(_) => "stored",
            Err(error) => match error.code() {
                kraken_oci::ErrorCode::ManifestInvalid | kraken_oci::ErrorCode::DigestInvalid => {
                    "invalid"
                }
                kraken_oci::ErrorCode::ManifestBlobUnknown => "blob_unknown",
                _ => "failed",
            },
        };
        metrics::counter!(m::MANIFEST_PUTS, "outcome" => outcome).increment(1);
        result
    }

    async fn store_manifest(
        &self,
        name: &str,
        reference: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let repository = repository(name)?;
        let reference: Reference = reference.parse()?;
        let body = axum::body::to_bytes(body, MAX_MANIFEST_SIZE)
            .await
            .map_err(|error| {
                RegistryError::manifest_invalid(format!(
                    "cannot read a manifest of at most {MAX_MANIFEST_SIZE} bytes: {error}"
                ))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            })?;
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let manifest = Manifest::parse(content_type, &body)?;
        let digest = Digest::of(&body);
        if let Reference::Digest(named) = &reference
            && *named != digest
        {
            return Err(RegistryError::digest_invalid(format!(
                "the manifest hashes to {digest}, not {named}"
            )));
        }
        self.check_references(&repository, &digest, &manifest)
            .await?;
        self.origins
            .upload_bytes(&repository, &digest, body.clone())
            .await
            .map_err(origins_error)?;
        if let Reference::Tag(tag) = &reference {
            let tagged = TaggedName::new(repository.clone(), tag.clone());
            // Replication rules on build-index decide whether this goes anywhere.
            self.tags
                .put(&tagged, &digest, true)
                .await
                .map_err(|error| match error.code() {
                    Some(Code::FailedPrecondition) => RegistryError::new(
                        kraken_oci::ErrorCode::ManifestBlobUnknown,
                        error.to_string(),
                    ),
                    _ => tag_error(error),
                })?;
            tracing::info!(tag = %tagged, %digest, media_type = manifest.media_type(), "tag pushed");
        }
        let digest_text = digest.to_string();
        let location = Route::Manifest {
            name: repository.as_str(),
            reference: &digest_text,
        };
        let mut response_headers = vec![
            (LOCATION, location.to_string()),
            (DOCKER_CONTENT_DIGEST, digest_text.clone()),
            (CONTENT_LENGTH, "0".to_owned()),
        ];
        if let Some(subject) = manifest.subject() {
            response_headers.push((OCI_SUBJECT, subject.digest.to_string()));
        }
        Ok(response::with_headers(
            StatusCode::CREATED,
            response_headers,
            Body::empty(),
        ))
    }

    /// `MANIFEST_BLOB_UNKNOWN` naming the first blob (in manifest order) the origins lack:
    /// for an index, a child manifest or any config or layer of a child. The same walk
    /// build-index makes before it accepts the tag, done first so a refused push stores
    /// nothing.
    async fn check_references(
        &self,
        repository: &Namespace,
        digest: &Digest,
        manifest: &Manifest,
    ) -> Result<()> {
        match check_manifest_references(&self.origins, repository, digest, manifest).await {
            Ok(_) => Ok(()),
            Err(ReferenceError::Missing { digest, what }) => Err(RegistryError::new(
                kraken_oci::ErrorCode::ManifestBlobUnknown,
                format!("{what} {digest} is not in the registry: push it first"),
            )
            .with_detail(serde_json::json!({ "digest": digest.to_string() }))),
            Err(ReferenceError::Origins(error)) => Err(origins_error(error)),
            Err(other) => Err(RegistryError::manifest_invalid(other.to_string())),
        }
    }
}
