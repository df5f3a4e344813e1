//! Whether the deep-net stage can help: the evidence is the descent's residual on z = B x.
//!
//! The deep-net stage trains a second network on z with B fixed, so it can only lower the part
//! of the descent's error that is a function of z. What is left when B is slightly off (a
//! function of x outside span B), and label noise, are noise as far as any network on z is
//! concerned: the polish, which moves B, is what repairs the first. So before the stage runs,
//! a fixed-feature fit (the sphere-net features plus ridge, on the search's subsample of z)
//! regresses the descent's residual on z, and the share of the residual it explains on held-out
//! rows is measured, paired row by row: `explained` = mean(e^2 - (e - g(z))^2) with its standard
//! error. The residual has structure on z when the explained part is significant (more than `z`
//! standard errors) and material (at least `min_share` of the residual's MSE and
//! `min_of_variance` of the label variance); then the stage runs. Otherwise the descent has
//! reached what a network of its kind on z reaches (label noise and the basis's error are the
//! rest), and the stage runs only as a pilot racing the descent (see `learn`): a deeper
//! network may still fit what fixed features cannot.

use crate::backend::ProjectedSamples;
use crate::error::Result;
use crate::network::Network;
use crate::sphere::{sphere_net_fit, SphereNetConfig};

/// When the deep-net stage runs (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct DeepNetGate {
    /// Standard errors the explained part must exceed.
    pub z: f64,
    /// Smallest share of the residual's MSE the explained part must reach...
    pub min_share: f64,
    /// ... and of the label variance: a gain worth a stage's seconds (a converged descent's
    /// residual, 1e-5 of Var(y), can hold a significant but immaterial percent of structure).
    pub min_of_variance: f64,
    /// Training rows the residual fit reads (the first of the search's subsample).
    pub fit_rows: usize,
    /// The residual fit's features (its seed is the run's).
    pub features: SphereNetConfig,
    /// Without structure in the residual, the stage's pilot: it goes on past this many row
    /// reads only when its best validation error is within `race_margin` times the descent's
    /// after as many. A stricter race (going on only when 20% below where the descent ended)
    /// took 14% less time over the quarter-size benchmark and flipped the 25%-noise case's
    /// time to accuracy, but the deep net trained to its end is what the polish reaches parity
    /// from: parity k = 4 at d = 128 (2e5 rows) polished to 5.8e-6, 8.4e-6 and 1.8e-5 of
    /// Var(y) (seeds 1-3) from the descent's network against 3.0e-6, 2.4e-6 and 5.0e-7.
    pub race_rows: u64,
    pub race_margin: f64,
    /// The deep net is what the polish starts from when its validation error is within this
    /// factor of the descent's: a two-layer network of a thousand weights polishes further
    /// than the search's wide one (parity k = 4 at d = 160 from 2e5 rows: 5.6e-7 from a deep
    /// net that tied the descent, 1.3e-5 from the descent's network). The descent's network
    /// stays the model when the polish does not beat it.
    pub keep_margin: f64,
}

impl Default for DeepNetGate {
    fn default() -> Self {
        DeepNetGate {
            z: 3.0,
            min_share: 0.01,
            min_of_variance: 1e-4,
            fit_rows: 25_000,
            features: SphereNetConfig {
                max_directions: 48,
                ..SphereNetConfig::default()
            },
            race_rows: 500_000,
            race_margin: 1.1,
            keep_margin: 1.1,
        }
    }
}

/// What the residual test measured, and what it decided.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeepNetEvidence {
    /// Rows the residual fit was fitted on and scored on.
    pub fit_rows: usize,
    pub test_rows: usize,
    /// Features of the fit.
    pub features: usize,
    /// MSE of the descent's residual on the test rows.
    pub residual_mse: f64,
    /// Mean of e^2 - (e - g)^2 over the test rows: how much of the residual the fit explains.
    pub explained: f64,
    /// Its standard error.
    pub standard_error: f64,
    /// Whether the deep-net stage runs (`structure` in the JSON).
    #[serde(rename = "structure")]
    pub run: bool,
}

impl DeepNetEvidence {
    /// What the test found, in one clause for the report.
    pub fn finding(&self) -> String {
        let share = self.explained / self.residual_mse.max(1e-300);
        let figures = format!(
            "a ridge fit of the descent's residual on {} ReLU features of z explains {:.1}% of it ({} +- {} of MSE {} on {} held-out rows)",
            self.features,
            100.0 * share,
            crate::progress::num(self.explained),
            crate::progress::num(self.standard_error),
            crate::progress::num(self.residual_mse),
            self.test_rows
        );
        if self.run {
            format!("{figures}: structure on z that a network on z can still fit")
        } else {
            format!("{figures}: no structure on z beyond noise and the basis's error (which the polish moves)")
        }
    }
}

/// The residual of `net` (a network on z) on projected samples.
fn residual(net: &Network, s: &ProjectedSamples) -> ProjectedSamples {
    let pred = net.forward_f32(&s.z, s.len());
    ProjectedSamples {
        rank: s.rank,
        z: s.z.clone(),
        y: s.y.iter().zip(&pred).map(|(&y, &p)| y - p).collect(),
    }
}

/// Runs the residual test of the module docs for `net` on the search's subsamples; `variance`
/// is the label variance.
pub fn deep_net_evidence(
    net: &Network,
    fit: &ProjectedSamples,
    test: &ProjectedSamples,
    sphere: &SphereNetConfig,
    gate: &DeepNetGate,
    variance: f64,
) -> Result<DeepNetEvidence> {
    let fit = fit.head(gate.fit_rows.max(1));
    let (fit_res, test_res) = (residual(net, &fit), residual(net, test));
    let g = sphere_net_fit(&fit_res, &test_res, sphere)?;
    let pred = g.network.forward_f32(&test_res.z, test_res.len());
    let (mut n, mut e2, mut sd, mut sd2) = (0f64, 0f64, 0f64, 0f64);
    for (&e, &p) in test_res.y.iter().zip(&pred) {
        let (e, p) = (e as f64, p as f64);
        let diff = e * e - (e - p) * (e - p);
        n += 1.0;
        e2 += e * e;
        sd += diff;
        sd2 += diff * diff;
    }
    let n1 = n.max(1.0);
    let explained = sd / n1;
    let se = ((sd2 / n1 - explained * explained).max(0.0) / n1).sqrt();
    let residual_mse = e2 / n1;
    let run = explained > gate.z * se
        && explained >= gate.min_share * residual_mse
        && explained >= gate.min_of_variance * variance;
    Ok(DeepNetEvidence {
        fit_rows: fit_res.len(),
        test_rows: test_res.len(),
        features: g.features,
        residual_mse,
        explained,
        standard_error: se,
        run,
    })
}
