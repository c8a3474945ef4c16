//! Swarm benchmark: one origin and N agents, each in its own network namespace with capped
//! upload and download, distribute one blob; then the same hosts fetch a blob from a single
//! plain HTTP server (nginx) under the same caps, as the central baseline.
//!
//! Prints every agent's completion time, p50/p99 and both as a ratio to the physical bound
//! `max(F/u_s, F/d, N·F/(u_s + N·u))`, and the CPU use of the run (2 cores: a run that saturates
//! them measures the machine, not the protocol).
//!
//! Needs root (namespaces, tc) and a release build of `kraken`:
//! `cargo build --release -p kraken -p kraken-bench && sudo target/release/p2p_swarm`
//! (nginx is installed with apt if missing).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kraken_bench::cpu::CpuSample;
use kraken_interop::netns::{Family, Host, Lab};

#[derive(Parser, Debug)]
struct Args {
    /// Agents (one namespace each).
    #[arg(long, default_value_t = 16)]
    agents: usize,
    /// Size of the blob distributed through the swarm, MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Size of the blob fetched from the central HTTP server, MiB. Smaller than the swarm's:
    /// a central server needs ~N times the bound, and the whole run must stay short.
    #[arg(long, default_value_t = 32)]
    baseline_size_mib: u64,
    /// Upload and download cap of every host, Mbit/s.
    #[arg(long, default_value_t = 50)]
    mbit: u32,
    /// The kraken binary (release build).
    #[arg(long, default_value = "target/release/kraken")]
    kraken: PathBuf,
    /// Skip the HTTP baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Keep the working directory (configs, logs) after the run.
    #[arg(long)]
    keep: bool,
    /// `scheduler:` section for the agents, as YAML flow text (to try settings).
    #[arg(long)]
    agent_scheduler: Option<String>,
    /// `scheduler:` section for the origin, as YAML flow text.
    #[arg(long)]
    origin_scheduler: Option<String>,
}

