//! wgpu instance, adapter and device, created once and shared by every kernel.

use super::GpuError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Environment variable that caps every wait for the device at a fixed number of seconds
/// (overriding [`WaitPolicy`]'s estimate; for tests and for users who want a hard bound).
pub const WAIT_SECONDS_ENV: &str = "RELU_FPT_GPU_WAIT_SECONDS";

/// Environment variable that turns naga's runtime checks back on in every kernel, for
/// debugging: "all" (bounds-clamped indices, bounded loops, checked integer division), "bounds"
/// (bounds checks only) or "none" (the default). See [`ShaderChecks`].
pub const SHADER_CHECKS_ENV: &str = "RELU_FPT_GPU_SHADER_CHECKS";

/// Which of naga's runtime checks the kernels are compiled with.
///
/// Shipped kernels are compiled without them ("trusted" modules): every launcher proves its
/// indices in bounds, its loops finite and its divisors non-zero before it dispatches
/// (`docs/gpu-review.md` gives the argument kernel by kernel), and the checks cost real speed:
/// naga clamps every array index (which can push a dynamically indexed private array into
/// local memory), adds a counter to every loop (which stops the driver unrolling it) and
/// wraps every integer division in a zero test. Storage buffers stay protected where the
/// driver itself bounds-checks them (Vulkan's robust buffer access).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShaderChecks {
    /// No runtime checks (the default).
    None,
    /// Bounds checks on every index, nothing else.
    Bounds,
    /// Every check naga offers (what `create_shader_module` does).
    All,
}

impl ShaderChecks {
    /// From [`SHADER_CHECKS_ENV`]; unset means [`ShaderChecks::None`].
    pub fn from_env() -> Result<Self, GpuError> {
        match std::env::var(SHADER_CHECKS_ENV)
            .ok()
            .as_deref()
            .map(str::trim)
        {
            None | Some("") | Some("none") => Ok(ShaderChecks::None),
            Some("bounds") => Ok(ShaderChecks::Bounds),
            Some("all") => Ok(ShaderChecks::All),
            Some(other) => Err(GpuError::Kernel(format!(
                "{SHADER_CHECKS_ENV}={other}: expected none, bounds or all"
            ))),
        }
    }

    fn runtime_checks(self) -> wgpu::ShaderRuntimeChecks {
        match self {
            ShaderChecks::All => wgpu::ShaderRuntimeChecks::checked(),
            ShaderChecks::Bounds => {
                let mut c = wgpu::ShaderRuntimeChecks::unchecked();
                c.bounds_checks = true;
                c
            }
            ShaderChecks::None => wgpu::ShaderRuntimeChecks::unchecked(),
        }
    }
}

/// How long the host waits for the device, and how much work one dispatch may hold.
///
/// A wait for a submission of F flops gives up after `base_seconds + F /
/// min_flops_per_second` (so a hung or reset device becomes [`GpuError::Timeout`] instead of a
/// process that never ends), and launchers split their dispatches so that none holds more than
/// `max_dispatch_flops` (display GPUs stop a dispatch that runs for about 2 s: the driver's
/// watchdog).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WaitPolicy {
    /// Fixed part of every wait: driver queues, shader compilation on first use.
    pub base_seconds: f64,
    /// The slowest throughput the device is assumed to reach, far below any real one.
    pub min_flops_per_second: f64,
    /// Most arithmetic one dispatch may hold.
    pub max_dispatch_flops: f64,
    /// When set, every wait gives up after exactly this many seconds instead.
    pub fixed_seconds: Option<f64>,
}

impl WaitPolicy {
    /// Defaults: 60 s plus the work at 1 GFLOP/s on hardware (a thousandth of a discrete GPU's
    /// speed), 120 s plus the work at 10 MFLOP/s on software adapters (lavapipe runs 0.4-0.7
    /// GFLOP/s on two cores); dispatches of at most 2e11 flops (20-200 ms on a discrete GPU).
    /// [`WAIT_SECONDS_ENV`], when set to a positive number, fixes every wait at that many
    /// seconds.
    pub fn for_adapter(software: bool) -> Self {
        let fixed_seconds = std::env::var(WAIT_SECONDS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0);
        WaitPolicy {
            base_seconds: if software { 120.0 } else { 60.0 },
            min_flops_per_second: if software { 1e7 } else { 1e9 },
            max_dispatch_flops: 2e11,
            fixed_seconds,
        }
    }

