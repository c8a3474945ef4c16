//! Blob commands for humans and scripts: `kraken push` a file (or every file of a directory)
//! to the origins, `kraken pull` a blob by digest or by `repository:tag` through the local agent, `kraken prefetch` a blob into an origin's cache. Each long
//! transfer shows a progress bar on a terminal and logs progress otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use kraken_core::{Digest, Namespace, Sha256Hasher};
use kraken_originclient::OriginClient;
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
    pub(crate) fn load(&self) -> anyhow::Result<TlsMaterial> {
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
    /// File to upload, or a directory: every regular file under it is uploaded, one blob each.
    path: PathBuf,
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
    /// What to pull: a digest `sha256:<hex>` (with --namespace), or `repository:tag`, resolved
    /// to its manifest's digest by the build-index (the manifest is what is pulled).
    target: String,
    /// gRPC address of the agent (host:port), usually the local one.
    #[arg(long, default_value = "127.0.0.1:16002")]
    agent: String,
    /// Namespace of a blob pulled by digest (a tag names its own repository).
    #[arg(long)]
    namespace: Option<Namespace>,
    /// gRPC address of a build-index, to resolve `repository:tag`.
    #[arg(long, default_value = "127.0.0.1:15004")]
    build_index: String,
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
    let client = OriginClient::connect(&tls, &args.origin)?;
    let files = files_under(&args.path)?;
    if files.is_empty() {
        bail!("{} holds no regular file to push", args.path.display());
    }
    for file in &files {
        let digest = push_file(&client, &args, file).await?;
        // One line per blob, `digest  path`, like sha256sum: easy to feed to scripts.
        println!("{digest}  {}", file.display());
    }
    Ok(())
}

/// `path` itself when it is a file, else every regular file under it, sorted.
fn files_under(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

async fn push_file(client: &OriginClient, args: &PushArgs, file: &Path) -> anyhow::Result<Digest> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let digest = hash_file(file, size).await?;
    let progress = Arc::new(ProgressReporter::new(
        size,
        format!("push {}", file.display()),
    ));
    let opened = tokio::fs::File::open(file).await?;
    let counted = tokio_util::io::ReaderStream::with_capacity(opened, 1 << 20).map({
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
        .with_context(|| format!("uploading {} to {}", file.display(), args.origin))?;
    progress.finish();
    let state = if uploaded.created {
        "uploaded"
    } else {
        "already stored"
    };
    eprintln!("{state}: {} ({} bytes)", file.display(), uploaded.size);
    Ok(digest)
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

/// The blob `target` names: a digest in `--namespace`, or the manifest a tag points at.
async fn resolve_target(args: &PullArgs, tls: &TlsMaterial) -> anyhow::Result<(Namespace, Digest)> {
    if args.target.starts_with("sha256:") {
        let digest: Digest = args.target.parse().context("the digest to pull")?;
        let Some(namespace) = args.namespace.clone() else {
            bail!("pulling by digest needs --namespace (the blob's repository)");
        };
        return Ok((namespace, digest));
    }
    let tagged: kraken_oci::TaggedName = args.target.parse().with_context(|| {
        format!(
            "`{}` is neither sha256:<hex> nor repository:tag",
            args.target
        )
    })?;
    let tags = kraken_tagclient::TagClient::new(
        &kraken_config::cluster::UpstreamConfig::of([args.build_index.clone()]),
        tls,
    )?;
    let digest = tags
        .resolve(&tagged)
        .await
        .with_context(|| format!("resolving {tagged} at build-index {}", args.build_index))?;
    eprintln!("{tagged} -> {digest}");
    Ok((tagged.repository, digest))
}

pub(crate) async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let (namespace, digest) = resolve_target(&args, &tls).await?;
    let channel =
        kraken_transport::grpc::channel(&tls, &args.agent, None, kraken_tls::Role::Agent)?;
    let mut client = AgentServiceClient::new(channel);
    let request = GetBlobRequest {
        namespace: namespace.to_string(),
        digest: digest.to_string(),
        offset: 0,
        length: None,
    };
    let mut stream = client
        .get_blob(request)
        .await
        .with_context(|| format!("asking agent {} for {digest}", args.agent))?
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
    let progress = (!args.quiet).then(|| ProgressReporter::new(0, format!("pull {digest}")));
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
        eprintln!("{digest}: {total} bytes, verified");
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
