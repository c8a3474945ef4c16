//! Hosts in network namespaces on one bridge, with `tc tbf` caps on both directions of each
//! host's link (this kernel has no netem and no ingress policing, so each veth end's *egress* is
//! shaped: the namespace side caps the host's upload, the bridge side its download).
//!
//! Everything created is named with a per-run prefix and torn down on drop, even after a panic.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::run;

/// One host: a namespace with one veth into the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// A bridge and its hosts.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    bridge: String,
    hosts: Vec<Host>,
    next: u8,
}

impl Lab {
    /// A bridge `<prefix>br` with address 10.77.0.1/16 in the root namespace.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let lab = Self {
            prefix: prefix.to_owned(),
            bridge: format!("{prefix}br"),
            hosts: Vec::new(),
            next: 2,
        };
        lab.cleanup_leftovers();
        run(&["ip", "link", "add", &lab.bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", "10.77.0.1/16", "dev", &lab.bridge])?;
        run(&["ip", "link", "set", &lab.bridge, "up"])?;
        // With bridge netfilter on (a Docker engine turns it on and sets the FORWARD policy to
        // DROP), traffic between the lab's hosts goes through iptables: let it pass, only
        // within our bridge, and remove the rule on teardown.
        for iptables in IPTABLES {
            let _ = run(&[
                iptables,
                "-I",
                "FORWARD",
                "1",
                "-i",
                &lab.bridge,
                "-o",
                &lab.bridge,
                "-j",
                "ACCEPT",
            ]);
        }
        Ok(lab)
    }

    /// Adds a host whose upload and download are each capped at `mbit` Mbit/s (`None`: no cap).
    pub fn add_host(&mut self, role: &str, mbit: Option<u32>) -> anyhow::Result<Host> {
        let index = self.next;
        self.next += 1;
        let name = format!("{}{role}{index}", self.prefix);
        let ip = Ipv4Addr::new(10, 77, 0, index);
        let outside = format!("{}v{index}", self.prefix);
        let inside = "eth0";
        run(&["ip", "netns", "add", &name])?;
        run(&[
            "ip", "link", "add", &outside, "type", "veth", "peer", "name", "kbtmp0",
        ])?;
        run(&["ip", "link", "set", "kbtmp0", "netns", &name])?;
        run(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", "kbtmp0", "name", inside,
        ])?;
        run(&[
            "ip",
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{ip}/16"),
            "dev",
            inside,
        ])?;
        run(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", inside, "up",
        ])?;
        run(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
        ])?;
        run(&["ip", "link", "set", &outside, "master", &self.bridge])?;
        run(&["ip", "link", "set", &outside, "up"])?;
        if let Some(mbit) = mbit {
            let rate = format!("{mbit}mbit");
            // Upload: the namespace's egress. Download: the bridge port's egress.
            run(&[
                "ip", "netns", "exec", &name, "tc", "qdisc", "add", "dev", inside, "root", "tbf",
                "rate", &rate, "burst", "64kb", "latency", "100ms",
            ])?;
            run(&[
                "tc", "qdisc", "add", "dev", &outside, "root", "tbf", "rate", &rate, "burst",
                "64kb", "latency", "100ms",
            ])?;
        }
        let host = Host { name, ip };
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Starts `program args` inside `host`'s namespace.
    pub fn spawn(
        &self,
        host: &Host,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> anyhow::Result<Child> {
        let log =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Command::new("ip")
            .args(["netns", "exec", &host.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {program} in {}", host.name))
    }

    /// A command to run inside `host`'s namespace.
    pub fn command(&self, host: &Host, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &host.name, program]);
        command
    }

    fn cleanup_leftovers(&self) {
        // A previous run killed hard may have left namespaces and links behind.
        if let Ok(output) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                if name.starts_with(&self.prefix) {
                    let _ = run(&["ip", "netns", "del", name]);
                }
            }
        }
        for iptables in IPTABLES {
            while run(&[
                iptables,
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ])
            .is_ok()
            {}
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

/// Both iptables front ends may hold rules (nft and legacy); missing ones are skipped.
const IPTABLES: [&str; 2] = ["iptables", "iptables-legacy"];

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = run(&["ip", "netns", "del", &host.name]);
        }
        self.cleanup_leftovers();
    }
}

/// Busy fraction of all CPUs between two `/proc/stat` samples.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    busy: u64,
    total: u64,
}

impl CpuSample {
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let Some(line) = stat.lines().next() else {
            bail!("empty /proc/stat")
        };
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        if fields.len() < 5 {
            bail!("unexpected /proc/stat line: {line}");
        }
        let idle = fields[3] + fields[4];
        let total: u64 = fields.iter().sum();
        Ok(Self {
            busy: total - idle,
            total,
        })
    }

    pub fn busy_since(&self, earlier: &CpuSample) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}
