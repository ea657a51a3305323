//! The small-batch texture GEMV against the f64 reference: both variants (subgroup broadcasts and
//! workgroup staging) wherever the adapter runs them, every epilogue, batches 1 to 16, awkward
//! widths, output poisoned with NaN first.

mod common;

use common::LayerKernel;
use resgraph::epilogue::Epilogue;
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::GpuContext;
use resgraph::kernels::gemv::{
    self, GemvOperands, GemvVariant, TextureWeights, prepare_gemv_variant,
};
use resgraph::reference::{LinearRef, linear_f64, to_f64};

fn check_gemv(
    context: &GpuContext,
    variant: GemvVariant,
    shape: (usize, usize, usize),
    epilogue: Epilogue,
    seed: u64,
) -> f64 {
    let kernel = LayerKernel::Gemv(variant);
    pollster::block_on(common::check_layer(context, kernel, shape, epilogue, seed))
}

#[test]
fn the_subgroup_gemv_runs_where_subgroups_exist_and_the_staged_one_everywhere() {
    // Each adapter runs the subgroup variant if it has subgroups of 8 and refuses it if not, and
    // runs the staged variant in any case; each adapter opened without SUBGROUP refuses the first
    // and still runs the second (which `prepare_gemv` then picks), so that both outcomes are
    // checked on every adapter, not only on one that happens to lack subgroups.
    let mut adapters_with_subgroups = 0;
    for (backend, context) in common::contexts() {
        let info = context.adapter_info();
        if info.name.contains("llvmpipe") && info.backend == wgpu::Backend::Vulkan {
            assert!(
                GemvVariant::Subgroup.supported_by(context),
                "lavapipe lost its subgroups"
            );
        }
        if GemvVariant::Subgroup.supported_by(context) {
            check_gemv(
                context,
                GemvVariant::Subgroup,
                (2, 9, 11),
                Epilogue::default(),
                1,
            );
            adapters_with_subgroups += 1;
        } else {
            common::assert_subgroup_gemv_is_refused(context, &backend);
        }
        assert!(GemvVariant::Staged.supported_by(context), "{backend}");
        check_gemv(
            context,
            GemvVariant::Staged,
            (2, 9, 11),
            Epilogue::default(),
            2,
        );
        let without_subgroups = common::context_without(&backend, wgpu::Features::SUBGROUP);
        assert_eq!(
            GemvVariant::for_device(&without_subgroups),
            Some(GemvVariant::Staged),
            "{backend}"
        );
        assert!(gemv::supported_by(&without_subgroups), "{backend}");
        common::assert_subgroup_gemv_is_refused(&without_subgroups, &backend);
        check_gemv(
            &without_subgroups,
            GemvVariant::Staged,
            (3, 17, 5),
            Epilogue::ALL[3],
            3,
        );
    }
    assert!(
        adapters_with_subgroups > 0,
        "no test adapter has subgroups of at least 8 invocations, so the subgroup GEMV never ran \
         (lavapipe, on Vulkan, has subgroups of 8)"
    );
}

#[test]
fn every_variant_epilogue_and_small_batch_matches_the_reference_on_every_backend() {
    // K past one staging round (256) and not a multiple of 8, 1000 columns, 16 rows: every edge
    // of both variants' loops.
    let shapes = [
        (1, 1, 1),
        (1, 3, 17),
        (2, 17, 3),
        (3, 127, 1000),
        (5, 1000, 127),
        (16, 33, 65),
        (1, 512, 512),
        (7, 9, 8),
        (4, 20, 257),
    ];
    for (backend, context) in common::contexts() {
        for variant in GemvVariant::ALL {
            if !variant.supported_by(context) {
                continue;
            }
            let mut worst = 0.0f64;
            for (index, &shape) in shapes.iter().enumerate() {
                for (number, epilogue) in Epilogue::ALL.into_iter().enumerate() {
                    let seed = (index * 4 + number) as u64;
                    worst = worst.max(check_gemv(context, variant, shape, epilogue, seed));
                }
            }
            println!("{backend} {variant:?}: worst relative error {worst:.2e}");
        }
    }
}

/// The first test context that has subgroups of at least 8 invocations (lavapipe in CI).
fn subgroup_context() -> &'static GpuContext {
    common::context_where(
        "subgroups of at least 8 invocations, which the subgroup GEMV needs",
        |context| GemvVariant::Subgroup.supported_by(context),
    )
}

#[test]
fn fewer_rows_than_prepared_compute_only_those_rows() {
    // lavapipe runs both variants.
    let context = subgroup_context();
    for variant in GemvVariant::ALL {
        fewer_rows_than_prepared(context, variant);
    }
}

fn fewer_rows_than_prepared(context: &GpuContext, variant: GemvVariant) {
    let (m, n, k) = (6, 20, 24);
    let mut rng = common::rng(9);
    let x = common::uniform(&mut rng, m * k, -1.0, 1.0);
    let w = common::uniform(&mut rng, n * k, -0.2, 0.2);
    let weights = TextureWeights::upload(context, n, k, &w, None).expect("weights");
    let input = DeviceMatrix::from_host(context, "x", m, k, &x).expect("x");
    let output = DeviceMatrix::new(context, "out", m, n).expect("out");
    output.fill(context, f32::NAN).expect("poison");
    let gemv = prepare_gemv_variant(
        context,
        &GemvOperands {
            input: &input,
            weights: &weights,
            residual: None,
            output: &output,
            activation: resgraph::epilogue::Activation::Identity,
        },
        variant,
    )
    .expect("prepare");
    gemv.set_rows(context, 3).expect("set rows");
    context
        .scoped("gemv", || {
            let mut encoder = context.device().create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                gemv.record_rows(&mut pass, 3);
            }
            context.queue().submit([encoder.finish()]);
        })
        .expect("run");
    context.wait_idle().expect("wait");
    let out = output.read(context).expect("read");
    let reference = linear_f64(
        &to_f64(&x[..3 * k]),
        3,
        LinearRef {
            weight: &w,
            bias: &[],
            in_features: k,
            out_features: n,
        },
        None,
        Epilogue::default(),
    );
    common::assert_close(
        &out[..3 * n],
        &reference,
        1e-5,
        &format!("{variant:?} first 3 rows"),
    );
    assert!(
        out[3 * n..].iter().all(|v| v.is_nan()),
        "rows past the batch were written"
    );
    assert!(gemv.set_rows(context, 7).is_err());
}
