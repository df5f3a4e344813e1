//! The machine's own limit for the CPU kernels: a register-only f32 FMA loop (no memory
//! traffic, enough independent accumulators to cover the FMA latency) run on every thread of
//! the rayon pool at once. `relu-fpt bench` states kernel speeds as a fraction of it.

use super::syrk::Isa;
use std::time::Instant;

/// Result of [`measure`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FmaPeak {
    /// Instruction set of the loop: "avx512", "avx2" or "portable".
    pub isa: String,
    /// Threads that ran the loop at the same time (the rayon pool).
    pub threads: usize,
    /// GFLOP/s of each thread (an FMA counts 2 flops per lane), in the best repeat.
    pub gflops_per_thread: Vec<f64>,
    /// All threads' flops over the slowest thread's time, best of the repeats.
    pub gflops_total: f64,
    /// Seconds of one repeat (the slowest thread), best repeat.
    pub seconds: f64,
    /// One core's peak in flops per second of CPU time (each thread's flops over the time it
    /// was actually on a core, averaged over the threads; best repeat): unlike the wall-clock
    /// figures it holds on a machine busy with other work. None where the OS does not say.
    pub gflops_per_cpu_second: Option<f64>,
    /// Timed repeats.
    pub repeats: usize,
}

/// Runs the FMA loop of `isa` on every rayon thread at once for about `seconds` per repeat,
/// `repeats` times, and reports the best repeat (the peak is a ceiling; a busy machine only
/// lowers it). The ISA must be available.
pub fn measure(isa: Isa, seconds: f64, repeats: usize) -> FmaPeak {
    assert!(isa.available(), "{} is not available", isa.name());
    // Calibrate on one thread: iterations per second, the best of three timings of at least
    // 10 ms (one timing may include a preemption that would make the real runs far too short).
    let mut iters = 1u64 << 14;
    while time_loop(isa, iters) < 0.01 {
        iters *= 4;
    }
    let rate = (0..3)
        .map(|_| iters as f64 / time_loop(isa, iters))
        .fold(0.0, f64::max);
    let iters = ((seconds.max(0.01) * rate) as u64).max(1);
    let flops = iters as f64 * flops_per_iteration(isa);
    let threads = rayon::current_num_threads();
    let mut best: Option<FmaPeak> = None;
    let mut best_cpu: Option<f64> = None;
    for _ in 0..repeats.max(1) {
        let timed: Vec<(f64, Option<f64>)> = rayon::broadcast(|_| {
            let cpu = thread_cpu_seconds();
            let t = Instant::now();
            std::hint::black_box(fma_loop(isa, iters));
            let wall = t.elapsed().as_secs_f64();
            (wall, cpu.zip(thread_cpu_seconds()).map(|(a, b)| b - a))
        });
        let times: Vec<f64> = timed.iter().map(|t| t.0).collect();
        let per_cpu_second: Option<Vec<f64>> = timed
            .iter()
            .map(|t| t.1.filter(|c| *c > 0.0).map(|c| flops / c / 1e9))
            .collect();
        let per_cpu_second = per_cpu_second.map(|v| v.iter().sum::<f64>() / v.len() as f64);
        let slowest = times.iter().copied().fold(0.0, f64::max);
        let total = flops * times.len() as f64 / slowest / 1e9;
        // Both figures are ceilings: a busy machine only lowers them, so keep the best.
        if let Some(c) = per_cpu_second {
            best_cpu = Some(best_cpu.map_or(c, |b: f64| b.max(c)));
        }
        if best.as_ref().is_none_or(|b| total > b.gflops_total) {
            best = Some(FmaPeak {
                isa: isa.name().to_string(),
                threads,
                gflops_per_thread: times.iter().map(|t| flops / t / 1e9).collect(),
                gflops_total: total,
                seconds: slowest,
                gflops_per_cpu_second: None,
                repeats: repeats.max(1),
            });
        }
    }
    let mut best = best.expect("at least one repeat");
    best.gflops_per_cpu_second = best_cpu;
    best
}

/// Wall seconds of `iters` rounds of the loop on this thread.
fn time_loop(isa: Isa, iters: u64) -> f64 {
    let t = Instant::now();
    std::hint::black_box(fma_loop(isa, iters));
    t.elapsed().as_secs_f64()
}

/// [`measure`] on every SIMD instruction set the CPU has (the portable loop only when it has
/// none), widest first. The machine's peak is the best of them: a core may run AVX-512 at a
/// lower clock (or on fewer FMA ports) than AVX2, so the widest loop is not always the fastest.
pub fn measure_all(seconds: f64, repeats: usize) -> Vec<FmaPeak> {
    let simd: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| i.available())
        .collect();
    let isas = if simd.is_empty() {
        vec![Isa::Portable]
    } else {
        simd
    };
    isas.into_iter()
        .map(|isa| measure(isa, seconds, repeats))
        .collect()
}

