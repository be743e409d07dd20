//! Progress on long work (`eval`, `predict`, `verify`, `bench`, `convert`): an `indicatif` bar on
//! stderr when stderr is a terminal, one plain line per unit of work otherwise (CI logs), and
//! nothing with `--quiet`. The library reports progress through callbacks only.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Clone)]
pub enum Progress {
    Quiet,
    /// One line per unit on stderr.
    Lines {
        what: &'static str,
    },
    /// Live bars on the terminal.
    Bars {
        main: ProgressBar,
        inner: ProgressBar,
    },
}

impl Progress {
    /// A progress display for `len` units of `what` (`images`, `cases`); `quiet` silences it.
    pub fn new(what: &'static str, len: u64, quiet: bool) -> Progress {
        if quiet {
            return Progress::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines { what };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} {per_sec} elapsed {elapsed_precise} ETA {eta_precise} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let main = multi.add(ProgressBar::new(len).with_style(style).with_prefix(what));
        let inner_style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let inner = multi.add(ProgressBar::new(0).with_style(inner_style).with_prefix("passes"));
        main.enable_steady_tick(Duration::from_millis(500));
        Progress::Bars { main, inner }
    }

    /// `pos` of the total units are done; `msg` names the last one.
    pub fn set(&self, pos: u64, len: u64, msg: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Lines { what } => errln!("{what}: [{pos}/{len}] {msg}"),
            Progress::Bars { main, inner } => {
                main.set_length(len);
                main.set_position(pos);
                main.set_message(msg.to_string());
                inner.set_position(0);
            }
        }
    }

    /// Progress inside one unit (augmentations or windows of an image).
    pub fn inner(&self, done: u64, total: u64, msg: &str) {
        if let Progress::Bars { inner, .. } = self {
            inner.set_length(total);
            inner.set_position(done);
            inner.set_message(msg.to_string());
        }
    }

    /// A message that is not a unit of work.
    pub fn note(&self, msg: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Lines { .. } => errln!("{msg}"),
            Progress::Bars { main, .. } => main.println(msg),
        }
    }

    /// Prints `text` on stdout without tearing the bars.
    pub fn print(&self, text: &str) -> Result<(), super::StdoutError> {
        match self {
            Progress::Bars { main, .. } => main.suspend(|| out!("{text}")),
            _ => out!("{text}"),
        }
    }

    /// Removes the bars.
    pub fn finish(&self) {
        if let Progress::Bars { main, inner } = self {
            inner.finish_and_clear();
            main.finish_and_clear();
        }
    }
}
