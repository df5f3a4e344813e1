//! Benchmarks a user can run: `relu-fpt bench moments` times the moment pass of one or more
//! backends over one or more (d, K) and reports one JSON line per result, comparable with
//! `scripts/np_moment.py` (numpy's X^T X prints the same n, d, seconds, gflops fields), and
//! one table when there are several ([`moments_table`]); on the CPU it also states the speed
//! as a fraction of the machine's FMA peak (`relu-fpt bench peak`,
//! [`crate::backend::cpu::peak`]).

use crate::backend::cpu::peak::process_cpu_seconds;
use crate::backend::{Backend, Device};
use crate::data::{GaussianSource, MemorySource, SampleSource};
use crate::error::{Error, Result};
use crate::moments::{BinSpec, SampleWeight};
use crate::network::{Layer, Network};
use crate::safety::{check_memory, widths, MAX_FLAG_FLOPS};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Timed runs at least (after one warm-up).
pub const MIN_TIMED_RUNS: usize = 5;

/// Result of [`bench_moments`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MomentBench {
    /// The backend's device ("cpu" or "gpu" in the JSON).
    pub backend: Device,
    /// The backend's description (CPU threads or adapter name).
    pub adapter: String,
    /// Samples N.
    pub n: u64,
    /// Dimension d.
    pub d: usize,
    /// Bins K.
    pub bins: usize,
    /// Median wall time of one pass, seconds.
    pub seconds: f64,
    /// n d (d + 1) / seconds / 1e9 (the count np_moment.py uses).
    pub gflops: f64,
    /// n / seconds.
    pub samples_per_second: f64,
    /// Timed runs.
    pub runs: usize,
    /// Where the samples were: "host memory" (uploaded every pass on a GPU), or "generated on
    /// the device" (a GPU draws them itself and keeps them resident when they fit the
    /// residency budget, `RELU_FPT_GPU_RESIDENT_MIB`, so the timed passes read device memory).
    pub data: String,
    /// CPU moments micro-kernel ("avx512", "avx2", "portable"); None on a GPU.
    pub kernel: Option<String>,
    /// The machine's f32 FMA peak in GFLOP/s on all threads (measured in the same run or
    /// given); None on a GPU.
    pub peak_gflops: Option<f64>,
    /// gflops / peak_gflops.
    pub peak_fraction: Option<f64>,
    /// CPU time of one pass summed over the threads (median over the runs; Linux). On a machine
    /// busy with other work this, not the wall time, says how fast the kernel is.
    pub cpu_seconds: Option<f64>,
    /// One core's FMA peak per second of CPU time (from the same probe).
    pub peak_gflops_per_cpu_second: Option<f64>,
    /// n d (d + 1) / cpu_seconds / peak_gflops_per_cpu_second: the share of the cores' peak
    /// the pass reaches while it runs (idle spinning of the pool counts against it).
    pub cpu_time_fraction: Option<f64>,
}

impl MomentBench {
    /// Exactly one JSON line: backend, adapter, n, d, bins, seconds, gflops, then extras.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings and numbers serialises")
    }

    /// One human line: the backend, the sizes, the median, GFLOP/s and the peak's share.
    pub fn line(&self) -> String {
        let kernel = self
            .kernel
            .as_ref()
            .map_or(String::new(), |k| format!(", {k} kernel"));
        let mut peak = match (self.peak_gflops, self.peak_fraction) {
            (Some(p), Some(f)) => format!(", {:.0}% of the FMA peak {p:.1} GFLOP/s", 100.0 * f),
            _ => String::new(),
        };
        if let (Some(c), Some(f)) = (self.cpu_seconds, self.cpu_time_fraction) {
            peak += &format!(
                " ({:.0}% of the cores' peak over {c:.3} s of CPU time)",
                100.0 * f
            );
        }
        format!(
            "{} ({}{kernel}): N = {}, d = {}, K = {}: median {:.4} s over {} runs, {:.1} GFLOP/s (N d (d+1) / s){peak}, {:.3e} samples/s",
            self.backend,
            self.adapter,
            self.n,
            self.d,
            self.bins,
            self.seconds,
            self.runs,
            self.gflops,
            self.samples_per_second
        )
    }

    /// Records the FMA peak the speed is compared with: all threads' in GFLOP/s of wall time
    /// and, when known, one core's per second of CPU time.
    pub fn set_peak(&mut self, peak_gflops: f64, per_cpu_second: Option<f64>) {
        self.peak_gflops = Some(peak_gflops);
        self.peak_fraction = Some(self.gflops / peak_gflops);
        self.peak_gflops_per_cpu_second = per_cpu_second;
        self.cpu_time_fraction = self
            .cpu_seconds
            .zip(per_cpu_second)
            .map(|(c, p)| self.n as f64 * self.d as f64 * (self.d as f64 + 1.0) / c / 1e9 / p);
    }
}

