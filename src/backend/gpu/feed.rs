//! Samples onto the device: the residency cache and the batch feeder that every pass over a
//! [`SampleSource`] uses (moments, fit moments).
//!
//! A pass sees its source as a sequence of device batches (x and y buffers). When the backend
//! holds a resident copy of the source, the batches are that copy and nothing is read or
//! uploaded. Otherwise a helper thread reads the next batch while the device works, each batch
//! is uploaded into one of two device slots through a staging copy of at most
//! [`MAX_BATCH_BYTES`], and at most two batches are in flight: a slot is refilled only after
//! the work the pass submitted on its previous batch has finished (a bounded wait). Passes
//! submit without waiting and read their results back once at the end.
//!
//! Generation: a source the device can generate itself ([`SampleSource::synthetic`]: the
//! built-in teachers' Gaussian samples and the views of them the passes use) is never read on
//! the host: each batch is drawn into its slot on the device (`sample.rs`) and only its labels
//! come back (4 bytes a row), so no x crosses the bus.
//!
//! Residency: a source is kept on the device when it names itself
//! ([`SampleSource::identity`]: equal keys promise equal rows, so two sources of the same shape
//! never share a copy; sources without one are never kept), when all of it fits the byte
//! budget ([`ResidentSamples::set_budget`]), and when the device can allocate it (an
//! out-of-memory error drops the copy and the pass streams on). Entries are evicted least
//! recently used first.

use super::{GpuContext, GpuError};
use crate::data::SampleSource;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most bytes of x one upload moves (and so one staging copy holds): two in flight bound the
/// host-visible memory at 512 MiB.
pub const MAX_BATCH_BYTES: u64 = 256 << 20;

/// Environment variable with the residency budget in MiB (overrides the default).
pub const RESIDENT_MIB_ENV: &str = "RELU_FPT_GPU_RESIDENT_MIB";

/// One batch of samples on the device.
pub(crate) struct DeviceBatch<'a> {
    /// rows x d f32, row-major.
    pub x: &'a wgpu::Buffer,
    /// rows f32.
    pub y: &'a wgpu::Buffer,
    /// Rows in the batch.
    pub rows: usize,
    /// The labels on the host.
    pub y_host: &'a [f32],
    /// x on the host when the batch was just read from the source (None when resident).
    pub x_host: Option<&'a [f32]>,
}

/// Identifies a device copy: the source's identity and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ResidentKey {
    identity: String,
    len: u64,
    dim: usize,
}

/// One resident batch: device x and y, labels on the host too.
struct ResidentBatch {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    y_host: Vec<f32>,
}

/// One batch of a device copy as a caller outside the feeder sees it: x (rows x d) and y.
pub(crate) struct ResidentRows {
    pub x: wgpu::Buffer,
    pub y: wgpu::Buffer,
    pub rows: usize,
}

struct Entry {
    key: ResidentKey,
    batches: Arc<Vec<ResidentBatch>>,
    bytes: u64,
    last_use: u64,
}

/// Device copies of sample sources that later passes read again (see the module docs).
pub struct ResidentSamples {
    budget: AtomicU64,
    clock: AtomicU64,
    entries: Mutex<Vec<Entry>>,
    /// Passes served from a copy and copies built, for tests and reports.
    hits: AtomicU64,
    builds: AtomicU64,
    /// Bytes of x uploaded from the host, and rows generated on the device.
    x_uploaded: AtomicU64,
    generated: AtomicU64,
}

impl ResidentSamples {
    /// An empty cache with `budget` bytes.
    pub fn new(budget: u64) -> Self {
        ResidentSamples {
            budget: AtomicU64::new(budget),
            clock: AtomicU64::new(0),
            entries: Mutex::new(Vec::new()),
            hits: AtomicU64::new(0),
            builds: AtomicU64::new(0),
            x_uploaded: AtomicU64::new(0),
            generated: AtomicU64::new(0),
        }
    }

