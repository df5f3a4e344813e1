//! The network file format: JSON written by [`Network::save`] and read by [`Network::load`],
//! with errors that name the file, the field and the fix.
//!
//! # File format (version 2)
//!
//! A network is stored as one JSON object:
//!
//! ```json
//! {
//!   "format": "relu-fpt/network",
//!   "version": 2,
//!   "input_dim": 3,
//!   "projection": null,
//!   "layers": [
//!     { "weights": [[1.0, 0.0, -2.0], [0.5, 0.5, 0.5]], "bias": [0.0, 0.1] },
//!     { "weights": [[1.0, -1.0]], "bias": [0.0] }
//!   ],
//!   "subspace": null
//! }
//! ```
//!
//! - `format` is always the string `"relu-fpt/network"`; `version` is the integer `2` (files
//!   of version `1`, which has no `projection`, are still read).
//! - `input_dim` (d >= 1) is the length of x.
//! - `projection` is `null` or `r x d` rows P: the network first computes z = P x (no bias, no
//!   ReLU) and the layers act on z. This is the compact form of a learned model, whose cost per
//!   row is d r plus the small network.
//! - `layers[i].weights` holds `outputs x inputs` nested rows; `layers[0]` takes r inputs with a
//!   projection and `input_dim` without, every later layer takes the previous layer's outputs,
//!   and the last layer has exactly one output. `layers[i].bias` has one entry per output. ReLU
//!   follows every layer but the last.
//! - `subspace` is `null` or rows of length d: an orthonormal basis of the relevant subspace that
//!   a learner found (metadata only; the model already includes it).
//! - Every number is finite. Numbers are written in shortest round-trip form, so
//!   `from_json(to_json(n)) == n` bit for bit.

use super::{Layer, Network, NetworkError};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// The `format` string of a network file.
pub const FORMAT: &str = "relu-fpt/network";
/// The file format version this build writes (it reads this one and version 1).
pub const FORMAT_VERSION: u64 = 2;

