//! Inference batch norm folded into the convolution before it. At inference a batch norm is a
//! fixed per-channel affine map, `y = (x − mean) / √(var + ε) · γ + β`, so it can be absorbed into
//! the preceding convolution's weights and bias at load time and costs nothing when the network
//! runs. Pure Rust, no GPU type.

use crate::error::{Error, Result};

/// The parameters of an inference batch norm over `out_channels` channels, named as PyTorch's
/// `BatchNorm2d` state_dict and ONNX's `BatchNormalization` inputs name them.
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm<'a> {
    /// γ, the per-channel scale (`weight` in PyTorch, `scale` in ONNX).
    pub weight: &'a [f32],
    /// β, the per-channel shift (`bias` in PyTorch, `B` in ONNX).
    pub bias: &'a [f32],
    /// The per-channel mean gathered during training.
    pub running_mean: &'a [f32],
    /// The per-channel variance gathered during training.
    pub running_var: &'a [f32],
    /// ε, added to the variance before its square root (PyTorch's and ONNX's default is 1e-5).
    pub epsilon: f32,
}

/// The name that errors from folding carry in place of a file: the caller knows the file and the
/// node, and can name them when it reports the error.
const ERROR_SOURCE: &str = "<batch norm>";

/// Folds `batch_norm` into the convolution before it, returning the new weight (in the same
/// PyTorch layout `[out_channels, in_channels, kernel_h, kernel_w]`, or any layout whose leading
/// axis is the output channel) and the new bias `[out_channels]`.
///
/// Per output channel `c`: `scale = γ[c] / √(var[c] + ε)`, `w' = w · scale` and
/// `b' = (b − mean[c]) · scale + β[c]`, with `b = 0` when the convolution has no bias. Computed in
/// f64 and rounded to f32 once, so folding adds a single rounding.
///
/// # Errors
/// - [`Error::ZeroSized`] when `out_channels` is zero.
/// - [`Error::ShapeMismatch`] when `conv_weight` is empty or not a whole number of rows of
///   `out_channels`, or `conv_bias` or a batch-norm parameter is not `out_channels` long.
/// - [`Error::Model`] when a channel's `running_var + ε` is not positive (or is NaN), or when
///   finite inputs fold into a value that does not fit in f32. A non-finite parameter read from a
///   model folds into a non-finite value, as PyTorch would compute it, and is not an error here.
pub fn fold_batch_norm(
    conv_weight: &[f32],
    conv_bias: Option<&[f32]>,
    out_channels: usize,
    batch_norm: &BatchNorm<'_>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let what = format!("batch norm folded into a convolution of {out_channels} output channels");
    if out_channels == 0 {
        return Err(Error::zero_sized(what, "out_channels"));
    }
    if conv_weight.is_empty() || !conv_weight.len().is_multiple_of(out_channels) {
        return Err(Error::shape_mismatch(
            format!("{what}: convolution weight"),
            format!("a non-zero multiple of {out_channels} values"),
            format!("{} values", conv_weight.len()),
        ));
    }
    let per_channel = [
        ("convolution bias", conv_bias),
        ("batch norm weight", Some(batch_norm.weight)),
        ("batch norm bias", Some(batch_norm.bias)),
        ("batch norm running_mean", Some(batch_norm.running_mean)),
        ("batch norm running_var", Some(batch_norm.running_var)),
    ];
    for (name, values) in per_channel {
        if let Some(values) = values
            && values.len() != out_channels
        {
            return Err(Error::shape_mismatch(
                format!("{what}: {name}"),
                format!("{out_channels} values"),
                format!("{} values", values.len()),
            ));
        }
    }

    let weights_per_channel = conv_weight.len() / out_channels;
    let epsilon = f64::from(batch_norm.epsilon);
    let mut folded_weight = Vec::with_capacity(conv_weight.len());
    let mut folded_bias = Vec::with_capacity(out_channels);
    for channel in 0..out_channels {
        let gamma = f64::from(batch_norm.weight[channel]);
        let beta = f64::from(batch_norm.bias[channel]);
        let mean = f64::from(batch_norm.running_mean[channel]);
        let variance = f64::from(batch_norm.running_var[channel]);
        let bias = conv_bias.map_or(0.0, |bias| f64::from(bias[channel]));
        let denominator = variance + epsilon;
        // A NaN variance is no variance at all, so it is refused along with the non-positive.
        if denominator.is_nan() || denominator <= 0.0 {
            return Err(Error::Model {
                path: ERROR_SOURCE.into(),
                reason: format!(
                    "channel {channel}: running_var {variance} + epsilon {epsilon} = \
                     {denominator} is not positive, so γ / √(running_var + epsilon) is undefined"
                ),
            });
        }
        let scale = gamma / denominator.sqrt();
        let channel_inputs_finite = [gamma, beta, mean, variance, bias, epsilon]
            .iter()
            .all(|value| value.is_finite());
        // A value that overflowed f32 from finite inputs would run as infinity without a word,
        // so it is refused here, where the channel can still be named.
        let overflowed = |folded: f32, input: f64| {
            !folded.is_finite() && channel_inputs_finite && input.is_finite()
        };
        let weights = &conv_weight[channel * weights_per_channel..][..weights_per_channel];
        for &weight in weights {
            let folded = (f64::from(weight) * scale) as f32;
            if overflowed(folded, f64::from(weight)) {
                return Err(overflow_error(channel, "weight", weight, scale));
            }
            folded_weight.push(folded);
        }
        let folded = ((bias - mean) * scale + beta) as f32;
        if overflowed(folded, bias) {
            return Err(overflow_error(channel, "bias", bias as f32, scale));
        }
        folded_bias.push(folded);
    }
    Ok((folded_weight, folded_bias))
}

