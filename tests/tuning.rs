//! Kernel choice by measurement: the first compile measures and fills the cache, the second takes
//! every choice from it, tuned models still match the reference, a damaged cache is rebuilt, a
//! choice cached for other kernel sources is measured again, and candidates are timed with GPU
//! timestamps where the device has them and with the wall clock where it does not. (The tests that
//! need no GPU, of the cache file and the checks, are inline in `src/tune.rs`.)

mod common;

use std::sync::Arc;

use resgraph::exec::{CompileOptions, CompiledModel, Tuning};
use resgraph::gpu::context::GpuContext;
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::kernels::residual_block;
use resgraph::precision::Precision;
use resgraph::reference::forward_f64;
use resgraph::tune::{self, LayerCandidates, TuningCache, TuningClock};

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
    assert_eq!(json["version"], 2);
    assert_eq!(
        json["entries"].as_array().map(|entries| entries.len()),
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
    pollster::block_on(resgraph::tune::choose(
        &context,
        &mut first,
        precision,
        (2, 8, 8),
        LayerCandidates::ALL,
    ))
    .expect("tune");
    pollster::block_on(resgraph::tune::choose(
        &context,
        &mut second,
        precision,
        (3, 8, 8),
        LayerCandidates::ALL,
    ))
    .expect("tune");
    first.save().expect("save");
    second.save().expect("save");
    let merged = resgraph::tune::TuningCache::open(Some(path));
    for rows in [2, 3] {
        let key =
            resgraph::tune::shape_key(&context, precision, (rows, 8, 8), LayerCandidates::ALL);
        assert!(merged.get(&key).is_some(), "lost the entry for {rows} rows");
    }
}

#[test]
fn a_choice_cached_for_other_kernel_sources_is_measured_again() {
    // What a kernel edit does to the cache: every key's candidate checksum changes, so no entry
    // the old sources were timed with is used.
    let context = common::primary_context();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tuning.json");
    let precision = Precision::F32;
    let shape = (4, 16, 24);
    let choose = |cache: &mut TuningCache| {
        pollster::block_on(tune::choose(
            context,
            cache,
            precision,
            shape,
            LayerCandidates::ALL,
        ))
        .expect("tune")
    };
    let mut cache = TuningCache::open(Some(path.clone()));
    let first = choose(&mut cache);
    assert!(!first.measured.is_empty());
    cache.save().expect("save");
    let mut cache = TuningCache::open(Some(path.clone()));
    let again = choose(&mut cache);
    assert!(
        again.measured.is_empty(),
        "the unchanged key was measured again"
    );
    assert_eq!(again.clock, first.clock);

    let text = std::fs::read_to_string(&path).expect("read");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let entries = json["entries"].as_array_mut().expect("entries");
    assert_eq!(entries.len(), 1);
    for entry in entries {
        let checksum = entry["key"]["candidate_checksum"]
            .as_str()
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .expect("a checksum in hex");
        entry["key"]["candidate_checksum"] = format!("{:016x}", checksum ^ 1).into();
    }
    std::fs::write(&path, json.to_string()).expect("write");
    let mut cache = TuningCache::open(Some(path));
    let after_edit = choose(&mut cache);
    assert!(
        !after_edit.measured.is_empty(),
        "a choice cached for other kernel sources was used"
    );
}

#[test]
fn candidates_are_timed_with_gpu_timestamps_where_the_device_has_them() {
    let with_timestamps = common::contexts_where("TIMESTAMP_QUERY", |context| {
        context.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    });
    for (backend, context) in with_timestamps {
        let mut cache = TuningCache::open(None);
        let entry = pollster::block_on(tune::choose(
            context,
            &mut cache,
            Precision::F32,
            (5, 32, 24),
            LayerCandidates::ALL,
        ))
        .expect("tune");
        assert_eq!(entry.clock, TuningClock::GpuTimestamps, "{backend}");
        assert_measured(&entry.measured, &backend);
        if residual_block::supported(context, Precision::F32, (5, 32, 24)) {
            let split = (entry.choice, entry.choice);
            let block = pollster::block_on(tune::choose_block(
                context,
                &mut cache,
                Precision::F32,
                (5, 32, 24),
                split,
            ))
            .expect("tune the block");
            assert_eq!(block.clock, TuningClock::GpuTimestamps, "{backend} block");
            assert_measured(&block.measured, &backend);
        }
    }
}

#[test]
fn without_timestamp_queries_candidates_are_timed_with_the_wall_clock() {
    for (backend, context) in common::contexts_without(wgpu::Features::TIMESTAMP_QUERY) {
        let mut cache = TuningCache::open(None);
        let entry = pollster::block_on(tune::choose(
            &context,
            &mut cache,
            Precision::F32,
            (5, 32, 24),
            LayerCandidates::ALL,
        ))
        .expect("tune");
        assert_eq!(entry.clock, TuningClock::WallClock, "{backend}");
        assert_measured(&entry.measured, &backend);
    }
}