    /// The default budget: [`RESIDENT_MIB_ENV`] when set, else 4 GiB on hardware and 1 GiB on
    /// software adapters, never more than a quarter of the largest buffer times 16 (a rough
    /// stand-in for device memory, which wgpu does not report).
    pub fn default_budget(ctx: &GpuContext) -> u64 {
        if let Some(mib) = std::env::var(RESIDENT_MIB_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            return mib << 20;
        }
        let base: u64 = if ctx.is_software() { 1 << 30 } else { 4 << 30 };
        base.min(ctx.limits.max_buffer_size.saturating_mul(4))
    }

    /// Sets the byte budget; copies beyond it are evicted (0 turns residency off).
    pub fn set_budget(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::Relaxed);
        self.evict_to(bytes);
    }

    /// Current byte budget (0 = off).
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Frees every device copy held.
    pub fn clear(&self) {
        self.evict_to(0);
    }

    /// (passes served from a resident copy, copies built) since the backend opened.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.builds.load(Ordering::Relaxed),
        )
    }

    /// (bytes of x uploaded from the host, rows generated on the device) by the passes that
    /// went through this backend's feeder since it opened.
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.x_uploaded.load(Ordering::Relaxed),
            self.generated.load(Ordering::Relaxed),
        )
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evict_to(&self, bytes: u64) {
        let mut entries = self.entries();
        while entries.iter().map(|e| e.bytes).sum::<u64>() > bytes {
            let oldest = (0..entries.len())
                .min_by_key(|&i| entries[i].last_use)
                .unwrap_or(0);
            entries.remove(oldest);
        }
    }

    /// The batches of `source`'s device copy, when one is held (the trainer assembles windows
    /// from it); counted as a use for eviction, not as a pass served.
    pub(crate) fn held(&self, source: &dyn SampleSource) -> Option<Vec<ResidentRows>> {
        let key = ResidentKey {
            identity: source.identity()?,
            len: source.len(),
            dim: source.dim(),
        };
        let mut entries = self.entries();
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let e = entries.iter_mut().find(|e| e.key == key)?;
        e.last_use = now;
        Some(
            e.batches
                .iter()
                .map(|b| ResidentRows {
                    x: b.x.clone(),
                    y: b.y.clone(),
                    rows: b.y_host.len(),
                })
                .collect(),
        )
    }

    fn lookup(&self, key: &ResidentKey) -> Option<Arc<Vec<ResidentBatch>>> {
        let mut entries = self.entries();
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let e = entries.iter_mut().find(|e| &e.key == key)?;
        e.last_use = now;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(e.batches.clone())
    }

    fn insert(&self, key: ResidentKey, batches: Vec<ResidentBatch>, bytes: u64) {
        let budget = self.budget();
        if bytes > budget {
            return;
        }
        self.entries().retain(|e| e.key != key);
        self.evict_to(budget - bytes);
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        self.builds.fetch_add(1, Ordering::Relaxed);
        self.entries().push(Entry {
            key,
            batches: Arc::new(batches),
            bytes,
            last_use: now,
        });
    }
}

/// Rows per batch of a source of dimension `d` for a pass that takes at most `max_rows`: one
/// storage binding, at most [`MAX_BATCH_BYTES`], whole multiples of `align` rows when more than
/// that fit.
pub(crate) fn batch_rows(ctx: &GpuContext, d: usize, max_rows: usize, align: usize) -> usize {
    let row_bytes = (d.max(1) * 4) as u64;
    let mut rows = (ctx.max_binding().min(MAX_BATCH_BYTES) / row_bytes) as usize;
    rows = rows.min(max_rows).max(1);
    if rows > align {
        rows -= rows % align;
    }
    rows
}

