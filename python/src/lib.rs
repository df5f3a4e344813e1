//! `relu_fpt._core`: the Python extension over the relu-fpt library. The Python package
//! (`python/pysrc/relu_fpt`) wraps it in a scikit-learn estimator; this module does the
//! conversions: numpy arrays in (float32 C-contiguous rows are read in place, anything else is
//! converted in logical row order), the GIL released around every computation, library errors
//! out as `ValueError` (bad input), `OSError` (files) or `RuntimeError` (the device).

mod fallback;

use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple, PyType};
use relu_fpt::backend::{cpu::CpuBackend, gpu::GpuBackend, Backend};
use relu_fpt::data::{SampleSource, SliceSource};
use relu_fpt::learn::options::keyword_spelling;
use relu_fpt::learn::{LearnMethod, LearnOptions};
use relu_fpt::network::{Network, NetworkError};
use relu_fpt::subspace::{Method, NoStructure, SubspaceConfig};
use relu_fpt::teacher::{TeacherKind, TeacherSpec};
use relu_fpt::Error;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

/// Row-major values, borrowed from a numpy array or converted from it.
type Rows<'a> = Cow<'a, [f32]>;
/// A layer as numpy arrays: weights (outputs x inputs) and bias (outputs).
type LayerArrays<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<f64>>);

/// A library error as the Python exception a caller expects.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::Io { .. }
        | Error::Network(NetworkError::Unreadable { .. } | NetworkError::Unwritable { .. }) => {
            PyOSError::new_err(e.to_string())
        }
        Error::Gpu(_) => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn network_err(e: NetworkError) -> PyErr {
    py_err(Error::Network(e))
}

/// The rows of a 2-D float32 array, row-major: borrowed when the array is C-contiguous,
/// otherwise (Fortran order, strided views) copied in logical order. `as_slice` alone is not
/// enough: it also succeeds on Fortran-ordered arrays, whose memory is column-major.
fn rows<'a>(x: &'a PyReadonlyArray2<'_, f32>) -> Rows<'a> {
    if x.is_c_contiguous() {
        if let Ok(slice) = x.as_slice() {
            return Cow::Borrowed(slice);
        }
    }
    Cow::Owned(x.as_array().iter().copied().collect())
}

/// A 1-D float32 array's values (a copy only when it is strided).
fn values<'a>(y: &'a PyReadonlyArray1<'_, f32>) -> Rows<'a> {
    match y.as_slice() {
        Ok(s) if y.is_c_contiguous() => Cow::Borrowed(s),
        _ => Cow::Owned(y.as_array().iter().copied().collect()),
    }
}

/// Refuses NaN and infinity (the library's passes assume finite samples).
fn check_finite(name: &str, v: &[f32], dim: usize) -> PyResult<()> {
    match v.iter().position(|a| !a.is_finite()) {
        None => Ok(()),
        Some(i) => Err(PyValueError::new_err(format!(
            "{name}: row {}, column {} is {}: samples must be finite float32 values",
            i / dim,
            i % dim,
            v[i]
        ))),
    }
}

static CPU: OnceLock<CpuBackend> = OnceLock::new();
/// Hardware GPU (for "auto") and any adapter, software included (for "gpu"), each opened once
/// per process: opening a device costs far more than a small fit.
static GPU_HARDWARE: OnceLock<Result<GpuBackend, String>> = OnceLock::new();
static GPU_ANY: OnceLock<Result<GpuBackend, String>> = OnceLock::new();

/// The backend for "auto" (a hardware GPU when there is one, else the CPU), "cpu" or "gpu"
/// (any adapter, lavapipe included).
fn backend(choice: &str) -> PyResult<&'static dyn Backend> {
    let cpu = || -> &'static dyn Backend { CPU.get_or_init(CpuBackend::new) };
    match choice {
        "cpu" => Ok(cpu()),
        "auto" => match GPU_HARDWARE.get_or_init(|| GpuBackend::new(false).map_err(|e| e.to_string())) {
            Ok(g) => Ok(g),
            Err(_) => Ok(cpu()),
        },
        "gpu" => match GPU_ANY.get_or_init(|| GpuBackend::new(true).map_err(|e| e.to_string())) {
            Ok(g) => Ok(g),
            Err(e) => Err(PyRuntimeError::new_err(format!(
                "backend=\"gpu\": no GPU adapter could be opened ({e}); use backend=\"auto\" or \"cpu\""
            ))),
        },
        other => Err(PyValueError::new_err(format!(
            "backend={other:?}: expected \"auto\", \"cpu\" or \"gpu\""
        ))),
    }
}

