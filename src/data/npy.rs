//! NumPy `.npy` files: a streaming reader ([`NpySource`]) and a streaming writer ([`NpyWriter`]).
//!
//! The header parser is our own (a small parser for the dict literal numpy writes) rather than an
//! npy crate: the reader needs positioned reads from several threads at once (`read_at`, no shared
//! file cursor) and errors that name the file, the header field and the fix.
//!
//! Format (numpy `lib/format.py`): magic `\x93NUMPY`, major and minor version bytes, header length
//! (u16 LE in version 1.0, u32 LE in 2.0 and 3.0), then an ASCII (3.0: UTF-8) Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (N, d), }` padded with spaces and ending in
//! `\n` so that the data starts at a multiple of 64 bytes.

use super::{DataError, SampleSource};
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element type of an npy array we can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f4`, little-endian float32.
    F32,
    /// `<f8`, little-endian float64 (converted to the nearest f32 on read).
    F64,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
        }
    }

    /// The numpy `descr` string.
    pub fn descr(self) -> &'static str {
        match self {
            NpyDtype::F32 => "<f4",
            NpyDtype::F64 => "<f8",
        }
    }
}

/// The parsed header of an npy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version (major, minor): (1, 0), (2, 0) or (3, 0).
    pub version: (u8, u8),
    pub dtype: NpyDtype,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
    /// Byte offset of the first element.
    pub data_offset: u64,
}

/// A Python literal as found in an npy header.
#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Int(u64),
    None,
    Tuple(Vec<Literal>),
    List(Vec<Literal>),
    Dict(Vec<(String, Literal)>),
}

/// Recursive-descent parser over the header text; errors are short phrases the caller wraps.
struct LiteralParser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> LiteralParser<'a> {
    fn skip_space(&mut self) {
        while self.pos < self.text.len() && self.text[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        match self.peek() {
            Some(got) if got == c => {
                self.pos += 1;
                Ok(())
            }
            Some(got) => Err(format!(
                "expected '{}' at byte {} but found '{}'",
                c as char,
                self.pos,
                got.escape_ascii()
            )),
            None => Err(format!("expected '{}' but the header text ends", c as char)),
        }
    }

    fn value(&mut self) -> std::result::Result<Literal, String> {
        match self.peek() {
            Some(b'{') => self.dict(),
            Some(b'(') => self.sequence(b'(', b')').map(Literal::Tuple),
            Some(b'[') => self.sequence(b'[', b']').map(Literal::List),
            Some(b'\'') | Some(b'"') => self.string().map(Literal::Str),
            Some(c) if c.is_ascii_digit() => self.int(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.pos < self.text.len() && self.text[self.pos].is_ascii_alphanumeric() {
                    self.pos += 1;
                }
                match &self.text[start..self.pos] {
                    b"True" => Ok(Literal::Bool(true)),
                    b"False" => Ok(Literal::Bool(false)),
                    b"None" => Ok(Literal::None),
                    other => Err(format!("unknown word '{}'", other.escape_ascii())),
                }
            }
            Some(c) => Err(format!(
                "unexpected '{}' at byte {}",
                c.escape_ascii(),
                self.pos
            )),
            None => Err("the header text ends before a value".into()),
        }
    }

    fn int(&mut self) -> std::result::Result<Literal, String> {
        let start = self.pos;
        while self.pos < self.text.len() && self.text[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        // numpy writes plain decimal integers; a trailing 'L' comes from Python 2 headers.
        let digits = std::str::from_utf8(&self.text[start..self.pos]).unwrap_or_default();
        if self.text.get(self.pos) == Some(&b'L') {
            self.pos += 1;
        }
        digits
            .parse::<u64>()
            .map(Literal::Int)
            .map_err(|_| format!("integer '{digits}' does not fit in 64 bits"))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let quote = self.text[self.pos];
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.text.len() && self.text[self.pos] != quote {
            self.pos += 1;
        }
        if self.pos >= self.text.len() {
            return Err("a string is not closed".into());
        }
        let s = String::from_utf8_lossy(&self.text[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(s)
    }

    fn sequence(&mut self, open: u8, close: u8) -> std::result::Result<Vec<Literal>, String> {
        self.expect(open)?;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(items);
            }
            items.push(self.value()?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(format!("expected ',' or '{}' in a sequence", close as char)),
            }
        }
    }

    fn dict(&mut self) -> std::result::Result<Literal, String> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        loop {
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Literal::Dict(entries));
                }
                Some(b'\'') | Some(b'"') => {}
                _ => return Err("expected a quoted key or '}' in the dict".into()),
            }
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.value()?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err("expected ',' or '}' after a dict entry".into()),
            }
        }
    }
}

/// Parses the header dict text into its three fields. `path` only labels errors.
fn parse_header_dict(
    path: &Path,
    text: &[u8],
) -> std::result::Result<(NpyDtype, bool, Vec<u64>), DataError> {
    let corrupt = |field: &str, detail: String| DataError::CorruptHeader {
        path: path.to_path_buf(),
        field: field.to_string(),
        detail,
    };
    let mut parser = LiteralParser { text, pos: 0 };
    let dict = match parser.value() {
        Ok(Literal::Dict(entries)) => entries,
        Ok(_) => return Err(corrupt("header", "the header is not a dict literal".into())),
        Err(e) => return Err(corrupt("header", e)),
    };
    let field = |name: &str| -> std::result::Result<&Literal, DataError> {
        dict.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| corrupt(name, "the key is missing".into()))
    };

    let descr = match field("descr")? {
        Literal::Str(s) => s.clone(),
        Literal::List(_) => {
            return Err(DataError::UnsupportedDtype {
                path: path.to_path_buf(),
                descr: "a structured (record) dtype".into(),
            })
        }
        other => {
            return Err(corrupt(
                "descr",
                format!("expected a string, found {other:?}"),
            ))
        }
    };
    let dtype = match descr.as_str() {
        "<f4" => NpyDtype::F32,
        "<f8" => NpyDtype::F64,
        ">f4" | ">f8" => {
            return Err(DataError::BigEndian {
                path: path.to_path_buf(),
                descr,
            })
        }
        _ => {
            return Err(DataError::UnsupportedDtype {
                path: path.to_path_buf(),
                descr,
            })
        }
    };
    let fortran_order = match field("fortran_order")? {
        Literal::Bool(b) => *b,
        other => {
            return Err(corrupt(
                "fortran_order",
                format!("expected True or False, found {other:?}"),
            ))
        }
    };
    let shape = match field("shape")? {
        Literal::Tuple(items) => items
            .iter()
            .map(|v| match v {
                Literal::Int(n) => Ok(*n),
                other => Err(corrupt(
                    "shape",
                    format!("expected non-negative integers, found {other:?}"),
                )),
            })
            .collect::<std::result::Result<Vec<u64>, DataError>>()?,
        other => {
            return Err(corrupt(
                "shape",
                format!("expected a tuple, found {other:?}"),
            ))
        }
    };
    Ok((dtype, fortran_order, shape))
}

/// Reads the header at the start of `file`. Checks magic, version and header fields, not the
/// shape's meaning (the caller knows whether it wants x or y).
pub fn read_header(path: &Path, file: &File) -> Result<NpyHeader> {
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len == 0 {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        }
        .into());
    }
    let truncated = |detail: String| -> Error {
        DataError::TruncatedHeader {
            path: path.to_path_buf(),
            detail,
        }
        .into()
    };
    let mut prefix = [0u8; 12];
    let got = read_up_to(file, &mut prefix, 0).map_err(|e| Error::io(path, e))?;
    if got < MAGIC.len() || &prefix[..6] != MAGIC {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
        }
        .into());
    }
    if got < 8 {
        return Err(truncated(format!(
            "the file is {file_len} bytes, too short for the version bytes"
        )));
    }
    let version = (prefix[6], prefix[7]);
    let (len_bytes, header_len) = match version {
        (1, 0) => {
            if got < 10 {
                return Err(truncated(format!(
                    "the file is {file_len} bytes, too short for the header length"
                )));
            }
            (2usize, u16::from_le_bytes([prefix[8], prefix[9]]) as u64)
        }
        (2, 0) | (3, 0) => {
            if got < 12 {
                return Err(truncated(format!(
                    "the file is {file_len} bytes, too short for the header length"
                )));
            }
            (
                4usize,
                u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as u64,
            )
        }
        (major, minor) => {
            return Err(DataError::UnsupportedVersion {
                path: path.to_path_buf(),
                major,
                minor,
            }
            .into())
        }
    };
    let text_start = 8 + len_bytes as u64;
    let data_offset = text_start + header_len;
    if data_offset > file_len {
        return Err(truncated(format!(
            "the header claims {header_len} bytes but the file is only {file_len} bytes"
        )));
    }
    let mut text = vec![0u8; header_len as usize];
    read_exact_at(file, &mut text, text_start).map_err(|e| Error::io(path, e))?;
    if version.0 < 3 && !text.is_ascii() {
        return Err(DataError::CorruptHeader {
            path: path.to_path_buf(),
            field: "header".into(),
            detail: "non-ASCII bytes in a version 1.0/2.0 header".into(),
        }
        .into());
    }
    let (dtype, fortran_order, shape) = parse_header_dict(path, &text)?;
    Ok(NpyHeader {
        version,
        dtype,
        fortran_order,
        shape,
        data_offset,
    })
}

/// Positioned read of exactly `buf.len()` bytes at `offset`: no shared cursor, so several
/// threads can read one file at once.
#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Other platforms: a cloned handle (own cursor) per call keeps reads independent.
#[cfg(not(any(unix, windows)))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::Read;
    let mut handle = file.try_clone()?;
    handle.seek(SeekFrom::Start(offset))?;
    handle.read_exact(buf)
}

/// Reads as many bytes as are there (up to `buf.len()`) at `offset`.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let len = file.metadata()?.len();
    let n = (len.saturating_sub(offset) as usize).min(buf.len());
    read_exact_at(file, &mut buf[..n], offset)?;
    Ok(n)
}

/// One opened npy array: rows x cols of f32 or f64.
#[derive(Debug)]
struct NpyArray {
    path: PathBuf,
    file: File,
    header: NpyHeader,
    rows: u64,
    cols: usize,
}

/// Which of the two files an array is, for the checks and messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    X,
    Y,
}

impl NpyArray {
    /// The open file as the system sees it (device, inode, size, modification time), so a
    /// file replaced or rewritten under the same path gets a different key.
    fn identity(&self) -> Option<String> {
        let meta = self.file.metadata().ok()?;
        let modified = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        #[cfg(unix)]
        let node = {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}", meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let node = String::new();
        Some(format!(
            "{} {node} {} bytes, modified {modified} ns",
            self.path.display(),
            meta.len()
        ))
    }

    fn open(path: &Path, role: Role) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let header = read_header(path, &file)?;
        let (rows, cols) = match (role, header.shape.as_slice()) {
            (Role::X, &[n, d]) => (n, d),
            (Role::Y, &[n]) | (Role::Y, &[n, 1]) => (n, 1),
            (role, shape) => {
                return Err(DataError::WrongDimensions {
                    path: path.to_path_buf(),
                    shape: shape.to_vec(),
                    expected: match role {
                        Role::X => "x must be 2-D (N, d); for one feature use x.reshape(-1, 1)",
                        Role::Y => "y must be (N,) or (N, 1); use y.reshape(-1)",
                    },
                }
                .into())
            }
        };
        if rows == 0 {
            return Err(DataError::NoRows {
                path: path.to_path_buf(),
            }
            .into());
        }
        if cols == 0 {
            return Err(DataError::ZeroDim {
                path: path.to_path_buf(),
            }
            .into());
        }
        // Fortran order only changes the layout when more than one axis is longer than 1.
        if header.fortran_order && rows > 1 && cols > 1 {
            return Err(DataError::FortranOrder {
                path: path.to_path_buf(),
            }
            .into());
        }
        let need = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(header.dtype.size() as u64))
            .and_then(|n| n.checked_add(header.data_offset));
        let actual = file.metadata().map_err(|e| Error::io(path, e))?.len();
        match need {
            Some(need) if need <= actual => {}
            _ => {
                return Err(DataError::DataTooShort {
                    path: path.to_path_buf(),
                    shape: header.shape.clone(),
                    expected_bytes: need.unwrap_or(u64::MAX),
                    actual_bytes: actual,
                }
                .into())
            }
        }
        let cols = usize::try_from(cols).map_err(|_| DataError::DataTooShort {
            path: path.to_path_buf(),
            shape: header.shape.clone(),
            expected_bytes: u64::MAX,
            actual_bytes: actual,
        })?;
        Ok(NpyArray {
            path: path.to_path_buf(),
            file,
            header,
            rows,
            cols,
        })
    }

    /// Reads `rows` rows from `start` (already clamped) into `out`, converting to f32 and
    /// rejecting non-finite values.
    fn read_rows(&self, start: u64, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        let count = rows * self.cols;
        // Every value is overwritten below, so a buffer of the right length is not zeroed again.
        if out.len() != count {
            out.clear();
            // A typed error, not an abort, when a header's d makes a chunk too large: checked
            // against the available memory first (an overcommitting kernel would grant the
            // reservation and kill the process as the zeros below are written).
            let what = || {
                format!(
                    "{}: {rows} rows of {} columns",
                    self.path.display(),
                    self.cols
                )
            };
            if count > 1 << 26 {
                crate::safety::check_memory(
                    count as u128 * 4,
                    &what(),
                    "a file this wide needs more memory than this machine has",
                )?;
            }
            crate::safety::reserve(
                out,
                count,
                &format!(
                    "{}: {rows} rows of {} columns",
                    self.path.display(),
                    self.cols
                ),
                "a file this wide needs more memory than this machine has",
            )?;
            out.resize(count, 0.0);
        }
        let size = self.header.dtype.size() as u64;
        let offset = self.header.data_offset + start * self.cols as u64 * size;
        let io = |e| Error::io(&self.path, e);
        // The first finite float64 that float32 cannot hold (it converts to an infinity).
        let mut beyond: Option<(usize, f64)> = None;
        match self.header.dtype {
            NpyDtype::F32 => {
                // Read straight into the output buffer, then fix the byte order in place.
                read_exact_at(
                    &self.file,
                    bytemuck::cast_slice_mut(out.as_mut_slice()),
                    offset,
                )
                .map_err(io)?;
                if cfg!(target_endian = "big") {
                    for v in out.iter_mut() {
                        *v = f32::from_bits(u32::from_le(v.to_bits()));
                    }
                }
            }
            NpyDtype::F64 => {
                // Bounded staging buffer: 64 Ki doubles at a time.
                const STAGE: usize = 1 << 16;
                let mut stage = vec![0u8; STAGE.min(count) * 8];
                let mut done = 0;
                while done < count {
                    let n = STAGE.min(count - done);
                    let bytes = &mut stage[..n * 8];
                    read_exact_at(&self.file, bytes, offset + done as u64 * 8).map_err(io)?;
                    for (j, (dst, src)) in out[done..done + n]
                        .iter_mut()
                        .zip(bytes.chunks_exact(8))
                        .enumerate()
                    {
                        let v = f64::from_le_bytes(src.try_into().expect("8-byte chunk"));
                        *dst = v as f32;
                        if beyond.is_none() && v.is_finite() && dst.is_infinite() {
                            beyond = Some((done + j, v));
                        }
                    }
                    done += n;
                }
            }
        }
        // Blocks scanned without early exit (so the scan vectorises), then the first bad value.
        let bad_block = out
            .chunks(1024)
            .position(|c| c.iter().fold(false, |bad, v| bad | !v.is_finite()));
        if let Some(i) = bad_block.and_then(|b| {
            let at = b * 1024;
            out[at..]
                .iter()
                .position(|v| !v.is_finite())
                .map(|j| at + j)
        }) {
            if let Some((at, value)) = beyond.filter(|b| b.0 == i) {
                return Err(DataError::BeyondFloat32 {
                    path: self.path.clone(),
                    row: start + (at / self.cols) as u64,
                    column: at % self.cols,
                    value,
                }
                .into());
            }
            return Err(DataError::NonFinite {
                path: self.path.clone(),
                row: start + (i / self.cols) as u64,
                column: i % self.cols,
                value: out[i],
            }
            .into());
        }
        Ok(())
    }
}

/// Samples from two npy files, x (N, d) and y (N,) or (N, 1), float32 or float64, read by row
/// range with positioned reads: only the requested rows are ever in memory, and `read` may be
/// called from several threads at once.
#[derive(Debug)]
pub struct NpySource {
    x: NpyArray,
    /// None for inputs alone (`predict`): labels then read as zeros.
    y: Option<NpyArray>,
}

impl NpySource {
    /// Opens and validates both files (headers, shapes, sizes). Non-finite values are found
    /// later, by [`SampleSource::read`], which names their row and column.
    pub fn open(x_path: &Path, y_path: &Path) -> Result<NpySource> {
        let x = NpyArray::open(x_path, Role::X)?;
        let y = NpyArray::open(y_path, Role::Y)?;
        if x.rows != y.rows {
            return Err(DataError::RowCountMismatch {
                x_path: x.path,
                x_rows: x.rows,
                y_path: y.path,
                y_rows: y.rows,
            }
            .into());
        }
        Ok(NpySource { x, y: Some(y) })
    }

    /// Opens an x file alone, for prediction; its labels read as zeros.
    pub fn open_inputs(x_path: &Path) -> Result<NpySource> {
        Ok(NpySource {
            x: NpyArray::open(x_path, Role::X)?,
            y: None,
        })
    }

    /// The parsed header of the x file.
    pub fn x_header(&self) -> &NpyHeader {
        &self.x.header
    }

    /// The parsed header of the y file (None when opened with [`NpySource::open_inputs`]).
    pub fn y_header(&self) -> Option<&NpyHeader> {
        self.y.as_ref().map(|y| &y.header)
    }
}

impl SampleSource for NpySource {
    fn dim(&self) -> usize {
        self.x.cols
    }

    fn len(&self) -> u64 {
        self.x.rows
    }

    fn read(&self, start: u64, rows: usize, x: &mut Vec<f32>, y: &mut Vec<f32>) -> Result<usize> {
        let start = start.min(self.x.rows);
        let rows = (rows as u64).min(self.x.rows - start) as usize;
        self.x.read_rows(start, rows, x)?;
        match &self.y {
            Some(labels) => labels.read_rows(start, rows, y)?,
            None => {
                y.clear();
                y.resize(rows, 0.0);
            }
        }
        Ok(rows)
    }

    fn identity(&self) -> Option<String> {
        let x = self.x.identity()?;
        match &self.y {
            Some(y) => Some(format!("npy x [{x}] y [{}]", y.identity()?)),
            None => Some(format!("npy x [{x}] no labels")),
        }
    }

    fn describe(&self) -> String {
        let inputs = format!(
            "{} ({} x {}, {})",
            self.x.path.display(),
            self.x.rows,
            self.x.cols,
            self.x.header.dtype.descr()
        );
        match &self.y {
            Some(y) => format!(
                "{inputs} and {} ({})",
                y.path.display(),
                y.header.dtype.descr()
            ),
            None => inputs,
        }
    }
}

/// The header bytes (magic through the final newline) for a little-endian f32 array of the given
/// shape, padded with spaces to `min_total` bytes or the next multiple of 64, whichever is larger.
fn header_bytes(shape: &[u64], min_total: usize) -> Vec<u8> {
    let shape_text = super::python_tuple(shape);
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // magic (6) + version (2) + u16 length (2) + dict + padding + '\n'
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.max(min_total).next_multiple_of(64);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Appends f32 values as little-endian bytes.
fn write_f32_le(out: &mut impl Write, data: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        out.write_all(bytemuck::cast_slice(data))
    } else {
        for v in data {
            out.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }
}

/// Streams rows of f32 into an npy file: data goes to a temporary file in the destination
/// directory (`.<name>.tmp-<pid>-<k>`), [`NpyWriter::finish`] writes the header with the final
/// row count and renames it into place. Dropping the writer without `finish` removes the
/// temporary file, so a failed run never leaves a half-written `.npy` behind.
#[derive(Debug)]
pub struct NpyWriter {
    path: PathBuf,
    temp_path: PathBuf,
    file: Option<BufWriter<File>>,
    /// None: shape (N,); Some(d): shape (N, d).
    cols: Option<usize>,
    rows: u64,
    header_len: usize,
}

impl NpyWriter {
    /// A writer for a 2-D array (N, `cols`).
    pub fn create_matrix(path: &Path, cols: usize) -> Result<NpyWriter> {
        if cols == 0 {
            return Err(Error::invalid(format!(
                "{}: cannot write an npy matrix with 0 columns",
                path.display()
            )));
        }
        Self::create(path, Some(cols), u64::MAX)
    }

    /// A writer for a 1-D array (N,).
    pub fn create_vector(path: &Path) -> Result<NpyWriter> {
        Self::create(path, None, u64::MAX)
    }

    /// `max_rows` sizes the reserved header: the row count written by `finish` must not have
    /// more digits (u64::MAX always fits; the exact N gives numpy's own header).
    fn create(path: &Path, cols: Option<usize>, max_rows: u64) -> Result<NpyWriter> {
        let temp_path = crate::output::begin(path)?;
        let file = File::create(&temp_path).map_err(|e| {
            crate::output::abandon(&temp_path);
            Error::io(&temp_path, e)
        })?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        // Reserve room for the widest row count so finish() patches the header in place.
        let widest: Vec<u64> = match cols {
            Some(d) => vec![max_rows, d as u64],
            None => vec![max_rows],
        };
        let placeholder = header_bytes(&widest, 0);
        file.write_all(&placeholder)
            .map_err(|e| Error::io(&temp_path, e))?;
        Ok(NpyWriter {
            path: path.to_path_buf(),
            temp_path,
            file: Some(file),
            cols,
            rows: 0,
            header_len: placeholder.len(),
        })
    }

    /// Appends whole rows: `data.len()` must be a multiple of the row width (1 for a vector).
    pub fn write_rows(&mut self, data: &[f32]) -> Result<()> {
        let width = self.cols.unwrap_or(1);
        if !data.len().is_multiple_of(width) {
            return Err(DataError::ShapeMismatch {
                path: self.path.clone(),
                detail: format!(
                    "{} values is not a whole number of rows of {width}",
                    data.len()
                ),
            }
            .into());
        }
        let file = self.file.as_mut().expect("file present until finish");
        write_f32_le(file, data).map_err(|e| Error::io(&self.temp_path, e))?;
        self.rows += (data.len() / width) as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the final header and renames the file into place; returns the number of rows.
    pub fn finish(mut self) -> Result<u64> {
        let shape: Vec<u64> = match self.cols {
            Some(d) => vec![self.rows, d as u64],
            None => vec![self.rows],
        };
        let header = header_bytes(&shape, self.header_len);
        if header.len() != self.header_len {
            return Err(DataError::ShapeMismatch {
                path: self.path.clone(),
                detail: format!("{} rows do not fit the reserved header", self.rows),
            }
            .into());
        }
        let mut file = self.file.take().expect("file present until finish");
        let io = |e| Error::io(&self.temp_path, e);
        // From here Drop no longer sees the file: a failure (a full disk at the flush) removes
        // the temporary file itself.
        let written = (|| -> Result<()> {
            file.flush().map_err(io)?;
            let mut file = file.into_inner().map_err(|e| io(e.into_error()))?;
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            file.write_all(&header).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(())
        })();
        if let Err(e) = written {
            crate::output::abandon(&self.temp_path);
            return Err(e);
        }
        crate::output::commit(&self.temp_path, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(self.rows)
    }
}

impl Drop for NpyWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Not finished: the partial file is worthless.
            crate::output::abandon(&self.temp_path);
        }
    }
}

/// Writes a whole f32 array of shape (N,) or (N, d) to `path` (through a temporary file). The
/// header is the one numpy writes for the same array.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let expected = match shape {
        [n] => Some(*n),
        [n, d] => n.checked_mul(*d),
        _ => {
            return Err(DataError::ShapeMismatch {
                path: path.to_path_buf(),
                detail: format!("shape {shape:?} must be (N,) or (N, d)"),
            }
            .into())
        }
    };
    if expected != Some(data.len()) {
        return Err(DataError::ShapeMismatch {
            path: path.to_path_buf(),
            detail: format!(
                "shape {shape:?} needs {expected:?} values, got {}",
                data.len()
            ),
        }
        .into());
    }
    let mut writer = match shape {
        [_, d] if *d > 0 => NpyWriter::create_matrix(path, *d)?,
        [_, _] => {
            return Err(DataError::ShapeMismatch {
                path: path.to_path_buf(),
                detail: "a matrix needs at least one column".into(),
            }
            .into())
        }
        _ => NpyWriter::create(path, None, data.len() as u64)?,
    };
    writer.write_rows(data)?;
    writer.finish()?;
    Ok(())
}

/// Streams every row of `source` into `x_path` (N, d) and `y_path` (N,) as float32 npy files,
/// `chunk_rows` rows at a time; both files appear only once complete. Returns N.
pub fn save_npy(
    source: &dyn SampleSource,
    x_path: &Path,
    y_path: &Path,
    chunk_rows: usize,
) -> Result<u64> {
    let mut x_writer = NpyWriter::create_matrix(x_path, source.dim())?;
    let mut y_writer = NpyWriter::create_vector(y_path)?;
    super::for_each_chunk(source, chunk_rows, |_, x, y| {
        x_writer.write_rows(x)?;
        y_writer.write_rows(y)
    })?;
    let rows = x_writer.finish()?;
    y_writer.finish()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure inside `finish` (a full disk at the last flush; here a handle that cannot
    /// write) removes the temporary file: `finish` has taken the file, so `Drop` cannot.
    #[test]
    fn a_failed_finish_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = NpyWriter::create_vector(&dir.path().join("p.npy")).unwrap();
        w.write_rows(&[1.0, 2.0, 3.0]).unwrap();
        let read_only = File::open(&w.temp_path).unwrap();
        w.file = Some(BufWriter::new(read_only));
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains(".p.npy.tmp-"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
