//! The fused GEMM kernel against the f64 reference: every epilogue, awkward shapes, every test
//! backend, output poisoned with NaN before each run.

mod common;

use common::LayerKernel;
use proptest::prelude::*;
use resgraph::epilogue::{Activation, Epilogue};
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::GpuContext;
use resgraph::gpu::pipelines::{KernelKey, PipelineDescriptor};
use resgraph::kernels::gemm::{
    GemmOperands, GemmVariant, INNER_CHUNK, LinearWeights, TiledGemmConfig, cooperative_config,
    gemm_constants, prepare_gemm,
};
use resgraph::kernels::source::generate;
use resgraph::precision::Precision;
use resgraph::tune::KernelChoice;

/// The GEMM variants `context` can run: all of them are tested, not only the one it would pick.
fn variants(context: &GpuContext) -> Vec<GemmVariant> {
    GemmVariant::ALL
        .into_iter()
        .filter(|variant| variant.supported_by(context, Precision::F32))
        .collect()
}

/// Runs `act(X·Wᵀ + b [+ R])` with the device's best variant and checks it.
fn check_gemm(
    context: &GpuContext,
    shape: (usize, usize, usize),
    epilogue: Epilogue,
    seed: u64,
) -> f64 {
    check_gemm_variant(
        context,
        resgraph::select::rule_based_gemm_variant(context, Precision::F32),
        shape,
        epilogue,
        seed,
    )
}

/// Runs `act(X·Wᵀ + b [+ R])` for an `m`×`k` input and an `n`×`k` weight on `context` with the
/// given variant, checks it against the reference and returns the relative error.
fn check_gemm_variant(
    context: &GpuContext,
    variant: GemmVariant,
    shape: (usize, usize, usize),
    epilogue: Epilogue,
    seed: u64,
) -> f64 {
    check_kernel_choice(context, KernelChoice::Gemm(variant), shape, epilogue, seed)
}

/// As [`check_gemm_variant`], with any kernel the tuner may choose for a layer: a GEMM variant
/// or the texture GEMV (the variant a model would run on the device).
fn check_kernel_choice(
    context: &GpuContext,
    choice: KernelChoice,
    shape: (usize, usize, usize),
    epilogue: Epilogue,
    seed: u64,
) -> f64 {
    let kernel = match choice {
        KernelChoice::Gemm(variant) => LayerKernel::Gemm(variant),
        KernelChoice::GemvTexture => LayerKernel::GemvForDevice,
    };
    pollster::block_on(common::check_layer(context, kernel, shape, epilogue, seed))
}

/// Shapes that hit every edge: one row, one column, K of one, primes, and non-multiples of the
/// kernel's 4- and 8-wide column tiles and its 8-, 16- and 64-wide row groups.
/// (M, N, K). K covers both ways the register-blocked kernels read activations: four at a time
/// where K is a multiple of 4 (8, 64, 1000; 4 and 12 end half-way through a chunk of 8), one at a
/// time otherwise.
const AWKWARD_SHAPES: [(usize, usize, usize); 14] = [
    (3, 17, 4),
    (33, 20, 12),
    (1, 1, 1),
    (1, 3, 17),
    (3, 17, 1),
    (17, 127, 3),
    (127, 17, 1000),
    (1, 1000, 127),
    (1000, 3, 17),
    (65, 9, 33),
    (63, 65, 7),
    (129, 31, 257),
    (8, 8, 8),
    (64, 64, 64),
];

#[test]
fn every_epilogue_matches_the_reference_on_awkward_shapes_on_every_backend() {
    for (backend, context) in common::contexts() {
        for variant in variants(context) {
            let mut worst = 0.0f64;
            for (index, &shape) in AWKWARD_SHAPES.iter().enumerate() {
                for (number, epilogue) in Epilogue::ALL.into_iter().enumerate() {
                    let seed = (index * 4 + number) as u64;
                    let error = check_gemm_variant(context, variant, shape, epilogue, seed);
                    worst = worst.max(error);
                }
            }
            println!("{backend} {variant:?}: worst relative error on awkward shapes {worst:.2e}");
        }
    }
}

/// Shapes for every point of the tiled family: rows short of, equal to and past a block (1, 3,
/// 17, 127, 1000), one column, columns short of and past a 16-column weight block, and K shorter
/// than any slice and neither a multiple of 4 nor of any slice depth (3, 17, 37, 101). All run
/// with one pipeline per point (ReLU and residual, activations read one at a time), because
/// building a pipeline, not running it, is what costs time on lavapipe; the vec4 reads and the
/// other epilogues are the same code in every point and are checked with the default point
/// above.
const TILED_FAMILY_SHAPES: [(usize, usize, usize); 5] = [
    (17, 33, 37),
    (127, 20, 101),
    (1, 130, 3),
    (3, 1, 17),
    (1000, 9, 37),
];