    /// How long to wait for a submission of `flops` of work.
    pub fn timeout(&self, flops: f64) -> Duration {
        let seconds = self.fixed_seconds.unwrap_or_else(|| {
            self.base_seconds + flops.max(0.0) / self.min_flops_per_second.max(1.0)
        });
        // Duration::from_secs_f64 panics past ~5.8e11 s; a year is "forever" enough.
        Duration::from_secs_f64(seconds.clamp(0.0, 3.2e7))
    }
}

/// An open device with the adapter's own limits (wgpu's defaults are far smaller).
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// The first error wgpu raised outside an error scope (its default handler would panic);
    /// [`GpuContext::read_back`] turns it into [`GpuError::Kernel`].
    uncaptured: Arc<Mutex<Option<String>>>,
    /// Why the device was lost, once it was.
    lost: Arc<Mutex<Option<String>>>,
    wait: Mutex<WaitPolicy>,
    /// Runtime checks the kernels are compiled with.
    pub shader_checks: ShaderChecks,
    /// State that launchers build once per device (compiled pipelines), one value per type.
    /// Held here rather than in statics keyed by `wgpu::Device`: devices compare by an id that
    /// repeats across instances, so a second device in one process could get the first one's
    /// pipelines.
    launcher_state: Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

/// A wgpu instance for compute only (no display handle). On a headless machine without
/// `XDG_RUNTIME_DIR` the Vulkan driver's window-system probe prints `error: XDG_RUNTIME_DIR is
/// invalid or not set` twice, which reads as a failure; pointing the variable at a private,
/// empty directory first keeps the probe quiet (there is no display to find either way).
pub fn headless_instance() -> wgpu::Instance {
    static QUIET_PROBE: std::sync::Once = std::sync::Once::new();
    QUIET_PROBE.call_once(|| {
        let set = std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from);
        if set.is_some_and(|d| d.is_dir()) {
            return;
        }
        // One directory per user, reused by every run (it stays empty).
        #[cfg(unix)]
        let (private, made) = {
            use std::os::unix::fs::{DirBuilderExt, MetadataExt};
            let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
            let dir = std::env::temp_dir().join(format!("relu-fpt-runtime-{uid}"));
            let made = std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir);
            (dir, made)
        };
        #[cfg(not(unix))]
        let (private, made) = {
            let dir = std::env::temp_dir().join("relu-fpt-runtime");
            let made = std::fs::create_dir_all(&dir);
            (dir, made)
        };
        if made.is_ok() {
            // Set once, before the driver reads it; edition 2021 allows set_var here.
            std::env::set_var("XDG_RUNTIME_DIR", &private);
        }
    });
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// One line per adapter wgpu can see (honouring `WGPU_BACKEND`): name, kind, backend, driver.
pub fn list_adapters() -> Vec<String> {
    let instance = headless_instance();
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    if adapters.is_empty() {
        return vec!["no GPU adapter found (is a Vulkan driver installed?)".to_string()];
    }
    adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!(
                "adapter: {} ({:?}, {:?}, {} {})",
                i.name, i.device_type, i.backend, i.driver, i.driver_info
            )
        })
        .collect()
}