/// Times `backend.moments` on n x d standard normal samples with `bins` bins: one warm-up,
/// then max(runs, 5) timed runs, reporting the median. On the CPU the samples sit in host
/// memory and their generation is not timed; on a GPU they are a built-in teacher's samples,
/// which the device generates in the warm-up and keeps when they fit its residency budget
/// (host memory would cap the pass at the bus speed, and n d floats may not fit the host).
/// For bins > 1 the spec uses a rank-2 basis (the first two axes) with equal-mass cells and
/// equal-mass y-bins per cell (quantiles of the first 2^17 rows), so that the spec has exactly
/// `bins` bins.
pub fn bench_moments(
    backend: &dyn Backend,
    n: u64,
    d: usize,
    bins: usize,
    runs: usize,
    progress: &indicatif::ProgressBar,
) -> Result<MomentBench> {
    check_sizes(n, d, bins)?;
    let samples = bench_samples(backend, n, d)?;
    time_moments(backend, &samples, bins, runs, progress)
}

/// [`bench_moments`] for every (d, K) of `dims` x `bins` on each backend in turn (each
/// backend's samples drawn once per d), checking every size before timing any. `each` sees
/// every result as it is made (to complete it and print it) before it joins the list.
pub fn bench_moments_grid(
    backends: &[&dyn Backend],
    n: u64,
    dims: &[usize],
    bins: &[usize],
    runs: usize,
    mut each: impl FnMut(&mut MomentBench) -> Result<()>,
) -> Result<Vec<MomentBench>> {
    if backends.is_empty() || dims.is_empty() || bins.is_empty() {
        return Err(Error::invalid(
            "bench moments: give at least one backend, one d and one K",
        ));
    }
    for &d in dims {
        for &k in bins {
            check_sizes(n, d, k)?;
        }
    }
    let mut out = Vec::with_capacity(backends.len() * dims.len() * bins.len());
    for &backend in backends {
        for &d in dims {
            let samples = bench_samples(backend, n, d)?;
            for &k in bins {
                let bar = crate::progress::bar(1, &format!("{} d={d} K={k}", backend.kind()));
                let mut r = time_moments(backend, &samples, k, runs, &bar)?;
                bar.finish_and_clear();
                each(&mut r)?;
                out.push(r);
            }
        }
    }
    Ok(out)
}

fn check_sizes(n: u64, d: usize, bins: usize) -> Result<()> {
    if n == 0 || d == 0 || bins == 0 {
        return Err(Error::invalid(format!(
            "bench moments: n = {n}, d = {d}, bins = {bins}: all must be positive"
        )));
    }
    if bins > 1 && d < 2 {
        return Err(Error::invalid(
            "bench moments: bins > 1 uses a rank-2 basis, so d must be at least 2",
        ));
    }
    Ok(())
}

/// The rows a backend's passes read, and where they are (see [`bench_moments`]).
struct BenchSamples {
    source: Box<dyn SampleSource>,
    data: &'static str,
    n: u64,
    d: usize,
}

fn bench_samples(backend: &dyn Backend, n: u64, d: usize) -> Result<BenchSamples> {
    let seed = 0x6d6f6d656e7473;
    let (source, data): (Box<dyn SampleSource>, &str) = if backend.kind() == Device::Gpu {
        let teacher = bench_teacher(d)?;
        let source = GaussianSource::new(teacher, n, seed, 0.0)?;
        (Box::new(source), "generated on the device")
    } else {
        (Box::new(bench_source(n as usize, d, seed)), "host memory")
    };
    Ok(BenchSamples { source, data, n, d })
}

