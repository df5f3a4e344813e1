//! The `relu-fpt` command line: parses the arguments, checks the user's files and values (one-line
//! errors that name the flag at fault), calls the library, and prints or writes what it returns.
//! The computing (learning, predicting and scoring, the benchmarks) is the library's.

use clap::{Args, Parser, Subcommand};
use relu_fpt::backend::{self, mpi, Backend, BackendChoice, Device};
use relu_fpt::data::repeats::warn_repeated_rows;
use relu_fpt::data::{for_each_chunk, GaussianSource, NpyWriter, SampleSource};
use relu_fpt::learn::work::check_learn_work;
use relu_fpt::learn::{learn, LearnOptions, LearnReport};
use relu_fpt::metrics::TeacherComparison;
use relu_fpt::network::Network;
use relu_fpt::predict::{predict_stream, ErrorSums};
use relu_fpt::subspace::{find_subspace, Method, SubspaceConfig};
use relu_fpt::teacher::{self, Teacher, TeacherKind, TeacherSpec};
use relu_fpt::{output, plot, progress, safety, Error, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "relu-fpt",
    version,
    about = "Learn deep ReLU networks from Gaussian samples: filtered PCA, then enumerate-and-test \
             (Chen, Klivans, Meka, arXiv 2009.13512)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Learn the built-in hard parity teacher end to end and report how well it went.
    Demo(DemoArgs),
    /// Write samples of a teacher network: DIR/x.npy, DIR/y.npy and DIR/teacher.json.
    Generate(GenerateArgs),
    /// Recover the span of the first-layer weights (filtered PCA, or pHd / SIR / SAVE).
    Subspace(SubspaceArgs),
    /// Learn a ReLU network from samples: filtered PCA, enumerate-and-test, polish.
    Learn(LearnArgs),
    /// Predict labels for x.npy with a model, streamed.
    Predict(PredictArgs),
    /// Score a model on labelled samples (and against the teacher, when given).
    Eval(EvalArgs),
    /// Write a model in another format (ONNX) for runtimes and verification tools.
    Export(ExportArgs),
    /// Time the computations.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// List the GPU adapters and check the chosen one with a smoke kernel.
    Devices,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Binned second moments: median of timed runs after a warm-up (data generation excluded);
    /// on the CPU also as a fraction of the FMA peak; several backends and (d, K) in one table.
    Moments(BenchMomentsArgs),
    /// The CPU's f32 FMA peak: a register-only FMA loop on every thread at once.
    Peak(BenchPeakArgs),
    /// Enumerate-and-test against the sphere-net fit on small teachers, true basis given.
    Search(BenchSearchArgs),
    /// The CPU moments kernel on rows already in cache (its ceiling without the memory
    /// stream), as a fraction of the FMA peak.
    Kernel(BenchKernelArgs),
    /// The CPU trainer's Adam passes over rows of z with B fixed (the descent's and the deep
    /// net's work): microseconds a row and GFLOP/s.
    Trainer(BenchTrainerArgs),
}

/// A teacher network: a random deep network or one of the hard constructions.
#[derive(Args, Clone)]
struct TeacherFlags {
    /// Teacher family (docs/algorithm.md, "Hard teachers"): random, parity (A), fan (B), deep-parity (C), composite (D).
    #[arg(long, value_enum)]
    teacher: Option<TeacherKind>,
    /// Input dimension d.
    #[arg(long, default_value_t = 128)]
    d: usize,
    /// Hidden widths of the random teacher, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "4,4")]
    widths: Vec<usize>,
    /// Relevant dimension: parity / deep-parity coordinates, first-layer rank of the random
    /// teacher (default: its first width).
    #[arg(long)]
    k: Option<usize>,
    /// Fan teacher: number of unit pairs (even, at least 4; default 4).
    #[arg(long)]
    m: Option<usize>,
    /// Give the random teacher biases.
    #[arg(long)]
    bias: bool,
    /// Standard deviation of Gaussian label noise.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Number of samples.
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
}

impl TeacherFlags {
    fn teacher(&self, seed: u64) -> Result<Option<Teacher>> {
        let Some(kind) = self.teacher else {
            return Ok(None);
        };
        if self.n == 0 {
            return Err(Error::invalid("--n: need at least one sample"));
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::invalid(
                "--noise: must be a finite standard deviation >= 0",
            ));
        }
        teacher::check_teacher_size(self.d, &self.widths, self.k, self.m)?;
        let note = teacher::check_teacher_work(self.d, &self.widths, self.k, self.m, self.n)?;
        if let (Some(note), true) = (note, mpi::is_root()) {
            eprintln!("relu-fpt: {note}");
        }
        let mut spec = TeacherSpec::new(kind, self.d);
        spec.widths = self.widths.clone();
        spec.k = self.k;
        spec.m = self.m;
        spec.bias = self.bias;
        spec.seed = seed;
        Ok(Some(teacher::build(&spec)?))
    }

    fn sampler(&self, teacher: &Teacher, seed: u64) -> Result<GaussianSource> {
        GaussianSource::new(teacher.network.clone(), self.n, seed, self.noise)
    }
}

/// Samples from .npy files, or drawn from a built-in teacher (no files needed).
#[derive(Args, Clone)]
struct SourceFlags {
    /// Inputs: an (N, d) .npy file of float32 or float64, C order.
    #[arg(long, requires = "y", conflicts_with = "teacher")]
    x: Option<PathBuf>,
    /// Labels: an (N,) or (N, 1) .npy file.
    #[arg(long, requires = "x")]
    y: Option<PathBuf>,
    #[command(flatten)]
    teacher: TeacherFlags,
}

/// An opened source, with the teacher when the samples are synthetic (for reporting only:
/// the algorithms never read it).
struct Samples {
    source: Box<dyn SampleSource>,
    teacher: Option<Teacher>,
}

impl Samples {
    /// The warning of [`warn_repeated_rows`] for sample files (a teacher's samples never
    /// repeat).
    fn repeated_rows_warning(&self) -> Result<Option<String>> {
        if self.teacher.is_some() {
            return Ok(None);
        }
        warn_repeated_rows(self.source.as_ref())
    }
}

impl SourceFlags {
    /// The sample files given, as (flag, path).
    fn inputs(&self) -> Vec<(&'static str, &Path)> {
        let mut v = Vec::new();
        if let Some(x) = &self.x {
            v.push(("--x", x.as_path()));
        }
        if let Some(y) = &self.y {
            v.push(("--y", y.as_path()));
        }
        v
    }

