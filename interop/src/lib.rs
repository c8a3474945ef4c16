//! Interop tests live under `tests/`: each drives a real third-party program (installed by the
//! README's test command) against our code. This library holds what they share.
//!
//! A test whose tool is missing must fail or say loudly that it skipped; it never passes
//! silently.

use std::process::Command;

pub mod netns;
pub mod oci_layout;
pub mod otlp;
pub mod servers;

/// Whether `program` can be run (is on `PATH`).
pub fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
        || Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The file the test command (`tests/run.sh`) reads skips from, one `test: why` per line, to
/// name them in its final summary (nextest hides a passing test's stderr).
pub const SKIP_LOG_ENV: &str = "KRAKEN_SKIP_LOG";

/// Records a skip loudly: on stderr, and in the test command's skip log so its summary names
/// it (and fails when the engine the skip blames does answer). Used only for what a machine
/// may legitimately lack (a Docker engine); tools the test command installs are required.
pub fn skip(test: &str, why: &str) {
    eprintln!("\n*** {test}: skipped: {why} ***\n");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        let line = format!("{test}: {}\n", why.replace('\n', " "));
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = written {
            panic!(
                "cannot record the skip in {}: {error}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// Runs the venv's grpcurl: `grpcurl -cacert ca [-cert c -key k] -servername localhost
/// [flags] address [verb...]`. Returns whether it succeeded and its stdout and stderr.
pub fn grpcurl(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    flags: &[&str],
    address: &str,
    verb: &[&str],
) -> (bool, String) {
    let mut command = std::process::Command::new(venv_tool("grpcurl"));
    command.arg("-cacert").arg(ca);
    if let Some((cert, key)) = identity {
        command.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let output = command
        .args(["-servername", "localhost"])
        .args(flags)
        .arg(address)
        .args(verb)
        .output()
        .unwrap_or_else(|e| panic!("cannot run grpcurl: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
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

/// Whether a Docker engine answers (`docker info` succeeds): the CLI alone is not enough.
pub fn docker_engine() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `program args…`, returning (success, stdout, stderr). Panics only if it cannot start.
pub fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (tests/run.sh installs it)"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Like [`run`], panicking with the command and its output when it fails.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = run(program, args);
    assert!(
        ok,
        "`{program} {}` failed:\n{stdout}\n{stderr}",
        args.join(" ")
    );
    stdout
}

/// Pushes the OCI layout at `layout`, tag `tag`, to `dest` (`host:port/repo:tag`, a plain-HTTP
/// registry) with skopeo, digests unchanged (no recompression of the layers).
pub fn skopeo_push(layout: &std::path::Path, tag: &str, dest: &str) {
    run_ok(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{dest}"),
        ],
    );
}

/// Sends SIGTERM to `child` and waits up to `patience` for it to exit: its exit status, or
/// `None` if it is still running then (the caller decides what a hang means; nothing is
/// killed here). Panics only if the signal cannot be sent.
pub fn terminate(
    child: &mut std::process::Child,
    patience: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
    assert!(sent.success(), "kill -TERM {pid} failed");
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
