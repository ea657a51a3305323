//! Convolutional residual networks as graphs: the builder checks image shapes, the planner fuses
//! each convolution with its ReLU and residual add, and a compiled model matches the f64
//! reference end to end on every test adapter.

mod common;

use resgraph::graph::{Conv2dParams, GraphBuilder, PoolWindow, ValueShape};
use resgraph::reference::forward_f64;
use resgraph::{CompileOptions, CompiledModel, Error, Precision};

/// A convolution with PyTorch's default initialisation scale (uniform in ±1/sqrt(fan_in)) and a
/// small bias, from a fixed seed.
fn conv(
    seed: u64,
    (out_channels, in_channels): (usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Conv2dParams {
    let mut rng = common::rng(seed);
    let fan_in = (in_channels * kernel * kernel) as f32;
    let bound = 1.0 / fan_in.sqrt();
    let weight = common::uniform(
        &mut rng,
        out_channels * in_channels * kernel * kernel,
        -bound,
        bound,
    );
    let bias = common::uniform(&mut rng, out_channels, -0.1, 0.1);
    Conv2dParams::new(
        (out_channels, in_channels),
        (kernel, kernel),
        (stride, stride),
        (padding, padding, padding, padding),
        weight,
        Some(bias),
    )
    .expect("a valid convolution")
}

/// A small ResNet body: a 3×3 stem, a basic block with the identity shortcut, and a basic block
/// that halves the size with a 1×1 stride-2 projection; on an odd-sized 3-channel image.
fn small_resnet_body() -> resgraph::Graph {
    let mut graph = GraphBuilder::new();
    let x = graph.input_image("x", (11, 9, 3)).expect("input");
    let stem = graph
        .conv2d("conv1", x, conv(1, (16, 3), 3, 1, 1))
        .expect("stem");
    let stem = graph.relu("relu", stem).expect("relu");
    let block = graph
        .basic_block(
            "layer1.0",
            stem,
            conv(2, (16, 16), 3, 1, 1),
            conv(3, (16, 16), 3, 1, 1),
            None,
        )
        .expect("identity block");
    let block = graph
        .basic_block(
            "layer2.0",
            block,
            conv(4, (32, 16), 3, 2, 1),
            conv(5, (32, 32), 3, 1, 1),
            Some(conv(6, (32, 16), 1, 2, 0)),
        )
        .expect("projection block");
    graph.build(block).expect("graph")
}

#[test]
fn the_builder_tracks_image_shapes_and_refuses_what_does_not_chain() {
    let graph = small_resnet_body();
    assert_eq!(
        graph.input_shape(),
        ValueShape::Image {
            height: 11,
            width: 9,
            channels: 3
        }
    );
    // 11x9 -> stride 2, padding 1, kernel 3: 6x5.
    assert_eq!(
        graph.output_shape(),
        ValueShape::Image {
            height: 6,
            width: 5,
            channels: 32
        }
    );
    let mut builder = GraphBuilder::new();
    let x = builder.input_image("x", (8, 8, 3)).expect("input");
    let error = builder
        .conv2d("wrong_channels", x, conv(7, (4, 5), 3, 1, 1))
        .expect_err("5 channels expected, 3 given");
    assert!(matches!(error, Error::GraphShape { .. }), "{error}");
    assert!(error.to_string().contains("wrong_channels"), "{error}");
    let error = builder
        .conv2d("too_big", x, conv(8, (4, 3), 11, 1, 0))
        .expect_err("an 11x11 kernel on 8x8");
    assert!(matches!(error, Error::GraphShape { .. }), "{error}");
    let error = builder
        .linear("fc", x, resgraph::LinearParams::zeros(2, 192).expect("fc"))
        .expect_err("a linear layer on an image");
    assert!(error.to_string().contains("flatten or pool"), "{error}");
    let pooled = builder
        .max_pool2d(
            "maxpool",
            x,
            PoolWindow {
                kernel: (3, 3),
                stride: (2, 2),
                padding: (1, 1, 1, 1),
            },
        )
        .expect("max pool");
    assert_eq!(
        builder.shape(pooled),
        Some(ValueShape::Image {
            height: 4,
            width: 4,
            channels: 3
        })
    );
    let global = builder.global_avg_pool("avgpool", pooled).expect("pool");
    assert_eq!(builder.shape(global), Some(ValueShape::Dense { width: 3 }));
    let error = builder
        .global_avg_pool("again", global)
        .expect_err("a global pool of a dense row");
    assert!(matches!(error, Error::GraphShape { .. }), "{error}");
    let error = builder
        .max_pool2d(
            "all_padding",
            x,
            PoolWindow {
                kernel: (3, 3),
                stride: (1, 1),
                padding: (2, 0, 0, 0),
            },
        )
        .expect_err("padding over half the window");
    assert!(matches!(error, Error::GraphShape { .. }), "{error}");
    // Sizes from a model file whose product overflows are a typed error, never a panic or a
    // wrapped width.
    let mut huge = GraphBuilder::new();
    let error = huge
        .input_image("x", (1 << 24, 1 << 24, 1 << 24))
        .expect_err("2^72 values");
    assert!(matches!(error, Error::GraphShape { .. }), "{error}");
    let x = huge.input_image("x", (1, 1, 1)).expect("input");
    let padded = Conv2dParams::new(
        (4, 1),
        (1, 1),
        (1, 1),
        (1 << 20, 1 << 20, 0, 0),
        vec![1.0; 4],
        None,
    )
    .expect("a conv with absurd padding");
    let error = huge.conv2d("padded", x, padded).expect_err("2^40 pixels");
    assert!(matches!(error, Error::GraphShape { .. }), "{error}");
}

#[test]
fn a_convolutional_residual_network_runs_one_dispatch_per_convolution_and_matches_the_reference() {
    let graph = small_resnet_body();
    for (backend, context) in common::contexts() {
        let model =
            CompiledModel::compile(common::shared(context), &graph, &CompileOptions::new(3))
                .expect("compile");
        // The stem and its ReLU, two convolutions in the identity block (the add and ReLU fused
        // into the second) and three in the projection block.
        assert_eq!(model.dispatches_per_run(), 6, "{:?}", model.step_kernels());
        assert!(
            model
                .step_kernels()
                .iter()
                .all(|kernel| kernel.starts_with("conv2d")),
            "{:?}",
            model.step_kernels()
        );
        for batch in [1, 3] {
            let input = common::uniform(
                &mut common::rng(batch as u64),
                batch * graph.input_width(),
                -1.0,
                1.0,
            );
            let output = model.run(&input).expect("run");
            let error = common::assert_close(
                &output,
                &forward_f64(&graph, &input, batch),
                Precision::F32.tolerance(),
                &format!("{backend} batch {batch}"),
            );
            eprintln!("{backend} batch {batch}: relative error {error:.2e}");
        }
    }
}

#[test]
fn a_spatial_flatten_read_by_linear_layers_matches_pytorchs_channel_first_order() {
    // A VGG-style head: a convolution, a flatten of its 3x5 map with 6 channels (PyTorch orders
    // the row channel, row, column), then two linear layers reading it. The reference flattens
    // in PyTorch's order; resgraph permutes the layers' weight columns instead of the image.
    let mut builder = GraphBuilder::new();
    let x = builder.input_image("x", (3, 5, 2)).expect("input");
    let features = builder
        .conv2d("features", x, conv(3, (6, 2), 3, 1, 1))
        .expect("conv");
    let features = builder.relu("features.relu", features).expect("relu");
    let flat = builder.flatten("flatten", features).expect("flatten");
    let linear = |out: usize, seed: u64| {
        let weight = common::uniform(&mut common::rng(seed), out * 90, -0.2, 0.2);
        let bias = common::uniform(&mut common::rng(seed + 1), out, -0.1, 0.1);
        resgraph::LinearParams::new(out, 90, weight, Some(bias)).expect("linear")
    };
    let head = builder
        .linear("classifier", flat, linear(7, 11))
        .expect("linear");
    let side = builder.linear("side", flat, linear(7, 13)).expect("linear");
    let sum = builder.add("sum", head, side).expect("add");
    let graph = builder.build(sum).expect("graph");
    for (backend, context) in common::contexts() {
        let model =
            CompiledModel::compile(common::shared(context), &graph, &CompileOptions::new(3))
                .expect("compile");
        for batch in [1, 3] {
            let input = common::uniform(
                &mut common::rng(40 + batch as u64),
                batch * graph.input_width(),
                -1.0,
                1.0,
            );
            let output = model.run(&input).expect("run");
            common::assert_close(
                &output,
                &forward_f64(&graph, &input, batch),
                Precision::F32.tolerance(),
                &format!("{backend} batch {batch}"),
            );
        }
    }
}

#[test]
fn a_spatial_flatten_read_by_anything_but_linear_layers_is_a_typed_error() {
    // As the graph's output, and read by a ReLU: the values would be in resgraph's order.
    let mut as_output = GraphBuilder::new();
    let x = as_output.input_image("x", (4, 4, 2)).expect("input");
    let flat = as_output.flatten("flatten", x).expect("flatten");
    let as_output = as_output.build(flat).expect("graph");
    let mut into_relu = GraphBuilder::new();
    let x = into_relu.input_image("x", (4, 4, 2)).expect("input");
    let flat = into_relu.flatten("flatten", x).expect("flatten");
    let relu = into_relu.relu("relu", flat).expect("relu");
    let into_relu = into_relu.build(relu).expect("graph");
    for graph in [as_output, into_relu] {
        let error = CompiledModel::compile(
            common::shared_primary_context(),
            &graph,
            &CompileOptions::new(1),
        )
        .expect_err("a spatial flatten that is not read by linear layers");
        assert!(matches!(error, Error::UnsupportedShape { .. }), "{error}");
        assert!(error.to_string().contains("linear layer"), "{error}");
    }
}

/// A ResNet-18-shaped network at toy size: a 7×7 stride-2 stem, ResNet's 3×3 stride-2 max-pool,
/// an identity block and a projection block, a global average pool, a flatten and a classifier.
fn tiny_resnet() -> resgraph::Graph {
    let mut graph = GraphBuilder::new();
    let x = graph.input_image("x", (23, 19, 3)).expect("input");
    let stem = graph
        .conv2d("conv1", x, conv(11, (16, 3), 7, 2, 3))
        .expect("stem");
    let stem = graph.relu("relu", stem).expect("relu");
    let pooled = graph
        .max_pool2d(
            "maxpool",
            stem,
            PoolWindow {
                kernel: (3, 3),
                stride: (2, 2),
                padding: (1, 1, 1, 1),
            },
        )
        .expect("max pool");
    let block = graph
        .basic_block(
            "layer1.0",
            pooled,
            conv(12, (16, 16), 3, 1, 1),
            conv(13, (16, 16), 3, 1, 1),
            None,
        )
        .expect("identity block");
    let block = graph
        .basic_block(
            "layer2.0",
            block,
            conv(14, (32, 16), 3, 2, 1),
            conv(15, (32, 32), 3, 1, 1),
            Some(conv(16, (32, 16), 1, 2, 0)),
        )
        .expect("projection block");
    let pooled = graph.global_avg_pool("avgpool", block).expect("average");
    let flat = graph.flatten("flatten", pooled).expect("flatten");
    let mut rng = common::rng(17);
    let fc = resgraph::LinearParams::new(
        10,
        32,
        common::uniform(&mut rng, 320, -0.2, 0.2),
        Some(common::uniform(&mut rng, 10, -0.1, 0.1)),
    )
    .expect("fc");
    let logits = graph.linear("fc", flat, fc).expect("classifier");
    graph.build(logits).expect("graph")
}

#[test]
fn a_resnet_shaped_network_with_pools_matches_the_reference_on_every_backend() {
    let graph = tiny_resnet();
    assert_eq!(graph.output_shape(), ValueShape::Dense { width: 10 });
    for (backend, context) in common::contexts() {
        let model =
            CompiledModel::compile(common::shared(context), &graph, &CompileOptions::new(3))
                .expect("compile");
        // Stem, max-pool, 2 + 3 block convolutions, the global pool and the classifier: the
        // flatten of a 1x1 map costs nothing.
        assert_eq!(model.dispatches_per_run(), 9, "{:?}", model.step_kernels());
        for batch in [1, 3] {
            let input = common::uniform(
                &mut common::rng(20 + batch as u64),
                batch * graph.input_width(),
                -1.0,
                1.0,
            );
            let output = model.run(&input).expect("run");
            let error = common::assert_close(
                &output,
                &forward_f64(&graph, &input, batch),
                Precision::F32.tolerance(),
                &format!("{backend} batch {batch}"),
            );
            eprintln!("{backend} tiny ResNet batch {batch}: relative error {error:.2e}");
        }
    }
}

#[test]
fn a_convolutional_network_survives_a_safetensors_round_trip() {
    let graph = tiny_resnet();
    let bytes = resgraph::export_safetensors(&graph).expect("export");
    let reloaded =
        resgraph::parse_model(std::path::Path::new("tiny.safetensors"), &bytes).expect("import");
    assert_eq!(reloaded.input_shape(), graph.input_shape());
    assert_eq!(reloaded.parameter_count(), graph.parameter_count());
    assert_eq!(reloaded.nodes().len(), graph.nodes().len());
    let input = common::uniform(&mut common::rng(30), 2 * graph.input_width(), -1.0, 1.0);
    assert_eq!(
        forward_f64(&reloaded, &input, 2),
        forward_f64(&graph, &input, 2),
        "the reloaded network computes something else"
    );
    // An average pool keeps its count_include_pad.
    let mut builder = GraphBuilder::new();
    let x = builder.input_image("x", (5, 5, 2)).expect("input");
    let window = PoolWindow {
        kernel: (3, 3),
        stride: (2, 2),
        padding: (1, 0, 1, 0),
    };
    let pooled = builder.avg_pool2d("pool", x, window, true).expect("pool");
    let pool_graph = builder.build(pooled).expect("graph");
    let bytes = resgraph::export_safetensors(&pool_graph).expect("export");
    let reloaded =
        resgraph::parse_model(std::path::Path::new("pool.safetensors"), &bytes).expect("import");
    let input = common::uniform(&mut common::rng(31), 50, -1.0, 1.0);
    assert_eq!(
        forward_f64(&reloaded, &input, 1),
        forward_f64(&pool_graph, &input, 1)
    );
}

#[test]
fn a_resnet_shaped_network_in_f16_matches_the_reference_within_the_f16_tolerance() {
    let graph = tiny_resnet();
    let contexts = common::contexts_where("shader-f16", |context| {
        context.features().contains(wgpu::Features::SHADER_F16)
    });
    for (backend, context) in contexts {
        let options = CompileOptions {
            precision: Precision::F16,
            ..CompileOptions::new(3)
        };
        let model =
            CompiledModel::compile(common::shared(context), &graph, &options).expect("compile");
        let input = common::uniform(&mut common::rng(40), 3 * graph.input_width(), -1.0, 1.0);
        let output = model.run(&input).expect("run");
        let error = common::assert_close(
            &output,
            &forward_f64(&graph, &input, 3),
            Precision::F16.tolerance(),
            &format!("{backend} f16"),
        );
        eprintln!("{backend} tiny ResNet f16: relative error {error:.2e}");
    }
}