/// A ReLU network on R^d with a scalar output, as relu-fpt writes it: an optional projection
/// z = P x (r x d, no bias), then affine layers with ReLU between them.
///
/// `Network(text)` parses a relu-fpt/network JSON document; `relu_fpt.load(path)` reads a file.
#[pyclass(module = "relu_fpt", name = "Network", frozen)]
struct PyNetwork {
    inner: Network,
}

impl PyNetwork {
    fn check_input(&self, x: &PyReadonlyArray2<'_, f32>) -> PyResult<()> {
        let d = x.shape()[1];
        if d != self.inner.input_dim {
            return Err(PyValueError::new_err(format!(
                "X has {d} features, but the network takes {} (input_dim)",
                self.inner.input_dim
            )));
        }
        Ok(())
    }
}

/// `x` as a 2-D float32 array: itself when it is one, else `numpy.asarray(x, float32)`.
fn float32_rows<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
) -> PyResult<PyReadonlyArray2<'py, f32>> {
    if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f32>>() {
        return Ok(a);
    }
    let converted = py
        .import("numpy")?
        .call_method1("asarray", (x, "float32"))?;
    converted.extract().map_err(|_| {
        let shape = converted
            .getattr("shape")
            .map(|s| s.to_string())
            .unwrap_or_default();
        PyValueError::new_err(format!(
            "X has shape {shape}: pass a 2-D array of shape (n_samples, input_dim)"
        ))
    })
}

fn matrix<'py>(py: Python<'py>, rows: &[Vec<f64>], cols: usize) -> Bound<'py, PyArray2<f64>> {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    flat.into_pyarray(py)
        .reshape([rows.len(), cols])
        .expect("rows of equal length")
}

#[pymethods]
impl PyNetwork {
    #[new]
    fn new(text: &str) -> PyResult<Self> {
        let inner = Network::from_json(text, "Network(text)").map_err(network_err)?;
        Ok(PyNetwork { inner })
    }

    /// Reads a relu-fpt/network JSON file (versions 1 and 2).
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        let inner = Network::load(&path).map_err(network_err)?;
        Ok(PyNetwork { inner })
    }

    /// Writes the network as relu-fpt/network JSON (through a temporary file renamed into
    /// place: a failed write leaves no file).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path)).map_err(network_err)
    }

    /// The relu-fpt/network JSON text.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// Writes the network as an ONNX model (opset 17): float32 input "x" (N, d), output "y"
    /// (N, 1); MatMul for the projection, Gemm and Relu per layer.
    fn to_onnx(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| relu_fpt::export::write_onnx(&self.inner, "network", &path))
            .map_err(py_err)
    }

    /// The ONNX model as bytes (what `to_onnx` writes).
    fn onnx_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes =
            relu_fpt::export::onnx_bytes(&self.inner, "network").map_err(|e| py_err(e.into()))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Outputs for X (N x d), computed in f64 and rounded to float32, on all cores. float32
    /// arrays are read as they are (in place when C-contiguous); anything else numpy can turn
    /// into a 2-D float32 array (float64, lists) is converted first.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let x = float32_rows(py, x)?;
        self.check_input(&x)?;
        let n = x.shape()[0];
        let data = rows(&x);
        check_finite("X", &data, self.inner.input_dim)?;
        let out = py.detach(|| self.inner.forward_f32(&data, n));
        Ok(out.into_pyarray(py))
    }

    /// d, the length of x.
    #[getter]
    fn input_dim(&self) -> usize {
        self.inner.input_dim
    }

    /// The projection P (r x d), or None.
    #[getter]
    fn projection<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray2<f64>>> {
        let d = self.inner.input_dim;
        self.inner.projection.as_ref().map(|p| matrix(py, p, d))
    }

    /// Orthonormal rows (r x d) spanning the subspace a learner found, or None.
    #[getter]
    fn subspace<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray2<f64>>> {
        let d = self.inner.input_dim;
        self.inner.subspace.as_ref().map(|s| matrix(py, s, d))
    }

    /// The layers as (weights (outputs x inputs), bias (outputs,)) pairs.
    #[getter]
    fn layers<'py>(&self, py: Python<'py>) -> Vec<LayerArrays<'py>> {
        self.inner
            .layers
            .iter()
            .map(|l| {
                let w = l
                    .weights
                    .clone()
                    .into_pyarray(py)
                    .reshape([l.outputs, l.inputs])
                    .expect("outputs x inputs");
                (w, l.bias.clone().into_pyarray(py))
            })
            .collect()
    }

    /// Widths of the hidden layers.
    #[getter]
    fn hidden_widths(&self) -> Vec<usize> {
        self.inner.hidden_widths()
    }

    /// Pickling: rebuilt from its JSON text.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let cls: Bound<'py, PyType> = slf.get_type();
        let args = PyTuple::new(py, [slf.get().inner.to_json()])?;
        PyTuple::new(py, [cls.into_any(), args.into_any()])
    }

    fn __repr__(&self) -> String {
        let n = &self.inner;
        match &n.projection {
            Some(p) => format!(
                "Network(input_dim={}, projection={}x{}, hidden_widths={:?})",
                n.input_dim,
                p.len(),
                n.input_dim,
                n.hidden_widths()
            ),
            None => format!(
                "Network(input_dim={}, hidden_widths={:?})",
                n.input_dim,
                n.hidden_widths()
            ),
        }
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<PyNetwork>() {
            Ok(o) => o.get().inner == self.inner,
            Err(_) => false,
        }
    }
}

