//! Shaping chosen flows on the loopback interface, to stand in for a host's network link in a
//! benchmark that runs every component in one process: an HTB class of `mbit` on `lo` that only
//! the selected flows (by port) go through; all other loopback traffic bypasses it unshaped
//! (HTB `default 0` sends unclassified packets straight out).
//!
//! Needs root. The qdisc is removed on drop, even after a panic; after a killed run remove it
//! with `tc qdisc del dev lo root`.

use anyhow::bail;

use crate::run;

/// A rate-limited class on `lo`. Only one may exist at a time (it owns `lo`'s root qdisc).
#[derive(Debug)]
pub struct LoopbackShaper {
    mbit: u32,
}

impl LoopbackShaper {
    /// Installs the root qdisc and one class of `mbit` Mbit/s; refuses if `lo` already has a
    /// root qdisc (someone else's shaping, or a leftover of a killed run).
    pub fn new(mbit: u32) -> anyhow::Result<Self> {
        if crate::uid() != 0 {
            bail!("shaping loopback needs root (tc qdisc on lo)");
        }
        let shown = std::process::Command::new("tc")
            .args(["qdisc", "show", "dev", "lo"])
            .output()?;
        let shown = String::from_utf8_lossy(&shown.stdout);
        if !shown.trim().is_empty() && !shown.contains("noqueue") {
            bail!(
                "lo already has a qdisc ({}); remove it with `tc qdisc del dev lo root`",
                shown.trim()
            );
        }
        run(&[
            "tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "0",
        ])?;
        let shaper = Self { mbit };
        let rate = format!("{mbit}mbit");
        // A burst of a few 64 KiB loopback super-packets: smaller would stall GSO traffic.
        run(&[
            "tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate",
            &rate, "ceil", &rate, "burst", "256k", "cburst", "256k",
        ])?;
        Ok(shaper)
    }

    /// The cap, Mbit/s.
    pub fn mbit(&self) -> u32 {
        self.mbit
    }

    /// Shapes TCP traffic sent *from* `port` (a server's responses to its clients).
    pub fn shape_tcp_from(&self, port: u16) -> anyhow::Result<()> {
        self.filter("6", "sport", port)
    }

    /// Shapes UDP traffic sent *from* `port` (everything a QUIC endpoint sends).
    pub fn shape_udp_from(&self, port: u16) -> anyhow::Result<()> {
        self.filter("17", "sport", port)
    }

    fn filter(&self, protocol: &str, direction: &str, port: u16) -> anyhow::Result<()> {
        let port = port.to_string();
        run(&[
            "tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
            "u32", "match", "ip", "protocol", protocol, "0xff", "match", "ip", direction, &port,
            "0xffff", "flowid", "1:1",
        ])
    }
}

impl Drop for LoopbackShaper {
    fn drop(&mut self) {
        let _ = run(&["tc", "qdisc", "del", "dev", "lo", "root"]);
    }
}
