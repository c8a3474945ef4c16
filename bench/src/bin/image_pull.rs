//! Image pull benchmark: a 3-layer image (default ~510 MiB) pushed once through the proxy of an
//! in-process cluster (release build, loopback, real mutual TLS between components), then pulled
//! by tag the way a registry client does (manifest, then the layers concurrently, each verified
//! against its digest) from
//!
//! - Debian's `docker-registry` holding the same image (the baseline, measured in the same run),
//! - an agent whose cache is empty (cold: every byte comes over the P2P swarm from the origins),
//! - the same agent again (warm: from its store),
//! - a second agent (cold, with the first agent in the swarm).
//!
//! `cargo run --release -p kraken-bench --bin image_pull -- --layer-mib 170`
//!
//! Unshaped, loopback measures CPU: the origins, the agent, the registry and the client share
//! the machine's cores. `--link-mbit N` (root) gives the pulling host a link of N Mbit/s, as
//! in production where a host's NIC is the limit: `tc` on `lo` shapes what that host receives
//! (the registry's responses to the client; every QUIC packet the origins and agents send, as
//! one agent pulls at a time) and nothing else.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use futures::StreamExt;
use kraken_bench::loopback::LoopbackShaper;
use kraken_bench::registry::{OCI_MANIFEST, TestImage};
use kraken_devcluster::{DevCluster, Ports};
use kraken_interop::servers::DockerRegistry;
use sha2::{Digest as _, Sha256};

#[derive(Parser, Debug)]
struct Args {
    /// Size of each of the three layers, MiB.
    #[arg(long, default_value_t = 170)]
    layer_mib: usize,
    /// Pulls from the baseline registry (the best is kept).
    #[arg(long, default_value_t = 2)]
    baseline_runs: usize,
    /// The pulling host's download link, Mbit/s (shaped with tc on lo; needs root).
    #[arg(long)]
    link_mbit: Option<u32>,
}

const REPO: &str = "bench/image";

/// Pulls `REPO:v1` like a client: the manifest, then every layer and the config concurrently,
/// each hashed and checked as it streams. Returns the time and the bytes pulled.
async fn pull(http: &reqwest::Client, registry: SocketAddr) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let manifest = http
        .get(format!("http://{registry}/v2/{REPO}/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await?;
    ensure!(manifest.status() == 200, "manifest: {}", manifest.status());
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.bytes().await?)?;
    let mut digests = vec![
        manifest["config"]["digest"]
            .as_str()
            .context("config")?
            .to_owned(),
    ];
    for layer in manifest["layers"].as_array().context("layers")? {
        digests.push(layer["digest"].as_str().context("layer digest")?.to_owned());
    }
    let pulls = digests.into_iter().map(|digest| async move {
        let response = http
            .get(format!("http://{registry}/v2/{REPO}/blobs/{digest}"))
            .send()
            .await?;
        ensure!(response.status() == 200, "{digest}: {}", response.status());
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            bytes += chunk.len() as u64;
            hasher.update(&chunk);
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        ensure!(got == digest, "{digest} came back as {got}");
        anyhow::Ok(bytes)
    });
    let sizes = futures::future::try_join_all(pulls).await?;
    Ok((started.elapsed(), sizes.iter().sum()))
}

fn report(what: &str, (time, bytes): (Duration, u64), baseline: Duration, link_mbit: Option<u32>) {
    // The physical limit on a shaped link: every byte through it once.
    let bound = link_mbit
        .map(|mbit| {
            format!(
                "  {:.2}x link bound",
                time.as_secs_f64() / (bytes as f64 * 8.0 / (f64::from(mbit) * 1e6))
            )
        })
        .unwrap_or_default();
    println!(
        "  {what:<34} {:>7.2} s  {:>7.0} MB/s  {:.2}x docker-registry{bound}",
        time.as_secs_f64(),
        bytes as f64 / time.as_secs_f64() / 1e6,
        time.as_secs_f64() / baseline.as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // reqwest is built without a bundled crypto provider: use the process-wide one.
    kraken_tls::install_crypto_provider();
    let work = tempfile::Builder::new().prefix("kraken-pull-").tempdir()?;
    let image = TestImage::new(3, args.layer_mib << 20)?;
    let http = reqwest::Client::new();
    // Killed when the benchmark ends, however it ends.
    let baseline = {
        let dir = work.path().join("docker-registry");
        tokio::task::spawn_blocking(move || DockerRegistry::start(&dir)).await?
    };
    let registry = baseline.addr;
    let cluster = DevCluster::builder(work.path().join("cluster"))
        .ports(Ports::Ephemeral)
        .start()
        .await?;
    let proxy = cluster.proxy_registry_addr();
    let total = image.size();
    println!(
        "== image pull: 3 layers + config, {:.0} MiB, loopback ==",
        total as f64 / (1 << 20) as f64
    );
    let pushed = Instant::now();
    image.push(&http, registry, REPO, "v1").await?;
    println!(
        "  pushed to docker-registry in {:.2} s",
        pushed.elapsed().as_secs_f64()
    );
    let pushed = Instant::now();
    image.push(&http, proxy, REPO, "v1").await?;
    println!(
        "  pushed to the kraken proxy in {:.2} s",
        pushed.elapsed().as_secs_f64()
    );

    // Pushes went unshaped; from here on the pulling hosts have their links.
    let shaper = match args.link_mbit {
        Some(mbit) => {
            let shaper = LoopbackShaper::new(mbit)?;
            shaper.shape_tcp_from(registry.port())?;
            // Every piece sent by an origin or an agent: one agent pulls at a time, so all of
            // it is that agent's download.
            let seeders = cluster.origins.iter().map(|o| o.p2p_addr());
            for addr in seeders.chain(cluster.agents.iter().map(|a| a.p2p_addr())) {
                shaper.shape_udp_from(addr.port())?;
            }
            println!(
                "  pulling hosts' download links: {} Mbit/s (tc htb on lo)",
                shaper.mbit()
            );
            Some(shaper)
        }
        None => None,
    };
    let mut baseline = None::<(Duration, u64)>;
    for _ in 0..args.baseline_runs.max(1) {
        let run = pull(&http, registry).await?;
        baseline = Some(match baseline {
            Some(best) if best.0 <= run.0 => best,
            _ => run,
        });
    }
    let baseline = baseline.context("no baseline run")?;
    let link = args.link_mbit;
    report(
        "docker-registry (baseline, best)",
        baseline,
        baseline.0,
        link,
    );
    let agent0 = cluster.agent_registry_addr(0);
    let agent1 = cluster.agent_registry_addr(1);
    report(
        "agent 0, cold (swarm from origins)",
        pull(&http, agent0).await?,
        baseline.0,
        link,
    );
    report(
        "agent 0, warm (its store)",
        pull(&http, agent0).await?,
        baseline.0,
        link,
    );
    report(
        "agent 1, cold (origins + agent 0)",
        pull(&http, agent1).await?,
        baseline.0,
        link,
    );
    drop(shaper);
    cluster.shutdown().await;
    Ok(())
}