/// What filtered PCA saw when no direction cleared its null, for the report.
fn no_structure_json(none: &NoStructure) -> serde_json::Value {
    serde_json::json!({
        "rows": none.rows, "input_dim": none.input_dim, "best_score": none.best_score,
        "threshold": none.threshold, "null_max": none.null_max, "filters": none.filters,
        "min_filter_rows": none.min_filter_rows, "suggested_rows": none.suggested_rows,
    })
}

/// Checks x (N x d) and y (N) and returns their rows.
fn samples<'a>(
    x: &'a PyReadonlyArray2<'_, f32>,
    y: &'a PyReadonlyArray1<'_, f32>,
) -> PyResult<(usize, Rows<'a>, Rows<'a>)> {
    let (n, d) = (x.shape()[0], x.shape()[1]);
    if y.len() != n {
        return Err(PyValueError::new_err(format!(
            "X has {n} rows but y has {}: one label per row",
            y.len()
        )));
    }
    if d == 0 {
        return Err(PyValueError::new_err(
            "X has 0 features: at least one is needed",
        ));
    }
    let (xr, yr) = (rows(x), values(y));
    check_finite("X", &xr, d)?;
    check_finite("y", &yr, 1)?;
    Ok((d, xr, yr))
}

/// Learns a network from X (N x d float32) and y (N float32): filtered PCA, the search, the
/// descent and the polish (`method="paper"`: the paper's rounds and enumerate-and-test over the
/// product net, no gradient stage). When filtered PCA finds no direction (or there are too few rows to
/// run it), a ridge regression on x is returned instead and the report says why. Returns the
/// network, the report as JSON text and filtered PCA's basis (r x d; 0 x d for the fallback).
#[pyfunction]
#[pyo3(signature = (x, y, *, hidden, budget, max_dim, polish, polish_epochs, descent_epochs, deep_widths, deep_epochs, refine_steps, validation_fraction, seed, backend, method="default", time_budget=None, target_error=None, spare_rows=None, max_train_rows=None, whiten=true))]
#[allow(clippy::too_many_arguments)]
fn learn<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'_, f32>,
    y: PyReadonlyArray1<'_, f32>,
    hidden: Vec<usize>,
    budget: Option<usize>,
    max_dim: usize,
    polish: bool,
    polish_epochs: Option<usize>,
    descent_epochs: Option<usize>,
    deep_widths: Option<Vec<usize>>,
    deep_epochs: Option<usize>,
    refine_steps: usize,
    validation_fraction: f64,
    seed: u64,
    backend: &str,
    method: &str,
    time_budget: Option<f64>,
    target_error: Option<f64>,
    spare_rows: Option<usize>,
    max_train_rows: Option<usize>,
    whiten: bool,
) -> PyResult<(PyNetwork, String, Bound<'py, PyArray2<f64>>)> {
    let method = match method {
        "default" => LearnMethod::Default,
        "paper" => LearnMethod::Paper,
        other => {
            return Err(PyValueError::new_err(format!(
                "method={other:?}: expected \"default\" or \"paper\""
            )))
        }
    };
    // The one conversion the command line makes too (`LearnOptions`).
    let options = LearnOptions {
        method,
        hidden,
        budget,
        max_dim,
        validation_fraction,
        polish,
        polish_epochs,
        spare_rows,
        descent_epochs,
        deep_widths,
        deep_epochs,
        max_train_rows,
        refine_steps,
        whiten,
        time_budget,
        target_error,
        seed,
    };
    options.check().map_err(py_err)?;
    let (d, xr, yr) = samples(&x, &y)?;
    options
        .check_for_dim(d, &keyword_spelling)
        .map_err(py_err)?;
    let x_copied = matches!(xr, Cow::Owned(_));
    let device = self::backend(backend)?;
    let config = options.into_config();
    let source = SliceSource::new(d, &xr, &yr).map_err(py_err)?;
    // The model, the report, and filtered PCA's basis (raw input coordinates; none for the
    // fallback).
    type Learned = (Network, serde_json::Value, Vec<Vec<f64>>);
    let outcome = py.detach(|| -> Result<Learned, Error> {
        let start = Instant::now();
        let (reason, no_structure) = if source.len() < fallback::MIN_LEARN_ROWS {
            let reason = format!(
                "{} samples are too few to learn from (at least {} are needed)",
                source.len(),
                fallback::MIN_LEARN_ROWS
            );
            (reason, serde_json::Value::Null)
        } else {
            match relu_fpt::learn::learn(device, &source, &config) {
                Ok(report) => {
                    let mut json = report.to_json();
                    if let Some(obj) = json.as_object_mut() {
                        obj.remove("model");
                        obj.insert("fallback".into(), serde_json::Value::Null);
                    }
                    let basis = report.subspace.map(|s| s.basis).unwrap_or_default();
                    return Ok((report.model, json, basis));
                }
                Err(Error::NoStructure(none)) => (none.to_string(), no_structure_json(&none)),
                Err(e) => return Err(e),
            }
        };
        let ridge = fallback::ridge(&xr, &yr, d)?;
        let json = serde_json::json!({
            "fallback": {
                "model": "ridge", "reason": reason, "alpha": ridge.alpha,
                "gcv_mse": ridge.gcv_mse, "no_structure": no_structure,
            },
            "dimension": 0,
            "model_dimension": 0,
            "subspace": null,
            "validation_mse": null,
            "final_stage": "fallback",
            "stages": [{
                "stage": "fallback", "device": "cpu", "rows": source.len(),
                "row_reads": source.len(), "seconds": start.elapsed().as_secs_f64(),
                "validation_mse": null,
            }],
            "backend": device.description(),
        });
        Ok((ridge.network, json, Vec::new()))
    });
    let (network, mut json, basis) = outcome.map_err(py_err)?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("x_copied".into(), x_copied.into());
    }
    let basis = if basis.is_empty() {
        PyArray2::zeros(py, [0, d], false)
    } else {
        matrix(py, &basis, d)
    };
    Ok((PyNetwork { inner: network }, json.to_string(), basis))
}

