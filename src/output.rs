//! Output files that are whole or absent. Every output is written under a temporary name in the
//! target's directory and renamed into place when complete; the temporary names in flight are
//! registered, so an interrupt (SIGINT, SIGTERM: see [`remove_in_flight`]) removes them, and a
//! run killed outright (SIGKILL) leaves names that the next run writing to the same place
//! recognises by their dead process id and removes.
//!
//! A temporary name is `.NAME.tmp-PID-SEQ` beside `NAME`.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static SEQUENCE: AtomicU64 = AtomicU64::new(0);
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The directory a file path lives in (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::invalid(format!(
                "{}: an output path needs a file name (not a directory or '..')",
                path.display()
            ))
        })
}

/// Whether a process with this id is running (Linux: /proc; elsewhere assumed alive, so that a
/// file of a live run is never removed).
fn process_alive(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    !proc_root.is_dir() || proc_root.join(pid.to_string()).exists()
}

/// Removes temporary twins of `path` left by runs that no longer exist, saying so on stderr.
fn remove_stale(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    let prefix = format!(".{}.tmp-", file_name(path)?);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let stale = entry.path();
        let removed = if stale.is_dir() {
            std::fs::remove_dir_all(&stale)
        } else {
            std::fs::remove_file(&stale)
        };
        match removed {
            Ok(()) => eprintln!(
                "note: removed {}, left by an interrupted run (process {pid})",
                stale.display()
            ),
            Err(e) => eprintln!(
                "note: {} was left by an interrupted run (process {pid}) and could not be removed: {e}",
                stale.display()
            ),
        }
    }
    Ok(())
}

/// A registered temporary name for `path`, after removing stale ones of earlier killed runs.
/// Finish with [`commit`] (rename into place) or [`abandon`].
pub fn begin(path: &Path) -> Result<PathBuf> {
    remove_stale(path)?;
    let tmp = parent_dir(path).join(format!(
        ".{}.tmp-{}-{}",
        file_name(path)?,
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    IN_FLIGHT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(tmp.clone());
    Ok(tmp)
}

fn unregister(tmp: &Path) {
    IN_FLIGHT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != tmp);
}

/// Renames the finished temporary file (or directory) into place.
pub fn commit(tmp: &Path, path: &Path) -> std::io::Result<()> {
    let renamed = std::fs::rename(tmp, path);
    if renamed.is_err() {
        let _ = remove_path(tmp);
    }
    unregister(tmp);
    renamed
}

/// Removes an unfinished temporary file (or directory); errors are ignored (nothing to report).
pub fn abandon(tmp: &Path) {
    let _ = remove_path(tmp);
    unregister(tmp);
}

fn remove_path(p: &Path) -> std::io::Result<()> {
    if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// Removes every temporary output still in flight: what an interrupt handler calls before the
/// process exits.
pub fn remove_in_flight() {
    let paths = std::mem::take(&mut *IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner()));
    for p in paths {
        let _ = remove_path(&p);
    }
}

/// Writes `contents` to `path` through a temporary file: readers see the old file or the new
/// one, never a half-written one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = begin(path)?;
    if let Err(e) = std::fs::write(&tmp, contents) {
        abandon(&tmp);
        return Err(Error::io(&tmp, e));
    }
    commit(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Checks, before any computing, that `path` can be written as an output file: its directory
/// exists and is writable and `path` is not a directory. `flag` names the option in the
/// message (e.g. `--out`).
pub fn check_writable(path: &Path, flag: &str) -> Result<()> {
    let name = file_name(path).map_err(|_| {
        Error::invalid(format!(
            "{flag} {}: expected a file path, not a directory; add a file name",
            path.display()
        ))
    })?;
    if path.is_dir() {
        return Err(Error::invalid(format!(
            "{flag} {}: is a directory; give a file path inside it (e.g. {})",
            path.display(),
            path.join("out").display()
        )));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "{flag} {}: the directory {} does not exist; create it first (mkdir -p {})",
            path.display(),
            dir.display(),
            dir.display()
        )));
    }
    check_dir_writable(&dir, &name, flag, path)
}

/// Checks that `dir` exists (creating it if missing) and that files can be created in it.
pub fn check_writable_dir(dir: &Path, flag: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::invalid(format!(
            "{flag} {}: is a file, expected a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::invalid(format!(
            "{flag} {}: cannot create the directory ({e}); choose a writable location",
            dir.display()
        ))
    })?;
    check_dir_writable(dir, "probe", flag, dir)
}

/// Creates and removes a probe file in `dir`: the one reliable test of write permission.
fn check_dir_writable(dir: &Path, name: &str, flag: &str, shown: &Path) -> Result<()> {
    let probe = dir.join(format!(
        ".{name}.probe-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Error::invalid(format!(
            "{flag} {}: cannot write in {} ({e}); choose a writable location",
            shown.display(),
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_twins_are_removed_live_ones_kept_and_in_flight_ones_removed_on_interrupt() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("p.npy");
        // Process ids above the kernel's pid_max (at most 2^22) cannot be running.
        let dead = dir.path().join(".p.npy.tmp-99999999-0");
        let live = dir
            .path()
            .join(format!(".p.npy.tmp-{}-77", std::process::id()));
        let other = dir.path().join(".q.npy.tmp-99999999-0");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let tmp = begin(&target).unwrap();
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
        std::fs::write(&tmp, b"done").unwrap();
        commit(&tmp, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"done");
        assert!(IN_FLIGHT.lock().unwrap().iter().all(|p| p != &tmp));

        // What an interrupt does (in this test only: the registry is process-wide).
        let tmp = begin(&dir.path().join("m.json")).unwrap();
        std::fs::write(&tmp, b"partial").unwrap();
        remove_in_flight();
        assert!(!tmp.exists());
    }

    #[test]
    fn unwritable_outputs_are_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope").join("m.json");
        let e = check_writable(&missing, "--out").unwrap_err().to_string();
        assert!(e.contains("--out") && e.contains("does not exist"), "{e}");
        let e = check_writable(dir.path(), "--out").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        check_writable(&dir.path().join("ok.json"), "--out").unwrap();
        // No probe file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