/// The error for a folded value that left f32's range although every input was finite.
fn overflow_error(channel: usize, which: &str, value: f32, scale: f64) -> Error {
    Error::Model {
        path: ERROR_SOURCE.into(),
        reason: format!(
            "channel {channel}: folding the {which} {value} with the scale \
             γ / √(running_var + epsilon) = {scale} gives a value past f32's range"
        ),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::epilogue::Epilogue;
    use crate::reference::{Conv2dRef, conv2d_f64, to_f64};

    fn random_values(rng: &mut StdRng, len: usize, range: std::ops::Range<f32>) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(range.clone())).collect()
    }

    /// Owned batch-norm parameters, so that a test can break one of them.
    struct Parameters {
        weight: Vec<f32>,
        bias: Vec<f32>,
        running_mean: Vec<f32>,
        running_var: Vec<f32>,
        epsilon: f32,
    }

    impl Parameters {
        fn random(rng: &mut StdRng, channels: usize) -> Self {
            Parameters {
                weight: random_values(rng, channels, 0.5..2.0),
                bias: random_values(rng, channels, -1.0..1.0),
                running_mean: random_values(rng, channels, -1.0..1.0),
                running_var: random_values(rng, channels, 0.01..3.0),
                epsilon: 1e-5,
            }
        }

        fn view(&self) -> BatchNorm<'_> {
            BatchNorm {
                weight: &self.weight,
                bias: &self.bias,
                running_mean: &self.running_mean,
                running_var: &self.running_var,
                epsilon: self.epsilon,
            }
        }
    }

    fn relative_error_f64(actual: &[f64], expected: &[f64]) -> f64 {
        assert_eq!(actual.len(), expected.len());
        let difference: f64 = actual
            .iter()
            .zip(expected)
            .map(|(a, e)| (a - e) * (a - e))
            .sum();
        let norm: f64 = expected.iter().map(|e| e * e).sum();
        (difference / norm).sqrt()
    }

    #[test]
    fn convolving_with_the_folded_weights_equals_convolving_then_normalising() {
        let mut rng = StdRng::seed_from_u64(7);
        // (batch, height, width, in_channels, out_channels, kernel, stride, padding, bias)
        let shapes = [
            (1, 5, 3, 3, 17, (3, 3), (1, 1), (1, 1, 1, 1), true),
            (2, 7, 9, 1, 3, (1, 1), (2, 2), (0, 0, 0, 0), false),
            (3, 11, 6, 17, 1, (7, 5), (2, 1), (3, 2, 3, 1), true),
            (1, 4, 4, 2, 5, (2, 2), (2, 2), (0, 1, 1, 0), false),
        ];
        for (batch, height, width, in_channels, out_channels, kernel, stride, padding, has_bias) in
            shapes
        {
            let weight = random_values(
                &mut rng,
                out_channels * in_channels * kernel.0 * kernel.1,
                -1.0..1.0,
            );
            let bias = random_values(&mut rng, out_channels, -1.0..1.0);
            let conv_bias = has_bias.then_some(bias.as_slice());
            let parameters = Parameters::random(&mut rng, out_channels);
            let input = to_f64(&random_values(
                &mut rng,
                batch * height * width * in_channels,
                -1.0..1.0,
            ));
            let layer = |weight, bias| Conv2dRef {
                weight,
                bias,
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
            };

            let (convolved, _) = conv2d_f64(
                &input,
                (batch, height, width),
                layer(&weight, conv_bias.unwrap_or(&[])),
                None,
                Epilogue::default(),
            );
            let normalised: Vec<f64> = convolved
                .iter()
                .enumerate()
                .map(|(index, &value)| {
                    // NHWC: the channel is the fastest-moving axis.
                    let channel = index % out_channels;
                    let variance = f64::from(parameters.running_var[channel]);
                    (value - f64::from(parameters.running_mean[channel]))
                        / (variance + f64::from(parameters.epsilon)).sqrt()
                        * f64::from(parameters.weight[channel])
                        + f64::from(parameters.bias[channel])
                })
                .collect();

            let (folded_weight, folded_bias) =
                fold_batch_norm(&weight, conv_bias, out_channels, &parameters.view())
                    .expect("fold");
            assert_eq!(folded_weight.len(), weight.len());
            assert_eq!(folded_bias.len(), out_channels);
            let (folded, _) = conv2d_f64(
                &input,
                (batch, height, width),
                layer(&folded_weight, &folded_bias),
                None,
                Epilogue::default(),
            );
            let error = relative_error_f64(&folded, &normalised);
            assert!(
                error < 1e-6,
                "{batch}x{height}x{width}x{in_channels} -> {out_channels}: {error:e}"
            );
        }
    }

    #[test]
    fn a_hand_computed_channel_folds_as_the_formula_says() {
        // γ = 3, β = 1, mean = 2, var + ε = 4 (so the scale is 3 / 2 = 1.5), w = [2, −4], b = 6:
        // w' = [3, −6] and b' = (6 − 2) · 1.5 + 1 = 7. Without a conv bias, b' = −2 · 1.5 + 1 = −2.
        let batch_norm = BatchNorm {
            weight: &[3.0],
            bias: &[1.0],
            running_mean: &[2.0],
            running_var: &[3.75],
            epsilon: 0.25,
        };
        let folded = fold_batch_norm(&[2.0, -4.0], Some(&[6.0]), 1, &batch_norm).expect("fold");
        assert_eq!(folded, (vec![3.0, -6.0], vec![7.0]));
        let folded = fold_batch_norm(&[2.0, -4.0], None, 1, &batch_norm).expect("fold");
        assert_eq!(folded, (vec![3.0, -6.0], vec![-2.0]));
    }

    #[test]
    fn wrong_lengths_are_shape_mismatches_naming_the_parameter() {
        let mut rng = StdRng::seed_from_u64(3);
        let channels = 3;
        let weight = vec![0.5f32; channels * 2 * 3 * 3];
        let good = Parameters::random(&mut rng, channels);
        let fold = |weight: &[f32], bias: Option<&[f32]>, parameters: &Parameters| {
            fold_batch_norm(weight, bias, channels, &parameters.view())
        };
        assert!(fold(&weight, Some(&[0.0; 3]), &good).is_ok());

        let shape_error = |result: Result<(Vec<f32>, Vec<f32>)>, name: &str| match result {
            Err(error @ Error::ShapeMismatch { .. }) => {
                assert!(error.to_string().contains(name), "{error}");
            }
            other => panic!("{name}: expected a shape mismatch, got {other:?}"),
        };
        shape_error(fold(&weight[1..], None, &good), "convolution weight");
        shape_error(fold(&[], None, &good), "convolution weight");
        shape_error(fold(&weight, Some(&[0.0; 2]), &good), "convolution bias");
        let mut short = Parameters::random(&mut rng, channels);
        short.weight.pop();
        shape_error(fold(&weight, None, &short), "batch norm weight");
        let mut long = Parameters::random(&mut rng, channels);
        long.bias.push(0.0);
        shape_error(fold(&weight, None, &long), "batch norm bias");
        let mut short = Parameters::random(&mut rng, channels);
        short.running_mean.clear();
        shape_error(fold(&weight, None, &short), "running_mean");
        let mut short = Parameters::random(&mut rng, channels);
        short.running_var.truncate(1);
        shape_error(fold(&weight, None, &short), "running_var");
        assert!(matches!(
            fold_batch_norm(&weight, None, 0, &good.view()),
            Err(Error::ZeroSized { .. })
        ));
    }

    #[test]
    fn variance_plus_epsilon_must_be_positive_and_zero_variance_is_fine_with_epsilon() {
        let mut rng = StdRng::seed_from_u64(5);
        let weight = [1.0f32; 4];
        let fold = |parameters: &Parameters| fold_batch_norm(&weight, None, 2, &parameters.view());
        let model_error = |result: Result<(Vec<f32>, Vec<f32>)>, expected: &str| match result {
            Err(error @ Error::Model { .. }) => {
                let message = error.to_string();
                assert!(message.contains("<batch norm>"), "{message}");
                assert!(message.contains(expected), "{message}");
            }
            other => panic!("expected a model error, got {other:?}"),
        };

        // A variance of zero is what a constant channel gathers; ε alone keeps the scale finite.
        let mut parameters = Parameters::random(&mut rng, 2);
        parameters.running_var = vec![0.0, 1.0];
        parameters.epsilon = 1e-5;
        assert!(fold(&parameters).is_ok());
        // Zero variance and zero ε: the scale would divide by zero.
        parameters.epsilon = 0.0;
        model_error(fold(&parameters), "channel 0");
        // A negative variance that ε does not lift above zero.
        parameters.running_var = vec![1.0, -0.5];
        parameters.epsilon = 0.25;
        model_error(fold(&parameters), "channel 1");
        // A slightly negative variance (rounding in training) that ε still lifts is accepted.
        parameters.running_var = vec![1.0, -1e-7];
        parameters.epsilon = 1e-5;
        assert!(fold(&parameters).is_ok());
        // A NaN variance is no variance.
        parameters.running_var = vec![f32::NAN, 1.0];
        model_error(fold(&parameters), "channel 0");
    }

    #[test]
    fn finite_inputs_that_overflow_f32_are_refused_but_non_finite_inputs_pass_through() {
        let mut parameters = Parameters {
            weight: vec![1.0, 1e30],
            bias: vec![0.0, 0.0],
            running_mean: vec![0.0, 0.0],
            running_var: vec![1.0, 1e-30],
            epsilon: 0.0,
        };
        // Channel 1's scale is 1e30 / 1e-15 = 1e45, past f32's range for any weight near 1.
        let error =
            fold_batch_norm(&[1.0, 1.0], None, 2, &parameters.view()).expect_err("overflow");
        assert!(matches!(error, Error::Model { .. }), "{error:?}");
        assert!(error.to_string().contains("channel 1"), "{error}");
        // An infinite weight read from a model folds into an infinite weight, as PyTorch would.
        parameters.weight[1] = 1.0;
        parameters.running_var[1] = 1.0;
        let (weight, bias) =
            fold_batch_norm(&[1.0, f32::INFINITY], None, 2, &parameters.view()).expect("fold");
        assert_eq!(weight, vec![1.0, f32::INFINITY]);
        assert_eq!(bias, vec![0.0, 0.0]);
    }
}
