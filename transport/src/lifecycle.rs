//! One way for every component to stop its servers: stop accepting, give in-flight requests a
//! grace period, then cut what is left. Every component (origin, tracker, agent, proxy,
//! build-index) stops through [`drain`], so "graceful" means the same thing everywhere and is
//! logged the same way.

use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};

/// How long in-flight requests get to finish once a component stops accepting new ones.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How a server task ended.
#[derive(Debug)]
pub enum Drained<T> {
    /// It returned within the grace period (its own result inside).
    Finished(T),
    /// It panicked or was cancelled.
    Failed(JoinError),
    /// It was still running when the grace period ran out, and was aborted.
    Cut,
}

/// Waits up to `grace` for `task` (a server that was told to stop) to finish, then aborts it.
/// `what` names it in the log line when it has to be cut.
pub async fn drain<T>(what: &str, mut task: JoinHandle<T>, grace: Duration) -> Drained<T> {
    match tokio::time::timeout(grace, &mut task).await {
        Ok(Ok(value)) => Drained::Finished(value),
        Ok(Err(join)) => Drained::Failed(join),
        Err(_) => {
            tracing::warn!(
                server = what,
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "requests still running after the grace period; cutting them"
            );
            task.abort();
            Drained::Cut
        }
    }
}

impl<T, E> Drained<Result<T, E>> {
    /// The server's own error, a panic as `join`, or `Ok` when it finished cleanly or was cut
    /// (cutting after the grace period is the documented way to stop, not a failure).
    pub fn into_result<F>(
        self,
        error: impl FnOnce(E) -> F,
        join: impl FnOnce(JoinError) -> F,
    ) -> Result<(), F> {
        match self {
            Self::Finished(Ok(_)) | Self::Cut => Ok(()),
            Self::Finished(Err(e)) => Err(error(e)),
            Self::Failed(e) => Err(join(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_finishes_in_time_is_awaited_and_one_that_does_not_is_cut() {
        let quick = tokio::spawn(async { Ok::<u8, String>(7) });
        assert!(matches!(
            drain("quick", quick, SHUTDOWN_GRACE).await,
            Drained::Finished(Ok(7))
        ));
        let stuck = tokio::spawn(std::future::pending::<Result<(), String>>());
        let drained = drain("stuck", stuck, Duration::from_secs(1)).await;
        assert!(matches!(drained, Drained::Cut));
        assert_eq!(drained.into_result(|e| e, |j| j.to_string()), Ok(()));
        let failing = tokio::spawn(async { Err::<(), _>("bind failed".to_owned()) });
        let drained = drain("failing", failing, SHUTDOWN_GRACE).await;
        assert_eq!(
            drained.into_result(|e| e, |j| j.to_string()),
            Err("bind failed".to_owned())
        );
    }
}
