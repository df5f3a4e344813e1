//! Criterion benchmark of the host's share of a GPU moments batch with K > 1 bins
//! (`relu_fpt::backend::gpu::sort_batch`): the f64 label sums per bin and the counting sort of
//! 4-byte bin ids into bin order. Runs on any machine (no adapter needed); per sample it is to
//! be compared with the device's SYRK work, d (d + 1) / 2 multiply-adds.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use relu_fpt::backend::gpu::sort_batch;
use relu_fpt::moments::{FilteredMoments, SampleWeight};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("gpu-host/sort_batch");
    group.sample_size(10);
    let rows = 1 << 20;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let ys: Vec<f32> = (0..rows).map(|_| rng.random::<f32>()).collect();
    for k in [64usize, 810] {
        let bins: Vec<u32> = (0..rows).map(|_| rng.random_range(0..k as u32)).collect();
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::new(format!("K{k}"), rows), &bins, |b, bins| {
            b.iter(|| {
                let mut out = FilteredMoments::zeros(8, k);
                sort_batch(bins, &ys, SampleWeight::Unit, 4096, true, &mut out)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
