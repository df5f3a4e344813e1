//! Checks made before any work starts, so that a careless flag or a hostile file is refused in
//! milliseconds with the figure behind the refusal instead of aborting on an allocation,
//! filling the disk or computing for hours: memory and disk space against what a request
//! implies, the work that size flags multiply, the project's environment variables, and
//! samples that repeat rows.
//!
//! Every refusal is an [`Error::InvalidRequest`] whose message names the flag (or variable),
//! the figure and the fix.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Flops a command may be asked to do by its size flags: above this, the request is refused
/// (about a day at 100 GFLOP/s, many days on a laptop core).
pub const MAX_FLAG_FLOPS: f64 = 1e16;
/// Above this many flops of flag-driven work a note with the estimate is printed before the
/// work starts (about 2 minutes at 100 GFLOP/s; the defaults need 1e9 to 1e12).
pub const NOTE_FLAG_FLOPS: f64 = 1e13;
/// Widest hidden layer `learn --hidden` accepts (enumerate-and-test's candidates).
pub const MAX_HIDDEN: usize = 1024;
/// Largest teacher network `generate` and the `--teacher` sources build, in parameters (the
/// built-in teachers have d x k + a few hundred; 1e8 parameters are 800 MB of f64).
pub const MAX_TEACHER_PARAMS: u128 = 100_000_000;

/// A byte count as a short figure: `512 B`, `3.4 MB`, `1.2 TB` (powers of 1000).
pub fn bytes(n: u128) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v >= 1000.0 {
        // Beyond exabytes: say it in powers of ten.
        format!("{:.1e} B", n as f64)
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A flop count and how long it would take at 100 GFLOP/s, e.g. `2.6e15 flops (7.2 hours at
/// 100 GFLOP/s)`.
pub fn flops(f: f64) -> String {
    let s = f / 1e11;
    let time = if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} minutes", s / 60.0)
    } else if s < 2.0 * 86400.0 {
        format!("{:.1} hours", s / 3600.0)
    } else if s < 2.0 * 365.0 * 86400.0 {
        format!("{:.0} days", s / 86400.0)
    } else if s < 1000.0 * 365.0 * 86400.0 {
        format!("{:.0} years", s / (365.0 * 86400.0))
    } else {
        format!("{:.1e} years", s / (365.0 * 86400.0))
    };
    format!("{f:.1e} flops ({time} at 100 GFLOP/s)")
}

/// Memory a new allocation can get without swapping (Linux: `MemAvailable` of /proc/meminfo);
/// None where unknown.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Bytes an unprivileged writer may still write in the file system that holds `dir` (statvfs:
/// available blocks times the fragment size); None where unknown.
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a NUL-terminated path and `st` a buffer statvfs fills on success.
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it initialised the struct.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::unnecessary_cast)]
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Refuses `need` bytes of memory when the machine has fewer available. `what` says what needs
/// them (with the flags), `fix` what to change.
pub fn check_memory(need: u128, what: &str, fix: &str) -> Result<()> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if need > available as u128 {
        return Err(Error::invalid(format!(
            "{what} needs at least {} of memory but this machine has {} available; {fix}",
            bytes(need),
            bytes(available as u128)
        )));
    }
    Ok(())
}

/// Refuses to write `need` bytes into `dir` when its file system has less free space; `what`
/// names the output and its flag.
pub fn check_free_space(dir: &Path, need: u128, what: &str) -> Result<()> {
    let Some(free) = free_space(dir) else {
        return Ok(());
    };
    if need > free as u128 {
        return Err(Error::invalid(format!(
            "{what} needs {} of disk space but {} has {} free; free some space or write elsewhere",
            bytes(need),
            dir.display(),
            bytes(free as u128)
        )));
    }
    Ok(())
}

/// Reserves room for `additional` more values in `v`, or a typed error (`what` says for what,
/// `fix` what to change) when the allocation fails, instead of the process aborting.
pub fn reserve<T>(v: &mut Vec<T>, additional: usize, what: &str, fix: &str) -> Result<()> {
    v.try_reserve_exact(additional).map_err(|_| {
        Error::invalid(format!(
            "{what}: cannot allocate {} ({additional} values); {fix}",
            bytes(additional as u128 * std::mem::size_of::<T>().max(1) as u128)
        ))
    })
}

