//! Samples: sources that hand out fixed-size chunks of (x, y) by row range, never the whole data
//! set at once. Row-major f32: x is `rows x dim`, y is `rows`.

pub mod gaussian;
pub mod npy;
pub mod philox;
pub mod repeats;
pub mod shards;
pub mod synthetic;
pub mod whiten;

pub use gaussian::GaussianSource;
pub use npy::{save_npy, write_npy_f32, NpyDtype, NpyHeader, NpySource, NpyWriter};
pub use shards::{open_inputs, open_samples, ConcatSource};
pub use synthetic::{group_of, GroupColumn, Synthetic};

use crate::error::{Error, Result};
use std::path::PathBuf;

/// A re-readable stream of samples. Passes over the data ask for row ranges, so a source is
/// read as many times as the algorithm needs (one pass per round) with bounded memory.
pub trait SampleSource: Send + Sync {
    /// Input dimension d.
    fn dim(&self) -> usize;
    /// Total number of rows N.
    fn len(&self) -> u64;
    /// True when the source has no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads rows `start .. start + rows` (clamped to `len`) into `x` (rows x dim, row-major)
    /// and `y` (rows). Both vectors are cleared first. Returns the number of rows read.
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize>;
    /// One line for humans: where the samples come from.
    fn describe(&self) -> String;
    /// Rows `start .. start + rows` (clamped to `len`) as slices of x and y when the source
    /// already holds them in memory, so that a pass can read them without copying; None (the
    /// default) when they must be read.
    fn in_memory(&self, start: u64, rows: usize) -> Option<(&[f32], &[f32])> {
        let _ = (start, rows);
        None
    }
    /// A key naming exactly these rows while the source lives: two sources with equal keys
    /// return the same x and y for every read (a device backend then reuses a copy it already
    /// holds). `None`, the default, promises nothing and such a source is always read again.
    fn identity(&self) -> Option<String> {
        None
    }
    /// How a device can generate these rows itself instead of reading them ([`Synthetic`]);
    /// `None`, the default, when it cannot.
    fn synthetic(&self) -> Option<Synthetic> {
        None
    }
}

/// Errors about sample files. Each message is one line naming the file, the field at fault and
/// how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// x and y disagree on N.
    #[error("{}: shape[0] is {x_rows} rows but {} has {y_rows}: x and y must have one row per sample (save matching arrays, e.g. x[:n] and y[:n])", x_path.display(), y_path.display())]
    RowCountMismatch {
        x_path: PathBuf,
        x_rows: u64,
        y_path: PathBuf,
        y_rows: u64,
    },
    /// A NaN or infinite value (found while reading).
    #[error("{}: row {row}, column {column} is {value}: samples must be finite; drop such rows in numpy with `keep = np.isfinite(x).all(axis=1) & np.isfinite(y); x, y = x[keep], y[keep]`", path.display())]
    NonFinite {
        path: PathBuf,
        row: u64,
        column: usize,
        value: f32,
    },
    /// A finite float64 beyond float32's range (which it would become an infinity in).
    #[error("{}: row {row}, column {column} is {value:e}, a finite float64 beyond float32's range (largest magnitude 3.4e38), in which relu-fpt computes: rescale the data (e.g. `x = x / np.abs(x).max()`) or drop such rows", path.display())]
    BeyondFloat32 {
        path: PathBuf,
        row: u64,
        column: usize,
        value: f64,
    },
    /// A dtype other than little-endian float32/float64.
    #[error("{}: header field 'descr' is {descr}, but only float32 ('<f4') and float64 ('<f8') are read: save `x.astype(np.float32)`", path.display())]
    UnsupportedDtype { path: PathBuf, descr: String },
    /// A big-endian float dtype.
    #[error("{}: header field 'descr' is {descr} (big-endian), but only little-endian floats are read: save `x.astype('<f4')`", path.display())]
    BigEndian { path: PathBuf, descr: String },
    /// Column-major data.
    #[error("{}: header field 'fortran_order' is True, but rows must be contiguous (C order): save `np.ascontiguousarray(x)`", path.display())]
    FortranOrder { path: PathBuf },
    /// The file is shorter than its own header, or the header length runs past the end.
    #[error("{}: truncated npy header ({detail}): the file was cut short; write it again with np.save", path.display())]
    TruncatedHeader { path: PathBuf, detail: String },
    /// A header dict that cannot be parsed or lacks a key.
    #[error("{}: corrupt npy header, field '{field}': {detail}; write the file again with np.save", path.display())]
    CorruptHeader {
        path: PathBuf,
        field: String,
        detail: String,
    },
    /// The file does not start with the npy magic string.
    #[error("{}: not an npy file (the magic string \\x93NUMPY is missing): save arrays with np.save(path, array)", path.display())]
    BadMagic { path: PathBuf },
    /// An npy format version other than 1.0, 2.0, 3.0.
    #[error("{}: npy format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are): save with np.save from numpy >= 1.9", path.display())]
    UnsupportedVersion { path: PathBuf, major: u8, minor: u8 },
    /// Fewer data bytes than the header's shape and dtype need.
    #[error("{}: header field 'shape' {} needs {expected_bytes} bytes but the file has {actual_bytes}: the file was cut short; write it again with np.save", path.display(), python_tuple(shape))]
    DataTooShort {
        path: PathBuf,
        shape: Vec<u64>,
        expected_bytes: u64,
        actual_bytes: u64,
    },
    /// A zero-byte file.
    #[error("{}: the file is empty (0 bytes): write the array with np.save(path, array)", path.display())]
    EmptyFile { path: PathBuf },
    /// shape[0] = 0.
    #[error("{}: header field 'shape' has N = 0 rows: there must be at least one sample", path.display())]
    NoRows { path: PathBuf },
    /// x with d = 0 columns.
    #[error("{}: header field 'shape' has d = 0 columns: x needs at least one feature per row", path.display())]
    ZeroDim { path: PathBuf },
    /// x not 2-D or y not (N,) / (N, 1).
    #[error("{}: header field 'shape' is {}: {expected}", path.display(), python_tuple(shape))]
    WrongDimensions {
        path: PathBuf,
        shape: Vec<u64>,
        expected: &'static str,
    },
    /// Data handed to a writer does not match the shape asked for.
    #[error("{}: {detail}: pass whole rows matching the shape", path.display())]
    ShapeMismatch { path: PathBuf, detail: String },
    /// A sub-range that runs past the end of its source.
    #[error("sample range {start}..{end} runs past the {len} rows of {source_desc}: pick start + len <= {len}")]
    RangeOutOfBounds {
        start: u64,
        end: u64,
        len: u64,
        source_desc: String,
    },
}