impl GpuContext {
    /// Opens the preferred adapter. `WGPU_BACKEND` and `WGPU_POWER_PREF` are honoured.
    /// With `allow_software = false` a CPU (software) adapter is refused.
    pub fn new(allow_software: bool) -> Result<Self, GpuError> {
        let instance = headless_instance();
        // Under MPI the ranks of one machine take its hardware adapters in turn.
        let mut listed = Vec::new();
        if crate::runtime::ranks() > 1 {
            listed = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        }
        let hardware: Vec<bool> = listed
            .iter()
            .map(|a| a.get_info().device_type != wgpu::DeviceType::Cpu)
            .collect();
        let adapter = match crate::backend::mpi::device_for_this_rank(&hardware) {
            Some(i) => listed.swap_remove(i),
            None => pollster::block_on(
                instance.request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env()
                        .unwrap_or(wgpu::PowerPreference::HighPerformance),
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    ..Default::default()
                }),
            )
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?,
        };
        let info = adapter.get_info();
        if !allow_software && info.device_type == wgpu::DeviceType::Cpu {
            return Err(GpuError::NoAdapter(format!(
                "only a software adapter is present ({})",
                info.name
            )));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("relu-fpt"),
            // f64 in shaders lets the moments pass bin and sort on the device (binning.rs).
            required_features: adapter.features()
                & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F64),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| GpuError::NoAdapter(format!("{}: {e}", info.name)))?;
        let limits = device.limits();
        let uncaptured = Arc::new(Mutex::new(None::<String>));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None::<String>));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| format!("{reason:?}: {message}"));
            }
        });
        let software = info.device_type == wgpu::DeviceType::Cpu;
        let shader_checks = ShaderChecks::from_env()?;
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            uncaptured,
            lost,
            wait: Mutex::new(WaitPolicy::for_adapter(software)),
            shader_checks,
            launcher_state: Mutex::new(Vec::new()),
        })
    }

    /// This device's value of type `T`, built by `build` on first use (see `launcher_state`).
    pub(crate) fn launcher_state<T: std::any::Any + Send + Sync, E>(
        &self,
        build: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut held = self
            .launcher_state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(t) = held.iter().find_map(|v| v.clone().downcast::<T>().ok()) {
            return Ok(t);
        }
        let t = Arc::new(build()?);
        held.push(t.clone());
        Ok(t)
    }

    /// The wait bounds in force.
    pub fn wait_policy(&self) -> WaitPolicy {
        *self.wait.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the wait bounds (tests, users of slow or shared devices).
    pub fn set_wait_policy(&self, policy: WaitPolicy) {
        *self.wait.lock().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Most flops one dispatch may hold ([`WaitPolicy::max_dispatch_flops`]).
    pub(crate) fn max_dispatch_flops(&self) -> f64 {
        self.wait_policy().max_dispatch_flops
    }

    /// Fails with [`GpuError::DeviceLost`] once the device has been lost.
    pub(crate) fn check_lost(&self, what: &str) -> Result<(), GpuError> {
        let lost = self.lost.lock().ok().and_then(|slot| slot.clone());
        match lost {
            Some(why) => Err(GpuError::DeviceLost(format!(
                "{what}: {why}; the driver reset or removed the GPU (rerun, or use --backend cpu)"
            ))),
            None => Ok(()),
        }
    }

    /// True for software adapters such as lavapipe.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// "NAME (BACKEND, DRIVER)".
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {} {})",
            self.info.name, self.info.backend, self.info.driver, self.info.driver_info
        )
    }
}

/// Shared plumbing for kernel launchers: buffers, pipelines, error capture and readback.
impl GpuContext {
    /// Largest size one storage binding may have on this adapter (bytes), rounded down to a
    /// multiple of 16 (buffers are allocated in multiples of 16; some drivers report 2^31 - 1).
    pub(crate) fn max_binding(&self) -> u64 {
        // At most 2^31 bytes (2^29 words): the kernels index words with u32 arithmetic, which
        // must not wrap, and Metal reports its whole buffer length here.
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            .min(1 << 31)
            & !15
    }

    /// The most invocations a one-dimensional workgroup may have on this adapter.
    pub(crate) fn max_workgroup_1d(&self) -> u32 {
        self.limits
            .max_compute_invocations_per_workgroup
            .min(self.limits.max_compute_workgroup_size_x)
    }

    /// Fails with [`GpuError::TooLarge`], naming `what`, when a one-dimensional workgroup of
    /// `invocations` does not fit this adapter.
    pub(crate) fn check_workgroup_1d(&self, what: &str, invocations: u32) -> Result<(), GpuError> {
        let most = self.max_workgroup_1d();
        if invocations > most {
            return Err(GpuError::TooLarge(format!(
                "{what}: workgroups of {invocations} invocations; this adapter allows {most}"
            )));
        }
        Ok(())
    }

    /// Fails with [`GpuError::TooLarge`] when `bytes` does not fit one storage binding.
    pub(crate) fn check_binding(&self, what: &str, bytes: u64) -> Result<(), GpuError> {
        let max = self.max_binding();
        if bytes > max {
            return Err(GpuError::TooLarge(format!(
                "{what} needs a {bytes}-byte binding; this adapter allows {max}"
            )));
        }
        Ok(())
    }

