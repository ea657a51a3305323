//! NaN in, NaN out, as in PyTorch and onnxruntime: `relu(NaN) = NaN` (WGSL's `max(x, 0.0)` may
//! return 0 for it, and does on the drivers we test), and a NaN in an input row reaches every
//! output of that row through every layer kernel, epilogue, block form and precision, while the
//! other rows keep matching the f64 reference.

mod common;

use resgraph::exec::{BlockFusion, CompileOptions, CompiledModel};
use resgraph::gpu::context::GpuContext;
use resgraph::graph::GraphBuilder;
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::kernels::gemm::GemmVariant;
use resgraph::precision::Precision;
use resgraph::reference::{forward_f64, relative_error};

/// The precisions `context` can store in.
fn precisions(context: &GpuContext) -> Vec<Precision> {
    let mut precisions = vec![Precision::F32];
    if context.features().contains(wgpu::Features::SHADER_F16) {
        precisions.push(Precision::F16);
    }
    precisions
}

/// Checks `out` against the exact answers of a ReLU (or an add then a ReLU), bit for bit except
/// that any NaN matches NaN.
fn assert_relu_of(out: &[f32], expected: &[f32], what: &str) {
    assert_eq!(out.len(), expected.len(), "{what}: length");
    for (index, (&value, &want)) in out.iter().zip(expected).enumerate() {
        let same = if want.is_nan() {
            value.is_nan()
        } else {
            value == want
        };
        assert!(same, "{what}: output[{index}] = {value}, expected {want}");
    }
}

#[test]
fn relu_keeps_nan_and_infinity_on_every_backend_and_precision() {
    // The probe: a ReLU-only model on [nan, -1, 2, inf] gave [0, 0, 2, inf].
    let input = [
        f32::NAN,
        -1.0,
        2.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.5,
        f32::NAN,
        0.25,
    ];
    let relu_of_input = [f32::NAN, 0.0, 2.0, f32::INFINITY, 0.0, 0.0, f32::NAN, 0.25];
    // x + x, then ReLU: the elementwise kernel's add-and-activate form.
    let doubled_relu = [f32::NAN, 0.0, 4.0, f32::INFINITY, 0.0, 0.0, f32::NAN, 0.5];

    let mut builder = GraphBuilder::new();
    let x = builder.input("x", 4).expect("input");
    let relu = builder.relu("relu", x).expect("relu");
    let relu_graph = builder.build(relu).expect("graph");

    let mut builder = GraphBuilder::new();
    let x = builder.input("x", 4).expect("input");
    let sum = builder.add("sum", x, x).expect("add");
    let relu = builder.relu("relu", sum).expect("relu");
    let add_relu_graph = builder.build(relu).expect("graph");

    for (backend, context) in common::contexts() {
        for precision in precisions(context) {
            let options = CompileOptions {
                precision,
                ..CompileOptions::new(2)
            };
            for (graph, expected, name) in [
                (&relu_graph, &relu_of_input, "relu"),
                (&add_relu_graph, &doubled_relu, "add + relu"),
            ] {
                let model = CompiledModel::compile(common::shared(context), graph, &options)
                    .expect("compile");
                let out = model.run(&input).expect("run");
                assert_relu_of(&out, expected, &format!("{name} on {backend}, {precision}"));
            }
        }
    }
}

/// One compile configuration of the model test, described for failure messages.
struct Configuration {
    variant: GemmVariant,
    small_batch_kernel: bool,
    block_fusion: BlockFusion,
}

fn configurations(context: &GpuContext, precision: Precision) -> Vec<Configuration> {
    let mut configurations = Vec::new();
    for variant in GemmVariant::ALL {
        if !variant.supported_by(context, precision) {
            continue;
        }
        for small_batch_kernel in [true, false] {
            for block_fusion in [BlockFusion::Never, BlockFusion::Always] {
                configurations.push(Configuration {
                    variant,
                    small_batch_kernel,
                    block_fusion,
                });
            }
        }
    }
    configurations
}

#[test]
fn a_nan_in_an_input_row_is_nan_in_every_output_of_that_row_only() {
    // A stem, two residual blocks and a head, with ReLUs after the stem and inside and after
    // every block: each kernel's epilogue (bias, residual add, ReLU) sees the NaN row. Batch 5
    // runs on the GEMV where the small-batch kernel is allowed, batch 37 on the tiled GEMMs.
    let shape = MlpShape {
        input_width: 19,
        width: 24,
        hidden_width: 40,
        depth: 2,
        output_width: 7,
        residual: true,
    };
    let graph = mlp(shape, 1.0, 11).expect("graph");
    let mut checked = 0;
    let mut kernels_seen = std::collections::BTreeSet::new();
    for (backend, context) in common::contexts() {
        for precision in precisions(context) {
            let tolerance = match precision {
                Precision::F32 => 1e-4,
                Precision::F16 => 1e-2,
            };
            for configuration in configurations(context, precision) {
                // A model compiled for 5 rows runs its layers on the GEMV where the small-batch
                // kernel is allowed; one compiled for 37 on the tiled GEMM, at full and partial
                // batch.
                for (max_batch, batch, nan_row) in
                    [(5usize, 5usize, 2usize), (37, 37, 30), (37, 3, 0)]
                {
                    let options = CompileOptions {
                        precision,
                        gemm_variant: Some(configuration.variant),
                        small_batch_kernel: configuration.small_batch_kernel,
                        block_fusion: configuration.block_fusion,
                        ..CompileOptions::new(max_batch)
                    };
                    let model = CompiledModel::compile(common::shared(context), &graph, &options)
                        .expect("compile");
                    kernels_seen.extend(model.step_kernels());
                    let what = format!(
                        "{backend}, {precision}, {:?}, small-batch kernel {}, {:?}, batch \
                         {batch}, kernels {:?}",
                        configuration.variant,
                        configuration.small_batch_kernel,
                        configuration.block_fusion,
                        model.step_kernels()
                    );
                    let mut input = random_input(batch * shape.input_width, batch as u64);
                    input[nan_row * shape.input_width + 3] = f32::NAN;
                    let out = model.run(&input).expect("run");
                    let reference = forward_f64(&graph, &input, batch);
                    let width = shape.output_width;
                    let mut finite_out = Vec::new();
                    let mut finite_reference = Vec::new();
                    for row in 0..batch {
                        let out_row = &out[row * width..(row + 1) * width];
                        let reference_row = &reference[row * width..(row + 1) * width];
                        if row == nan_row {
                            assert!(
                                out_row.iter().all(|value| value.is_nan()),
                                "{what}: the NaN row came out as {out_row:?}"
                            );
                            assert!(reference_row.iter().all(|value| value.is_nan()));
                        } else {
                            assert!(
                                out_row.iter().all(|value| value.is_finite()),
                                "{what}: row {row} (no NaN in it) came out as {out_row:?}"
                            );
                            finite_out.extend_from_slice(out_row);
                            finite_reference.extend_from_slice(reference_row);
                        }
                    }
                    let error = relative_error(&finite_out, &finite_reference);
                    assert!(
                        error <= tolerance,
                        "{what}: the rows without NaN are {error:.2e} from the reference"
                    );
                    checked += 1;
                }
            }
        }
    }
    // Every backend runs at least the portable GEMM in f32, both ways, at three batches.
    assert!(checked >= 12 * common::contexts().len());
    for kernel in ["gemm", "gemv_texture", "residual_block"] {
        assert!(
            kernels_seen.contains(kernel),
            "no configuration ran the {kernel} kernel (ran {kernels_seen:?})"
        );
    }
}