/// Calls `pass` on every batch of `source` in order (see the module docs). `pass` submits its
/// work for the batch and returns the index of its last submission that reads the batch;
/// `row_flops` (the pass's work per row) bounds the waits for a slot. Batches have at most
/// `rows_per_batch` rows (a resident copy's batches are reused only when they are no longer).
pub(crate) fn for_each_batch(
    ctx: &GpuContext,
    resident: Option<&ResidentSamples>,
    source: &dyn SampleSource,
    rows_per_batch: usize,
    row_flops: f64,
    mut pass: impl FnMut(&DeviceBatch) -> Result<Option<wgpu::SubmissionIndex>>,
) -> Result<()> {
    let d = source.dim();
    let n = source.len();
    if n == 0 {
        return Ok(());
    }
    let key = source.identity().map(|identity| ResidentKey {
        identity,
        len: n,
        dim: d,
    });
    let held = match (resident, &key) {
        (Some(store), Some(key)) => store.lookup(key),
        _ => None,
    };
    if let Some(batches) = held {
        if batches.iter().all(|b| b.y_host.len() <= rows_per_batch) {
            for b in batches.iter() {
                pass(&DeviceBatch {
                    x: &b.x,
                    y: &b.y,
                    rows: b.y_host.len(),
                    y_host: &b.y_host,
                    x_host: None,
                })?;
            }
            return Ok(());
        }
    }
    let generator = match source.synthetic() {
        Some(recipe) if recipe.stride() == d && recipe.rows == n => {
            super::sample::Generator::new(ctx, &recipe)?
        }
        _ => None,
    };
    if let Some(gen) = generator {
        return generate_batches(
            ctx,
            resident,
            key,
            &gen,
            n,
            d,
            rows_per_batch,
            row_flops,
            pass,
        );
    }
    let bytes = n * (d as u64 + 1) * 4;
    let mut building = match (resident, &key) {
        (Some(store), Some(_)) if store.budget() >= bytes => Some(Vec::new()),
        _ => None,
    };
    let rows_per_batch = rows_per_batch.max(1);
    let batch_bytes = |rows: usize| ((rows * d * 4) as u64, (rows * 4) as u64);
    // Two upload slots (x, y) when streaming, and per slot the last submission of the batch
    // that used it: batch i waits for batch i - 2, so at most two uploads are in flight.
    let mut slots: [Option<(wgpu::Buffer, wgpu::Buffer)>; 2] = [None, None];
    let mut in_flight: [Option<wgpu::SubmissionIndex>; 2] = [None, None];
    std::thread::scope(|scope| -> Result<()> {
        // Two batches read ahead: reading overlaps the upload and the pass.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(2);
        scope.spawn(move || read_ahead(source, rows_per_batch, tx));
        let mut start = 0u64;
        let mut index = 0usize;
        while start < n {
            let (xs, ys, rows) = match rx.recv() {
                Ok(read) => read?,
                Err(_) => break,
            };
            if rows == 0 || rows > rows_per_batch || xs.len() != rows * d || ys.len() != rows {
                return Err(Error::invalid(format!(
                    "{} returned {} x values and {} labels for {rows} rows of d = {d} at row \
                     {start}",
                    source.describe(),
                    xs.len(),
                    ys.len()
                )));
            }
            let (xb, yb) = batch_bytes(rows);
            // A resident copy gets buffers of its own; an allocation failure ends the copy.
            let own = resident_batch_buffers(ctx, &mut building, xb, yb)?;
            let slot = index % 2;
            if let Some(done) = in_flight[slot].take() {
                ctx.wait("samples upload", Some(done), rows as f64 * row_flops)?;
            }
            let (x_buf, y_buf) = match own {
                Some(pair) => pair,
                None => {
                    if slots[slot].is_none() {
                        let (xb, yb) = batch_bytes(rows_per_batch.min(n as usize));
                        slots[slot] = Some((
                            ctx.storage_buffer("samples x", xb)?,
                            ctx.storage_buffer("samples y", yb)?,
                        ));
                    }
                    match &slots[slot] {
                        Some((x, y)) => (x.clone(), y.clone()),
                        None => unreachable!("slot filled above"),
                    }
                }
            };
            ctx.queue.write_buffer(&x_buf, 0, bytemuck::cast_slice(&xs));
            ctx.queue.write_buffer(&y_buf, 0, bytemuck::cast_slice(&ys));
            if let Some(store) = resident {
                store.x_uploaded.fetch_add(xb, Ordering::Relaxed);
            }
            let submitted = pass(&DeviceBatch {
                x: &x_buf,
                y: &y_buf,
                rows,
                y_host: &ys,
                x_host: Some(&xs),
            })?;
            in_flight[slot] = submitted;
            if let Some(list) = building.as_mut() {
                list.push(ResidentBatch {
                    x: x_buf,
                    y: y_buf,
                    y_host: ys,
                });
            }
            start += rows as u64;
            index += 1;
        }
        Ok(())
    })?;
    if let (Some(store), Some(list), Some(key)) = (resident, building, key) {
        store.insert(key, list, bytes);
    }
    Ok(())
}