fn time_moments(
    backend: &dyn Backend,
    samples: &BenchSamples,
    bins: usize,
    runs: usize,
    progress: &indicatif::ProgressBar,
) -> Result<MomentBench> {
    let (n, d) = (samples.n, samples.d);
    let source = samples.source.as_ref();
    let spec = bench_spec(source, bins)?;
    spec.validate()?;
    let runs = runs.max(MIN_TIMED_RUNS);
    progress.set_length(n * (runs as u64 + 1));
    backend.moments(source, &spec, SampleWeight::Unit, progress)?;
    let mut times = Vec::with_capacity(runs);
    let mut cpu_times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let cpu = process_cpu_seconds();
        let t = std::time::Instant::now();
        let m = backend.moments(source, &spec, SampleWeight::Unit, progress)?;
        times.push(t.elapsed().as_secs_f64());
        if let Some(c) = cpu.zip(process_cpu_seconds()).map(|(a, b)| b - a) {
            cpu_times.push(c);
        }
        if m.total_count() != n {
            return Err(Error::invalid(format!(
                "bench moments: the backend counted {} samples of {n}",
                m.total_count()
            )));
        }
    }
    times.sort_by(f64::total_cmp);
    let seconds = times[runs / 2];
    cpu_times.sort_by(f64::total_cmp);
    let cpu_seconds = (cpu_times.len() == runs).then(|| cpu_times[runs / 2]);
    Ok(MomentBench {
        backend: backend.kind(),
        adapter: backend.description(),
        n,
        d,
        bins,
        seconds,
        gflops: n as f64 * d as f64 * (d as f64 + 1.0) / seconds / 1e9,
        samples_per_second: n as f64 / seconds,
        runs,
        data: samples.data.to_string(),
        kernel: None,
        peak_gflops: None,
        peak_fraction: None,
        cpu_seconds,
        peak_gflops_per_cpu_second: None,
        cpu_time_fraction: None,
    })
}

/// One table of [`bench_moments_grid`]'s results: a line per backend (adapter, where its
/// samples were, kernel and FMA peak), then a row per (d, K) with each backend's median
/// seconds and GFLOP/s (and share of the FMA peak where known), and, when both a CPU and a GPU
/// ran, the GPU's speed over the CPU's (CPU seconds / GPU seconds). Backends and sizes keep
/// the order of the results.
pub fn moments_table(results: &[MomentBench]) -> String {
    let mut kinds: Vec<&MomentBench> = Vec::new();
    let mut sizes: Vec<(usize, usize)> = Vec::new();
    for r in results {
        if !kinds.iter().any(|k| k.backend == r.backend) {
            kinds.push(r);
        }
        if !sizes.contains(&(r.d, r.bins)) {
            sizes.push((r.d, r.bins));
        }
    }
    let find = |kind: Device, d: usize, k: usize| {
        results
            .iter()
            .find(|r| r.backend == kind && r.d == d && r.bins == k)
    };
    let with_peak = |kind: Device| {
        results
            .iter()
            .any(|r| r.backend == kind && r.peak_fraction.is_some())
    };
    let ratio = kinds.iter().any(|k| k.backend == Device::Cpu)
        && kinds.iter().any(|k| k.backend == Device::Gpu);
    let mut s = String::new();
    for k in &kinds {
        let kernel = k
            .kernel
            .as_ref()
            .map_or(String::new(), |v| format!(", {v} kernel"));
        let peak = k
            .peak_gflops
            .map_or(String::new(), |p| format!(", FMA peak {p:.1} GFLOP/s"));
        s += &format!(
            "{}: {}{kernel}, samples: {}{peak}\n",
            k.backend, k.adapter, k.data
        );
    }
    if let Some(first) = results.first() {
        s += &format!(
            "N = {}, median of {} timed runs after a warm-up; GFLOP/s = N d (d+1) / s\n",
            first.n, first.runs
        );
    }
    s += &format!("{:>6} {:>5}", "d", "K");
    for k in &kinds {
        let b = k.backend;
        s += &format!(" {:>10} {:>12}", format!("{b} s"), format!("{b} GFLOP/s"));
        if with_peak(b) {
            s += &format!(" {:>9}", format!("{b} %peak"));
        }
    }
    if ratio {
        s += &format!(" {:>8}", "gpu/cpu");
    }
    s += "\n";
    for &(d, k) in &sizes {
        s += &format!("{d:>6} {k:>5}");
        for kind in &kinds {
            let b = kind.backend;
            match find(b, d, k) {
                Some(r) => s += &format!(" {:>10.4} {:>12.1}", r.seconds, r.gflops),
                None => s += &format!(" {:>10} {:>12}", "-", "-"),
            }
            if with_peak(b) {
                let f = find(b, d, k).and_then(|r| r.peak_fraction);
                s += &format!(
                    " {:>9}",
                    f.map_or("-".to_string(), |f| format!("{:.0}%", 100.0 * f))
                );
            }
        }
        if ratio {
            let r = find(Device::Cpu, d, k)
                .zip(find(Device::Gpu, d, k))
                .map(|(c, g)| c.seconds / g.seconds);
            s += &format!(
                " {:>8}",
                r.map_or("-".to_string(), |r| format!("{}x", crate::progress::num(r)))
            );
        }
        s += "\n";
    }
    if ratio {
        s += "gpu/cpu: the GPU's speed over the CPU's on the same (d, K) (CPU seconds / GPU seconds)\n";
    }
    s
}

