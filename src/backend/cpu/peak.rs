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
    /// Timed repeats.
    pub repeats: usize,
}

/// Runs the FMA loop of `isa` on every rayon thread at once for about `seconds` per repeat,
/// `repeats` times, and reports the best repeat (the peak is a ceiling; a busy machine only
/// lowers it). The ISA must be available.
pub fn measure(isa: Isa, seconds: f64, repeats: usize) -> FmaPeak {
    assert!(isa.available(), "{} is not available", isa.name());
    // Calibrate on one thread: iterations per second.
    let mut iters = 1u64 << 16;
    let rate = loop {
        let t = Instant::now();
        std::hint::black_box(fma_loop(isa, iters));
        let s = t.elapsed().as_secs_f64();
        if s > 0.02 {
            break iters as f64 / s;
        }
        iters *= 4;
    };
    let iters = ((seconds.max(0.01) * rate) as u64).max(1);
    let flops = iters as f64 * flops_per_iteration(isa);
    let threads = rayon::current_num_threads();
    let mut best: Option<FmaPeak> = None;
    for _ in 0..repeats.max(1) {
        let times: Vec<f64> = rayon::broadcast(|_| {
            let t = Instant::now();
            std::hint::black_box(fma_loop(isa, iters));
            t.elapsed().as_secs_f64()
        });
        let slowest = times.iter().copied().fold(0.0, f64::max);
        let total = flops * times.len() as f64 / slowest / 1e9;
        if best.as_ref().is_none_or(|b| total > b.gflops_total) {
            best = Some(FmaPeak {
                isa: isa.name().to_string(),
                threads,
                gflops_per_thread: times.iter().map(|t| flops / t / 1e9).collect(),
                gflops_total: total,
                seconds: slowest,
                repeats: repeats.max(1),
            });
        }
    }
    best.expect("at least one repeat")
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

/// `iters` rounds of acc = acc * a + b on every accumulator; returns a sum so nothing is dead.
fn fma_loop(isa: Isa, iters: u64) -> f32 {
    // a < 1 keeps every accumulator bounded (it tends to b / (1 - a)), far from denormals.
    let a = std::hint::black_box(0.999_f32);
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: u64, a: f32, b: f32) -> f32 {
    use std::arch::x86_64::*;
    let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
    let mut acc = [_mm512_setzero_ps(); ZMM_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, va, vb);
        }
    }
    acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64, a: f32, b: f32) -> f32 {
    use std::arch::x86_64::*;
    let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
    let mut acc = [_mm256_setzero_ps(); YMM_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, va, vb);
        }
    }
    let mut lanes = [0.0f32; 8];
    let mut total = 0.0;
    for v in &acc {
        _mm256_storeu_ps(lanes.as_mut_ptr(), *v);
        total += lanes.iter().sum::<f32>();
    }
    total
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
