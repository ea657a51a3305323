//! Helpers shared by the integration tests: the adapters they run on, random data, comparison.
//!
//! A test that needs a GPU gets it from [`contexts`], [`primary_context`] or one of their
//! relatives here, which panic with a message saying what is missing when no test adapter has it.
//! A GPU test never skips: a skipped test proves nothing. A test of what happens on a device
//! that lacks a feature gets such a device on every adapter from [`context_without`], rather
//! than looking for an adapter that happens to lack it.

#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

// The contexts need the blocking API, which the web does not have; the layer check and the data
// helpers below serve `tests/web.rs` too. Each test binary uses a part of them, as `dead_code`
// above allows.
mod layer;
#[allow(unused_imports)]
pub use layer::*;

#[cfg(not(target_arch = "wasm32"))]
mod contexts;
#[cfg(not(target_arch = "wasm32"))]
#[allow(unused_imports)]
pub use contexts::*;

/// A seeded random generator, so every failure can be replayed.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `len` values drawn uniformly from `[low, high)`.
pub fn uniform(rng: &mut StdRng, len: usize, low: f32, high: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(low..high)).collect()
}

/// Fails the test, naming `what`, unless `out` is within `tolerance` relative error of
/// `reference` and holds no NaN or infinity. Returns the error for reporting.
pub fn assert_close(out: &[f32], reference: &[f64], tolerance: f64, what: &str) -> f64 {
    assert_eq!(out.len(), reference.len(), "{what}: output length");
    if let Some(index) = out.iter().position(|value| !value.is_finite()) {
        panic!("{what}: output[{index}] = {} is not finite", out[index]);
    }
    let error = resgraph::reference::relative_error(out, reference);
    assert!(
        error <= tolerance,
        "{what}: relative error {error:.3e} exceeds {tolerance:.0e}"
    );
    error
}

/// The names of the entries of `dir`, for tests of what a command left behind.
pub fn file_names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list the folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .to_string()
        })
        .collect()
}