/// n x d standard normals (seeded, generated in parallel blocks) with labels y = x0 x1 + x2.
fn bench_source(n: usize, d: usize, seed: u64) -> MemorySource {
    const BLOCK: usize = 4096;
    let mut x = vec![0.0f32; n * d];
    x.par_chunks_mut(BLOCK * d)
        .enumerate()
        .for_each(|(b, block)| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ (b as u64).wrapping_mul(0x9e37));
            for v in block {
                let z: f64 = rng.sample(StandardNormal);
                *v = z as f32;
            }
        });
    let y = x
        .chunks_exact(d)
        .map(|r| {
            let g = |j: usize| r.get(j).copied().unwrap_or(0.0);
            g(0) * g(1) + g(2)
        })
        .collect();
    MemorySource { dim: d, x, y }
}

/// A teacher with labels of the kind [`bench_source`] uses:
/// y = relu(x0 + x1) - relu(x0 - x1) + relu(x2) (terms on axes past d are dropped).
fn bench_teacher(d: usize) -> Result<Network> {
    let mut w = vec![0.0; 3 * d];
    let put = |w: &mut Vec<f64>, row: usize, col: usize, v: f64| {
        if col < d {
            w[row * d + col] = v;
        }
    };
    put(&mut w, 0, 0, 1.0);
    put(&mut w, 0, 1, 1.0);
    put(&mut w, 1, 0, 1.0);
    put(&mut w, 1, 1, -1.0);
    put(&mut w, 2, 2, 1.0);
    let layers = vec![
        Layer::new(d, 3, w, vec![0.0, 0.0, 0.0])?,
        Layer::new(3, 1, vec![1.0, -1.0, 1.0], vec![0.0])?,
    ];
    Ok(Network::new(d, layers)?)
}

/// K = bins: cells_per_axis^2 cells on the first two axes times bins / cells_per_axis^2 y-bins,
/// with the largest cells_per_axis whose square divides `bins`. Edges are empirical quantiles
/// of the first 2^17 rows.
fn bench_spec(source: &dyn SampleSource, bins: usize) -> Result<BinSpec> {
    let d = source.dim();
    if bins == 1 {
        return Ok(BinSpec::single(d));
    }
    let per_axis = (1..=bins)
        .take_while(|a| a * a <= bins)
        .filter(|a| bins.is_multiple_of(a * a))
        .last()
        .unwrap_or(1);
    let y_bins = bins / (per_axis * per_axis);
    let mut basis = vec![0.0; 2 * d];
    basis[0] = 1.0;
    basis[d + 1] = 1.0;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    source.read(0, 1 << 17, &mut x, &mut y)?;
    let column = |j: usize| x.iter().skip(j).step_by(d).copied().collect();
    let axis_edges = vec![
        quantiles(column(0), per_axis),
        quantiles(column(1), per_axis),
    ];
    let y_edge = quantiles(y.clone(), y_bins);
    Ok(BinSpec {
        dim: d,
        basis,
        axis_edges,
        y_edges: vec![y_edge; per_axis * per_axis],
    })
}

/// The `parts - 1` inner equal-mass edges of the values.
fn quantiles(mut v: Vec<f32>, parts: usize) -> Vec<f64> {
    v.sort_by(f32::total_cmp);
    (1..parts)
        .map(|j| v[(j * v.len() / parts).min(v.len() - 1)] as f64)
        .collect()
}

