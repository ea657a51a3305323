//! The plain-Rust forward pass, accumulating in f64: the oracle every kernel is checked against.
//! It is deliberately the most obvious code possible, with no blocking or reordering.

use crate::epilogue::Epilogue;

/// A linear layer as PyTorch stores it: `weight` is `[out_features, in_features]` row-major,
/// `bias` is `[out_features]`.
#[derive(Clone, Copy, Debug)]
pub struct LinearRef<'a> {
    /// Row-major `[out_features, in_features]`.
    pub weight: &'a [f32],
    /// `[out_features]`, or empty for a layer without bias.
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
            // An empty bias slice means the layer has none.
            let mut sum = layer.bias.get(col).copied().map_or(0.0, f64::from);
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

/// The whole graph's forward pass for `batch` rows of `input` (`batch × input_width`, row-major),
/// node by node, in f64. Returns `batch × output_width` values.
///
/// # Panics
/// If `input` is not `batch × input_width` long.
pub fn forward_f64(graph: &crate::graph::Graph, input: &[f32], batch: usize) -> Vec<f64> {
    use crate::graph::Op;
    assert_eq!(
        input.len(),
        batch * graph.input_width(),
        "reference input length"
    );
    let mut values: Vec<Vec<f64>> = Vec::with_capacity(graph.nodes().len());
    for node in graph.nodes() {
        let value = match &node.op {
            Op::Input => to_f64(input),
            Op::Linear { input, params } => linear_f64(
                &values[input.index()],
                batch,
                LinearRef {
                    weight: params.weight(),
                    bias: params.bias().unwrap_or(&[]),
                    in_features: params.in_features(),
                    out_features: params.out_features(),
                },
                None,
                Epilogue::default(),
            ),
            Op::Relu { input } => values[input.index()].iter().map(|v| v.max(0.0)).collect(),
            Op::Add { left, right } => values[left.index()]
                .iter()
                .zip(&values[right.index()])
                .map(|(a, b)| a + b)
                .collect(),
        };
        values.push(value);
    }
    values.swap_remove(graph.output().index())
}