/// [`for_each_batch`] for a source the device generates: each batch is drawn into its own
/// buffers (kept when the source becomes resident) or into one of two slots, then handed to
/// `pass`; only labels come back to the host.
#[allow(clippy::too_many_arguments)]
fn generate_batches(
    ctx: &GpuContext,
    resident: Option<&ResidentSamples>,
    key: Option<ResidentKey>,
    gen: &super::sample::Generator,
    n: u64,
    d: usize,
    rows_per_batch: usize,
    row_flops: f64,
    mut pass: impl FnMut(&DeviceBatch) -> Result<Option<wgpu::SubmissionIndex>>,
) -> Result<()> {
    let bytes = n * (d as u64 + 1) * 4;
    let mut building = match (resident, &key) {
        (Some(store), Some(_)) if store.budget() >= bytes => Some(Vec::new()),
        _ => None,
    };
    let rows_per_batch = rows_per_batch.max(1);
    let mut slots: [Option<(wgpu::Buffer, wgpu::Buffer)>; 2] = [None, None];
    let mut in_flight: [Option<wgpu::SubmissionIndex>; 2] = [None, None];
    let mut start = 0u64;
    let mut index = 0usize;
    let mut queued_rows = 0usize;
    while start < n {
        let rows = (rows_per_batch as u64).min(n - start) as usize;
        let (xb, yb) = ((rows * d * 4) as u64, (rows * 4) as u64);
        let own = resident_batch_buffers(ctx, &mut building, xb, yb)?;
        let slot = index % 2;
        if let Some(done) = in_flight[slot].take() {
            ctx.wait("samples generation", Some(done), rows as f64 * row_flops)?;
        }
        let (x_buf, y_buf) = match own {
            Some(pair) => pair,
            None => {
                if slots[slot].is_none() {
                    let most = rows_per_batch.min(n as usize);
                    slots[slot] = Some((
                        ctx.storage_buffer("samples x", (most * d * 4) as u64)?,
                        ctx.storage_buffer("samples y", (most * 4) as u64)?,
                    ));
                }
                match &slots[slot] {
                    Some((x, y)) => (x.clone(), y.clone()),
                    None => unreachable!("slot filled above"),
                }
            }
        };
        // The labels' readback waits for the pass work queued on earlier batches too.
        let queued = queued_rows as f64 * row_flops;
        let ys = gen.generate(ctx, start, rows, &x_buf, &y_buf, queued)?;
        queued_rows = rows;
        if let Some(store) = resident {
            store.generated.fetch_add(rows as u64, Ordering::Relaxed);
        }
        in_flight[slot] = pass(&DeviceBatch {
            x: &x_buf,
            y: &y_buf,
            rows,
            y_host: &ys,
            x_host: None,
        })?;
        if let Some(list) = building.as_mut() {
            list.push(ResidentBatch {
                x: x_buf,
                y: y_buf,
                y_host: ys,
            });
        }
        start += rows as u64;
        index += 1;
    }
    if let (Some(store), Some(list), Some(key)) = (resident, building, key) {
        store.insert(key, list, bytes);
    }
    Ok(())
}