/// Result of [`bench_kernel`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KernelBench {
    /// CPU moments micro-kernel ("avx512", "avx2", "portable").
    pub kernel: String,
    /// Threads, each summing its own copy of the rows.
    pub threads: usize,
    /// Dimension d.
    pub d: usize,
    /// Rows each thread sums over and over (they stay in its caches when small).
    pub rows: usize,
    /// Rows summed per thread in one timed run (`rows` repeated).
    pub passes_rows: u64,
    /// Median wall time of one timed run, seconds.
    pub seconds: f64,
    /// threads passes_rows d (d + 1) / seconds / 1e9 (the count `bench moments` uses).
    pub gflops: f64,
    /// CPU time of one timed run summed over the threads (median; Linux): on a busy machine
    /// this, not the wall time, says how fast the kernel is.
    pub cpu_seconds: Option<f64>,
    /// threads passes_rows d (d + 1) / cpu_seconds / 1e9: one core's speed per second of CPU
    /// time, to compare with `bench peak`'s `gflops_per_cpu_second`.
    pub gflops_per_cpu_second: Option<f64>,
}

impl KernelBench {
    /// The JSON line of `bench kernel`: these fields, and the speed against the FMA peak
    /// (`peak` GFLOP/s on all threads, `per_cpu_second` one core's per second of CPU time).
    pub fn json_against(&self, peak: f64, per_cpu_second: Option<f64>) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("numbers and strings");
        v["peak_gflops"] = peak.into();
        v["peak_fraction"] = (self.gflops / peak).into();
        v["peak_gflops_per_cpu_second"] = per_cpu_second.into();
        v["cpu_time_fraction"] = self
            .gflops_per_cpu_second
            .zip(per_cpu_second)
            .map(|(g, p)| g / p)
            .into();
        v
    }

    /// One human line: the same against the same peak.
    pub fn line_against(&self, peak: f64, per_cpu_second: Option<f64>) -> String {
        let cpu = match (self.gflops_per_cpu_second, per_cpu_second) {
            (Some(g), Some(p)) => format!(
                " ({:.0}% of one core's peak per second of CPU time, {g:.1} of {p:.1})",
                100.0 * g / p
            ),
            _ => String::new(),
        };
        format!(
            "{} kernel in cache ({} threads, {} rows of d = {} each, {} rows per thread): median {:.4} s, {:.1} GFLOP/s, {:.0}% of the FMA peak {peak:.1} GFLOP/s{cpu}",
            self.kernel,
            self.threads,
            self.rows,
            self.d,
            self.passes_rows,
            self.seconds,
            self.gflops,
            100.0 * self.gflops / peak
        )
    }
}

/// What `bench peak` measured: the FMA loop on each instruction set, the best of them, and the
/// memory read bandwidth.
pub struct PeakBench<'a> {
    pub peaks: &'a [crate::backend::cpu::peak::FmaPeak],
    /// The loop with the highest total (one of `peaks`).
    pub best: &'a crate::backend::cpu::peak::FmaPeak,
    /// One core's peak per second of CPU time ([`crate::backend::cpu::peak::best_of`]).
    pub per_cpu_second: Option<f64>,
    pub read_gbytes_per_s: f64,
    /// Repeats of the read probe.
    pub read_repeats: usize,
}

impl PeakBench<'_> {
    /// The JSON line: the best loop's fields at the top (what `bench moments` compares with),
    /// then each loop's.
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.best).expect("numbers and strings");
        v["gflops_per_cpu_second"] = self.per_cpu_second.into();
        v["by_isa"] = serde_json::to_value(self.peaks).expect("numbers and strings");
        v["read_gbytes_per_s"] = self.read_gbytes_per_s.into();
        v
    }

    /// Human lines: one per loop, the peak, the read bandwidth.
    pub fn lines(&self) -> String {
        let mut s = String::new();
        for p in self.peaks {
            let per: Vec<String> = p
                .gflops_per_thread
                .iter()
                .map(|g| format!("{g:.1}"))
                .collect();
            s += &format!(
                "f32 FMA loop ({}, {} threads, best of {} repeats of {:.2} s): {} GFLOP/s per core, {:.1} GFLOP/s total{}\n",
                p.isa,
                p.threads,
                p.repeats,
                p.seconds,
                per.join(", "),
                p.gflops_total,
                p.gflops_per_cpu_second.map_or(String::new(), |c| format!(
                    "; {c:.1} GFLOP/s per second of CPU time on one core"
                ))
            );
        }
        s += &format!(
            "peak: {:.1} GFLOP/s on all threads ({}){}\n",
            self.best.gflops_total,
            self.best.isa,
            self.per_cpu_second.map_or(String::new(), |c| format!(
                ", {c:.1} GFLOP/s per core per second of CPU time"
            ))
        );
        s += &format!(
            "memory read: {:.1} GB/s on all threads (a {} MiB buffer, best of {} repeats)\n",
            self.read_gbytes_per_s,
            crate::backend::cpu::peak::READ_PROBE_BYTES >> 20,
            self.read_repeats
        );
        s
    }
}