/// Recovers the span of the first-layer weights from X and y. Returns the basis (r x d) and
/// the report as JSON text.
#[pyfunction]
#[pyo3(signature = (x, y, *, method, dim, max_dim, refine_steps, seed, backend))]
#[allow(clippy::too_many_arguments)]
fn find_subspace<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    y: PyReadonlyArray1<'py, f32>,
    method: &str,
    dim: Option<usize>,
    max_dim: usize,
    refine_steps: usize,
    seed: u64,
    backend: &str,
) -> PyResult<(Bound<'py, PyArray2<f64>>, String)> {
    let method = match method {
        "filtered" => Method::Filtered,
        "paper" => Method::Paper,
        "phd" => Method::Phd,
        "sir" => Method::Sir,
        "save" => Method::Save,
        other => {
            return Err(PyValueError::new_err(format!(
                "method={other:?}: expected \"filtered\", \"paper\", \"phd\", \"sir\" or \"save\""
            )))
        }
    };
    let (d, xr, yr) = samples(&x, &y)?;
    let device = self::backend(backend)?;
    let config = SubspaceConfig {
        method,
        dim,
        max_dim,
        refine_steps,
        seed,
        ..SubspaceConfig::default()
    };
    let source = SliceSource::new(d, &xr, &yr).map_err(py_err)?;
    let report = py
        .detach(|| relu_fpt::subspace::find_subspace(device, &source, &config))
        .map_err(py_err)?;
    let mut basis = matrix(py, &report.basis, d);
    if report.basis.is_empty() {
        basis = PyArray2::zeros(py, [0, d], false);
    }
    Ok((basis, report.to_json()))
}

