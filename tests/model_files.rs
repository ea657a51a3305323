//! Model and data files: the safetensors format as a PyTorch user writes it, and every kind of
//! bad file refused with a one-line error naming what is wrong, never a panic or a huge allocation.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use prost::Message;
use resgraph::Error;
use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::graph::synthetic::random_input;
use resgraph::model::npy::{encode_npy, parse_npy};
use resgraph::model::onnx::proto;
use resgraph::model::parse_model;
use resgraph::reference::forward_f64;

/// `bytes` with every occurrence of `from` replaced by `to` (same length), byte for byte.
fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut index = 0;
    while index + from.len() <= out.len() {
        if &out[index..index + from.len()] == from {
            out[index..index + from.len()].copy_from_slice(to);
            index += from.len();
        } else {
            index += 1;
        }
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A safetensors file with `layers` metadata, as the README's Python snippet writes one.
fn pytorch_style_safetensors(
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
    layers: &str,
    dtype: safetensors::Dtype,
) -> Vec<u8> {
    safetensors_with_graph(tensors, &format!("{{\"layers\": {layers}}}"), dtype)
}

/// A safetensors file whose `resgraph.graph` metadata is `graph` (JSON text).
fn safetensors_with_graph(
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
    graph: &str,
    dtype: safetensors::Dtype,
) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let bytes = match dtype {
                safetensors::Dtype::F16 => values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => f32_bytes(values),
            };
            (name.to_string(), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).expect("view");
            (name.clone(), view)
        })
        .collect();
    let metadata = HashMap::from([("resgraph.graph".to_string(), graph.to_string())]);
    safetensors::serialize(views, Some(metadata)).expect("serialize")
}

/// Tensors of a stem 6 -> 8, one residual block of width 8 (hidden 12), head 8 -> 3.
fn block_tensors() -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    let values = |len: usize, seed: u64| {
        random_input(len, seed)
            .iter()
            .map(|v| v * 0.4)
            .collect::<Vec<f32>>()
    };
    vec![
        ("stem.weight", vec![8, 6], values(48, 1)),
        ("stem.bias", vec![8], values(8, 2)),
        ("blocks.0.fc1.weight", vec![12, 8], values(96, 3)),
        ("blocks.0.fc1.bias", vec![12], values(12, 4)),
        ("blocks.0.fc2.weight", vec![8, 12], values(96, 5)),
        ("blocks.0.fc2.bias", vec![8], values(8, 6)),
        ("head.weight", vec![3, 8], values(24, 7)),
    ]
}

const LAYERS: &str = r#"[{"op": "linear", "name": "stem"}, {"op": "residual_block", "name": "blocks.0"}, {"op": "linear", "name": "head"}]"#;

fn model_error(bytes: &[u8], name: &str) -> Error {
    parse_model(Path::new(name), bytes).expect_err("a bad model must be refused")
}

