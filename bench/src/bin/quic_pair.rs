//! Loopback pair benchmark: one peer sends a blob to another.
//!
//! - **Transport**: bytes from memory to memory over one QUIC connection with mutual TLS (our
//!   `kraken-p2p/1` endpoint) vs over TLS on TCP (rustls, same provider and suite).
//! - **End to end**: a blob from one peer's store to another's, verified: the P2P scheduler
//!   (QUIC, pieces hashed with BLAKE3, whole blob with SHA-256, written to disk) vs an HTTPS
//!   download of the same file (TLS over TCP, SHA-256, written to disk).
//!
//! Both sides run in this process on a 2-worker runtime, so both compete for the same 2 cores,
//! as on a real host that also runs the workload. Prints MB/s and QUIC/TLS-TCP ratios.
//!
//! `cargo run --release -p kraken-bench --bin quic_pair -- --size-mib 1024`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use kraken_config::store::StoreConfig;
use kraken_core::{Digest, Namespace, PeerId, PeerInfo, Sha256Hasher};
use kraken_scheduler::{AnnounceError, AnnounceReply, Announcer, DriverConfig, Scheduler};
use kraken_store::{BlobStore, CommitOptions};
use kraken_tls::{DevCa, LeafOptions, Role, ServerCheck, TlsMaterial};
use kraken_transport::bandwidth::BandwidthLimiter;
use kraken_transport::quic::{PeerEndpoint, QuicTuning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
struct Args {
    /// Blob size, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Repetitions of each measurement (best is reported).
    #[arg(long, default_value_t = 2)]
    runs: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    kraken_tls::install_crypto_provider();
    let ca = DevCa::new()?;
    let material = |role| -> anyhow::Result<TlsMaterial> {
        let issued = ca.issue(role, &LeafOptions::default())?;
        Ok(TlsMaterial::from_pem(
            ca.cert_pem(),
            &issued.cert_pem,
            &issued.key_pem,
        )?)
    };
    let (origin_tls, agent_tls) = (material(Role::Origin)?, material(Role::Agent)?);
    let size = args.size_mib << 20;
    println!(
        "loopback pair, {} MiB, best of {} runs, 2 cores shared by both ends",
        args.size_mib, args.runs
    );

    let best = |rates: Vec<f64>| rates.into_iter().fold(0.0f64, f64::max);
    let mut quic = Vec::new();
    let mut tcp = Vec::new();
    for _ in 0..args.runs {
        quic.push(quic_transport(&origin_tls, &agent_tls, size).await?);
        tcp.push(tls_tcp_transport(&origin_tls, &agent_tls, size).await?);
    }
    let (quic, tcp) = (best(quic), best(tcp));
    println!("transport (one single-threaded runtime per side, like two processes)");
    println!(
        "transport  QUIC+mTLS {:>7.0} MB/s   TLS/TCP {:>7.0} MB/s   QUIC/TCP {:.2}x",
        quic / 1e6,
        tcp / 1e6,
        quic / tcp
    );

    let dir = tempfile::tempdir()?;
    let blob = make_blob(size);
    let digest = Digest::of(&blob);
    let mut p2p = Vec::new();
    let mut https = Vec::new();
    for run in 0..args.runs {
        p2p.push(
            p2p_end_to_end(
                &origin_tls,
                &agent_tls,
                &dir.path().join(format!("p2p{run}")),
                &blob,
            )
            .await?,
        );
        https.push(
            https_end_to_end(
                &origin_tls,
                &agent_tls,
                &dir.path().join(format!("https{run}")),
                &blob,
                &digest,
            )
            .await?,
        );
    }
    let (p2p, https) = (best(p2p), best(https));
    println!(
        "end to end P2P (QUIC) {:>7.0} MB/s   HTTPS   {:>7.0} MB/s   P2P/HTTPS {:.2}x",
        p2p / 1e6,
        https / 1e6,
        p2p / https
    );
    Ok(())
}

fn make_blob(size: u64) -> Bytes {
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size as usize);
    out.into()
}

/// Runs `side` on its own thread with a single-threaded runtime, as a separate process would.
fn on_own_thread<T: Send + 'static>(
    side: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>>>>
    + Send
    + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(side())
    })
}

fn join<T>(handle: std::thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
}