/// Checks, before anything is opened, that each input (flag, path) names an existing regular
/// file (a shard pattern is left to the reader, which reports its own misses). `positioned`
/// inputs (sample files, read by position) must be regular files; the others (JSON files,
/// read once) may also be pipes such as `<(...)`.
pub fn check_inputs(inputs: &[(&str, &Path, bool)]) -> Result<()> {
    for &(flag, path, positioned) in inputs {
        let text = path.to_string_lossy();
        match std::fs::metadata(path) {
            Err(_) if text.contains(['*', '?', '[']) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let here = std::env::current_dir()
                    .map(|d| format!(" (relative paths start in {})", d.display()))
                    .unwrap_or_default();
                return Err(Error::invalid(format!(
                    "{flag} {text}: no such file{}; check the path",
                    if path.is_relative() { here } else { String::new() }
                )));
            }
            Err(e) => {
                return Err(Error::invalid(format!(
                    "{flag} {text}: cannot be read ({e}); check the path and its permissions"
                )))
            }
            Ok(m) if m.is_dir() => {
                return Err(Error::invalid(format!(
                    "{flag} {text}: is a directory; give the file inside it (e.g. {})",
                    path.join(if positioned { "x.npy" } else { "model.json" })
                        .display()
                )))
            }
            Ok(m) if positioned && !m.is_file() => {
                return Err(Error::invalid(format!(
                    "{flag} {text}: is not a regular file (a pipe or a device); sample files are read by position, so save the array to a file with np.save"
                )))
            }
            Ok(_) => {}
        }
        if let Err(e) = std::fs::File::open(path) {
            if !text.contains(['*', '?', '[']) {
                return Err(Error::invalid(format!(
                    "{flag} {text}: cannot be opened ({e}); check its permissions"
                )));
            }
        }
    }
    Ok(())
}

/// Names the flag in a file error: an error about one of `files` (flag, the files it names: a
/// pattern's every match) that does not already name a flag gets it in front, so
/// `x.npy: row 3, column 2 is NaN` becomes `--x x.npy: row 3, column 2 is NaN`. Other errors
/// (GPU, no structure, other ranks) pass unchanged.
pub fn with_flag(e: Error, files: &[(&str, Vec<PathBuf>)]) -> Error {
    let fileish = matches!(
        e,
        Error::Data(_)
            | Error::Network(_)
            | Error::Io { .. }
            | Error::Export(_)
            | Error::InvalidRequest(_)
    );
    if !fileish {
        return e;
    }
    let msg = e.to_string();
    if msg.starts_with("--") || msg.starts_with("environment variable") {
        return e;
    }
    for (flag, candidates) in files {
        for c in candidates {
            let shown = c.display().to_string();
            if shown.is_empty() {
                continue;
            }
            if names_path(&msg, &shown) {
                return Error::invalid(if msg.starts_with(&shown) {
                    format!("{flag} {msg}")
                } else {
                    format!("{flag}: {msg}")
                });
            }
        }
    }
    e
}

/// Whether `msg` mentions `path` as a word of its own (not inside another word or path).
fn names_path(msg: &str, path: &str) -> bool {
    msg.match_indices(path).any(|(at, _)| {
        let before = msg[..at].chars().next_back();
        let after = msg[at + path.len()..].chars().next();
        let open = before.is_none_or(|c| c.is_whitespace() || "('\"".contains(c));
        let close = after.is_none_or(|c| c.is_whitespace() || ":)'\",;".contains(c));
        open && close
    })
}

/// One environment variable the project reads, with the values it accepts.
struct EnvRule {
    name: &'static str,
    accepts: &'static str,
    ok: fn(&str) -> bool,
}

fn one_of(v: &str, words: &[&str]) -> bool {
    words.iter().any(|w| v.eq_ignore_ascii_case(w))
}