    fn open(&self, seed: u64) -> Result<Samples> {
        if let (Some(x), Some(y)) = (&self.x, &self.y) {
            safety::check_inputs(&[("--x", x, true), ("--y", y, true)])?;
            return Ok(Samples {
                source: relu_fpt::data::open_samples(x, y)?,
                teacher: None,
            });
        }
        match self.teacher.teacher(seed)? {
            Some(t) => Ok(Samples {
                source: Box::new(self.teacher.sampler(&t, seed)?),
                teacher: Some(t),
            }),
            None => Err(Error::invalid(
                "no samples: give --x X.npy --y Y.npy, or a built-in teacher with --teacher (e.g. --teacher parity --d 128 --k 4 --n 1000000)",
            )),
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    teacher: TeacherFlags,
    /// Seed of the teacher and the samples.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct SubspaceArgs {
    #[command(flatten)]
    source: SourceFlags,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Filtered PCA finds the dimension itself (`paper`: the paper's rounds, without
    /// whitening or residual rounds, so --no-whiten and --residual-rounds do not apply, and
    /// --refine-steps counts refine sweeps); pHd, SIR and SAVE need --dim.
    #[arg(long, value_enum, default_value = "filtered")]
    method: Method,
    /// Upper bound on the dimension filtered PCA may find.
    #[arg(long, default_value_t = 32)]
    max_dim: usize,
    /// Work on the raw x instead of Sigma^(-1/2) (x - mu) (filtered PCA whitens by default).
    #[arg(long)]
    no_whiten: bool,
    /// Most residual rounds after the refine steps (filters on y - h(B x); 0: none).
    #[arg(long, default_value_t = 8)]
    residual_rounds: usize,
    /// A direction must clear this multiple of the null maximum (>= 1); with whitening, in a
    /// round where no score clears it, the eigenvalues' margin shrinks like 1 / sqrt(d) above
    /// d = 32.
    #[arg(long, default_value_t = 1.25)]
    null_margin: f64,
    /// Number of directions for pHd, SIR and SAVE.
    #[arg(long)]
    dim: Option<usize>,
    /// Gauss-Newton steps on the filtered-PCA basis after the rounds, one pass each (0: none).
    /// With --method paper: at most this many refine sweeps, each finding every direction
    /// again by the paper's round conditioned on the others (its filters' estimate or the cell
    /// SIR of its bin means, whichever predicts the smaller angle), one pass per direction
    /// (two in the first sweep where the cell SIR, read first, does not settle it; 0: none).
    #[arg(long, default_value_t = 3)]
    refine_steps: usize,
    /// Seed (also of the teacher and samples, for synthetic sources).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress on stderr: neither the bars (shown on a terminal) nor the line each
    /// finished stage and round prints (errors still print).
    #[arg(long)]
    quiet: bool,
    /// Print the report as one JSON line on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Also draw the per-round scores against the acceptance bar as an SVG chart.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Where to write the subspace (relu-fpt/subspace JSON).
    #[arg(long)]
    out: PathBuf,
}

/// `learn`'s flags: each option of [`LearnOptions`] under its flag name, its help its meaning
/// as written there ([`cli_help`]).
#[derive(Args)]
struct LearnArgs {
    #[command(flatten)]
    source: SourceFlags,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    #[arg(long, value_enum, default_value = "default", help = cli_help("method"))]
    method: relu_fpt::learn::LearnMethod,
    #[arg(long, value_delimiter = ',', default_value = "4", help = cli_help("hidden"))]
    hidden: Vec<usize>,
    #[arg(long, help = cli_help("budget"))]
    budget: Option<usize>,
    #[arg(long, default_value_t = 32, help = cli_help("max_dim"))]
    max_dim: usize,
    #[arg(long, default_value_t = 0.2, help = cli_help("validation_fraction"))]
    validation: f64,
    #[arg(long, help = cli_help_off("polish"))]
    no_polish: bool,
    #[arg(long, help = cli_help("polish_epochs"))]
    polish_epochs: Option<usize>,
    #[arg(long, help = cli_help("spare_rows"))]
    spare_rows: Option<usize>,
    #[arg(long, help = cli_help("descent_epochs"))]
    descent_epochs: Option<usize>,
    #[arg(long, value_delimiter = ',', help = cli_help("deep_widths"))]
    deep_widths: Option<Vec<usize>>,
    #[arg(long, help = cli_help("deep_epochs"))]
    deep_epochs: Option<usize>,
    #[arg(long, help = cli_help("max_train_rows"))]
    max_train_rows: Option<usize>,
    #[arg(long, default_value_t = 3, help = cli_help("refine_steps"))]
    refine_steps: usize,
    #[arg(long, help = cli_help_off("whiten"))]
    no_whiten: bool,
    #[arg(long, help = cli_help("time_budget"))]
    time_budget: Option<f64>,
    #[arg(long, help = cli_help("target_error"))]
    target_error: Option<f64>,
    #[arg(long, default_value_t = 1, help = cli_help("seed"))]
    seed: u64,
    /// No progress on stderr: neither the bars (shown on a terminal) nor the line each
    /// finished stage and round prints (errors still print).
    #[arg(long)]
    quiet: bool,
    /// Print the report as one JSON line on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Read the samples on every pass instead of holding them in memory: memory then does not
    /// grow with N. Without it the rows (from files or a built-in teacher) are held in memory
    /// once when they take at most half the available memory (on the CPU backend, in one
    /// process, without --time-budget), so that no pass copies or draws them again; the same
    /// model either way.
    #[arg(long)]
    stream: bool,
    /// Where to write the model (relu-fpt/network JSON).
    #[arg(long)]
    out: PathBuf,
}

/// The flag of a [`LearnOptions`] field: `--validation` for `validation_fraction`, `--no-polish`
/// and `--no-whiten` for the switches that are on by default, else the name with dashes.
fn learn_flag(name: &str) -> String {
    match name {
        "validation_fraction" => "--validation".to_string(),
        "polish" | "whiten" => format!("--no-{name}"),
        _ => format!("--{}", name.replace('_', "-")),
    }
}

/// How `learn`'s messages write an option set to a value: `--validation 1.5`, `--no-polish`.
fn learn_spelling(name: &str, value: &str) -> String {
    match name {
        "polish" | "whiten" => learn_flag(name),
        _ => format!("{} {value}", learn_flag(name)),
    }
}

/// The help of a `learn` flag: the option's meaning ([`LearnOptions::doc`]) with the other
/// options it names written as flags.
fn cli_help(name: &str) -> String {
    let doc = LearnOptions::doc(name);
    let mut out = String::new();
    for (i, part) in doc.split('`').enumerate() {
        if i % 2 == 1 && LearnOptions::names().any(|n| n == part) {
            out += &learn_flag(part);
        } else if i % 2 == 1 {
            out += &format!("`{part}`");
        } else {
            out += part;
        }
    }
    out
}

/// The help of a `--no-...` flag: it turns the option off.
fn cli_help_off(name: &str) -> String {
    format!("Turns `{name}` off. {name}: {}", cli_help(name))
}

impl LearnArgs {
    /// The options the flags give.
    fn options(&self) -> LearnOptions {
        LearnOptions {
            method: self.method,
            hidden: self.hidden.clone(),
            budget: self.budget,
            max_dim: self.max_dim,
            validation_fraction: self.validation,
            polish: !self.no_polish,
            polish_epochs: self.polish_epochs,
            spare_rows: self.spare_rows,
            descent_epochs: self.descent_epochs,
            deep_widths: self.deep_widths.clone(),
            deep_epochs: self.deep_epochs,
            max_train_rows: self.max_train_rows,
            refine_steps: self.refine_steps,
            whiten: !self.no_whiten,
            time_budget: self.time_budget,
            target_error: self.target_error,
            seed: self.seed,
        }
    }
}

#[derive(Args)]
struct PredictArgs {
    /// A model written by `learn` (relu-fpt/network JSON).
    #[arg(long)]
    model: PathBuf,
    /// Inputs: an (N, d) .npy file.
    #[arg(long)]
    x: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Where to write the (N,) float32 predictions.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct EvalArgs {
    /// A model written by `learn`.
    #[arg(long)]
    model: PathBuf,
    /// Inputs: an (N, d) .npy file.
    #[arg(long)]
    x: PathBuf,
    /// Labels: an (N,) or (N, 1) .npy file.
    #[arg(long)]
    y: PathBuf,
    /// The teacher network (teacher.json from `generate`): adds principal angles and the
    /// gradient energy the model's subspace misses.
    #[arg(long)]
    teacher: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    json: bool,
    /// Also draw predictions against labels, and the residuals against labels on their own
    /// scale (first 2000 samples), as an SVG chart of two panels.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Formats `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// ONNX (opset 17): float32 input x (N, d), output y (N, 1); MatMul for the projection,
    /// Gemm and Relu per layer.
    Onnx,
}

#[derive(Args)]
struct ExportArgs {
    /// A model written by `learn` (relu-fpt/network JSON).
    #[arg(long)]
    model: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "onnx")]
    format: ExportFormat,
    /// Where to write the exported model (e.g. model.onnx).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct DemoArgs {
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Training samples.
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Input dimension.
    #[arg(long, default_value_t = 128)]
    d: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Wall-clock seconds the learning may take (as `learn --time-budget`; not reproducible
    /// across machines).
    #[arg(long)]
    time_budget: Option<f64>,
    /// No progress on stderr: neither the bars (shown on a terminal) nor the line each
    /// finished stage and round prints (errors still print).
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct BenchMomentsArgs {
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Dimensions d, comma separated: each (d, K) is timed on each backend.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    d: Vec<usize>,
    /// Numbers of bins K, comma separated (K > 1 uses a rank-2 basis with label bins per cell).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    bins: Vec<usize>,
    /// Timed runs after one warm-up (at least 5).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Backends, comma separated (e.g. cpu,gpu): with several, or several sizes, one table
    /// compares them (GPU/CPU speed ratio included). Same sizes, not the same rows: the CPU's
    /// samples sit in host memory, a GPU draws its own on the device (kept there when they fit
    /// RELU_FPT_GPU_RESIDENT_MIB), so the GPU figures leave out the bus.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "cpu")]
    backend: Vec<BackendChoice>,
    /// CPU moments micro-kernel (auto: RELU_FPT_CPU_KERNEL, else the widest the CPU has).
    #[arg(long, value_enum, default_value = "auto")]
    kernel: relu_fpt::backend::cpu::syrk::MomentKernel,
    /// The FMA peak to compare with, GFLOP/s on all threads (default: measure it first, as
    /// `relu-fpt bench peak` does).
    #[arg(long)]
    peak_gflops: Option<f64>,
    /// Print one JSON line per (backend, d, K) result instead of the line or table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchKernelArgs {
    #[arg(long, default_value_t = 128)]
    d: usize,
    /// Rows each thread sums over and over (1024 rows of d = 128 are 512 KiB: inside L2).
    #[arg(long, default_value_t = 1024)]
    rows: usize,
    /// Rows summed in one timed run, all threads together.
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// CPU moments micro-kernel (auto: RELU_FPT_CPU_KERNEL, else the widest the CPU has).
    #[arg(long, value_enum, default_value = "auto")]
    kernel: relu_fpt::backend::cpu::syrk::MomentKernel,
    /// The FMA peak to compare with, GFLOP/s on all threads (default: measure it first).
    #[arg(long)]
    peak_gflops: Option<f64>,
    /// Print exactly one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchTrainerArgs {
    /// r, then the hidden widths (the deep-net stage's default network on four directions).
    #[arg(long, value_delimiter = ',', default_value = "4,32,32")]
    widths: Vec<usize>,
    /// Rows of z in memory (a quarter-size benchmark case's training rows).
    #[arg(long, default_value_t = 120_000)]
    rows: usize,
    /// Minibatch rows (learn's default).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Passes over the rows in one timed run.
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print exactly one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchPeakArgs {
    /// Seconds per timed repeat.
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Timed repeats; the best is reported (a busy machine only lowers the figure).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Instruction set of the loop (auto: every SIMD one the CPU has; the peak is the best).
    #[arg(long, value_enum, default_value = "auto")]
    kernel: relu_fpt::backend::cpu::syrk::MomentKernel,
    /// Print exactly one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchSearchArgs {
    /// Enumerate-and-test budgets (candidates), one table row each.
    #[arg(long, value_delimiter = ',', default_value = "512,4096,32768")]
    budgets: Vec<usize>,
    /// Teacher seeds; the table gives the median and the worst.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Candidate hidden widths (learn's default).
    #[arg(long, value_delimiter = ',', default_value = "4")]
    hidden: Vec<usize>,
    /// Only the cases whose name contains one of these (e.g. "fan", "r=3").
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Training rows per case (validation: a quarter as many).
    #[arg(long, default_value_t = 80_000)]
    rows: usize,
    /// Candidate generators: greedy (the default one), product (the paper's net as written).
    #[arg(long, value_delimiter = ',', default_value = "greedy,product")]
    generators: Vec<String>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendChoice,
    /// One JSON line per (case, seed, budget, generator) instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // Errors are values; a panic would be a bug. Keep even that to one line, no backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("relu-fpt: internal error: {info} (please report this)");
        mpi::abort_job_after_panic();
    }));
    remove_outputs_on_interrupt();
    // Under mpirun: starts MPI (finalised when `_launch` drops at the end of main).
    let _launch = match mpi::Launch::start() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("relu-fpt: error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if mpi::is_root() {
                let _ = e.print();
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    // A set variable with a value the project cannot use is an error, not silently ignored.
    if let Err(e) = safety::check_environment() {
        if mpi::is_root() {
            eprintln!("relu-fpt: error: {e}");
        }
        return ExitCode::from(e.exit_code());
    }
    // Errors about a file name the flag that gave it (see safety::with_flag).
    let files = cli.command.files();
    let files: Vec<(&str, Vec<PathBuf>)> = files.iter().map(|(f, p)| (*f, named(f, p))).collect();
    let outcome = match cli.command {
        Command::Demo(a) => demo(a),
        Command::Generate(a) => generate(a),
        Command::Subspace(a) => subspace(a),
        Command::Learn(a) => learn_cmd(a),
        Command::Predict(a) => predict(a),
        Command::Eval(a) => eval(a),
        Command::Export(a) => export(a),
        Command::Bench {
            what: BenchCommand::Moments(a),
        } => bench_moments(a),
        Command::Bench {
            what: BenchCommand::Peak(a),
        } => bench_peak(a),
        Command::Bench {
            what: BenchCommand::Kernel(a),
        } => bench_kernel(a),
        Command::Bench {
            what: BenchCommand::Trainer(a),
        } => bench_trainer(a),
        Command::Bench {
            what: BenchCommand::Search(a),
        } => bench_search(a),
        Command::Devices => devices(),
    }
    .map_err(|e| safety::with_flag(e, &files));
    // With several MPI ranks all stop together: the lowest failing rank's error, printed once.
    match mpi::agree(outcome) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if mpi::is_root() {
                eprintln!("relu-fpt: error: {e}");
            }
            ExitCode::from(mpi::exit_status(e.exit_code()))
        }
    }
}

impl Command {
    /// The files the command's flags name, inputs and outputs, as (flag, path).
    fn files(&self) -> Vec<(&'static str, PathBuf)> {
        let mut f = Vec::new();
        let mut add = |flag: &'static str, p: Option<&PathBuf>| {
            if let Some(p) = p {
                f.push((flag, p.clone()));
            }
        };
        match self {
            Command::Subspace(a) => {
                add("--x", a.source.x.as_ref());
                add("--y", a.source.y.as_ref());
                add("--out", Some(&a.out));
                add("--plot", a.plot.as_ref());
            }
            Command::Learn(a) => {
                add("--x", a.source.x.as_ref());
                add("--y", a.source.y.as_ref());
                add("--out", Some(&a.out));
            }
            Command::Predict(a) => {
                add("--model", Some(&a.model));
                add("--x", Some(&a.x));
                add("--out", Some(&a.out));
            }
            Command::Eval(a) => {
                add("--model", Some(&a.model));
                add("--x", Some(&a.x));
                add("--y", Some(&a.y));
                add("--teacher", a.teacher.as_ref());
                add("--plot", a.plot.as_ref());
            }
            Command::Export(a) => {
                add("--model", Some(&a.model));
                add("--out", Some(&a.out));
            }
            Command::Generate(a) => add("--out", Some(&a.out)),
            _ => {}
        }
        f
    }
}

