//! Sync progress for a person at a terminal: a bar with the rate and an ETA on stderr
//! while the node syncs, with log lines printed above it. Anywhere else (a file, a pipe,
//! journald, JSON logs) there is no bar, and the network task logs a progress line every
//! few seconds instead.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

use crate::chain::NodeStatus;
use crate::p2p::SyncView;

/// Set once at start when stderr is a terminal and logs are for people.
static WANTED: AtomicBool = AtomicBool::new(false);
/// The bar on screen, if any: the log writer draws around it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

pub fn enable_on_terminal(human_logs: bool) {
    use std::io::IsTerminal;
    WANTED.store(human_logs && io::stderr().is_terminal(), Ordering::Relaxed);
}

fn bar() -> Option<ProgressBar> {
    BAR.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn set_bar(b: Option<ProgressBar>) {
    *BAR.lock().unwrap_or_else(PoisonError::into_inner) = b;
}

/// True while a bar shows progress, so that no progress lines repeat it.
pub fn bar_shown() -> bool {
    WANTED.load(Ordering::Relaxed) && bar().is_some()
}

/// The log output: stderr, with the bar (if any) lifted while a line is written.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match bar() {
            Some(b) => b
                .suspend(|| io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Shows the bar while the node syncs, until the runtime stops; nothing off a terminal.
pub async fn run(mut sync: watch::Receiver<SyncView>, status: watch::Receiver<NodeStatus>) {
    if !WANTED.load(Ordering::Relaxed) {
        return;
    }
    let style = ProgressStyle::with_template(
        "{spinner} syncing [{bar:40}] {pos}/{len} blocks · {msg} · ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            changed = sync.changed() => if changed.is_err() { break },
            _ = every.tick() => {}
        }
        let view = sync.borrow().clone();
        let height = status.borrow().height;
        match (view.syncing, bar()) {
            (true, None) => {
                let b = ProgressBar::with_draw_target(
                    Some(view.target_height),
                    ProgressDrawTarget::stderr(),
                )
                .with_style(style.clone())
                .with_position(height);
                b.enable_steady_tick(Duration::from_millis(200));
                set_bar(Some(b));
            }
            (true, Some(b)) => {
                b.set_length(view.target_height.max(height));
                b.set_position(height);
                b.set_message(format!(
                    "{} blocks/s · {} peers",
                    view.blocks_per_sec, view.peers
                ));
            }
            (false, Some(b)) => {
                b.finish_and_clear();
                set_bar(None);
            }
            (false, None) => {}
        }
    }
    if let Some(b) = bar() {
        b.finish_and_clear();
        set_bar(None);
    }
}
