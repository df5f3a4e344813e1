//! Gauss-Newton refine steps on a found basis (one pass over the data per step), and the fit h
//! on the pilot that they, the residual rounds and the choice of cell axes share.

use super::report::RefineStep;
use super::sources::RoundSource;
use super::{orthonormalise, Frame, Pilot, SubspaceConfig};
use crate::backend::{Backend, ProjectedSamples};
use crate::data::SampleSource;
use crate::error::Result;
use crate::network::Network;
use crate::sphere::{sphere_net_fit, SphereNetConfig};
use nalgebra::DMatrix;
use rayon::prelude::*;

/// The steps stop when a step lowered the residual MSE by less than this fraction, or when
/// the next step's own linear model promises less (see [`gauss_newton`]).
const CONVERGED: f64 = 0.01;

/// Gauss-Newton steps on the basis (docs/algorithm.md, "Refine steps"), in the working frame. With
/// a fit h of y on z = B x and x_perp = P x independent of z, Stein's identity gives
/// E[x_perp (y - h(z)) g(z)^T] = P U E[grad f(U^T x) g(z)^T] for every g: its range lies in the
/// part of the true span U that B misses, whatever h is (h only sets the noise). With
/// g = grad h this is the least-squares step of y ~ h((B + D) x): D^T = P C G^{-1},
/// C = sum e x g^T, G = sum g g^T. One pass over the source per step; the pass reads the raw
/// centred rows with the rows B W, and C comes back to the frame as W C. Returns the steps and,
/// when the steps end on a basis they fitted, that fit (the next residual round starts from
/// it rather than fitting the same basis again).
pub(super) fn gauss_newton(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    pilot: &Pilot,
    frame: &Frame,
    basis: &mut Vec<Vec<f64>>,
    c: &SubspaceConfig,
) -> Result<(Vec<RefineStep>, Option<Network>)> {
    let mut steps = Vec::new();
    // The last step's residual MSE, basis and fit.
    let mut last: Option<(f64, Vec<Vec<f64>>, Network)> = None;
    let view = RoundSource::new(source, frame.centre());
    for step in 0..c.refine_steps {
        let started = std::time::Instant::now();
        let r = basis.len();
        let fit = fit_on_pilot(pilot, frame, basis, &c.fit_config)?;
        let bar = crate::progress::bar(source.len(), &format!("refine {}", step + 1));
        let rows = frame.raw_rows(basis);
        let m = backend.fit_moments(&view, &rows, &fit, &bar)?;
        bar.finish_and_clear();
        let mse = m.sse / m.rows.max(1) as f64;
        let seconds = started.elapsed().as_secs_f64();
        steps.push(RefineStep {
            residual_mse: mse,
            promised_gain: None,
            seconds,
        });
        crate::progress::stage_done(&format!("subspace refine {}", step + 1), || {
            vec![
                format!("{} rows", crate::progress::count(m.rows)),
                crate::progress::seconds(seconds),
                format!("residual MSE {}", crate::progress::num(mse)),
            ]
        });
        let converged = match &last {
            Some((prev, prev_basis, _)) if mse >= *prev => {
                *basis = prev_basis.clone();
                break;
            }
            // Converged: another step would move the basis by less than its noise, and cost
            // a pass.
            Some((prev, ..)) => mse > (1.0 - CONVERGED) * prev,
            None => false,
        };
        last = Some((mse, basis.clone(), fit));
        if converged {
            break;
        }
        let gram = DMatrix::from_row_slice(r, r, &m.gram);
        // A direction h barely uses has a tiny gradient: damp it rather than blow it up.
        let damping = 1e-6 * gram.trace() / r as f64;
        let Some(inv) = (gram + DMatrix::identity(r, r) * damping).try_inverse() else {
            break;
        };
        // Columns of C (raw, d x r) into the frame, then off the basis.
        let d = frame.d;
        let mut cross = DMatrix::zeros(frame.q, r);
        for j in 0..r {
            let col: Vec<f64> = (0..d).map(|i| m.cross[i * r + j]).collect();
            let w = frame.project_out(basis, &frame.to_frame(&col));
            for (i, v) in w.into_iter().enumerate() {
                cross[(i, j)] = v;
            }
        }
        let delta = &cross * inv;
        // What the step promises: Gauss-Newton's linear model lowers the SSE by tr(C^T D).
        // Against the next pass's residual the promise was 0.5 to 1 times the gain delivered
        // (13 steps on 6 benchmark teachers), so one below half of CONVERGED delivers less than
        // CONVERGED: the pass that would measure it would only end the steps, and costs as
        // much as a step. The step is taken without it.
        let promised = cross
            .iter()
            .zip(delta.iter())
            .map(|(c, d)| c * d)
            .sum::<f64>()
            / m.sse.max(f64::MIN_POSITIVE);
        if let Some(s) = steps.last_mut() {
            s.promised_gain = Some(promised);
        }
        let moved: Vec<Vec<f64>> = (0..r)
            .map(|j| (0..frame.q).map(|i| basis[j][i] + delta[(i, j)]).collect())
            .collect();
        let next = orthonormalise(&moved);
        if next.len() < r {
            break;
        }
        *basis = next;
        if promised < CONVERGED / 2.0 {
            break;
        }
    }
    // Steps that end without moving the basis (converged, undone, or broken off) end on a
    // basis they fitted.
    let fit = last.filter(|(_, b, _)| b == basis).map(|(_, _, f)| f);
    Ok((steps, fit))
}

