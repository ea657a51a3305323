//! f16 storage (f32 arithmetic) against the f64 reference: every GEMM variant and the GEMV on
//! awkward shapes, whole residual stacks, and a typed error where the adapter lacks `shader-f16`.

mod common;

use std::sync::Arc;

use resgraph::epilogue::Epilogue;
use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::GpuContext;
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::kernels::gemm::{GemmOperands, GemmVariant, LinearWeights, prepare_gemm};
use resgraph::precision::Precision;
use resgraph::reference::{LinearRef, forward_f64, linear_f64, to_f64};

const F16_TOLERANCE: f64 = 1e-2;

fn has_f16(context: &GpuContext) -> bool {
    context.features().contains(wgpu::Features::SHADER_F16)
}

/// The first test context with `shader-f16` (lavapipe in CI).
fn f16_context() -> &'static GpuContext {
    common::context_where("shader-f16", has_f16)
}

#[test]
fn every_gemm_variant_in_f16_matches_the_reference() {
    let context = f16_context();
    for variant in GemmVariant::ALL
        .into_iter()
        .filter(|v| v.supported_by(context, Precision::F16))
    {
        for (index, &(m, n, k)) in [
            (1, 1, 1),
            (3, 17, 5),
            (17, 127, 33),
            (65, 9, 1000),
            (300, 33, 257),
        ]
        .iter()
        .enumerate()
        {
            for epilogue in Epilogue::ALL {
                let mut rng = common::rng(index as u64);
                let scale = 1.0 / (k as f32).sqrt();
                let x = common::uniform(&mut rng, m * k, -1.0, 1.0);
                let w = common::uniform(&mut rng, n * k, -scale, scale);
                let b = common::uniform(&mut rng, n, -scale, scale);
                let r = common::uniform(&mut rng, m * n, -1.0, 1.0);
                let weights = LinearWeights::upload_with_precision(
                    context,
                    n,
                    k,
                    &w,
                    Some(&b),
                    Precision::F16,
                )
                .expect("weights");
                let matrix = |label: &str, rows, cols, data: &[f32]| {
                    let matrix = DeviceMatrix::new_with_precision(
                        context,
                        label,
                        rows,
                        cols,
                        Precision::F16,
                    )
                    .expect("matrix");
                    matrix.write(context, data).expect("write");
                    matrix
                };
                let input = matrix("x", m, k, &x);
                let residual = matrix("r", m, n, &r);
                let output = matrix("out", m, n, &vec![f32::NAN; m * n]);
                let gemm = prepare_gemm(
                    context,
                    &GemmOperands {
                        input: &input,
                        weights: &weights,
                        residual: epilogue.add_residual.then_some(&residual),
                        output: &output,
                        activation: epilogue.activation,
                    },
                    variant,
                )
                .expect("prepare");
                gemm.submit(context).expect("submit");
                context.wait_idle().expect("wait");
                let out = output.read(context).expect("read");
                let reference = linear_f64(
                    &to_f64(&x),
                    m,
                    LinearRef {
                        weight: &w,
                        bias: &b,
                        in_features: k,
                        out_features: n,
                    },
                    Some(&to_f64(&r)),
                    epilogue,
                );
                let what = format!("f16 {variant:?} m={m} n={n} k={k} {epilogue}");
                common::assert_close(&out, &reference, F16_TOLERANCE, &what);
            }
        }
    }
}

#[test]
fn f16_residual_stacks_match_the_reference_on_every_kernel_path() {
    let context = common::shared(f16_context());
    let shape = MlpShape {
        input_width: 19,
        width: 64,
        hidden_width: 96,
        depth: 8,
        output_width: 7,
        residual: true,
    };
    let graph = mlp(shape, 1.0, 3).expect("graph");
    for max_batch in [1, 5, 40] {
        let options = CompileOptions {
            precision: Precision::F16,
            ..CompileOptions::new(max_batch)
        };
        let model =
            CompiledModel::compile(Arc::clone(&context), &graph, &options).expect("compile");
        assert_eq!(model.precision(), Precision::F16);
        for batch in [1, max_batch] {
            let input = random_input(batch * 19, batch as u64);
            let output = model.run(&input).expect("run");
            let what = format!("f16 stack {:?} batch {batch}", model.step_kernels());
            let error = common::assert_close(
                &output,
                &forward_f64(&graph, &input, batch),
                F16_TOLERANCE,
                &what,
            );
            println!("{what}: relative error {error:.2e}");
        }
    }
}

#[test]
fn f16_without_shader_f16_is_a_typed_error() {
    // Every adapter, opened without SHADER_F16, so that the refusal is checked on every adapter
    // and not only on one that happens to lack the feature (GL never has it, lavapipe does).
    for (backend, context) in common::contexts_without(wgpu::Features::SHADER_F16) {
        assert!(!has_f16(&context), "{backend}");
        let error =
            LinearWeights::upload_with_precision(&context, 2, 2, &[0.0; 4], None, Precision::F16)
                .expect_err("f16 weights without shader-f16");
        assert!(
            matches!(
                error,
                resgraph::Error::MissingFeature {
                    feature: "SHADER_F16",
                    ..
                }
            ),
            "{backend}: {error}"
        );
    }
}