/// Checks an output file before any work: writable, a regular file or none yet, and not the
/// same file as an input or another output.
fn check_outputs(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    for (flag, path) in outputs {
        output::check_writable(path, flag)?;
    }
    // An input may be a shard pattern: every file it matches is compared.
    let inputs: Vec<(&str, &Path, Vec<PathBuf>)> = inputs
        .iter()
        .map(|&(flag, path)| (flag, path, named(flag, path)))
        .collect();
    output::check_not_input(outputs, &inputs)
}

/// The files an input flag names: a shard pattern's matches, else the path itself.
fn named(flag: &str, path: &Path) -> Vec<PathBuf> {
    relu_fpt::data::shards::expand_pattern(path, flag).unwrap_or_else(|_| vec![path.to_path_buf()])
}

/// The directory an output file will be written in.
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The backend the user asked for; under mpirun, wrapped so that its passes split by rows
/// across the ranks and their sums are combined.
fn open_backend(choice: BackendChoice) -> Result<Box<dyn Backend>> {
    Ok(mpi::distribute(backend::select(choice)?))
}

/// A line on stderr as each stage and round ends (bars too on a terminal), or nothing with
/// `--quiet`.
fn stage_lines(quiet: bool) {
    progress::set_verbosity(if quiet {
        progress::Verbosity::Quiet
    } else {
        progress::Verbosity::Stages
    });
}

