//! After the device is destroyed (as a lost device would be), every call returns a typed error
//! promptly, `Error::DeviceLost`: never a panic, never a hang, never an unrelated validation
//! error.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use resgraph::Error;
use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::gpu::context::GpuContext;
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};

/// A context of its own on `backend`: destroying a shared one would break every other test in
/// this binary.
fn private_context(backend: &str) -> Arc<GpuContext> {
    Arc::new(common::new_context(backend, wgpu::Features::empty()))
}

fn assert_lost<T: std::fmt::Debug>(result: resgraph::Result<T>, what: &str) {
    match result {
        Err(Error::DeviceLost { .. }) => {}
        other => panic!("{what} after the loss gave {other:?}, not DeviceLost"),
    }
}

#[test]
fn every_call_after_the_device_is_destroyed_is_a_device_lost_error() {
    for backend in common::test_backends() {
        let context = private_context(&backend);
        let graph = mlp(MlpShape::square(32, 2), 1.0, 3).expect("graph");
        let options = CompileOptions::new(4);
        let model =
            CompiledModel::compile(Arc::clone(&context), &graph, &options).expect("compile");
        let input = random_input(4 * 32, 1);
        model.run(&input).expect("a run before the loss");

        context.device().destroy();
        let started = Instant::now();
        assert_lost(model.run(&input), "a run");
        assert_lost(model.run(&input), "a second run");
        assert_lost(pollster::block_on(model.run_async(&input)), "an async run");
        assert_lost(
            CompiledModel::compile(Arc::clone(&context), &graph, &options),
            "a compile",
        );
        assert_lost(context.wait_idle(), "waiting");
        let message = model.run(&input).expect_err("lost").to_string();
        assert!(message.contains("lost"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{backend}: the calls after the loss took {:?}",
            started.elapsed()
        );
    }
}