impl Network {
    /// The network as pretty JSON in the version-2 schema (see the module docs): one matrix row
    /// per line, numbers in shortest round-trip form. Non-finite numbers are written as `null`
    /// (which [`Network::from_json`] rejects; [`Network::save`] refuses them up front).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        s.push_str("{\n");
        s.push_str(&format!("  \"format\": \"{FORMAT}\",\n"));
        s.push_str(&format!("  \"version\": {FORMAT_VERSION},\n"));
        s.push_str(&format!("  \"input_dim\": {},\n", self.input_dim));
        push_rows(&mut s, "projection", self.projection.as_deref());
        s.push_str(",\n  \"layers\": [\n");
        for (li, layer) in self.layers.iter().enumerate() {
            s.push_str("    {\n      \"weights\": [\n");
            for o in 0..layer.outputs {
                s.push_str("        ");
                push_vector(&mut s, layer.row(o));
                s.push_str(if o + 1 < layer.outputs { ",\n" } else { "\n" });
            }
            s.push_str("      ],\n      \"bias\": ");
            push_vector(&mut s, &layer.bias);
            s.push_str("\n    }");
            s.push_str(if li + 1 < self.layers.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        s.push_str("  ],\n");
        push_rows(&mut s, "subspace", self.subspace.as_deref());
        s.push_str("\n}\n");
        s
    }

    /// [`Network::to_json`] as a value (the same numbers, for embedding in a report without
    /// writing the text and parsing it back).
    pub fn to_value(&self) -> Value {
        let vector = |v: &[f64]| -> Value {
            Value::Array(
                v.iter()
                    .map(|&x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number))
                    .collect(),
            )
        };
        let rows = |r: Option<&[Vec<f64>]>| -> Value {
            r.map_or(Value::Null, |r| {
                Value::Array(r.iter().map(|row| vector(row)).collect())
            })
        };
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "weights": (0..l.outputs).map(|o| vector(l.row(o))).collect::<Vec<_>>(),
                    "bias": vector(&l.bias),
                })
            })
            .collect();
        serde_json::json!({
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "input_dim": self.input_dim,
            "projection": rows(self.projection.as_deref()),
            "layers": layers,
            "subspace": rows(self.subspace.as_deref()),
        })
    }

    /// Parses a version-2 or version-1 network file. `origin` (usually the file name) prefixes every error.
    pub fn from_json(text: &str, origin: &str) -> Result<Network, NetworkError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            match bare_non_finite(text, e.line(), e.column()) {
                Some((token, python)) => NetworkError::NanInJson {
                    origin: origin.to_string(),
                    line: e.line(),
                    column: e.column(),
                    token: token.to_string(),
                    python: python.to_string(),
                },
                None => NetworkError::NotJson {
                    origin: origin.to_string(),
                    line: e.line(),
                    column: e.column(),
                    message: e.to_string(),
                },
            }
        })?;
        let p = Parser { origin };
        let obj = value.as_object().ok_or_else(|| {
            p.bad(
                "(top level)",
                format!(
                    "is {}, expected an object {{\"format\": \"{FORMAT}\", \"version\": {FORMAT_VERSION}, ...}}",
                    describe(&value)
                ),
            )
        })?;
        match obj.get("format") {
            Some(Value::String(f)) if f == FORMAT => {}
            other => {
                return Err(NetworkError::WrongFormat {
                    origin: origin.to_string(),
                    found: other.map_or("missing".to_string(), short),
                })
            }
        }
        let version = match obj.get("version") {
            Some(v) if matches!(v.as_u64(), Some(1 | FORMAT_VERSION)) => v.as_u64(),
            other => {
                return Err(NetworkError::UnsupportedVersion {
                    origin: origin.to_string(),
                    found: other.map_or("missing".to_string(), short),
                })
            }
        };
        let input_dim = p.input_dim(obj)?;
        let layer_values = p.layer_values(obj)?;
        let projection = p.projection(obj, version, input_dim)?;
        let mut layers = Vec::with_capacity(layer_values.len());
        let mut width = projection.as_ref().map_or(input_dim, Vec::len);
        for (li, lv) in layer_values.iter().enumerate() {
            let layer = p.layer(li, lv, width, projection.is_some())?;
            width = layer.outputs;
            layers.push(layer);
        }
        if width != 1 {
            return Err(NetworkError::NotScalar {
                origin: origin.to_string(),
                field: format!("layers[{}]", layers.len() - 1),
                outputs: width,
            });
        }
        let subspace = p.subspace(obj, input_dim)?;
        let net = Network {
            input_dim,
            projection,
            layers,
            subspace,
        };
        net.validate()?;
        Ok(net)
    }

    /// Writes the network as JSON ([`Network::to_json`]) to `path`: first to a temporary file in
    /// the same directory, then renamed over `path`, so a reader never sees a half-written file.
    /// Refuses networks with non-finite numbers or broken shapes.
    pub fn save(&self, path: &Path) -> Result<(), NetworkError> {
        self.validate()?;
        let origin = path.display().to_string();
        if !self.is_finite() {
            return Err(NetworkError::NonFinite {
                origin,
                field: first_non_finite(self),
                found: "NaN or infinity in memory".into(),
            });
        }
        let text = self.to_json();
        let unwritable = |source| NetworkError::Unwritable {
            path: path.to_path_buf(),
            source,
        };
        let tmp = crate::output::begin(path)
            .map_err(|e| unwritable(std::io::Error::other(e.to_string())))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        };
        if let Err(e) = write() {
            crate::output::abandon(&tmp);
            return Err(unwritable(e));
        }
        crate::output::commit(&tmp, path).map_err(unwritable)
    }

    /// Reads a network file written by [`Network::save`] (or by hand in the same schema).
    pub fn load(path: &Path) -> Result<Network, NetworkError> {
        let text = std::fs::read_to_string(path).map_err(|source| NetworkError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Network::from_json(&text, &path.display().to_string())
    }
}

