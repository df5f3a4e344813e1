//! The samples stage: npy reading and writing, the Gaussian teacher source, ranges and chunked
//! passes. Fixtures in tests/fixtures were written by numpy with tests/fixtures/make_fixtures.py
//! (`cd tests/fixtures && python3 make_fixtures.py`); bad files are built here in a temp dir.

use relu_fpt::data::{
    for_each_chunk, save_npy, write_npy_f32, DataError, GaussianSource, MemorySource, NpyDtype,
    NpySource, NpyWriter, SampleRange, SampleSource, SliceSource,
};
use relu_fpt::network::{Layer, Network};
use relu_fpt::Error;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_all(source: &dyn SampleSource) -> (Vec<f32>, Vec<f32>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let n = source
        .read(0, source.len() as usize, &mut x, &mut y)
        .unwrap();
    assert_eq!(n as u64, source.len());
    (x, y)
}

/// An npy file with a hand-written header dict (padded as numpy does) and raw data bytes.
fn raw_npy(dir: &Path, name: &str, version: (u8, u8), dict: &str, data: &[u8]) -> PathBuf {
    let len_bytes = if version.0 == 1 { 2 } else { 4 };
    let unpadded = 8 + len_bytes + dict.len() + 1;
    let total = unpadded.next_multiple_of(64);
    let header_len = total - 8 - len_bytes;
    let mut bytes = b"\x93NUMPY".to_vec();
    bytes.extend_from_slice(&[version.0, version.1]);
    if len_bytes == 2 {
        bytes.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        bytes.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    bytes.extend_from_slice(dict.as_bytes());
    bytes.resize(total - 1, b' ');
    bytes.push(b'\n');
    bytes.extend_from_slice(data);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn dict(descr: &str, fortran: bool, shape: &str) -> String {
    let order = if fortran { "True" } else { "False" };
    format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}")
}

/// A valid y file of `n` rows.
fn good_y(dir: &Path, n: usize) -> PathBuf {
    let y: Vec<f32> = (0..n).map(|i| i as f32).collect();
    raw_npy(
        dir,
        "y.npy",
        (1, 0),
        &dict("<f4", false, &format!("({n},)")),
        &f32_bytes(&y),
    )
}

/// A valid x file of `n` rows and `d` columns.
fn good_x(dir: &Path, n: usize, d: usize) -> PathBuf {
    let x: Vec<f32> = (0..n * d).map(|i| i as f32 * 0.25).collect();
    raw_npy(
        dir,
        "x.npy",
        (1, 0),
        &dict("<f4", false, &format!("({n}, {d})")),
        &f32_bytes(&x),
    )
}

fn data_error(result: relu_fpt::Result<impl std::fmt::Debug>) -> DataError {
    match result {
        Err(Error::Data(e)) => e,
        other => panic!("expected a DataError, got {other:?}"),
    }
}

/// The message is one line and names the file.
fn assert_message(e: &DataError, file: &str, fix: &str) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(msg.contains(file), "names {file}: {msg}");
    assert!(msg.contains(fix), "suggests {fix}: {msg}");
}

