//! ONNX export of a [`Network`]: float32 input `x` of shape (N, d), output `y` of shape (N, 1).
//!
//! Graph: when the network has a projection P (r x d), `z = MatMul(x, P^T)`; then per layer i
//! `Gemm(h, W_i, b_i, transB = 1)` (h W_i^T + b_i, with W_i stored `outputs x inputs` as in the
//! network file and as PyTorch's `nn.Linear` keeps it), followed by `Relu` on every layer but
//! the last. Initializers are named `projection`, `layers.{i}.weight`, `layers.{i}.bias`.
//! Opset 17, IR version 8: read by onnxruntime >= 1.13 and tract.
//!
//! The protobuf messages are declared by hand in [`proto`] with the field numbers of the
//! official onnx.proto (only the fields written here); prost encodes them, so no protoc and no
//! generated code are needed. Parameters are rounded from f64 to f32, the type ONNX runtimes
//! compute in, so an exported model agrees with [`Network::forward_f64`] to float32 precision.

use super::ExportError;
use crate::error::Result;
use crate::network::Network;
use prost::Message;
use std::path::Path;

/// The ONNX operator set the graph is written for (Gemm, MatMul and Relu as of opset 13).
pub const OPSET_VERSION: i64 = 17;
/// ONNX IR version 8 (2021-07-30), the one paired with opset 17 by onnx 1.12.
pub const IR_VERSION: i64 = 8;

/// The subset of onnx.proto (package onnx, proto2) that the exporter writes, with the official
/// field numbers. Fields not listed are never written, and are skipped when decoding.
pub mod proto {
    /// `TensorProto.DataType.FLOAT`.
    pub const FLOAT: i32 = 1;
    /// `AttributeProto.AttributeType.INT`.
    pub const ATTRIBUTE_INT: i32 = 2;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, tag = "1")]
        pub ir_version: i64,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
        #[prost(string, tag = "2")]
        pub producer_name: String,
        #[prost(string, tag = "3")]
        pub producer_version: String,
        #[prost(string, tag = "4")]
        pub domain: String,
        #[prost(int64, tag = "5")]
        pub model_version: i64,
        #[prost(string, tag = "6")]
        pub doc_string: String,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        /// Empty: the default domain `ai.onnx`.
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(int64, tag = "2")]
        pub version: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(string, tag = "10")]
        pub doc_string: String,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, tag = "1")]
        pub name: String,
        /// `AttributeType` (required by the checker since IR version 3).
        #[prost(int32, tag = "20")]
        pub r#type: i32,
        #[prost(int64, tag = "3")]
        pub i: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        /// Packed, row-major.
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(string, tag = "8")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        /// The `tensor_type` member of the `value` oneof (the only one written).
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TypeProtoTensor>,
    }

    /// `TypeProto.Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProtoTensor {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    /// `TensorShapeProto.Dimension`: exactly one of the two (a oneof in onnx.proto) is set.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

use proto::*;

/// A float tensor initializer from f64 values, refusing values float32 cannot hold.
fn tensor(
    name: &str,
    dims: &[usize],
    values: impl Iterator<Item = (String, f64)>,
    origin: &str,
) -> Result<TensorProto, ExportError> {
    let mut float_data = Vec::with_capacity(dims.iter().product());
    for (field, v) in values {
        let f = v as f32;
        if !f.is_finite() {
            return Err(ExportError::NotFloat32 {
                origin: origin.to_string(),
                field,
                value: v,
            });
        }
        float_data.push(f);
    }
    Ok(TensorProto {
        dims: dims.iter().map(|&n| n as i64).collect(),
        data_type: FLOAT,
        float_data,
        name: name.to_string(),
    })
}

/// A float tensor value (N, cols) with N symbolic.
fn batch_value(name: &str, cols: usize) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            dim_value: None,
                            dim_param: Some("N".to_string()),
                        },
                        Dimension {
                            dim_value: Some(cols as i64),
                            dim_param: None,
                        },
                    ],
                }),
            }),
        }),
    }
}