/// Refuses commands that do not split across MPI ranks (each rank would repeat the whole job).
fn one_process(command: &str) -> Result<()> {
    if mpi::ranks() > 1 {
        return Err(Error::invalid(format!(
            "{command} runs as one process: start it without mpirun (learn, subspace, eval, predict, demo and bench moments split across ranks)"
        )));
    }
    Ok(())
}

/// On SIGINT or SIGTERM: remove the unfinished output files and exit with 128 + the signal
/// (130, 143), as a shell expects of an interrupted command.
fn remove_outputs_on_interrupt() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                output::remove_in_flight();
                if mpi::is_root() {
                    eprintln!("relu-fpt: interrupted; unfinished output files removed");
                }
                std::process::exit(128 + signal);
            }
        });
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
    one_process("generate")?;
    let teacher = a.teacher.teacher(a.seed)?.ok_or_else(|| {
        Error::invalid("--teacher is required: random, parity, fan, deep-parity or composite")
    })?;
    let source = a.teacher.sampler(&teacher, a.seed)?;
    output::check_writable_dir(&a.out, "--out")?;
    // The three files' size is known: refuse up front rather than fill the disk.
    let (n, d) = (source.len() as u128, source.dim() as u128);
    let params: usize = teacher
        .network
        .layers
        .iter()
        .map(|l| l.weights.len() + l.bias.len())
        .sum();
    let json_bytes = 25 * params as u128 + 4096;
    let need = n * d * 4 + n * 4 + 2 * 128 + json_bytes;
    safety::check_free_space(
        &output::existing_ancestor(&a.out),
        need,
        &format!(
            "--out {}: {n} samples of d = {d} (x.npy, y.npy and teacher.json)",
            a.out.display()
        ),
    )?;
    // All three files are written into a registered staging directory and committed together
    // (one rename of the directory when --out is new or empty), so a failure or an interrupt
    // leaves --out as it was: no mix of two data sets, no empty directory.
    let staging = output::begin_dir(&a.out)?;
    let written = (|| -> Result<()> {
        let bar = progress::bar(source.len(), "generate");
        let mut x_out = NpyWriter::create_matrix(&staging.path.join("x.npy"), source.dim())?;
        let mut y_out = NpyWriter::create_vector(&staging.path.join("y.npy"))?;
        // Chunks of at most 16 MiB of x, whatever d.
        let chunk = ((16usize << 20) / (4 * source.dim()).max(1)).clamp(1, 1 << 16);
        for_each_chunk(&source, chunk, |_, x, y| {
            x_out.write_rows(x)?;
            y_out.write_rows(y)?;
            bar.inc(y.len() as u64);
            Ok(())
        })?;
        x_out.finish()?;
        y_out.finish()?;
        teacher.network.save(&staging.path.join("teacher.json"))?;
        bar.finish_and_clear();
        Ok(())
    })();
    match written {
        Ok(()) => staging.commit(&["x.npy", "y.npy", "teacher.json"])?,
        Err(e) => {
            staging.abandon();
            return Err(e);
        }
    }
    println!(
        "wrote {} samples (d = {}) of the {} teacher (relevant dimension {}) to {}: x.npy, y.npy, teacher.json",
        source.len(),
        source.dim(),
        teacher.name,
        teacher.relevant_dim,
        a.out.display()
    );
    Ok(())
}