#[test]
fn safetensors_metadata_mistakes_get_messages_that_name_the_mistake() {
    let f32 = safetensors::Dtype::F32;
    let stem = [("stem.weight", vec![4, 4], vec![0.5; 16])];
    let nodes = |output: &str| {
        format!(
            r#"{{"nodes": [{{"op": "input", "name": "x", "width": 4}}, {{"op": "linear", "name": "stem", "inputs": [0]}}, {{"op": "relu", "name": "act", "inputs": [1]}}]{output}}}"#
        )
    };
    let cases = [
        // An "output" that names no node used to fall back to the last node.
        (nodes(r#", "output": 99"#), "\"output\" is 99"),
        (nodes(r#", "output": -1"#), "\"output\" is -1"),
        (nodes(r#", "output": "head""#), "\"output\" is \"head\""),
        (
            r#"{"nodes": [{"op": "input", "name": "x", "width": -5}]}"#.to_string(),
            "\"width\" is -5; expected a positive integer",
        ),
        (
            r#"{"layers": [{"op": "convolution", "name": "stem"}]}"#.to_string(),
            "op \"convolution\"",
        ),
        (
            r#"{"layers": [{"op": "relu"}, {"op": "linear", "name": "stem"}]}"#.to_string(),
            "input_width",
        ),
        (
            r#"{"input_width": -4, "layers": [{"op": "linear", "name": "stem"}]}"#.to_string(),
            "\"input_width\" is -4",
        ),
    ];
    for (graph, expected) in cases {
        let error = model_error(&safetensors_with_graph(&stem, &graph, f32), "m.safetensors");
        assert!(error.to_string().contains(expected), "{graph}: {error}");
    }
    // A valid "output" picks that node, and no "output" picks the last.
    for (output, width) in [(r#", "output": 1"#, 4), ("", 4)] {
        let graph = parse_model(
            Path::new("m.safetensors"),
            &safetensors_with_graph(&stem, &nodes(output), f32),
        )
        .expect("valid nodes");
        assert_eq!(graph.output_width(), width);
    }
    let relu_first =
        r#"{"input_width": 4, "layers": [{"op": "relu"}, {"op": "linear", "name": "stem"}]}"#;
    parse_model(
        Path::new("m.safetensors"),
        &safetensors_with_graph(&stem, relu_first, f32),
    )
    .expect("a relu first, with input_width");
}

#[test]
fn a_pytorch_style_safetensors_file_runs_and_matches_the_reference() {
    let context = common::shared_primary_context();
    for dtype in [safetensors::Dtype::F32, safetensors::Dtype::F16] {
        let bytes = pytorch_style_safetensors(&block_tensors(), LAYERS, dtype);
        let graph = parse_model(Path::new("model.safetensors"), &bytes).expect("load");
        assert_eq!(graph.input_width(), 6);
        assert_eq!(graph.output_width(), 3);
        let names: Vec<&str> = graph
            .nodes()
            .iter()
            .map(|node| node.name.as_str())
            .collect();
        assert!(names.contains(&"blocks.0.fc2"), "{names:?}");
        let model = CompiledModel::compile(Arc::clone(&context), &graph, &CompileOptions::new(4))
            .expect("compile");
        let input = random_input(4 * 6, 9);
        let output = model.run(&input).expect("run");
        common::assert_close(
            &output,
            &forward_f64(&graph, &input, 4),
            1e-5,
            "safetensors model",
        );
    }
}

#[test]
fn random_and_truncated_files_are_refused() {
    let onnx = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/onnx/pytorch_gemm_w17_stem_head.onnx"),
    )
    .expect("case");
    let error = model_error(&onnx[..onnx.len() / 2], "cut.onnx");
    assert!(matches!(error, Error::Model { .. }), "{error}");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(matches!(
        model_error(&noise, "noise.onnx"),
        Error::Model { .. }
    ));
    assert!(matches!(
        model_error(&noise, "noise.safetensors"),
        Error::Model { .. }
    ));
    assert!(matches!(
        model_error(&[], "empty.safetensors"),
        Error::Model { .. }
    ));
    assert!(matches!(
        model_error(&[], "empty.onnx"),
        Error::Model { .. }
    ));
}

#[test]
fn a_safetensors_header_claiming_more_than_the_file_holds_is_refused() {
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let error = model_error(&bytes, "short.safetensors");
    assert!(matches!(error, Error::Model { .. }), "{error}");
}

#[test]
fn tensor_offsets_out_of_range_are_refused() {
    let header = r#"{"__metadata__": {"resgraph.graph": "{\"layers\": [{\"op\": \"linear\", \"name\": \"l\"}]}"}, "l.weight": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4000000000000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 16]);
    let error = model_error(&bytes, "offsets.safetensors");
    assert!(matches!(error, Error::Model { .. }), "{error}");
}

#[test]
fn wrong_dtypes_missing_tensors_and_unchained_shapes_name_the_tensor_or_node() {
    // A weight stored as I32.
    let data = vec![0u8; 4 * 8 * 6];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![8, 6], &data)
        .expect("view");
    let metadata = HashMap::from([(
        "resgraph.graph".to_string(),
        r#"{"layers": [{"op": "linear", "name": "stem"}]}"#.to_string(),
    )]);
    let bytes = safetensors::serialize([("stem.weight", view)], Some(metadata)).expect("serialize");
    let error = model_error(&bytes, "dtype.safetensors");
    assert!(
        error.to_string().contains("stem.weight") && error.to_string().contains("I32"),
        "{error}"
    );

    let mut tensors = block_tensors();
    tensors.retain(|(name, _, _)| *name != "blocks.0.fc2.weight");
    let error = model_error(
        &pytorch_style_safetensors(&tensors, LAYERS, safetensors::Dtype::F32),
        "missing.safetensors",
    );
    assert!(
        error
            .to_string()
            .contains("missing tensor \"blocks.0.fc2.weight\""),
        "{error}"
    );

    let mut tensors = block_tensors();
    tensors[6] = ("head.weight", vec![3, 9], random_input(27, 1));
    let error = model_error(
        &pytorch_style_safetensors(&tensors, LAYERS, safetensors::Dtype::F32),
        "chain.safetensors",
    );
    assert!(
        matches!(error, Error::GraphShape { ref node, .. } if node == "head"),
        "{error}"
    );

    let error = model_error(
        &pytorch_style_safetensors(&block_tensors(), "[]", safetensors::Dtype::F32),
        "empty.safetensors",
    );
    assert!(matches!(error, Error::Model { .. }), "{error}");
}

fn onnx_model(nodes: Vec<proto::NodeProto>, initializers: Vec<proto::TensorProto>) -> Vec<u8> {
    onnx_model_with_batch(
        nodes,
        initializers,
        proto::tensor_shape_proto::dimension::Value::DimParam("batch".into()),
    )
}

/// A `[batch, 4] -> [batch, 4]` model whose input declares `batch` (a symbol or a number).
fn onnx_model_with_batch(
    nodes: Vec<proto::NodeProto>,
    initializers: Vec<proto::TensorProto>,
    batch: proto::tensor_shape_proto::dimension::Value,
) -> Vec<u8> {
    use proto::tensor_shape_proto::dimension::Value as Dim;
    onnx_model_with_input(nodes, initializers, vec![batch, Dim::DimValue(4)])
}

/// A model whose input `x` has dimensions `input` and whose output `y` is `[batch, 4]`.
fn onnx_model_with_input(
    nodes: Vec<proto::NodeProto>,
    initializers: Vec<proto::TensorProto>,
    input: Vec<proto::tensor_shape_proto::dimension::Value>,
) -> Vec<u8> {
    use proto::tensor_shape_proto::{Dimension, dimension::Value as Dim};
    let tensor_info = |name: &str, dims: Vec<Dim>| proto::ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(proto::tensor_proto::DataType::Float as i32),
                    shape: Some(proto::TensorShapeProto {
                        dim: dims
                            .into_iter()
                            .map(|value| Dimension {
                                value: Some(value),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = proto::ModelProto {
        ir_version: Some(8),
        graph: Some(proto::GraphProto {
            node: nodes,
            initializer: initializers,
            input: vec![tensor_info("x", input)],
            output: vec![tensor_info(
                "y",
                vec![Dim::DimParam("batch".into()), Dim::DimValue(4)],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> proto::NodeProto {
    proto::NodeProto {
        op_type: Some(op.to_string()),
        name: Some(name.to_string()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    }
}

fn weight(name: &str, dims: Vec<i64>, values: Vec<f32>) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.to_string()),
        dims,
        data_type: Some(proto::tensor_proto::DataType::Float as i32),
        float_data: values,
        ..Default::default()
    }
}

#[test]
fn a_reshape_that_mixes_batch_entries_is_refused_and_one_that_keeps_the_batch_loads() {
    use proto::tensor_shape_proto::dimension::Value as Dim;
    // The hostile probe's case: [8, -1] of a [5, 8] value is [8, 5] in onnxruntime, and was
    // taken for "keep the batch". A positive row count keeps the batch only where the model's
    // input fixes the batch to that number.
    let model = |target: &[i64], batch: Dim| {
        onnx_model_with_batch(
            vec![node("Reshape", "view", &["x", "shape"], "y")],
            vec![proto::TensorProto {
                name: Some("shape".to_string()),
                dims: vec![target.len() as i64],
                data_type: Some(proto::tensor_proto::DataType::Int64 as i32),
                int64_data: target.to_vec(),
                ..Default::default()
            }],
            batch,
        )
    };
    let symbolic = || Dim::DimParam("batch".into());
    for (target, batch, loads) in [
        (vec![0, -1], symbolic(), true),
        (vec![-1, 4], symbolic(), true),
        (vec![0, 4], symbolic(), true),
        (vec![8, -1], symbolic(), false),
        (vec![1, -1], symbolic(), false),
        (vec![1, 4], symbolic(), false),
        (vec![2, 2], symbolic(), false),
        (vec![-1, 2], symbolic(), false),
        (vec![-1], symbolic(), false),
        (vec![1, -1], Dim::DimValue(1), true),
        (vec![1, 4], Dim::DimValue(1), true),
        (vec![5, -1], Dim::DimValue(5), true),
        (vec![8, -1], Dim::DimValue(5), false),
        (vec![1, -1], Dim::DimValue(5), false),
    ] {
        let what = format!("Reshape to {target:?} with input batch {batch:?}");
        let result = parse_model(Path::new("reshape.onnx"), &model(&target, batch));
        match (loads, result) {
            (true, Ok(graph)) => assert_eq!(graph.output_width(), 4, "{what}"),
            (false, Err(error)) => {
                let message = error.to_string();
                assert!(
                    message.contains("\"view\"") && message.contains("keep the batch"),
                    "{what}: {message}"
                );
            }
            (true, Err(error)) => panic!("{what} was refused: {error}"),
            (false, Ok(_)) => panic!("{what} was accepted"),
        }
    }
}

#[test]
fn onnx_that_onnxruntime_rejects_is_refused_with_one_line_naming_the_node() {
    let relu = |name: &str, inputs: &[&str], output: &str| node("Relu", name, inputs, output);
    let int64_weight = proto::TensorProto {
        name: Some("w".to_string()),
        dims: vec![4, 4],
        data_type: Some(proto::tensor_proto::DataType::Int64 as i32),
        int64_data: vec![1; 16],
        ..Default::default()
    };
    let mut foreign = relu("evil", &["x"], "y");
    foreign.domain = Some("com.evil".to_string());
    let cases: Vec<(Vec<proto::NodeProto>, Vec<proto::TensorProto>, &str)> = vec![
        // Two nodes writing one name: the last used to win.
        (
            vec![
                relu("first", &["x"], "h"),
                relu("second", &["x"], "h"),
                relu("last", &["h"], "y"),
            ],
            vec![],
            "assigns each name once",
        ),
        (
            vec![relu("shadow", &["x"], "w"), relu("last", &["w"], "y")],
            vec![weight("w", vec![4], vec![0.0; 4])],
            "assigns each name once",
        ),
        (
            vec![node("Gemm", "fc", &["x", "w"], "y")],
            vec![int64_weight],
            "int64",
        ),
        (vec![foreign], vec![], "com.evil"),
        (vec![relu("two", &["x", "x"], "y")], vec![], "Relu takes 1"),
        (
            vec![node("Gemm", "four", &["x", "w", "b", "x"], "y")],
            vec![
                weight("w", vec![4, 4], vec![0.0; 16]),
                weight("b", vec![4], vec![0.0; 4]),
            ],
            "Gemm takes 2 to 3",
        ),
    ];
    for (nodes, initializers, expected) in cases {
        let names: Vec<String> = nodes.iter().filter_map(|node| node.name.clone()).collect();
        let error = model_error(&onnx_model(nodes, initializers), "invalid.onnx");
        let message = error.to_string();
        assert!(
            message.contains(expected) && !message.contains('\n'),
            "{names:?}: {message}"
        );
    }
}

#[test]
fn a_gemm_of_a_rank_3_input_is_refused_and_a_flatten_of_it_loads() {
    use proto::tensor_shape_proto::dimension::Value as Dim;
    let rank3 = || {
        vec![
            Dim::DimParam("batch".into()),
            Dim::DimValue(2),
            Dim::DimValue(2),
        ]
    };
    let w = || weight("w", vec![4, 4], vec![0.5; 16]);
    // ONNX multiplies [batch, 2, 2] by w along the last axis; resgraph would multiply rows of 4.
    let direct = onnx_model_with_input(
        vec![
            node("Relu", "act", &["x"], "r"),
            node("MatMul", "fc", &["r", "w"], "y"),
        ],
        vec![weight("w", vec![2, 4], vec![0.5; 8])],
        rank3(),
    );
    let error = model_error(&direct, "rank3.onnx").to_string();
    assert!(
        error.contains("rank3.onnx") && error.contains("\"fc\"") && error.contains("flatten it"),
        "{error}"
    );
    let flattened = onnx_model_with_input(
        vec![
            node("Flatten", "flat", &["x"], "f"),
            proto::NodeProto {
                attribute: vec![proto::AttributeProto {
                    name: Some("transB".to_string()),
                    i: Some(1),
                    ..Default::default()
                }],
                ..node("Gemm", "fc", &["f", "w"], "y")
            },
        ],
        vec![w()],
        rank3(),
    );
    let graph = parse_model(Path::new("rank3.onnx"), &flattened).expect("flatten, then Gemm");
    assert_eq!((graph.input_width(), graph.output_width()), (4, 4));
}

#[test]
fn a_deeply_nested_protobuf_is_refused_in_one_short_line() {
    // 3000 graphs nested through node attributes: the decoder's message used to list every
    // enclosing field, 2 KB on one line.
    let mut graph = proto::GraphProto::default();
    for depth in 0..3000 {
        graph = proto::GraphProto {
            node: vec![proto::NodeProto {
                op_type: Some("If".to_string()),
                name: Some(format!("n{depth}")),
                attribute: vec![proto::AttributeProto {
                    name: Some("then_branch".to_string()),
                    g: Some(graph),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
    }
    let bytes = proto::ModelProto {
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec();
    let message = model_error(&bytes, "deep.onnx").to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(
        message.chars().count() <= 400,
        "{} characters: {message}",
        message.len()
    );
    assert!(message.contains("deep.onnx"), "{message}");
}

#[test]
fn a_constant_node_is_read_from_any_of_its_value_attributes() {
    let constant = |attribute: proto::AttributeProto| proto::NodeProto {
        attribute: vec![attribute],
        ..node("Constant", "c", &[], "c")
    };
    let attribute = |name: &str| proto::AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let model = |attribute: proto::AttributeProto| {
        onnx_model(
            vec![constant(attribute), node("Relu", "relu", &["x"], "y")],
            vec![],
        )
    };
    for value in [
        proto::AttributeProto {
            f: Some(1.5),
            ..attribute("value_float")
        },
        proto::AttributeProto {
            floats: vec![1.0, 2.0],
            ..attribute("value_floats")
        },
        proto::AttributeProto {
            i: Some(3),
            ..attribute("value_int")
        },
        proto::AttributeProto {
            ints: vec![1, -1],
            ..attribute("value_ints")
        },
    ] {
        let what = value.name.clone();
        parse_model(Path::new("constant.onnx"), &model(value))
            .unwrap_or_else(|error| panic!("{what:?}: {error}"));
    }
    let error = model_error(&model(attribute("value_string")), "constant.onnx");
    assert!(error.to_string().contains("value_string"), "{error}");
}

#[test]
fn an_unsupported_onnx_operator_names_the_operator_and_the_node() {
    let bytes = onnx_model(
        vec![node("LSTM", "encoder.lstm", &["x", "w"], "y")],
        vec![weight("w", vec![4, 4], vec![0.0; 16])],
    );
    let error = model_error(&bytes, "lstm.onnx");
    match &error {
        Error::UnsupportedOp { op, node, .. } => {
            assert_eq!(op, "LSTM");
            assert_eq!(node, "encoder.lstm");
        }
        other => panic!("expected UnsupportedOp, got {other}"),
    }
}

#[test]
fn an_unsupported_convolution_attribute_names_the_operator_the_node_and_the_attribute() {
    for (attribute, shown) in [
        (
            proto::AttributeProto {
                name: Some("group".to_string()),
                i: Some(32),
                ..Default::default()
            },
            "group=32",
        ),
        (
            proto::AttributeProto {
                name: Some("dilations".to_string()),
                ints: vec![2, 2],
                ..Default::default()
            },
            "dilations=[2, 2]",
        ),
        (
            proto::AttributeProto {
                name: Some("auto_pad".to_string()),
                s: Some(b"SAME_UPPER".to_vec()),
                ..Default::default()
            },
            "auto_pad=SAME_UPPER",
        ),
    ] {
        let mut conv = node("Conv", "layer1.0.conv1", &["x", "w"], "y");
        conv.attribute.push(attribute);
        let bytes = onnx_model(
            vec![conv],
            vec![weight("w", vec![4, 13, 1, 1], vec![0.0; 52])],
        );
        let message = model_error(&bytes, "conv.onnx").to_string();
        assert!(!message.contains('\n'), "{message}");
        for part in ["Conv", "layer1.0.conv1", shown] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }
}

#[test]
fn onnx_tensors_whose_data_does_not_match_their_dims_are_refused_without_allocating() {
    // Dims claim 10^12 floats; the tensor holds 16. Must fail fast, not allocate 4 TB.
    let bytes = onnx_model(
        vec![node("Gemm", "fc", &["x", "w"], "y")],
        vec![weight("w", vec![1_000_000, 1_000_000], vec![0.0; 16])],
    );
    let error = model_error(&bytes, "dims.onnx");
    assert!(error.to_string().contains("need"), "{error}");
    let mut transposed = node("Gemm", "fc", &["x", "w"], "y");
    transposed.attribute.push(proto::AttributeProto {
        name: Some("transA".into()),
        i: Some(1),
        r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
        ..Default::default()
    });
    let error = model_error(
        &onnx_model(
            vec![transposed],
            vec![weight("w", vec![4, 4], vec![0.0; 16])],
        ),
        "ta.onnx",
    );
    assert!(error.to_string().contains("transA"), "{error}");
    // A Gemm whose weight does not chain with the input width.
    let error = model_error(
        &onnx_model(
            vec![node("Gemm", "fc", &["x", "w"], "y")],
            vec![weight("w", vec![3, 5], vec![0.0; 15])],
        ),
        "chain.onnx",
    );
    assert!(
        matches!(error, Error::GraphShape { ref node, .. } if node == "fc"),
        "{error}"
    );
}

fn cli(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .args(args)
        .output()
        .expect("run resgraph");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.success(), stderr)
}

fn error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("resgraph: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line in {stderr}");
    lines[0]
}

#[test]
fn the_cli_refuses_bad_files_with_one_line_and_keeps_the_old_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/onnx/pytorch_gemm_w17_stem_head.onnx");
    let model = model.display().to_string();
    std::fs::write(
        path("garbage.onnx"),
        b"\x08\x01garbage that is not protobuf\xff\xff",
    )
    .expect("write");
    std::fs::write(path("wide.npy"), encode_npy(&[2, 14], &[0.0; 28])).expect("write");
    std::fs::write(path("rank3.npy"), encode_npy(&[1, 13, 1], &[0.0; 13])).expect("write");
    let f64_npy = replace_bytes(&encode_npy(&[13], &[0.0; 13]), b"<f4", b"<f8");
    std::fs::write(path("f64.npy"), f64_npy).expect("write");
    std::fs::write(path("ok.npy"), encode_npy(&[13], &[0.5; 13])).expect("write");
    std::fs::write(path("empty.npy"), encode_npy(&[0, 13], &[])).expect("write");
    std::fs::write(path("out.npy"), b"keep me").expect("write");

    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "run",
                &model,
                "--input",
                &path("empty.npy"),
                "--output",
                &path("out.npy"),
            ],
            "empty batch",
        ),
        (
            &[
                "run",
                &path("garbage.onnx"),
                "--input",
                &path("ok.npy"),
                "--output",
                &path("out.npy"),
            ],
            "garbage.onnx",
        ),
        (
            &[
                "run",
                &model,
                "--input",
                &path("wide.npy"),
                "--output",
                &path("out.npy"),
            ],
            "input width 13",
        ),
        (
            &[
                "run",
                &model,
                "--input",
                &path("rank3.npy"),
                "--output",
                &path("out.npy"),
            ],
            "rank 3",
        ),
        (
            &[
                "run",
                &model,
                "--input",
                &path("f64.npy"),
                "--output",
                &path("out.npy"),
            ],
            "float32",
        ),
        (
            &[
                "run",
                &model,
                "--input",
                &path("missing.npy"),
                "--output",
                &path("out.npy"),
            ],
            "missing.npy",
        ),
    ];
    for (args, expected) in cases {
        let (ok, stderr) = cli(args);
        assert!(!ok, "{args:?} succeeded");
        let line = error_line(&stderr);
        assert!(line.contains(expected), "{args:?}: {line}");
    }
    assert_eq!(
        std::fs::read(path("out.npy")).expect("read"),
        b"keep me",
        "a failed run touched the output"
    );

    let (ok, stderr) = cli(&[
        "run",
        &model,
        "--input",
        &path("ok.npy"),
        "--output",
        &path("out.npy"),
    ]);
    assert!(ok, "{stderr}");
    let written = parse_npy(&std::fs::read(path("out.npy")).expect("read")).expect("npy");
    assert_eq!(written.shape, vec![5], "a [in] input gives an [out] output");
}

#[test]
fn inspect_and_convert_describe_and_rewrite_a_model() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/matmul_add_w33_hidden65.onnx");
    let output = Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .arg("inspect")
        .arg(&model)
        .output()
        .expect("inspect");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for text in [
        "input width 33",
        "parameters",
        "FLOPs per sample",
        "dispatches per run  4",
    ] {
        assert!(stdout.contains(text), "missing {text:?} in {stdout}");
    }
    let converted = dir.path().join("model.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .arg("convert")
        .arg(&model)
        .arg(&converted)
        .status()
        .expect("convert");
    assert!(status.success());
    let graph = resgraph::model::load_model(&converted).expect("converted model loads");
    let original = resgraph::model::load_model(&model).expect("original");
    assert_eq!(graph.parameter_count(), original.parameter_count());

    // safetensors bytes under an .onnx name are refused, and nothing is written.
    let misnamed = dir.path().join("model.onnx");
    let (ok, stderr) = cli(&[
        "convert",
        &model.display().to_string(),
        &misnamed.display().to_string(),
    ]);
    assert!(!ok);
    assert!(error_line(&stderr).contains("*.safetensors"), "{stderr}");
    assert!(!misnamed.exists());
}

#[cfg(unix)]
#[test]
fn run_writes_its_output_the_way_coreutils_would() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/onnx/pytorch_gemm_w17_stem_head.onnx")
        .display()
        .to_string();
    std::fs::write(path("x.npy"), encode_npy(&[13], &[0.5; 13])).expect("write");
    let run_to = |output: &str| {
        let (ok, stderr) = cli(&["run", &model, "--input", &path("x.npy"), "--output", output]);
        (ok, stderr)
    };
    let mode = |name: &str| {
        std::fs::metadata(path(name))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    };

    // A new file gets the umask's mode (as a file this process creates), not 0600.
    std::fs::write(path("probe"), b"").expect("probe");
    let (ok, stderr) = run_to(&path("new.npy"));
    assert!(ok, "{stderr}");
    assert_eq!(mode("new.npy"), mode("probe"));

    // A replaced file keeps its mode.
    std::fs::write(path("kept.npy"), b"old").expect("write");
    std::fs::set_permissions(path("kept.npy"), std::fs::Permissions::from_mode(0o604))
        .expect("chmod");
    let (ok, stderr) = run_to(&path("kept.npy"));
    assert!(ok, "{stderr}");
    assert_eq!(mode("kept.npy"), 0o604);
    assert!(parse_npy(&std::fs::read(path("kept.npy")).expect("read")).is_ok());

    // A symbolic link is written through; the link stays a link.
    std::fs::write(path("target.npy"), b"old").expect("write");
    std::os::unix::fs::symlink(path("target.npy"), path("link.npy")).expect("symlink");
    let (ok, stderr) = run_to(&path("link.npy"));
    assert!(ok, "{stderr}");
    let link = std::fs::symlink_metadata(path("link.npy")).expect("link");
    assert!(link.file_type().is_symlink());
    assert!(parse_npy(&std::fs::read(path("target.npy")).expect("read")).is_ok());

    // A dangling link is refused, and nothing is created at its target.
    std::os::unix::fs::symlink(path("nowhere.npy"), path("dangling.npy")).expect("symlink");
    let (ok, stderr) = run_to(&path("dangling.npy"));
    assert!(!ok);
    assert!(error_line(&stderr).contains("dangling"), "{stderr}");
    assert!(!Path::new(&path("nowhere.npy")).exists());

    // A character device is written, not replaced by a regular file.
    let (ok, stderr) = run_to("/dev/null");
    assert!(ok, "{stderr}");
    let null = std::fs::metadata("/dev/null").expect("/dev/null");
    assert!(null.file_type().is_char_device());

    // A directory is refused with one line.
    let (ok, stderr) = run_to(&path(""));
    assert!(!ok);
    assert!(error_line(&stderr).contains("directory"), "{stderr}");

    // No temporary file is left behind by any of these.
    let leftovers: Vec<String> = common::file_names(dir.path())
        .into_iter()
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[cfg(unix)]
#[test]
fn a_model_or_input_that_is_a_device_is_refused_without_reading_it_to_the_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/onnx/pytorch_gemm_w17_stem_head.onnx")
        .display()
        .to_string();
    let out = dir.path().join("out.npy").display().to_string();
    std::fs::write(dir.path().join("x.npy"), encode_npy(&[13], &[0.5; 13])).expect("write");
    let input = dir.path().join("x.npy").display().to_string();
    // /dev/zero never ends: reading it whole would grow without bound (the probe saw 330 MB/s).
    for (args, expected) in [
        (
            vec!["run", "/dev/zero", "--input", &input, "--output", &out],
            "regular file",
        ),
        (
            vec!["run", &model, "--input", "/dev/zero", "--output", &out],
            "magic",
        ),
        (vec!["inspect", "/dev/zero"], "regular file"),
    ] {
        let started = std::time::Instant::now();
        let (ok, stderr) = cli(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(error_line(&stderr).contains(expected), "{args:?}: {stderr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
    assert!(!Path::new(&out).exists());
}
