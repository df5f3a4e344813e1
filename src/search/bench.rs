//! `relu-fpt bench search`: enumerate-and-test against the sphere-net fit on small teachers
//! with the true basis given, so that the subspace stage does not confound the comparison.
//!
//! Each case builds a teacher on R^k (d = k), draws x ~ N(0, I_k), projects onto the teacher's
//! hidden coordinates z = Q^T x (the basis an oracle would hand the search) and runs both fits
//! with the settings `learn` uses by default (hidden widths, ridge, row caps), enumerate-and-test
//! at each requested budget. Errors are validation MSE / Var(y).

use super::{
    enumerate_and_test, label_variance, sphere_net_fit, Generator, SearchConfig, SphereNetConfig,
};
use crate::backend::{Backend, ProjectedSamples};
use crate::error::{Error, Result};
use crate::teacher::{build, TeacherKind, TeacherSpec};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use std::time::Instant;

/// One benchmark teacher.
#[derive(Clone, Debug)]
pub struct BenchCase {
    /// Short name for the table.
    pub name: String,
    /// The teacher, with `dim` its relevant dimension (x is the hidden coordinates, rotated).
    pub spec: TeacherSpec,
}

/// The default cases: small-k teachers where the net of the paper's enumerate-and-test is small.
pub fn default_cases() -> Vec<BenchCase> {
    let random = |widths: Vec<usize>, k: usize, bias: bool| BenchCase {
        name: format!(
            "random {:?} r={k}{}",
            widths,
            if bias { " bias" } else { "" }
        ),
        spec: TeacherSpec {
            widths,
            k: Some(k),
            bias,
            ..TeacherSpec::new(TeacherKind::Random, k)
        },
    };
    vec![
        BenchCase {
            name: "fan m=4 r=2".into(),
            spec: TeacherSpec {
                m: Some(4),
                ..TeacherSpec::new(TeacherKind::Fan, 2)
            },
        },
        random(vec![2], 2, true),
        random(vec![3], 2, true),
        random(vec![3], 3, true),
        random(vec![4], 3, true),
        random(vec![4, 4], 3, true),
        random(vec![8], 8, true),
        random(vec![16], 16, true),
    ]
}

/// One row of the table: one case, one budget, one seed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchBenchRow {
    pub case: String,
    pub rank: usize,
    pub seed: u64,
    pub hidden: Vec<usize>,
    /// "greedy" or "product".
    pub generator: String,
    pub budget: usize,
    /// Candidates enumerate-and-test evaluated.
    pub candidates: usize,
    /// Enumerate-and-test validation MSE / Var(y).
    pub enumerate_ratio: f64,
    pub enumerate_seconds: f64,
    /// Sphere-net validation MSE / Var(y) (the same at every budget).
    pub sphere_ratio: f64,
    pub sphere_seconds: f64,
    pub sphere_features: usize,
    /// Estimated covering radius of the sphere-net fit's directions.
    pub sphere_covering_radius: f64,
}

