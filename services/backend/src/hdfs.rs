//! `hdfs:` — blobs as files in HDFS through its WebHDFS REST API.
//!
//! The name nodes are tried in order; a node that refuses connections or answers
//! `StandbyException` (the passive half of an HA pair) is skipped, and the node that answered
//! is tried first next time. Reads and writes follow WebHDFS's two-step protocol: the name
//! node redirects (307) to a data node, which serves or accepts the bytes; redirects are
//! followed by hand because the write's first step must not carry the body.
//!
//! A blob is written to a temporary file next to its final path and renamed into place, so a
//! reader sees a whole blob or none, even if the writer dies mid-upload.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kraken_config::backend::HdfsBackendConfig;
use kraken_core::{Digest, Namespace};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode, Url};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use super::layout::ObjectLayout;
use super::request::{
    blob_download, build_client, client_builder, error_body, json_body, status_error,
    transport_error,
};
use super::stream::ExactReader;
use super::{Backend, BackendBlob, BackendError, SetupError, StoredBlob, UploadSource};

const KIND: &str = "hdfs";
/// Longest silence from a node (headers, or between body chunks) before a request fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Metadata responses; a directory listing of a million blobs is ~200 MB, so listings that
/// large need LISTSTATUS_BATCH, which we do not use yet.
const METADATA_LIMIT: usize = 256 << 20;

/// Blobs under a directory of an HDFS cluster.
#[derive(Debug)]
pub struct HdfsBackend {
    http: reqwest::Client,
    name_nodes: Vec<String>,
    /// Index of the name node that answered last (the active one of an HA pair).
    active: AtomicUsize,
    layout: ObjectLayout,
    user_name: String,
    buffer_size: u64,
}

#[derive(Deserialize)]
struct FileStatusResponse {
    #[serde(rename = "FileStatus")]
    file_status: FileStatus,
}

#[derive(Deserialize)]
struct FileStatus {
    #[serde(default, rename = "pathSuffix")]
    path_suffix: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    length: u64,
}

#[derive(Deserialize)]
struct ListStatusResponse {
    #[serde(rename = "FileStatuses")]
    file_statuses: FileStatuses,
}

#[derive(Deserialize)]
struct FileStatuses {
    #[serde(rename = "FileStatus", default)]
    file_status: Vec<FileStatus>,
}

#[derive(Deserialize)]
struct BooleanResponse {
    boolean: bool,
}

impl HdfsBackend {
    pub fn new(config: &HdfsBackendConfig) -> Result<Self, SetupError> {
        Ok(Self {
            http: build_client(
                client_builder()
                    .read_timeout(READ_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none()),
            )?,
            name_nodes: config.name_nodes.clone(),
            active: AtomicUsize::new(0),
            layout: ObjectLayout::absolute_paths(&config.root_directory, config.name_path),
            user_name: config.user_name.clone(),
            buffer_size: config.buffer_size.as_u64(),
        })
    }

    pub fn layout(&self) -> &ObjectLayout {
        &self.layout
    }