/// The moments kernel on data already in cache: each rayon thread runs the weighted SYRK
/// (unit weights, K = 1, runs of `rows` rows added into f64) over its own `rows` x d standard
/// normals until it has summed `total_rows` / threads rows; the median of `runs` timings. With
/// `rows` d 4 bytes well inside L2 this is the kernel's ceiling without the memory stream.
pub fn bench_kernel(
    isa: crate::backend::cpu::syrk::Isa,
    d: usize,
    rows: usize,
    total_rows: u64,
    runs: usize,
) -> Result<KernelBench> {
    use crate::backend::cpu::syrk::{tri_offset, Rows, Syrk, RUN_ROWS};
    if d == 0 || rows == 0 || rows > RUN_ROWS || total_rows == 0 {
        return Err(Error::invalid(format!(
            "bench kernel: d = {d}, rows = {rows}, n = {total_rows}: d and n must be positive \
             and rows in 1..={RUN_ROWS}"
        )));
    }
    struct Block {
        x: Vec<f32>,
        d: usize,
    }
    impl Rows for Block {
        fn row(&self, i: usize) -> &[f32] {
            &self.x[i * self.d..(i + 1) * self.d]
        }
        fn weight(&self, _: usize) -> f32 {
            1.0
        }
    }
    let threads = rayon::current_num_threads();
    let per_thread = total_rows.div_ceil(threads as u64);
    let repeats = per_thread.div_ceil(rows as u64);
    let block = bench_source(rows, d, 0x6b65726e656c);
    let timed: Vec<(f64, Option<f64>)> = (0..runs.max(1) + 1)
        .map(|_| {
            let cpu = process_cpu_seconds();
            let t = std::time::Instant::now();
            let sums: Vec<f64> = rayon::broadcast(|_| {
                let set = Block {
                    x: block.x.clone(),
                    d,
                };
                let mut syrk = Syrk::new(isa, d);
                let mut xx = vec![0.0f64; tri_offset(d, d)];
                let mut sx = vec![0.0f64; d];
                for _ in 0..repeats {
                    syrk.run(&set, 0..rows, 0..d, false, &mut xx, &mut sx);
                }
                xx[0]
            });
            std::hint::black_box(sums);
            let wall = t.elapsed().as_secs_f64();
            (wall, cpu.zip(process_cpu_seconds()).map(|(a, b)| b - a))
        })
        .skip(1)
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let seconds = median(timed.iter().map(|t| t.0).collect());
    let cpu_seconds = timed
        .iter()
        .map(|t| t.1)
        .collect::<Option<Vec<f64>>>()
        .map(median);
    let done = threads as u64 * repeats * rows as u64;
    let flops = done as f64 * d as f64 * (d as f64 + 1.0);
    Ok(KernelBench {
        kernel: isa.name().to_string(),
        threads,
        d,
        rows,
        passes_rows: repeats * rows as u64,
        seconds,
        gflops: flops / seconds / 1e9,
        cpu_seconds,
        gflops_per_cpu_second: cpu_seconds.map(|c| flops / c / 1e9),
    })
}

/// `bench moments`' sizes, checked before the FMA peak is measured: positive, and the
/// samples (held in host memory on the CPU) with every thread's accumulators within memory.
pub fn check_bench_moments(n: u64, dims: &[usize], bins: &[usize]) -> Result<()> {
    if n == 0 || dims.is_empty() || dims.contains(&0) || bins.is_empty() || bins.contains(&0) {
        return Err(Error::invalid(format!(
            "bench moments --n {n} --d {} --bins {}: every size must be at least 1",
            widths(dims),
            widths(bins)
        )));
    }
    if bins.iter().any(|&k| k > 1) && dims.iter().any(|&d| d < 2) {
        return Err(Error::invalid(
            "bench moments: --bins above 1 use a rank-2 basis, so every --d must be at least 2",
        ));
    }
    let threads = rayon::current_num_threads() as u128;
    for &d in dims {
        let d128 = d as u128;
        let k = bins.iter().copied().max().unwrap_or(1) as u128;
        let need = n as u128 * d128 * 4 + threads * k * (d128 * (d128 + 3) / 2 + 4) * 8;
        check_memory(
            need,
            &format!("bench moments --n {n} --d {d} (the samples in host memory and {threads} threads' sums)"),
            "lower --n or --d",
        )?;
    }
    Ok(())
}