    /// A storage buffer of `bytes` (rounded up to 16, never empty), usable as copy source and
    /// destination. The size is checked against the adapter's binding limit first.
    pub(crate) fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        let size = bytes.max(16).next_multiple_of(16);
        self.check_binding(label, size)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// A uniform buffer of `bytes` (rounded up to 16).
    pub(crate) fn uniform_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A host-readable staging buffer for [`GpuContext::read_back`].
    pub(crate) fn staging_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(16),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A command encoder holding one compute pass: `pipeline` with `bind_group` at group 0,
    /// dispatched over `groups` workgroups. Readback copies go after it.
    pub(crate) fn encode_dispatch(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        groups: [u32; 3],
    ) -> wgpu::CommandEncoder {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        enc
    }

    /// Compiles one WGSL entry point with `override` constants, capturing validation
    /// errors as [`GpuError::Kernel`] instead of wgpu's default panic. The module gets the
    /// runtime checks of [`GpuContext::shader_checks`] (none by default: every kernel in
    /// `shaders/` is launched only with bounds its launcher has checked).
    pub(crate) fn compute_pipeline(
        &self,
        label: &str,
        wgsl: &str,
        entry_point: &str,
        constants: &[(&str, f64)],
    ) -> Result<wgpu::ComputePipeline, GpuError> {
        self.capture(label, || {
            let descriptor = wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(wgsl.into()),
            };
            // SAFETY: the kernels are this crate's own `shaders/`, and each launcher checks
            // the sizes, dispatch extents and parameters that keep its indices in bounds, its
            // loops finite and its divisors non-zero (docs/gpu-review.md, "Trusted modules").
            let module = unsafe {
                self.device
                    .create_shader_module_trusted(descriptor, self.shader_checks.runtime_checks())
            };
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(label),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry_point),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        ..Default::default()
                    },
                    cache: None,
                })
        })
    }

    /// Binds `(binding, buffer)` pairs to group 0 of `pipeline` (auto layout).
    pub(crate) fn bind_group(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> Result<wgpu::BindGroup, GpuError> {
        let entries = buffers
            .iter()
            .map(|(i, b)| (*i, b.as_entire_binding()))
            .collect();
        self.bind_group_with(label, pipeline, entries)
    }

    /// Binds `(binding, resource)` pairs (e.g. a slot of a buffer) to group 0 of `pipeline`.
    pub(crate) fn bind_group_with(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        resources: Vec<(u32, wgpu::BindingResource)>,
    ) -> Result<wgpu::BindGroup, GpuError> {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .into_iter()
            .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource })
            .collect();
        self.capture(label, || {
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
        })
    }

    /// Runs `f` inside validation and out-of-memory error scopes; a captured error becomes
    /// [`GpuError::Kernel`] (validation) or [`GpuError::OutOfMemory`].
    pub(crate) fn capture<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, GpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if v.is_some() || o.is_some() {
            // On a lost device every call fails validation; say what really happened (a
            // non-blocking poll runs the device-lost callback if it is pending).
            let _ = self.device.poll(wgpu::PollType::Poll);
            self.check_lost(what)?;
        }
        if let Some(e) = v {
            return Err(GpuError::Kernel(format!("{what}: {e}")));
        }
        if let Some(e) = o {
            return Err(GpuError::OutOfMemory(format!("{what}: {e}")));
        }
        Ok(value)
    }

    /// Submits `encoder`, capturing validation errors; fails early on a lost device.
    pub(crate) fn submit(
        &self,
        what: &str,
        encoder: wgpu::CommandEncoder,
    ) -> Result<wgpu::SubmissionIndex, GpuError> {
        self.check_lost(what)?;
        self.capture(what, || self.queue.submit(Some(encoder.finish())))
    }

    /// Submits `encoder` (after it has copied its results into `staging`), waits at most the
    /// [`WaitPolicy`]'s time for `flops` of work, and returns the first `bytes` of `staging`
    /// as `T`s.
    pub(crate) fn submit_and_read<T: bytemuck::Pod>(
        &self,
        what: &str,
        encoder: wgpu::CommandEncoder,
        staging: &wgpu::Buffer,
        bytes: u64,
        flops: f64,
    ) -> Result<Vec<T>, GpuError> {
        let index = self.submit(what, encoder)?;
        self.read_back(what, staging, bytes, Some(index), flops)
    }

    /// Fails with the error wgpu reported outside any error scope since the last check, if any.
    pub(crate) fn take_uncaptured(&self, what: &str) -> Result<(), GpuError> {
        let taken = self.uncaptured.lock().ok().and_then(|mut slot| slot.take());
        match taken {
            Some(e) => Err(GpuError::Kernel(format!("{what}: {e}"))),
            None => Ok(()),
        }
    }

    /// Waits until submission `index` (or all submitted work when `None`) has finished, for
    /// at most the [`WaitPolicy`]'s time for `flops` of work. A timeout becomes
    /// [`GpuError::Timeout`], a lost device [`GpuError::DeviceLost`].
    pub(crate) fn wait(
        &self,
        what: &str,
        index: Option<wgpu::SubmissionIndex>,
        flops: f64,
    ) -> Result<(), GpuError> {
        let timeout = self.wait_policy().timeout(flops);
        let polled = self.device.poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: Some(timeout),
        });
        self.check_lost(what)?;
        match polled {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => Err(GpuError::Timeout(format!(
                "{what}: the GPU did not finish {flops:.2e} flops of work within {:.3} s; the \
                 device is hung or far slower than assumed (set {WAIT_SECONDS_ENV} to wait \
                 longer, or use --backend cpu)",
                timeout.as_secs_f64()
            ))),
            Err(e) => Err(GpuError::DeviceLost(format!("{what}: {e}"))),
        }
    }

    /// Maps the first `bytes` of a staging buffer after submission `index` (all submitted work
    /// when `None`), waiting at most the [`WaitPolicy`]'s time for `flops` of work, copies them
    /// out and unmaps. Timeouts, device loss and map failures become typed errors.
    pub(crate) fn read_back<T: bytemuck::Pod>(
        &self,
        what: &str,
        staging: &wgpu::Buffer,
        bytes: u64,
        index: Option<wgpu::SubmissionIndex>,
        flops: f64,
    ) -> Result<Vec<T>, GpuError> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait(what, index, flops)?;
        // The map completes after the submission; a second short wait covers drivers that
        // report it on the next poll.
        let mapped = match rx.try_recv() {
            Ok(r) => Ok(r),
            Err(_) => {
                self.wait(what, None, 0.0)?;
                rx.recv_timeout(Duration::from_millis(100))
            }
        };
        match mapped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.check_lost(what)?;
                return Err(GpuError::Map(format!("{what}: {e}")));
            }
            Err(_) => {
                self.check_lost(what)?;
                return Err(GpuError::Map(format!("{what}: map callback never ran")));
            }
        }
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError::Map(format!("{what}: {e}")))?;
            bytemuck::pod_collect_to_vec(&view[..])
        };
        staging.unmap();
        self.take_uncaptured(what)?;
        Ok(out)
    }
}

