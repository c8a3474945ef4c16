//! Progress of long CLI operations: a bar on a terminal, periodic log lines otherwise.

use std::borrow::Cow;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bar layout: message, elapsed, bar, bytes done / total, throughput and ETA.
const BAR_TEMPLATE: &str = "{msg} [{elapsed_precise}] [{wide_bar:.cyan/blue}] \
                            {bytes}/{total_bytes} ({binary_bytes_per_sec}, ETA {eta})";

/// How often a [`ProgressReporter`] without a terminal logs its progress.
pub const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A byte-counting progress bar on stderr, hidden when stderr is not a terminal (CI logs,
/// redirected output) so it never litters files with control sequences.
pub fn progress_bar(total_bytes: u64, message: impl Into<Cow<'static, str>>) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let style = ProgressStyle::with_template(BAR_TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(total_bytes), target)
        .with_style(style)
        .with_message(message)
}

/// Reports progress of a long transfer: draws a bar on a terminal, otherwise logs a
/// `tracing::info!` line at most every [`PROGRESS_LOG_INTERVAL`]. Shareable across tasks
/// (`inc` takes `&self`).
#[derive(Debug)]
pub struct ProgressReporter {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Bar(ProgressBar),
    Log(LogProgress),
}

impl ProgressReporter {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn new(total_bytes: u64, message: impl Into<Cow<'static, str>>) -> Self {
        if std::io::stderr().is_terminal() {
            Self {
                mode: Mode::Bar(progress_bar(total_bytes, message)),
            }
        } else {
            Self::logging(total_bytes, message, PROGRESS_LOG_INTERVAL)
        }
    }

    /// Log lines every `interval`, whatever stderr is.
    pub fn logging(
        total_bytes: u64,
        message: impl Into<Cow<'static, str>>,
        interval: Duration,
    ) -> Self {
        Self {
            mode: Mode::Log(LogProgress::new(
                total_bytes,
                message.into(),
                interval,
                Instant::now(),
            )),
        }
    }

    /// Whether progress is drawn as a bar (else logged).
    pub fn is_bar(&self) -> bool {
        matches!(self.mode, Mode::Bar(_))
    }

    /// Records `bytes` more transferred.
    pub fn inc(&self, bytes: u64) {
        match &self.mode {
            Mode::Bar(bar) => bar.inc(bytes),
            Mode::Log(log) => {
                if let Some(report) = log.inc(bytes, Instant::now()) {
                    report.emit();
                }
            }
        }
    }

    /// Bytes transferred so far.
    pub fn position(&self) -> u64 {
        match &self.mode {
            Mode::Bar(bar) => bar.position(),
            Mode::Log(log) => log.done.load(Ordering::Relaxed),
        }
    }

    /// Ends the report: leaves the finished bar on screen, or logs totals and mean throughput.
    pub fn finish(&self) {
        match &self.mode {
            Mode::Bar(bar) => bar.finish(),
            Mode::Log(log) => log.report(Instant::now(), true).emit(),
        }
    }
}

/// The non-terminal state: counts bytes and decides when a line is due. Pure apart from the
/// `Instant` it is given, so tests drive time explicitly.
#[derive(Debug)]
struct LogProgress {
    message: Cow<'static, str>,
    total: u64,
    done: AtomicU64,
    started: Instant,
    interval: Duration,
    next_report: Mutex<Instant>,
}

/// One progress line.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    message: Cow<'static, str>,
    done: u64,
    total: u64,
    elapsed: Duration,
    finished: bool,
}

impl LogProgress {
    fn new(total: u64, message: Cow<'static, str>, interval: Duration, now: Instant) -> Self {
        Self {
            message,
            total,
            done: AtomicU64::new(0),
            started: now,
            interval,
            next_report: Mutex::new(now + interval),
        }
    }

    /// Adds `bytes`; returns a report if one is due at `now`.
    fn inc(&self, bytes: u64, now: Instant) -> Option<Report> {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        // A busy lock means another caller is deciding right now; skipping is fine.
        let mut next = self.next_report.try_lock().ok()?;
        if now < *next {
            return None;
        }
        *next = now + self.interval;
        drop(next);
        Some(self.report(now, false))
    }

    fn report(&self, now: Instant, finished: bool) -> Report {
        Report {
            message: self.message.clone(),
            done: self.done.load(Ordering::Relaxed),
            total: self.total,
            elapsed: now.saturating_duration_since(self.started),
            finished,
        }
    }
}

impl Report {
    fn bytes_per_sec(&self) -> u64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.done as f64 / secs) as u64
        } else {
            0
        }
    }

    fn percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            (self.done as f64 * 100.0 / self.total as f64).min(100.0)
        }
    }

    fn emit(&self) {
        let done = HumanBytes(self.done);
        let total = HumanBytes(self.total);
        let rate = HumanBytes(self.bytes_per_sec());
        let percent = format!("{:.1}", self.percent());
        if self.finished {
            tracing::info!(
                bytes = self.done,
                elapsed = ?self.elapsed,
                "{}: done, {done} in {:.1}s ({rate}/s)",
                self.message,
                self.elapsed.as_secs_f64(),
            );
        } else {
            tracing::info!(
                bytes = self.done,
                total_bytes = self.total,
                "{}: {done}/{total} ({percent}%, {rate}/s)",
                self.message,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_progress_counts_bytes_and_reports_once_per_interval() {
        let start = Instant::now();
        let interval = Duration::from_secs(5);
        let log = LogProgress::new(1000, "pull".into(), interval, start);

        assert_eq!(log.inc(100, start + Duration::from_secs(1)), None);
        assert_eq!(log.inc(100, start + Duration::from_secs(4)), None);
        let report = log.inc(300, start + Duration::from_secs(5)).unwrap();
        assert_eq!(report.done, 500);
        assert_eq!(report.total, 1000);
        assert_eq!(report.bytes_per_sec(), 100);
        assert_eq!(report.percent(), 50.0);
        assert!(!report.finished);
        // The next line is due one interval after the last one, not after the start.
        assert_eq!(log.inc(100, start + Duration::from_secs(9)), None);
        assert!(log.inc(100, start + Duration::from_secs(10)).is_some());

        let last = log.report(start + Duration::from_secs(10), true);
        assert_eq!(last.done, 700);
        assert!(last.finished);
    }

    #[test]
    fn report_handles_zero_total_and_zero_elapsed() {
        let report = Report {
            message: "x".into(),
            done: 10,
            total: 0,
            elapsed: Duration::ZERO,
            finished: true,
        };
        assert_eq!(report.percent(), 100.0);
        assert_eq!(report.bytes_per_sec(), 0);
    }

    #[test]
    fn reporter_in_log_mode_counts_bytes() {
        crate::init_for_tests();
        let reporter = ProgressReporter::logging(4096, "push layer", Duration::ZERO);
        assert!(!reporter.is_bar());
        for _ in 0..4 {
            reporter.inc(1024);
        }
        assert_eq!(reporter.position(), 4096);
        reporter.finish();
    }

    #[test]
    fn progress_bar_counts_and_is_hidden_off_terminal() {
        let bar = progress_bar(10, "fetch");
        bar.inc(4);
        assert_eq!(bar.position(), 4);
        assert_eq!(bar.length(), Some(10));
        if !std::io::stderr().is_terminal() {
            assert!(bar.is_hidden());
        }
    }
}