#[test]
fn every_point_of_the_tiled_family_matches_the_reference_on_every_backend() {
    // The tuner may choose any point of the family on a user's GPU, so every point (not only
    // the default that the other tests run) is checked here, on both adapters.
    let family = TiledGemmConfig::family();
    for (backend, context) in common::contexts() {
        let mut checked = 0;
        let mut worst = 0.0f64;
        for config in &family {
            if config.check_limits(context).is_err() {
                continue;
            }
            let epilogue = Epilogue {
                activation: Activation::Relu,
                add_residual: true,
            };
            for (index, &shape) in TILED_FAMILY_SHAPES.iter().enumerate() {
                let variant = GemmVariant::Tiled(*config);
                let error = check_gemm_variant(context, variant, shape, epilogue, index as u64);
                worst = worst.max(error);
            }
            checked += 1;
        }
        println!(
            "{backend}: {checked} of {} tiled points checked, worst relative error {worst:.2e}",
            family.len()
        );
        // lavapipe and llvmpipe allow 1024 invocations and 32 KiB of workgroup memory, which
        // every point fits.
        assert_eq!(checked, family.len(), "{backend}: points left unchecked");
    }
}

#[test]
fn a_tiled_point_past_the_device_limits_is_a_typed_error() {
    let context = common::primary_context();
    let too_many_invocations = TiledGemmConfig {
        thread_rows: 64,
        thread_cols: 64,
        micro_rows: 1,
        micro_cols: 4,
        k_depth: 4,
        prefetch: false,
    };
    let error = error_preparing(context, GemmVariant::Tiled(too_many_invocations));
    match &error {
        resgraph::Error::DeviceLimit {
            limit, requested, ..
        } => {
            assert_eq!(*limit, "max_compute_invocations_per_workgroup", "{error}");
            assert_eq!(*requested, 4096);
        }
        other => panic!("expected DeviceLimit, got {other}"),
    }
    assert!(!GemmVariant::Tiled(too_many_invocations).supported_by(context, Precision::F32));
    let inexpressible = TiledGemmConfig {
        micro_cols: 12,
        ..TiledGemmConfig::DEFAULT
    };
    let error = error_preparing(context, GemmVariant::Tiled(inexpressible));
    assert!(
        matches!(error, resgraph::Error::UnsupportedShape { .. }),
        "{error}"
    );
}

#[test]
fn every_variant_label_names_it_back() {
    let family = TiledGemmConfig::family();
    let variants = GemmVariant::ALL
        .into_iter()
        .chain(family.iter().map(|config| GemmVariant::Tiled(*config)));
    let mut labels = std::collections::HashSet::new();
    for variant in variants {
        let label = variant.label();
        assert_eq!(GemmVariant::from_label(&label), Some(variant), "{label}");
        labels.insert(label);
    }
    assert_eq!(labels.len(), GemmVariant::ALL.len() - 1 + family.len());
    assert_eq!(
        GemmVariant::from_label("gemm_tiled/99x1t/1x1/k1/direct"),
        None
    );
}

#[test]
fn a_single_row_with_a_long_inner_dimension_matches_the_reference() {
    let context = common::primary_context();
    for epilogue in Epilogue::ALL {
        check_gemm(context, (1, 5, 4099), epilogue, 7);
    }
}

#[test]
fn a_large_square_gemm_matches_the_reference_with_every_variant() {
    let context = common::primary_context();
    let epilogue = Epilogue {
        activation: Activation::Relu,
        add_residual: true,
    };
    for variant in variants(context) {
        check_gemm_variant(context, variant, (300, 257, 520), epilogue, 11);
    }
}

#[test]
fn the_subgroup_variant_is_chosen_exactly_where_subgroups_of_at_least_8_exist() {
    // The subgroup GEMM is the fast path on every device with subgroups of at least 8
    // invocations (lavapipe's are 8, NVIDIA's 32): if an adapter that has them stopped getting
    // it, the fast path would silently disappear. The same adapter, opened without SUBGROUP,
    // must get the portable GEMM. At least one test adapter must have subgroups, or this test
    // would never see the subgroup variant chosen.
    let mut adapters_with_subgroups = 0;
    for (backend, context) in common::contexts() {
        let info = context.adapter_info();
        let has_subgroups = context.features().contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size >= INNER_CHUNK as u32;
        if info.name.contains("llvmpipe") && info.backend == wgpu::Backend::Vulkan {
            assert!(has_subgroups, "lavapipe lost its subgroups of 8: {info:?}");
        }
        let expected = if has_subgroups {
            adapters_with_subgroups += 1;
            GemmVariant::Subgroup
        } else {
            GemmVariant::Portable
        };
        assert_eq!(
            resgraph::select::rule_based_gemm_variant(context, Precision::F32),
            expected,
            "{backend}: {} (subgroups of {} to {})",
            info.name,
            info.subgroup_min_size,
            info.subgroup_max_size
        );
        let without_subgroups = common::context_without(&backend, wgpu::Features::SUBGROUP);
        assert_eq!(
            resgraph::select::rule_based_gemm_variant(&without_subgroups, Precision::F32),
            GemmVariant::Portable,
            "{backend}: a device created without SUBGROUP"
        );
    }
    assert!(
        adapters_with_subgroups > 0,
        "no test adapter has subgroups of at least {INNER_CHUNK} invocations, so the subgroup \
         GEMM was never chosen (lavapipe, on Vulkan, has subgroups of 8)"
    );
}