/// The machine's peak from [`measure_all`]'s results: the best total GFLOP/s of wall time and
/// the best per second of CPU time (each a ceiling, so the best of the loops).
pub fn best_of(peaks: &[FmaPeak]) -> (f64, Option<f64>) {
    let wall = peaks.iter().map(|p| p.gflops_total).fold(0.0, f64::max);
    let cpu = peaks
        .iter()
        .filter_map(|p| p.gflops_per_cpu_second)
        .reduce(f64::max);
    (wall, cpu)
}

/// Seconds this thread has run on a CPU (Linux: /proc/thread-self/schedstat, nanoseconds).
pub fn thread_cpu_seconds() -> Option<f64> {
    schedstat_seconds("/proc/thread-self/schedstat")
}

/// Seconds all threads of this process have run on a CPU, summed (Linux; None elsewhere).
pub fn process_cpu_seconds() -> Option<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        total += schedstat_seconds(path.to_str()?)?;
    }
    Some(total)
}

fn schedstat_seconds(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 * 1e-9)
}

/// Accumulators of the AVX-512 loop: 2 FMA ports x 4 cycles latency need 8; 24 leaves slack.
const ZMM_CHAINS: usize = 24;
/// Accumulators of the AVX2 loop (16 ymm registers, two hold the operands).
const YMM_CHAINS: usize = 12;
/// Lanes of the portable loop.
const PORTABLE_LANES: usize = 64;

fn flops_per_iteration(isa: Isa) -> f64 {
    match isa {
        Isa::Avx512 => (ZMM_CHAINS * 16 * 2) as f64,
        Isa::Avx2 => (YMM_CHAINS * 8 * 2) as f64,
        Isa::Portable => (PORTABLE_LANES * 2) as f64,
    }
}

/// `iters` rounds of an FMA on every accumulator (at least one round).
fn fma_loop(isa: Isa, iters: u64) -> f32 {
    let a = std::hint::black_box(0.001_f32);
    let b = std::hint::black_box(0.001_f32);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `measure` checked that the CPU has AVX-512F.
        Isa::Avx512 => unsafe { fma_loop_avx512(iters, a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `measure` checked that the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { fma_loop_avx2(iters, a, b) },
        _ => fma_loop_portable(iters, a, b),
    }
}

// The loops are written in assembly: compiled from intrinsics, LLVM rotates the accumulators
// through spare registers and the stack, and the loop would no longer measure the FMA units.
// Each accumulator gets acc += a * b (one dependency chain per register); a = b = 1e-3 keeps
// the values small and far from denormals for any practical iteration count.

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: u64, a: f32, b: f32) -> f32 {
    use std::arch::x86_64::*;
    let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
    std::arch::asm!(
        "vxorps zmm0, zmm0, zmm0",
        "vxorps zmm1, zmm1, zmm1",
        "vxorps zmm2, zmm2, zmm2",
        "vxorps zmm3, zmm3, zmm3",
        "vxorps zmm4, zmm4, zmm4",
        "vxorps zmm5, zmm5, zmm5",
        "vxorps zmm6, zmm6, zmm6",
        "vxorps zmm7, zmm7, zmm7",
        "vxorps zmm8, zmm8, zmm8",
        "vxorps zmm9, zmm9, zmm9",
        "vxorps zmm10, zmm10, zmm10",
        "vxorps zmm11, zmm11, zmm11",
        "vxorps zmm12, zmm12, zmm12",
        "vxorps zmm13, zmm13, zmm13",
        "vxorps zmm14, zmm14, zmm14",
        "vxorps zmm15, zmm15, zmm15",
        "vxorps zmm16, zmm16, zmm16",
        "vxorps zmm17, zmm17, zmm17",
        "vxorps zmm18, zmm18, zmm18",
        "vxorps zmm19, zmm19, zmm19",
        "vxorps zmm20, zmm20, zmm20",
        "vxorps zmm21, zmm21, zmm21",
        "vxorps zmm22, zmm22, zmm22",
        "vxorps zmm23, zmm23, zmm23",
        "2:",
        "vfmadd231ps zmm0, zmm30, zmm31",
        "vfmadd231ps zmm1, zmm30, zmm31",
        "vfmadd231ps zmm2, zmm30, zmm31",
        "vfmadd231ps zmm3, zmm30, zmm31",
        "vfmadd231ps zmm4, zmm30, zmm31",
        "vfmadd231ps zmm5, zmm30, zmm31",
        "vfmadd231ps zmm6, zmm30, zmm31",
        "vfmadd231ps zmm7, zmm30, zmm31",
        "vfmadd231ps zmm8, zmm30, zmm31",
        "vfmadd231ps zmm9, zmm30, zmm31",
        "vfmadd231ps zmm10, zmm30, zmm31",
        "vfmadd231ps zmm11, zmm30, zmm31",
        "vfmadd231ps zmm12, zmm30, zmm31",
        "vfmadd231ps zmm13, zmm30, zmm31",
        "vfmadd231ps zmm14, zmm30, zmm31",
        "vfmadd231ps zmm15, zmm30, zmm31",
        "vfmadd231ps zmm16, zmm30, zmm31",
        "vfmadd231ps zmm17, zmm30, zmm31",
        "vfmadd231ps zmm18, zmm30, zmm31",
        "vfmadd231ps zmm19, zmm30, zmm31",
        "vfmadd231ps zmm20, zmm30, zmm31",
        "vfmadd231ps zmm21, zmm30, zmm31",
        "vfmadd231ps zmm22, zmm30, zmm31",
        "vfmadd231ps zmm23, zmm30, zmm31",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iters.max(1) => _,
        in("zmm30") va,
        in("zmm31") vb,
        out("zmm0") _,
        out("zmm1") _,
        out("zmm2") _,
        out("zmm3") _,
        out("zmm4") _,
        out("zmm5") _,
        out("zmm6") _,
        out("zmm7") _,
        out("zmm8") _,
        out("zmm9") _,
        out("zmm10") _,
        out("zmm11") _,
        out("zmm12") _,
        out("zmm13") _,
        out("zmm14") _,
        out("zmm15") _,
        out("zmm16") _,
        out("zmm17") _,
        out("zmm18") _,
        out("zmm19") _,
        out("zmm20") _,
        out("zmm21") _,
        out("zmm22") _,
        out("zmm23") _,
        options(nostack),
    );
    a
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64, a: f32, b: f32) -> f32 {
    use std::arch::x86_64::*;
    let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
    std::arch::asm!(
        "vxorps ymm0, ymm0, ymm0",
        "vxorps ymm1, ymm1, ymm1",
        "vxorps ymm2, ymm2, ymm2",
        "vxorps ymm3, ymm3, ymm3",
        "vxorps ymm4, ymm4, ymm4",
        "vxorps ymm5, ymm5, ymm5",
        "vxorps ymm6, ymm6, ymm6",
        "vxorps ymm7, ymm7, ymm7",
        "vxorps ymm8, ymm8, ymm8",
        "vxorps ymm9, ymm9, ymm9",
        "vxorps ymm10, ymm10, ymm10",
        "vxorps ymm11, ymm11, ymm11",
        "2:",
        "vfmadd231ps ymm0, ymm14, ymm15",
        "vfmadd231ps ymm1, ymm14, ymm15",
        "vfmadd231ps ymm2, ymm14, ymm15",
        "vfmadd231ps ymm3, ymm14, ymm15",
        "vfmadd231ps ymm4, ymm14, ymm15",
        "vfmadd231ps ymm5, ymm14, ymm15",
        "vfmadd231ps ymm6, ymm14, ymm15",
        "vfmadd231ps ymm7, ymm14, ymm15",
        "vfmadd231ps ymm8, ymm14, ymm15",
        "vfmadd231ps ymm9, ymm14, ymm15",
        "vfmadd231ps ymm10, ymm14, ymm15",
        "vfmadd231ps ymm11, ymm14, ymm15",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iters.max(1) => _,
        in("ymm14") va,
        in("ymm15") vb,
        out("ymm0") _,
        out("ymm1") _,
        out("ymm2") _,
        out("ymm3") _,
        out("ymm4") _,
        out("ymm5") _,
        out("ymm6") _,
        out("ymm7") _,
        out("ymm8") _,
        out("ymm9") _,
        out("ymm10") _,
        out("ymm11") _,
        options(nostack),
    );
    a
}

