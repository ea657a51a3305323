//! Convolutional ResNets (torchvision's resnet18 and resnet50 layouts, in the forms
//! `torch.onnx.export` writes with `dynamo=True` and `dynamo=False`) written by
//! `scripts/onnx_resnet_reference.py`, run through resgraph and compared with onnxruntime's
//! outputs.
//!
//! The cases are read from `RESGRAPH_ONNX_RESNET_CASES` when set (CI regenerates larger ones
//! there: 224×224 and 97×61 images, base width 16, from a fresh seed), else from the tiny set
//! committed in `tests/data/onnx_resnet`. A missing or thin manifest fails: a test that finds no
//! case checks nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::gpu::context::GpuContext;
use resgraph::graph::layout::nchw_to_nhwc;
use resgraph::graph::{Graph, ValueShape};
use resgraph::model::load_model;
use resgraph::model::npy::{NpyArray, read_npy};

/// The largest relative error accepted against onnxruntime: both compute in f32, but sum the
/// convolutions' products in different orders over hundreds of terms per output, through up to
/// 53 layers.
const TOLERANCE: f64 = 1e-4;

fn cases_dir() -> PathBuf {
    match std::env::var_os("RESGRAPH_ONNX_RESNET_CASES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx_resnet"),
    }
}

/// One model run at one batch size, as the manifest lists it.
struct Case {
    model: PathBuf,
    input: PathBuf,
    expected: PathBuf,
    batch: usize,
    architecture: String,
    form: String,
    fp16: bool,
}

