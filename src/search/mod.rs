//! The second half of the algorithm (ALGORITHM.md section 3): fit a network on the projected
//! samples z = B^T x by enumerate-and-test, or by sphere-net ReLU features and ridge.

mod evaluate_ref;

pub use evaluate_ref::{check_evaluation_inputs, reference_evaluate, tri_len};