fn fma_loop_portable(iters: u64, a: f32, b: f32) -> f32 {
    let mut acc = [0.0f32; PORTABLE_LANES];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = *v * a + b;
        }
    }
    acc.iter().sum()
}

/// Bytes of the buffer [`read_bandwidth`] streams: far past every cache level.
pub const READ_PROBE_BYTES: usize = 1 << 30;

/// The machine's memory read bandwidth in GB/s (1e9 bytes per second): every rayon thread
/// sums its share of a `bytes` buffer (written first, so its pages exist) at once, in 16
/// independent lanes; the best of `repeats` timings. It bounds any pass that streams x from
/// memory: at d floats per row, such a pass cannot exceed `gbytes_per_s / (4 d)` billion rows
/// per second whatever its kernel.
pub fn read_bandwidth(bytes: usize, repeats: usize) -> f64 {
    use rayon::prelude::*;
    const LANES: usize = 16;
    let threads = rayon::current_num_threads();
    let per_thread = (bytes / 4 / threads).div_ceil(LANES) * LANES;
    let mut buf = vec![0.0f32; per_thread * threads];
    buf.par_chunks_mut(per_thread)
        .for_each(|c| c.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32));
    let mut best = 0.0f64;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let sums: Vec<f32> = rayon::broadcast(|ctx| {
            let part = &buf[ctx.index() * per_thread..(ctx.index() + 1) * per_thread];
            let mut lanes = [0.0f32; LANES];
            for c in part.chunks_exact(LANES) {
                for (l, v) in lanes.iter_mut().zip(c) {
                    *l += v;
                }
            }
            lanes.iter().sum()
        });
        std::hint::black_box(sums);
        best = best.max((4 * per_thread * threads) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}
