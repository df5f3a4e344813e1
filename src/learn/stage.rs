//! The stages of [`super::learn`] by name: what a [`super::StageReport`] and a
//! [`super::LearnReport`] say ran, and which stage's result is the model.

/// One stage of the pipeline, in the order the default pipeline runs them; reports write it as
/// "subspace", "enumerate", "sphere-net", "descent", "deep-net", "polish" or "deepen".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Filtered PCA: the basis B.
    Subspace,
    /// Enumerate-and-test on z = B x.
    Enumerate,
    /// Sphere-net features plus ridge on z.
    SphereNet,
    /// Adam on the search's network on z, B fixed.
    Descent,
    /// A deeper network on z from a random start.
    DeepNet,
    /// Adam on the network and B together.
    Polish,
    /// The polish again from the same function with one more hidden layer.
    Deepen,
}

impl Stage {
    /// The stage's name in reports and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Subspace => "subspace",
            Stage::Enumerate => "enumerate",
            Stage::SphereNet => "sphere-net",
            Stage::Descent => "descent",
            Stage::DeepNet => "deep-net",
            Stage::Polish => "polish",
            Stage::Deepen => "deepen",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Stage;

    /// The serde names are the names reports have always written.
    #[test]
    fn serde_names_are_the_report_names() {
        for s in [
            Stage::Subspace,
            Stage::Enumerate,
            Stage::SphereNet,
            Stage::Descent,
            Stage::DeepNet,
            Stage::Polish,
            Stage::Deepen,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(format!("{s}"), s.as_str());
        }
        let d = crate::backend::Device::Gpu;
        assert_eq!(serde_json::to_value(d).unwrap(), "gpu");
        assert_eq!(
            serde_json::to_value(crate::backend::Device::Cpu).unwrap(),
            "cpu"
        );
    }
}
