//! Hosts in network namespaces on one bridge: several "machines" with their own addresses on
//! one box, for the multi-host tests and the swarm benchmark. Needs root (`ip netns`).
//!
//! A lab is IPv4 (10.77.0.0/16, the bridge at .1) or IPv6-only (`fd77:<tag>::/64`, no IPv4
//! address on any host link), and may cap each host's link with `tc tbf` on both directions
//! (this kernel has no netem and no ingress policing, so each veth end's *egress* is shaped:
//! the namespace side caps the host's upload, the bridge side its download).
//!
//! Everything created is named with the lab's prefix and torn down on drop, even after a
//! panic. Interface names are at most 15 bytes, so keep prefixes short (≤ 6 bytes).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The address family of a lab's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// 10.77.0.0/16; the bridge holds 10.77.0.1 in the root namespace.
    V4,
    /// `fd77:<tag>::/64` only: the hosts have no IPv4 address besides loopback.
    V6 { tag: u16 },
}

/// One host: a namespace with one veth (`eth0`) into the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ip: IpAddr,
}

impl Host {
    /// `ip:port`, bracketed for IPv6, as configs and URLs want it.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }
}

/// A bridge and its hosts.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    bridge: String,
    family: Family,
    hosts: Vec<Host>,
    next: u8,
}

/// Whether this process may create namespaces (runs as root).
pub fn can_create() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"0")
}

impl Lab {
    /// A bridge `<prefix>br` in the root namespace. Leftovers of an earlier lab with the same
    /// prefix (a run killed hard) are removed first.
    pub fn new(prefix: &str, family: Family) -> io::Result<Self> {
        let lab = Self {
            prefix: prefix.to_owned(),
            bridge: format!("{prefix}br"),
            family,
            hosts: Vec::new(),
            next: 2,
        };
        lab.cleanup_leftovers();
        run(&["ip", "link", "add", &lab.bridge, "type", "bridge"])?;
        if family == Family::V4 {
            run(&["ip", "addr", "add", "10.77.0.1/16", "dev", &lab.bridge])?;
        }
        run(&["ip", "link", "set", &lab.bridge, "up"])?;
        // With bridge netfilter on (a Docker engine turns it on and sets the FORWARD policy to
        // DROP), traffic between the lab's hosts goes through ip(6)tables: let it pass, only
        // within our bridge, and remove the rule on teardown.
        for iptables in lab.iptables() {
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
    pub fn add_host(&mut self, role: &str, mbit: Option<u32>) -> io::Result<Host> {
        let index = self.next;
        self.next = self
            .next
            .checked_add(1)
            .ok_or_else(|| io::Error::other("a lab holds at most 253 hosts"))?;
        let name = format!("{}{role}{index}", self.prefix);
        let ip = match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 77, 0, index)),
            Family::V6 { tag } => {
                IpAddr::V6(Ipv6Addr::new(0xfd77, tag, 0, 0, 0, 0, 0, u16::from(index)))
            }
        };
        let outside = format!("{}v{index}", self.prefix);
        // Created in the root namespace under a lab-unique name, then moved and renamed, so
        // labs built at the same time never race for a name.
        let temporary = format!("{}t{index}", self.prefix);
        let inside = "eth0";
        run(&["ip", "netns", "add", &name])?;
        // Recorded before the links exist, so a failure below still removes the namespace.
        self.hosts.push(Host {
            name: name.clone(),
            ip,
        });
        run(&[
            "ip", "link", "add", &outside, "type", "veth", "peer", "name", &temporary,
        ])?;
        run(&["ip", "link", "set", &temporary, "netns", &name])?;
        run(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", &temporary, "name", inside,
        ])?;
        match self.family {
            Family::V4 => run(&[
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
            ])?,
            // `nodad`: usable at once instead of tentative for a second or two.
            Family::V6 { .. } => run(&[
                "ip",
                "netns",
                "exec",
                &name,
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                inside,
                "nodad",
            ])?,
        }
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
        Ok(Host { name, ip })
    }

    /// Starts `program args` inside `host`'s namespace, its stdout and stderr into `log`.
    pub fn spawn(
        &self,
        host: &Host,
        program: &str,
        args: &[&str],
        log: &Path,
    ) -> io::Result<Child> {
        let log = std::fs::File::create(log)?;
        self.command(host, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
    }

    /// A command to run inside `host`'s namespace.
    pub fn command(&self, host: &Host, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &host.name, program]);
        command
    }

    fn iptables(&self) -> [&'static str; 2] {
        // Both front ends may hold rules (nft and legacy); a missing one is skipped.
        match self.family {
            Family::V4 => ["iptables", "iptables-legacy"],
            Family::V6 { .. } => ["ip6tables", "ip6tables-legacy"],
        }
    }

    fn cleanup_leftovers(&self) {
        if let Ok(output) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                if name.starts_with(&self.prefix) {
                    let _ = run(&["ip", "netns", "del", name]);
                }
            }
        }
        for iptables in self.iptables() {
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

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the bridge-side peer.
        for host in &self.hosts {
            let _ = run(&["ip", "netns", "del", &host.name]);
        }
        self.cleanup_leftovers();
    }
}

/// Runs a command, failing with its stderr when it exits non-zero.
fn run(args: &[&str]) -> io::Result<()> {
    let Some((program, rest)) = args.split_first() else {
        return Err(io::Error::other("no command to run"));
    };
    let output = Command::new(program).args(rest).output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}
