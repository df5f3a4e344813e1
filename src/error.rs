//! Typed errors of the library. Each stage owns a sub-enum; the CLI turns any of them into one
//! line on stderr and a non-zero exit code.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the library can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing sample files.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Model (network JSON) files and shapes.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// Exporting a model to another format.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// Device selection and GPU kernels.
    #[error(transparent)]
    Gpu(#[from] crate::backend::gpu::GpuError),
    /// A request that cannot be carried out as asked (bad parameter, inconsistent sizes).
    /// The message names the parameter and what would be accepted.
    #[error("{0}")]
    InvalidRequest(String),
    /// Filtered PCA found no direction that clears its calibrated null: nothing to fit on.
    /// Carries what the rounds saw and an estimate of the samples that would likely suffice.
    #[error("{0}")]
    NoStructure(Box<crate::subspace::NoStructure>),
    /// Plain I/O on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidRequest`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidRequest(msg.into())
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
