//! Shared by the integration tests: the backends every backend-generic test runs on.
#![allow(dead_code)]

use rand::{RngExt, SeedableRng};
use relu_fpt::backend::cpu::CpuBackend;
use relu_fpt::backend::gpu::GpuBackend;
use relu_fpt::backend::Backend;
use relu_fpt::data::MemorySource;
use relu_fpt::network::Network;
use std::sync::OnceLock;

/// The GPU backend on whatever adapter is present (lavapipe in CI), opened once per test binary.
/// A missing adapter fails the test: GPU tests never skip silently.
pub fn gpu() -> &'static GpuBackend {
    static GPU: OnceLock<GpuBackend> = OnceLock::new();
    GPU.get_or_init(|| {
        GpuBackend::new(true).unwrap_or_else(|e| {
            panic!("GPU tests need an adapter (install mesa-vulkan-drivers for lavapipe): {e}")
        })
    })
}

/// The CPU backend.
pub fn cpu() -> &'static CpuBackend {
    static CPU: OnceLock<CpuBackend> = OnceLock::new();
    CPU.get_or_init(CpuBackend::new)
}

/// Both backends, CPU first.
pub fn backends() -> Vec<&'static dyn Backend> {
    vec![cpu() as &dyn Backend, gpu() as &dyn Backend]
}

/// Deterministic generator for test data (splitmix64 + Box-Muller).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
    pub fn normals_f32(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }
}

/// Gaussian rows in d dimensions labelled by `net` (f64, rounded to f32).
pub fn labelled_samples(net: &Network, n: usize, seed: u64) -> MemorySource {
    let d = net.input_dim;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * d)
        .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    let y = x
        .chunks_exact(d)
        .map(|row| {
            let v: Vec<f64> = row.iter().map(|&a| a as f64).collect();
            net.forward_one_f64(&v) as f32
        })
        .collect();
    MemorySource { dim: d, x, y }
}

/// A memory source that counts how often it is read and names itself by `name` (so a GPU
/// backend keeps a resident copy of it).
pub struct CountingSource {
    /// The rows (reading them here is not counted).
    pub inner: MemorySource,
    /// Unique per test when a backend is shared: equal names promise equal rows.
    name: &'static str,
    reads: std::sync::atomic::AtomicUsize,
}

impl CountingSource {
    pub fn new(inner: MemorySource, name: &'static str) -> Self {
        CountingSource {
            inner,
            name,
            reads: Default::default(),
        }
    }
    pub fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl relu_fpt::data::SampleSource for CountingSource {
    fn dim(&self) -> usize {
        self.inner.dim
    }
    fn len(&self) -> u64 {
        self.inner.y.len() as u64
    }
    fn read(
        &self,
        start: u64,
        rows: usize,
        x: &mut Vec<f32>,
        y: &mut Vec<f32>,
    ) -> relu_fpt::Result<usize> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.read(start, rows, x, y)
    }
    fn describe(&self) -> String {
        "counting test source".into()
    }
    fn identity(&self) -> Option<String> {
        Some(self.name.to_string())
    }
}