fn subspace(a: SubspaceArgs) -> Result<()> {
    stage_lines(a.quiet);
    let mut outputs = vec![("--out", a.out.as_path())];
    if let Some(p) = &a.plot {
        outputs.push(("--plot", p.as_path()));
    }
    if mpi::is_root() {
        check_outputs(&outputs, &a.source.inputs())?;
    }
    if a.max_dim == 0 {
        return Err(Error::invalid(
            "--max-dim 0: the subspace needs room for at least one direction; give --max-dim 1 or more (default 32)",
        ));
    }
    if !(a.null_margin.is_finite() && a.null_margin >= 1.0) {
        return Err(Error::invalid(format!(
            "--null-margin {}: must be a number >= 1 (a bar below the null maximum accepts noise; default 1.25)",
            a.null_margin
        )));
    }
    if !a.method.finds_dimension() && a.dim.is_none() {
        return Err(Error::invalid(format!(
            "--method {}: the baselines need the number of directions, --dim K; only filtered PCA finds it",
            a.method.name()
        )));
    }
    let samples = a.source.open(a.seed)?;
    let d = samples.source.dim();
    if let Some(k) = a.dim.filter(|&k| k == 0 || k > d) {
        return Err(Error::invalid(format!(
            "--dim {k}: must lie in 1..={d} (the inputs have d = {d} columns)"
        )));
    }
    if mpi::is_root() {
        if let Some(w) = samples.repeated_rows_warning()? {
            eprintln!("relu-fpt: {w}");
        }
        let need = 25 * d as u128 + 1024;
        safety::check_free_space(&dir_of(&a.out), need, &format!("--out {}", a.out.display()))?;
    }
    let backend = open_backend(a.backend)?;
    let config = SubspaceConfig {
        method: a.method,
        max_dim: a.max_dim,
        dim: a.dim,
        seed: a.seed,
        refine_steps: a.refine_steps,
        whiten: !a.no_whiten,
        residual_rounds: a.residual_rounds,
        null_margin: a.null_margin,
        ..SubspaceConfig::default()
    };
    let t = Instant::now();
    let report = find_subspace(backend.as_ref(), samples.source.as_ref(), &config)?;
    let seconds = t.elapsed().as_secs_f64();
    // Nothing found: exit 2 and write nothing (the README's promise), on every rank alike.
    if let Some(none) = report.no_structure() {
        return Err(Error::NoStructure(Box::new(none)));
    }
    if !mpi::is_root() {
        return Ok(());
    }
    output::write_atomic(&a.out, report.to_json().as_bytes())?;
    if let Some(path) = &a.plot {
        output::write_atomic(path, subspace_plot(&report).as_bytes())?;
    }
    let truth = samples
        .teacher
        .as_ref()
        .map(|t| TeacherComparison::new(&t.network, &report.basis, a.seed ^ 0x5eed));
    if a.json {
        let mut v = report.to_value();
        v["seconds"] = seconds.into();
        v["backend"] = backend.description().into();
        add_ranks(&mut v);
        if let Some(m) = &truth {
            v["teacher"] = serde_json::to_value(m).expect("numbers");
        }
        println!("{v}");
    } else {
        print!("{}", report.summary());
        if let Some(m) = &truth {
            println!("{}", m.line());
        }
        println!(
            "{:.1} s on {}; wrote {}",
            seconds,
            backend.description(),
            a.out.display()
        );
    }
    Ok(())
}

/// Each round's strongest filter eigenvalues, in multiples of their null edge, against the
/// round's calibrated bar: what cleared it and by how much, and how far the rest fell short.
fn subspace_plot(report: &relu_fpt::subspace::SubspaceReport) -> String {
    let groups: Vec<plot::BarGroup> = report
        .rounds
        .iter()
        .enumerate()
        .map(|(i, r)| plot::BarGroup {
            label: format!("round {} ({})", i + 1, r.kind.name()),
            values: r.top_eigenvalues.iter().map(|l| l / r.null_edge).collect(),
            // Baselines have no calibrated bar: draw the null edge itself.
            threshold: if r.threshold.is_finite() {
                r.threshold
            } else {
                1.0
            },
        })
        .collect();
    plot::bar_chart(
        &format!("{}: strongest filter per round", report.method.name()),
        "|eigenvalue| / null edge",
        &groups,
    )
}

/// `--time-budget` of `learn` and `demo`: a positive number of seconds, one process.
fn check_time_budget(budget: Option<f64>) -> Result<()> {
    let Some(b) = budget else {
        return Ok(());
    };
    if !(b.is_finite() && b > 0.0) {
        return Err(Error::invalid(format!(
            "--time-budget {b}: give a positive number of seconds (e.g. --time-budget 30), or leave it out to learn to the accuracy the data supports"
        )));
    }
    if mpi::ranks() > 1 {
        return Err(Error::invalid(
            "--time-budget: not available under mpirun (each rank reads its own clock, so the ranks would take different decisions); leave it out, or run one process",
        ));
    }
    Ok(())
}

fn learn_cmd(a: LearnArgs) -> Result<()> {
    stage_lines(a.quiet);
    if mpi::is_root() {
        check_outputs(&[("--out", a.out.as_path())], &a.source.inputs())?;
    }
    // The flags by their own names before any work.
    let options = a.options();
    options.check_as(&learn_spelling)?;
    check_time_budget(a.time_budget)?;
    let samples = a.source.open(a.seed)?;
    let (n, d) = (samples.source.len(), samples.source.dim());
    options.check_for_dim(d, &learn_spelling)?;
    let config = options.into_config();
    safety::check_subspace_memory(d, &samples.source.describe())?;
    let note = check_learn_work(&config, n, d)?;
    if mpi::is_root() {
        if let Some(note) = note {
            eprintln!("relu-fpt: {note}");
        }
        if let Some(w) = samples.repeated_rows_warning()? {
            eprintln!("relu-fpt: {w}");
        }
        // At least one basis row of d numbers goes into the model file.
        safety::check_free_space(
            &dir_of(&a.out),
            25 * d as u128 + 4096,
            &format!("--out {}", a.out.display()),
        )?;
    }
    let backend = open_backend(a.backend)?;
    // The rows drawn or read once rather than on every pass, in one process and without a
    // time budget (whose clock would not count the drawing or reading).
    let wanted = !a.stream && mpi::ranks() == 1 && config.time_budget.is_none();
    let drawn = match wanted
        .then(|| draw_samples(backend.as_ref(), samples.source.as_ref()))
        .transpose()?
    {
        Some(Drawn::Memory {
            samples: rows,
            seconds,
            ..
        }) => {
            let (how, again) = match samples.teacher {
                Some(_) => ("drawn", "no pass draws them again"),
                None => ("read", "no pass reads the files again"),
            };
            progress::stage_done("samples", || {
                vec![
                    format!("{} rows {how} into memory", progress::count(n)),
                    progress::seconds(seconds),
                    again.to_string(),
                ]
            });
            Some(rows)
        }
        _ => None,
    };
    let source: &dyn SampleSource = match &drawn {
        Some(m) => m,
        None => samples.source.as_ref(),
    };
    let report = learn(backend.as_ref(), source, &config)?;
    drop(drawn);
    if !mpi::is_root() {
        return Ok(());
    }
    report.model.save(&a.out)?;
    if a.json {
        let mut v = report.to_json();
        add_ranks(&mut v);
        println!("{v}");
    } else {
        print!("{}", report.summary());
        println!("wrote {}", a.out.display());
    }
    Ok(())
}

