//! The test contexts: one per backend of `RESGRAPH_TEST_BACKENDS`, opened with the blocking API
//! (native only; `tests/web.rs` opens the browser's adapter itself).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use resgraph::gpu::context::{AdapterOptions, GpuContext, parse_backends};

/// Returns the backends the GPU tests must run on: `RESGRAPH_TEST_BACKENDS` (comma-separated), by
/// default Vulkan and GL on Linux (lavapipe and llvmpipe in CI) and the default adapter elsewhere.
/// An empty list is refused, since every test that loops over the backends would then check
/// nothing.
pub fn test_backends() -> Vec<String> {
    let list = std::env::var("RESGRAPH_TEST_BACKENDS").unwrap_or_else(|_| {
        if cfg!(target_os = "linux") {
            "vulkan,gl".to_string()
        } else {
            "default".to_string()
        }
    });
    let backends: Vec<String> = list
        .split(',')
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect();
    assert!(
        !backends.is_empty(),
        "RESGRAPH_TEST_BACKENDS={list:?} names no backend; name at least one (e.g. vulkan,gl), \
         or unset it for the default"
    );
    backends
}

/// Returns the first test backend's name: the tests that need only one device run there.
pub fn primary_backend() -> String {
    test_backends().remove(0)
}

/// The contexts opened so far, by backend name and the features withheld from the device.
type ContextCache = HashMap<(String, wgpu::Features), &'static Arc<GpuContext>>;

/// The context on `backend` whose device was created without the `withheld` features, created
/// on first use and kept for the whole test binary (creating a device per test would dominate
/// the suite's time on a software adapter). When the backend's ordinary context already lacks
/// every withheld feature, that context is the answer, so no second device is opened for it.
fn cached_context(backend: &str, withheld: wgpu::Features) -> &'static Arc<GpuContext> {
    static CONTEXTS: OnceLock<Mutex<ContextCache>> = OnceLock::new();
    if !withheld.is_empty() {
        let ordinary = cached_context(backend, wgpu::Features::empty());
        if !ordinary.features().intersects(withheld) {
            return ordinary;
        }
    }
    // The lock is held while the device is created, so that two tests asking at once do not
    // both open one.
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = (backend.to_string(), withheld);
    if let Some(context) = contexts.get(&key) {
        return context;
    }
    let context = new_context(backend, withheld);
    assert!(
        !context.features().intersects(withheld),
        "the context on {backend:?} was created with withheld features {:?}",
        context.features() & withheld
    );
    let context: &'static Arc<GpuContext> = Box::leak(Box::new(Arc::new(context)));
    contexts.insert(key, context);
    context
}

/// Opens a device of its own on `backend`, created without the `withheld` features, for a test
/// that must see a context end; every other test shares the cached ones. Panics, saying how to
/// get one, when the backend has no adapter.
pub fn new_context(backend: &str, withheld: wgpu::Features) -> GpuContext {
    let mut options = AdapterOptions::from_env().expect("adapter options from the environment");
    if backend != "default" {
        options.backends = parse_backends(backend).expect("a known backend name");
    }
    options.withheld_features = withheld;
    match GpuContext::new(&options) {
        Ok(context) => context,
        Err(error) => panic!(
            "GPU tests need a real adapter on backend {backend:?} and none could be opened: \
             {error}. On Debian/Ubuntu `apt-get install mesa-vulkan-drivers` gives a software \
             Vulkan adapter (lavapipe) and Mesa's GL gives llvmpipe; set RESGRAPH_TEST_BACKENDS \
             to the backends this machine has."
        ),
    }
}

/// Returns the context on `backend`, one per backend name, created on first use and kept for
/// the whole test binary.
pub fn context_for(backend: &str) -> &'static GpuContext {
    cached_context(backend, wgpu::Features::empty())
}

/// Returns every test backend's context, each with its backend's name.
pub fn contexts() -> Vec<(String, &'static GpuContext)> {
    test_backends()
        .into_iter()
        .map(|backend| {
            let context = context_for(&backend);
            (backend, context)
        })
        .collect()
}

/// Returns the first test backend's context, for a test that needs only one device.
pub fn primary_context() -> &'static GpuContext {
    context_for(&primary_backend())
}

/// Returns the first test backend's context as an `Arc`, the shared ownership that
/// `CompiledModel::compile` takes; it is the same device as [`primary_context`], so no test
/// opens a device of its own.
pub fn shared_primary_context() -> Arc<GpuContext> {
    Arc::clone(cached_context(&primary_backend(), wgpu::Features::empty()))
}

/// Returns the `Arc` that owns `context`, for handing a test context to
/// `CompiledModel::compile` without opening another device. `context` must be a test backend's
/// ordinary context (from [`context_for`], [`contexts`], [`primary_context`] or
/// [`contexts_where`]); anything else panics.
pub fn shared(context: &GpuContext) -> Arc<GpuContext> {
    test_backends()
        .into_iter()
        .map(|backend| cached_context(&backend, wgpu::Features::empty()))
        .find(|candidate| std::ptr::eq(Arc::as_ptr(candidate), context))
        .map(Arc::clone)
        .unwrap_or_else(|| {
            panic!(
                "shared() was given a context on {:?} that is not a test backend's context",
                context.adapter_info().name
            )
        })
}

/// Returns a context on `backend` whose device was created without the `features` (removed
/// from what resgraph requests even where the adapter has them), so that a test of how resgraph
/// copes without a feature runs on every adapter, not only on one that happens to lack it. The
/// context is cached per backend and feature set.
pub fn context_without(backend: &str, features: wgpu::Features) -> Arc<GpuContext> {
    Arc::clone(cached_context(backend, features))
}

/// Returns, for every test backend, its name and a context created without the `features` (see
/// [`context_without`]).
pub fn contexts_without(features: wgpu::Features) -> Vec<(String, Arc<GpuContext>)> {
    test_backends()
        .into_iter()
        .map(|backend| {
            let context = context_without(&backend, features);
            (backend, context)
        })
        .collect()
}

/// Returns the test contexts for which `premise` holds, each with its backend's name. Panics,
/// saying the test needs `needs` and naming every test adapter, when none has it: a test whose
/// premise is absent must fail, not pass without checking anything.
pub fn contexts_where(
    needs: &str,
    premise: impl Fn(&GpuContext) -> bool,
) -> Vec<(String, &'static GpuContext)> {
    let all = contexts();
    let adapters: Vec<String> = all
        .iter()
        .map(|(backend, context)| format!("{} ({backend})", context.adapter_info().name))
        .collect();
    let matching: Vec<(String, &'static GpuContext)> = all
        .into_iter()
        .filter(|(_, context)| premise(context))
        .collect();
    assert!(
        !matching.is_empty(),
        "this test needs a test adapter with {needs}, and none of {} has it; \
         set RESGRAPH_TEST_BACKENDS to include one (lavapipe, Vulkan, has subgroups of 8 and \
         shader-f16)",
        adapters.join(", ")
    );
    matching
}

/// Returns the first test context for which `premise` holds, and panics as [`contexts_where`]
/// does when none has what the test `needs`.
pub fn context_where(needs: &str, premise: impl Fn(&GpuContext) -> bool) -> &'static GpuContext {
    contexts_where(needs, premise)[0].1
}