const NAMESPACE: &str = "bench/blob";
const GRPC_PORT: u16 = 15000;
const P2P_PORT: u16 = 16000;
const AGENT_GRPC_PORT: u16 = 17000;
const HTTP_PORT: u16 = 8080;
const METRICS_PORT: u16 = 9100;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if kraken_bench::uid() != 0 {
        bail!("run as root: the benchmark creates network namespaces and tc qdiscs");
    }
    let kraken = std::fs::canonicalize(&args.kraken).with_context(|| {
        format!(
            "{} not found: cargo build --release -p kraken",
            args.kraken.display()
        )
    })?;
    let work = tempfile::Builder::new().prefix("kraken-bench-").tempdir()?;
    let dir = work.path().to_owned();
    println!("working directory: {}", dir.display());

    let mut lab = Lab::new("kb", Family::V4)?;
    let tracker_host = lab.add_host("t", None)?;
    let origin_host = lab.add_host("o", Some(args.mbit))?;
    let agents: Vec<Host> = (0..args.agents)
        .map(|_| lab.add_host("a", Some(args.mbit)))
        .collect::<std::io::Result<_>>()?;

    // PKI valid for every address in the lab.
    let pki = dir.join("pki");
    let mut certs = Command::new(&kraken);
    certs.args(["certs", "--out"]).arg(&pki);
    for host in agents.iter().chain([&tracker_host, &origin_host]) {
        certs.args(["--host", &host.ip.to_string()]);
    }
    check(certs.output()?, "kraken certs")?;

    // The blob, placed in the origin's filesystem backend.
    let size = args.size_mib << 20;
    let blob = write_blob(&dir.join("blob"), size, 1)?;
    let digest = sha256_file(&blob)?;
    let backend = dir.join("backend");
    let hex = digest.trim_start_matches("sha256:");
    let stored = backend
        .join(NAMESPACE)
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    std::fs::create_dir_all(stored.parent().unwrap_or(&backend))?;
    std::fs::rename(&blob, &stored)?;

    let mut children: Vec<Child> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        let tracker_cfg = write_config(
            &dir,
            "tracker.yaml",
            &tracker_config(&pki, &tracker_host, &origin_host),
        )?;
        children.push(lab.spawn(
            &tracker_host,
            kraken.to_str().unwrap_or_default(),
            &[
                "tracker",
                "--config",
                tracker_cfg.to_str().unwrap_or_default(),
            ],
            &dir.join("tracker.log"),
        )?);
        let origin_cfg = write_config(
            &dir,
            "origin.yaml",
            &origin_config(&pki, &origin_host, &dir, &backend),
        )?;
        children.push(lab.spawn(
            &origin_host,
            kraken.to_str().unwrap_or_default(),
            &[
                "origin",
                "--config",
                origin_cfg.to_str().unwrap_or_default(),
            ],
            &dir.join("origin.log"),
        )?);
        for (i, agent) in agents.iter().enumerate() {
            let cfg = write_config(
                &dir,
                &format!("agent{i}.yaml"),
                &agent_config(&pki, agent, &tracker_host, &dir, i),
            )?;
            children.push(lab.spawn(
                agent,
                kraken.to_str().unwrap_or_default(),
                &["agent", "--config", cfg.to_str().unwrap_or_default()],
                &dir.join(format!("agent{i}.log")),
            )?);
        }
        for (host, port) in [(&tracker_host, GRPC_PORT), (&origin_host, GRPC_PORT)]
            .into_iter()
            .chain(agents.iter().map(|a| (a, AGENT_GRPC_PORT)))
        {
            wait_for_port(&lab, host, port)?;
        }
        // Warm the origin (backend -> its disk) outside the timed run, as a preheat would.
        warm_origin(&lab, &kraken, &pki, &origin_host, &digest)?;

        println!(
            "\n== swarm: {} agents, {} MiB blob, {} Mbit/s up and down per host ==",
            args.agents, args.size_mib, args.mbit
        );
        let cpu_before = CpuSample::now()?;
        let times = run_concurrently(&lab, &agents, |agent| {
            let mut pull = lab.command(agent, kraken.to_str().unwrap_or_default());
            pull.args([
                "pull",
                "--agent",
                &format!("127.0.0.1:{AGENT_GRPC_PORT}"),
                "--pki",
            ])
            .arg(&pki)
            .args([
                "--namespace",
                NAMESPACE,
                "--output",
                "/dev/null",
                "--quiet",
                &digest,
            ]);
            pull
        })?;
        let cpu = CpuSample::now()?.busy_since(&cpu_before);
        report("swarm", &times, size, args.agents, args.mbit, cpu);
        swarm_counters(&lab, &origin_host, &agents);

        if !args.no_baseline {
            let base_size = args.baseline_size_mib << 20;
            let www = dir.join("www");
            std::fs::create_dir_all(&www)?;
            write_blob(&www.join("blob"), base_size, 2)?;
            let nginx = start_nginx(&lab, &origin_host, &dir, &www)?;
            children.push(nginx);
            wait_for_port(&lab, &origin_host, HTTP_PORT)?;
            println!(
                "\n== central HTTP (nginx): {} hosts, {} MiB blob, same caps ==",
                args.agents, args.baseline_size_mib
            );
            let cpu_before = CpuSample::now()?;
            let url = format!("http://{}:{HTTP_PORT}/blob", origin_host.ip);
            let times = run_concurrently(&lab, &agents, |agent| {
                let mut curl = lab.command(agent, "curl");
                curl.args(["-sS", "-o", "/dev/null", &url]);
                curl
            })?;
            let cpu = CpuSample::now()?.busy_since(&cpu_before);
            report("central", &times, base_size, args.agents, args.mbit, cpu);
        }
        Ok(())
    })();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(lab);
    if args.keep {
        let kept = work.keep();
        println!("kept {}", kept.display());
    }
    result
}

fn check(output: std::process::Output, what: &str) -> anyhow::Result<()> {
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn write_blob(path: &Path, size: u64, seed: u64) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for byte in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(path.to_owned())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let output = Command::new("sha256sum").arg(path).output()?;
    check(output.clone(), "sha256sum")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    Ok(format!("sha256:{hex}"))
}

