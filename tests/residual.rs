//! Compiled residual stacks against the f64 reference, the seed's identity and signal arguments,
//! batch handling, the async form, concurrency, and bad input.

mod common;

use std::sync::Arc;

use proptest::prelude::*;
use resgraph::Error;
use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::graph::{Graph, GraphBuilder, LinearParams};
use resgraph::reference::forward_f64;

const F32_TOLERANCE: f64 = 1e-5;

fn check_model(model: &CompiledModel, graph: &Graph, batch: usize, seed: u64, what: &str) -> f64 {
    let input = random_input(batch * graph.input_width(), seed);
    let output = model
        .run(&input)
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    let reference = forward_f64(graph, &input, batch);
    common::assert_close(&output, &reference, F32_TOLERANCE, what)
}

#[test]
fn stacks_with_stem_and_head_match_the_reference_on_every_backend() {
    for (backend, context) in common::contexts() {
        let context = common::shared(context);
        for (depth, width, hidden, input_width, output_width) in [
            (1, 17, 17, 17, 17),
            (3, 33, 65, 7, 129),
            (9, 127, 31, 1000, 3),
        ] {
            let shape = MlpShape {
                input_width,
                width,
                hidden_width: hidden,
                depth,
                output_width,
                residual: true,
            };
            let graph = mlp(shape, 1.0, depth as u64).expect("graph");
            let model =
                CompiledModel::compile(Arc::clone(&context), &graph, &CompileOptions::new(19))
                    .expect("compile");
            for batch in [1, 4, 19] {
                let what = format!("{backend} {shape:?} batch {batch}");
                check_model(&model, &graph, batch, batch as u64, &what);
            }
        }
    }
}

#[test]
fn a_deep_stack_matches_the_reference() {
    let context = common::shared_primary_context();
    let graph = mlp(MlpShape::square(64, 64), 1.0, 64).expect("graph");
    let model = CompiledModel::compile(Arc::clone(&context), &graph, &CompileOptions::new(8))
        .expect("compile");
    assert_eq!(model.dispatches_per_run(), 128);
    check_model(&model, &graph, 8, 1, "depth 64");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn random_stacks_match_the_reference(
        depth in 1usize..=64,
        width in 1usize..=48,
        hidden in 1usize..=48,
        input_width in 1usize..=48,
        output_width in 1usize..=48,
        max_batch in 1usize..=40,
        residual in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let context = common::shared_primary_context();
        let shape = MlpShape { input_width, width, hidden_width: hidden, depth, output_width, residual };
        let graph = mlp(shape, 1.0, seed).expect("graph");
        let model = CompiledModel::compile(Arc::clone(&context), &graph, &CompileOptions::new(max_batch))
            .expect("compile");
        for batch in [1, max_batch.div_ceil(2), max_batch] {
            check_model(&model, &graph, batch, seed ^ batch as u64, &format!("{shape:?} batch {batch}"));
        }
    }
}

#[test]
fn zero_blocks_return_a_non_negative_input_bit_for_bit_at_depth_100() {
    for (_, context) in common::contexts() {
        let context = common::shared(context);
        let width = 37;
        let mut builder = GraphBuilder::new();
        let mut x = builder.input("x", width).expect("input");
        for block in 0..100 {
            x = builder
                .residual_block(
                    &format!("blocks.{block}"),
                    x,
                    LinearParams::zeros(width, width).expect("fc1"),
                    LinearParams::zeros(width, width).expect("fc2"),
                )
                .expect("block");
        }
        let graph = builder.build(x).expect("graph");
        let model =
            CompiledModel::compile(context, &graph, &CompileOptions::new(5)).expect("compile");
        let input: Vec<f32> = random_input(5 * width, 9)
            .iter()
            .map(|v| v.abs() * 3.0)
            .collect();
        let output = model.run(&input).expect("run");
        assert_eq!(output.len(), input.len());
        let identical = output
            .iter()
            .zip(&input)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(identical, "100 zero blocks changed the input");
    }
}

