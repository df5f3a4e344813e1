//! What `learn`'s settings cost before they run: a lower bound on the flops their sizes imply
//! ([`learn_work`]), refused above [`MAX_FLAG_FLOPS`] and noted above [`NOTE_FLAG_FLOPS`]
//! ([`check_learn_work`]), so that a mistyped flag fails at once rather than after hours.

use super::LearnConfig;
use crate::error::{Error, Result};
use crate::safety::{check_memory, flops, widths, MAX_FLAG_FLOPS, MAX_HIDDEN, NOTE_FLAG_FLOPS};

/// Parameters of a network with `inputs` inputs, the given hidden widths and one output, as a
/// float (so that absurd widths do not overflow).
fn network_params(inputs: f64, hidden: &[usize]) -> f64 {
    let mut n = 0.0;
    let mut width = inputs;
    for &h in hidden {
        let h = h as f64;
        n += h * width + h;
        width = h;
    }
    n + width + 1.0
}

/// The work `learn`'s size flags imply on `n` rows of dimension `d`: a lower bound (one
/// direction found, the smallest model), so that a refusal is always deserved. Each part is
/// (what, flops); see [`check_learn_work`].
pub fn learn_work(config: &LearnConfig, n: u64, d: usize) -> Vec<(String, f64)> {
    let n_train = (n as f64 * (1.0 - config.validation_fraction)).max(1.0);
    let n_fit = n_train.min(config.max_train_rows.unwrap_or(usize::MAX) as f64);
    let fit = n_fit as usize;
    let mut parts = Vec::new();
    if config.method == crate::learn::LearnMethod::Paper {
        // The paper's pipeline: the sweeps over the product net and nothing else. They end by
        // themselves, typically after about three sweeps of the coarse net and two per finer
        // level (the budget is a cap); each candidate of the last hidden layer is scored by a
        // rank-one update, about (inputs + features) per training and validation row.
        let s = &config.search_config;
        let units: usize = config.search_config.hidden.iter().sum();
        let per_unit = 3 * crate::search::COARSE_POINTS + s.sweep_levels * 2 * (s.sweep_local + 1);
        let candidates = (units * per_unit).min(config.search_config.budget) as f64;
        let rows = n_fit.min(crate::learn::PAPER_SCORE_ROWS as f64);
        let widest = config
            .search_config
            .hidden
            .iter()
            .copied()
            .max()
            .unwrap_or(1) as f64;
        parts.push((
            format!(
                "enumerate-and-test (the sweeps over the product net of --hidden {}, about {candidates:.0} candidates)",
                widths(&config.search_config.hidden)
            ),
            candidates * 2.0 * rows * 2.0 * (2.0 * widest + 1.0),
        ));
        return parts;
    }
    // Enumerate-and-test: every candidate is scored on up to max_rows training and as many
    // validation rows, its last layer's normal equations (f^2 per row) included.
    let rows = n_fit.min(config.search_config.max_rows as f64);
    let f = config.search_config.hidden.last().copied().unwrap_or(1) as f64 + 1.0;
    let per_row = 2.0 * network_params(1.0, &config.search_config.hidden) + f * f;
    parts.push((
        format!(
            "enumerate-and-test (--budget {} candidates of --hidden {})",
            config.search_config.budget,
            widths(&config.search_config.hidden)
        ),
        config.search_config.budget as f64 * 2.0 * rows * per_row,
    ));
    // Trainers: forward and backward (6 flops per parameter) and the projection of each row
    // read (2 d flops for one direction).
    let trainer = |c: &crate::learn::PolishConfig, hidden: &[usize], extra: f64| {
        let reads = c.epochs_for(fit.max(1)) as f64 * n_fit;
        reads * (6.0 * (network_params(1.0, hidden) + extra) + 2.0 * d as f64)
    };
    if config.descent {
        parts.push((
            format!(
                "descent ({} passes over {} rows, --descent-epochs)",
                config.descent_config.epochs_for(fit.max(1)),
                fit
            ),
            trainer(&config.descent_config, &config.search_config.hidden, 0.0),
        ));
    }
    // A lower bound: the cheapest candidate, which the pilots may choose.
    if let Some(deep) = (config.deep_candidates.iter())
        .min_by(|a, b| network_params(1.0, a).total_cmp(&network_params(1.0, b)))
    {
        parts.push((
            format!(
                "deep-net (--deep-widths {}, {} passes over {} rows)",
                widths(deep),
                config.deep_config.epochs_for(fit.max(1)),
                fit
            ),
            trainer(&config.deep_config, deep, 0.0),
        ));
    }
    if config.polish {
        parts.push((
            format!(
                "polish ({} passes over {} rows, --polish-epochs)",
                config.polish_config.epochs_for(fit.max(1)),
                fit
            ),
            trainer(
                &config.polish_config,
                &config.search_config.hidden,
                d as f64,
            ),
        ));
    }
    parts
}

