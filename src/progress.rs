//! Progress bars on stderr, hidden when stderr is not a terminal (logs, CI, pipes) and on MPI
//! ranks other than 0.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar counting `len` units (samples, candidates) with a label.
pub fn bar(len: u64, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() || !crate::backend::mpi::is_root() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {percent:>3}% {human_pos}/{human_len} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// A number for summaries: four significant digits, in scientific notation when its magnitude
/// is below 1e-3 or at least 1e5, so that small errors never print as 0.0000.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || !v.is_finite() {
        format!("{v}")
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::num;

    #[test]
    fn small_values_keep_their_digits() {
        assert_eq!(num(1.9e-5), "1.900e-5");
        assert_eq!(num(0.0081), "0.008100");
        assert_eq!(num(0.31), "0.3100");
        assert_eq!(num(12.5), "12.50");
        assert_eq!(num(2.5e6), "2.500e6");
        assert_eq!(num(0.0), "0");
    }
}
