//! A moto S3 server (`moto[server]` from PyPI, in tests/run.sh's venv) with one bucket, on a
//! free loopback port; killed when dropped.

use std::process::Command;

use bytesize::ByteSize;
use kraken_config::backend::{NamePath, S3BackendConfig};

use super::{ServerProcess, free_port, http, venv_program};

pub const BUCKET: &str = "kraken-blobs";

/// A moto server with one bucket.
pub struct Moto {
    _server: ServerProcess,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub async fn start() -> Self {
        // `free_port` releases the port before moto binds it, so another test's server can
        // take it in between: then moto exits and the other server answers. Such a start is
        // detected (moto gone, or the bucket request not answered by moto) and retried on a
        // new port.
        for attempt in 1..=5 {
            let program = venv_program("moto_server", "moto[server]");
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let mut command = Command::new(program);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            let mut server = ServerProcess::start(
                "moto_server",
                command,
                ([127, 0, 0, 1], port).into(),
                &dir.path().join("moto.log"),
            );
            let endpoint = format!("http://127.0.0.1:{port}");
            // moto accepts unsigned requests, so plain HTTP is enough to create the bucket and
            // to look at objects independently of the backend under test.
            let created = http().put(format!("{endpoint}/{BUCKET}")).send().await;
            match created {
                Ok(response) if response.status().is_success() && server.running() => {
                    return Self {
                        _server: server,
                        endpoint,
                        _dir: dir,
                    };
                }
                other => eprintln!(
                    "moto on port {port} (attempt {attempt}) lost its port to another server: \
                     {other:?}; trying another"
                ),
            }
        }
        panic!("moto_server could not get a port of its own in 5 attempts");
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