/// Memory to memory over one QUIC stream, each end on its own single-threaded runtime.
async fn quic_transport(
    server: &TlsMaterial,
    client: &TlsMaterial,
    size: u64,
) -> anyhow::Result<f64> {
    let (server, client) = (server.clone(), client.clone());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let receiver = on_own_thread(move || {
        Box::pin(async move {
            let a = PeerEndpoint::bind("127.0.0.1:0".parse()?, &server, &QuicTuning::default())?;
            addr_tx.send(a.local_addr()?)?;
            let connection = a.accept().await.context("accept")?;
            let mut stream = connection.accept_uni().await?;
            let mut total = 0u64;
            while let Some(chunk) = stream.read_chunk(1 << 20, true).await? {
                total += chunk.bytes.len() as u64;
            }
            anyhow::Ok(total)
        })
    });
    let addr: SocketAddr = addr_rx.recv()?;
    let sender = on_own_thread(move || {
        Box::pin(async move {
            let b = PeerEndpoint::bind("127.0.0.1:0".parse()?, &client, &QuicTuning::default())?;
            let connection = b.connect(addr).await?;
            let chunk = Bytes::from(vec![7u8; 1 << 20]);
            let started = Instant::now();
            let mut stream = connection.open_uni().await?;
            let mut sent = 0;
            while sent < size {
                stream.write_chunk(chunk.clone()).await?;
                sent += chunk.len() as u64;
            }
            stream.finish()?;
            stream.stopped().await?;
            let stats = connection.stats();
            eprintln!(
                "  (quic: path MTU {} bytes, {} datagrams sent, {} lost, congestion events {})",
                stats.path.current_mtu,
                stats.udp_tx.datagrams,
                stats.path.lost_packets,
                stats.path.congestion_events
            );
            anyhow::Ok(started)
        })
    });
    let started = join(sender)?;
    let received = join(receiver)?;
    Ok(received as f64 / started.elapsed().as_secs_f64())
}

/// Memory to memory over TLS on TCP, each end on its own single-threaded runtime.
async fn tls_tcp_transport(
    server: &TlsMaterial,
    client: &TlsMaterial,
    size: u64,
) -> anyhow::Result<f64> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server.server_config(&[])?));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        client.client_config(&[], ServerCheck::Hostname)?,
    ));
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let receiver = on_own_thread(move || {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = tls.read(&mut buf).await?;
                if n == 0 {
                    return anyhow::Ok(total);
                }
                total += n as u64;
            }
        })
    });
    let sender = on_own_thread(move || {
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let mut tls = connector.connect("localhost".try_into()?, tcp).await?;
            let chunk = vec![7u8; 1 << 20];
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < size {
                tls.write_all(&chunk).await?;
                sent += chunk.len() as u64;
            }
            tls.shutdown().await?;
            // Read what the server sent (TLS 1.3 session tickets) until it closes: closing with
            // unread data would reset the connection under the receiver.
            let mut rest = Vec::new();
            let _ = tls.read_to_end(&mut rest).await;
            anyhow::Ok(started)
        })
    });
    let started = join(sender)?;
    let received = join(receiver)?;
    Ok(received as f64 / started.elapsed().as_secs_f64())
}

struct StaticPeer(PeerInfo);

#[async_trait]
impl Announcer for StaticPeer {
    async fn announce(
        &self,
        _: &Namespace,
        _: &Digest,
        _: &PeerInfo,
    ) -> Result<AnnounceReply, AnnounceError> {
        Ok(AnnounceReply {
            peers: vec![self.0],
            interval: Duration::from_secs(5),
        })
    }
}

async fn scheduler(
    tls: &TlsMaterial,
    dir: &std::path::Path,
    origin: bool,
    announcer: Option<Arc<dyn Announcer>>,
) -> anyhow::Result<(Scheduler, BlobStore, SocketAddr)> {
    let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse()?, tls, &QuicTuning::default())?;
    let addr = endpoint.local_addr()?;
    let store = BlobStore::open(StoreConfig {
        dir: dir.to_owned(),
        ..StoreConfig::default()
    })
    .await?;
    let local = PeerInfo {
        peer_id: PeerId::random(),
        addr,
        complete: false,
        origin,
    };
    let mut config = DriverConfig::from_config(&Default::default(), origin);
    if std::env::var("NO_SUPER_SEED").is_ok() {
        config.super_seed = false;
    }
    if let Some(limit) = std::env::var("PIPELINE").ok().and_then(|v| v.parse().ok()) {
        config.swarm.origin_pipeline_limit = limit;
        config.swarm.pipeline_limit = limit;
    }
    let scheduler = Scheduler::start(
        local,
        config,
        endpoint,
        store.clone(),
        BandwidthLimiter::unlimited(),
        announcer,
    );
    Ok((scheduler, store, addr))
}