#[test]
fn npy_round_trip_matrix_vector_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (37usize, 3usize);
    let x: Vec<f32> = (0..n * d).map(|i| (i as f32).sin() * 3.0).collect();
    let y: Vec<f32> = (0..n).map(|i| i as f32 - 0.5).collect();
    let x_path = dir.path().join("x.npy");
    let mut writer = NpyWriter::create_matrix(&x_path, d).unwrap();
    // Uneven pieces of whole rows.
    for rows in x.chunks(5 * d) {
        writer.write_rows(rows).unwrap();
    }
    assert_eq!(writer.finish().unwrap(), n as u64);
    let y_vec = dir.path().join("y_vec.npy");
    write_npy_f32(&y_vec, &[n], &y).unwrap();
    let y_col = dir.path().join("y_col.npy");
    write_npy_f32(&y_col, &[n, 1], &y).unwrap();

    for y_path in [&y_vec, &y_col] {
        let source = NpySource::open(&x_path, y_path).unwrap();
        assert_eq!((source.len(), source.dim()), (n as u64, d));
        assert_eq!(read_all(&source), (x.clone(), y.clone()));
        // A middle range and a range clamped at the end.
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        assert_eq!(source.read(10, 7, &mut xs, &mut ys).unwrap(), 7);
        assert_eq!(xs, x[10 * d..17 * d]);
        assert_eq!(ys, y[10..17]);
        assert_eq!(source.read(33, 100, &mut xs, &mut ys).unwrap(), 4);
        assert_eq!(ys, y[33..]);
        assert_eq!(source.read(1000, 5, &mut xs, &mut ys).unwrap(), 0);
        assert!(xs.is_empty() && ys.is_empty());
    }
    // Only the three finished files are left in the directory.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["x.npy", "y_col.npy", "y_vec.npy"]);
}

#[test]
fn npy_writer_of_known_shape_writes_numpy_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let source = NpySource::open(&fixture("x_f32.npy"), &fixture("y_f32.npy")).unwrap();
    let (x, y) = read_all(&source);
    let x_out = dir.path().join("x.npy");
    let y_out = dir.path().join("y.npy");
    write_npy_f32(&x_out, &[5, 3], &x).unwrap();
    write_npy_f32(&y_out, &[5], &y).unwrap();
    assert_eq!(
        std::fs::read(&x_out).unwrap(),
        std::fs::read(fixture("x_f32.npy")).unwrap()
    );
    assert_eq!(
        std::fs::read(&y_out).unwrap(),
        std::fs::read(fixture("y_f32.npy")).unwrap()
    );
    // Streaming writers reserve a wider header, still a multiple of 64 bytes.
    let mut writer = NpyWriter::create_matrix(&x_out, 3).unwrap();
    writer.write_rows(&x).unwrap();
    writer.finish().unwrap();
    let bytes = std::fs::read(&x_out).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    assert_eq!(bytes.len(), 10 + header_len + 15 * 4);
    let reread = NpySource::open(&x_out, &fixture("y_f32.npy")).unwrap();
    assert_eq!(read_all(&reread).0, x);
}

#[test]
fn npy_write_rejects_shape_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let e = data_error(write_npy_f32(&path, &[4, 3], &[0.0; 11]));
    assert!(matches!(e, DataError::ShapeMismatch { .. }), "{e}");
    let mut writer = NpyWriter::create_matrix(&path, 3).unwrap();
    let e = data_error(writer.write_rows(&[1.0, 2.0]));
    assert!(matches!(e, DataError::ShapeMismatch { .. }), "{e}");
    drop(writer);
    assert!(!path.exists());
}

#[test]
fn npy_reads_numpy_f32_fixtures() {
    let source = NpySource::open(&fixture("x_f32.npy"), &fixture("y_f32.npy")).unwrap();
    assert_eq!(source.x_header().dtype, NpyDtype::F32);
    assert_eq!(source.x_header().shape, vec![5, 3]);
    let (x, y) = read_all(&source);
    let want_x: Vec<f32> = (0..15).map(|k| k as f32 / 8.0 - 1.0).collect();
    assert_eq!(x, want_x);
    assert_eq!(y, [0.0, 0.5, 1.0, 1.5, 2.0]);
    assert!(source.describe().contains("x_f32.npy"));
}

