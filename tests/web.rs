//! resgraph in a browser: built for `wasm32-unknown-unknown` and run by `wasm-bindgen-test-runner`
//! in headless Chromium on its WebGPU adapter (`.ci/web-tests` says how). Every kernel is checked
//! against the f64 reference with its output poisoned first, as the native tests do; models load
//! from bytes, with ONNX external data as a second buffer, and are compared with onnxruntime's
//! outputs stored beside them. A browser without a WebGPU adapter fails these tests: it never
//! skips them.
#![cfg(target_arch = "wasm32")]

mod common;

use std::sync::Arc;

use common::{LayerKernel, assert_close, check_layer};
use resgraph::epilogue::Epilogue;
use resgraph::exec::{BlockFusion, CompileOptions, CompiledModel, Tuning};
use resgraph::gpu::context::{AdapterOptions, GpuContext};
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::kernels::gemm::GemmVariant;
use resgraph::kernels::gemv::GemvVariant;
use resgraph::model::npy::parse_npy;
use resgraph::precision::Precision;
use resgraph::reference::{forward_f64, to_f64};
use resgraph::tune::TuningCache;
use resgraph::{Error, parse_model_bytes};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// The browser's WebGPU adapter, or a failed test saying there is none.
// resgraph's API shares a context as an `Arc` (threads share it on native); on the web wgpu's
// types are not `Send`, and the page has one thread, so the `Arc` is only a shared handle.
#[allow(clippy::arc_with_non_send_sync)]
async fn context() -> Arc<GpuContext> {
    let options = AdapterOptions {
        backends: wgpu::Backends::BROWSER_WEBGPU,
        ..AdapterOptions::default()
    };
    match GpuContext::new_async(&options).await {
        Ok(context) => {
            let info = context.adapter_info();
            wasm_bindgen_test::console_log!(
                "adapter {:?} ({:?}), subgroups {}..{}, features {:?}",
                info.name,
                info.device_type,
                info.subgroup_min_size,
                info.subgroup_max_size,
                context.features()
            );
            Arc::new(context)
        }
        Err(error) => panic!("no WebGPU adapter: {error}"),
    }
}

/// (M, N, K): one row, one column, K of one, primes, and non-multiples of the kernels' 4- and
/// 8-wide tiles and their row groups; K a multiple of 4 and not.
const AWKWARD_SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (1, 3, 17),
    (3, 17, 4),
    (17, 127, 3),
    (127, 17, 64),
    (33, 20, 12),
    (65, 9, 33),
    (1000, 3, 17),
];

#[wasm_bindgen_test]
async fn every_gemm_variant_and_epilogue_matches_the_reference_on_awkward_shapes() {
    let context = context().await;
    let variants: Vec<GemmVariant> = GemmVariant::ALL
        .into_iter()
        .filter(|variant| variant.supported_by(&context, Precision::F32))
        .collect();
    assert!(
        variants.contains(&GemmVariant::Portable),
        "the portable GEMM runs everywhere: {variants:?}"
    );
    for variant in variants {
        let mut worst = 0.0f64;
        for (index, &shape) in AWKWARD_SHAPES.iter().enumerate() {
            for (number, epilogue) in Epilogue::ALL.into_iter().enumerate() {
                let seed = (index * 4 + number) as u64;
                let error =
                    check_layer(&context, LayerKernel::Gemm(variant), shape, epilogue, seed).await;
                worst = worst.max(error);
            }
        }
        wasm_bindgen_test::console_log!("{variant:?}: worst relative error {worst:.2e}");
    }
}