/// Prepares a small GEMM with `variant` on a device that cannot run it, and returns the error.
fn error_preparing(context: &GpuContext, variant: GemmVariant) -> resgraph::Error {
    let weights = LinearWeights::upload(context, 3, 5, &[0.5; 15], None).expect("weights");
    let input = DeviceMatrix::new(context, "x", 2, 5).expect("x");
    let output = DeviceMatrix::new(context, "y", 2, 3).expect("y");
    let operands = GemmOperands {
        input: &input,
        weights: &weights,
        residual: None,
        output: &output,
        activation: Activation::Identity,
    };
    match prepare_gemm(context, &operands, variant) {
        Ok(_) => panic!("{variant:?} was prepared on a device that lacks what it needs"),
        Err(error) => error,
    }
}

#[test]
fn a_variant_the_device_lacks_is_a_typed_error() {
    // Every adapter, opened without SUBGROUP, is a device that lacks what the subgroup and
    // cooperative variants need: asking for either must be the typed error, not a shader that
    // fails to compile or a wrong answer.
    for (backend, context) in common::contexts_without(wgpu::Features::SUBGROUP) {
        assert!(!context.features().contains(wgpu::Features::SUBGROUP));
        for variant in [
            GemmVariant::Subgroup,
            GemmVariant::Cooperative,
            GemmVariant::CooperativeStaged,
            GemmVariant::CooperativeStagedVec4,
        ] {
            assert!(
                !variant.supported_by(&context, Precision::F32),
                "{backend}: {variant:?} claims to run without SUBGROUP"
            );
            let error = error_preparing(&context, variant);
            match &error {
                resgraph::Error::MissingFeature { feature, .. } => {
                    if variant == GemmVariant::Subgroup {
                        assert!(feature.contains("SUBGROUP"), "{backend}: {error}");
                    }
                }
                other => panic!("{backend}: expected MissingFeature for {variant:?}, got {other}"),
            }
        }
    }
}

