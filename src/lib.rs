//! relu-fpt learns an unknown deep ReLU network F from samples (x, F(x)), x ~ N(0, I_d), by the
//! algorithm of Chen, Klivans and Meka, "Learning Deep ReLU Networks Is Fixed-Parameter
//! Tractable" (arXiv 2009.13512): filtered PCA finds the span of the first-layer weights, then
//! enumerate-and-test fits a network on that low-dimensional projection.
//!
//! The pipeline, one module per stage: [`data`] (samples) -> [`moments`] -> `subspace` ->
//! `search` -> [`network`] (the model). Every pass over the data runs on a [`backend::Backend`],
//! CPU or GPU (wgpu compute shaders in `shaders/`).

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
