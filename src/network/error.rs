//! Errors about network files and shapes.

use std::path::PathBuf;

/// Errors about network files and shapes. File errors name the file (`origin`), the JSON field
/// (e.g. `layers[1].weights[3]`) and what to change.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The layer shapes do not chain (or the last layer is not scalar).
    #[error("network shape: {0}")]
    Shape(String),
    /// The file could not be read.
    #[error("{}: cannot read the network file: {source}; check the path and its permissions", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file (or its temporary twin) could not be written or renamed into place.
    #[error("{}: cannot write the network file: {source}; check that the directory exists and is writable", path.display())]
    Unwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not JSON.
    #[error("{origin}: not valid JSON at line {line}, column {column}: {message}; a network file is one JSON object as written by Network::save")]
    NotJson {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The `format` field is missing or is not `"relu-fpt/network"`.
    #[error("{origin}: field \"format\" is {found}, expected \"relu-fpt/network\"; this file is not a relu-fpt network (add \"format\": \"relu-fpt/network\" if it is one)")]
    WrongFormat { origin: String, found: String },
    /// The `version` field is missing or not a version this build reads.
    #[error("{origin}: field \"version\" is {found}, this build reads versions 1 and 2; write the file with a matching relu-fpt or set \"version\": 2 if it follows the version-2 schema")]
    UnsupportedVersion { origin: String, found: String },
    /// A field is missing or has the wrong JSON type.
    #[error("{origin}: field {field}: {problem}")]
    BadField {
        origin: String,
        field: String,
        problem: String,
    },
    /// Rows of one matrix have different lengths.
    #[error("{origin}: field {field} has {found} entries but row 0 of the same matrix has {expected}; every row of a matrix must have the same length")]
    Ragged {
        origin: String,
        field: String,
        expected: usize,
        found: usize,
    },
    /// Layer sizes do not chain (weights columns vs the previous width, bias vs weights rows).
    #[error("{origin}: field {field}: {detail}")]
    ShapeMismatch {
        origin: String,
        field: String,
        detail: String,
    },
    /// The last layer does not have exactly one output.
    #[error("{origin}: the last layer ({field}) has {outputs} outputs; the network output is a scalar, so the last layer must have exactly one weight row and one bias")]
    NotScalar {
        origin: String,
        field: String,
        outputs: usize,
    },
    /// A number is NaN or infinite (written as `null`, or as a string such as "NaN").
    #[error("{origin}: field {field} is not a finite number ({found}); network parameters must be finite numbers (NaN and infinities are written as null)")]
    NonFinite {
        origin: String,
        field: String,
        found: String,
    },
    /// A finite parameter that float32, in which models are evaluated, cannot hold.
    #[error("{origin}: field {field} is {value:e}, which float32 cannot hold (largest magnitude 3.4e38); predictions are computed in float32 on the CPU and the GPU alike, so rescale the network (e.g. divide a layer's weights by a constant and multiply the next layer's by it)")]
    BeyondFloat32 {
        origin: String,
        field: String,
        value: f64,
    },
    /// A bare NaN or Infinity in the JSON text: what Python's `json.dump` writes for
    /// non-finite floats, which JSON does not allow.
    #[error("{origin}: line {line}, column {column} holds a bare {token}, which is not JSON (Python's json.dump writes it for float('{python}')); network parameters must be finite numbers: find what produced the {token} and write the file again (json.dump(..., allow_nan=False) refuses such values)")]
    NanInJson {
        origin: String,
        line: usize,
        column: usize,
        token: String,
        python: String,
    },
    /// A subspace row does not have `input_dim` entries.
    #[error("{origin}: field {field} has {found} entries but input_dim is {expected}; every subspace row is a vector in R^input_dim")]
    SubspaceRow {
        origin: String,
        field: String,
        expected: usize,
        found: usize,
    },
}
