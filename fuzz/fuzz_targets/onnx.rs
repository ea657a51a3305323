//! Any bytes given to the ONNX importer give a graph or an error, never a panic or a hang. The
//! importer gets no folder for external data, so a fuzz input never reads a file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resgraph::model::onnx::import_onnx(data, "fuzz.onnx", None);
});
