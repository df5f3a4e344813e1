//! Output files that are whole or absent. Every output is written under a temporary name in the
//! target's directory and renamed into place when complete; the temporary names in flight are
//! registered, so an interrupt (SIGINT, SIGTERM: see [`remove_in_flight`]) removes them, and a
//! run killed outright (SIGKILL) leaves names that the next run writing to the same place
//! recognises by their dead process id and removes.
//!
//! A temporary name is `.NAME.tmp-PID-SEQ` beside `NAME`.
//!
//! Before any work, [`check_writable`] refuses an output path that cannot end as a regular file
//! written by a rename (a directory, a device, a FIFO, a symbolic link, a name ending in `/`),
//! and [`check_not_input`] one that is the same file as an input or another output.
//!
//! Permissions, the same rule for every output: a new output gets `0666` less the umask (what
//! any tool's `open(O_CREAT)` gives), and an output that replaces a regular file keeps that
//! file's permission bits.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static SEQUENCE: AtomicU64 = AtomicU64::new(0);
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Held while a multi-step commit moves files into place ([`commit_dir`]): the interrupt
/// handler's [`remove_in_flight`] waits for it, so an interrupt never stops a commit halfway.
static COMMIT: Mutex<()> = Mutex::new(());

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

/// Renames the finished temporary file (or directory) into place. A regular file it replaces
/// passes on its permission bits (see the module docs).
pub fn commit(tmp: &Path, path: &Path) -> std::io::Result<()> {
    keep_permissions(tmp, path);
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

/// Gives `tmp` the permission bits of the regular file at `path`, when there is one.
fn keep_permissions(tmp: &Path, path: &Path) {
    if let Ok(old) = std::fs::symlink_metadata(path) {
        if old.is_file() {
            let _ = std::fs::set_permissions(tmp, old.permissions());
        }
    }
}

/// Removes every temporary output still in flight: what an interrupt handler calls before the
/// process exits. Waits for a commit in progress to finish first.
pub fn remove_in_flight() {
    remove_in_flight_where(|_| true);
}

/// [`remove_in_flight`] for the paths `which` picks (the tests pick their own: the registry
/// is process-wide, and other tests write files beside them).
fn remove_in_flight_where(which: impl Fn(&Path) -> bool) {
    let _commit = COMMIT.lock().unwrap_or_else(|e| e.into_inner());
    let mut registry = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    let (picked, kept): (Vec<PathBuf>, Vec<PathBuf>) = std::mem::take(&mut *registry)
        .into_iter()
        .partition(|p| which(p));
    *registry = kept;
    drop(registry);
    for p in picked {
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

/// Checks, before any computing, that `path` can be written as an output file: it does not end
/// in `/`, is not a directory, a symbolic link, a device, a FIFO or a socket, and its directory
/// exists and is writable. `flag` names the option in the message (e.g. `--out`).
pub fn check_writable(path: &Path, flag: &str) -> Result<()> {
    let text = path.to_string_lossy();
    if text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
        let trimmed = text.trim_end_matches(['/', std::path::MAIN_SEPARATOR]);
        return Err(Error::invalid(format!(
            "{flag} {text}: ends in '/', which names a directory, but {flag} is a file; give a file path (e.g. {trimmed}/out.json, or {trimmed} itself)"
        )));
    }
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
    check_regular(path, flag)?;
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

/// Refuses an existing `path` that is not a regular file: outputs are renamed into place, which
/// would replace a symbolic link, a device or a FIFO by a plain file.
fn check_regular(path: &Path, flag: &str) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    if kind.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(Error::invalid(format!(
            "{flag} {}: is a symbolic link (to {target}); outputs are written under a temporary name and renamed, which would replace the link itself; give the path of the file it points to, or remove the link",
            path.display()
        )));
    }
    Err(Error::invalid(format!(
        "{flag} {}: exists and is {}, not a regular file; outputs are written under a temporary name and renamed into place, which would replace it; give a regular file path",
        path.display(),
        describe_kind(&meta)
    )))
}

/// What kind of file system entry `meta` describes, for messages.
fn describe_kind(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Where `path` lives once symbolic links and `..` in its directory are resolved: the
/// directory's canonical path joined with the file name (None when the directory does not
/// exist). Two paths with the same target name the same file whether or not it exists yet.
fn canonical_target(path: &Path) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(parent_dir(path)).ok()?;
    Some(dir.join(path.file_name()?))
}

/// Whether `a` and `b` name the same file: the same device and inode when both exist (hard
/// links and symbolic links included), else the same canonical target.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return ma.dev() == mb.dev() && ma.ino() == mb.ino();
        }
    }
    match (canonical_target(a), canonical_target(b)) {
        (Some(ta), Some(tb)) => ta == tb,
        _ => false,
    }
}

