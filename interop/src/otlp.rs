//! An independent OTLP/gRPC trace collector: Python grpcio with the OpenTelemetry project's
//! generated protos (`interop/python/otlp_collector.py`, PyPI `opentelemetry-proto`), not the
//! Rust crates that export the spans. Each span received is one JSON object: `service`
//! (`service.name`), `name`, `trace_id`, `span_id`, `parent_span_id` (empty for a root) and
//! `attributes`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::venv_tool;

/// A running collector; killed when dropped.
#[derive(Debug)]
pub struct OtlpCollector {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl OtlpCollector {
    /// Starts the collector, writing what it receives to `out` (one span per line).
    ///
    /// # Panics
    /// When the venv's Python cannot run the script (`tests/run.sh` installs
    /// `opentelemetry-proto` and `grpcio` into it).
    pub fn start(out: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/otlp_collector.py");
        let mut child = Command::new(venv_tool("python"))
            .arg(&script)
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the OTLP collector: {e}"));
        // The first line is the port; the script prints it once the server listens.
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the collector printed {line:?}, not a port (tests/run.sh installs \
                 opentelemetry-proto into the venv)"
            );
        };
        Self {
            child,
            port,
            out: out.to_path_buf(),
        }
    }

    /// The endpoint to export to: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The spans once `done` holds for them; panics with what arrived after `patience` (a
    /// hang guard: exporters send in batches, at their own pace).
    pub fn wait_for(
        &self,
        patience: Duration,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + patience;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "hang guard: no {what} after {patience:?}; the collector received {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