fn write_config(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

fn tls(pki: &Path, role: &str) -> String {
    format!(
        "tls:\n  ca: {pki}/ca.pem\n  cert: {pki}/{role}.pem\n  key: {pki}/{role}.key\n",
        pki = pki.display()
    )
}

fn tracker_config(pki: &Path, tracker: &Host, origin: &Host) -> String {
    format!(
        "listen:\n  grpc: {t}:{GRPC_PORT}\norigin:\n  hosts:\n    static: [\"{o}:{GRPC_PORT}\"]\n{tls}log:\n  level: warn\n",
        t = tracker.ip,
        o = origin.ip,
        tls = tls(pki, "tracker")
    )
}

fn origin_config(pki: &Path, origin: &Host, dir: &Path, backend: &Path) -> String {
    format!(
        "name: {o}:{GRPC_PORT}\npeer_ip: {o}\nlisten:\n  grpc: {o}:{GRPC_PORT}\n  p2p: {o}:{P2P_PORT}\n\
         cluster:\n  hosts:\n    static: [\"{o}:{GRPC_PORT}\"]\nhashring:\n  max_replica: 1\n\
         store:\n  dir: {dir}/origin-store\nbackends:\n  - namespace: \".*\"\n    backend:\n      fs:\n        root: {backend}\n\
         {tls}log:\n  level: warn\nmetrics:\n  listen: {o}:{METRICS_PORT}\n",
        o = origin.ip,
        dir = dir.display(),
        backend = backend.display(),
        tls = tls(pki, "origin")
    )
}

fn agent_config(pki: &Path, agent: &Host, tracker: &Host, dir: &Path, index: usize) -> String {
    format!(
        "peer_ip: {a}\nlisten:\n  registry: 127.0.0.1:18000\n  grpc: 0.0.0.0:{AGENT_GRPC_PORT}\n  p2p: {a}:{P2P_PORT}\n\
         tracker:\n  hosts:\n    static: [\"{t}:{GRPC_PORT}\"]\nbuild_index:\n  hosts:\n    static: [\"{t}:{GRPC_PORT}\"]\n\
         store:\n  dir: {dir}/agent{index}-store\n{tls}log:\n  level: \"{log}\"\nmetrics:\n  listen: {a}:{METRICS_PORT}\n",
        a = agent.ip,
        t = tracker.ip,
        dir = dir.display(),
        tls = tls(pki, "agent"),
        log = std::env::var("KB_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
    )
}

fn wait_for_port(lab: &Lab, host: &Host, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let probe = lab
            .command(host, "bash")
            .args([
                "-c",
                &format!("exec 3<>/dev/tcp/{}/{port}", probe_ip(host, port)),
            ])
            .output()?;
        if probe.status.success() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{} did not listen on port {port} within 30 s (see the logs)",
        host.name
    )
}

fn probe_ip(host: &Host, port: u16) -> String {
    if port == AGENT_GRPC_PORT {
        "127.0.0.1".into()
    } else {
        host.ip.to_string()
    }
}

fn warm_origin(
    lab: &Lab,
    kraken: &Path,
    pki: &Path,
    origin: &Host,
    digest: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let output = lab
        .command(origin, kraken.to_str().unwrap_or_default())
        .args([
            "prefetch",
            "--origin",
            &format!("{}:{GRPC_PORT}", origin.ip),
            "--pki",
        ])
        .arg(pki)
        .args(["--namespace", NAMESPACE, digest])
        .output()?;
    check(output, "kraken prefetch")?;
    println!(
        "origin warmed from its backend in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn start_nginx(lab: &Lab, host: &Host, dir: &Path, www: &Path) -> anyhow::Result<Child> {
    if Command::new("nginx").arg("-v").output().is_err() {
        println!("installing nginx for the baseline");
        check(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "nginx-light"])
                .output()?,
            "apt-get install nginx",
        )
        .or_else(|_| {
            check(
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", "nginx"])
                    .output()?,
                "apt-get install nginx",
            )
        })?;
    }
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\n\
             events {{ worker_connections 1024; }}\nhttp {{ access_log off; sendfile on;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen {ip}:{HTTP_PORT}; root {www}; }} }}\n",
            d = dir.display(),
            ip = host.ip,
            www = www.display()
        ),
    )?;
    lab.spawn(
        host,
        "nginx",
        &["-c", conf.to_str().unwrap_or_default()],
        &dir.join("nginx.log"),
    )
    .context("starting nginx")
}