/// Fails with [`GpuError::Overflow`] when a device sum read back is not finite. Inputs are
/// finite (sources check them), so a non-finite sum means an f32 accumulator overflowed.
pub(crate) fn check_finite(what: &str, sums: &[f32]) -> Result<(), GpuError> {
    match sums.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(GpuError::Overflow(format!(
            "{what}: sum {i} of {} is {}; the products of x and the labels (or their squares) \
             are too large for f32 sums: rescale x and y (e.g. divide y by its standard \
             deviation), or use --backend cpu",
            sums.len(),
            sums[i]
        ))),
    }
}

/// Compiled pipelines by configuration, built on first use and shared by every later call.
pub struct PipelineCache<K, P> {
    built: std::sync::Mutex<std::collections::HashMap<K, std::sync::Arc<P>>>,
}

impl<K, P> Default for PipelineCache<K, P> {
    fn default() -> Self {
        PipelineCache {
            built: Default::default(),
        }
    }
}

impl<K: Eq + std::hash::Hash, P> PipelineCache<K, P> {
    /// The pipelines for `key`, built by `build` the first time.
    pub(crate) fn get_or_build<E>(
        &self,
        key: K,
        build: impl FnOnce() -> Result<P, E>,
    ) -> Result<std::sync::Arc<P>, E> {
        // A panic while building leaves the map as it was, so a poisoned lock is still usable.
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = built.get(&key) {
            return Ok(p.clone());
        }
        let p = std::sync::Arc::new(build()?);
        built.insert(key, p.clone());
        Ok(p)
    }
}
