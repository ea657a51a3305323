//! Helpers shared by the integration tests: the adapters they run on, random data, comparison.
//!
//! A test that needs a GPU gets it from [`contexts`] or [`primary_context`], which panic with a
//! message saying how to install a software adapter when none is found. A GPU test never skips:
//! a skipped test proves nothing.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use resgraph::gpu::context::{AdapterOptions, GpuContext, parse_backends};

/// The backends the GPU tests must run on: `RESGRAPH_TEST_BACKENDS` (comma-separated), by
/// default Vulkan and GL on Linux (lavapipe and llvmpipe in CI) and the default adapter elsewhere.
pub fn test_backends() -> Vec<String> {
    let list = std::env::var("RESGRAPH_TEST_BACKENDS").unwrap_or_else(|_| {
        if cfg!(target_os = "linux") {
            "vulkan,gl".to_string()
        } else {
            "default".to_string()
        }
    });
    list.split(',')
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// One shared context per backend name, created on first use and kept for the whole test binary
/// (creating a device per test would dominate the suite's time on a software adapter).
pub fn context_for(backend: &str) -> &'static GpuContext {
    static CONTEXTS: OnceLock<Mutex<HashMap<String, &'static GpuContext>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(context) = contexts.get(backend) {
        return context;
    }
    let mut options = AdapterOptions::from_env().expect("adapter options from the environment");
    if backend != "default" {
        options.backends = parse_backends(backend).expect("a known backend name");
    }
    let context = match GpuContext::new(&options) {
        Ok(context) => context,
        Err(error) => panic!(
            "GPU tests need a real adapter on backend {backend:?} and none could be opened: \
             {error}. On Debian/Ubuntu `apt-get install mesa-vulkan-drivers` gives a software \
             Vulkan adapter (lavapipe) and Mesa's GL gives llvmpipe; set RESGRAPH_TEST_BACKENDS \
             to the backends this machine has."
        ),
    };
    let context: &'static GpuContext = Box::leak(Box::new(context));
    contexts.insert(backend.to_string(), context);
    context
}

/// Every test backend's context, each with its name.
pub fn contexts() -> Vec<(String, &'static GpuContext)> {
    test_backends()
        .into_iter()
        .map(|backend| {
            let context = context_for(&backend);
            (backend, context)
        })
        .collect()
}

/// The first test backend's context.
pub fn primary_context() -> &'static GpuContext {
    let backends = test_backends();
    context_for(backends.first().map_or("default", String::as_str))
}

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
