//! The whole pipeline: hold out a validation split (the last rows), find the subspace on the
//! training split, project both splits, search a network on the projection (enumerate-and-test
//! and the sphere-net fit, keeping the better), descend from it on the projected problem, polish
//! it together with the basis, and return the compact model x -> small network(B x).

mod polish;
mod whitened;

pub use polish::{dense_mse, polish, DenseSamples, PolishConfig, PolishResult};

use crate::backend::{Backend, ProjectedSamples};
use crate::data::{for_each_chunk, SampleRange, SampleSource};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::search::{label_variance, search, SearchConfig, SphereNetConfig};
use crate::subspace::{find_subspace, SubspaceConfig, SubspaceReport};
use std::time::Instant;

/// Settings of [`learn`].
#[derive(Clone, Debug, PartialEq)]
pub struct LearnConfig {
    /// Hidden widths of the enumerated candidates.
    pub hidden: Vec<usize>,
    /// Most candidates enumerate-and-test evaluates.
    pub budget: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Fraction of the rows (the last ones) held out for validation, in (0, 1).
    pub validation_fraction: f64,
    /// After the search, train its network on the projected samples with the basis fixed
    /// (ALGORITHM.md 3.1's last step, 3.2(b): descent is benign in r dimensions).
    pub descent: bool,
    /// Descent settings (the polish's trainer on z; its seed is taken from `seed`).
    pub descent_config: PolishConfig,
    /// Refine the found network and the basis jointly after the search (see `polish`).
    pub polish: bool,
    /// Largest subspace dimension accepted (the evaluation kernels take up to 8).
    pub max_dim: usize,
    /// Also fit sphere-net features plus ridge and keep it if it validates better.
    pub sphere_net: bool,
    /// Polish settings (its seed is taken from `seed`).
    pub polish_config: PolishConfig,
    /// Enumerate-and-test settings other than hidden, budget and seed.
    pub search_config: SearchConfig,
    /// Sphere-net settings other than the seed.
    pub sphere_config: SphereNetConfig,
    /// Filtered-PCA settings other than max_dim and seed.
    pub subspace_config: SubspaceConfig,
    /// A subspace basis (orthonormal rows, r x d) to use instead of filtered PCA: oracle runs
    /// and tests. `None` runs filtered PCA.
    pub known_basis: Option<Vec<Vec<f64>>>,
}

impl Default for LearnConfig {
    fn default() -> Self {
        LearnConfig {
            hidden: vec![4],
            // Measured at d = 128, N = 1e6 on the five benchmark teachers: the sphere-net fit
            // beat enumerate-and-test on all of them at 4096 candidates too, and the descent
            // starts from the better; 512 keeps the search near half a second.
            budget: 512,
            seed: 0,
            validation_fraction: 0.2,
            descent: true,
            descent_config: PolishConfig::default(),
            polish: true,
            max_dim: 8,
            sphere_net: true,
            // After the descent on z the polish has less to do: 15 epochs ended within 2x of
            // 30 on the benchmark teachers (parity 2.1e-5 against 1.0e-5) at half the time.
            polish_config: PolishConfig {
                epochs: 15,
                ..PolishConfig::default()
            },
            search_config: SearchConfig::default(),
            sphere_config: SphereNetConfig::default(),
            subspace_config: SubspaceConfig::default(),
            known_basis: None,
        }
    }
}

/// Validation MSE before and after the polish.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolishedMse {
    pub before: f64,
    pub after: f64,
    /// Whether the polished network was kept (only when `after < before`).
    pub kept: bool,
}

impl From<&PolishResult> for PolishedMse {
    fn from(r: &PolishResult) -> Self {
        PolishedMse {
            before: r.before,
            after: r.after,
            kept: r.kept,
        }
    }
}

impl PolishedMse {
    /// The better of before and after: the error of what was kept.
    fn kept_mse(self) -> f64 {
        self.before.min(self.after)
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({"before": self.before, "after": self.after, "kept": self.kept})
    }
}

/// What [`learn`] returns.
#[derive(Clone, Debug)]
pub struct LearnReport {
    /// The model on the original d-dim input; `subspace` is the basis, or after a kept polish
    /// the span of the polished first layer.
    pub model: Network,
    /// Subspace dimension r.
    pub dimension: usize,
    /// What filtered PCA reported (None when a known basis was given).
    pub subspace: Option<SubspaceReport>,
    /// Validation MSE of the returned model.
    pub validation_mse: f64,
    /// Variance of the validation labels (MSE / Var is the relative error).
    pub validation_var: f64,
    /// Validation MSE of enumerate-and-test's best network.
    pub enumerate_mse: f64,
    /// Validation MSE of the sphere-net fit, when it ran.
    pub sphere_net_mse: Option<f64>,
    /// Descent errors on the projected problem, when it ran.
    pub descent_mse: Option<PolishedMse>,
    /// Polish errors, when it ran.
    pub polished_mse: Option<PolishedMse>,
    /// "enumerate" or "sphere-net".
    pub chosen: String,
    /// Candidates evaluated, and log10 of the full net's size at the chosen resolution.
    pub candidates_evaluated: usize,
    pub full_net_log10: f64,
    /// Training and validation rows.
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Seconds per stage, in order.
    pub timings: Vec<(String, f64)>,
    /// The backend's description.
    pub backend: String,
}

