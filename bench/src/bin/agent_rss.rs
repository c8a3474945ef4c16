//! Agent memory benchmark: real `kraken tracker`, `kraken origin` and `kraken agent` processes on
//! loopback; the agent pulls a blob (default 1 GiB) through the swarm for `kraken pull`, and its
//! peak resident set (VmHWM) is read from /proc. The baseline, measured in the same run, is the
//! agent's own resident set when idle, before the pull.
//!
//! `cargo build --release -p kraken -p kraken-bench && target/release/agent_rss`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    #[arg(long, default_value = "target/release/kraken")]
    kraken: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kraken = std::fs::canonicalize(&args.kraken).with_context(|| {
        format!(
            "{} not found: cargo build --release -p kraken",
            args.kraken.display()
        )
    })?;
    let work = tempfile::Builder::new().prefix("kraken-rss-").tempdir()?;
    let dir = work.path();
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let (origin_grpc, origin_p2p, tracker, agent_grpc, agent_p2p) =
        (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let pki = dir.join("pki");
    check(
        Command::new(&kraken)
            .args(["certs", "--out"])
            .arg(&pki)
            .output()?,
        "kraken certs",
    )?;

    let size = args.size_mib << 20;
    let backend = dir.join("backend");
    let digest = place_blob(&backend, "bench/rss", size)?;
    let tls = |role: &str| {
        format!(
            "tls: {{ca: {p}/ca.pem, cert: {p}/{role}.pem, key: {p}/{role}.key}}\nlog: {{level: warn}}\n",
            p = pki.display()
        )
    };
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let origin_cfg = write(
        "origin.yaml",
        format!(
            "name: 127.0.0.1:{origin_grpc}\npeer_ip: 127.0.0.1\nlisten: {{grpc: 127.0.0.1:{origin_grpc}, p2p: 127.0.0.1:{origin_p2p}}}\n\
         cluster: {{hosts: {{static: [\"127.0.0.1:{origin_grpc}\"]}}}}\nhashring: {{max_replica: 1}}\nstore: {{dir: {d}/origin}}\n\
         backends: [{{namespace: \".*\", backend: {{fs: {{root: {b}}}}}}}]\n{t}",
            d = dir.display(),
            b = backend.display(),
            t = tls("origin")
        ),
    )?;
    let tracker_cfg = write(
        "tracker.yaml",
        format!(
            "listen: {{grpc: 127.0.0.1:{tracker}}}\norigin: {{hosts: {{static: [\"127.0.0.1:{origin_grpc}\"]}}}}\n{t}",
            t = tls("tracker")
        ),
    )?;
    let agent_cfg = write(
        "agent.yaml",
        format!(
            "peer_ip: 127.0.0.1\nlisten: {{registry: 127.0.0.1:0, grpc: 127.0.0.1:{agent_grpc}, p2p: 127.0.0.1:{agent_p2p}}}\n\
         tracker: {{hosts: {{static: [\"127.0.0.1:{tracker}\"]}}}}\nbuild_index: {{hosts: {{static: [\"127.0.0.1:{tracker}\"]}}}}\n\
         store: {{dir: {d}/agent}}\n{t}",
            d = dir.display(),
            t = tls("agent")
        ),
    )?;

    let mut children = Children(Vec::new());
    let spawn = |what: &str, config: &Path| -> anyhow::Result<Child> {
        Command::new(&kraken)
            .args([what, "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Into::into)
    };
    children.0.push(spawn("origin", &origin_cfg)?);
    children.0.push(spawn("tracker", &tracker_cfg)?);
    let agent = spawn("agent", &agent_cfg)?;
    let agent_pid = agent.id();
    children.0.push(agent);
    for port in [origin_grpc, tracker, agent_grpc] {
        wait_for_port(port)?;
    }
    check(
        Command::new(&kraken)
            .args([
                "prefetch",
                "--origin",
                &format!("127.0.0.1:{origin_grpc}"),
                "--pki",
            ])
            .arg(&pki)
            .args(["--namespace", "bench/rss", &digest])
            .output()?,
        "kraken prefetch",
    )?;
    let idle = status_kib(agent_pid, "VmRSS")?;

    let started = Instant::now();
    check(
        Command::new(&kraken)
            .args([
                "pull",
                "--agent",
                &format!("127.0.0.1:{agent_grpc}"),
                "--pki",
            ])
            .arg(&pki)
            .args([
                "--namespace",
                "bench/rss",
                "--output",
                "/dev/null",
                "--quiet",
                &digest,
            ])
            .output()?,
        "kraken pull",
    )?;
    let elapsed = started.elapsed();
    let peak = status_kib(agent_pid, "VmHWM")?;
    println!(
        "agent pulling a {} MiB blob through the swarm (real processes, loopback):",
        args.size_mib
    );
    println!(
        "  pull took {:.1} s ({:.0} MB/s)",
        elapsed.as_secs_f64(),
        size as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "  agent RSS idle (baseline)  {:>6.1} MB",
        idle as f64 / 1024.0
    );
    println!(
        "  agent peak RSS (VmHWM)     {:>6.1} MB  = {:.1}x idle, {:.3} of the blob size; target <= 100 MB",
        peak as f64 / 1024.0,
        peak as f64 / idle.max(1) as f64,
        peak as f64 * 1024.0 / size as f64
    );
    Ok(())
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn check(output: std::process::Output, what: &str) -> anyhow::Result<()> {
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listened on port {port} within 30 s")
}

/// A `Vm*` line of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Writes a pseudo-random blob where the fs backend keeps `namespace`'s blobs; returns its digest.
fn place_blob(backend: &Path, namespace: &str, size: u64) -> anyhow::Result<String> {
    use std::io::Write;
    std::fs::create_dir_all(backend)?;
    let tmp = backend.join("tmp-blob");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut hasher = kraken_core::Sha256Hasher::new();
    let mut state = 0x853C_49E6_748F_EA9B_u64;
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
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    file.flush()?;
    let digest = hasher.finish();
    let hex = digest.hex();
    let path = backend
        .join(namespace)
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(&hex);
    std::fs::create_dir_all(path.parent().unwrap_or(backend))?;
    std::fs::rename(&tmp, &path)?;
    Ok(digest.to_string())
}