/// Adds `"ranks": P` to a JSON report and, under mpirun, what was communicated.
fn add_ranks(v: &mut serde_json::Value) {
    v["ranks"] = mpi::ranks().into();
    if mpi::ranks() > 1 {
        let c = mpi::communication();
        v["communication"] = serde_json::json!({
            "combines": c.combines, "combined_bytes": c.combined_bytes,
            "gathered_bytes": c.gathered_bytes,
        });
    }
}

fn load_model_for(path: &Path, source: &dyn SampleSource, data: &Path) -> Result<Network> {
    let model = Network::load(path)?;
    // Evaluated in f32 on the CPU and the GPU alike: a weight beyond f32 is refused by both
    // (as `export` refuses it), rather than giving infinities that differ between them.
    model.check_float32(&path.display().to_string())?;
    if model.input_dim != source.dim() {
        return Err(Error::invalid(format!(
            "{}: the model takes d = {} inputs but {} has d = {} columns: use the model learned on data of this dimension",
            path.display(),
            model.input_dim,
            data.display(),
            source.dim()
        )));
    }
    Ok(model)
}

/// Refuses predictions that overflowed f32 (the model's output beyond 3.4e38 on these inputs):
/// `start` is the row of `p[0]`.
fn finite_predictions(p: &[f32], start: u64, model: &Path) -> Result<()> {
    match p.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::invalid(format!(
            "--model {}: the prediction for row {} is {}: the model's output overflows float32 (beyond 3.4e38) on this input; rescale the model or the inputs",
            model.display(),
            start + i as u64,
            p[i]
        ))),
    }
}