/// `bench kernel`'s sizes, checked before the FMA peak is measured.
pub fn check_bench_kernel(d: usize, rows: usize, n: u64, runs: usize) -> Result<()> {
    let most = crate::backend::cpu::syrk::RUN_ROWS;
    if d == 0 || rows == 0 || rows > most || n == 0 || runs == 0 {
        return Err(Error::invalid(format!(
            "bench kernel --d {d} --rows {rows} --n {n} --runs {runs}: --d, --n and --runs must be at least 1 and --rows in 1..={most}"
        )));
    }
    let threads = rayon::current_num_threads() as u128;
    let (d, rows) = (d as u128, rows as u128);
    let need = threads * (2 * rows * d * 4 + d * (d + 1) / 2 * 8 + d * 8);
    check_memory(
        need,
        &format!(
            "bench kernel --d {d} --rows {rows} ({threads} threads, each with its rows and d (d + 1) / 2 sums)"
        ),
        "lower --d (the kernel's in-cache figure needs only a few hundred)",
    )?;
    let flops = n as f64 * (d * d) as f64 * (runs as f64 + 1.0);
    if flops > MAX_FLAG_FLOPS {
        return Err(Error::invalid(format!(
            "bench kernel --d {d} --n {n} --runs {runs}: {}; refused above {MAX_FLAG_FLOPS:.0e} flops: lower --n or --d",
            crate::safety::flops(flops)
        )));
    }
    Ok(())
}

/// Result of [`bench_trainer`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainerBench {
    /// Threads of the pool the minibatches' parts are shared over.
    pub threads: usize,
    /// r, then the hidden widths, then 1: the network on z = B x that is trained (B fixed, as
    /// in the descent and the deep-net stage).
    pub widths: Vec<usize>,
    pub rows: usize,
    pub batch: usize,
    /// Passes over the rows in one timed run.
    pub passes: usize,
    /// Median wall time of one timed run, seconds.
    pub seconds: f64,
    /// seconds / (passes rows), microseconds.
    pub us_per_row: f64,
    /// Multiplies and adds of a row's forward pass, weight gradient and input deltas (the first
    /// layer's inputs, z, get none) over the median time, GFLOP/s.
    pub gflops: f64,
    /// A hash of the trained parameters' bits: the same on any thread count and machine.
    pub params_hash: String,
}

