//! Several sources read as one: shard lists (`--x 'shards/x_*.npy' --y 'shards/y_*.npy'`),
//! rows of the first shard first. Useful with one process (a data set saved in pieces) and under
//! MPI, where each rank reads only the rows of its own range, whichever shards they lie in.

use super::{NpySource, SampleSource};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Sources of the same dimension, concatenated by rows.
pub struct ConcatSource {
    parts: Vec<Box<dyn SampleSource>>,
    /// First row of each part, then the total: `parts.len() + 1` values.
    starts: Vec<u64>,
}

impl ConcatSource {
    /// Concatenates `parts` in order. Fails on an empty list, an empty part or a part whose
    /// dimension differs from the first's (naming the part).
    pub fn new(parts: Vec<Box<dyn SampleSource>>) -> Result<ConcatSource> {
        let Some(first) = parts.first() else {
            return Err(Error::invalid("a shard list needs at least one shard"));
        };
        let d = first.dim();
        let mut starts = vec![0u64];
        for p in &parts {
            if p.dim() != d {
                return Err(Error::invalid(format!(
                    "{}: d = {} columns but the first shard, {}, has d = {d}: every shard must have the same columns",
                    p.describe(),
                    p.dim(),
                    first.describe()
                )));
            }
            if p.is_empty() {
                return Err(Error::invalid(format!(
                    "{}: the shard has no rows: drop it from the list",
                    p.describe()
                )));
            }
            starts.push(starts.last().copied().unwrap_or(0) + p.len());
        }
        Ok(ConcatSource { parts, starts })
    }

    /// Number of parts.
    pub fn shards(&self) -> usize {
        self.parts.len()
    }

    /// The part holding row `row` (< len).
    fn part_of(&self, row: u64) -> usize {
        self.starts.partition_point(|&s| s <= row) - 1
    }
}

impl SampleSource for ConcatSource {
    fn dim(&self) -> usize {
        self.parts[0].dim()
    }

    fn len(&self) -> u64 {
        self.starts[self.parts.len()]
    }

    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let total = self.len();
        let start = start.min(total);
        let end = start + (rows as u64).min(total - start);
        x.clear();
        y.clear();
        if start == end {
            return Ok(0);
        }
        let first = self.part_of(start);
        if end <= self.starts[first + 1] {
            // Within one shard (the common case): read straight into the caller's buffers.
            let want = (end - start) as usize;
            let got = self.parts[first].read(start - self.starts[first], want, x, y)?;
            return self.check_full(first, got, want);
        }
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        let mut at = start;
        while at < end {
            let i = self.part_of(at);
            let want = (end.min(self.starts[i + 1]) - at) as usize;
            let got = self.parts[i].read(at - self.starts[i], want, &mut xs, &mut ys)?;
            self.check_full(i, got, want)?;
            x.extend_from_slice(&xs);
            y.extend_from_slice(&ys);
            at += got as u64;
        }
        Ok((end - start) as usize)
    }

    fn identity(&self) -> Option<String> {
        let parts: Option<Vec<String>> = self.parts.iter().map(|p| p.identity()).collect();
        Some(format!("concat[{}]", parts?.join(" | ")))
    }

    fn describe(&self) -> String {
        let n = self.parts.len();
        if n == 1 {
            return self.parts[0].describe();
        }
        format!(
            "{} rows in {n} shards ({} .. {})",
            self.len(),
            self.parts[0].describe(),
            self.parts[n - 1].describe()
        )
    }
}

impl ConcatSource {
    fn check_full(&self, part: usize, got: usize, want: usize) -> Result<usize> {
        if got != want {
            return Err(Error::invalid(format!(
                "{}: returned {got} of {want} rows asked for",
                self.parts[part].describe()
            )));
        }
        Ok(got)
    }
}

/// Whether a path names a file pattern: it does not exist as written and has a glob character.
fn is_pattern(path: &Path) -> bool {
    let text = path.to_string_lossy();
    !path.exists() && text.contains(['*', '?', '['])
}

/// The files a `--x`/`--y` value names: the file itself, or the files its pattern matches,
/// sorted by name.
pub fn expand_pattern(path: &Path, flag: &str) -> Result<Vec<PathBuf>> {
    if !is_pattern(path) {
        return Ok(vec![path.to_path_buf()]);
    }
    let text = path.to_string_lossy();
    let bad = |detail: String| {
        Error::invalid(format!(
            "{flag} '{text}': {detail}: give a file, or a pattern such as 'shards/x_*.npy' in quotes so that the shell passes it on"
        ))
    };
    let matches = glob::glob(&text).map_err(|e| bad(format!("not a valid pattern ({e})")))?;
    let mut files = Vec::new();
    for m in matches {
        files.push(m.map_err(|e| bad(format!("cannot read {}", e.path().display())))?);
    }
    if files.is_empty() {
        return Err(bad("matches no file".into()));
    }
    files.sort();
    Ok(files)
}

