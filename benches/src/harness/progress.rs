//! Progress of a run: one `indicatif` line per entry when stdout and
//! stderr are terminals, plain log lines on stderr otherwise (CI logs).
//!
//! The lines are redrawn only between measurements (no ticking thread
//! that would take a core from the entries).

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct Progress {
    bars: Option<(MultiProgress, Vec<ProgressBar>)>,
    names: Vec<String>,
    rounds: u64,
}

impl Progress {
    pub(crate) fn new(names: Vec<String>, rounds: u64) -> Self {
        let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bars = tty.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let width = names.iter().map(String::len).max().unwrap_or(8);
            let style = ProgressStyle::with_template(&format!(
                "  {{prefix:<{width}}} [{{bar:20}}] {{pos}}/{{len}} rounds  {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let bars = names
                .iter()
                .map(|n| {
                    let b = multi.add(ProgressBar::new(rounds));
                    b.set_style(style.clone());
                    b.set_prefix(n.clone());
                    b.set_message("waiting");
                    b
                })
                .collect();
            (multi, bars)
        });
        Progress {
            bars,
            names,
            rounds,
        }
    }

    pub(crate) fn round(&self, round: u64) {
        if self.bars.is_none() && self.rounds > 1 {
            eprintln!("round {} of {}", round + 1, self.rounds);
        }
    }

    pub(crate) fn start(&self, k: usize) {
        match &self.bars {
            Some((_, b)) => b[k].set_message("measuring"),
            None => eprint!("  measuring {:<14}", self.names[k]),
        }
    }

    pub(crate) fn done(&self, k: usize, what: &str, secs: f64) {
        match &self.bars {
            Some((_, b)) => {
                b[k].inc(1);
                b[k].set_message(format!("last round: {what}  ({secs:.1} s)"));
            }
            None => eprintln!(" {what}  ({secs:.1} s)"),
        }
    }

    pub(crate) fn failed(&self, k: usize, e: &str) {
        match &self.bars {
            Some((_, b)) => b[k].abandon_with_message(format!("FAILED: {e}")),
            None => eprintln!(" FAILED: {e}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some((_, b)) = &self.bars {
            for bar in b {
                bar.finish();
            }
        }
    }
}