/// `bench trainer`: Adam passes of the CPU trainer over `rows` fixed rows of z (normal, labels
/// a fixed function of them) with B fixed, from one fixed start, `runs` timed runs (the median
/// is reported) after one warm-up; each run starts from the same parameters.
pub fn bench_trainer(
    widths: &[usize],
    rows: usize,
    batch: usize,
    passes: usize,
    runs: usize,
) -> Result<TrainerBench> {
    use crate::backend::cpu::trainer::train_window_on_z;
    use crate::backend::trainer::{Adam, FactoredShape};
    check_bench_trainer(widths, rows, batch, passes, runs)?;
    let r = widths[0];
    let mut all = widths.to_vec();
    all.push(1);
    // d = r: B's entries are not read (z is given), only counted in the parameter vector.
    let shape = FactoredShape {
        input_dim: r,
        widths: all.clone(),
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let z: Vec<f64> = (0..rows * r).map(|_| rng.sample(StandardNormal)).collect();
    let y: Vec<f32> = z
        .chunks_exact(r)
        .map(|row| (row[0].abs() - 0.5 * row[r - 1]) as f32)
        .collect();
    let mut start = vec![0.0; shape.params()];
    let mut at = shape.basis_len();
    for w in all.windows(2) {
        let scale = (2.0 / w[0] as f64).sqrt();
        for _ in 0..w[0] * w[1] {
            start[at] = scale * rng.sample::<f64, _>(StandardNormal);
            at += 1;
        }
        at += w[1];
    }
    let steps = passes * rows.div_ceil(batch);
    let run = || -> Result<Vec<f64>> {
        let mut p = start.clone();
        let mut adam = Adam::new(p.len(), 5e-3, steps);
        for _ in 0..passes {
            train_window_on_z(&shape, &z, &y, batch, &mut p, &mut adam)?;
        }
        Ok(p)
    };
    let mut last = run()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = std::time::Instant::now();
        last = run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    let macs: usize = all.windows(2).map(|w| w[0] * w[1]).sum::<usize>() * 3 - r * all[1];
    let row_reads = (passes * rows) as f64;
    let hash = last
        .iter()
        .fold(0u64, |h, v| h.rotate_left(5) ^ v.to_bits());
    Ok(TrainerBench {
        threads: rayon::current_num_threads(),
        widths: all,
        rows,
        batch,
        passes,
        seconds,
        us_per_row: seconds / row_reads * 1e6,
        gflops: 2.0 * macs as f64 * row_reads / seconds / 1e9,
        params_hash: format!("{hash:016x}"),
    })
}

impl TrainerBench {
    /// The line `bench trainer` prints.
    pub fn line(&self) -> String {
        format!(
            "trainer widths [{}], {} rows, batch {}, {} passes, {} threads: {:.3} s a run, {:.3} us a row, {:.2} GFLOP/s (f64 multiplies and adds, no FMA); parameters {}",
            widths(&self.widths),
            self.rows,
            self.batch,
            self.passes,
            self.threads,
            self.seconds,
            self.us_per_row,
            self.gflops,
            self.params_hash
        )
    }
}

/// `bench trainer`'s sizes, checked before anything is drawn.
pub fn check_bench_trainer(
    widths: &[usize],
    rows: usize,
    batch: usize,
    passes: usize,
    runs: usize,
) -> Result<()> {
    let bad = widths.len() < 2
        || widths.len() > 9
        || widths.iter().any(|&w| w == 0 || w > 1024)
        || rows == 0
        || batch == 0
        || passes == 0
        || runs == 0;
    let flags = format!(
        "bench trainer --widths {} --rows {rows} --batch {batch} --passes {passes} --runs {runs}",
        crate::safety::widths(widths)
    );
    if bad {
        return Err(Error::invalid(format!(
            "{flags}: --widths needs r and 1 to 8 hidden widths, each in 1..=1024; --rows, --batch, --passes and --runs at least 1"
        )));
    }
    check_memory(
        rows as u128 * (widths[0] as u128 * 8 + 4),
        &format!("{flags} (the rows of z and y in memory)"),
        "lower --rows",
    )?;
    let macs: f64 = widths.windows(2).map(|w| (w[0] * w[1]) as f64).sum::<f64>() * 3.0;
    let flops = 2.0 * macs * rows as f64 * passes as f64 * (runs as f64 + 1.0);
    if flops > MAX_FLAG_FLOPS {
        return Err(Error::invalid(format!(
            "{flags}: {}; refused above {MAX_FLAG_FLOPS:.0e} flops: lower --rows or --passes",
            crate::safety::flops(flops)
        )));
    }
    Ok(())
}

/// `bench search`'s sizes, checked before any teacher is sampled: the rows of a case (its
/// training rows and a quarter as many validation rows, 8 bytes each at the least) within
/// memory, and the candidates' work within [`MAX_FLAG_FLOPS`].
pub fn check_bench_search(rows: usize, budgets: &[usize]) -> Result<()> {
    if rows == 0 || budgets.is_empty() || budgets.contains(&0) {
        return Err(Error::invalid(format!(
            "bench search --rows {rows} --budgets {}: --rows and every budget must be at least 1",
            widths(budgets)
        )));
    }
    let rows128 = rows as u128;
    check_memory(
        (rows128 + rows128 / 4) * 8,
        &format!("bench search --rows {rows} (each case's samples in memory)"),
        "lower --rows (default 80000)",
    )?;
    let work: f64 = budgets
        .iter()
        .map(|&b| b as f64 * 1.25 * rows as f64 * 20.0)
        .sum();
    if work > MAX_FLAG_FLOPS {
        return Err(Error::invalid(format!(
            "bench search --budgets {} --rows {rows}: at least {} per case; refused above {MAX_FLAG_FLOPS:.0e} flops: lower --budgets or --rows",
            widths(budgets),
            crate::safety::flops(work)
        )));
    }
    Ok(())
}