/// Scrapes every host's Prometheus endpoint and prints the P2P counters that explain a result.
fn swarm_counters(lab: &Lab, origin: &Host, agents: &[Host]) {
    let scrape = |host: &Host| -> Vec<(String, f64)> {
        let output = lab
            .command(host, "curl")
            .args(["-s", &format!("http://{}:{METRICS_PORT}/metrics", host.ip)])
            .output();
        let Ok(output) = output else {
            return Vec::new();
        };
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.starts_with("kraken_p2p_"))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    };
    let sum = |samples: &[Vec<(String, f64)>], name: &str| -> f64 {
        samples
            .iter()
            .flatten()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .sum()
    };
    let origin_samples = [scrape(origin)];
    let agent_samples: Vec<_> = agents.iter().map(scrape).collect();
    println!(
        "  counters: origin sent {} pieces; agents sent {}, received {}, requested {}, duplicates {}, timeouts {} (queued {}), from origins {}, refused links {} (origin {}), dial failures {}",
        sum(&origin_samples, "kraken_p2p_pieces_sent_total"),
        sum(&agent_samples, "kraken_p2p_pieces_sent_total"),
        sum(&agent_samples, "kraken_p2p_pieces_received_total"),
        sum(&agent_samples, "kraken_p2p_requests_total"),
        sum(&agent_samples, "kraken_p2p_duplicate_pieces_total"),
        sum(&agent_samples, "kraken_p2p_request_timeouts_total"),
        sum(&agent_samples, "kraken_p2p_request_queue_timeouts_total"),
        sum(&agent_samples, "kraken_p2p_pieces_from_origins_total"),
        sum(&agent_samples, "kraken_p2p_refused_links_total"),
        sum(&origin_samples, "kraken_p2p_refused_links_total"),
        sum(&agent_samples, "kraken_p2p_dial_failures_total"),
    );
}

/// Starts one command per agent at the same moment and returns each one's completion time.
fn run_concurrently(
    _lab: &Lab,
    agents: &[Host],
    command: impl Fn(&Host) -> Command,
) -> anyhow::Result<Vec<Duration>> {
    let started = Instant::now();
    let mut running: Vec<(usize, Child)> = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        running.push((i, command(agent).spawn()?));
    }
    let mut times = vec![Duration::ZERO; agents.len()];
    let mut left = running.len();
    while left > 0 {
        for (i, child) in &mut running {
            if times[*i] == Duration::ZERO
                && let Some(status) = child.try_wait()?
            {
                if !status.success() {
                    bail!("agent {i}'s fetch failed ({status})");
                }
                times[*i] = started.elapsed();
                left -= 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(times)
}

fn report(name: &str, times: &[Duration], size: u64, agents: usize, mbit: u32, cpu: f64) {
    let rate = f64::from(mbit) * 1e6 / 8.0; // bytes per second, every link
    let (f, n) = (size as f64, agents as f64);
    let bound = (f / rate).max(f / rate).max(n * f / (rate + n * rate));
    let mut sorted: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    for (i, t) in sorted.iter().enumerate() {
        println!(
            "  {name} agent {i:>2}: {t:7.2} s  ({:.2}x bound)",
            t / bound
        );
    }
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "  physical bound: {bound:.2} s (max(F/u_s, F/d, N·F/(u_s+N·u)) at {mbit} Mbit/s nominal)"
    );
    println!(
        "  {name} p50 {:.2} s = {:.2}x bound",
        pct(0.5),
        pct(0.5) / bound
    );
    println!(
        "  {name} p99 {:.2} s = {:.2}x bound",
        pct(0.99),
        pct(0.99) / bound
    );
    println!("  CPU busy during the run: {:.0}% of 2 cores", cpu * 100.0);
}
