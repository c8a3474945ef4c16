//! Cross-cluster replication benchmark: an image (default 4 × 256 MiB layers) pushed to cluster
//! a of two in-process clusters (one origin each, each with its own CA, release build,
//! loopback), timed from the tag's put at a to the moment cluster b's build-index names the
//! digest (every blob is in b's origins by then: b's own put checked them). The baseline, in
//! the same run with the same bytes: `skopeo copy` of the image between two Debian
//! `docker-registry` on loopback.
//!
//! `cargo run --release -p kraken-bench --bin replication -- --layers 4 --layer-mib 256`
//!
//! Loopback measures CPU: both clusters (or both registries and skopeo) share the machine's
//! cores. The ratio is Kraken's throughput over skopeo's.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kraken_bench::cpu::CpuSample;
use kraken_bench::registry::TestImage;
use kraken_core::Digest;
use kraken_devcluster::{DevClusterBuilder, DevClusters, Ports};
use kraken_interop::servers::DockerRegistry;
use kraken_oci::TaggedName;
use kraken_tls::Role;

#[derive(Parser, Debug)]
struct Args {
    /// Layers in the image.
    #[arg(long, default_value_t = 4)]
    layers: u64,
    /// Size of each layer, MiB.
    #[arg(long, default_value_t = 256)]
    layer_mib: usize,
    /// Copies between the baseline registries (the best is kept).
    #[arg(long, default_value_t = 2)]
    baseline_runs: usize,
}

const REPO: &str = "bench/replication";
/// A hang guard, not a measure.
const PATIENCE: Duration = Duration::from_secs(1800);

fn report(what: &str, time: Duration, bytes: usize, cpu: f64, baseline: Option<Duration>) {
    let ratio = baseline
        .map(|b| {
            format!(
                "  {:.2}x skopeo's throughput",
                b.as_secs_f64() / time.as_secs_f64()
            )
        })
        .unwrap_or_default();
    println!(
        "  {what:<48} {:>7.2} s  {:>6.0} MB/s  machine CPU {:>3.0}%{ratio}",
        time.as_secs_f64(),
        bytes as f64 / time.as_secs_f64() / 1e6,
        cpu * 100.0
    );
}

/// `skopeo copy` of `REPO:v1` from `from` to `to` (plain HTTP registries).
fn skopeo_copy(from: std::net::SocketAddr, to: std::net::SocketAddr) -> anyhow::Result<()> {
    let output = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{from}/{REPO}:v1"))
        .arg(format!("docker://{to}/{REPO}:v1"))
        .output()
        .context("running skopeo (apt-get install skopeo)")?;
    if !output.status.success() {
        bail!(
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    kraken_tls::install_crypto_provider();
    let work = tempfile::Builder::new()
        .prefix("kraken-replication-")
        .tempdir()?;
    let image = TestImage::new(args.layers, args.layer_mib << 20)?;
    let bytes = image.size();
    println!(
        "== replication: {} layers + config, {:.0} MiB, loopback ==",
        args.layers,
        bytes as f64 / (1 << 20) as f64
    );
    let http = reqwest::Client::new();

    // Baseline: skopeo between two docker-registries. Each run copies into a fresh target
    // registry: skopeo remembers where it has seen blobs and would mount, not copy, them.
    let source = {
        let dir = work.path().join("registry-source");
        tokio::task::spawn_blocking(move || DockerRegistry::start(&dir)).await?
    };
    image.push(&http, source.addr, REPO, "v1").await?;
    let mut best: Option<(Duration, f64)> = None;
    for run in 0..args.baseline_runs.max(1) {
        let target = {
            let dir = work.path().join(format!("registry-target-{run}"));
            tokio::task::spawn_blocking(move || DockerRegistry::start(&dir)).await?
        };
        let (from, to) = (source.addr, target.addr);
        let cpu = CpuSample::now()?;
        let started = Instant::now();
        tokio::task::spawn_blocking(move || skopeo_copy(from, to)).await??;
        let time = started.elapsed();
        let busy = CpuSample::now()?.busy_since(&cpu);
        if best.is_none_or(|(t, _)| time < t) {
            best = Some((time, busy));
        }
    }
    let (baseline, baseline_cpu) = best.context("no baseline run")?;
    report(
        "skopeo copy, docker-registry → docker-registry",
        baseline,
        bytes,
        baseline_cpu,
        None,
    );
    drop(source);

    // Kraken: cluster a replicates to b.
    let small = |_, builder: DevClusterBuilder| builder.origins(1).agents(0).max_replica(1);
    let clusters =
        DevClusters::chain(&work.path().join("clusters"), 2, Ports::Ephemeral, small).await?;
    let (a, b) = (&clusters.clusters[0], &clusters.clusters[1]);
    let proxy = a.proxy_registry_addr();
    image.push_blobs(&http, proxy, REPO).await?;
    let tag: TaggedName = format!("{REPO}:v1").parse()?;
    let digest: Digest = image.digest().parse()?;
    let at_b = b.tag_client(Role::Client)?;
    let cpu = CpuSample::now()?;
    let started = Instant::now();
    // The proxy puts the tag with `replicate`: that queues the task.
    image.push_manifest(&http, proxy, REPO, "v1").await?;
    loop {
        if at_b.has_digest(&tag).await? == Some(digest) {
            break;
        }
        if started.elapsed() > PATIENCE {
            bail!("{tag} never reached cluster b");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let time = started.elapsed();
    let busy = CpuSample::now()?.busy_since(&cpu);
    report(
        "kraken a → b (tag put to b's put)",
        time,
        bytes,
        busy,
        Some(baseline),
    );
    clusters.shutdown().await;
    Ok(())
}