#[test]
fn npy_reads_numpy_f64_fixtures_rounded_to_nearest_f32() {
    let source = NpySource::open(&fixture("x_f64.npy"), &fixture("y_f64_col.npy")).unwrap();
    assert_eq!(source.x_header().dtype, NpyDtype::F64);
    assert_eq!(source.y_header().expect("labels opened").shape, vec![5, 1]);
    let (x, y) = read_all(&source);
    // numpy's astype(np.float32) of the same values, bit for bit.
    let cast = NpySource::open(&fixture("x_f64_as_f32.npy"), &fixture("y_f32.npy")).unwrap();
    let (want_x, _) = read_all(&cast);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&x), bits(&want_x));
    // And the nearest f32 to each f64: no other f32 is closer.
    for (k, &v) in x.iter().enumerate() {
        let exact = k as f64 / 7.0 + 0.1;
        let err = (v as f64 - exact).abs();
        for neighbour in [
            f32::from_bits(v.to_bits() - 1),
            f32::from_bits(v.to_bits() + 1),
        ] {
            assert!(err <= (neighbour as f64 - exact).abs());
        }
    }
    let want_y: Vec<f32> = (0..5).map(|i| (i as f64 / 3.0) as f32).collect();
    assert_eq!(y, want_y);
}

#[test]
fn npy_reads_numpy_format_versions_2_and_3() {
    let (want, _) =
        read_all(&NpySource::open(&fixture("x_f32.npy"), &fixture("y_f32.npy")).unwrap());
    for (name, version) in [("x_v2.npy", (2, 0)), ("x_v3.npy", (3, 0))] {
        let source = NpySource::open(&fixture(name), &fixture("y_f32.npy")).unwrap();
        assert_eq!(source.x_header().version, version);
        assert_eq!(read_all(&source).0, want);
    }
}

#[test]
fn npy_reads_concurrently_from_threads() {
    let dir = tempfile::tempdir().unwrap();
    let x_path = good_x(dir.path(), 400, 5);
    let y_path = good_y(dir.path(), 400);
    let source = NpySource::open(&x_path, &y_path).unwrap();
    let (x, y) = read_all(&source);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let (source, x, y) = (&source, &x, &y);
            scope.spawn(move || {
                let (mut xs, mut ys) = (Vec::new(), Vec::new());
                for start in (t * 7..400).step_by(29) {
                    let n = source.read(start, 13, &mut xs, &mut ys).unwrap();
                    let s = start as usize;
                    assert_eq!(xs, x[s * 5..(s + n) * 5]);
                    assert_eq!(ys, y[s..s + n]);
                }
            });
        }
    });
}

#[test]
fn npy_fortran_order_fixture_is_rejected() {
    let e = data_error(NpySource::open(
        &fixture("x_fortran.npy"),
        &fixture("y_f32.npy"),
    ));
    assert!(matches!(e, DataError::FortranOrder { .. }), "{e}");
    assert_message(&e, "x_fortran.npy", "np.ascontiguousarray");
    assert!(e.to_string().contains("fortran_order"));
}

#[test]
fn npy_row_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let x = good_x(dir.path(), 6, 2);
    let y = good_y(dir.path(), 5);
    let e = data_error(NpySource::open(&x, &y));
    assert!(
        matches!(
            e,
            DataError::RowCountMismatch {
                x_rows: 6,
                y_rows: 5,
                ..
            }
        ),
        "{e}"
    );
    assert_message(&e, "x.npy", "y.npy");
}

