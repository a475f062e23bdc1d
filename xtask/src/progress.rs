//! Progress of a long step on stderr: on a terminal, a line redrawn every 200 ms with a
//! spinner and the elapsed time; elsewhere (CI logs), one line when the step starts and one
//! when it ends, so logs stay readable.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running step; [`Progress::finish`] prints how it ended. Dropping it without `finish`
/// (an early `?`) stops the redrawing and says the step did not finish.
pub struct Progress {
    label: String,
    start: Instant,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    finished: bool,
}

impl Progress {
    /// Starts showing `label`.
    pub fn start(label: impl Into<String>) -> Self {
        let label = label.into();
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = if std::io::stderr().is_terminal() {
            let (label, stop) = (label.clone(), Arc::clone(&stop));
            let start = Instant::now();
            Some(std::thread::spawn(move || {
                const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
                let mut frame = 0;
                while !stop.load(Ordering::Relaxed) {
                    let elapsed = start.elapsed().as_secs();
                    eprint!("\r\x1b[2K  {} {label} ({elapsed}s)", FRAMES[frame % 4]);
                    let _ = std::io::stderr().flush();
                    frame += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                eprint!("\r\x1b[2K");
            }))
        } else {
            eprintln!("  … {label}");
            None
        };
        Self {
            label,
            start: Instant::now(),
            stop,
            ticker,
            finished: false,
        }
    }

    fn stop_ticker(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }

    /// Stops the display and prints `label: outcome (seconds)`.
    pub fn finish(mut self, outcome: &str) {
        self.stop_ticker();
        self.finished = true;
        eprintln!(
            "  ✓ {}: {outcome} ({:.1}s)",
            self.label,
            self.start.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_ticker();
        if !self.finished {
            eprintln!(
                "  ✗ {}: failed after {:.1}s",
                self.label,
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

/// `12.3 MiB` for byte counts.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12_897_485), "12.3 MiB");
    }
}