impl LearnReport {
    /// A few human lines.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "learned a {:?} ReLU network on a {}-dim subspace of R^{} ({} train / {} validation rows, {})\n",
            self.model.hidden_widths(),
            self.dimension,
            self.model.input_dim,
            self.train_rows,
            self.validation_rows,
            self.backend
        );
        match &self.subspace {
            Some(sub) => s += &sub.summary(),
            None => s += "subspace: given (known basis)\n",
        }
        s += &format!(
            "validation MSE {:.4e}, MSE/Var {:.4e}; kept {} (enumerate {:.4e} from {} candidates of a net of 10^{:.1}",
            self.validation_mse,
            self.validation_mse / self.validation_var.max(1e-300),
            self.chosen,
            self.enumerate_mse,
            self.candidates_evaluated,
            self.full_net_log10
        );
        if let Some(m) = self.sphere_net_mse {
            s += &format!(", sphere-net {m:.4e}");
        }
        s += ")\n";
        for (stage, mse) in [("descent", self.descent_mse), ("polish", self.polished_mse)] {
            if let Some(p) = mse {
                s += &format!(
                    "{stage}: {:.4e} -> {:.4e} ({})\n",
                    p.before,
                    p.after,
                    if p.kept { "kept" } else { "not kept" }
                );
            }
        }
        let t: Vec<String> = self
            .timings
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}s"))
            .collect();
        s += &format!("time: {}\n", t.join(", "));
        s
    }

    /// The report and the model as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        // The model in the network module's own JSON schema.
        let model: serde_json::Value =
            serde_json::from_str(&self.model.to_json()).unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "model": model,
            "dimension": self.dimension,
            "subspace": self.subspace.as_ref().and_then(|s| serde_json::from_str::<serde_json::Value>(&s.to_json()).ok()),
            "validation_mse": self.validation_mse,
            "validation_var": self.validation_var,
            "enumerate_mse": self.enumerate_mse,
            "sphere_net_mse": self.sphere_net_mse,
            "descent_mse": self.descent_mse.map(PolishedMse::to_json),
            "polished_mse": self.polished_mse.map(PolishedMse::to_json),
            "chosen": self.chosen,
            "candidates_evaluated": self.candidates_evaluated,
            "full_net_log10": self.full_net_log10,
            "train_rows": self.train_rows,
            "validation_rows": self.validation_rows,
            "timings": self.timings.iter().map(|(k, v)| serde_json::json!({"stage": k, "seconds": v})).collect::<Vec<_>>(),
            "backend": self.backend,
        })
    }
}

/// Appends z = B x for every row of `x` (f64 dot products, stored as f32).
fn project_into(x: &[f32], dim: usize, basis: &[Vec<f64>], z: &mut Vec<f32>) {
    for row in x.chunks_exact(dim) {
        for b in basis {
            z.push(b.iter().zip(row).map(|(a, &v)| a * v as f64).sum::<f64>() as f32);
        }
    }
}

/// The subspace basis: the configured one, or filtered PCA on the training split.
fn find_basis(
    backend: &dyn Backend,
    train: &dyn SampleSource,
    config: &LearnConfig,
) -> Result<(Vec<Vec<f64>>, Option<SubspaceReport>)> {
    if let Some(b) = &config.known_basis {
        return Ok((b.clone(), None));
    }
    let sc = SubspaceConfig {
        max_dim: config.max_dim,
        seed: config.seed,
        ..config.subspace_config.clone()
    };
    let report = find_subspace(backend, train, &sc)?;
    if let Some(none) = report.no_structure() {
        return Err(Error::NoStructure(Box::new(none)));
    }
    Ok((report.basis.clone(), Some(report)))
}

/// Training and validation rows: the last `fraction` of the rows (at least one) validate.
pub(crate) fn validation_split(n: usize, fraction: f64) -> Result<(usize, usize)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::invalid(
            "learn: validation_fraction must lie strictly between 0 and 1",
        ));
    }
    if n < 2 {
        return Err(Error::invalid(format!(
            "learn: needs at least 2 samples of positive dimension (got {n})"
        )));
    }
    let n_val = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    Ok((n - n_val, n_val))
}

