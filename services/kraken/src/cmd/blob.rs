//! Blob commands for humans and scripts: `kraken push` a file to the origins, `kraken pull` a
//! blob through the local agent, `kraken prefetch` a blob into an origin's cache. Each long
//! transfer shows a progress bar on a terminal and logs progress otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use kraken_core::{Digest, Namespace, Sha256Hasher};
use kraken_origin::OriginClient;
use kraken_proto::agent::v1::{GetBlobRequest, agent_service_client::AgentServiceClient};
use kraken_proto::origin::v1::PrefetchRequest;
use kraken_telemetry::ProgressReporter;
use kraken_tls::{TlsConfig, TlsMaterial};
use tokio::io::AsyncWriteExt;

/// Which certificate a command presents.
#[derive(Args, Debug, Clone)]
pub(crate) struct ClientTls {
    /// Directory written by `kraken certs`: its ca.pem and client.pem/client.key are used.
    #[arg(long, default_value = "pki")]
    pki: PathBuf,
    /// CA certificate (overrides --pki).
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// Client certificate (overrides --pki).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key (overrides --pki).
    #[arg(long)]
    key: Option<PathBuf>,
}

impl ClientTls {
    fn load(&self) -> anyhow::Result<TlsMaterial> {
        let config = TlsConfig {
            ca: self.ca.clone().unwrap_or_else(|| self.pki.join("ca.pem")),
            cert: self
                .cert
                .clone()
                .unwrap_or_else(|| self.pki.join("client.pem")),
            key: self
                .key
                .clone()
                .unwrap_or_else(|| self.pki.join("client.key")),
        };
        TlsMaterial::load(&config).context("loading the client certificate")
    }
}

#[derive(Args, Debug)]
pub(crate) struct PushArgs {
    /// File to upload.
    file: PathBuf,
    /// gRPC address of an origin (host:port).
    #[arg(long)]
    origin: String,
    /// Namespace (repository) the blob belongs to; it selects the storage backend.
    #[arg(long)]
    namespace: Namespace,
    #[command(flatten)]
    tls: ClientTls,
}

#[derive(Args, Debug)]
pub(crate) struct PullArgs {
    /// Digest of the blob, `sha256:<hex>`.
    digest: Digest,
    /// gRPC address of the agent (host:port), usually the local one.
    #[arg(long, default_value = "127.0.0.1:16002")]
    agent: String,
    #[arg(long)]
    namespace: Namespace,
    /// Where to write the blob (`-` for standard output).
    #[arg(long, short)]
    output: PathBuf,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    tls: ClientTls,
}

#[derive(Args, Debug)]
pub(crate) struct PrefetchArgs {
    digest: Digest,
    /// gRPC address of an origin that owns the blob.
    #[arg(long)]
    origin: String,
    #[arg(long)]
    namespace: Namespace,
    /// How long to wait for the origin to have it.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    #[command(flatten)]
    tls: ClientTls,
}

pub(crate) async fn push(args: PushArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();
    let digest = hash_file(&args.file, size).await?;
    let client = OriginClient::connect(&tls, &args.origin)?;
    let progress = Arc::new(ProgressReporter::new(
        size,
        format!("push {}", args.file.display()),
    ));
    let file = tokio::fs::File::open(&args.file).await?;
    let counted = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map({
        let progress = progress.clone();
        move |chunk| {
            if let Ok(chunk) = &chunk {
                progress.inc(chunk.len() as u64);
            }
            chunk
        }
    });
    let uploaded = client
        .upload_stream(&args.namespace, &digest, counted, Some(size))
        .await
        .with_context(|| format!("uploading to {}", args.origin))?;
    progress.finish();
    let state = if uploaded.created {
        "uploaded"
    } else {
        "already stored"
    };
    eprintln!("{state}: {} bytes", uploaded.size);
    println!("{digest}");
    Ok(())
}

async fn hash_file(path: &Path, size: u64) -> anyhow::Result<Digest> {
    let progress = Arc::new(ProgressReporter::new(
        size,
        format!("sha256 {}", path.display()),
    ));
    let path = path.to_owned();
    let reporter = progress.clone();
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let read = file.read(&mut buf)?;
            if read == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..read]);
            reporter.inc(read as u64);
        }
    })
    .await??;
    progress.finish();
    Ok(digest)
}

pub(crate) async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let channel = kraken_transport::grpc::channel(&tls, &args.agent, None)?;
    let mut client = AgentServiceClient::new(channel);
    let request = GetBlobRequest {
        namespace: args.namespace.to_string(),
        digest: args.digest.to_string(),
        offset: 0,
        length: None,
    };
    let mut stream = client
        .get_blob(request)
        .await
        .with_context(|| format!("asking agent {} for {}", args.agent, args.digest))?
        .into_inner();
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if args.output == Path::new("-") {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(
            tokio::fs::File::create(&args.output)
                .await
                .with_context(|| format!("creating {}", args.output.display()))?,
        )
    };
    let progress = (!args.quiet).then(|| ProgressReporter::new(0, format!("pull {}", args.digest)));
    let mut total = 0u64;
    while let Some(message) = stream.message().await.context("receiving the blob")? {
        out.write_all(&message.chunk).await?;
        total += message.chunk.len() as u64;
        if let Some(progress) = &progress {
            progress.inc(message.chunk.len() as u64);
        }
    }
    out.flush().await?;
    if let Some(progress) = progress {
        progress.finish();
        eprintln!("{}: {total} bytes, verified", args.digest);
    }
    Ok(())
}

pub(crate) async fn prefetch(args: PrefetchArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let client = OriginClient::connect(&tls, &args.origin)?;
    let request = PrefetchRequest {
        namespace: args.namespace.to_string(),
        digest: args.digest.to_string(),
    };
    client.raw().prefetch(request).await.context("prefetch")?;
    let metainfo = client
        .wait_for_metainfo(&args.namespace, &args.digest, args.timeout)
        .await
        .context("waiting for the origin to hold the blob")?;
    if metainfo.digest() != &args.digest {
        bail!(
            "the origin answered with metainfo for {}",
            metainfo.digest()
        );
    }
    eprintln!(
        "{} ready on {} ({} bytes)",
        args.digest,
        args.origin,
        metainfo.length()
    );
    Ok(())
}
