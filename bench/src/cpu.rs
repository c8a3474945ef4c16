//! CPU use of the whole machine between two moments, from `/proc/stat`: printed beside every
//! benchmark figure.

use anyhow::bail;

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