/// Runs the pipeline; see the module docs.
pub fn learn(
    backend: &dyn Backend,
    source: &dyn SampleSource,
    config: &LearnConfig,
) -> Result<LearnReport> {
    let n = source.len() as usize;
    let d = source.dim();
    if d == 0 {
        return Err(Error::invalid(format!(
            "learn: needs at least 2 samples of positive dimension (got {n} of dimension {d})"
        )));
    }
    let (n_train, n_val) = validation_split(n, config.validation_fraction)?;
    // Whitening (on by default): the whitened pipeline runs this function on W (x - mu).
    if config.subspace_config.whiten && config.known_basis.is_none() {
        return whitened::learn_whitened(backend, source, config);
    }
    let mut timings = Vec::new();

    let t = Instant::now();
    let train_source = SampleRange::new(source, 0, n_train as u64)?;
    let (basis, subspace) = find_basis(backend, &train_source, config)?;
    timings.push(("subspace".to_string(), t.elapsed().as_secs_f64()));
    let r = basis.len();
    if r == 0 || r > config.max_dim || basis.iter().any(|b| b.len() != d) {
        return Err(Error::invalid(format!(
            "learn: subspace of dimension {r} (rows of length {:?}) for d = {d}, max_dim {}",
            basis.first().map(|b| b.len()),
            config.max_dim
        )));
    }

    let t = Instant::now();
    // Project while reading. Raw rows are kept only for the polish: the training rows it uses
    // (the first polish max_rows) and every validation row.
    let keep_train = if config.polish {
        n_train.min(config.polish_config.max_rows.max(1))
    } else {
        0
    };
    let mut x_train = Vec::with_capacity(keep_train * d);
    let mut x_val = Vec::with_capacity(if config.polish { n_val * d } else { 0 });
    let mut z = Vec::with_capacity(n * r);
    let mut y = Vec::with_capacity(n);
    for_each_chunk(source, 65_536, |start, xb, yb| {
        project_into(xb, d, &basis, &mut z);
        if config.polish {
            for (i, row) in xb.chunks_exact(d).enumerate() {
                let at = start as usize + i;
                if at < keep_train {
                    x_train.extend_from_slice(row);
                } else if at >= n_train {
                    x_val.extend_from_slice(row);
                }
            }
        }
        y.extend_from_slice(yb);
        Ok(())
    })?;
    let (y_train, y_val) = y.split_at(n_train);
    let train = ProjectedSamples {
        rank: r,
        z: z[..n_train * r].to_vec(),
        y: y_train.to_vec(),
    };
    let val = ProjectedSamples {
        rank: r,
        z: z[n_train * r..].to_vec(),
        y: y_val.to_vec(),
    };
    drop(z);
    timings.push(("read+project".to_string(), t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let search_config = SearchConfig {
        hidden: config.hidden.clone(),
        budget: config.budget,
        seed: config.seed,
        ..config.search_config.clone()
    };
    let sphere_config = SphereNetConfig {
        seed: config.seed,
        ..config.sphere_config.clone()
    };
    let found = search(
        backend,
        &train,
        &val,
        &search_config,
        config.sphere_net.then_some(&sphere_config),
    )?;
    timings.push(("search".to_string(), t.elapsed().as_secs_f64()));

    let validation_var = label_variance(y_val);
    let mut validation_mse = found.validation_mse;
    let mut network = found.network.clone();
    let mut descent_mse = None;
    if config.descent {
        let t = Instant::now();
        fn dense(s: &ProjectedSamples) -> DenseSamples<'_> {
            DenseSamples {
                dim: s.rank,
                x: &s.z,
                y: &s.y,
            }
        }
        let identity: Vec<Vec<f64>> = (0..r)
            .map(|i| (0..r).map(|j| f64::from(u8::from(i == j))).collect())
            .collect();
        let pc = PolishConfig {
            seed: config.seed,
            ..config.descent_config.clone()
        };
        // The identity as the polish's basis: an extra r x r linear map, folded back into the
        // first layer below.
        let res = polish(&network, &identity, &dense(&train), &dense(&val), &pc)?;
        let errors = PolishedMse::from(&res);
        validation_mse = errors.kept_mse();
        descent_mse = Some(errors);
        // The result reads z through the identity projection: fold it back in.
        network = res.network.dense();
        network.subspace = None;
        timings.push(("descent".to_string(), t.elapsed().as_secs_f64()));
    }
    let mut polished_mse = None;
    // The polish works on the found network and the basis, and returns the compact model
    // (projection B, then the small network).
    let model = if config.polish {
        let t = Instant::now();
        let train_dense = DenseSamples {
            dim: d,
            x: &x_train,
            y: &y_train[..keep_train],
        };
        let val_dense = DenseSamples {
            dim: d,
            x: &x_val,
            y: y_val,
        };
        let pc = PolishConfig {
            seed: config.seed,
            ..config.polish_config.clone()
        };
        let res = polish(&network, &basis, &train_dense, &val_dense, &pc)?;
        let errors = PolishedMse::from(&res);
        validation_mse = errors.kept_mse();
        polished_mse = Some(errors);
        timings.push(("polish".to_string(), t.elapsed().as_secs_f64()));
        res.network
    } else {
        Network::with_projection(&network, &basis)?
    };
    Ok(LearnReport {
        model,
        dimension: r,
        subspace,
        validation_mse,
        validation_var,
        enumerate_mse: found.enumerate.validation_mse,
        sphere_net_mse: found.sphere_validation_mse,
        descent_mse,
        polished_mse,
        chosen: found.chosen.name().to_string(),
        candidates_evaluated: found.enumerate.candidates_evaluated,
        full_net_log10: found.enumerate.full_net_log10,
        train_rows: n_train,
        validation_rows: n_val,
        timings,
        backend: backend.description(),
    })
}