const ENV_RULES: &[EnvRule] = &[
    EnvRule {
        name: "RELU_FPT_CPU_KERNEL",
        accepts: "auto, avx512, avx2 or portable",
        ok: |v| one_of(v, &["auto", "avx512", "avx2", "portable"]),
    },
    EnvRule {
        name: "RELU_FPT_GPU_RESIDENT_MIB",
        accepts: "a whole number of MiB (0 turns residency off)",
        ok: |v| v.parse::<u64>().is_ok_and(|m| m <= u64::MAX >> 20),
    },
    EnvRule {
        name: "RELU_FPT_GPU_WAIT_SECONDS",
        accepts: "a positive number of seconds",
        ok: |v| v.parse::<f64>().is_ok_and(|s| s.is_finite() && s > 0.0),
    },
    EnvRule {
        name: "RELU_FPT_GPU_SHADER_CHECKS",
        accepts: "none, bounds or all",
        ok: |v| matches!(v, "none" | "bounds" | "all"),
    },
    EnvRule {
        name: "RELU_FPT_GPU_BINNING",
        accepts: "host or device",
        ok: |v| matches!(v, "host" | "device"),
    },
    EnvRule {
        name: "RELU_FPT_GPU_MOMENT_TILE",
        accepts: "three positive whole numbers 'workgroup,per_invocation,slab' (e.g. 16,4,16)",
        ok: |v| {
            let parts: Vec<&str> = v.split(',').map(str::trim).collect();
            parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok_and(|n| n > 0))
        },
    },
    EnvRule {
        name: "WGPU_BACKEND",
        accepts: "a comma-separated list of vulkan, metal, dx12, gl (e.g. vulkan)",
        ok: |v| {
            v.split(',').all(|b| {
                one_of(
                    b.trim(),
                    &[
                        "vulkan", "vk", "dx12", "d3d12", "metal", "mtl", "opengl", "gles", "gl",
                        "webgpu", "noop",
                    ],
                )
            })
        },
    },
    EnvRule {
        name: "WGPU_POWER_PREF",
        accepts: "low, high or none",
        ok: |v| one_of(v, &["low", "high", "none"]),
    },
    EnvRule {
        name: "RAYON_NUM_THREADS",
        accepts: "a whole number of threads (0 for one per core)",
        ok: |v| v.parse::<usize>().is_ok(),
    },
];

/// Checks the environment variables the project reads (`RELU_FPT_*` and the `WGPU_BACKEND`,
/// `WGPU_POWER_PREF` and `RAYON_NUM_THREADS` the README documents): a set variable with a
/// value none of them accepts is an error naming the variable, instead of being ignored.
/// Empty values count as unset.
pub fn check_environment() -> Result<()> {
    for (name, value) in std::env::vars_os() {
        let (Some(name), value) = (name.to_str(), value.to_string_lossy()) else {
            continue;
        };
        let v = value.trim();
        if let Some(rule) = ENV_RULES.iter().find(|r| r.name == name) {
            if !v.is_empty() && !(rule.ok)(v) {
                return Err(Error::invalid(format!(
                    "environment variable {name}={value}: expected {}; fix or unset it (unset {name})",
                    rule.accepts
                )));
            }
        }
    }
    Ok(())
}

/// Widths as "4,4".
pub fn widths(w: &[usize]) -> String {
    w.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Memory a filtered-PCA or baseline run needs at the least for d inputs: a d x d symmetric
/// matrix of f64 sums, its eigendecomposition's copy and one accumulator.
pub fn subspace_bytes(d: usize) -> u128 {
    3 * 8 * (d as u128) * (d as u128)
}

/// Refuses samples whose dimension needs more memory for the d x d moments than the machine
/// has ([`subspace_bytes`]); `origin` names the file or flag that sets d.
pub fn check_subspace_memory(d: usize, origin: &str) -> Result<()> {
    check_memory(
        subspace_bytes(d),
        &format!("{origin}: d = {d} columns (d x d second moments)"),
        "reduce the dimension first (e.g. PCA to a few thousand columns)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64_000_000_000), "64.0 GB");
        assert!(flops(2.6e15).contains("7.2 hours"), "{}", flops(2.6e15));
        assert!(flops(1e19).contains("years"));
    }

    #[test]
    fn failed_allocations_are_errors() {
        let mut v: Vec<u64> = Vec::new();
        let e = reserve(&mut v, usize::MAX / 16, "test buffer", "use less").unwrap_err();
        assert!(e.to_string().contains("test buffer"), "{e}");
        reserve(&mut v, 3, "x", "y").unwrap();
        assert!(v.capacity() >= 3);
    }
}
