//! Replays the fuzz targets' seed corpora and every crasher the fuzzers found (each fixed, then
//! kept in `tests/data/fuzz/<target>/`): the loaders must return a value or an error, never panic.

use std::path::{Path, PathBuf};

use resgraph::model::npy::parse_npy;
use resgraph::model::parse_model;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        root.join("fuzz/corpus").join(target),
        root.join("tests/data/fuzz").join(target),
    ] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(
                entries
                    .filter_map(|entry| entry.ok())
                    .map(|entry| entry.path())
                    .filter(|path| path.is_file()),
            );
        }
    }
    files.sort();
    files
}

/// Replays every model input of `target` through the model loader (as a `.{target}` file);
/// the seed models among them must still load.
fn replay_models(target: &str) {
    let files = inputs(target);
    assert!(!files.is_empty(), "the {target} seed corpus is missing");
    let name = format!("replay.{target}");
    let parsed = files
        .iter()
        .filter(|file| parse_model(Path::new(&name), &std::fs::read(file).expect("read")).is_ok())
        .count();
    assert!(
        parsed >= 3,
        "the {target} seed models must still load ({parsed} did)"
    );
}

#[test]
fn onnx_inputs_never_panic() {
    replay_models("onnx");
}

#[test]
fn safetensors_inputs_never_panic() {
    replay_models("safetensors");
}

#[test]
fn npy_inputs_never_panic() {
    let files = inputs("npy");
    assert!(!files.is_empty(), "the npy seed corpus is missing");
    for file in files {
        let _ = parse_npy(&std::fs::read(&file).expect("read"));
    }
}