/// Store to store through the P2P scheduler, verified.
async fn p2p_end_to_end(
    server: &TlsMaterial,
    client: &TlsMaterial,
    dir: &std::path::Path,
    blob: &Bytes,
) -> anyhow::Result<f64> {
    let (seeder, seeder_store, _) = scheduler(server, &dir.join("seeder"), true, None).await?;
    let digest = Digest::of(blob);
    let metainfo = seeder_store
        .put_bytes(&digest, blob.clone(), &CommitOptions::default())
        .await?
        .metainfo()
        .clone();
    let (leecher, leecher_store, _) = scheduler(
        client,
        &dir.join("leecher"),
        false,
        Some(Arc::new(StaticPeer(*seeder.local()))),
    )
    .await?;
    let namespace: Namespace = "bench/pair".parse()?;
    let started = Instant::now();
    let kraken_scheduler::BlobState::Downloading(mut download) =
        leecher.download(&namespace, &metainfo).await?
    else {
        anyhow::bail!("the leecher already held the blob");
    };
    let mut watcher = download.status.clone();
    let total = metainfo.num_pieces();
    let all_pieces = tokio::spawn(async move {
        loop {
            if let kraken_scheduler::Status::Downloading { pieces, .. } =
                *watcher.borrow_and_update()
                && pieces == total
            {
                return Some(started.elapsed());
            }
            if watcher.changed().await.is_err() {
                return None;
            }
        }
    });
    download.wait().await?;
    let elapsed = started.elapsed();
    if let Ok(Some(pieces_at)) = all_pieces.await {
        eprintln!(
            "  (p2p: all pieces after {:.2} s, verified and committed after {:.2} s)",
            pieces_at.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
    let rate = blob.len() as f64 / elapsed.as_secs_f64();
    anyhow::ensure!(leecher_store.contains(&digest), "the blob did not arrive");
    leecher.shutdown().await;
    seeder.shutdown().await;
    Ok(rate)
}

/// File to file over HTTPS (HTTP/1.1 over rustls), verified with SHA-256.
async fn https_end_to_end(
    server: &TlsMaterial,
    client: &TlsMaterial,
    dir: &std::path::Path,
    blob: &Bytes,
    digest: &Digest,
) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let source = dir.join("served");
    std::fs::write(&source, blob)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server.server_config(&[b"http/1.1"])?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let len = blob.len();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut request = vec![0u8; 4096];
        let _ = tls.read(&mut request).await?;
        tls.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes())
            .await?;
        let mut file = tokio::fs::File::open(&source).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            tls.write_all(&buf[..n]).await?;
        }
        tls.shutdown().await?;
        anyhow::Ok(())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        client.client_config(&[b"http/1.1"], ServerCheck::Hostname)?,
    ));
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect("localhost".try_into()?, tcp).await?;
    tls.write_all(b"GET /blob HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut out = tokio::fs::File::create(dir.join("downloaded")).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut header_done = false;
    let mut pending = Vec::new();
    let mut hasher = Sha256Hasher::new();
    let mut body = 0usize;
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        if !header_done {
            pending.extend_from_slice(data);
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            header_done = true;
            let rest = pending.split_off(end + 4);
            hasher.update(&rest);
            out.write_all(&rest).await?;
            body += rest.len();
            data = &[];
        }
        hasher.update(data);
        out.write_all(data).await?;
        body += data.len();
    }
    out.sync_all().await?;
    // Hashing inline above mirrors the agent's verification before it serves the blob.
    anyhow::ensure!(
        body == len && hasher.finish() == *digest,
        "HTTPS copy differs"
    );
    let rate = len as f64 / started.elapsed().as_secs_f64();
    server.await??;
    Ok(rate)
}
