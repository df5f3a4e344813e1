//! Shared by the integration tests: the backends every backend-generic test runs on.
#![allow(dead_code)]

use relu_fpt::backend::cpu::CpuBackend;
use relu_fpt::backend::gpu::GpuBackend;
use relu_fpt::backend::Backend;
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