/// Opens samples from an x and a y file, or from two shard lists: patterns whose matches,
/// sorted by name, pair up in order (x_000.npy with y_000.npy, ...). Every pair is checked as
/// [`NpySource::open`] checks one, and all shards must have the same d.
pub fn open_samples(x: &Path, y: &Path) -> Result<Box<dyn SampleSource>> {
    let xs = expand_pattern(x, "--x")?;
    let ys = expand_pattern(y, "--y")?;
    if xs.len() != ys.len() {
        return Err(Error::invalid(format!(
            "--x '{}' names {} files but --y '{}' names {}: every x shard needs its y shard (sorted by name, paired in order)",
            x.display(),
            xs.len(),
            y.display(),
            ys.len()
        )));
    }
    if xs.len() == 1 {
        return Ok(Box::new(NpySource::open(&xs[0], &ys[0])?));
    }
    let mut parts: Vec<Box<dyn SampleSource>> = Vec::with_capacity(xs.len());
    for (xp, yp) in xs.iter().zip(&ys) {
        parts.push(Box::new(NpySource::open(xp, yp)?));
    }
    check_same_dim(&xs, &parts)?;
    Ok(Box::new(ConcatSource::new(parts)?))
}

/// Opens inputs alone (labels read as zeros) from an x file or a shard pattern.
pub fn open_inputs(x: &Path) -> Result<Box<dyn SampleSource>> {
    let xs = expand_pattern(x, "--x")?;
    if xs.len() == 1 {
        return Ok(Box::new(NpySource::open_inputs(&xs[0])?));
    }
    let mut parts: Vec<Box<dyn SampleSource>> = Vec::with_capacity(xs.len());
    for xp in &xs {
        parts.push(Box::new(NpySource::open_inputs(xp)?));
    }
    check_same_dim(&xs, &parts)?;
    Ok(Box::new(ConcatSource::new(parts)?))
}

/// The shape error for shards of different d, naming the x file and its header field.
fn check_same_dim(paths: &[PathBuf], parts: &[Box<dyn SampleSource>]) -> Result<()> {
    let d = parts[0].dim();
    for (p, part) in paths.iter().zip(parts) {
        if part.dim() != d {
            return Err(Error::invalid(format!(
                "{}: header field 'shape' has d = {} columns but {} has d = {d}: every shard must have the same columns",
                p.display(),
                part.dim(),
                paths[0].display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{for_each_chunk, MemorySource};

    fn memory(rows: usize, d: usize, offset: f32) -> MemorySource {
        MemorySource {
            dim: d,
            x: (0..rows * d).map(|i| offset + i as f32).collect(),
            y: (0..rows).map(|i| offset + i as f32).collect(),
        }
    }

    #[test]
    fn reads_across_shard_boundaries_as_one_source() {
        let parts = [memory(5, 3, 0.0), memory(1, 3, 100.0), memory(7, 3, 200.0)];
        let mut whole = MemorySource {
            dim: 3,
            x: Vec::new(),
            y: Vec::new(),
        };
        for p in &parts {
            whole.x.extend_from_slice(&p.x);
            whole.y.extend_from_slice(&p.y);
        }
        let concat = ConcatSource::new(
            parts
                .iter()
                .map(|p| Box::new(p.clone()) as Box<dyn SampleSource>)
                .collect(),
        )
        .unwrap();
        assert_eq!((concat.len(), concat.dim(), concat.shards()), (13, 3, 3));
        for start in 0..14u64 {
            for rows in [1usize, 2, 4, 6, 13, 20] {
                let (mut x, mut y, mut xw, mut yw) = (vec![], vec![], vec![], vec![]);
                let n = concat.read(start, rows, &mut x, &mut y).unwrap();
                let nw = whole.read(start, rows, &mut xw, &mut yw).unwrap();
                assert_eq!((n, &x, &y), (nw, &xw, &yw), "start {start} rows {rows}");
            }
        }
        let mut seen = 0;
        for_each_chunk(&concat, 4, |_, _, y| {
            seen += y.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 13);
    }

    #[test]
    fn refuses_mixed_dimensions_and_empty_lists() {
        let mixed: Vec<Box<dyn SampleSource>> =
            vec![Box::new(memory(2, 3, 0.0)), Box::new(memory(2, 4, 0.0))];
        let e = ConcatSource::new(mixed).err().unwrap().to_string();
        assert!(e.contains("d = 4") && e.contains("same columns"), "{e}");
        assert!(ConcatSource::new(Vec::new()).is_err());
    }

    #[test]
    fn identity_names_the_shards_in_order_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(format!("{name}.npy"));
        for (name, rows) in [("a", 3), ("b", 4)] {
            let m = memory(rows, 2, rows as f32);
            crate::data::write_npy_f32(&path(&format!("x{name}")), &[rows, 2], &m.x).unwrap();
            crate::data::write_npy_f32(&path(&format!("y{name}")), &[rows], &m.y).unwrap();
        }
        let open = |name: &str| -> Box<dyn SampleSource> {
            let (x, y) = (path(&format!("x{name}")), path(&format!("y{name}")));
            Box::new(NpySource::open(&x, &y).unwrap())
        };
        let key = |names: &[&str]| {
            ConcatSource::new(names.iter().map(|n| open(n)).collect())
                .unwrap()
                .identity()
                .unwrap()
        };
        assert_ne!(
            key(&["a", "b"]),
            key(&["b", "a"]),
            "the order is part of the rows"
        );
        assert_eq!(
            key(&["a", "b"]),
            key(&["a", "b"]),
            "the same files, the same key"
        );
        // A part that promises nothing: the list promises nothing either.
        let mixed = ConcatSource::new(vec![open("a"), Box::new(memory(2, 2, 0.0))]).unwrap();
        assert_eq!(mixed.identity(), None);
    }
}
