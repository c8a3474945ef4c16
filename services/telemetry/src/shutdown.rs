//! Graceful shutdown shared by every server: `run(listener, shutdown)`.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A one-way "stop now" signal. Clones observe the same signal; triggering any clone stops all.
///
/// Servers take it as `run(listener, shutdown)`, stop accepting when [`wait`](Self::wait)
/// completes, and let in-flight work finish or notice [`is_triggered`](Self::is_triggered).
#[derive(Debug, Clone, Default)]
pub struct ShutdownSignal {
    token: CancellationToken,
}

impl ShutdownSignal {
    /// A signal that fires only when [`trigger`](Self::trigger)ed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal for every clone and child. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the signal fires (immediately if it already has).
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// Like [`wait`](Self::wait), but owns the signal, for APIs that need a `'static` future
    /// (`axum::serve(..).with_graceful_shutdown`, tonic's `serve_with_shutdown`).
    pub fn wait_owned(self) -> impl Future<Output = ()> + Send + 'static {
        self.token.cancelled_owned()
    }

    /// A signal that fires when this one does, but can also be fired on its own without
    /// affecting this one: one component of a process can stop while the rest keeps running.
    pub fn child(&self) -> ShutdownSignal {
        ShutdownSignal {
            token: self.token.child_token(),
        }
    }

    /// The underlying token, for code that already speaks `tokio_util`.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl From<CancellationToken> for ShutdownSignal {
    fn from(token: CancellationToken) -> Self {
        Self { token }
    }
}

/// A signal that fires on Ctrl-C (SIGINT) or SIGTERM.
///
/// # Panics
///
/// Outside a Tokio runtime, like `tokio::spawn`.
pub fn shutdown_on_signal() -> ShutdownSignal {
    let shutdown = ShutdownSignal::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            name = wait_for_os_signal() => {
                tracing::info!(signal = name, "shutting down");
                trigger.trigger();
            }
            // Nothing left to trigger once someone else stopped the process.
            () = trigger.wait() => {}
        }
    });
    shutdown
}

/// Completes with the signal's name when the process is asked to stop.
///
/// If a handler cannot be registered, that signal is logged and ignored instead of stopping the
/// process immediately.
async fn wait_for_os_signal() -> &'static str {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for Ctrl-C");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
                "SIGTERM"
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<&'static str>();

    tokio::select! {
        name = ctrl_c => name,
        name = terminate => name,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_clone() {
        let shutdown = ShutdownSignal::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = shutdown.clone();
                tokio::spawn(async move { s.wait().await })
            })
            .collect();
        let owned = tokio::spawn(shutdown.clone().wait_owned());
        assert!(!shutdown.is_triggered());
        shutdown.clone().trigger();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), owned)
            .await
            .unwrap()
            .unwrap();
        assert!(shutdown.is_triggered());
        // Waiting after the fact returns at once.
        shutdown.wait().await;
    }

    #[tokio::test]
    async fn child_follows_parent_but_not_the_reverse() {
        let parent = ShutdownSignal::new();
        let child = parent.child();
        child.trigger();
        assert!(child.is_triggered());
        assert!(!parent.is_triggered());

        let child = parent.child();
        parent.trigger();
        child.wait().await;
    }

    #[tokio::test]
    async fn signal_listener_exits_when_triggered_elsewhere() {
        let shutdown = shutdown_on_signal();
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        shutdown.wait().await;
    }
}
