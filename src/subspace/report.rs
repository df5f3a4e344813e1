//! What a subspace run returns: per-round and per-refine-step reports, JSON and summary.

use super::Method;

/// What one round found.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundReport {
    /// Directions added this round.
    pub accepted: usize,
    /// Score of each added direction: sqrt of its eigenvalue of the aggregate A, i.e. the
    /// root-sum-square of the filter scores along it, in multiples of each filter's null edge
    /// (acceptance needs >= `acceptance`). Baselines: |lambda| / null_edge.
    pub scores: Vec<f64>,
    /// Largest |eigenvalues| (up to 8) of the best-scoring filter's matrix (baselines: of the
    /// method's matrix).
    pub top_eigenvalues: Vec<f64>,
    /// Null edge of that matrix (corrected Marchenko-Pastur edge nu2).
    pub null_edge: f64,
    /// Filters scored this round (0 for baselines).
    pub filters: usize,
    /// Directions conditioned on (cell axes) this round.
    pub cell_axes: usize,
    /// (filter, direction) candidates that cleared the bar and entered the aggregate.
    pub candidates: usize,
    /// Wall seconds of the round: the pass over the data and the host's scoring.
    pub seconds: f64,
}

/// One Gauss-Newton step on the basis.
#[derive(Clone, Debug, PartialEq)]
pub struct RefineStep {
    /// Mean squared residual y - h(B x), over all samples, of the basis the step started
    /// from. When it is not below the previous step's, the previous update is undone and the
    /// steps end; the last step's update is kept without a further pass.
    pub residual_mse: f64,
    /// Wall seconds: the fit and the pass.
    pub seconds: f64,
}

/// The result of [`find_subspace`].
#[derive(Clone, Debug, PartialEq)]
pub struct SubspaceReport {
    /// Input dimension d.
    pub input_dim: usize,
    /// r orthonormal rows of length d.
    pub basis: Vec<Vec<f64>>,
    /// One entry per round (baselines: one).
    pub rounds: Vec<RoundReport>,
    /// The Gauss-Newton steps after the rounds (filtered PCA only), in order.
    pub refine: Vec<RefineStep>,
    /// Samples read over all passes (rows x passes).
    pub samples_used: u64,
    /// The estimator that produced it.
    pub method: Method,
}

fn json_f64(v: f64) -> String {
    if v.is_finite() {
        serde_json::Value::from(v).to_string()
    } else {
        "null".to_string()
    }
}

fn json_list(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|&x| json_f64(x)).collect();
    format!("[{}]", parts.join(", "))
}

impl SubspaceReport {
    /// Subspace dimension r.
    pub fn dim(&self) -> usize {
        self.basis.len()
    }

    /// `{"format": "relu-fpt/subspace", "version": 1, "input_dim": d, "basis": [[..]],
    /// "rounds": [{"accepted": n, "scores": [..], "top_eigenvalues": [..], "null_edge": v, "seconds": s}],
    /// "refine": [{"residual_mse": e, "seconds": s}], "samples_used": N, "method": ".."}`.
    pub fn to_json(&self) -> String {
        let basis: Vec<String> = self.basis.iter().map(|r| json_list(r)).collect();
        let rounds: Vec<String> = self
            .rounds
            .iter()
            .map(|r| {
                format!(
                    "{{\"accepted\": {}, \"scores\": {}, \"top_eigenvalues\": {}, \"null_edge\": {}, \"seconds\": {}}}",
                    r.accepted,
                    json_list(&r.scores),
                    json_list(&r.top_eigenvalues),
                    json_f64(r.null_edge),
                    json_f64(r.seconds)
                )
            })
            .collect();
        let refine: Vec<String> = self
            .refine
            .iter()
            .map(|s| {
                format!(
                    "{{\"residual_mse\": {}, \"seconds\": {}}}",
                    json_f64(s.residual_mse),
                    json_f64(s.seconds)
                )
            })
            .collect();
        format!(
            "{{\"format\": \"relu-fpt/subspace\", \"version\": 1, \"input_dim\": {}, \"basis\": [{}], \"rounds\": [{}], \"refine\": [{}], \"samples_used\": {}, \"method\": \"{}\"}}",
            self.input_dim,
            basis.join(", "),
            rounds.join(", "),
            refine.join(", "),
            self.samples_used,
            self.method.name()
        )
    }

    /// Human summary: directions per round and their scores against the bar.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {}-dim subspace of R^{} from {} sample reads\n",
            self.method.name(),
            self.dim(),
            self.input_dim,
            self.samples_used
        );
        for (i, r) in self.rounds.iter().enumerate() {
            let scores: Vec<String> = r.scores.iter().map(|v| format!("{v:.1}")).collect();
            let eig: Vec<String> = r
                .top_eigenvalues
                .iter()
                .take(4)
                .map(|v| format!("{v:.3}"))
                .collect();
            s.push_str(&format!(
                "  round {}: +{} direction(s), scores [{}] (x null edge), best filter |eig| [{}] vs null edge {:.3}, {} filters ({} candidates), {} cell axes\n",
                i + 1,
                r.accepted,
                scores.join(", "),
                eig.join(", "),
                r.null_edge,
                r.filters,
                r.candidates,
                r.cell_axes
            ));
        }
        if !self.refine.is_empty() {
            let steps: Vec<String> = self
                .refine
                .iter()
                .map(|r| format!("{:.4} ({:.1} s)", r.residual_mse, r.seconds))
                .collect();
            s.push_str(&format!(
                "  refine: residual MSE per Gauss-Newton step {}\n",
                steps.join(", ")
            ));
        }
        s
    }
}