#[test]
fn zero_weights_with_relu_pass_a_non_negative_residual_through_bit_for_bit() {
    // The identity shortcut of the residual block, at kernel level: relu(0·x + 0 + r) == r.
    let (m, n, k) = (33, 19, 21);
    for (_, context) in common::contexts() {
        let mut rng = common::rng(3);
        let residual_values = common::uniform(&mut rng, m * n, 0.0, 10.0);
        let weights =
            LinearWeights::upload(context, n, k, &vec![0.0; n * k], None).expect("upload");
        let input = DeviceMatrix::from_host(
            context,
            "x",
            m,
            k,
            &common::uniform(&mut rng, m * k, -1.0, 1.0),
        )
        .expect("x");
        let residual = DeviceMatrix::from_host(context, "r", m, n, &residual_values).expect("r");
        let output = DeviceMatrix::new(context, "out", m, n).expect("out");
        output.fill(context, f32::NAN).expect("poison");
        let gemm = prepare_gemm(
            context,
            &GemmOperands {
                input: &input,
                weights: &weights,
                residual: Some(&residual),
                output: &output,
                activation: Activation::Relu,
            },
            resgraph::select::rule_based_gemm_variant(context, Precision::F32),
        )
        .expect("gemm");
        gemm.submit(context).expect("submit");
        context.wait_idle().expect("wait");
        let out = output.read(context).expect("read");
        let identical = out
            .iter()
            .zip(&residual_values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(identical, "zero block changed its input");
    }
}

#[test]
fn pipelines_are_built_once_and_then_reused() {
    let context = common::primary_context();
    for variant in variants(context) {
        for epilogue in Epilogue::ALL {
            let kernel = variant.kernel();
            let key = KernelKey::new(
                kernel.source_key(Precision::F32),
                kernel.entry_point,
                gemm_constants(context, variant, epilogue, 64),
            );
            let descriptor = PipelineDescriptor {
                key: &key,
                source: &|| generate(kernel, Precision::F32),
                bindings: kernel.bindings,
            };
            let pipelines = context.pipelines();
            let first = pipelines
                .get_or_create(context.device(), &descriptor)
                .expect("pipeline");
            let again = pipelines
                .get_or_create(context.device(), &descriptor)
                .expect("pipeline");
            assert!(
                std::sync::Arc::ptr_eq(&first, &again),
                "{variant:?} {epilogue}"
            );
        }
    }
}

#[test]
fn results_are_deterministic_across_runs() {
    let context = common::primary_context();
    let epilogue = Epilogue {
        activation: Activation::Relu,
        add_residual: true,
    };
    let first = check_gemm(context, (37, 41, 43), epilogue, 5);
    let second = check_gemm(context, (37, 41, 43), epilogue, 5);
    assert_eq!(first.to_bits(), second.to_bits());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_and_epilogues_match_the_reference(
        m in 1usize..=300,
        n in 1usize..=300,
        k in 1usize..=300,
        variant in 0usize..4,
        seed in any::<u64>(),
    ) {
        for (_, context) in common::contexts() {
            for kernel in variants(context) {
                check_gemm_variant(context, kernel, (m, n, k), Epilogue::ALL[variant], seed);
            }
        }
    }
}

#[test]
fn without_cooperative_matrices_the_cooperative_gemm_is_refused_and_tuning_falls_back() {
    // Every adapter, opened without wgpu's experimental cooperative-matrix feature (lavapipe and
    // llvmpipe never have it): there the cooperative variant must be a typed error when asked
    // for, never a candidate of the tuner, and a tuned layer must still run (on another kernel)
    // and match the reference. An adapter that has the feature runs the cooperative variant in
    // every correctness test above as well.
    for (backend, context) in
        common::contexts_without(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        let context = &*context;
        assert!(
            !context
                .features()
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            "{backend}: the feature was requested although withheld"
        );
        assert!(context.cooperative_matrix_configs().is_empty());
        let cooperative = [
            GemmVariant::Cooperative,
            GemmVariant::CooperativeStaged,
            GemmVariant::CooperativeStagedVec4,
        ];
        for precision in [Precision::F32, Precision::F16] {
            for variant in cooperative {
                assert!(!variant.supported_by(context, precision), "{variant:?}");
            }
        }

        for variant in cooperative {
            let error = error_preparing(context, variant);
            match &error {
                resgraph::Error::MissingFeature { feature, .. } => {
                    assert!(
                        feature.contains("EXPERIMENTAL_COOPERATIVE_MATRIX"),
                        "{error}"
                    );
                }
                other => panic!("expected MissingFeature for {variant:?}, got {other}"),
            }
        }

        let dir = tempfile::tempdir().expect("temp dir");
        let mut cache = resgraph::tune::TuningCache::open(Some(dir.path().join("tuning.json")));
        let shape = (17, 40, 24);
        let entry = pollster::block_on(resgraph::tune::choose(
            context,
            &mut cache,
            Precision::F32,
            shape,
            resgraph::tune::LayerCandidates::ALL,
        ))
        .expect("tuning without cooperative matrices");
        assert!(!entry.measured.is_empty(), "nothing was measured");
        assert!(
            entry.measured.iter().all(|(choice, _)| cooperative
                .iter()
                .all(|variant| *choice != KernelChoice::Gemm(*variant))),
            "the tuner timed a variant the device cannot run: {:?}",
            entry.measured
        );
        check_kernel_choice(
            context,
            entry.choice,
            shape,
            Epilogue {
                activation: Activation::Relu,
                add_residual: true,
            },
            29,
        );
    }
}

#[test]
fn cooperative_tile_shapes_from_a_host_are_used_only_with_the_feature() {
    // A host passing tile configurations for a device created without the feature must not
    // switch the cooperative kernel on (its shader would not compile there): checked on every
    // adapter, opened without the feature. With the feature, where an adapter has it, they are
    // what the cooperative kernel is chosen by.
    let claimed = vec![
        cooperative_config(Precision::F32),
        cooperative_config(Precision::F16),
    ];
    let host_context_on = |context: &GpuContext| {
        GpuContext::from_device(context.device().clone(), context.queue().clone())
            .with_cooperative_matrix_configs(claimed.clone())
    };
    for (backend, context) in common::contexts() {
        let without_feature =
            common::context_without(&backend, wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let host_context = host_context_on(&without_feature);
        assert!(
            host_context.cooperative_matrix_configs().is_empty(),
            "{backend}"
        );
        for variant in [
            GemmVariant::Cooperative,
            GemmVariant::CooperativeStaged,
            GemmVariant::CooperativeStagedVec4,
        ] {
            assert!(!variant.supported_by(&host_context, Precision::F32));
            assert!(!variant.supported_by(&host_context, Precision::F16));
        }

        if context
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            assert_eq!(
                host_context_on(context).cooperative_matrix_configs(),
                claimed.as_slice(),
                "{backend}"
            );
        }
    }
}
