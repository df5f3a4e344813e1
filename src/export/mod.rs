//! Model export to formats other tools read. ONNX ([`onnx`]) is what runtimes (onnxruntime,
//! tract), verifiers of ReLU networks and optimisation tools take as input.

pub mod onnx;

pub use onnx::{onnx_bytes, onnx_model, write_onnx, IR_VERSION, OPSET_VERSION};

/// Errors of an export. Each names the network field at fault and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A parameter that float32 (the exported type) cannot hold.
    #[error("{origin}: field {field} is {value}, which float32 cannot hold (largest magnitude 3.4e38); ONNX models are exported in float32, so rescale the network")]
    NotFloat32 {
        /// The network file (or "network" for one in memory).
        origin: String,
        /// The JSON field, e.g. `layers[1].weights[3][0]`.
        field: String,
        value: f64,
    },
}