    fn url(
        &self,
        node: &str,
        path: &str,
        op: &str,
        extra: &[(&str, &str)],
    ) -> Result<Url, BackendError> {
        let mut url = Url::parse(&format!("http://{node}/webhdfs/v1"))
            .map_err(|error| BackendError::other(KIND, format!("name node `{node}`"), error))?;
        url.path_segments_mut()
            .map_err(|()| {
                BackendError::other(KIND, format!("name node `{node}`"), "not a base URL")
            })?
            .extend(path.split('/').filter(|segment| !segment.is_empty()));
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("op", op);
            if !self.user_name.is_empty() {
                query.append_pair("user.name", &self.user_name);
            }
            for (key, value) in extra {
                query.append_pair(key, value);
            }
        }
        Ok(url)
    }

    /// Sends `op` on `path` to the active name node, failing over to the next ones.
    async fn name_node(
        &self,
        method: Method,
        path: &str,
        op: &str,
        extra: &[(&str, &str)],
    ) -> Result<Response, BackendError> {
        let operation = format!("{op} {path}");
        let count = self.name_nodes.len();
        let first = self.active.load(Ordering::Relaxed);
        let mut last_error = None;
        for attempt in 0..count {
            let index = (first + attempt) % count;
            let node = &self.name_nodes[index];
            let url = self.url(node, path, op, extra)?;
            let response = match self.http.request(method.clone(), url).send().await {
                Ok(response) => response,
                Err(error) => {
                    tracing::warn!(node, error = %error, "WebHDFS name node unreachable");
                    last_error = Some(transport_error(
                        KIND,
                        format!("{operation} on {node}"),
                        error,
                    ));
                    continue;
                }
            };
            if response.status() == StatusCode::FORBIDDEN {
                let body = error_body(response).await;
                if body.contains("StandbyException") {
                    tracing::debug!(node, "WebHDFS name node is standby; trying the next one");
                    last_error = Some(BackendError::unavailable(
                        KIND,
                        format!("{operation} on {node}"),
                        "the name node is in standby",
                    ));
                    continue;
                }
                return Err(BackendError::other(
                    KIND,
                    operation,
                    format!("HTTP 403 Forbidden: {body}"),
                ));
            }
            self.active.store(index, Ordering::Relaxed);
            return Ok(response);
        }
        Err(last_error.unwrap_or_else(|| {
            BackendError::unavailable(KIND, operation, "no name node is configured")
        }))
    }

    /// The data node URL a 307 points at.
    fn redirect_target(response: &Response, operation: &str) -> Result<Url, BackendError> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| {
                BackendError::other(KIND, operation.to_owned(), "a redirect without Location")
            })?;
        response
            .url()
            .join(location)
            .map_err(|error| BackendError::other(KIND, operation.to_owned(), error))
    }

    async fn file_status(&self, path: &str) -> Result<Option<FileStatus>, BackendError> {
        let response = self
            .name_node(Method::GET, path, "GETFILESTATUS", &[])
            .await?;
        let operation = format!("GETFILESTATUS {path}");
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => {
                let status: FileStatusResponse =
                    json_body(KIND, &operation, response, METADATA_LIMIT).await?;
                Ok(Some(status.file_status))
            }
            _ => Err(status_error(KIND, operation, response).await),
        }
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<FileStatus>, BackendError> {
        let response = self.name_node(Method::GET, path, "LISTSTATUS", &[]).await?;
        let operation = format!("LISTSTATUS {path}");
        match response.status() {
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            status if status.is_success() => {
                let list: ListStatusResponse =
                    json_body(KIND, &operation, response, METADATA_LIMIT).await?;
                Ok(list.file_statuses.file_status)
            }
            _ => Err(status_error(KIND, operation, response).await),
        }
    }

    /// CREATE `temp` with the blob's bytes (both WebHDFS steps).
    async fn create(
        &self,
        temp: &str,
        source: UploadSource,
        size: u64,
    ) -> Result<(), BackendError> {
        let operation = format!("CREATE {temp}");
        let buffer_size = self.buffer_size.to_string();
        let response = self
            .name_node(
                Method::PUT,
                temp,
                "CREATE",
                &[("overwrite", "true"), ("buffersize", &buffer_size)],
            )
            .await?;
        if response.status() != StatusCode::TEMPORARY_REDIRECT {
            return Err(status_error(KIND, operation, response).await);
        }
        let data_node = Self::redirect_target(&response, &operation)?;
        let body = ReaderStream::new(ExactReader::new(source.into_reader(), size));
        let response = self
            .http
            .put(data_node)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|error| transport_error(KIND, operation.clone(), error))?;
        if !response.status().is_success() {
            return Err(status_error(KIND, operation, response).await);
        }
        Ok(())
    }

    /// Renames the written `temp` to `path`. HDFS refuses to rename onto an existing file;
    /// for content-addressed blobs an existing file of the right size is the same blob, written
    /// by a concurrent upload.
    async fn publish(&self, temp: &str, path: &str, size: u64) -> Result<(), BackendError> {
        let operation = format!("RENAME {temp} to {path}");
        let response = self
            .name_node(Method::PUT, temp, "RENAME", &[("destination", path)])
            .await?;
        if !response.status().is_success() {
            return Err(status_error(KIND, operation, response).await);
        }
        let renamed: BooleanResponse =
            json_body(KIND, &operation, response, METADATA_LIMIT).await?;
        if renamed.boolean {
            return Ok(());
        }
        match self.file_status(path).await? {
            Some(existing) if existing.kind == "FILE" && existing.length == size => {
                self.delete(temp).await;
                Ok(())
            }
            existing => Err(BackendError::other(
                KIND,
                operation,
                format!(
                    "the rename was refused; the destination holds {:?} bytes",
                    existing.map(|status| status.length)
                ),
            )),
        }
    }

    /// Best-effort removal of a temporary file.
    async fn delete(&self, path: &str) {
        match self.name_node(Method::DELETE, path, "DELETE", &[]).await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                tracing::warn!(path, status = %response.status(), "cannot delete a temporary HDFS file");
            }
            Err(error) => {
                tracing::warn!(path, error = %error, "cannot delete a temporary HDFS file")
            }
        }
    }
}

