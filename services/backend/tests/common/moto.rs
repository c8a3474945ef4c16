//! A moto S3 server (`moto[server]` from PyPI, in tests/run.sh's venv) with one bucket, on a
//! free loopback port of its own ([`ServerProcess::start_on_free_port`]); killed when dropped.

use std::process::Command;

use bytesize::ByteSize;
use kraken_config::backend::{NamePath, S3BackendConfig};

use super::{ServerProcess, http, venv_program};

pub const BUCKET: &str = "kraken-blobs";

/// A moto server with one bucket.
pub struct Moto {
    _server: ServerProcess,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub async fn start() -> Self {
        let program = venv_program("moto_server", "moto[server]");
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_on_free_port(
            "moto_server",
            |port| {
                let mut command = Command::new(&program);
                command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                command
            },
            &dir.path().join("moto.log"),
        );
        let endpoint = format!("http://{}", server.addr);
        // moto accepts unsigned requests, so plain HTTP is enough to create the bucket and to
        // look at objects independently of the backend under test.
        let created = http()
            .put(format!("{endpoint}/{BUCKET}"))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "{created:?}");
        Self {
            _server: server,
            endpoint,
            _dir: dir,
        }
    }

    pub fn config(&self, root: &str, name_path: NamePath) -> S3BackendConfig {
        S3BackendConfig {
            region: "us-east-1".to_owned(),
            bucket: BUCKET.to_owned(),
            root_directory: root.to_owned(),
            name_path,
            username: "kraken".to_owned(),
            endpoint: Some(self.endpoint.clone()),
            force_path_style: true,
            disable_ssl: true,
            upload_part_size: ByteSize::mib(5),
            multipart_threshold: ByteSize::mib(6),
        }
    }

    /// A plain SDK client, to look at the bucket independently of the backend under test.
    pub fn sdk(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "moto-key",
                "moto-secret",
                None,
                None,
                "test",
            ))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .http_client(http)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The object at `key`, read without the backend.
    pub async fn raw_object(&self, key: &str) -> Option<Vec<u8>> {
        let object = self
            .sdk()
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(object.body.collect().await.unwrap().to_vec())
    }

    /// `ListMultipartUploads`: uploads started and neither completed nor aborted.
    pub async fn pending_multipart_uploads(&self) -> usize {
        let uploads = self
            .sdk()
            .list_multipart_uploads()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
        uploads.uploads().len()
    }
}