/// The bare non-finite token (NaN, Infinity, -Infinity) where serde_json stopped at `line`,
/// `column` (1-based; the column points at or just past the token's first character), with
/// the Python float it stands for.
fn bare_non_finite(text: &str, line: usize, column: usize) -> Option<(&'static str, &'static str)> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let at = column.saturating_sub(1).min(l.len());
    // Back up over a token the parser had started to read.
    let start = l[..at]
        .rfind(|c: char| !(c.is_ascii_alphabetic() || c == '-'))
        .map_or(0, |i| i + 1);
    let rest = &l[start..];
    [("-Infinity", "-inf"), ("Infinity", "inf"), ("NaN", "nan")]
        .into_iter()
        .find(|(t, _)| rest.starts_with(t))
}

impl Network {
    /// Refuses a parameter that float32 cannot hold (finite, but above 3.4e38 in magnitude):
    /// models are evaluated in float32, where it would become an infinity. `origin` names the
    /// file in the error, which names the JSON field.
    pub fn check_float32(&self, origin: &str) -> Result<(), NetworkError> {
        let bad = |field: String, value: f64| NetworkError::BeyondFloat32 {
            origin: origin.to_string(),
            field,
            value,
        };
        let too_big = |v: f64| (v as f32).is_infinite();
        for (name, rows) in [
            ("projection", &self.projection),
            ("subspace", &self.subspace),
        ] {
            for (i, row) in rows.iter().flatten().enumerate() {
                if let Some(j) = row.iter().position(|&v| too_big(v)) {
                    return Err(bad(format!("{name}[{i}][{j}]"), row[j]));
                }
            }
        }
        for (li, l) in self.layers.iter().enumerate() {
            for o in 0..l.outputs {
                if let Some(j) = l.row(o).iter().position(|&v| too_big(v)) {
                    return Err(bad(format!("layers[{li}].weights[{o}][{j}]"), l.row(o)[j]));
                }
            }
            if let Some(o) = l.bias.iter().position(|&v| too_big(v)) {
                return Err(bad(format!("layers[{li}].bias[{o}]"), l.bias[o]));
            }
        }
        Ok(())
    }
}

/// Appends `  "name": null` or `  "name": [` rows one per line `]` (no trailing separator).
fn push_rows(s: &mut String, name: &str, rows: Option<&[Vec<f64>]>) {
    match rows {
        None => s.push_str(&format!("  \"{name}\": null")),
        Some(rows) => {
            s.push_str(&format!("  \"{name}\": [\n"));
            for (i, row) in rows.iter().enumerate() {
                s.push_str("    ");
                push_vector(s, row);
                s.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
            }
            s.push_str("  ]");
        }
    }
}

/// Appends `[a, b, ..]` with numbers in shortest round-trip form (non-finite as `null`).
fn push_vector(s: &mut String, v: &[f64]) {
    s.push('[');
    for (i, &x) in v.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        match serde_json::Number::from_f64(x) {
            Some(n) => s.push_str(&n.to_string()),
            None => s.push_str("null"),
        }
    }
    s.push(']');
}

/// The JSON field name of the first non-finite parameter, for error messages.
fn first_non_finite(net: &Network) -> String {
    for (li, l) in net.layers.iter().enumerate() {
        for o in 0..l.outputs {
            if let Some(j) = l.row(o).iter().position(|v| !v.is_finite()) {
                return format!("layers[{li}].weights[{o}][{j}]");
            }
        }
        if let Some(o) = l.bias.iter().position(|v| !v.is_finite()) {
            return format!("layers[{li}].bias[{o}]");
        }
    }
    for (name, rows) in [("projection", &net.projection), ("subspace", &net.subspace)] {
        for (i, row) in rows.iter().flatten().enumerate() {
            if let Some(j) = row.iter().position(|v| !v.is_finite()) {
                return format!("{name}[{i}][{j}]");
            }
        }
    }
    "(none)".into()
}

/// The JSON type of a value, for error messages.
fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value as short JSON text (long values cut), for error messages.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// Field readers that name the file and field in their errors.
struct Parser<'a> {
    origin: &'a str,
}

