//! Gauss-Newton refine steps on a found basis (one pass over the data per step).

use super::report::RefineStep;
use super::{complement_projector, orthonormalise, Pilot, SubspaceConfig};
use crate::backend::{Backend, ProjectedSamples};
use crate::data::SampleSource;
use crate::error::Result;
use crate::network::{dot, Network};
use crate::search::{sphere_net_fit, SphereNetConfig};
use nalgebra::DMatrix;

/// Gauss-Newton steps on the basis (ALGORITHM.md 2.5, refine pass). With a fit h of y on
/// z = B x and x_perp = P x independent of z, Stein's identity gives
/// E[x_perp (y - h(z)) g(z)^T] = P U E[grad f(U^T x) g(z)^T] for every g: its range lies in the
/// part of the true span U that B misses, whatever h is (h only sets the noise). With
/// g = grad h this is the least-squares step of y ~ h((B + D) x): D^T = P C G^{-1},
/// C = sum e x g^T, G = sum g g^T. One pass over the source per step.
pub(super) fn gauss_newton(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    pilot: &Pilot,
    basis: &mut Vec<Vec<f64>>,
    c: &SubspaceConfig,
) -> Result<Vec<RefineStep>> {
    let d = source.dim();
    let mut steps = Vec::new();
    let mut last: Option<(f64, Vec<Vec<f64>>)> = None;
    for step in 0..c.refine_steps {
        let started = std::time::Instant::now();
        let r = basis.len();
        let fit = fit_on_pilot(pilot, d, basis, &c.fit_config)?;
        let bar = crate::progress::bar(source.len(), &format!("refine {}", step + 1));
        let m = backend.fit_moments(source, basis, &fit, &bar)?;
        bar.finish_and_clear();
        let mse = m.sse / m.rows.max(1) as f64;
        steps.push(RefineStep {
            residual_mse: mse,
            seconds: started.elapsed().as_secs_f64(),
        });
        if let Some((prev, prev_basis)) = &last {
            if mse >= *prev {
                *basis = prev_basis.clone();
                break;
            }
        }
        last = Some((mse, basis.clone()));
        let gram = DMatrix::from_row_slice(r, r, &m.gram);
        // A direction h barely uses has a tiny gradient: damp it rather than blow it up.
        let damping = 1e-6 * gram.trace() / r as f64;
        let Some(inv) = (gram + DMatrix::identity(r, r) * damping).try_inverse() else {
            break;
        };
        let cross = complement_projector(d, basis) * DMatrix::from_row_slice(d, r, &m.cross);
        let delta = cross * inv;
        let moved: Vec<Vec<f64>> = (0..r)
            .map(|j| (0..d).map(|i| basis[j][i] + delta[(i, j)]).collect())
            .collect();
        let next = orthonormalise(&moved);
        if next.len() < r {
            break;
        }
        *basis = next;
    }
    Ok(steps)
}

/// The fit h of y on the pilot's z = B x: sphere-net features plus ridge, its ridge chosen on
/// the pilot's last fifth.
fn fit_on_pilot(
    pilot: &Pilot,
    d: usize,
    basis: &[Vec<f64>],
    config: &SphereNetConfig,
) -> Result<Network> {
    let r = basis.len();
    let n = pilot.y.len();
    let z: Vec<f32> = pilot
        .x
        .chunks_exact(d)
        .flat_map(|x| basis.iter().map(move |b| dot(b, x) as f32))
        .collect();
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