#[test]
fn npy_non_finite_values_name_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut values: Vec<f32> = (0..30).map(|i| i as f32).collect();
    values[3 * 3 + 2] = f32::NAN;
    values[4 * 3] = f32::INFINITY;
    let x = raw_npy(
        dir.path(),
        "x.npy",
        (1, 0),
        &dict("<f4", false, "(10, 3)"),
        &f32_bytes(&values),
    );
    let y = good_y(dir.path(), 10);
    let source = NpySource::open(&x, &y).unwrap();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    // Rows before the NaN are fine.
    assert_eq!(source.read(0, 3, &mut xs, &mut ys).unwrap(), 3);
    let e = data_error(source.read(1, 5, &mut xs, &mut ys));
    assert!(
        matches!(
            e,
            DataError::NonFinite {
                row: 3,
                column: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_message(&e, "x.npy", "np.isfinite");
    let e = data_error(source.read(4, 5, &mut xs, &mut ys));
    assert!(
        matches!(
            e,
            DataError::NonFinite {
                row: 4,
                column: 0,
                ..
            }
        ),
        "{e}"
    );

    // In y, and in f64 data.
    let y_values: Vec<u8> = [1.0f64, 2.0, f64::NEG_INFINITY]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let y_bad = raw_npy(
        dir.path(),
        "y_bad.npy",
        (1, 0),
        &dict("<f8", false, "(3,)"),
        &y_values,
    );
    let x3 = good_x(dir.path(), 3, 2);
    let source = NpySource::open(&x3, &y_bad).unwrap();
    let e = data_error(source.read(0, 3, &mut xs, &mut ys));
    assert!(
        matches!(
            e,
            DataError::NonFinite {
                row: 2,
                column: 0,
                ..
            }
        ),
        "{e}"
    );
    assert_message(&e, "y_bad.npy", "np.isfinite");
}

#[test]
fn npy_unsupported_dtype_and_big_endian() {
    let dir = tempfile::tempdir().unwrap();
    let y = good_y(dir.path(), 2);
    let x = raw_npy(
        dir.path(),
        "xi.npy",
        (1, 0),
        &dict("<i8", false, "(2, 2)"),
        &[0u8; 32],
    );
    let e = data_error(NpySource::open(&x, &y));
    assert!(
        matches!(&e, DataError::UnsupportedDtype { descr, .. } if descr == "<i8"),
        "{e}"
    );
    assert_message(&e, "xi.npy", "x.astype(np.float32)");
    assert!(e.to_string().contains("descr"));

    let x = raw_npy(
        dir.path(),
        "xh.npy",
        (1, 0),
        &dict("<f2", false, "(2, 2)"),
        &[0u8; 8],
    );
    let e = data_error(NpySource::open(&x, &y));
    assert!(matches!(e, DataError::UnsupportedDtype { .. }), "{e}");

    let x = raw_npy(
        dir.path(),
        "xb.npy",
        (1, 0),
        &dict(">f4", false, "(2, 2)"),
        &[0u8; 16],
    );
    let e = data_error(NpySource::open(&x, &y));
    assert!(matches!(e, DataError::BigEndian { .. }), "{e}");
    assert_message(&e, "xb.npy", "astype");
}

#[test]
fn npy_bad_magic_version_and_header() {
    let dir = tempfile::tempdir().unwrap();
    let y = good_y(dir.path(), 2);

    let not_npy = dir.path().join("x.csv");
    std::fs::write(&not_npy, "1.0,2.0\n3.0,4.0\n").unwrap();
    let e = data_error(NpySource::open(&not_npy, &y));
    assert!(matches!(e, DataError::BadMagic { .. }), "{e}");
    assert_message(&e, "x.csv", "np.save");

    let v4 = raw_npy(
        dir.path(),
        "v4.npy",
        (4, 0),
        &dict("<f4", false, "(2, 2)"),
        &[0u8; 16],
    );
    let e = data_error(NpySource::open(&v4, &y));
    assert!(
        matches!(
            e,
            DataError::UnsupportedVersion {
                major: 4,
                minor: 0,
                ..
            }
        ),
        "{e}"
    );
    assert_message(&e, "v4.npy", "np.save");

    // Magic and version, then the file ends.
    let short = dir.path().join("short.npy");
    std::fs::write(&short, b"\x93NUMPY\x01\x00\x76").unwrap();
    let e = data_error(NpySource::open(&short, &y));
    assert!(matches!(e, DataError::TruncatedHeader { .. }), "{e}");
    // A header length that runs past the end of the file.
    let cut = dir.path().join("cut.npy");
    let mut bytes = std::fs::read(fixture("x_f32.npy")).unwrap();
    bytes.truncate(60);
    std::fs::write(&cut, bytes).unwrap();
    let e = data_error(NpySource::open(&cut, &y));
    assert!(matches!(e, DataError::TruncatedHeader { .. }), "{e}");
    assert_message(&e, "cut.npy", "np.save");

    let garbage = raw_npy(
        dir.path(),
        "garbage.npy",
        (1, 0),
        "{'descr': '<f4', 'fortran_order': Maybe",
        &[],
    );
    let e = data_error(NpySource::open(&garbage, &y));
    assert!(matches!(e, DataError::CorruptHeader { .. }), "{e}");
    assert_message(&e, "garbage.npy", "np.save");

    let no_shape = raw_npy(
        dir.path(),
        "noshape.npy",
        (1, 0),
        "{'descr': '<f4', 'fortran_order': False, }",
        &[],
    );
    let e = data_error(NpySource::open(&no_shape, &y));
    assert!(
        matches!(&e, DataError::CorruptHeader { field, .. } if field == "shape"),
        "{e}"
    );
    assert!(e.to_string().contains("'shape'"));
}

#[test]
fn npy_empty_file_short_data_and_bad_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let y = good_y(dir.path(), 4);

    let empty = dir.path().join("empty.npy");
    std::fs::write(&empty, b"").unwrap();
    let e = data_error(NpySource::open(&empty, &y));
    assert!(matches!(e, DataError::EmptyFile { .. }), "{e}");
    assert_message(&e, "empty.npy", "np.save");

    // Header says 4 x 3 floats, 11 are there.
    let short = raw_npy(
        dir.path(),
        "short.npy",
        (1, 0),
        &dict("<f4", false, "(4, 3)"),
        &[0u8; 44],
    );
    let e = data_error(NpySource::open(&short, &y));
    assert!(
        matches!(e, DataError::DataTooShort { expected_bytes, actual_bytes, .. } if expected_bytes == actual_bytes + 4),
        "{e}"
    );
    assert_message(&e, "short.npy", "np.save");

    let no_rows = raw_npy(
        dir.path(),
        "norows.npy",
        (1, 0),
        &dict("<f4", false, "(0, 3)"),
        &[],
    );
    let e = data_error(NpySource::open(&no_rows, &y));
    assert!(matches!(e, DataError::NoRows { .. }), "{e}");
    assert_message(&e, "norows.npy", "N = 0");

    let no_cols = raw_npy(
        dir.path(),
        "nocols.npy",
        (1, 0),
        &dict("<f4", false, "(4, 0)"),
        &[],
    );
    let e = data_error(NpySource::open(&no_cols, &y));
    assert!(matches!(e, DataError::ZeroDim { .. }), "{e}");
    assert_message(&e, "nocols.npy", "d = 0");

    let x_1d = raw_npy(
        dir.path(),
        "x1d.npy",
        (1, 0),
        &dict("<f4", false, "(4,)"),
        &[0u8; 16],
    );
    let e = data_error(NpySource::open(&x_1d, &y));
    assert!(matches!(e, DataError::WrongDimensions { .. }), "{e}");
    assert_message(&e, "x1d.npy", "reshape(-1, 1)");

    let x_3d = raw_npy(
        dir.path(),
        "x3d.npy",
        (1, 0),
        &dict("<f4", false, "(4, 1, 1)"),
        &[0u8; 16],
    );
    let e = data_error(NpySource::open(&x_3d, &y));
    assert!(matches!(e, DataError::WrongDimensions { .. }), "{e}");

    let x = good_x(dir.path(), 4, 2);
    let y_2 = raw_npy(
        dir.path(),
        "y2.npy",
        (1, 0),
        &dict("<f4", false, "(4, 2)"),
        &[0u8; 32],
    );
    let e = data_error(NpySource::open(&x, &y_2));
    assert!(matches!(e, DataError::WrongDimensions { .. }), "{e}");
    assert_message(&e, "y2.npy", "reshape(-1)");
}

#[test]
fn npy_writer_dropped_without_finish_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    {
        let mut writer = NpyWriter::create_matrix(&path, 2).unwrap();
        writer.write_rows(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(writer.rows(), 2);
        // The temporary file exists while writing, next to the target.
        let during: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(during.len(), 1);
    }
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn sample_range_reads_its_rows_only() {
    let memory = MemorySource {
        dim: 2,
        x: (0..40).map(|i| i as f32).collect(),
        y: (0..20).map(|i| i as f32 * 10.0).collect(),
    };
    let range = SampleRange::new(&memory, 5, 10).unwrap();
    assert_eq!((range.len(), range.dim()), (10, 2));
    let (x, y) = read_all(&range);
    assert_eq!(y, (5..15).map(|i| i as f32 * 10.0).collect::<Vec<_>>());
    assert_eq!(x, (10..30).map(|i| i as f32).collect::<Vec<_>>());
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    // Clamped at the end of the range, not of the parent.
    assert_eq!(range.read(8, 100, &mut xs, &mut ys).unwrap(), 2);
    assert_eq!(ys, [130.0, 140.0]);
    assert_eq!(range.read(10, 5, &mut xs, &mut ys).unwrap(), 0);
    assert!(range.describe().starts_with("rows 5..15 of"));

    let e = data_error(SampleRange::new(&memory, 15, 6));
    assert!(
        matches!(
            e,
            DataError::RangeOutOfBounds {
                start: 15,
                end: 21,
                len: 20,
                ..
            }
        ),
        "{e}"
    );
    let e = data_error(SampleRange::new(&memory, u64::MAX, 2));
    assert!(matches!(e, DataError::RangeOutOfBounds { .. }), "{e}");
}

#[test]
fn for_each_chunk_visits_every_row_once_in_order() {
    let memory = MemorySource {
        dim: 3,
        x: (0..69).map(|i| i as f32).collect(),
        y: (0..23).map(|i| i as f32).collect(),
    };
    let mut starts = Vec::new();
    let mut seen_y = Vec::new();
    for_each_chunk(&memory, 5, |start, x, y| {
        assert_eq!(x.len(), y.len() * 3);
        assert_eq!(x[0], start as f32 * 3.0);
        starts.push(start);
        seen_y.extend_from_slice(y);
        Ok(())
    })
    .unwrap();
    assert_eq!(starts, [0, 5, 10, 15, 20]);
    assert_eq!(seen_y, memory.y);

    // Errors from the callback stop the pass.
    let mut calls = 0;
    let result = for_each_chunk(&memory, 5, |_, _, _| {
        calls += 1;
        Err(Error::invalid("stop"))
    });
    assert!(result.is_err());
    assert_eq!(calls, 1);
    assert!(matches!(
        for_each_chunk(&memory, 0, |_, _, _| Ok(())),
        Err(Error::InvalidRequest(_))
    ));
}

/// A small teacher: d = 4, one hidden layer of 3 ReLUs.
fn teacher() -> Network {
    let hidden = Layer::new(
        4,
        3,
        vec![
            1.0, -0.5, 0.25, 0.0, 0.3, 0.3, -1.0, 0.7, -0.2, 0.9, 0.1, 0.4,
        ],
        vec![0.1, -0.2, 0.0],
    )
    .unwrap();
    let out = Layer::new(3, 1, vec![1.0, -2.0, 0.5], vec![0.3]).unwrap();
    Network::new(4, vec![hidden, out]).unwrap()
}

fn read_in_chunks(source: &dyn SampleSource, start: u64, chunk: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let mut row = start;
    while row < source.len() {
        let n = source.read(row, chunk, &mut xs, &mut ys).unwrap();
        x.extend_from_slice(&xs);
        y.extend_from_slice(&ys);
        row += n as u64;
    }
    (x, y)
}

#[test]
fn gaussian_same_seed_same_bytes_for_any_chunking_offset_and_threads() {
    let rows = 12_500;
    let source = GaussianSource::new(teacher(), rows, 7, 0.0).unwrap();
    let (x, y) = read_all(&source);
    assert_eq!((x.len(), y.len()), (rows as usize * 4, rows as usize));
    for chunk in [1000, 4096, 10_000] {
        assert_eq!(
            read_in_chunks(&source, 0, chunk),
            (x.clone(), y.clone()),
            "chunk {chunk}"
        );
    }
    for start in [1u64, 4095, 4096, 5000, 12_499] {
        let (xs, ys) = read_in_chunks(&source, start, 777);
        let s = start as usize;
        assert_eq!(xs, x[s * 4..], "start {start}");
        assert_eq!(ys, y[s..], "start {start}");
    }
    // One thread gives the same bytes as the default pool.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let single = pool.install(|| read_all(&source));
    assert_eq!(single, (x.clone(), y.clone()));
    // A fresh source with the same seed agrees; another seed does not.
    let again = GaussianSource::new(teacher(), rows, 7, 0.0).unwrap();
    assert_eq!(read_all(&again), (x.clone(), y.clone()));
    let other = GaussianSource::new(teacher(), rows, 8, 0.0).unwrap();
    let (x_other, _) = read_all(&other);
    let same = x.iter().zip(&x_other).filter(|(a, b)| a == b).count();
    assert!(same < 10, "{same} equal values across seeds");
}

#[test]
fn gaussian_inputs_are_standard_normal_and_labels_follow_the_teacher() {
    let rows = 20_000u64;
    let net = teacher();
    let clean = GaussianSource::new(net.clone(), rows, 3, 0.0).unwrap();
    let (x, y) = read_all(&clean);
    let d = 4;
    for j in 0..d {
        let column: Vec<f64> = x.iter().skip(j).step_by(d).map(|&v| v as f64).collect();
        let mean = column.iter().sum::<f64>() / rows as f64;
        let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64;
        // Standard errors: 0.007 for the mean, 0.01 for the variance.
        assert!(mean.abs() < 0.04, "column {j} mean {mean}");
        assert!((var - 1.0).abs() < 0.06, "column {j} variance {var}");
    }
    // Distinct columns are uncorrelated.
    let cov01 = x.chunks(d).map(|r| r[0] as f64 * r[1] as f64).sum::<f64>() / rows as f64;
    assert!(cov01.abs() < 0.04, "cov {cov01}");
    for (row, &label) in x.chunks(d).zip(&y).take(500) {
        let input: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let want = net.forward_one_f64(&input);
        assert!(
            (label as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
            "label {label} vs teacher {want}"
        );
    }

    // Noise changes labels by N(0, sd^2) and leaves x alone.
    let sd = 0.5;
    let noisy = GaussianSource::new(net, rows, 3, sd).unwrap();
    let (x_noisy, y_noisy) = read_all(&noisy);
    assert_eq!(x_noisy, x);
    let residual: Vec<f64> = y_noisy
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    let mean = residual.iter().sum::<f64>() / rows as f64;
    let var = residual.iter().map(|r| r * r).sum::<f64>() / rows as f64;
    assert!(mean.abs() < 0.02, "noise mean {mean}");
    assert!((var.sqrt() - sd).abs() < 0.02, "noise sd {}", var.sqrt());
}

#[test]
fn gaussian_rejects_bad_noise() {
    for sd in [-0.1, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            GaussianSource::new(teacher(), 10, 1, sd),
            Err(Error::InvalidRequest(_))
        ));
    }
}

#[test]
fn gaussian_source_saved_to_npy_reads_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let source = GaussianSource::new(teacher(), 5000, 11, 0.1).unwrap();
    let (x_path, y_path) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    assert_eq!(save_npy(&source, &x_path, &y_path, 1500).unwrap(), 5000);
    let saved = NpySource::open(&x_path, &y_path).unwrap();
    assert_eq!((saved.len(), saved.dim()), (5000, 4));
    assert_eq!(read_all(&saved), read_all(&source));
    // A train / validation split of the saved file matches the same split of the generator.
    let train = SampleRange::new(&saved, 0, 4000).unwrap();
    let valid = SampleRange::new(&saved, 4000, 1000).unwrap();
    let valid_gen = SampleRange::new(&source, 4000, 1000).unwrap();
    assert_eq!(read_all(&valid), read_all(&valid_gen));
    assert_eq!(train.len() + valid.len(), saved.len());
}