/// One batch read from the source: x (rows x d), y, rows.
type Batch = (Vec<f32>, Vec<f32>, usize);

/// Rows one reader task reads of a streamed batch (several tasks read a batch in parallel).
const READ_PART_ROWS: usize = 16_384;

/// Reads `source` in batches of `batch_rows` and sends them until the source ends, the
/// receiver hangs up, or a read fails (the error is sent on). Each batch is read in parts of
/// [`READ_PART_ROWS`] on every core: positioned reads of a file, its finiteness scan and
/// conversion, and a view's arithmetic (centring, whitening) all run in parallel.
fn read_ahead(
    source: &dyn SampleSource,
    batch_rows: usize,
    tx: std::sync::mpsc::SyncSender<Result<Batch>>,
) {
    let d = source.dim();
    let n = source.len();
    let mut start = 0u64;
    while start < n {
        let rows = (batch_rows as u64).min(n - start) as usize;
        let read = read_parallel(source, start, rows, d);
        let failed = read.is_err();
        let got = read.as_ref().map_or(0, |b| b.2);
        if tx.send(read).is_err() || failed || got == 0 {
            break;
        }
        start += got as u64;
    }
}

/// Rows `start .. start + rows` of `source`, read in parts on every core and joined.
fn read_parallel(source: &dyn SampleSource, start: u64, rows: usize, d: usize) -> Result<Batch> {
    use rayon::prelude::*;
    let mut xs = vec![0.0f32; rows * d];
    let mut ys = vec![0.0f32; rows];
    let counts: Vec<usize> = xs
        .par_chunks_mut((READ_PART_ROWS * d).max(1))
        .zip(ys.par_chunks_mut(READ_PART_ROWS))
        .enumerate()
        .map(|(p, (xp, yp))| -> Result<usize> {
            let want = yp.len();
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let got = source.read(start + (p * READ_PART_ROWS) as u64, want, &mut x, &mut y)?;
            if got > want || x.len() != got * d || y.len() != got {
                return Err(Error::invalid(format!(
                    "{} returned {} x values and {} labels for {got} rows of d = {d}",
                    source.describe(),
                    x.len(),
                    y.len()
                )));
            }
            xp[..got * d].copy_from_slice(&x);
            yp[..got].copy_from_slice(&y);
            Ok(got)
        })
        .collect::<Result<_>>()?;
    // A part that came back short ends the batch there (a source shorter than it said).
    let mut got = 0;
    for (p, &c) in counts.iter().enumerate() {
        got = p * READ_PART_ROWS + c;
        if c < READ_PART_ROWS.min(rows - p * READ_PART_ROWS) {
            break;
        }
    }
    xs.truncate(got * d);
    ys.truncate(got);
    Ok((xs, ys, got))
}

/// Device buffers (x of `xb` bytes, y of `yb`) for the next batch of a resident copy while one is
/// being built; an allocation failure ends the copy (`building` becomes None) and the pass
/// streams on, any other error is returned.
fn resident_batch_buffers<T>(
    ctx: &GpuContext,
    building: &mut Option<T>,
    xb: u64,
    yb: u64,
) -> Result<Option<(wgpu::Buffer, wgpu::Buffer)>> {
    if building.is_none() {
        return Ok(None);
    }
    let alloc = ctx.capture("resident samples", || {
        (
            ctx.storage_buffer("resident x", xb),
            ctx.storage_buffer("resident y", yb),
        )
    });
    match alloc {
        Ok((Ok(x), Ok(y))) => Ok(Some((x, y))),
        Ok(_) | Err(GpuError::OutOfMemory(_)) => {
            *building = None;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