/// z = B x on the pilot (its rows are centred raw x; B in the frame reads them as B W).
pub(super) fn pilot_z(pilot: &Pilot, frame: &Frame, basis: &[Vec<f64>]) -> Vec<f64> {
    crate::linalg::dot_rows(&frame.raw_rows(basis), &pilot.x, frame.d)
}

/// The fit h of y on the pilot's z = B x: sphere-net features plus ridge, its ridge chosen on
/// the pilot's last fifth.
pub(super) fn fit_on_pilot(
    pilot: &Pilot,
    frame: &Frame,
    basis: &[Vec<f64>],
    config: &SphereNetConfig,
) -> Result<Network> {
    fit_on_z(pilot, &pilot_z(pilot, frame, basis), basis.len(), config)
}

/// [`fit_on_pilot`] from the pilot's z = B x ([`pilot_z`], r values a row).
pub(super) fn fit_on_z(
    pilot: &Pilot,
    z: &[f64],
    r: usize,
    config: &SphereNetConfig,
) -> Result<Network> {
    let n = pilot.y.len();
    let z: Vec<f32> = z.iter().map(|&v| v as f32).collect();
    let y: Vec<f32> = pilot.y.iter().map(|&v| v as f32).collect();
    let cut = n - n / 5;
    let train = ProjectedSamples {
        rank: r,
        z: z[..cut * r].to_vec(),
        y: y[..cut].to_vec(),
    };
    let val = ProjectedSamples {
        rank: r,
        z: z[cut * r..].to_vec(),
        y: y[cut..].to_vec(),
    };
    Ok(sphere_net_fit(&train, &val, config)?.network)
}

/// The directions of the frame that `fit` uses most, by decreasing weight: eigenvectors of its
/// gradient Gram matrix E[grad h grad h^T] over the pilot's z = B x ([`pilot_z`]), mapped from
/// z to the frame.
pub(super) fn relevant_directions(
    z: &[f64],
    frame: &Frame,
    basis: &[Vec<f64>],
    fit: &Network,
) -> Vec<Vec<f64>> {
    let r = basis.len();
    // The gradients in parallel (one core took 0.15 s a round on a 1e5-row pilot at r = 8),
    // summed in row order as before.
    let grads: Vec<Vec<f64>> = z
        .par_chunks(r.max(1) * 4096)
        .map(|block| {
            let (mut hidden, mut grad) = (Vec::new(), Vec::new());
            let mut grads = Vec::with_capacity(block.len());
            for zs in block.chunks_exact(r) {
                fit.output_and_gradient(zs, &mut hidden, &mut grad);
                grads.extend_from_slice(&grad);
            }
            grads
        })
        .collect();
    let mut gram = DMatrix::<f64>::zeros(r, r);
    for grad in grads.iter().flat_map(|g| g.chunks_exact(r)) {
        for a in 0..r {
            for b in 0..r {
                gram[(a, b)] += grad[a] * grad[b];
            }
        }
    }
    let e = nalgebra::SymmetricEigen::new(gram);
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by(|&a, &b| e.eigenvalues[b].total_cmp(&e.eigenvalues[a]));
    order
        .into_iter()
        .map(|i| {
            let mut v = vec![0.0; frame.q];
            for (j, b) in basis.iter().enumerate() {
                crate::linalg::axpy(&mut v, e.eigenvectors[(j, i)], b);
            }
            v
        })
        .collect()
}
