//! `s3:` — an S3 bucket (AWS, or an S3-compatible server such as MinIO, Ceph RGW, moto) through
//! the official SDK.
//!
//! The SDK runs on our own hyper 1 + rustls (ring) HTTP client rather than its default one,
//! which would bring a second TLS stack. Request checksums are sent only when an operation
//! requires them: the SDK's newer default (CRC32 trailers on every upload) is not understood
//! by many S3-compatible servers.
//!
//! Uploads below `multipart_threshold` are one `PutObject`; larger ones are multipart uploads
//! of `upload_part_size` parts, two in flight, so memory per upload stays at a couple of parts
//! whatever the blob's size. Both buffer what they send, which lets the SDK retry a failed
//! request. An object becomes visible only when its upload completes; a failed multipart
//! upload is aborted so its parts do not linger (and cost) in the bucket.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::Bytes;
use kraken_config::backend::{AuthConfig, S3BackendConfig};
use kraken_core::{Digest, Namespace};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use super::layout::ObjectLayout;
use super::stream::ExactReader;
use super::{
    Backend, BackendBlob, BackendError, SetupError, StoredBlob, UploadSource, auth_secret,
};

const KIND: &str = "s3";
/// S3's limit on the parts of one upload.
const MAX_PARTS: u64 = 10_000;
/// Parts uploaded concurrently: one on the wire while the next is read keeps the link busy
/// without holding more than two parts in memory.
const PARTS_IN_FLIGHT: usize = 2;
/// Attempts per request (the SDK retries throttling, 5xx and connection failures).
const MAX_ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a response's headers; bodies are guarded by the SDK's stalled-stream
/// protection instead, so a long download is never cut off while it makes progress.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Blobs as objects of one bucket.
#[derive(Clone)]
pub struct S3Backend {
    client: Client,
    bucket: String,
    layout: ObjectLayout,
    part_size: u64,
    multipart_threshold: u64,
    endpoint: Option<String>,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("layout", &self.layout)
            .field("part_size", &self.part_size)
            .field("multipart_threshold", &self.multipart_threshold)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// Builds the client; credentials come from `auth.s3[username]` (the secret inline or from
    /// `aws_secret_access_key_file`), or, with no `username`, from the standard
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` variables.
    pub fn from_config(config: &S3BackendConfig, auth: &AuthConfig) -> Result<Self, SetupError> {
        let credentials = credentials(config, auth)?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .http_client(http_client)
            .force_path_style(config.force_path_style)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        let endpoint = endpoint(config);
        if let Some(endpoint) = &endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let part_size = config.upload_part_size.as_u64();
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            layout: ObjectLayout::object_keys(&config.root_directory, config.name_path),
            part_size,
            // A threshold below the part size would make one-part multipart uploads.
            multipart_threshold: config.multipart_threshold.as_u64().max(1),
            endpoint,
        })
    }

    pub fn layout(&self) -> &ObjectLayout {
        &self.layout
    }

    async fn put_whole(
        &self,
        key: &str,
        mut reader: ExactReader<std::pin::Pin<Box<dyn AsyncRead + Send>>>,
        size: u64,
    ) -> Result<(), BackendError> {
        let body = read_part(&mut reader, size, key).await?;
        // The reader must also be at its end (this read reveals a longer source).
        let trailing = read_part(&mut reader, 1, key).await?;
        debug_assert!(trailing.is_empty());
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|error| sdk_error(format!("put {key}"), error))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        key: &str,
        mut reader: ExactReader<std::pin::Pin<Box<dyn AsyncRead + Send>>>,
        size: u64,
    ) -> Result<(), BackendError> {
        // Grow the parts of a blob too large for MAX_PARTS parts of the configured size.
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS));
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| sdk_error(format!("start multipart upload of {key}"), error))?;
        let upload_id = created.upload_id().map(str::to_owned).ok_or_else(|| {
            BackendError::other(
                KIND,
                format!("start multipart upload of {key}"),
                "no upload id",
            )
        })?;
        match self
            .upload_parts(key, &upload_id, &mut reader, part_size)
            .await
        {
            Ok(parts) => {
                let completed = CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build();
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(completed)
                    .send()
                    .await
                    .map_err(|error| {
                        sdk_error(format!("complete multipart upload of {key}"), error)
                    })?;
                Ok(())
            }
            Err(error) => {
                // Best effort: the original error is what the caller needs; a bucket
                // lifecycle rule cleans up whatever an abort misses.
                if let Err(abort) = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                {
                    tracing::warn!(
                        key,
                        error = %aws_sdk_s3::error::DisplayErrorContext(&abort),
                        "cannot abort a failed multipart upload"
                    );
                }
                Err(error)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        reader: &mut ExactReader<std::pin::Pin<Box<dyn AsyncRead + Send>>>,
        part_size: u64,
    ) -> Result<Vec<CompletedPart>, BackendError> {
        let mut in_flight = JoinSet::new();
        let mut parts = Vec::new();
        let mut number = 0i32;
        loop {
            while in_flight.len() >= PARTS_IN_FLIGHT {
                parts.push(join_part(&mut in_flight).await?);
            }
            let body = read_part(reader, part_size, key).await?;
            if body.is_empty() {
                break;
            }
            number += 1;
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body));
            let operation = format!("upload part {number} of {key}");
            in_flight.spawn(async move {
                let output = request
                    .send()
                    .await
                    .map_err(|error| sdk_error(operation.clone(), error))?;
                let e_tag = output.e_tag().map(str::to_owned).ok_or_else(|| {
                    BackendError::other(KIND, operation, "the server returned no ETag")
                })?;
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .e_tag(e_tag)
                    .build())
            });
        }
        while !in_flight.is_empty() {
            parts.push(join_part(&mut in_flight).await?);
        }
        parts.sort_by_key(|part| part.part_number());
        Ok(parts)
    }
}

async fn join_part(
    in_flight: &mut JoinSet<Result<CompletedPart, BackendError>>,
) -> Result<CompletedPart, BackendError> {
    match in_flight.join_next().await {
        Some(Ok(part)) => part,
        Some(Err(error)) => Err(BackendError::other(KIND, "upload a part", error)),
        None => Err(BackendError::other(
            KIND,
            "upload a part",
            "no part in flight",
        )),
    }
}

/// Up to `limit` bytes of `reader` (fewer only at its end).
async fn read_part(
    reader: &mut (impl AsyncRead + Unpin),
    limit: u64,
    key: &str,
) -> Result<Bytes, BackendError> {
    let capacity = usize::try_from(limit).unwrap_or(usize::MAX).min(64 << 20);
    let mut buffer = Vec::with_capacity(capacity);
    reader
        .take(limit)
        .read_to_end(&mut buffer)
        .await
        .map_err(|error| BackendError::from_io(KIND, format!("read the blob for {key}"), error))?;
    Ok(Bytes::from(buffer))
}

fn credentials(config: &S3BackendConfig, auth: &AuthConfig) -> Result<Credentials, SetupError> {
    if config.username.is_empty() {
        let variable = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        return match (
            variable("AWS_ACCESS_KEY_ID"),
            variable("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => Ok(Credentials::new(
                id,
                secret,
                variable("AWS_SESSION_TOKEN"),
                None,
                "environment",
            )),
            _ => Err(SetupError::MissingCredentials(
                "no S3 credentials: set `username` to a user under `auth.s3`, or the \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables"
                    .to_owned(),
            )),
        };
    }
    let (user, secret) = auth_secret(
        &auth.s3,
        KIND,
        &config.username,
        "aws_secret_access_key",
        |user| user.secret_access_key(),
    )?;
    Ok(Credentials::new(
        user.aws_access_key_id.clone(),
        secret.expose().to_owned(),
        None,
        None,
        "kraken-config",
    ))
}

/// The endpoint URL: `endpoint` as configured, with `disable_ssl` forcing plain HTTP (also
/// towards AWS's regional endpoint when no endpoint is set).
fn endpoint(config: &S3BackendConfig) -> Option<String> {
    match (&config.endpoint, config.disable_ssl) {
        (Some(endpoint), true) => Some(match endpoint.strip_prefix("https://") {
            Some(rest) => format!("http://{rest}"),
            None => endpoint.clone(),
        }),
        (Some(endpoint), false) => Some(endpoint.clone()),
        (None, true) => Some(format!("http://s3.{}.amazonaws.com", config.region)),
        (None, false) => None,
    }
}

/// An object's size as S3 reports it (a signed header value in the SDK's model).
fn object_size(content_length: Option<i64>, key: &str) -> Result<u64, BackendError> {
    content_length
        .and_then(|length| u64::try_from(length).ok())
        .ok_or_else(|| {
            BackendError::other(
                KIND,
                format!("stat {key}"),
                "the server reported no object size",
            )
        })
}

/// Whether the SDK error is a 404 (a missing key or bucket answers so).
fn is_not_found<E>(error: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool {
    error
        .raw_response()
        .is_some_and(|response| response.status().as_u16() == 404)
}

/// Classifies an SDK error: no response, a garbled one, throttling and 5xx are transient.
fn sdk_error<E>(
    operation: String,
    error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> BackendError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let transient = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            status >= 500 || status == 429 || status == 408
        }
        _ => false,
    };
    // The SDK's Display is terse ("service error"); the context carries the server's message.
    let source: super::BoxError = aws_sdk_s3::error::DisplayErrorContext(error)
        .to_string()
        .into();
    if transient {
        BackendError::unavailable(KIND, operation, source)
    } else {
        BackendError::other(KIND, operation, source)
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn stat(
        &self,
        _namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<u64>, BackendError> {
        let key = self.layout.blob_name(digest);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(head) => object_size(head.content_length(), &key).map(Some),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(sdk_error(format!("stat {key}"), error)),
        }
    }

    async fn upload(
        &self,
        _namespace: &Namespace,
        digest: &Digest,
        source: UploadSource,
        size: u64,
    ) -> Result<(), BackendError> {
        let key = self.layout.blob_name(digest);
        let reader = ExactReader::new(source.into_reader(), size);
        tracing::debug!(%digest, key, size, bucket = %self.bucket, "uploading to S3");
        if size < self.multipart_threshold {
            self.put_whole(&key, reader, size).await
        } else {
            self.put_multipart(&key, reader, size).await
        }
    }

    async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BackendBlob, BackendError> {
        let key = self.layout.blob_name(digest);
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(error) if is_not_found(&error) => {
                return Err(BackendError::not_found(KIND, namespace, digest));
            }
            Err(error) => return Err(sdk_error(format!("get {key}"), error)),
        };
        let size = object_size(object.content_length(), &key)?;
        Ok(BackendBlob {
            size,
            reader: Box::pin(object.body.into_async_read()),
        })
    }

    async fn list(&self, _namespace_prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
        let prefix = self.layout.list_prefix();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| sdk_error(format!("list {prefix}"), error))?;
            found.extend(
                page.contents()
                    .iter()
                    .filter_map(|object| object.key())
                    .filter_map(|key| self.layout.digest_of(key))
                    .map(|digest| StoredBlob {
                        namespace: None,
                        digest,
                    }),
            );
        }
        found.sort();
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_ssl_forces_plain_http() {
        let mut config = S3BackendConfig {
            region: "eu-west-1".to_owned(),
            ..S3BackendConfig::default()
        };
        assert_eq!(endpoint(&config), None);
        config.disable_ssl = true;
        assert_eq!(
            endpoint(&config).as_deref(),
            Some("http://s3.eu-west-1.amazonaws.com")
        );
        config.endpoint = Some("https://minio:9000".to_owned());
        assert_eq!(endpoint(&config).as_deref(), Some("http://minio:9000"));
        config.disable_ssl = false;
        assert_eq!(endpoint(&config).as_deref(), Some("https://minio:9000"));
    }
}
