//! A structure-aware ONNX fuzzer: proptest draws random, valid ONNX graphs from the operators
//! resgraph imports for dense models (`Gemm` with and without `transB`, `alpha` and `beta`,
//! `MatMul` with and without a following bias `Add`, `Relu`, a residual `Add` of an earlier
//! value, `Identity`, `Flatten`, `Reshape` to `[0, -1]` or `[-1, width]`), with random widths,
//! batches and weights stored as `float_data` or `raw_data`. Each graph is encoded as protobuf,
//! loaded by resgraph, run on the test adapter, and compared with the graph evaluated directly
//! from its own description in f64 (no resgraph code on that side).
//!
//! CI runs `PROPTEST_CASES` graphs (32 by default); raise it to fuzz longer, e.g.
//! `PROPTEST_CASES=5000 cargo test --release --test onnx_graph_fuzz`.

mod common;

use std::path::Path;

use proptest::prelude::*;
use prost::Message;
use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::model::onnx::proto;
use resgraph::model::parse_model;

/// How a dense layer is written.
#[derive(Clone, Copy, Debug)]
enum LayerForm {
    /// `Gemm(X, B[out, in], C)` with `transB = 1` (PyTorch's form).
    GemmTransposed,
    /// `Gemm(X, B[in, out], C)` with `transB = 0`.
    Gemm,
    /// `MatMul(X, W[in, out])`, then `Add` of a bias (either operand order).
    MatMulBias { bias_first: bool },
    /// `MatMul(X, W[in, out])` alone.
    MatMul,
}

#[derive(Clone, Debug)]
enum Op {
    Layer {
        form: LayerForm,
        out: usize,
        alpha: f32,
        beta: f32,
        has_bias: bool,
        raw_data: bool,
        seed: u64,
    },
    Relu,
    /// Adds the earlier value `back` steps behind (of the same width, else skipped).
    Residual {
        back: usize,
    },
    Identity,
    Flatten,
    Reshape {
        keep_batch_with_zero: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let form = prop_oneof![
        Just(LayerForm::GemmTransposed),
        Just(LayerForm::Gemm),
        any::<bool>().prop_map(|bias_first| LayerForm::MatMulBias { bias_first }),
        Just(LayerForm::MatMul),
    ];
    prop_oneof![
        4 => (form, 1usize..=9, prop_oneof![Just(1.0f32), 0.25f32..2.0], prop_oneof![Just(1.0f32), 0.25f32..2.0], any::<bool>(), any::<bool>(), any::<u64>())
            .prop_map(|(form, out, alpha, beta, has_bias, raw_data, seed)| Op::Layer {
                form, out, alpha, beta, has_bias, raw_data, seed,
            }),
        2 => Just(Op::Relu),
        2 => (1usize..=4).prop_map(|back| Op::Residual { back }),
        1 => Just(Op::Identity),
        1 => Just(Op::Flatten),
        1 => any::<bool>().prop_map(|keep_batch_with_zero| Op::Reshape { keep_batch_with_zero }),
    ]
}

/// Deterministic values in [-1, 1) from `seed` (a small LCG: the fuzzer's weights need no
/// statistical quality, only reproducibility).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A graph under construction: ONNX nodes and initializers, and the f64 values they compute.
struct Builder {
    nodes: Vec<proto::NodeProto>,
    initializers: Vec<proto::TensorProto>,
    /// Every value so far: its ONNX name, width, and rows (batch × width, row-major).
    values: Vec<(String, usize, Vec<f64>)>,
    batch: usize,
}

impl Builder {
    fn name(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.nodes.len() + self.initializers.len())
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<proto::AttributeProto>,
    ) -> String {
        let output = self.name(&format!("{}_", op.to_lowercase()));
        self.nodes.push(proto::NodeProto {
            op_type: Some(op.to_string()),
            name: Some(output.clone()),
            input: inputs.iter().map(|input| input.to_string()).collect(),
            output: vec![output.clone()],
            attribute: attributes,
            ..Default::default()
        });
        output
    }

    fn float_tensor(&mut self, dims: Vec<i64>, data: &[f32], raw: bool) -> String {
        let name = self.name("w");
        let mut tensor = proto::TensorProto {
            name: Some(name.clone()),
            dims,
            data_type: Some(proto::tensor_proto::DataType::Float as i32),
            ..Default::default()
        };
        if raw {
            tensor.raw_data = Some(data.iter().flat_map(|v| v.to_le_bytes()).collect());
        } else {
            tensor.float_data = data.to_vec();
        }
        self.initializers.push(tensor);
        name
    }