#[wasm_bindgen_test]
async fn the_texture_gemv_matches_the_reference_on_awkward_shapes() {
    let context = context().await;
    // wgpu's WebGPU backend offers no subgroups, so a browser runs the staged variant; the
    // subgroup variant is checked wherever an adapter has it, and refused with a typed error
    // where it has not.
    let staged = GemvVariant::Staged;
    assert!(
        staged.supported_by(&context),
        "WebGPU's limits run the staged GEMV"
    );
    let mut variants = vec![staged];
    if GemvVariant::Subgroup.supported_by(&context) {
        variants.push(GemvVariant::Subgroup);
    } else {
        common::assert_subgroup_gemv_is_refused(&context, "the browser's adapter");
    }
    for variant in variants {
        let mut worst = 0.0f64;
        for (index, &(_, n, k)) in AWKWARD_SHAPES.iter().chain(&[(0, 20, 257)]).enumerate() {
            for rows in [1, 3, 16] {
                for (number, epilogue) in Epilogue::ALL.into_iter().enumerate() {
                    let seed = 100 + (index * 8 + number) as u64 + rows as u64;
                    let shape = (rows, n, k);
                    let kernel = LayerKernel::Gemv(variant);
                    let error = check_layer(&context, kernel, shape, epilogue, seed).await;
                    worst = worst.max(error);
                }
            }
        }
        wasm_bindgen_test::console_log!(
            "texture GEMV {variant:?}: worst relative error {worst:.2e}"
        );
    }
}

/// A residual MLP compiled and run with the async API, checked against the f64 forward.
async fn check_mlp(
    context: &Arc<GpuContext>,
    shape: MlpShape,
    batch: usize,
    options: &CompileOptions,
) -> CompiledModel {
    let graph = mlp(shape, 1.0, 7).expect("graph");
    let model = CompiledModel::compile_async(Arc::clone(context), &graph, options)
        .await
        .expect("compile");
    let input = random_input(batch * shape.input_width, 8);
    let output = model.run_async(&input).await.expect("run");
    let reference = forward_f64(&graph, &input, batch);
    let what = format!("{shape:?} at batch {batch}");
    assert_close(&output, &reference, 1e-4, &what);
    model
}

#[wasm_bindgen_test]
async fn residual_blocks_match_the_reference_as_one_dispatch_or_two() {
    let context = context().await;
    let shape = MlpShape {
        input_width: 17,
        width: 33,
        hidden_width: 20,
        depth: 3,
        output_width: 5,
        residual: true,
    };
    let whole_block = resgraph::kernels::residual_block::check_supported(
        &context,
        Precision::F32,
        (9, shape.width, shape.hidden_width),
    );
    for fusion in [BlockFusion::Never, BlockFusion::Always] {
        let options = CompileOptions {
            block_fusion: fusion,
            ..CompileOptions::new(9)
        };
        for batch in [1, 9] {
            let model = check_mlp(&context, shape, batch, &options).await;
            let kernels = model.step_kernels();
            let fused = kernels
                .iter()
                .filter(|name| **name == "residual_block")
                .count();
            // Where the adapter cannot run the whole-block kernel (subgroups narrower than 8,
            // as SwiftShader's), `Always` falls back to two GEMM dispatches per block.
            let expected = if fusion == BlockFusion::Always && whole_block.is_ok() {
                3
            } else {
                0
            };
            assert_eq!(fused, expected, "{fusion:?}: {kernels:?} ({whole_block:?})");
        }
    }
    if let Err(error) = whole_block {
        assert!(matches!(error, Error::MissingFeature { .. }), "{error:?}");
        wasm_bindgen_test::console_log!("whole-block kernel refused as it should be: {error}");
    }
}

#[wasm_bindgen_test]
async fn the_tuner_measures_in_the_browser_and_keeps_its_choices_for_the_page() {
    let context = context().await;
    let shape = MlpShape {
        input_width: 24,
        width: 24,
        hidden_width: 40,
        depth: 2,
        output_width: 24,
        residual: true,
    };
    let options = CompileOptions {
        tuning: Tuning::Measure,
        gpu_timestamps: true,
        tiled_search: std::time::Duration::from_millis(200),
        ..CompileOptions::new(3)
    };
    let first = check_mlp(&context, shape, 3, &options).await;
    let report = first.tuning_report();
    assert!(
        report.measured > 0,
        "the first compile measures: {report:?}"
    );
    assert_eq!(report.save_error, None);
    // The page's cache now holds those shapes: the second compile measures nothing.
    let second = check_mlp(&context, shape, 2, &options).await;
    let report = second.tuning_report();
    assert_eq!(
        report.measured, 0,
        "the second compile reads the cache: {report:?}"
    );
    assert!(report.cached > 0, "{report:?}");
    let json = TuningCache::session_json();
    assert!(json.contains("\"entries\""), "{json}");
    assert!(
        TuningCache::load_session(&json) > 0,
        "the page's cache reloads from its JSON"
    );
}

