//! A torchvision ResNet saved as a `state_dict` in safetensors with the short architecture form
//! (`{"arch": "resnet18", "num_classes": 10, "image": 32}`): every tensor read under torchvision's
//! name, every batch norm folded into its convolution, and the model runs and matches the f64
//! reference.

mod common;

use std::collections::HashMap;
use std::path::Path;

use resgraph::graph::Op;
use resgraph::reference::forward_f64;
use resgraph::{CompileOptions, CompiledModel, Error, Precision, parse_model};

/// torchvision's resnet18 `state_dict` entries for `classes` classes: `(name, shape)`.
fn resnet18_entries(classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut entries = Vec::new();
    let mut conv = |name: &str, bn: &str, shape: [usize; 4]| {
        entries.push((format!("{name}.weight"), shape.to_vec()));
        for part in ["weight", "bias", "running_mean", "running_var"] {
            entries.push((format!("{bn}.{part}"), vec![shape[0]]));
        }
    };
    conv("conv1", "bn1", [64, 3, 7, 7]);
    let mut channels = 64;
    for stage in 0..4 {
        let width = 64 << stage;
        for block in 0..2 {
            let name = format!("layer{}.{block}", stage + 1);
            conv(
                &format!("{name}.conv1"),
                &format!("{name}.bn1"),
                [width, channels, 3, 3],
            );
            conv(
                &format!("{name}.conv2"),
                &format!("{name}.bn2"),
                [width, width, 3, 3],
            );
            if stage > 0 && block == 0 {
                conv(
                    &format!("{name}.downsample.0"),
                    &format!("{name}.downsample.1"),
                    [width, channels, 1, 1],
                );
            }
            channels = width;
        }
    }
    entries.push(("fc.weight".to_string(), vec![classes, 512]));
    entries.push(("fc.bias".to_string(), vec![classes]));
    entries
}

/// Values for one entry: He-scaled weights, and batch-norm statistics that are not the identity
/// (so that a fold that ignored them would give a different answer).
fn values(name: &str, shape: &[usize], rng: &mut rand::rngs::StdRng) -> Vec<f32> {
    let len: usize = shape.iter().product();
    if name.ends_with("running_var") {
        common::uniform(rng, len, 0.5, 2.0)
    } else if name.ends_with("running_mean") || name.ends_with(".bias") {
        common::uniform(rng, len, -0.2, 0.2)
    } else if shape.len() == 1 {
        // A batch norm's weight (gamma).
        common::uniform(rng, len, 0.5, 1.5)
    } else {
        let fan_in: usize = shape[1..].iter().product();
        let bound = (3.0 / fan_in as f32).sqrt();
        common::uniform(rng, len, -bound, bound)
    }
}

/// The safetensors bytes of a random resnet18 `state_dict` with `metadata` as the architecture;
/// `skip` leaves one tensor out.
fn state_dict_file(metadata: &str, skip: Option<&str>) -> (Vec<u8>, HashMap<String, Vec<f32>>) {
    let mut rng = common::rng(5);
    let entries = resnet18_entries(10);
    let mut tensors = HashMap::new();
    let mut data = Vec::new();
    for (name, shape) in &entries {
        let values = values(name, shape, &mut rng);
        tensors.insert(name.clone(), values.clone());
        if skip == Some(name.as_str()) {
            continue;
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), shape.clone(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("view");
            (name.clone(), view)
        })
        .collect();
    let metadata = HashMap::from([("resgraph.graph".to_string(), metadata.to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).expect("serialize");
    (bytes, tensors)
}

const ARCH: &str = r#"{"arch": "resnet18", "num_classes": 10, "image": 32}"#;

#[test]
fn a_torchvision_state_dict_loads_with_every_batch_norm_folded_and_runs() {
    let (bytes, tensors) = state_dict_file(ARCH, None);
    let graph = parse_model(Path::new("resnet18.safetensors"), &bytes).expect("import");
    // torchvision's resnet18 with 10 classes has 11,181,642 parameters; folding removes one per
    // batch-norm channel (4,800).
    assert_eq!(graph.parameter_count(), 11_181_642 - 4_800);
    // The stem's folded weight and bias, checked by hand for output channel 5.
    let stem = graph
        .nodes()
        .iter()
        .find_map(|node| match &node.op {
            Op::Conv2d { params, .. } if node.name == "conv1" => Some(params.clone()),
            _ => None,
        })
        .expect("the stem");
    let channel = 5;
    let gamma = f64::from(tensors["bn1.weight"][channel]);
    let beta = f64::from(tensors["bn1.bias"][channel]);
    let mean = f64::from(tensors["bn1.running_mean"][channel]);
    let variance = f64::from(tensors["bn1.running_var"][channel]);
    let scale = gamma / (variance + 1e-5).sqrt();
    let first_weight = channel * 3 * 7 * 7;
    let expected_weight = f64::from(tensors["conv1.weight"][first_weight]) * scale;
    assert!((f64::from(stem.weight()[first_weight]) - expected_weight).abs() < 1e-6);
    let expected_bias = beta - mean * scale;
    let bias = stem.bias().expect("a folded bias")[channel];
    assert!((f64::from(bias) - expected_bias).abs() < 1e-6);

    let model = CompiledModel::compile(
        common::shared_primary_context(),
        &graph,
        &CompileOptions::new(2),
    )
    .expect("compile");
    let input = common::uniform(&mut common::rng(6), 2 * graph.input_width(), -1.0, 1.0);
    let output = model.run(&input).expect("run");
    let error = common::assert_close(
        &output,
        &forward_f64(&graph, &input, 2),
        Precision::F32.tolerance(),
        "resnet18 from a state_dict",
    );
    eprintln!("resnet18 state_dict: relative error {error:.2e}");
}

#[test]
fn a_missing_or_misshapen_tensor_and_an_unknown_arch_are_one_line_errors() {
    let (bytes, _) = state_dict_file(ARCH, Some("layer3.0.downsample.1.running_var"));
    let error = parse_model(Path::new("r.safetensors"), &bytes).expect_err("a missing tensor");
    assert!(matches!(error, Error::Model { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("layer3.0.downsample.1.running_var"),
        "{error}"
    );
    let (bytes, _) = state_dict_file(r#"{"arch": "resnet50", "num_classes": 10}"#, None);
    let error =
        parse_model(Path::new("r.safetensors"), &bytes).expect_err("a resnet18 as resnet50");
    assert!(!error.to_string().contains('\n'), "{error}");
    let (bytes, _) = state_dict_file(r#"{"arch": "resnet9000"}"#, None);
    let error = parse_model(Path::new("r.safetensors"), &bytes).expect_err("unknown arch");
    assert!(error.to_string().contains("resnet50"), "{error}");
    let (bytes, _) = state_dict_file(r#"{"arch": "resnet18", "num_classes": 0}"#, None);
    let error = parse_model(Path::new("r.safetensors"), &bytes).expect_err("zero classes");
    assert!(error.to_string().contains("num_classes"), "{error}");
}
