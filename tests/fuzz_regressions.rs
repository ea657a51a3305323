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

#[test]
fn onnx_inputs_never_panic() {
    let files = inputs("onnx");
    assert!(!files.is_empty(), "the onnx seed corpus is missing");
    let parsed = files
        .iter()
        .filter(|file| {
            parse_model(
                Path::new("replay.onnx"),
                &std::fs::read(file).expect("read"),
            )
            .is_ok()
        })
        .count();
    assert!(
        parsed >= 3,
        "the seed models must still load ({parsed} did)"
    );
}

#[test]
fn safetensors_inputs_never_panic() {
    let files = inputs("safetensors");
    assert!(!files.is_empty(), "the safetensors seed corpus is missing");
    let parsed = files
        .iter()
        .filter(|file| {
            parse_model(
                Path::new("replay.safetensors"),
                &std::fs::read(file).expect("read"),
            )
            .is_ok()
        })
        .count();
    assert!(
        parsed >= 3,
        "the seed models must still load ({parsed} did)"
    );
}

#[test]
fn npy_inputs_never_panic() {
    let files = inputs("npy");
    assert!(!files.is_empty(), "the npy seed corpus is missing");
    for file in files {
        let _ = parse_npy(&std::fs::read(&file).expect("read"));
    }
}
