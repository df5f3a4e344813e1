//! Criterion benchmark of the binned moment pass: the CPU backend on each micro-kernel the CPU
//! runs (AVX-512, AVX2/FMA, portable), and the GPU backend when an adapter opens, at a few small
//! sizes (K = 1 and K = 64 with a rank-2 basis).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use relu_fpt::backend::cpu::syrk::{Isa, MomentKernel};
use relu_fpt::backend::cpu::CpuBackend;
use relu_fpt::backend::gpu::GpuBackend;
use relu_fpt::backend::Backend;
use relu_fpt::data::MemorySource;
use relu_fpt::moments::{BinSpec, SampleWeight};

const SIZES: [(usize, usize); 3] = [(65_536, 32), (65_536, 128), (16_384, 256)];

fn data(n: usize, d: usize) -> MemorySource {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let x: Vec<f32> = (0..n * d)
        .map(|_| {
            let z: f64 = rng.sample(StandardNormal);
            z as f32
        })
        .collect();
    let y = x.chunks_exact(d).map(|r| r[0] * r[1] + r[2]).collect();
    MemorySource { dim: d, x, y }
}

/// K = 64: 4 x 4 cells on the first two axes (quartiles of N(0,1)), 4 y-bins per cell.
fn spec64(d: usize) -> BinSpec {
    let mut basis = vec![0.0; 2 * d];
    basis[0] = 1.0;
    basis[d + 1] = 1.0;
    let quartiles = vec![-0.6745, 0.0, 0.6745];
    BinSpec {
        dim: d,
        basis,
        axis_edges: vec![quartiles.clone(); 2],
        y_edges: vec![vec![-0.8, 0.0, 0.8]; 16],
    }
}

fn bench_backend(c: &mut Criterion, name: &str, backend: &dyn Backend) {
    let mut group = c.benchmark_group(format!("moments/{name}"));
    group.sample_size(10);
    let progress = indicatif::ProgressBar::hidden();
    for (n, d) in SIZES {
        let source = data(n, d);
        group.throughput(Throughput::Elements(n as u64));
        for (bins, spec) in [(1, BinSpec::single(d)), (64, spec64(d))] {
            group.bench_with_input(
                BenchmarkId::new(format!("K{bins}"), format!("n{n}_d{d}")),
                &spec,
                |b, spec| {
                    b.iter(|| {
                        backend
                            .moments(&source, spec, SampleWeight::Unit, &progress)
                            .expect("moments")
                    })
                },
            );
        }
    }
    group.finish();
}

fn moments(c: &mut Criterion) {
    for (kernel, isa) in [
        (MomentKernel::Avx512, Isa::Avx512),
        (MomentKernel::Avx2, Isa::Avx2),
        (MomentKernel::Portable, Isa::Portable),
    ] {
        if isa.available() {
            let cpu = CpuBackend::with_moment_kernel(kernel);
            bench_backend(c, &format!("cpu-{}", isa.name()), &cpu);
        } else {
            println!(
                "moments/cpu-{} group skipped: this CPU lacks it",
                isa.name()
            );
        }
    }
    match GpuBackend::new(true) {
        Ok(gpu) => bench_backend(c, "gpu", &gpu),
        Err(e) => println!("moments/gpu group skipped: no GPU backend ({e})"),
    }
}

criterion_group!(benches, moments);
criterion_main!(benches);
