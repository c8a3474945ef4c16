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