/// Refuses `learn` settings whose flag-driven work ([`learn_work`]) exceeds [`MAX_FLAG_FLOPS`]
/// or whose enumerate-and-test batch would not fit in memory; returns a note (to print before
/// the work) when the work is above [`NOTE_FLAG_FLOPS`].
pub fn check_learn_work(config: &LearnConfig, n: u64, d: usize) -> Result<Option<String>> {
    if let Some(&h) = config
        .search_config
        .hidden
        .iter()
        .find(|&&h| h > MAX_HIDDEN)
    {
        return Err(Error::invalid(format!(
            "--hidden {}: enumerate-and-test scores whole candidates, each with the normal equations of its last layer (f^2 values per row for f features), so widths above {MAX_HIDDEN} are refused (a width of {h} means {:.1e} values per row); the default is 4, and wide networks are the deep-net stage's (--deep-widths)",
            widths(&config.search_config.hidden),
            (h as f64 + 1.0).powi(2)
        )));
    }
    // The trainers hold the parameters, their gradient and Adam's two moments in f64.
    let nets = std::iter::once(("--hidden", &config.search_config.hidden));
    for (flag, w) in nets.chain(config.deep_candidates.iter().map(|w| ("--deep-widths", w))) {
        let params = network_params(1.0, w);
        check_memory(
            (params * 8.0 * 4.0) as u128,
            &format!(
                "training a network of --hidden/--deep-widths {} ({params:.1e} parameters with gradients and Adam moments)",
                widths(w)
            ),
            &format!("use smaller {flag} widths"),
        )?;
    }
    // The search scores its candidates in batches, each with the normal equations of its last
    // layer: f (f + 1) / 2 doubles per candidate.
    let f = config.search_config.hidden.last().copied().unwrap_or(1) as u128 + 1;
    let batch = (config
        .search_config
        .budget
        .min(config.search_config.batch_size)) as u128;
    let gram = batch * (f * (f + 1) / 2 + f) * 8;
    check_memory(
        gram,
        &format!(
            "enumerate-and-test with --hidden {} (the normal equations of {} candidates at once, {} features each)",
            widths(&config.search_config.hidden),
            batch,
            f
        ),
        "use smaller --hidden widths (the default is 4)",
    )?;
    let parts = learn_work(config, n, d);
    let total: f64 = parts.iter().map(|p| p.1).sum();
    let (worst, worst_flops) = parts
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(w, f)| (w.as_str(), *f))
        .unwrap_or(("", 0.0));
    if total > MAX_FLAG_FLOPS || total.is_nan() {
        return Err(Error::invalid(format!(
            "these settings mean at least {} of training on {n} rows, most of it in {worst} ({}); refused above {MAX_FLAG_FLOPS:.0e} flops: lower --budget, --hidden, --deep-widths or the epochs (the defaults need about 1e11 to 1e12 flops)",
            flops(total),
            flops(worst_flops)
        )));
    }
    Ok((total > NOTE_FLAG_FLOPS).then(|| {
        format!(
            "note: these settings mean at least {} of training, most of it in {worst}; the defaults need about 1e11 to 1e12 flops",
            flops(total)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_learn_settings_need_no_note() {
        let c = LearnConfig::default();
        assert_eq!(check_learn_work(&c, 1_000_000, 128).unwrap(), None);
        let total: f64 = learn_work(&c, 1_000_000, 128).iter().map(|p| p.1).sum();
        assert!(total > 1e9 && total < NOTE_FLAG_FLOPS, "{total:e}");
    }

    #[test]
    fn absurd_sizes_are_refused_and_large_ones_noted() {
        let mut c = LearnConfig::default();
        c.search_config.hidden = vec![1_000_000_000];
        let e = check_learn_work(&c, 10_000, 8).unwrap_err().to_string();
        assert!(e.contains("--hidden 1000000000"), "{e}");
        c.search_config.hidden = vec![10_000];
        let e = check_learn_work(&c, 10_000, 8).unwrap_err().to_string();
        assert!(e.contains("above 1024"), "{e}");
        c.search_config.hidden = vec![4];
        c.search_config.budget = usize::MAX;
        let e = check_learn_work(&c, 10_000, 8).unwrap_err().to_string();
        assert!(e.contains("--budget") && e.contains("refused above"), "{e}");
        c.search_config.budget = 512;
        c.descent_config.epochs = 1_000_000_000;
        c.descent_config.row_budget = 0;
        let e = check_learn_work(&c, 1_000_000, 128)
            .unwrap_err()
            .to_string();
        assert!(e.contains("descent"), "{e}");
        c.descent_config.epochs = 100_000;
        let note = check_learn_work(&c, 1_000_000, 128).unwrap().unwrap();
        assert!(note.contains("descent"), "{note}");
    }
}
