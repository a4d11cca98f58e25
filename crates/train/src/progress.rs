//! Progress bars with rate and ETA for training, validation, inference and evaluation. They draw on standard
//! error only when it is a terminal (indicatif hides them otherwise), and not at all when `quiet`.
//!
//! ```
//! let bar = vesalius_train::progress::bar(10, "validation", true);
//! bar.inc(1);
//! bar.finish_and_clear();
//! ```
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` units labelled `label`; hidden when `quiet` or when standard error is not a terminal.
pub fn bar(len: u64, label: &str, quiet: bool) -> ProgressBar {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}