/// Samples held in memory (tests, small experiments): a [`SliceSource`] over rows it owns,
/// read by the same code.
#[derive(Clone, Debug, PartialEq)]
pub struct MemorySource {
    pub dim: usize,
    /// rows x dim, row-major.
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

/// Touches each 4 KiB page of `v`'s spare capacity from several threads. Every first touch of
/// fresh memory is a page fault, and on a virtual machine each one waits on the host: drawing
/// 4.1e6 rows at d = 512 (8.4 GB) into memory took 46 s, most of it in faults taken one by one
/// as the rows were copied in; touched first from 32 threads, 26-30 s (the waits overlap).
fn prefault(v: &mut Vec<f32>) {
    const PAGE: usize = 4096 / std::mem::size_of::<f32>();
    const THREADS: usize = 32;
    let spare = v.spare_capacity_mut();
    if spare.len() < 1 << 24 {
        return;
    }
    let part = spare.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        for share in spare.chunks_mut(part) {
            scope.spawn(move || {
                for page in share.chunks_mut(PAGE) {
                    page[0].write(0.0);
                }
            });
        }
    });
}

impl MemorySource {
    /// Every row of `source` read into memory; the allocation is checked first against the
    /// available memory (`fix` says what the user can change when it does not fit).
    pub fn read_all(source: &dyn SampleSource, fix: &str) -> Result<MemorySource> {
        let (n, d) = (source.len() as usize, source.dim());
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let what = format!("{}: the samples in memory", source.describe());
        crate::safety::reserve(&mut x, n * d, &what, fix)?;
        crate::safety::reserve(&mut y, n, &what, fix)?;
        prefault(&mut x);
        let (mut xb, mut yb) = (Vec::new(), Vec::new());
        let mut start = 0usize;
        while start < n {
            let got = source.read(start as u64, 1 << 16, &mut xb, &mut yb)?;
            if got == 0 {
                return Err(Error::invalid(format!(
                    "{} returned no rows at row {start} of {n}",
                    source.describe()
                )));
            }
            x.extend_from_slice(&xb);
            y.extend_from_slice(&yb);
            start += got;
        }
        Ok(MemorySource { dim: d, x, y })
    }

    /// The rows as a borrowed source.
    fn view(&self) -> SliceSource<'_> {
        SliceSource {
            dim: self.dim,
            x: &self.x,
            y: &self.y,
        }
    }
}

impl SampleSource for MemorySource {
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> u64 {
        self.y.len() as u64
    }
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        self.view().read(start, rows, x, y)
    }
    fn describe(&self) -> String {
        self.view().describe()
    }
    fn in_memory(&self, start: u64, rows: usize) -> Option<(&[f32], &[f32])> {
        Some(self.view().rows(start, rows))
    }
}

/// Samples borrowed from memory the caller owns (numpy arrays handed over by the Python
/// bindings): the same as [`MemorySource`] without copying the rows.
#[derive(Clone, Copy, Debug)]
pub struct SliceSource<'a> {
    dim: usize,
    x: &'a [f32],
    y: &'a [f32],
}