    fn int_tensor(&mut self, data: &[i64]) -> String {
        let name = self.name("shape");
        self.initializers.push(proto::TensorProto {
            name: Some(name.clone()),
            dims: vec![data.len() as i64],
            data_type: Some(proto::tensor_proto::DataType::Int64 as i32),
            int64_data: data.to_vec(),
            ..Default::default()
        });
        name
    }

    fn current(&self) -> (String, usize, Vec<f64>) {
        self.values.last().expect("the input").clone()
    }

    fn apply(&mut self, op: &Op) {
        let (x, width, rows) = self.current();
        let batch = self.batch;
        let (name, out_width, out_rows) = match *op {
            Op::Layer {
                form,
                out,
                alpha,
                beta,
                has_bias,
                raw_data,
                seed,
            } => {
                let scale = 1.0 / (width as f32).sqrt();
                let weight: Vec<f32> = values(seed, out * width)
                    .iter()
                    .map(|v| v * scale)
                    .collect();
                let bias = values(seed ^ 0x9e37, out);
                // weight[o * width + i] is the factor of input i in output o.
                let mut result = vec![0f64; batch * out];
                let (alpha, beta) = match form {
                    LayerForm::GemmTransposed | LayerForm::Gemm => (alpha, beta),
                    _ => (1.0, 1.0),
                };
                let bias_used = match form {
                    LayerForm::GemmTransposed | LayerForm::Gemm => has_bias,
                    LayerForm::MatMulBias { .. } => true,
                    LayerForm::MatMul => false,
                };
                for r in 0..batch {
                    for o in 0..out {
                        let mut sum = 0f64;
                        for i in 0..width {
                            sum += rows[r * width + i] * weight[o * width + i] as f64;
                        }
                        sum *= alpha as f64;
                        if bias_used {
                            sum += beta as f64 * bias[o] as f64;
                        }
                        result[r * out + o] = sum;
                    }
                }
                let transposed: Vec<f32> = (0..width)
                    .flat_map(|i| (0..out).map(move |o| (i, o)))
                    .map(|(i, o)| weight[o * width + i])
                    .collect();
                let float_attribute = |name: &str, value: f32| proto::AttributeProto {
                    name: Some(name.to_string()),
                    f: Some(value),
                    r#type: Some(proto::attribute_proto::AttributeType::Float as i32),
                    ..Default::default()
                };
                let name = match form {
                    LayerForm::GemmTransposed | LayerForm::Gemm => {
                        let transposed_b = matches!(form, LayerForm::GemmTransposed);
                        let b = if transposed_b {
                            self.float_tensor(vec![out as i64, width as i64], &weight, raw_data)
                        } else {
                            self.float_tensor(vec![width as i64, out as i64], &transposed, raw_data)
                        };
                        let mut inputs = vec![x.clone(), b];
                        if has_bias {
                            inputs.push(self.float_tensor(vec![out as i64], &bias, raw_data));
                        }
                        let attributes = vec![
                            float_attribute("alpha", alpha),
                            float_attribute("beta", beta),
                            proto::AttributeProto {
                                name: Some("transB".to_string()),
                                i: Some(transposed_b as i64),
                                r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
                                ..Default::default()
                            },
                        ];
                        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                        self.node("Gemm", &inputs, attributes)
                    }
                    LayerForm::MatMulBias { bias_first } => {
                        let w = self.float_tensor(
                            vec![width as i64, out as i64],
                            &transposed,
                            raw_data,
                        );
                        let product = self.node("MatMul", &[&x, &w], Vec::new());
                        let b = self.float_tensor(vec![out as i64], &bias, raw_data);
                        if bias_first {
                            self.node("Add", &[&b, &product], Vec::new())
                        } else {
                            self.node("Add", &[&product, &b], Vec::new())
                        }
                    }
                    LayerForm::MatMul => {
                        let w = self.float_tensor(
                            vec![width as i64, out as i64],
                            &transposed,
                            raw_data,
                        );
                        self.node("MatMul", &[&x, &w], Vec::new())
                    }
                };
                (name, out, result)
            }
            Op::Relu => {
                let name = self.node("Relu", &[&x], Vec::new());
                (name, width, rows.iter().map(|v| v.max(0.0)).collect())
            }
            Op::Residual { back } => {
                let Some(index) = self.values.len().checked_sub(1 + back) else {
                    return;
                };
                let (other, other_width, other_rows) = self.values[index].clone();
                if other_width != width || other == x {
                    return;
                }
                let name = self.node("Add", &[&x, &other], Vec::new());
                let sum = rows.iter().zip(&other_rows).map(|(a, b)| a + b).collect();
                (name, width, sum)
            }
            Op::Identity => (self.node("Identity", &[&x], Vec::new()), width, rows),
            Op::Flatten => {
                let axis = proto::AttributeProto {
                    name: Some("axis".to_string()),
                    i: Some(1),
                    r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
                    ..Default::default()
                };
                (self.node("Flatten", &[&x], vec![axis]), width, rows)
            }
            Op::Reshape {
                keep_batch_with_zero,
            } => {
                let target = if keep_batch_with_zero {
                    [0, -1]
                } else {
                    [-1, width as i64]
                };
                let shape = self.int_tensor(&target);
                (self.node("Reshape", &[&x, &shape], Vec::new()), width, rows)
            }
        };
        self.values.push((name, out_width, out_rows));
    }

