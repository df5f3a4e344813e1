//! Rows that a device can generate where it uses them instead of reading them: the Gaussian
//! inputs of a teacher's counter-based stream ([`super::GaussianSource`]) seen through the
//! views the passes over the data use (a row range, centring, a residual label, a group
//! column). [`super::SampleSource::synthetic`] returns this recipe; a backend that generates
//! rows from it must give the values `read` gives (x bit for bit; labels up to the device's
//! f32 arithmetic).

use crate::network::Network;

/// See the module docs. Row i of the source is built as:
/// 1. x = the stream's inputs of row `first_row + i` (d = `teacher.input_dim` columns), label
///    y = teacher(x) + `noise_sd` * (the stream's noise of that row);
/// 2. with `centre`, x -= centre (in f32);
/// 3. with `residual`, y -= residual(x) (on the centred x; f32 output);
/// 4. with `groups`, one more column: the row's group ([`group_of`]).
#[derive(Clone, Debug)]
pub struct Synthetic {
    pub teacher: Network,
    pub seed: u64,
    pub noise_sd: f64,
    /// Stream row of row 0.
    pub first_row: u64,
    /// Rows of the source.
    pub rows: u64,
    pub centre: Option<Vec<f32>>,
    pub residual: Option<Network>,
    pub groups: Option<GroupColumn>,
}

/// The group column: row i holds `group_of(seed, first_row + i, groups)` as f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupColumn {
    pub seed: u64,
    pub groups: usize,
    pub first_row: u64,
}

impl Synthetic {
    /// Columns of a row: d, plus one with a group column.
    pub fn stride(&self) -> usize {
        self.teacher.input_dim + usize::from(self.groups.is_some())
    }

    /// Rows `start .. start + len` of this source (None when they run past its end).
    pub fn range(mut self, start: u64, len: u64) -> Option<Synthetic> {
        if start.checked_add(len)? > self.rows {
            return None;
        }
        self.first_row += start;
        self.rows = len;
        if let Some(g) = self.groups.as_mut() {
            g.first_row += start;
        }
        Some(self)
    }

    /// True when no view transform has been applied yet (only a row range).
    pub fn is_plain(&self) -> bool {
        self.centre.is_none() && self.residual.is_none() && self.groups.is_none()
    }
}

/// The group of a row: splitmix64 of (seed, row index), reduced mod `groups` (a pseudo-random
/// function of the row index only, independent of x and y).
pub fn group_of(seed: u64, row: u64, groups: usize) -> usize {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(row)
        .wrapping_add(0x632b_e59b_d9b4_e019);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % groups as u64) as usize
}

/// The recipe is itself a source: `read` builds the rows on the host, step by step as the
/// module docs say, with the same arithmetic as the views it stands for (so a device that
/// generates from the recipe can be checked against it).
impl super::SampleSource for Synthetic {
    fn dim(&self) -> usize {
        self.stride()
    }

    fn len(&self) -> u64 {
        self.rows
    }

    fn read(
        &self,
        start: u64,
        rows: usize,
        x: &mut Vec<f32>,
        y: &mut Vec<f32>,
    ) -> crate::error::Result<usize> {
        let d = self.teacher.input_dim;
        let start = start.min(self.rows);
        let n = (rows as u64).min(self.rows - start) as usize;
        let teacher = super::GaussianSource::new(
            self.teacher.clone(),
            self.first_row + self.rows,
            self.seed,
            self.noise_sd,
        )?;
        let mut raw = Vec::new();
        teacher.read(self.first_row + start, n, &mut raw, y)?;
        if let Some(c) = &self.centre {
            for row in raw.chunks_exact_mut(d) {
                for (v, m) in row.iter_mut().zip(c) {
                    *v -= m;
                }
            }
        }
        if let Some(model) = &self.residual {
            for (v, f) in y.iter_mut().zip(model.forward_f32(&raw, n)) {
                *v -= f;
            }
        }
        match self.groups {
            None => *x = raw,
            Some(g) => {
                x.clear();
                x.reserve(n * (d + 1));
                for (i, row) in raw.chunks_exact(d).enumerate() {
                    x.extend_from_slice(row);
                    x.push(group_of(g.seed, g.first_row + start + i as u64, g.groups) as f32);
                }
            }
        }
        Ok(n)
    }

    fn describe(&self) -> String {
        format!(
            "rows {}..{} of the Gaussian stream (seed {}) of a teacher with d = {}{}{}{}",
            self.first_row,
            self.first_row + self.rows,
            self.seed,
            self.teacher.input_dim,
            if self.centre.is_some() {
                ", centred"
            } else {
                ""
            },
            if self.residual.is_some() {
                ", residual labels"
            } else {
                ""
            },
            if self.groups.is_some() {
                ", group column"
            } else {
                ""
            },
        )
    }

    fn synthetic(&self) -> Option<Synthetic> {
        Some(self.clone())
    }
}
