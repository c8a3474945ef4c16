//! SIGTERM fires `shutdown_on_signal`. Its own test binary: it signals the whole process.

#![cfg(unix)]

use std::time::{Duration, Instant};

#[tokio::test]
async fn sigterm_triggers_shutdown() -> anyhow::Result<()> {
    // Registering a handler first guarantees a SIGTERM sent before the helper's own handler is
    // installed is caught instead of killing the test process.
    let mut guard = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = kraken_telemetry::shutdown_on_signal();
    let pid = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The helper registers from a spawned task; keep signalling until it has noticed.
    while !shutdown.is_triggered() {
        assert!(
            Instant::now() < deadline,
            "SIGTERM did not trigger shutdown"
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()?;
        assert!(status.success());
        let _ = tokio::time::timeout(Duration::from_millis(100), shutdown.wait()).await;
    }
    drop(guard.recv());
    Ok(())
}