    /// The model's bytes, its output's width and its f64 output.
    fn finish(mut self) -> (Vec<u8>, usize, Vec<f64>) {
        use proto::tensor_shape_proto::{Dimension, dimension::Value as Dim};
        // The graph's output is an Identity named "y" of the last value.
        let (last, width, rows) = self.current();
        self.nodes.push(proto::NodeProto {
            op_type: Some("Identity".to_string()),
            name: Some("output".to_string()),
            input: vec![last],
            output: vec!["y".to_string()],
            ..Default::default()
        });
        let info = |name: &str, width: usize| proto::ValueInfoProto {
            name: Some(name.to_string()),
            r#type: Some(proto::TypeProto {
                value: Some(proto::type_proto::Value::TensorType(
                    proto::type_proto::Tensor {
                        elem_type: Some(proto::tensor_proto::DataType::Float as i32),
                        shape: Some(proto::TensorShapeProto {
                            dim: vec![
                                Dimension {
                                    value: Some(Dim::DimParam("batch".to_string())),
                                    ..Default::default()
                                },
                                Dimension {
                                    value: Some(Dim::DimValue(width as i64)),
                                    ..Default::default()
                                },
                            ],
                        }),
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        let input_width = self.values[0].1;
        let model = proto::ModelProto {
            ir_version: Some(8),
            opset_import: vec![proto::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(proto::GraphProto {
                node: self.nodes,
                initializer: self.initializers,
                input: vec![info("x", input_width)],
                output: vec![info("y", width)],
                ..Default::default()
            }),
            ..Default::default()
        };
        (model.encode_to_vec(), width, rows)
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_onnx_graphs_match_their_own_f64_evaluation(
        input_width in 1usize..=9,
        batch in 1usize..=5,
        ops in proptest::collection::vec(op(), 1..=7),
        input_seed in any::<u64>(),
    ) {
        let input = values(input_seed, batch * input_width);
        let mut builder = Builder {
            nodes: Vec::new(),
            initializers: Vec::new(),
            values: vec![(
                "x".to_string(),
                input_width,
                input.iter().map(|&v| v as f64).collect(),
            )],
            batch,
        };
        for op in &ops {
            builder.apply(op);
        }
        let (bytes, width, expected) = builder.finish();
        let graph = parse_model(Path::new("fuzz.onnx"), &bytes)
            .map_err(|error| TestCaseError::fail(format!("{ops:?}: {error}")))?;
        prop_assert_eq!(graph.output_width(), width);
        let model = CompiledModel::compile(
            common::shared_primary_context(),
            &graph,
            &CompileOptions::new(batch),
        )
        .map_err(|error| TestCaseError::fail(format!("{ops:?}: {error}")))?;
        let out = model
            .run(&input)
            .map_err(|error| TestCaseError::fail(format!("{ops:?}: {error}")))?;
        let error = resgraph::reference::relative_error(&out, &expected);
        let scale = expected.iter().map(|v| v.abs()).fold(0.0, f64::max);
        // A graph whose output is all zero (a ReLU of negatives) has no relative error to speak
        // of; it must then be zero within rounding.
        if scale < 1e-6 {
            prop_assert!(out.iter().all(|v| v.abs() < 1e-5), "{:?}: {:?}", ops, out);
        } else {
            prop_assert!(error <= 1e-4, "{:?}: relative error {:.2e}", ops, error);
        }
    }
}