fn predict(a: PredictArgs) -> Result<()> {
    if mpi::is_root() {
        check_outputs(
            &[("--out", a.out.as_path())],
            &[("--model", a.model.as_path()), ("--x", a.x.as_path())],
        )?;
    }
    safety::check_inputs(&[("--model", &a.model, false), ("--x", &a.x, true)])?;
    let source = relu_fpt::data::open_inputs(&a.x)?;
    let model = load_model_for(&a.model, source.as_ref(), &a.x)?;
    if mpi::is_root() {
        // The output's size is known: N float32 values and a header.
        safety::check_free_space(
            &dir_of(&a.out),
            source.len() as u128 * 4 + 128,
            &format!(
                "--out {} ({} float32 predictions)",
                a.out.display(),
                source.len()
            ),
        )?;
    }
    let backend = open_backend(a.backend)?;
    // Rank 0 alone writes (the other ranks send it their predictions).
    let mut out = match mpi::is_root() {
        true => Some(NpyWriter::create_vector(&a.out)?),
        false => None,
    };
    predict_stream(
        backend.as_ref(),
        &model,
        source.as_ref(),
        |p, _| match &mut out {
            Some(w) => {
                finite_predictions(p, w.rows(), &a.model)?;
                w.write_rows(p)
            }
            None => Ok(()),
        },
    )?;
    if let Some(w) = out {
        let rows = w.finish()?;
        println!("wrote {rows} predictions to {}", a.out.display());
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let mut inputs = vec![
        ("--model", a.model.as_path()),
        ("--x", a.x.as_path()),
        ("--y", a.y.as_path()),
    ];
    if let Some(t) = &a.teacher {
        inputs.push(("--teacher", t.as_path()));
    }
    if let (Some(p), true) = (&a.plot, mpi::is_root()) {
        check_outputs(&[("--plot", p.as_path())], &inputs)?;
    }
    let mut files = vec![
        ("--model", a.model.as_path(), false),
        ("--x", a.x.as_path(), true),
        ("--y", a.y.as_path(), true),
    ];
    if let Some(t) = &a.teacher {
        files.push(("--teacher", t.as_path(), false));
    }
    safety::check_inputs(&files)?;
    let source = relu_fpt::data::open_samples(&a.x, &a.y)?;
    let model = load_model_for(&a.model, source.as_ref(), &a.x)?;
    let teacher = match &a.teacher {
        Some(p) => Some(Network::load(p)?),
        None => None,
    };
    if let (Some(t), Some(path)) = (&teacher, &a.teacher) {
        if t.input_dim != model.input_dim {
            return Err(Error::invalid(format!(
                "--teacher {}: the teacher takes d = {} inputs but the model (--model {}) takes d = {}: give the teacher the samples were generated from",
                path.display(),
                t.input_dim,
                a.model.display(),
                model.input_dim
            )));
        }
    }
    let backend = open_backend(a.backend)?;
    let mut sums = ErrorSums::default();
    let mut points = Vec::new();
    predict_stream(backend.as_ref(), &model, source.as_ref(), |p, y| {
        finite_predictions(p, sums.n, &a.model)?;
        sums.add(p, y);
        for (&pi, &yi) in p.iter().zip(y) {
            if points.len() < 2000 {
                points.push((yi as f64, pi as f64));
            }
        }
        Ok(())
    })?;
    if !mpi::is_root() {
        // The sums above were all made on rank 0, in row order.
        return Ok(());
    }
    let evaluation = sums.evaluation();
    let mut v = serde_json::to_value(evaluation).expect("numbers");
    add_ranks(&mut v);
    let mut lines = vec![evaluation.line()];
    if let Some(t) = &teacher {
        let found = model
            .subspace
            .clone()
            .unwrap_or_else(|| model.first_layer_span());
        let cmp = TeacherComparison::new(t, &found, 7);
        let (angles, missed) = (&cmp.principal_angles, cmp.gradient_energy_missed);
        v["principal_angles"] = serde_json::json!(angles);
        v["gradient_energy_missed"] = missed.into();
        lines.push(format!(
            "against the teacher: principal angles {:?} rad, gradient energy missed {missed:.2e}",
            angles
                .iter()
                .map(|a| (a * 1e4).round() / 1e4)
                .collect::<Vec<_>>()
        ));
    }
    if let Some(path) = &a.plot {
        output::write_atomic(path, plot::prediction_panels(&points).as_bytes())?;
    }
    if a.json {
        println!("{v}");
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    check_outputs(
        &[("--out", a.out.as_path())],
        &[("--model", a.model.as_path())],
    )?;
    safety::check_inputs(&[("--model", &a.model, false)])?;
    let model = Network::load(&a.model)?;
    match a.format {
        ExportFormat::Onnx => {
            relu_fpt::export::write_onnx(&model, &a.model.display().to_string(), &a.out)?;
            println!(
                "wrote {} (ONNX opset {}: input x (N, {}) float32, output y (N, 1))",
                a.out.display(),
                relu_fpt::export::OPSET_VERSION,
                model.input_dim
            );
        }
    }
    Ok(())
}

/// The samples (a built-in teacher's or a file's) in memory once, or why they are not.
enum Drawn {
    /// In memory: the rows, their bytes, and the seconds the drawing took.
    Memory {
        samples: relu_fpt::data::MemorySource,
        bytes: u128,
        seconds: f64,
    },
    /// Left to the generator: the device draws the rows itself on every pass (none cross the
    /// bus).
    Device,
    /// Left to the generator: these many bytes would take more than half the available memory.
    TooBig(u128),
}

/// The samples in memory when the backend reads rows on the host and they fit comfortably (at
/// most half the available memory), so that every pass reads them there instead of drawing
/// them again (a built-in teacher: at d = 512 and 2.6e5 rows `learn` took 23 s instead of
/// 48 s) or copying them from the file again (each pass's positioned reads and, in the
/// trainer, its reader thread's copies: a fifth of the polish's samples on the random [16, 8]
/// network's 2.5e5 rows at d = 256). The same model either way. A GPU draws a built-in
/// teacher's rows on the device itself.
fn draw_samples(backend: &dyn Backend, generator: &dyn SampleSource) -> Result<Drawn> {
    let (n, d) = (generator.len(), generator.dim());
    let bytes = n as u128 * (d as u128 + 1) * 4;
    if backend.kind() != Device::Cpu {
        return Ok(Drawn::Device);
    }
    if safety::available_memory().is_some_and(|m| bytes > m as u128 / 2) {
        return Ok(Drawn::TooBig(bytes));
    }
    let t = Instant::now();
    let samples = relu_fpt::data::MemorySource::read_all(
        generator,
        "free some memory: the rows are held in memory only when they take at most half of what is available",
    )?;
    Ok(Drawn::Memory {
        samples,
        bytes,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The demo's samples in memory ([`draw_samples`]); None leaves them to the generator. Says
/// which on stdout.
fn draw_demo_samples(
    backend: &dyn Backend,
    generator: &GaussianSource,
) -> Result<Option<relu_fpt::data::MemorySource>> {
    let n = generator.len();
    Ok(match draw_samples(backend, generator)? {
        Drawn::Device => {
            println!("demo: the device draws the samples itself on every pass (none cross the bus); the time below is the learner's on them");
            None
        }
        Drawn::TooBig(bytes) => {
            println!(
                "demo: the {n} samples ({}) would take more than half the available memory, so they are drawn again on every pass and the time below includes drawing them",
                safety::bytes(bytes)
            );
            None
        }
        Drawn::Memory {
            samples,
            bytes,
            seconds,
        } => {
            println!(
                "demo: drew the {n} samples into memory ({}) in {seconds:.1} s, before the clock starts: the time below is the learner's, not the generator's",
                safety::bytes(bytes)
            );
            Some(samples)
        }
    })
}

fn demo(a: DemoArgs) -> Result<()> {
    stage_lines(a.quiet);
    if a.d < 4 {
        return Err(Error::invalid(format!(
            "--d {}: the demo's parity teacher reads k = 4 coordinates, so --d must be at least 4 (default 128)",
            a.d
        )));
    }
    if a.n < 2 {
        return Err(Error::invalid(format!(
            "--n {}: learning needs at least 2 samples (default 1000000)",
            a.n
        )));
    }
    check_time_budget(a.time_budget)?;
    teacher::check_teacher_size(a.d, &[], Some(4), None)?;
    safety::check_subspace_memory(a.d, "--d")?;
    let backend = open_backend(a.backend)?;
    let mut spec = TeacherSpec::new(TeacherKind::Parity, a.d);
    spec.k = Some(4);
    spec.seed = a.seed;
    let teacher = teacher::build(&spec)?;
    println!(
        "demo: learning the hard parity teacher (docs/algorithm.md, hard teachers: d = {}, k = 4; every Hermite moment of degree < 4 vanishes, so pHd and online SGD see nothing) from {} samples on {}, with the defaults of `learn`",
        a.d,
        a.n,
        backend.description()
    );
    let generator = GaussianSource::new(teacher.network.clone(), a.n, a.seed, 0.0)?;
    // The samples are drawn once, before the clock starts, so that the time reported is the
    // learner's and not the generator's (which would draw every row again on every pass).
    let drawn = draw_demo_samples(backend.as_ref(), &generator)?;
    let train: &dyn SampleSource = match &drawn {
        Some(m) => m,
        None => &generator,
    };
    // The defaults a user of `learn` gets: nothing here knows the teacher's width.
    let config = LearnOptions {
        seed: a.seed,
        time_budget: a.time_budget,
        ..LearnOptions::default()
    }
    .into_config();
    let t = Instant::now();
    let report: LearnReport = learn(backend.as_ref(), train, &config)?;
    drop(drawn);
    let learn_seconds = t.elapsed().as_secs_f64();
    print!("{}", report.summary());
    // Fresh test samples from an independent seed.
    let test = GaussianSource::new(
        teacher.network.clone(),
        100_000,
        a.seed.wrapping_add(1_000_003),
        0.0,
    )?;
    let mut sums = ErrorSums::default();
    predict_stream(backend.as_ref(), &report.model, &test, |p, y| {
        sums.add(p, y);
        Ok(())
    })?;
    if !mpi::is_root() {
        return Ok(());
    }
    let cmp = TeacherComparison::new(
        &teacher.network,
        report.model.subspace.as_deref().unwrap_or(&[]),
        a.seed ^ 0x5eed,
    );
    println!("{}", cmp.line());
    println!(
        "test MSE/Var(y) on {} fresh samples: {}; learned in {:.1} s",
        sums.n,
        progress::num(sums.mse() / sums.label_variance()),
        learn_seconds
    );
    Ok(())
}

fn bench_moments(a: BenchMomentsArgs) -> Result<()> {
    // Sizes first: before the FMA peak is measured or any sample allocated.
    relu_fpt::bench::check_bench_moments(a.n, &a.d, &a.bins)?;
    if a.runs < relu_fpt::bench::MIN_TIMED_RUNS {
        return Err(Error::invalid(
            "--runs: at least 5 timed runs, so the median means something",
        ));
    }
    if let Some(p) = a.peak_gflops {
        if !(p.is_finite() && p > 0.0) {
            return Err(Error::invalid(format!(
                "--peak-gflops {p}: give a positive number (GFLOP/s), or leave it out to measure"
            )));
        }
    }
    // Each backend once, in the order given (auto resolves first).
    let mut opened: Vec<(Box<dyn Backend>, Option<CpuFacts>)> = Vec::new();
    for &choice in &a.backend {
        let chosen = backend::select(choice)?;
        if opened.iter().any(|(b, _)| b.kind() == chosen.kind()) {
            return Err(Error::invalid(format!(
                "--backend: the {} backend is named twice (auto picks the GPU when there is one, else the CPU); give each once",
                chosen.kind()
            )));
        }
        // On the CPU: the chosen kernel, and the FMA peak measured before the moments (or
        // given). Under mpirun the ranks would measure the peak at once and share the cores,
        // so there it is only what --peak-gflops gives.
        let (chosen, cpu): (Box<dyn Backend>, _) = if chosen.kind() == Device::Cpu {
            let cpu = relu_fpt::backend::cpu::CpuBackend::with_moment_kernel(a.kernel);
            let isa = cpu.moment_isa()?;
            let peak = match a.peak_gflops {
                Some(p) => Some((p, None)),
                None if mpi::ranks() > 1 => None,
                None => Some(relu_fpt::backend::cpu::peak::best_of(
                    &relu_fpt::backend::cpu::peak::measure_all(0.3, 3),
                )),
            };
            (Box::new(cpu), Some((isa, peak)))
        } else {
            (chosen, None)
        };
        // Under mpirun every rank holds the generated samples and each pass splits them by rows.
        opened.push((mpi::distribute(chosen), cpu));
    }
    let backends: Vec<&dyn Backend> = opened.iter().map(|(b, _)| b.as_ref()).collect();
    let results =
        relu_fpt::bench::bench_moments_grid(&backends, a.n, &a.d, &a.bins, a.runs, |r| {
            let cpu = opened.iter().find(|(b, _)| b.kind() == r.backend);
            if let Some((_, Some((isa, peak)))) = cpu {
                r.kernel = Some(isa.name().to_string());
                if let Some((peak, per_cpu_second)) = peak {
                    r.set_peak(*peak, *per_cpu_second);
                }
            }
            if a.json {
                let mut v = serde_json::to_value(&r).expect("a struct of strings and numbers");
                add_ranks(&mut v);
                println!("{v}");
            }
            Ok(())
        })?;
    match results.as_slice() {
        _ if a.json => {}
        [one] => println!("{}", one.line()),
        all => print!("{}", relu_fpt::bench::moments_table(all)),
    }
    Ok(())
}

/// The CPU backend's moments kernel and FMA peak (GFLOP/s, and per CPU second when measured).
type CpuFacts = (
    relu_fpt::backend::cpu::syrk::Isa,
    Option<(f64, Option<f64>)>,
);

fn bench_kernel(a: BenchKernelArgs) -> Result<()> {
    use relu_fpt::backend::cpu::peak;
    one_process("bench kernel")?;
    relu_fpt::bench::check_bench_kernel(a.d, a.rows, a.n, a.runs)?;
    let isa = a.kernel.resolve()?;
    let (peak, per_cpu_second) = match a.peak_gflops {
        Some(p) if p.is_finite() && p > 0.0 => (p, None),
        Some(p) => {
            return Err(Error::invalid(format!(
                "--peak-gflops {p}: give a positive number (GFLOP/s), or leave it out to measure"
            )))
        }
        None => peak::best_of(&peak::measure_all(0.3, 3)),
    };
    let r = relu_fpt::bench::bench_kernel(isa, a.d, a.rows, a.n, a.runs)?;
    if a.json {
        println!("{}", r.json_against(peak, per_cpu_second));
    } else {
        println!("{}", r.line_against(peak, per_cpu_second));
    }
    Ok(())
}

fn bench_trainer(a: BenchTrainerArgs) -> Result<()> {
    one_process("bench trainer")?;
    let r = relu_fpt::bench::bench_trainer(&a.widths, a.rows, a.batch, a.passes, a.runs)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&r).expect("numbers and strings")
        );
    } else {
        println!("{}", r.line());
    }
    Ok(())
}

fn bench_peak(a: BenchPeakArgs) -> Result<()> {
    use relu_fpt::backend::cpu::peak;
    one_process("bench peak")?;
    if !(a.seconds.is_finite() && a.seconds > 0.0 && a.seconds <= 60.0) || a.repeats == 0 {
        return Err(Error::invalid(
            "--seconds must be in (0, 60] and --repeats at least 1",
        ));
    }
    let peaks = match a.kernel {
        relu_fpt::backend::cpu::syrk::MomentKernel::Auto => peak::measure_all(a.seconds, a.repeats),
        k => vec![peak::measure(k.resolve()?, a.seconds, a.repeats)],
    };
    let (total, per_cpu_second) = peak::best_of(&peaks);
    let read = peak::read_bandwidth(peak::READ_PROBE_BYTES, a.repeats);
    let best = peaks
        .iter()
        .find(|p| p.gflops_total == total)
        .expect("the best is one of them");
    let bench = relu_fpt::bench::PeakBench {
        peaks: &peaks,
        best,
        per_cpu_second,
        read_gbytes_per_s: read,
        read_repeats: a.repeats,
    };
    if a.json {
        println!("{}", bench.json());
    } else {
        print!("{}", bench.lines());
    }
    Ok(())
}

fn bench_search(a: BenchSearchArgs) -> Result<()> {
    use relu_fpt::search::bench::{bench_search, search_table, SearchBenchConfig};
    one_process("bench search")?;
    relu_fpt::bench::check_bench_search(a.rows, &a.budgets)?;
    let backend = backend::select(a.backend)?;
    let generators = a
        .generators
        .iter()
        .map(|g| match g.as_str() {
            "greedy" => Ok(relu_fpt::search::Generator::Greedy),
            "product" => Ok(relu_fpt::search::Generator::Product),
            other => Err(Error::invalid(format!(
                "--generators: unknown generator '{other}' (use greedy, product or both)"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut config = SearchBenchConfig {
        budgets: a.budgets,
        seeds: a.seeds,
        generators,
        ..SearchBenchConfig::default()
    };
    config.search.hidden = a.hidden;
    config.train_rows = a.rows;
    config.validation_rows = (a.rows / 4).max(1);
    if !a.cases.is_empty() {
        config
            .cases
            .retain(|c| a.cases.iter().any(|want| c.name.contains(want.as_str())));
        if config.cases.is_empty() {
            return Err(Error::invalid(
                "--cases: no benchmark case matches (names: fan m=4 r=2, random [2] r=2 bias, ...)",
            ));
        }
    }
    let json = a.json;
    let bar = progress::bar(
        (config.cases.len() * config.seeds.len() * config.budgets.len() * config.generators.len())
            as u64,
        "bench",
    );
    let rows = bench_search(backend.as_ref(), &config, |row| {
        if json {
            bar.suspend(|| println!("{}", serde_json::to_string(row).expect("plain fields")));
        }
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    if !json {
        print!("{}", search_table(&rows, &backend.description()));
    }
    Ok(())
}

fn devices() -> Result<()> {
    one_process("devices")?;
    for line in relu_fpt::backend::gpu::list_adapters() {
        println!("{line}");
    }
    match relu_fpt::backend::gpu::GpuBackend::new(true) {
        Ok(gpu) => {
            let err = relu_fpt::backend::gpu::smoke_test(gpu.context())?;
            println!(
                "chosen: {} (software: {}); smoke kernel max error {err:.1e}",
                gpu.description(),
                gpu.context().is_software()
            );
            Ok(())
        }
        Err(e) => {
            println!("no adapter could be opened: {e}");
            println!("--backend auto will use the CPU");
            Ok(())
        }
    }
}