impl Case {
    /// The case as the report prints it: the input file's name, which names model and batch.
    fn label(&self) -> String {
        self.input
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The manifest's cases; panics when the manifest is missing or does not cover both
/// architectures, both export forms, a batch above 1 and float16 weights.
fn cases() -> Vec<Case> {
    let dir = cases_dir();
    let manifest_path = dir.join("manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path)
        .unwrap_or_else(|error| panic!("{}: {error}", manifest_path.display()));
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("manifest JSON");
    let text = |case: &serde_json::Value, key: &str| -> String {
        case[key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: a case lacks {key:?}", manifest_path.display()))
            .to_string()
    };
    let cases: Vec<Case> = manifest["cases"]
        .as_array()
        .expect("a case list")
        .iter()
        .map(|case| Case {
            model: dir.join(text(case, "model")),
            input: dir.join(text(case, "input")),
            expected: dir.join(text(case, "expected")),
            batch: case["batch"].as_u64().expect("batch") as usize,
            architecture: text(case, "architecture"),
            form: text(case, "form"),
            fp16: case["fp16"].as_bool().unwrap_or(false),
        })
        .collect();
    for (what, covered) in [
        (
            "a resnet18",
            cases.iter().any(|case| case.architecture == "resnet18"),
        ),
        (
            "a resnet50",
            cases.iter().any(|case| case.architecture == "resnet50"),
        ),
        (
            "a dynamo-form",
            cases.iter().any(|case| case.form == "dynamo"),
        ),
        (
            "a torchscript-form",
            cases.iter().any(|case| case.form == "torchscript"),
        ),
        ("a batch-3", cases.iter().any(|case| case.batch > 1)),
        ("a float16-weights", cases.iter().any(|case| case.fp16)),
    ] {
        assert!(covered, "{} has no {what} case", manifest_path.display());
    }
    cases
}

/// The case's input as the compiled model takes it, after checking that the file holds
/// `[batch, channels, height, width]` images of the model's input shape.
fn nhwc_input(graph: &Graph, case: &Case) -> Vec<f32> {
    let ValueShape::Image {
        height,
        width,
        channels,
    } = graph.input_shape()
    else {
        panic!(
            "{}: the model's input is {}, not an image",
            case.model.display(),
            graph.input_shape().describe()
        );
    };
    let array: NpyArray = read_npy(&case.input).expect("input npy");
    assert_eq!(
        array.shape,
        [case.batch, channels, height, width],
        "{}: the input is not NCHW images of the model's shape",
        case.label()
    );
    nchw_to_nhwc(&array.data, case.batch, (channels, height, width))
}

/// The relative error of resgraph's output for the case against onnxruntime's, after checking
/// that both are `[batch, classes]`.
fn error_against_onnxruntime(output: &[f32], graph: &Graph, case: &Case) -> f64 {
    let expected = read_npy(&case.expected).expect("expected npy");
    assert_eq!(
        expected.shape,
        [case.batch, graph.output_width()],
        "{}: onnxruntime's output is not [batch, classes]",
        case.label()
    );
    resgraph::reference::relative_error(output, &resgraph::reference::to_f64(&expected.data))
}

/// Runs the case's model on `context`, compiled for the case's batch.
fn run_case(context: &GpuContext, graph: &Graph, case: &Case) -> Vec<f32> {
    let input = nhwc_input(graph, case);
    let model = CompiledModel::compile(
        common::shared(context),
        graph,
        &CompileOptions::new(case.batch),
    )
    .unwrap_or_else(|error| panic!("{}: compile: {error}", case.label()));
    model
        .run(&input)
        .unwrap_or_else(|error| panic!("{}: run: {error}", case.label()))
}

/// The graphs of every model the cases name, each imported once (the cases of one model differ
/// only in the batch).
fn load_graphs(cases: &[Case]) -> BTreeMap<PathBuf, Graph> {
    let mut graphs = BTreeMap::new();
    for case in cases {
        if !graphs.contains_key(&case.model) {
            let graph = load_model(&case.model)
                .unwrap_or_else(|error| panic!("{}: {error}", case.model.display()));
            graphs.insert(case.model.clone(), graph);
        }
    }
    graphs
}

#[test]
fn every_case_matches_onnxruntime_on_every_backend() {
    let cases = cases();
    let graphs = load_graphs(&cases);
    for (backend, context) in common::contexts() {
        for case in &cases {
            let graph = &graphs[&case.model];
            let started = Instant::now();
            let output = run_case(context, graph, case);
            let error = error_against_onnxruntime(&output, graph, case);
            println!(
                "{backend}: {}: relative error {error:.2e} ({:.1} s)",
                case.label(),
                started.elapsed().as_secs_f64()
            );
            assert!(
                error <= TOLERANCE,
                "{backend}: {}: relative error {error:.3e} exceeds {TOLERANCE:.0e}",
                case.label()
            );
        }
    }
}

#[test]
fn batch_norm_is_folded_so_both_export_forms_import_to_the_same_graph_shape() {
    // The torchscript form's separate BatchNormalization nodes and Identity weights must vanish
    // into the convolutions, leaving the node list of the dynamo form (whose exporter folded
    // them), for every model of the same architecture whatever its image size.
    let cases = cases();
    let graphs = load_graphs(&cases);
    let mut node_counts: BTreeMap<&str, BTreeMap<&str, BTreeSet<usize>>> = BTreeMap::new();
    for case in &cases {
        node_counts
            .entry(&case.architecture)
            .or_default()
            .entry(&case.form)
            .or_default()
            .insert(graphs[&case.model].nodes().len());
    }
    let mut compared = 0;
    for (architecture, by_form) in &node_counts {
        let all: BTreeSet<usize> = by_form.values().flatten().copied().collect();
        assert_eq!(
            all.len(),
            1,
            "{architecture}: the models import to different node counts by form: {by_form:?}"
        );
        compared += usize::from(by_form.len() == 2);
    }
    assert!(
        compared > 0,
        "no architecture has cases in both export forms in {}",
        cases_dir().display()
    );
}

#[test]
fn resgraph_run_takes_nchw_images_and_matches_onnxruntime() {
    // One case of each form through the binary: a dynamo-form model (weights in a side file)
    // and a torchscript-form one, each at its largest batch.
    let cases = cases();
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("y.npy");
    for form in ["dynamo", "torchscript"] {
        let case = cases
            .iter()
            .filter(|case| case.form == form && !case.fp16)
            .max_by_key(|case| case.batch)
            .unwrap_or_else(|| panic!("no {form}-form case"));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_resgraph"));
        command
            .arg("run")
            .arg(&case.model)
            .arg("--input")
            .arg(&case.input)
            .arg("--output")
            .arg(&output);
        // The binary runs on the test backend the other tests use first, so that its answer is
        // checked on an adapter this run is known to have.
        let backend = common::primary_backend();
        if backend != "default" {
            command.env("WGPU_BACKEND", backend);
        }
        let status = command.output().expect("run resgraph");
        let stderr = String::from_utf8_lossy(&status.stderr);
        assert!(status.status.success(), "{}: {stderr}", case.label());
        let written = read_npy(&output).expect("output npy");
        let graph = load_model(&case.model).expect("model");
        assert_eq!(
            written.shape,
            [case.batch, graph.output_width()],
            "{}: resgraph run writes [batch, classes]",
            case.label()
        );
        let error = error_against_onnxruntime(&written.data, &graph, case);
        println!("resgraph run {}: relative error {error:.2e}", case.label());
        assert!(error <= TOLERANCE, "{}: {error:.3e}", case.label());
    }
}