fn norm(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn the_shortcut_keeps_the_signal_that_a_plain_stack_loses_at_depth_50() {
    let context = common::shared_primary_context();
    let width = 64;
    // Small weights: a tenth of PyTorch's default bound, so each plain layer shrinks its input.
    let scale = 0.1;
    let input: Vec<f32> = random_input(4 * width, 5).iter().map(|v| v.abs()).collect();
    let input_norm = norm(&input);
    let run = |residual: bool| {
        let shape = MlpShape {
            residual,
            ..MlpShape::square(width, 50)
        };
        let graph = mlp(shape, scale, 11).expect("graph");
        let model = CompiledModel::compile(Arc::clone(&context), &graph, &CompileOptions::new(4))
            .expect("compile");
        norm(&model.run(&input).expect("run"))
    };
    let plain = run(false) / input_norm;
    let residual = run(true) / input_norm;
    println!("output/input norm at depth 50: plain {plain:.3e}, residual {residual:.3}");
    // The plain stack forgets its input: what is left is the biases' own small signal (about 1%
    // of the input's norm here), while the shortcut carries the input through.
    assert!(
        plain < 0.05,
        "the plain stack kept {plain} of the input norm"
    );
    assert!(
        residual > 20.0 * plain,
        "residual {residual} vs plain {plain}"
    );
    assert!(
        (0.5..=4.0).contains(&residual),
        "the residual stack's norm ratio {residual} left [0.5, 4]"
    );
}

#[test]
fn the_async_form_gives_the_same_answer() {
    let context = common::shared_primary_context();
    let graph = mlp(MlpShape::square(40, 3), 1.0, 6).expect("graph");
    let model = CompiledModel::compile(context, &graph, &CompileOptions::new(6)).expect("compile");
    let input = random_input(6 * 40, 2);
    let blocking = model.run(&input).expect("run");
    let asynchronous = pollster::block_on(model.run_async(&input)).expect("run_async");
    assert_eq!(blocking, asynchronous);
    let reference = forward_f64(&graph, &input, 6);
    common::assert_close(&asynchronous, &reference, F32_TOLERANCE, "async");
}

#[test]
fn one_model_serves_several_threads() {
    let context = common::shared_primary_context();
    let graph = Arc::new(mlp(MlpShape::square(48, 4), 1.0, 8).expect("graph"));
    let model = Arc::new(
        CompiledModel::compile(context, &graph, &CompileOptions::new(16)).expect("compile"),
    );
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let (model, graph) = (Arc::clone(&model), Arc::clone(&graph));
            std::thread::spawn(move || {
                for round in 0..6 {
                    let batch = 1 + (thread * 5 + round * 3) % 16;
                    let seed = (thread * 100 + round) as u64;
                    check_model(
                        &model,
                        &graph,
                        batch,
                        seed,
                        &format!("thread {thread} round {round}"),
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a worker thread panicked");
    }
}

#[test]
fn graphs_with_unfused_operations_match_the_reference() {
    let context = common::shared_primary_context();
    let mut rng_seed = 100;
    let mut linear = |out: usize, inp: usize| {
        rng_seed += 1;
        let graph = mlp(
            MlpShape {
                input_width: inp,
                width: out,
                hidden_width: out,
                depth: 0,
                output_width: out,
                residual: true,
            },
            1.0,
            rng_seed,
        )
        .expect("layer");
        graph.linear_layers().next().cloned().expect("a stem layer")
    };
    let mut builder = GraphBuilder::new();
    let x = builder.input("x", 10).expect("input");
    let r = builder.relu("relu_in", x).expect("relu");
    let a = builder.linear("a", r, linear(12, 10)).expect("a");
    let b = builder.linear("b", x, linear(12, 10)).expect("b");
    let sum = builder.add("sum", a, b).expect("sum");
    let twice = builder.add("twice", sum, sum).expect("twice");
    let out = builder.relu("out", twice).expect("out");
    let graph = builder.build(out).expect("graph");
    let model = CompiledModel::compile(context, &graph, &CompileOptions::new(9)).expect("compile");
    for batch in [1, 9] {
        check_model(&model, &graph, batch, 3, &format!("unfused batch {batch}"));
    }
}

#[test]
fn inputs_that_do_not_fit_are_typed_errors() {
    let context = common::shared_primary_context();
    let graph = mlp(MlpShape::square(8, 1), 1.0, 1).expect("graph");
    let model = CompiledModel::compile(context, &graph, &CompileOptions::new(4)).expect("compile");
    for bad in [vec![0.0; 7], vec![], vec![0.0; 8 * 5]] {
        let error = model.run(&bad).unwrap_err();
        assert!(matches!(error, Error::BadInput { .. }), "{error}");
    }
    assert!(model.run(&[0.0; 8 * 4]).is_ok());
}

#[test]
fn every_kernel_path_of_the_executor_matches_the_reference() {
    // On every test adapter, and on each adapter opened without SUBGROUP: where the device has
    // subgroups the executor's options must reach the subgroup GEMM and the subgroup texture GEMV
    // as well as the portable GEMM, and where it has none the portable GEMM and the staged
    // texture GEMV. At least one test adapter must have subgroups, or their paths would never
    // run here.
    use resgraph::kernels::gemm::GemmVariant;
    use resgraph::kernels::gemv::GemvVariant;
    let shape = MlpShape {
        input_width: 21,
        width: 40,
        hidden_width: 72,
        depth: 3,
        output_width: 9,
        residual: true,
    };
    let graph = mlp(shape, 1.0, 77).expect("graph");
    let mut adapters_with_subgroups = 0;
    for backend in common::test_backends() {
        for context in [
            common::shared(common::context_for(&backend)),
            common::context_without(&backend, wgpu::Features::SUBGROUP),
        ] {
            let mut seen = std::collections::BTreeSet::new();
            for small_batch_kernel in [true, false] {
                for gemm_variant in [None, Some(GemmVariant::Portable)] {
                    let options = CompileOptions {
                        small_batch_kernel,
                        gemm_variant,
                        ..CompileOptions::new(8)
                    };
                    let model = CompiledModel::compile(Arc::clone(&context), &graph, &options)
                        .expect("compile");
                    let kernels = model.step_kernels();
                    seen.extend(kernels.iter().copied());
                    for batch in [1, 3, 8] {
                        let what = format!("{backend} {kernels:?} batch {batch}");
                        check_model(&model, &graph, batch, 5, &what);
                    }
                }
            }
            let subgroup_paths = ["gemm_subgroup", "gemv_texture"];
            assert!(seen.contains("gemm"), "{backend}: paths run: {seen:?}");
            if GemvVariant::Subgroup.supported_by(&context) {
                adapters_with_subgroups += 1;
                assert!(
                    subgroup_paths.iter().all(|name| seen.contains(name)),
                    "{backend}: paths run: {seen:?}"
                );
            } else {
                assert!(
                    !subgroup_paths.iter().any(|name| seen.contains(name))
                        && seen.contains("gemv_texture_staged"),
                    "{backend} without subgroups: paths run: {seen:?}"
                );
            }
        }
    }
    assert!(
        adapters_with_subgroups > 0,
        "no test adapter has subgroups of at least 8 invocations, so the subgroup GEMM and the \
         texture GEMV never ran (lavapipe, on Vulkan, has subgroups of 8)"
    );
}
