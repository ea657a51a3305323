//! Kernel choice by measurement: the first compile measures and fills the cache, the second takes
//! every choice from it, tuned models still match the reference, and a damaged cache is rebuilt.

mod common;

use std::sync::Arc;

use resgraph::exec::{CompileOptions, CompiledModel, Tuning};
use resgraph::gpu::context::GpuContext;
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::reference::forward_f64;

fn tuned(
    context: &Arc<GpuContext>,
    graph: &resgraph::graph::Graph,
    batch: usize,
    cache: &std::path::Path,
) -> CompiledModel {
    let options = CompileOptions {
        tuning: Tuning::Measure,
        tuning_cache: Some(cache.to_path_buf()),
        ..CompileOptions::new(batch)
    };
    CompiledModel::compile(Arc::clone(context), graph, &options).expect("compile")
}

#[test]
fn the_second_compile_takes_every_choice_from_the_cache() {
    let context = common::shared_primary_context();
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("tuning.json");
    let shape = MlpShape {
        input_width: 20,
        width: 48,
        hidden_width: 80,
        depth: 3,
        output_width: 5,
        residual: true,
    };
    let graph = mlp(shape, 1.0, 4).expect("graph");
    // Distinct shapes: stem, fc1, fc2, head, and the residual block (timed whole against its two
    // layers) where the device can run the whole-block kernel.
    for batch in [1, 96] {
        let block_shapes = usize::from(resgraph::kernels::residual_block::supported(
            &context,
            resgraph::precision::Precision::F32,
            (batch, 48, 80),
        ));
        let first = tuned(&context, &graph, batch, &cache);
        assert_eq!(first.tuning_report().blocks.len(), block_shapes);
        assert_eq!(
            first.tuning_report().measured,
            4 + block_shapes,
            "batch {batch}"
        );
        assert_eq!(first.tuning_report().cached, 0);
        assert!(cache.exists());
        let second = tuned(&context, &graph, batch, &cache);
        assert_eq!(second.tuning_report().measured, 0, "batch {batch} re-tuned");
        assert_eq!(second.tuning_report().cached, 4 + block_shapes);
        assert_eq!(first.step_kernels(), second.step_kernels());
        let input = random_input(batch * 20, 3);
        let output = second.run(&input).expect("run");
        let what = format!("tuned {:?} batch {batch}", second.step_kernels());
        common::assert_close(&output, &forward_f64(&graph, &input, batch), 1e-5, &what);
    }
}

#[test]
fn a_damaged_cache_is_rebuilt_not_an_error() {
    let context = common::shared_primary_context();
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("tuning.json");
    std::fs::write(&cache, b"{ this is not json").expect("write");
    let graph = mlp(MlpShape::square(16, 1), 1.0, 1).expect("graph");
    let model = tuned(&context, &graph, 2, &cache);
    // One layer shape (both layers are 16x16), and the block where the kernel can run it.
    let shapes = 1 + usize::from(resgraph::kernels::residual_block::supported(
        &context,
        resgraph::precision::Precision::F32,
        (2, 16, 16),
    ));
    assert_eq!(model.tuning_report().blocks.len(), shapes - 1);
    assert_eq!(model.tuning_report().measured, shapes);
    let text = std::fs::read_to_string(&cache).expect("cache rewritten");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON now");
    assert_eq!(
        json["entries"].as_object().map(|entries| entries.len()),
        Some(shapes)
    );
}

#[test]
fn two_processes_tuning_at_once_keep_each_others_entries() {
    let context = common::shared_primary_context();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tuning.json");
    // Both "processes" open the cache before either saves, as concurrent compiles would.
    let mut first = resgraph::tune::TuningCache::open(Some(path.clone()));
    let mut second = resgraph::tune::TuningCache::open(Some(path.clone()));
    let precision = resgraph::precision::Precision::F32;
    resgraph::tune::choose(&context, &mut first, precision, (2, 8, 8)).expect("tune");
    resgraph::tune::choose(&context, &mut second, precision, (3, 8, 8)).expect("tune");
    first.save().expect("save");
    second.save().expect("save");
    let merged = resgraph::tune::TuningCache::open(Some(path));
    for rows in [2, 3] {
        let key = resgraph::tune::shape_key(&context, precision, rows, 8, 8);
        assert!(merged.get(&key).is_some(), "lost the entry for {rows} rows");
    }
}

#[test]
fn a_candidate_whose_result_disagrees_with_the_reference_is_rejected() {
    // The tuner keeps a kernel only if its result on the tuning data matches the portable
    // GEMM's: a miscompiled experimental kernel must never win on speed.
    use resgraph::precision::Precision;
    use resgraph::tune::check_candidate_output;
    let reference: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.125).collect();
    assert!(check_candidate_output(&reference, &reference, Precision::F32).is_ok());
    let nearly: Vec<f32> = reference.iter().map(|value| value * (1.0 + 1e-7)).collect();
    assert!(check_candidate_output(&nearly, &reference, Precision::F32).is_ok());
    let f16_rounding: Vec<f32> = reference.iter().map(|value| value * (1.0 + 1e-3)).collect();
    assert!(check_candidate_output(&f16_rounding, &reference, Precision::F32).is_err());
    assert!(check_candidate_output(&f16_rounding, &reference, Precision::F16).is_ok());
    let zeros = vec![0.0f32; reference.len()];
    assert!(check_candidate_output(&zeros, &reference, Precision::F16).is_err());
    let mut with_nan = reference.clone();
    with_nan[7] = f32::NAN;
    let why = check_candidate_output(&with_nan, &reference, Precision::F16).expect_err("NaN");
    assert!(why.contains("output[7]"), "{why}");
    assert!(check_candidate_output(&reference[1..], &reference, Precision::F16).is_err());
    // One wrong element among many: small in the L2 norm of the whole matrix, caught per element.
    let wide: Vec<f32> = (0..10_000).map(|i| 1.0 + (i % 3) as f32 * 0.1).collect();
    let mut one_off = wide.clone();
    one_off[9_999] += 0.5;
    let why = check_candidate_output(&one_off, &wide, Precision::F16).expect_err("one element");
    assert!(why.contains("element"), "{why}");
    // A reference that is not finite lets nothing pass.
    let mut broken_reference = reference.clone();
    broken_reference[3] = f32::NAN;
    assert!(check_candidate_output(&reference, &broken_reference, Precision::F16).is_err());
}