impl Parser<'_> {
    /// `input_dim`: an integer >= 1.
    fn input_dim(&self, obj: &serde_json::Map<String, Value>) -> Result<usize, NetworkError> {
        match obj.get("input_dim") {
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(n as usize),
                _ => Err(self.bad(
                    "input_dim",
                    format!(
                        "is {}, expected an integer >= 1 (the length of x)",
                        short(v)
                    ),
                )),
            },
            None => Err(self.bad(
                "input_dim",
                "is missing; add \"input_dim\": d (the length of x)",
            )),
        }
    }

    /// `layers`: a non-empty array.
    fn layer_values<'v>(
        &self,
        obj: &'v serde_json::Map<String, Value>,
    ) -> Result<&'v Vec<Value>, NetworkError> {
        match obj.get("layers") {
            Some(Value::Array(a)) if !a.is_empty() => Ok(a),
            Some(v) => Err(self.bad(
                "layers",
                format!(
                    "is {}, expected a non-empty array of {{\"weights\": [[..]], \"bias\": [..]}}",
                    short(v)
                ),
            )),
            None => Err(self.bad(
                "layers",
                "is missing; add \"layers\": [{\"weights\": [[..]], \"bias\": [..]}, ..]",
            )),
        }
    }

    /// `projection` (version 2): null, or rows of input_dim entries.
    fn projection(
        &self,
        obj: &serde_json::Map<String, Value>,
        version: Option<u64>,
        input_dim: usize,
    ) -> Result<Option<Vec<Vec<f64>>>, NetworkError> {
        match obj.get("projection") {
            None | Some(Value::Null) => Ok(None),
            Some(_) if version == Some(1) => Err(self.bad(
                "projection",
                "is a version-2 field but the file says \"version\": 1; set \"version\": 2",
            )),
            Some(v) => {
                let (rows, cols, flat) = self.matrix(v, "projection")?;
                if rows == 0 || cols != input_dim {
                    return Err(NetworkError::ShapeMismatch {
                        origin: self.origin.to_string(),
                        field: "projection".into(),
                        detail: format!(
                            "has {rows} rows of {cols} entries; give null or at least one row of input_dim = {input_dim} entries"
                        ),
                    });
                }
                Ok(Some(
                    flat.chunks_exact(cols)
                        .map(<[f64]>::to_vec)
                        .collect::<Vec<_>>(),
                ))
            }
        }
    }

    /// `layers[li]` on `width` inputs (the projection's rows, input_dim, or the previous
    /// layer's outputs).
    fn layer(
        &self,
        li: usize,
        lv: &Value,
        width: usize,
        projected: bool,
    ) -> Result<Layer, NetworkError> {
        let field = format!("layers[{li}]");
        let lobj = lv.as_object().ok_or_else(|| {
            self.bad(
                &field,
                format!(
                    "is {}, expected an object {{\"weights\": [[..]], \"bias\": [..]}}",
                    describe(lv)
                ),
            )
        })?;
        let wfield = format!("{field}.weights");
        let wv = lobj.get("weights").ok_or_else(|| {
            self.bad(
                &wfield,
                "is missing; add the weights as nested rows (outputs x inputs)",
            )
        })?;
        let (outputs, cols, weights) = self.matrix(wv, &wfield)?;
        if outputs == 0 {
            return Err(self.bad(&wfield, "has no rows; a layer needs at least one output"));
        }
        if cols != width {
            let from = if li == 0 && projected {
                format!("the projection has {width} rows")
            } else if li == 0 {
                format!("input_dim is {width}")
            } else {
                format!("layers[{}] has {width} outputs", li - 1)
            };
            return Err(NetworkError::ShapeMismatch {
                origin: self.origin.to_string(),
                field: wfield,
                detail: format!(
                    "rows have {cols} entries but {from}; each weight row needs one entry per input of the layer"
                ),
            });
        }
        let bfield = format!("{field}.bias");
        let bv = lobj.get("bias").ok_or_else(|| {
            self.bad(&bfield, format!("is missing; add one bias per output ({outputs} numbers, zeros for a bias-free layer)"))
        })?;
        let bias = self.vector(bv, &bfield)?;
        if bias.len() != outputs {
            return Err(NetworkError::ShapeMismatch {
                origin: self.origin.to_string(),
                field: bfield,
                detail: format!(
                    "has {} entries but {wfield} has {outputs} rows; give one bias per output",
                    bias.len()
                ),
            });
        }
        Ok(Layer {
            inputs: cols,
            outputs,
            weights,
            bias,
        })
    }

    /// `subspace`: null, or rows of input_dim entries.
    fn subspace(
        &self,
        obj: &serde_json::Map<String, Value>,
        input_dim: usize,
    ) -> Result<Option<Vec<Vec<f64>>>, NetworkError> {
        let sv = match obj.get("subspace") {
            None | Some(Value::Null) => return Ok(None),
            Some(sv) => sv,
        };
        let rows = sv.as_array().ok_or_else(|| {
            self.bad(
                "subspace",
                format!("is {}, expected null or an array of rows", describe(sv)),
            )
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, rv) in rows.iter().enumerate() {
            let field = format!("subspace[{i}]");
            let row = self.vector(rv, &field)?;
            if row.len() != input_dim {
                return Err(NetworkError::SubspaceRow {
                    origin: self.origin.to_string(),
                    field,
                    expected: input_dim,
                    found: row.len(),
                });
            }
            out.push(row);
        }
        Ok(Some(out))
    }

    fn bad(&self, field: &str, problem: impl Into<String>) -> NetworkError {
        NetworkError::BadField {
            origin: self.origin.to_string(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    fn number(&self, v: &Value, field: &str) -> Result<f64, NetworkError> {
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(x) if x.is_finite() => Ok(x),
                _ => Err(NetworkError::NonFinite {
                    origin: self.origin.to_string(),
                    field: field.to_string(),
                    found: n.to_string(),
                }),
            },
            Value::Null => Err(NetworkError::NonFinite {
                origin: self.origin.to_string(),
                field: field.to_string(),
                found: "null".into(),
            }),
            Value::String(s)
                if matches!(
                    s.trim().to_ascii_lowercase().trim_start_matches(['+', '-']),
                    "nan" | "inf" | "infinity"
                ) =>
            {
                Err(NetworkError::NonFinite {
                    origin: self.origin.to_string(),
                    field: field.to_string(),
                    found: format!("\"{s}\""),
                })
            }
            other => Err(self.bad(field, format!("is {}, expected a number", describe(other)))),
        }
    }

    fn vector(&self, v: &Value, field: &str) -> Result<Vec<f64>, NetworkError> {
        let items = v.as_array().ok_or_else(|| {
            self.bad(
                field,
                format!("is {}, expected an array of numbers", describe(v)),
            )
        })?;
        items
            .iter()
            .enumerate()
            .map(|(i, x)| self.number(x, &format!("{field}[{i}]")))
            .collect()
    }

    /// A matrix of nested rows: (rows, columns, row-major values). Rows must have equal lengths.
    fn matrix(&self, v: &Value, field: &str) -> Result<(usize, usize, Vec<f64>), NetworkError> {
        let rows = v.as_array().ok_or_else(|| {
            self.bad(
                field,
                format!(
                    "is {}, expected an array of rows (arrays of numbers)",
                    describe(v)
                ),
            )
        })?;
        let mut flat = Vec::new();
        let mut cols = 0;
        for (i, rv) in rows.iter().enumerate() {
            let rfield = format!("{field}[{i}]");
            let row = self.vector(rv, &rfield)?;
            if i == 0 {
                cols = row.len();
            } else if row.len() != cols {
                return Err(NetworkError::Ragged {
                    origin: self.origin.to_string(),
                    field: rfield,
                    expected: cols,
                    found: row.len(),
                });
            }
            flat.extend(row);
        }
        Ok((rows.len(), cols, flat))
    }
}
