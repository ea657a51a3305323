//! Any bytes given to the safetensors importer give a graph or an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resgraph::model::parse_model(std::path::Path::new("fuzz.safetensors"), data);
});
