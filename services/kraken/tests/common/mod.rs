//! Running the `kraken` binary as a user would, shared by the black-box tests (`mod common;`).

// Each test binary uses its own subset.
#![allow(dead_code)]

pub(crate) mod herd;

use std::ffi::OsStr;
use std::process::{Command, Output};

/// Runs `kraken` with `args` to completion.
pub(crate) fn kraken<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kraken"))
        .args(args)
        .output()
        .expect("spawn kraken")
}

/// Lossy UTF-8 text of an output stream.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The standard output of a run that must have succeeded (else both streams, in the panic).
pub(crate) fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "kraken failed:\n{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The Prometheus text a component serves at `http://<addr>/metrics` (empty when it does not
/// answer within 5 s).
pub(crate) fn scrape(addr: &str) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{addr}/metrics")])
        .output()
        .expect("spawn curl");
    text(&output.stdout)
}

/// The sum of the samples of `name` in `metrics` that carry every label of `labels`; 0 when
/// there is none.
pub(crate) fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