impl<'a> SliceSource<'a> {
    /// `x` holds `y.len()` rows of `dim` values, row-major; fails when the sizes disagree.
    pub fn new(dim: usize, x: &'a [f32], y: &'a [f32]) -> Result<SliceSource<'a>> {
        if dim == 0 || x.len() != y.len() * dim {
            return Err(Error::invalid(format!(
                "samples in memory: x has {} values but y has {} rows of dimension {dim}; pass one row of x (dim >= 1 values) per label",
                x.len(),
                y.len()
            )));
        }
        Ok(SliceSource { dim, x, y })
    }

    /// Rows `start .. start + rows` (cut at the end), borrowed for as long as the data is.
    fn rows(self, start: u64, rows: usize) -> (&'a [f32], &'a [f32]) {
        let start = start.min(self.y.len() as u64) as usize;
        let end = start.saturating_add(rows).min(self.y.len());
        (
            &self.x[start * self.dim..end * self.dim],
            &self.y[start..end],
        )
    }
}

impl SampleSource for SliceSource<'_> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> u64 {
        self.y.len() as u64
    }
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let (xs, ys) = self.rows(start, rows);
        x.clear();
        y.clear();
        x.extend_from_slice(xs);
        y.extend_from_slice(ys);
        Ok(ys.len())
    }
    fn describe(&self) -> String {
        format!("{} samples in memory, d = {}", self.y.len(), self.dim)
    }
    fn in_memory(&self, start: u64, rows: usize) -> Option<(&[f32], &[f32])> {
        Some(self.rows(start, rows))
    }
    // No `identity`: the caller may free or rewrite the memory once the borrow ends, and a new
    // array can land at the same address, so no key could promise equal contents across runs.
}

/// A shape as Python writes it: `(5,)`, `(5, 3)`.
fn python_tuple(shape: &[u64]) -> String {
    match shape {
        [n] => format!("({n},)"),
        dims => {
            let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// A contiguous block of rows `start .. start + len` of another source, itself a source (train /
/// validation splits). Row 0 of the range is row `start` of the parent.
#[derive(Clone, Copy)]
pub struct SampleRange<'a> {
    source: &'a dyn SampleSource,
    start: u64,
    len: u64,
}

impl<'a> SampleRange<'a> {
    /// Rows `start .. start + len` of `source`; fails if they run past its end.
    pub fn new(source: &'a dyn SampleSource, start: u64, len: u64) -> Result<SampleRange<'a>> {
        match start.checked_add(len) {
            Some(end) if end <= source.len() => Ok(SampleRange { source, start, len }),
            _ => Err(DataError::RangeOutOfBounds {
                start,
                end: start.saturating_add(len),
                len: source.len(),
                source_desc: source.describe(),
            }
            .into()),
        }
    }

    /// First row of the range in the parent source.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl std::fmt::Debug for SampleRange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SampleSource for SampleRange<'_> {
    fn dim(&self) -> usize {
        self.source.dim()
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let start = start.min(self.len);
        let rows = (rows as u64).min(self.len - start) as usize;
        self.source.read(self.start + start, rows, x, y)
    }
    fn in_memory(&self, start: u64, rows: usize) -> Option<(&[f32], &[f32])> {
        let start = start.min(self.len);
        let rows = (rows as u64).min(self.len - start) as usize;
        self.source.in_memory(self.start + start, rows)
    }
    fn describe(&self) -> String {
        format!(
            "rows {}..{} of {}",
            self.start,
            self.start + self.len,
            self.source.describe()
        )
    }
    fn identity(&self) -> Option<String> {
        let parent = self.source.identity()?;
        Some(format!("rows {}+{} of [{parent}]", self.start, self.len))
    }
    fn synthetic(&self) -> Option<Synthetic> {
        self.source.synthetic()?.range(self.start, self.len)
    }
}

/// Reads the whole source in order, `chunk_rows` rows at a time, calling `f(start_row, x, y)`
/// on each chunk (the last may be shorter). Stops at the first error.
pub fn for_each_chunk(
    source: &dyn SampleSource,
    chunk_rows: usize,
    mut f: impl FnMut(u64, &[f32], &[f32]) -> Result<()>,
) -> Result<()> {
    if chunk_rows == 0 {
        return Err(Error::invalid(
            "for_each_chunk: chunk_rows must be at least 1",
        ));
    }
    let total = source.len();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut start = 0u64;
    while start < total {
        // Rows held in memory are passed where they are, not copied.
        if let Some((xs, ys)) = source.in_memory(start, chunk_rows) {
            if !ys.is_empty() {
                f(start, xs, ys)?;
                start += ys.len() as u64;
                continue;
            }
        }
        let n = source.read(start, chunk_rows, &mut x, &mut y)?;
        if n == 0 {
            return Err(Error::invalid(format!(
                "{} returned no rows at row {start} of {total}",
                source.describe()
            )));
        }
        f(start, &x, &y)?;
        start += n as u64;
    }
    Ok(())
}
