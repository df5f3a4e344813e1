//! What a run says on stderr while it works: progress bars, hidden when stderr is not a
//! terminal (logs, CI, pipes), and one line per finished stage or filtered-PCA round (when the
//! caller asks for them, as the command line does), so that a run logged to a file or killed at
//! a time limit shows where it was. Nothing prints on MPI ranks other than 0.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};

/// How much a run says on stderr while it works (process-wide; see [`set_verbosity`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Nothing: no bars, no stage lines (the command line's `--quiet`). Errors still print.
    Quiet,
    /// Bars when stderr is a terminal, no stage lines: the library's default.
    Bars,
    /// Bars when stderr is a terminal, and one line per finished stage or round, terminal or
    /// not (the command line's default for `learn`, `subspace` and `demo`). The bars are
    /// cleared before a stage ends, so the lines never land inside one.
    Stages,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(1);

/// Sets what the rest of the process prints on stderr while it works.
pub fn set_verbosity(v: Verbosity) {
    let code = match v {
        Verbosity::Quiet => 0,
        Verbosity::Bars => 1,
        Verbosity::Stages => 2,
    };
    VERBOSITY.store(code, Ordering::Relaxed);
}

/// What [`set_verbosity`] last set ([`Verbosity::Bars`] until then).
pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Bars,
        _ => Verbosity::Stages,
    }
}

/// A bar counting `len` units (samples, candidates) with a label.
pub fn bar(len: u64, label: &str) -> ProgressBar {
    if verbosity() == Verbosity::Quiet
        || !std::io::stderr().is_terminal()
        || !crate::runtime::is_root()
    {
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

/// Prints `  NAME: FACT, FACT, ..` on stderr, one line, when a stage or round has ended and
/// the verbosity is [`Verbosity::Stages`] (on MPI rank 0 only). The facts are built only then.
pub fn stage_done(name: &str, facts: impl FnOnce() -> Vec<String>) {
    if verbosity() == Verbosity::Stages && crate::runtime::is_root() {
        eprintln!("{}", stage_line(name, &facts()));
    }
}

/// The line [`stage_done`] prints (without the newline).
pub fn stage_line(name: &str, facts: &[String]) -> String {
    format!("  {name}: {}", facts.join(", "))
}

/// A count of rows for a stage line: exact below 1e5, else two significant digits (8.0e5).
pub fn count(n: u64) -> String {
    if n < 100_000 {
        n.to_string()
    } else {
        format!("{:.1e}", n as f64)
    }
}

/// Seconds for a stage line: "0.42 s", "4.1 s".
pub fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// CPU time this process has used so far, all threads together, threads that have already
/// exited included (Linux: utime + stime of /proc/self/stat, in the kernel's USER_HZ = 100 ticks
/// per second, so 10 ms resolution; None elsewhere or when it cannot be read). The difference
/// over a stage is the CPU time the host spent on it: computing, spinning or copying, not
/// waiting for the device or the disk; on a software adapter (lavapipe) the "device" runs on
/// these CPUs and counts too.
pub fn process_cpu_seconds_total() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Wall and process CPU time since a stage began.
#[derive(Clone, Copy, Debug)]
pub struct StageClock {
    wall: std::time::Instant,
    cpu: Option<f64>,
}

impl StageClock {
    /// Starts both clocks.
    pub fn start() -> Self {
        StageClock {
            wall: std::time::Instant::now(),
            cpu: process_cpu_seconds_total(),
        }
    }

    /// Wall seconds since [`StageClock::start`].
    pub fn seconds(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }

    /// CPU seconds of this process since [`StageClock::start`] (see
    /// [`process_cpu_seconds_total`]).
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.cpu
            .zip(process_cpu_seconds_total())
            .map(|(a, b)| (b - a).max(0.0))
    }
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
    use super::*;

    #[test]
    fn stage_lines_read_like_cargo() {
        let facts = vec![
            "3 directions".to_string(),
            format!("{} rows", count(1_234_567)),
            seconds(4.123),
        ];
        assert_eq!(
            stage_line("subspace round 2", &facts),
            "  subspace round 2: 3 directions, 1.2e6 rows, 4.12 s"
        );
        assert_eq!(count(99_999), "99999");
        assert_eq!(count(19_000_000), "1.9e7");
        assert_eq!(seconds(27.14), "27.1 s");
    }

    // Only Linux has /proc; elsewhere the figure is absent, never wrong.
    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_time_counts_work_on_threads_that_have_ended() {
        let before = process_cpu_seconds_total().expect("/proc/self/stat");
        // 0.3 s of CPU (its own clock) on a thread that exits before the second reading; at
        // most 10 s of wall time on a machine busy with other work.
        let burned = std::thread::spawn(|| {
            let own = crate::backend::cpu::peak::thread_cpu_seconds;
            let (t, start) = (std::time::Instant::now(), own()?);
            let mut x = 0u64;
            while own()? - start < 0.3 && t.elapsed().as_secs_f64() < 10.0 {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            Some(own()? - start)
        })
        .join()
        .unwrap()
        .expect("this thread's CPU time on Linux");
        let spent = process_cpu_seconds_total().unwrap() - before;
        // The kernel's tick accounting may round by a tick or two either way.
        assert!(
            spent >= burned - 0.05,
            "{spent} s of process CPU counted for {burned} s on an ended thread"
        );
    }

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