fn node(op_type: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: name.to_string(),
        op_type: op_type.to_string(),
        attribute: Vec::new(),
    }
}

/// The ONNX model of `net` (see the module docs). `origin` names the network in errors (its
/// file, or e.g. "network").
pub fn onnx_model(net: &Network, origin: &str) -> Result<ModelProto, ExportError> {
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    let mut current = "x".to_string();
    if let Some(rows) = &net.projection {
        // Stored transposed (d x r) so that MatMul(x, P^T) gives z (N x r).
        let (r, d) = (rows.len(), net.input_dim);
        let values =
            (0..d).flat_map(|j| (0..r).map(move |i| (format!("projection[{i}][{j}]"), rows[i][j])));
        initializers.push(tensor("projection", &[d, r], values, origin)?);
        nodes.push(node("MatMul", "project", &["x", "projection"], "z"));
        current = "z".to_string();
    }
    let last = net.layers.len() - 1;
    for (i, layer) in net.layers.iter().enumerate() {
        let (w, b) = (format!("layers.{i}.weight"), format!("layers.{i}.bias"));
        let weights = (0..layer.outputs).flat_map(|o| {
            layer
                .row(o)
                .iter()
                .enumerate()
                .map(move |(j, &v)| (format!("layers[{i}].weights[{o}][{j}]"), v))
        });
        initializers.push(tensor(&w, &[layer.outputs, layer.inputs], weights, origin)?);
        let bias = layer
            .bias
            .iter()
            .enumerate()
            .map(|(o, &v)| (format!("layers[{i}].bias[{o}]"), v));
        initializers.push(tensor(&b, &[layer.outputs], bias, origin)?);
        let affine = if i == last {
            "y".to_string()
        } else {
            format!("layers.{i}.linear")
        };
        let mut gemm = node("Gemm", &format!("layer{i}"), &[&current, &w, &b], &affine);
        gemm.attribute.push(AttributeProto {
            name: "transB".to_string(),
            r#type: ATTRIBUTE_INT,
            i: 1,
        });
        nodes.push(gemm);
        current = affine;
        if i < last {
            let relu = format!("layers.{i}.relu");
            nodes.push(node("Relu", &format!("relu{i}"), &[&current], &relu));
            current = relu;
        }
    }
    let doc = match &net.projection {
        Some(rows) => format!(
            "relu-fpt network: projection z = P x ({} x {}), then a ReLU network with hidden widths {:?}",
            rows.len(),
            net.input_dim,
            net.hidden_widths()
        ),
        None => format!(
            "relu-fpt network on R^{}: a ReLU network with hidden widths {:?}",
            net.input_dim,
            net.hidden_widths()
        ),
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET_VERSION,
        }],
        producer_name: "relu-fpt".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        domain: String::new(),
        model_version: 1,
        doc_string: doc,
        graph: Some(GraphProto {
            node: nodes,
            name: "relu_fpt".to_string(),
            initializer: initializers,
            doc_string: String::new(),
            input: vec![batch_value("x", net.input_dim)],
            output: vec![batch_value("y", 1)],
        }),
    })
}

/// The serialised ONNX model of `net` (the bytes of a `.onnx` file).
pub fn onnx_bytes(net: &Network, origin: &str) -> Result<Vec<u8>, ExportError> {
    Ok(onnx_model(net, origin)?.encode_to_vec())
}

/// Writes the ONNX model of `net` to `path` through a temporary file renamed into place, so a
/// failed export leaves no file behind. `origin` names the network in errors.
pub fn write_onnx(net: &Network, origin: &str, path: &Path) -> Result<()> {
    net.validate()?;
    let bytes = onnx_bytes(net, origin)?;
    crate::output::write_atomic(path, &bytes)
}
