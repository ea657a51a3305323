//! ONNX models written by `scripts/onnx_reference.py` (onnx.helper, the way PyTorch's exporter
//! and hand-built graphs look) run through resgraph and compared with onnxruntime's outputs.
//!
//! The cases are read from `RESGRAPH_ONNX_CASES` when set (CI regenerates a larger set there, with
//! widths up to 513, in a fresh virtual environment), else from the small set committed in
//! `tests/data/onnx`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::gpu::context::GpuContext;
use resgraph::model::npy::read_npy;
use resgraph::model::{load_model, parse_model};

fn cases_dir() -> PathBuf {
    match std::env::var_os("RESGRAPH_ONNX_CASES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx"),
    }
}

struct Case {
    model: PathBuf,
    input: PathBuf,
    expected: PathBuf,
    fp16: bool,
}

fn cases() -> Vec<Case> {
    let dir = cases_dir();
    let manifest = std::fs::read_to_string(dir.join("manifest.json"))
        .unwrap_or_else(|error| panic!("{}: {error}", dir.join("manifest.json").display()));
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("manifest JSON");
    let cases: Vec<Case> = manifest["cases"]
        .as_array()
        .expect("a case list")
        .iter()
        .map(|case| Case {
            model: dir.join(case["model"].as_str().expect("model")),
            input: dir.join(case["input"].as_str().expect("input")),
            expected: dir.join(case["expected"].as_str().expect("expected")),
            fp16: case["fp16"].as_bool().unwrap_or(false),
        })
        .collect();
    assert!(cases.len() >= 5, "too few ONNX cases in {}", dir.display());
    cases
}

fn run(context: &Arc<GpuContext>, graph: &resgraph::graph::Graph, input: &Path) -> Vec<f32> {
    let array = read_npy(input).expect("input npy");
    let batch = array.shape[0];
    let model = CompiledModel::compile(Arc::clone(context), graph, &CompileOptions::new(batch))
        .expect("compile");
    model.run(&array.data).expect("run")
}

fn relative_error(out: &[f32], expected: &[f32]) -> f64 {
    resgraph::reference::relative_error(out, &resgraph::reference::to_f64(expected))
}

#[test]
fn every_case_matches_onnxruntime() {
    let context = common::shared_primary_context();
    let mut fp16_cases = 0;
    for case in cases() {
        let graph = load_model(&case.model).unwrap_or_else(|error| panic!("{error}"));
        let output = run(&context, &graph, &case.input);
        let expected = read_npy(&case.expected).expect("expected npy");
        let error = relative_error(&output, &expected.data);
        println!("{}: relative error {error:.2e}", case.input.display());
        assert!(
            error <= 1e-5,
            "{}: relative error {error:.3e}",
            case.input.display()
        );
        fp16_cases += usize::from(case.fp16);
    }
    assert!(fp16_cases > 0, "no case has float16 initializers");
}

#[test]
fn converting_to_safetensors_keeps_every_answer() {
    let context = common::shared_primary_context();
    for case in cases().into_iter().step_by(2) {
        let graph = load_model(&case.model).expect("onnx");
        let bytes = resgraph::model::safetensors::export_safetensors(&graph).expect("export");
        let reloaded = parse_model(Path::new("converted.safetensors"), &bytes).expect("import");
        assert_eq!(reloaded.parameter_count(), graph.parameter_count());
        assert_eq!(reloaded.flops_per_row(), graph.flops_per_row());
        let from_onnx = run(&context, &graph, &case.input);
        let from_safetensors = run(&context, &reloaded, &case.input);
        assert_eq!(from_onnx, from_safetensors, "{}", case.model.display());
    }
}

#[test]
fn resgraph_run_matches_onnxruntime_on_every_case_and_writes_atomically() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("y.npy");
    std::fs::write(&output, b"previous contents").expect("seed output");
    for case in cases() {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_resgraph"))
            .args(["run"])
            .arg(&case.model)
            .arg("--input")
            .arg(&case.input)
            .arg("--output")
            .arg(&output)
            .output()
            .expect("run resgraph");
        let stderr = String::from_utf8_lossy(&status.stderr);
        assert!(status.status.success(), "{stderr}");
        let written = read_npy(&output).expect("output npy");
        let expected = read_npy(&case.expected).expect("expected npy");
        assert_eq!(written.shape, expected.shape, "{}", case.input.display());
        let error = relative_error(&written.data, &expected.data);
        assert!(error <= 1e-5, "{}: {error:.3e}", case.input.display());
        // Nothing but the output is left in the folder (no temporary files).
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }
}

#[test]
fn bench_runs_a_model_file() {
    let case = cases().into_iter().next().expect("a case");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .args([
            "bench", "--batch", "3", "--iters", "3", "--check", "--json", "--model",
        ])
        .arg(&case.model)
        .output()
        .expect("run resgraph");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout} {stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(
        report["model"]
            .as_str()
            .is_some_and(|model| model.ends_with(".onnx"))
    );
    let error = report["max_rel_err"].as_f64().expect("max_rel_err");
    assert!(error <= 1e-5, "{report}");
}