/// Settings of [`bench_search`].
#[derive(Clone, Debug)]
pub struct SearchBenchConfig {
    pub cases: Vec<BenchCase>,
    pub budgets: Vec<usize>,
    pub generators: Vec<Generator>,
    /// Teacher and sample seeds (one row per seed).
    pub seeds: Vec<u64>,
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Enumerate-and-test settings other than budget and seed (learn's defaults by default).
    pub search: SearchConfig,
    pub sphere: SphereNetConfig,
}

impl Default for SearchBenchConfig {
    fn default() -> Self {
        SearchBenchConfig {
            cases: default_cases(),
            budgets: vec![512, 4096, 32768],
            generators: vec![Generator::Greedy, Generator::Product],
            seeds: vec![1, 2, 3],
            // learn's split of 1e5 samples.
            train_rows: 80_000,
            validation_rows: 20_000,
            // learn's settings but the budget, which each run sets.
            search: SearchConfig::default(),
            sphere: SphereNetConfig::default(),
        }
    }
}

/// Projected samples of a teacher on its own hidden coordinates.
pub fn teacher_samples(
    spec: &TeacherSpec,
    rows: usize,
    seed: u64,
) -> Result<(ProjectedSamples, usize)> {
    let teacher = build(spec)?;
    let d = spec.dim;
    let r = teacher.basis.len();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut z = Vec::with_capacity(rows * r);
    let mut y = Vec::with_capacity(rows);
    let mut x = vec![0.0f64; d];
    for _ in 0..rows {
        x.iter_mut().for_each(|v| *v = rng.sample(StandardNormal));
        y.push(teacher.network.forward_one_f64(&x) as f32);
        for q in &teacher.basis {
            z.push(q.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>() as f32);
        }
    }
    Ok((ProjectedSamples { rank: r, z, y }, r))
}

/// Runs every case at every budget and seed; `progress` is called after each row.
pub fn bench_search(
    backend: &dyn Backend,
    config: &SearchBenchConfig,
    mut progress: impl FnMut(&SearchBenchRow),
) -> Result<Vec<SearchBenchRow>> {
    if config.budgets.is_empty()
        || config.seeds.is_empty()
        || config.cases.is_empty()
        || config.generators.is_empty()
    {
        return Err(Error::invalid(
            "bench search: needs at least one case, budget, generator and seed",
        ));
    }
    let mut rows = Vec::new();
    for case in &config.cases {
        for &seed in &config.seeds {
            let spec = TeacherSpec {
                seed,
                ..case.spec.clone()
            };
            let (train, r) = teacher_samples(&spec, config.train_rows, 1000 + seed)?;
            let (val, _) = teacher_samples(&spec, config.validation_rows, 2000 + seed)?;
            let var = label_variance(&val.y);
            let sphere_config = SphereNetConfig {
                seed,
                ..config.sphere.clone()
            };
            let t = Instant::now();
            let sphere = sphere_net_fit(&train, &val, &sphere_config)?;
            let sphere_seconds = t.elapsed().as_secs_f64();
            for (&budget, &generator) in config
                .budgets
                .iter()
                .flat_map(|b| config.generators.iter().map(move |g| (b, g)))
            {
                let sc = SearchConfig {
                    budget,
                    seed,
                    generator,
                    ..config.search.clone()
                };
                let t = Instant::now();
                let e = enumerate_and_test(backend, &train, &val, &sc)?;
                let row = SearchBenchRow {
                    case: case.name.clone(),
                    rank: r,
                    seed,
                    hidden: sc.hidden.clone(),
                    generator: generator.name().to_string(),
                    budget,
                    candidates: e.candidates_evaluated,
                    enumerate_ratio: e.validation_mse / var,
                    enumerate_seconds: t.elapsed().as_secs_f64(),
                    sphere_ratio: sphere.validation_mse / var,
                    sphere_seconds,
                    sphere_features: sphere.features,
                    sphere_covering_radius: sphere_config.cost(r).covering_radius,
                };
                progress(&row);
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// The rows as a markdown table: one line per (case, budget), the median and worst over seeds
/// of each generator's MSE/Var and median seconds, then the sphere-net fit's.
pub fn search_table(rows: &[SearchBenchRow], backend: &str) -> String {
    let stats = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let mut generators: Vec<String> = Vec::new();
    let mut keys: Vec<(String, usize)> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    for r in rows {
        if !generators.contains(&r.generator) {
            generators.push(r.generator.clone());
        }
        if !keys.contains(&(r.case.clone(), r.budget)) {
            keys.push((r.case.clone(), r.budget));
        }
        if !seeds.contains(&r.seed) {
            seeds.push(r.seed);
        }
    }
    let mut out = format!(
        "validation MSE/Var(y), median [worst] over seeds {seeds:?}, true basis given, \
         candidates of hidden widths {:?}; {backend}\n\n| teacher | r | budget |",
        rows.first().map(|r| r.hidden.clone()).unwrap_or_default()
    );
    for g in &generators {
        out += &format!(" {g} | s |");
    }
    out += " sphere-net | s | features (covering radius) |\n|---|---|---|";
    out += &"---|---|".repeat(generators.len() + 1);
    out += "---|";
    out += "\n";
    for (case, budget) in keys {
        let sel: Vec<&SearchBenchRow> = rows
            .iter()
            .filter(|r| r.case == case && r.budget == budget)
            .collect();
        out += &format!("| {case} | {} | {budget} |", sel[0].rank);
        for g in &generators {
            let of: Vec<&&SearchBenchRow> = sel.iter().filter(|r| &r.generator == g).collect();
            let (m, w) = stats(of.iter().map(|r| r.enumerate_ratio).collect());
            let (t, _) = stats(of.iter().map(|r| r.enumerate_seconds).collect());
            out += &format!(" {m:.1e} [{w:.1e}] | {t:.2} |");
        }
        let (m, w) = stats(sel.iter().map(|r| r.sphere_ratio).collect());
        let (t, _) = stats(sel.iter().map(|r| r.sphere_seconds).collect());
        out += &format!(
            " {m:.1e} [{w:.1e}] | {t:.2} | {} ({:.2}) |\n",
            sel[0].sphere_features, sel[0].sphere_covering_radius
        );
    }
    out
}
