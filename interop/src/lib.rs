//! Interop tests live under `tests/`: each drives a real third-party program (installed by the
//! README's test command) against our code. This library holds what they share.
//!
//! A test whose tool is missing must fail or say loudly that it skipped; it never passes
//! silently.

use std::process::Command;

/// Whether `program` can be run (is on `PATH`).
pub fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
        || Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Prints a loud skip notice. Used only for tools a machine may legitimately lack (a Docker
/// engine); tools the test command installs are required.
pub fn skip(test: &str, why: &str) {
    eprintln!("\n*** {test}: skipped: {why} ***\n");
}

/// A program installed in the test command's Python venv (`$KRAKEN_VENV`, by default
/// `~/.cache/kraken-rs/venv`): grpcurl, python. Panics with how to get it when missing.
pub fn venv_tool(name: &str) -> std::path::PathBuf {
    let venv = std::env::var_os("KRAKEN_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/kraken-rs/venv")
        });
    let tool = venv.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: run tests/run.sh, which installs grpcurl and grpcio into {}",
        tool.display(),
        venv.display()
    );
    tool
}