#[async_trait]
impl Backend for HdfsBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn stat(
        &self,
        _namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<u64>, BackendError> {
        let path = self.layout.blob_name(digest);
        Ok(self
            .file_status(&path)
            .await?
            .filter(|status| status.kind == "FILE")
            .map(|status| status.length))
    }

    async fn upload(
        &self,
        _namespace: &Namespace,
        digest: &Digest,
        source: UploadSource,
        size: u64,
    ) -> Result<(), BackendError> {
        let path = self.layout.blob_name(digest);
        // Next to the final path (same directory, so the rename is a metadata operation), with
        // a name no listing mistakes for a blob.
        let temp = format!("{path}.{:016x}.tmp", rand::random::<u64>());
        tracing::debug!(%digest, path, size, "uploading to HDFS");
        let result = match self.create(&temp, source, size).await {
            Ok(()) => self.publish(&temp, &path, size).await,
            Err(error) => Err(error),
        };
        if result.is_err() {
            self.delete(&temp).await;
        }
        result
    }

    async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BackendBlob, BackendError> {
        let path = self.layout.blob_name(digest);
        let operation = format!("OPEN {path}");
        let mut response = self.name_node(Method::GET, &path, "OPEN", &[]).await?;
        if response.status() == StatusCode::TEMPORARY_REDIRECT {
            let data_node = Self::redirect_target(&response, &operation)?;
            response = self
                .http
                .get(data_node)
                .send()
                .await
                .map_err(|error| transport_error(KIND, operation.clone(), error))?;
        }
        blob_download(KIND, namespace, digest, operation, response, || {
            self.stat(namespace, digest)
        })
        .await
    }

    async fn list(&self, _namespace_prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
        let root = self.layout.list_prefix();
        let mut names = Vec::new();
        match self.layout.name_path() {
            kraken_config::backend::NamePath::ShardedDockerBlob => {
                // <root>/<2 hex>/<hex>/data: three levels, only directories that can be blobs.
                for shard in self.list_dir(&root).await? {
                    if shard.kind != "DIRECTORY" || shard.path_suffix.len() != 2 {
                        continue;
                    }
                    let shard_dir = format!("{root}{}/", shard.path_suffix);
                    for blob in self.list_dir(&shard_dir).await? {
                        if blob.kind != "DIRECTORY" {
                            continue;
                        }
                        let blob_dir = format!("{shard_dir}{}/", blob.path_suffix);
                        let has_data = self
                            .list_dir(&blob_dir)
                            .await?
                            .iter()
                            .any(|file| file.kind == "FILE" && file.path_suffix == "data");
                        if has_data {
                            names.push(format!("{blob_dir}data"));
                        }
                    }
                }
            }
            _ => {
                for file in self.list_dir(&root).await? {
                    if file.kind == "FILE" {
                        names.push(format!("{root}{}", file.path_suffix));
                    }
                }
            }
        }
        let mut found: Vec<StoredBlob> = names
            .iter()
            .filter_map(|name| self.layout.digest_of(name))
            .map(|digest| StoredBlob {
                namespace: None,
                digest,
            })
            .collect();
        found.sort();
        Ok(found)
    }
}