/// One ONNX case written by `scripts/onnx_reference.py`: the model, an input and onnxruntime's
/// output, all as bytes.
struct OnnxCase {
    name: &'static str,
    model: &'static [u8],
    external_data: Option<&'static [u8]>,
    input: &'static [u8],
    expected: &'static [u8],
}

macro_rules! onnx_case {
    ($model:literal, $data:expr, $input:literal, $expected:literal) => {
        OnnxCase {
            name: $model,
            model: include_bytes!(concat!("data/onnx/", $model)),
            external_data: $data,
            input: include_bytes!(concat!("data/onnx/", $input)),
            expected: include_bytes!(concat!("data/onnx/", $expected)),
        }
    };
}

#[wasm_bindgen_test]
async fn residual_mlps_from_onnx_bytes_match_onnxruntime() {
    let context = context().await;
    let external: &'static [u8] = include_bytes!("data/onnx/external_data_w23_stem_head.onnx.data");
    let cases = [
        onnx_case!(
            "pytorch_gemm_w17_stem_head.onnx",
            None,
            "pytorch_gemm_w17_stem_head.b7.input.npy",
            "pytorch_gemm_w17_stem_head.b7.expected.npy"
        ),
        onnx_case!(
            "matmul_add_w33_hidden65.onnx",
            None,
            "matmul_add_w33_hidden65.b3.input.npy",
            "matmul_add_w33_hidden65.b3.expected.npy"
        ),
        onnx_case!(
            "external_data_w23_stem_head.onnx",
            Some(external),
            "external_data_w23_stem_head.b6.input.npy",
            "external_data_w23_stem_head.b6.expected.npy"
        ),
    ];
    for case in cases {
        let graph = parse_model_bytes(case.name, case.model, case.external_data)
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        let input = parse_npy(case.input).expect("input npy");
        let expected = parse_npy(case.expected).expect("expected npy");
        let batch = input.shape[0];
        let options = CompileOptions::new(batch);
        let model = CompiledModel::compile_async(Arc::clone(&context), &graph, &options)
            .await
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        let output = model.run_async(&input.data).await.expect("run");
        let error = assert_close(&output, &to_f64(&expected.data), 1e-4, case.name);
        wasm_bindgen_test::console_log!("{}: relative error {error:.2e}", case.name);
    }
}

#[wasm_bindgen_test]
async fn a_model_from_safetensors_bytes_runs_as_its_graph() {
    let context = context().await;
    let shape = MlpShape {
        input_width: 13,
        width: 17,
        hidden_width: 9,
        depth: 2,
        output_width: 3,
        residual: true,
    };
    let graph = mlp(shape, 1.0, 21).expect("graph");
    let bytes = resgraph::export_safetensors(&graph).expect("export");
    let loaded = parse_model_bytes("m.safetensors", &bytes, None).expect("from bytes");
    let model =
        CompiledModel::compile_async(Arc::clone(&context), &loaded, &CompileOptions::new(4))
            .await
            .expect("compile");
    let input = random_input(4 * 13, 3);
    let output = model.run_async(&input).await.expect("run");
    assert_close(
        &output,
        &forward_f64(&graph, &input, 4),
        1e-4,
        "safetensors bytes",
    );
}

#[wasm_bindgen_test]
async fn external_data_that_is_missing_or_short_is_a_one_line_error() {
    let model = include_bytes!("data/onnx/external_data_w23_stem_head.onnx");
    let data = include_bytes!("data/onnx/external_data_w23_stem_head.onnx.data");
    let missing = parse_model_bytes("m.onnx", model, None).expect_err("no side file");
    let text = missing.to_string();
    assert!(text.contains("was not given"), "{text}");
    let short = parse_model_bytes("m.onnx", model, Some(&data[..data.len() / 2]))
        .expect_err("a short side file");
    let text = short.to_string();
    assert!(matches!(short, Error::Model { .. }), "{short:?}");
    assert!(text.contains("too short") && !text.contains('\n'), "{text}");
}
