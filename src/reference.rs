//! The plain-Rust forward pass, accumulating in f64: the oracle every kernel is checked against.
//! It is deliberately the most obvious code possible, with no blocking or reordering.

use crate::epilogue::Epilogue;

/// A linear layer as PyTorch stores it: `weight` is `[out_features, in_features]` row-major,
/// `bias` is `[out_features]`.
#[derive(Clone, Copy, Debug)]
pub struct LinearRef<'a> {
    /// Row-major `[out_features, in_features]`.
    pub weight: &'a [f32],
    /// `[out_features]`.
    pub bias: &'a [f32],
    /// The input width K.
    pub in_features: usize,
    /// The output width N.
    pub out_features: usize,
}

/// `act(input · weightᵀ + bias [+ residual])` for `rows` input rows, in f64.
///
/// `input` is `[rows, in_features]`, `residual` (when the epilogue adds one) is
/// `[rows, out_features]`; the result is `[rows, out_features]`.
///
/// # Panics
/// If a slice is shorter than its shape says: the reference is a test oracle, and its callers
/// build the shapes.
pub fn linear_f64(
    input: &[f64],
    rows: usize,
    layer: LinearRef<'_>,
    residual: Option<&[f64]>,
    epilogue: Epilogue,
) -> Vec<f64> {
    let (k, n) = (layer.in_features, layer.out_features);
    let mut output = vec![0.0f64; rows * n];
    for row in 0..rows {
        let x = &input[row * k..(row + 1) * k];
        for col in 0..n {
            let w = &layer.weight[col * k..(col + 1) * k];
            let mut sum = f64::from(layer.bias[col]);
            for (a, b) in x.iter().zip(w) {
                sum += a * f64::from(*b);
            }
            if epilogue.add_residual
                && let Some(residual) = residual
            {
                sum += residual[row * n + col];
            }
            output[row * n + col] = epilogue.activation.apply_f64(sum);
        }
    }
    output
}

/// Widens f32 values to f64.
pub fn to_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&value| f64::from(value)).collect()
}

/// `‖out − ref‖₂ / ‖ref‖₂`, or the absolute norm of the difference when the reference is all
/// zeros. Any NaN or infinity in `out`, or a length mismatch, gives `f64::INFINITY`, so that a
/// comparison against a tolerance never passes by accident.
pub fn relative_error(out: &[f32], reference: &[f64]) -> f64 {
    if out.len() != reference.len() {
        return f64::INFINITY;
    }
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (&o, &r) in out.iter().zip(reference) {
        if !o.is_finite() {
            return f64::INFINITY;
        }
        let d = f64::from(o) - r;
        diff += d * d;
        norm += r * r;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}