/// Samples of a built-in teacher: X (n x d float32, x ~ N(0, I)), y (n float32) and the
/// teacher network.
#[pyfunction]
#[pyo3(signature = (kind, *, d, n, k, m, widths, bias, noise, seed))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn make_teacher<'py>(
    py: Python<'py>,
    kind: &str,
    d: usize,
    n: usize,
    k: Option<usize>,
    m: Option<usize>,
    widths: Vec<usize>,
    bias: bool,
    noise: f64,
    seed: u64,
) -> PyResult<(
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<f32>>,
    PyNetwork,
)> {
    let kind = match kind {
        "random" => TeacherKind::Random,
        "parity" => TeacherKind::Parity,
        "fan" => TeacherKind::Fan,
        "deep-parity" | "deep_parity" => TeacherKind::DeepParity,
        "composite" => TeacherKind::Composite,
        other => {
            return Err(PyValueError::new_err(format!(
                "kind={other:?}: expected \"random\", \"parity\", \"fan\", \"deep-parity\" or \"composite\""
            )))
        }
    };
    if n == 0 {
        return Err(PyValueError::new_err("n=0: at least one sample"));
    }
    let mut spec = TeacherSpec::new(kind, d);
    spec.widths = widths;
    spec.k = k;
    spec.m = m;
    spec.bias = bias;
    spec.seed = seed;
    let (x, y, network) = py
        .detach(|| -> Result<_, Error> {
            let teacher = relu_fpt::teacher::build(&spec)?;
            let source = relu_fpt::data::GaussianSource::new(
                teacher.network.clone(),
                n as u64,
                seed,
                noise,
            )?;
            let (mut x, mut y) = (Vec::new(), Vec::new());
            source.read(0, n, &mut x, &mut y)?;
            Ok((x, y, teacher.network))
        })
        .map_err(py_err)?;
    let x = x.into_pyarray(py).reshape([n, d]).expect("n x d");
    Ok((x, y.into_pyarray(py), PyNetwork { inner: network }))
}

/// The address of the rows `learn` and `predict` would read for x, or None when they would
/// copy them (tests: float32 C-contiguous input is read in place).
#[pyfunction]
fn _rows_address(x: PyReadonlyArray2<'_, f32>) -> Option<usize> {
    match rows(&x) {
        Cow::Borrowed(s) => Some(s.as_ptr() as usize),
        Cow::Owned(_) => None,
    }
}

/// Each option of `learn` with its meaning, as the library states it (`LearnOptions`): what
/// the estimator's docstring repeats (tests compare them).
#[pyfunction]
fn _learn_option_docs() -> Vec<(&'static str, String)> {
    LearnOptions::names()
        .map(|n| (n, LearnOptions::doc(n)))
        .collect()
}

/// The description of the backend a choice opens ("auto", "cpu", "gpu").
#[pyfunction]
fn backend_description(choice: &str) -> PyResult<String> {
    Ok(backend(choice)?.description())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNetwork>()?;
    m.add_function(wrap_pyfunction!(learn, m)?)?;
    m.add_function(wrap_pyfunction!(find_subspace, m)?)?;
    m.add_function(wrap_pyfunction!(make_teacher, m)?)?;
    m.add_function(wrap_pyfunction!(backend_description, m)?)?;
    m.add_function(wrap_pyfunction!(_rows_address, m)?)?;
    m.add_function(wrap_pyfunction!(_learn_option_docs, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
