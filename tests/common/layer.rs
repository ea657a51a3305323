//! One layer, `act(X·Wᵀ + b [+ R])`, run by a chosen kernel into a NaN-poisoned output and
//! checked against the f64 reference: the check the GEMM and GEMV tests make on every backend,
//! and `tests/web.rs` in the browser. It awaits the readback, so it serves both; native tests
//! block on it.

use resgraph::epilogue::Epilogue;
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::GpuContext;
use resgraph::kernels::gemm::{GemmOperands, GemmVariant, LinearWeights, prepare_gemm};
use resgraph::kernels::gemv::{
    GemvOperands, GemvVariant, TextureWeights, prepare_gemv, prepare_gemv_variant,
};
use resgraph::reference::{LinearRef, linear_f64, to_f64};

/// f32 accumulation over K of at most a few thousand stays far inside this.
pub const LAYER_F32_TOLERANCE: f64 = 1e-5;

/// Which kernel computes the layer in [`check_layer`].
#[derive(Clone, Copy, Debug)]
pub enum LayerKernel {
    /// A GEMM variant on the blocked weight layout.
    Gemm(GemmVariant),
    /// A texture GEMV variant.
    Gemv(GemvVariant),
    /// The texture GEMV variant `prepare_gemv` takes for the device, as a model would run it.
    GemvForDevice,
}

/// Runs `act(X·Wᵀ + b [+ R])` for an `m`×`k` input and an `n`×`k` weight on `context` with
/// `kernel`, into an output poisoned with NaN first; fails the test unless it is within
/// [`LAYER_F32_TOLERANCE`] of the f64 reference, and returns the relative error.
pub async fn check_layer(
    context: &GpuContext,
    kernel: LayerKernel,
    (m, n, k): (usize, usize, usize),
    epilogue: Epilogue,
    seed: u64,
) -> f64 {
    let what = format!(
        "{kernel:?} m={m} n={n} k={k} {epilogue} on {:?}",
        context.adapter_info().backend
    );
    let mut rng = super::rng(seed);
    let scale = 1.0 / (k as f32).sqrt();
    let x = super::uniform(&mut rng, m * k, -1.0, 1.0);
    let w = super::uniform(&mut rng, n * k, -scale, scale);
    let b = super::uniform(&mut rng, n, -scale, scale);
    let r = super::uniform(&mut rng, m * n, -1.0, 1.0);
    let input = DeviceMatrix::from_host(context, "x", m, k, &x).expect("upload x");
    let residual = DeviceMatrix::from_host(context, "r", m, n, &r).expect("upload r");
    let output = DeviceMatrix::new(context, "out", m, n).expect("allocate out");
    output.fill(context, f32::NAN).expect("poison out");
    let residual = epilogue.add_residual.then_some(&residual);
    let submitted = match kernel {
        LayerKernel::Gemm(variant) => {
            let weights = LinearWeights::upload(context, n, k, &w, Some(&b)).expect("weights");
            let operands = GemmOperands {
                input: &input,
                weights: &weights,
                residual,
                output: &output,
                activation: epilogue.activation,
            };
            prepare_gemm(context, &operands, variant).and_then(|gemm| gemm.submit(context))
        }
        LayerKernel::Gemv(_) | LayerKernel::GemvForDevice => {
            let weights = TextureWeights::upload(context, n, k, &w, Some(&b)).expect("weights");
            let operands = GemvOperands {
                input: &input,
                weights: &weights,
                residual,
                output: &output,
                activation: epilogue.activation,
            };
            match kernel {
                LayerKernel::Gemv(variant) => prepare_gemv_variant(context, &operands, variant),
                _ => prepare_gemv(context, &operands),
            }
            .and_then(|gemv| gemv.submit(context))
        }
    };
    submitted.unwrap_or_else(|error| panic!("{what}: {error}"));
    let out = output
        .read_async(context)
        .await
        .unwrap_or_else(|error| panic!("{what}: reading back: {error}"));
    let layer = LinearRef {
        weight: &w,
        bias: &b,
        in_features: k,
        out_features: n,
    };
    let reference = linear_f64(&to_f64(&x), m, layer, Some(&to_f64(&r)), epilogue);
    super::assert_close(&out, &reference, LAYER_F32_TOLERANCE, &what)
}

/// Fails the test unless preparing the subgroup GEMV on `context` is the typed `MissingFeature`
/// error (on an adapter without subgroups of at least 8); `what` names the adapter.
pub fn assert_subgroup_gemv_is_refused(context: &GpuContext, what: &str) {
    let weights = TextureWeights::upload(context, 4, 4, &[0.0; 16], None).expect("weights");
    let input = DeviceMatrix::new(context, "x", 1, 4).expect("x");
    let output = DeviceMatrix::new(context, "y", 1, 4).expect("y");
    let operands = GemvOperands {
        input: &input,
        weights: &weights,
        residual: None,
        output: &output,
        activation: resgraph::epilogue::Activation::Identity,
    };
    let error = prepare_gemv_variant(context, &operands, GemvVariant::Subgroup)
        .expect_err("the subgroup gemv without subgroups");
    assert!(
        matches!(error, resgraph::Error::MissingFeature { .. }),
        "{what}: {error}"
    );
}