/// Fails unless something was timed and every time is above zero.
fn assert_measured<T: std::fmt::Debug>(measured: &[(T, std::time::Duration)], backend: &str) {
    assert!(!measured.is_empty(), "{backend}: nothing was timed");
    for (candidate, time) in measured {
        assert!(
            !time.is_zero(),
            "{backend}: {candidate:?} was timed at zero"
        );
    }
}

#[test]
fn the_tiled_family_is_searched_within_its_budget_and_its_point_is_cached() {
    use resgraph::kernels::gemm::GemmVariant;
    use resgraph::tune::{KernelChoice, SearchStop};
    let context = common::primary_context();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tuning.json");
    let precision = Precision::F32;
    let shape = (70, 48, 40);
    let budget = std::time::Duration::from_millis(300);
    let allowed = LayerCandidates {
        texture_gemv: false,
        tiled_search: budget,
    };
    let offered = tune::tiled_candidates(context, precision, shape, allowed);
    assert_eq!(
        offered.len(),
        resgraph::kernels::gemm::TiledGemmConfig::family().len(),
        "lavapipe and llvmpipe can run every point"
    );
    let mut cache = TuningCache::open(Some(path.clone()));
    let entry = pollster::block_on(tune::choose(context, &mut cache, precision, shape, allowed))
        .expect("tune");
    let search = entry.tiled_search.expect("the family was searched");
    let timed_points: Vec<_> = entry
        .measured
        .iter()
        .filter_map(|(choice, _)| match choice {
            KernelChoice::Gemm(GemmVariant::Tiled(config)) => Some(*config),
            _ => None,
        })
        .collect();
    assert!(search.timed >= 1, "{search}");
    assert_eq!(search.points, offered.len());
    // Points are timed in the offered order, and every timed point agreed with the reference
    // (none was rejected on lavapipe or llvmpipe).
    assert_eq!(timed_points, offered[..search.timed].to_vec(), "{search}");
    assert!(entry.rejected.is_empty(), "{:?}", entry.rejected);
    match search.stopped {
        SearchStop::Budget => assert!(search.elapsed >= budget, "{search}"),
        SearchStop::Outclassed => assert!(search.timed >= 4, "{search}"),
        SearchStop::Exhausted => assert_eq!(search.timed, search.points, "{search}"),
    }
    cache.save().expect("save");
    // The stored label names the exact point back, whichever kernel won.
    let reopened = TuningCache::open(Some(path));
    assert_eq!(reopened.get(&entry.key), Some(entry.choice));

    // A zero budget leaves the family out, and is another key.
    let without = LayerCandidates {
        tiled_search: std::time::Duration::ZERO,
        ..allowed
    };
    assert!(tune::tiled_candidates(context, precision, shape, without).is_empty());
    let mut cache = TuningCache::open(None);
    let entry_without =
        pollster::block_on(tune::choose(context, &mut cache, precision, shape, without))
            .expect("tune");
    assert!(entry_without.tiled_search.is_none());
    assert_ne!(entry_without.key, entry.key);
    assert!(
        entry_without
            .measured
            .iter()
            .all(|(choice, _)| !matches!(choice, KernelChoice::Gemm(GemmVariant::Tiled(_))))
    );
}

#[test]
fn a_tiled_point_chosen_by_the_tuner_runs_a_model_that_matches_the_reference() {
    // Force the family's default point on every layer, as a tuner's choice would run it, through
    // the whole executor (residual blocks, the head) on both adapters.
    use resgraph::kernels::gemm::{GemmVariant, TiledGemmConfig};
    let graph = mlp(MlpShape::square(40, 2), 1.0, 9).expect("graph");
    for (backend, context) in common::contexts() {
        let context = common::shared(context);
        let options = CompileOptions {
            gemm_variant: Some(GemmVariant::Tiled(TiledGemmConfig::DEFAULT)),
            small_batch_kernel: false,
            ..CompileOptions::new(33)
        };
        let model =
            CompiledModel::compile(Arc::clone(&context), &graph, &options).expect("compile");
        assert!(
            model.step_kernels().contains(&"gemm_tiled"),
            "{backend}: {:?}",
            model.step_kernels()
        );
        let point = GemmVariant::Tiled(TiledGemmConfig::DEFAULT).label();
        assert!(
            model.step_kernel_labels().contains(&point),
            "{backend}: {:?} does not name {point}",
            model.step_kernel_labels()
        );
        let input = random_input(33 * graph.input_width(), 5);
        let output = model.run(&input).expect("run");
        let reference = forward_f64(&graph, &input, 33);
        common::assert_close(&output, &reference, 1e-5, &backend);
    }
}