/// Refuses an output that is the same file as an input (which writing it would destroy) or as
/// another output (one would overwrite the other). `outputs` are (flag, path); `inputs` are
/// (flag, path as given, the files it names: itself, or a shard pattern's every match).
pub fn check_not_input(
    outputs: &[(&str, &Path)],
    inputs: &[(&str, &Path, Vec<PathBuf>)],
) -> Result<()> {
    for (i, &(oflag, out)) in outputs.iter().enumerate() {
        for (iflag, input, files) in inputs {
            if let Some(f) = files.iter().find(|f| same_file(out, f)) {
                let which = if f.as_path() == *input {
                    String::new()
                } else {
                    format!(" (matched by {iflag} '{}')", input.display())
                };
                return Err(Error::invalid(format!(
                    "{oflag} {} is the same file as the input {iflag} {}{which}: writing it would destroy the input; choose another {oflag} path",
                    out.display(),
                    f.display()
                )));
            }
        }
        for &(other_flag, other) in &outputs[i + 1..] {
            if same_file(out, other) {
                return Err(Error::invalid(format!(
                    "{oflag} {} and {other_flag} {} name the same file: one output would overwrite the other; give them different paths",
                    out.display(),
                    other.display()
                )));
            }
        }
    }
    Ok(())
}

/// Checks, before any computing, that a directory output can be written: `dir` is a directory
/// or does not exist yet, and the directory that will hold it (the nearest existing one on its
/// path) is writable. Nothing is created.
pub fn check_writable_dir(dir: &Path, flag: &str) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return check_dir_writable(dir, "probe", flag, dir),
        Ok(m) if m.file_type().is_symlink() && dir.is_dir() => {
            return check_dir_writable(dir, "probe", flag, dir)
        }
        Ok(m) => {
            return Err(Error::invalid(format!(
                "{flag} {}: is {}, expected a directory (or a path to create one at)",
                dir.display(),
                if m.is_file() {
                    "a file"
                } else {
                    describe_kind(&m)
                }
            )))
        }
        Err(_) => {}
    }
    let base = existing_ancestor(dir);
    if !base.is_dir() {
        return Err(Error::invalid(format!(
            "{flag} {}: {} is not a directory, so the directory cannot be created there; choose another path",
            dir.display(),
            base.display()
        )));
    }
    check_dir_writable(&base, "probe", flag, dir)
}

/// The nearest ancestor of `path` (itself included) that exists.
pub fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    loop {
        if std::fs::symlink_metadata(&p).is_ok() {
            return p;
        }
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q.to_path_buf(),
            _ => return PathBuf::from("."),
        }
    }
}

/// A directory of outputs built under a temporary name and committed whole ([`StagedDir::commit`]).
pub struct StagedDir {
    /// Where the files are written.
    pub path: PathBuf,
    target: PathBuf,
    /// The staging directory is the target's future self (a new or empty target), renamed in
    /// one step; otherwise it lies inside the existing target and its files move one by one.
    whole: bool,
    /// Directories created on the way to the target, removed again when the run fails.
    created: Vec<PathBuf>,
}

/// Starts a directory output at `target`: a registered staging directory that becomes `target`
/// with one rename when `target` does not exist or is empty, or a staging directory inside
/// `target` when it already holds files. Missing parent directories are created (and removed
/// again by [`StagedDir::abandon`]).
pub fn begin_dir(target: &Path) -> Result<StagedDir> {
    let empty = std::fs::read_dir(target)
        .ok()
        .map(|mut e| e.next().is_none());
    // One rename needs a name to rename to, and the parent on the target's file system (an
    // empty mount point is filled from inside).
    let whole = empty != Some(false)
        && target.file_name().is_some()
        && (empty.is_none() || same_device(target, &parent_dir(target)));
    let parent = if whole {
        parent_dir(target)
    } else {
        target.to_path_buf()
    };
    let mut created = Vec::new();
    let mut missing = Vec::new();
    let mut p = parent.clone();
    while std::fs::symlink_metadata(&p).is_err() {
        missing.push(p.clone());
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q.to_path_buf(),
            _ => break,
        }
    }
    for m in missing.iter().rev() {
        if let Err(e) = std::fs::create_dir(m) {
            remove_created(&created);
            return Err(Error::io(m, e));
        }
        created.push(m.clone());
    }
    let name = if whole {
        target.to_path_buf()
    } else {
        target.join("relu-fpt-generate")
    };
    let path = begin(&name).inspect_err(|_| remove_created(&created))?;
    if let Err(e) = std::fs::create_dir(&path) {
        abandon(&path);
        remove_created(&created);
        return Err(Error::io(&path, e));
    }
    Ok(StagedDir {
        path,
        target: target.to_path_buf(),
        whole,
        created,
    })
}

