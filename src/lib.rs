//! relu-fpt learns an unknown deep ReLU network F from samples (x, F(x)), x ~ N(0, I_d), by the
//! algorithm of Chen, Klivans and Meka, "Learning Deep ReLU Networks Is Fixed-Parameter
//! Tractable" (arXiv 2009.13512): filtered PCA finds the span of the first-layer weights, then
//! enumerate-and-test fits a network on that low-dimensional projection.
//!
//! The pipeline, one module per stage: [`data`] (samples) -> [`moments`] -> [`subspace`] ->
//! [`search`] -> [`learn`], which returns the model, a [`network::Network`]. Every pass over
//! the data runs on a [`backend::Backend`], CPU or GPU (wgpu compute shaders in `shaders/`).
//! Imports run one way (`tests/layering.rs` holds the order): a stage uses the stages before it,
//! never after; beneath them all sit what every stage shares ([`linalg`], [`network`]: the
//! teacher that labels generated samples, the residual fits and the model are all networks),
//! and only the error type names the errors of several modules.

pub mod backend;
pub mod bench;
pub mod data;
pub mod error;
pub mod export;
pub mod learn;
pub mod linalg;
pub mod metrics;
pub mod moments;
pub mod network;
pub mod output;
pub mod plot;
pub mod predict;
pub mod progress;
pub mod runtime;
pub mod safety;
pub mod search;
pub mod sphere;
pub mod subspace;
pub mod teacher;

pub use error::{Error, Result};
