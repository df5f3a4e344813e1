//! Repeated rows: samples of a continuous distribution never repeat, so repeats mean a copied
//! or upsampled data set, on which filtered PCA's null (independent rows) no longer holds.

use super::SampleSource;
use crate::error::Result;

/// How many of the first rows of a source repeat an earlier one: samples of a continuous
/// distribution never repeat, so repeats mean a copied or upsampled data set, on which the
/// null of filtered PCA (independent rows) no longer holds. Reads at most `max_rows` rows
/// (the first ones). Returns (rows read, repeated rows).
pub fn repeated_rows(source: &dyn SampleSource, max_rows: usize) -> Result<(u64, u64)> {
    use std::collections::HashSet;
    use std::hash::{Hash, Hasher};
    let d = source.dim();
    let want = source.len().min(max_rows as u64);
    let mut seen: HashSet<u64> = HashSet::with_capacity(want as usize);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let (mut start, mut repeats) = (0u64, 0u64);
    while start < want {
        let n = source.read(start, (want - start).min(1 << 14) as usize, &mut x, &mut y)?;
        if n == 0 {
            break;
        }
        for (row, label) in x.chunks_exact(d).zip(&y) {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for v in row {
                v.to_bits().hash(&mut h);
            }
            label.to_bits().hash(&mut h);
            if !seen.insert(h.finish()) {
                repeats += 1;
            }
        }
        start += n as u64;
    }
    Ok((start, repeats))
}

/// Share of repeated rows above which [`warn_repeated_rows`] warns.
pub const REPEAT_WARN_FRACTION: f64 = 0.01;

/// A warning when more than [`REPEAT_WARN_FRACTION`] of the first 65536 rows repeat an
/// earlier row (see [`repeated_rows`]); None otherwise.
pub fn warn_repeated_rows(source: &dyn SampleSource) -> Result<Option<String>> {
    let (read, repeats) = repeated_rows(source, 1 << 16)?;
    if read == 0 || (repeats as f64) <= REPEAT_WARN_FRACTION * read as f64 {
        return Ok(None);
    }
    Ok(Some(format!(
        "warning: {repeats} of the first {read} rows of {} repeat an earlier row ({} unique): filtered PCA assumes independent samples, so directions found on repeated rows may be artefacts of the copies; remove duplicates (np.unique(np.column_stack([x, y]), axis=0)) or draw more samples",
        source.describe(),
        read - repeats
    )))
}