/// Whether two existing paths lie on the same device (true where that cannot be told).
fn same_device(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return ma.dev() == mb.dev();
        }
    }
    let _ = (a, b);
    true
}

fn remove_created(created: &[PathBuf]) {
    for d in created.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

impl StagedDir {
    /// Moves the finished files into the target. A new or empty target is the staging
    /// directory renamed in one step. Into a target that holds other files, the files named
    /// `names` move one by one, after the target's old files of those names are removed, so
    /// that even a kill between two steps leaves some missing rather than a mix of two runs;
    /// an interrupt (SIGINT, SIGTERM) waits until all have moved.
    pub fn commit(self, names: &[&str]) -> Result<()> {
        let _commit = COMMIT.lock().unwrap_or_else(|e| e.into_inner());
        if self.whole {
            // rename(2) replaces an empty directory; a non-empty one appeared meanwhile fails.
            let renamed = std::fs::rename(&self.path, &self.target);
            if let Err(e) = renamed {
                let _ = remove_path(&self.path);
                unregister(&self.path);
                remove_created(&self.created);
                return Err(Error::io(&self.target, e));
            }
            unregister(&self.path);
            return Ok(());
        }
        let moved = (|| -> Result<()> {
            for n in names {
                let old = self.target.join(n);
                if std::fs::symlink_metadata(&old).is_ok_and(|m| !m.is_dir()) {
                    std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
                }
            }
            for n in names {
                let to = self.target.join(n);
                std::fs::rename(self.path.join(n), &to).map_err(|e| Error::io(&to, e))?;
            }
            Ok(())
        })();
        let _ = remove_path(&self.path);
        unregister(&self.path);
        moved
    }

    /// Removes the staging directory and any parent directories [`begin_dir`] created.
    pub fn abandon(self) {
        abandon(&self.path);
        remove_created(&self.created);
    }
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

        // What an interrupt does, to this test's file only: the registry is process-wide, and
        // removing every file in flight removed other tests' outputs as they wrote them.
        let tmp = begin(&dir.path().join("m.json")).unwrap();
        std::fs::write(&tmp, b"partial").unwrap();
        remove_in_flight_where(|p| p.starts_with(dir.path()));
        assert!(!tmp.exists());
        assert!(IN_FLIGHT.lock().unwrap().iter().all(|p| p != &tmp));
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

    #[test]
    fn same_file_sees_links_and_spellings_of_one_path() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.npy");
        std::fs::write(&a, b"x").unwrap();
        std::fs::hard_link(&a, dir.path().join("h.npy")).unwrap();
        std::os::unix::fs::symlink(&a, dir.path().join("s.npy")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(same_file(&a, &dir.path().join("h.npy")));
        assert!(same_file(&a, &dir.path().join("s.npy")));
        assert!(same_file(&a, &dir.path().join("sub/../a.npy")));
        // Not existing yet: the same canonical target.
        let new = dir.path().join("new.json");
        assert!(same_file(&new, &dir.path().join("sub/../new.json")));
        assert!(!same_file(&new, &a));
        let e = check_not_input(
            &[("--out", &dir.path().join("h.npy"))],
            &[("--x", &a, vec![a.clone()])],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--out") && e.contains("--x") && e.contains("same file"),
            "{e}"
        );
    }

    #[test]
    fn a_staged_directory_is_committed_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        // New target, parents missing: abandon removes what begin_dir created.
        let target = dir.path().join("p/q/data");
        let staged = begin_dir(&target).unwrap();
        std::fs::write(staged.path.join("x.npy"), b"x").unwrap();
        staged.abandon();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Committed: one rename makes the directory.
        let staged = begin_dir(&target).unwrap();
        std::fs::write(staged.path.join("x.npy"), b"new").unwrap();
        staged.commit(&["x.npy"]).unwrap();
        assert_eq!(std::fs::read(target.join("x.npy")).unwrap(), b"new");
        // Into a target with other files: those stay, the named ones are replaced.
        std::fs::write(target.join("mine.txt"), b"mine").unwrap();
        let staged = begin_dir(&target).unwrap();
        assert!(staged.path.starts_with(&target));
        std::fs::write(staged.path.join("x.npy"), b"newer").unwrap();
        staged.commit(&["x.npy"]).unwrap();
        assert_eq!(std::fs::read(target.join("x.npy")).unwrap(), b"newer");
        assert_eq!(std::fs::read(target.join("mine.txt")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 2);
    }
}