#[test]
fn npy_inputs_alone_read_with_zero_labels() {
    let dir = tempfile::tempdir().unwrap();
    let x_path = dir.path().join("x.npy");
    write_npy_f32(&x_path, &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let source = NpySource::open_inputs(&x_path).unwrap();
    assert!(source.y_header().is_none());
    let (mut x, mut y) = (Vec::new(), Vec::new());
    assert_eq!(source.read(1, 10, &mut x, &mut y).unwrap(), 2);
    assert_eq!(x, vec![3.0, 4.0, 5.0, 6.0]);
    assert_eq!(y, vec![0.0, 0.0]);
}

#[test]
fn slice_source_reads_borrowed_rows_like_memory_source() {
    let memory = MemorySource {
        dim: 3,
        x: (0..30).map(|i| i as f32).collect(),
        y: (0..10).map(|i| -(i as f32)).collect(),
    };
    let slices = relu_fpt::data::SliceSource::new(3, &memory.x, &memory.y).unwrap();
    assert_eq!((slices.len(), slices.dim()), (10, 3));
    assert_eq!(read_all(&slices), read_all(&memory));
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    assert_eq!(slices.read(8, 5, &mut xs, &mut ys).unwrap(), 2);
    assert_eq!(
        (xs, ys),
        ((24..30).map(|i| i as f32).collect(), vec![-8.0, -9.0])
    );
    assert_eq!(
        slices
            .read(u64::MAX, usize::MAX, &mut Vec::new(), &mut Vec::new())
            .unwrap(),
        0
    );
    // Passes read the caller's memory in place: the rows handed out are the borrowed ones.
    let (xs, ys) = slices.in_memory(2, 3).unwrap();
    assert_eq!(xs.as_ptr(), memory.x[6..].as_ptr());
    assert_eq!(ys.as_ptr(), memory.y[2..].as_ptr());
    assert_eq!((xs.len(), ys.len()), (9, 3));
    let (xs, ys) = slices.in_memory(9, 5).unwrap();
    assert_eq!((xs.len(), ys.len()), (3, 1));
    assert!(slices.identity().is_none());
    let e = relu_fpt::data::SliceSource::new(4, &memory.x, &memory.y).unwrap_err();
    assert!(
        e.to_string().contains("30 values") && e.to_string().contains("10 rows"),
        "{e}"
    );
}

/// Both in-memory sources read alike, past the end and with a request as long as usize allows
/// (MemorySource once added start + rows without saturating).
#[test]
fn memory_and_slice_sources_read_alike_to_the_end() {
    let x: Vec<f32> = (0..15).map(|v| v as f32).collect();
    let y: Vec<f32> = (0..5).map(|v| -(v as f32)).collect();
    let owned = MemorySource {
        dim: 3,
        x: x.clone(),
        y: y.clone(),
    };
    let borrowed = SliceSource::new(3, &x, &y).unwrap();
    for source in [&owned as &dyn SampleSource, &borrowed] {
        for (start, rows, want) in [(0, 2, 2), (3, 10, 2), (1, usize::MAX, 4), (9, 1, 0)] {
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            let got = source.read(start, rows, &mut xs, &mut ys).unwrap();
            assert_eq!(got, want, "{} from {start}", source.describe());
            let first = (start as usize).min(5);
            assert_eq!(ys, y[first..first + want].to_vec());
            assert_eq!(xs, x[first * 3..(first + want) * 3].to_vec());
            assert_eq!(
                source.in_memory(start, rows),
                Some((&xs[..], &ys[..])),
                "in_memory agrees with read"
            );
        }
    }
    assert_eq!(owned.describe(), borrowed.describe());
}
