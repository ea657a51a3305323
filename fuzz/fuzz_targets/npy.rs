//! Any bytes given to the .npy reader give an array or an error, never a panic; an array it
//! returns round-trips through the writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resgraph::model::npy::{encode_npy, parse_npy};

fuzz_target!(|data: &[u8]| {
    if let Ok(array) = parse_npy(data) {
        let again = parse_npy(&encode_npy(&array.shape, &array.data)).expect("round trip");
        assert_eq!(again.shape, array.shape);
        assert_eq!(again.data.len(), array.data.len());
    }
});
