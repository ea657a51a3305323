//! The plain-Rust forward pass, accumulating in f64: the oracle every kernel is checked against.
//! It is deliberately the most obvious code possible, with no blocking or reordering.

use crate::epilogue::{Activation, Epilogue};

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
            output[row * n + col] = apply_epilogue(sum, residual, row * n + col, epilogue);
        }
    }
    output
}

/// Finishes one accumulated value (the product plus the bias) as a fused epilogue does: adds
/// `residual[index]` when the epilogue asks for a residual and one was given, then applies the
/// activation. Linear and convolution layers share it, so that their epilogues cannot drift apart.
fn apply_epilogue(
    accumulated: f64,
    residual: Option<&[f64]>,
    index: usize,
    epilogue: Epilogue,
) -> f64 {
    let mut value = accumulated;
    if epilogue.add_residual
        && let Some(residual) = residual
    {
        value += residual[index];
    }
    epilogue.activation.apply_f64(value)
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

/// NHWC images as dense rows in PyTorch's (channel, row, column) order, as `torch.flatten(x, 1)`
/// gives them for NCHW tensors; a dense row is returned as it is.
fn flatten_to_pytorch_order(
    values: &[f64],
    batch: usize,
    shape: crate::graph::ValueShape,
) -> Vec<f64> {
    let (height, width, channels) = match shape {
        crate::graph::ValueShape::Dense { .. } => return values.to_vec(),
        crate::graph::ValueShape::Image {
            height,
            width,
            channels,
        } => (height, width, channels),
    };
    let per_image = height * width * channels;
    let mut flat = vec![0.0; batch * per_image];
    for image in 0..batch {
        for y in 0..height {
            for x in 0..width {
                for channel in 0..channels {
                    let from = image * per_image + (y * width + x) * channels + channel;
                    let to = image * per_image + (channel * height + y) * width + x;
                    flat[to] = values[from];
                }
            }
        }
    }
    flat
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
            Op::Relu { input } => values[input.index()]
                .iter()
                .map(|&value| Activation::Relu.apply_f64(value))
                .collect(),
            Op::Add { left, right } => values[left.index()]
                .iter()
                .zip(&values[right.index()])
                .map(|(a, b)| a + b)
                .collect(),
            Op::Conv2d { input, params } => {
                let (height, width, _) = graph.node(*input).shape.image_dims();
                conv2d_f64(
                    &values[input.index()],
                    (batch, height, width),
                    Conv2dRef {
                        weight: params.weight(),
                        bias: params.bias().unwrap_or(&[]),
                        in_channels: params.in_channels(),
                        out_channels: params.out_channels(),
                        kernel: params.kernel(),
                        stride: params.stride(),
                        padding: params.padding(),
                    },
                    None,
                    Epilogue::default(),
                )
                .0
            }
            Op::MaxPool2d { input, window } => {
                let (height, width, channels) = graph.node(*input).shape.image_dims();
                max_pool2d_f64(
                    &values[input.index()],
                    (batch, height, width, channels),
                    window.kernel,
                    window.stride,
                    window.padding,
                )
                .0
            }
            Op::AvgPool2d {
                input,
                window,
                count_include_pad,
            } => {
                let (height, width, channels) = graph.node(*input).shape.image_dims();
                avg_pool2d_f64(
                    &values[input.index()],
                    (batch, height, width, channels),
                    window.kernel,
                    window.stride,
                    window.padding,
                    *count_include_pad,
                )
                .0
            }
            Op::GlobalAvgPool { input } => {
                let (height, width, channels) = graph.node(*input).shape.image_dims();
                global_avg_pool_f64(&values[input.index()], (batch, height, width, channels))
            }
            Op::Flatten { input } => {
                flatten_to_pytorch_order(&values[input.index()], batch, graph.node(*input).shape)
            }
        };
        values.push(value);
    }
    values.swap_remove(graph.output().index())
}

/// A 2-D convolution as PyTorch stores it, for the NHWC reference: `weight` is
/// `[out_channels, in_channels, kernel_h, kernel_w]` row-major, `bias` is `[out_channels]` or
/// empty. Dilation is 1 and groups is 1.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dRef<'a> {
    /// Row-major `[out_channels, in_channels, kernel_h, kernel_w]`, PyTorch's layout.
    pub weight: &'a [f32],
    /// `[out_channels]`, or empty for a convolution without bias.
    pub bias: &'a [f32],
    /// The channels of each input pixel.
    pub in_channels: usize,
    /// The channels of each output pixel.
    pub out_channels: usize,
    /// `(kernel_h, kernel_w)`.
    pub kernel: (usize, usize),
    /// `(stride_h, stride_w)`.
    pub stride: (usize, usize),
    /// `(top, left, bottom, right)`: rows and columns of zeros around the input.
    pub padding: (usize, usize, usize, usize),
}

/// How many windows of `kernel` fit along one axis of `input` values padded with
/// `padding_before` and `padding_after`, stepping by `stride`: `(input + before + after −
/// kernel) / stride + 1`, rounded down, as PyTorch and ONNX count them without `ceil_mode`.
///
/// # Panics
/// If the kernel or stride is zero, or the padded axis is shorter than the kernel (no output).
fn sliding_window_count(
    axis: &str,
    input: usize,
    padding_before: usize,
    padding_after: usize,
    kernel: usize,
    stride: usize,
) -> usize {
    assert!(
        kernel > 0,
        "reference {axis}: the kernel must be at least 1"
    );
    assert!(
        stride > 0,
        "reference {axis}: the stride must be at least 1"
    );
    let padded = input + padding_before + padding_after;
    assert!(
        padded >= kernel,
        "reference {axis}: the padded input ({input} + {padding_before} + {padding_after} = \
         {padded}) is shorter than the kernel ({kernel}), so there is no output"
    );
    (padded - kernel) / stride + 1
}

/// The input coordinate that the window of output `output_position` reaches at kernel offset
/// `kernel_offset`, or `None` when that tap falls in the padding.
fn input_coordinate(
    output_position: usize,
    stride: usize,
    kernel_offset: usize,
    padding_before: usize,
    input_size: usize,
) -> Option<usize> {
    (output_position * stride + kernel_offset)
        .checked_sub(padding_before)
        .filter(|&coordinate| coordinate < input_size)
}

/// `act(conv(input, weight) + bias [+ residual])` for a batch of NHWC images, in f64.
///
/// `input` is `[batch, height, width, in_channels]`. The convolution is PyTorch's (a
/// cross-correlation: the kernel is not flipped), with zeros in the padding. `residual` (added
/// when `epilogue.add_residual` and given, as in [`linear_f64`]) has the output's shape. Returns
/// the output `[batch, out_h, out_w, out_channels]` and `(out_h, out_w)`, where
/// `out_h = (height + top + bottom − kernel_h) / stride_h + 1` rounded down, and likewise for the
/// width.
///
/// # Panics
/// If a slice's length disagrees with its shape, a kernel or stride is zero, or the padded input
/// is smaller than the kernel (no output pixel): the reference is a test oracle, and its callers
/// build the shapes.
pub fn conv2d_f64(
    input: &[f64],
    (batch, height, width): (usize, usize, usize),
    layer: Conv2dRef<'_>,
    residual: Option<&[f64]>,
    epilogue: Epilogue,
) -> (Vec<f64>, (usize, usize)) {
    let (in_channels, out_channels) = (layer.in_channels, layer.out_channels);
    let (kernel_h, kernel_w) = layer.kernel;
    let (stride_h, stride_w) = layer.stride;
    let (top, left, bottom, right) = layer.padding;
    assert_eq!(
        input.len(),
        batch * height * width * in_channels,
        "reference conv2d input length for [{batch}, {height}, {width}, {in_channels}]"
    );
    assert_eq!(
        layer.weight.len(),
        out_channels * in_channels * kernel_h * kernel_w,
        "reference conv2d weight length for [{out_channels}, {in_channels}, {kernel_h}, {kernel_w}]"
    );
    assert!(
        layer.bias.is_empty() || layer.bias.len() == out_channels,
        "reference conv2d bias length: {} values for {out_channels} output channels",
        layer.bias.len()
    );
    let out_h = sliding_window_count("conv2d height", height, top, bottom, kernel_h, stride_h);
    let out_w = sliding_window_count("conv2d width", width, left, right, kernel_w, stride_w);
    let output_len = batch * out_h * out_w * out_channels;
    if epilogue.add_residual
        && let Some(residual) = residual
    {
        assert_eq!(
            residual.len(),
            output_len,
            "reference conv2d residual length for [{batch}, {out_h}, {out_w}, {out_channels}]"
        );
    }
    let mut output = vec![0.0f64; output_len];
    for image in 0..batch {
        for out_y in 0..out_h {
            for out_x in 0..out_w {
                for out_channel in 0..out_channels {
                    // An empty bias slice means the layer has none.
                    let mut sum = layer.bias.get(out_channel).copied().map_or(0.0, f64::from);
                    for kernel_y in 0..kernel_h {
                        // A tap in the padding multiplies a zero, so it is skipped.
                        let Some(in_y) = input_coordinate(out_y, stride_h, kernel_y, top, height)
                        else {
                            continue;
                        };
                        for kernel_x in 0..kernel_w {
                            let Some(in_x) =
                                input_coordinate(out_x, stride_w, kernel_x, left, width)
                            else {
                                continue;
                            };
                            for in_channel in 0..in_channels {
                                let pixel = ((image * height + in_y) * width + in_x) * in_channels;
                                let tap = ((out_channel * in_channels + in_channel) * kernel_h
                                    + kernel_y)
                                    * kernel_w
                                    + kernel_x;
                                sum += input[pixel + in_channel] * f64::from(layer.weight[tap]);
                            }
                        }
                    }
                    let index =
                        ((image * out_h + out_y) * out_w + out_x) * out_channels + out_channel;
                    output[index] = apply_epilogue(sum, residual, index, epilogue);
                }
            }
        }
    }
    (output, (out_h, out_w))
}

/// Slides a `kernel` window over each channel of NHWC `input` and reduces the values the window
/// covers inside the image (never the padding) with `reduce`. Returns the output
/// `[batch, out_h, out_w, channels]` and `(out_h, out_w)`.
///
/// # Panics
/// As [`max_pool2d_f64`].
fn pool2d_f64(
    what: &str,
    input: &[f64],
    (batch, height, width, channels): (usize, usize, usize, usize),
    (kernel_h, kernel_w): (usize, usize),
    (stride_h, stride_w): (usize, usize),
    (top, left, bottom, right): (usize, usize, usize, usize),
    reduce: impl Fn(&[f64]) -> f64,
) -> (Vec<f64>, (usize, usize)) {
    assert_eq!(
        input.len(),
        batch * height * width * channels,
        "reference {what} input length for [{batch}, {height}, {width}, {channels}]"
    );
    let out_h = sliding_window_count(what, height, top, bottom, kernel_h, stride_h);
    let out_w = sliding_window_count(what, width, left, right, kernel_w, stride_w);
    let mut output = Vec::with_capacity(batch * out_h * out_w * channels);
    let mut window = Vec::with_capacity(kernel_h * kernel_w);
    for image in 0..batch {
        for out_y in 0..out_h {
            for out_x in 0..out_w {
                for channel in 0..channels {
                    window.clear();
                    for kernel_y in 0..kernel_h {
                        let Some(in_y) = input_coordinate(out_y, stride_h, kernel_y, top, height)
                        else {
                            continue;
                        };
                        for kernel_x in 0..kernel_w {
                            if let Some(in_x) =
                                input_coordinate(out_x, stride_w, kernel_x, left, width)
                            {
                                let pixel = ((image * height + in_y) * width + in_x) * channels;
                                window.push(input[pixel + channel]);
                            }
                        }
                    }
                    output.push(reduce(&window));
                }
            }
        }
    }
    (output, (out_h, out_w))
}

/// Max pooling over NHWC `input` `[batch, height, width, channels]`, in f64, as PyTorch's
/// `MaxPool2d` and ONNX's `MaxPool` (dilation 1, no `ceil_mode`). The padding counts as −∞, so it
/// never wins; a window holding a NaN gives NaN, as PyTorch's does. `padding` is
/// `(top, left, bottom, right)`. Returns the output `[batch, out_h, out_w, channels]` and
/// `(out_h, out_w)`, sized as in [`conv2d_f64`]. A window wholly inside the padding (which
/// PyTorch forbids by requiring the padding to be at most half the kernel) gives −∞.
///
/// # Panics
/// If `input`'s length disagrees with its shape, a kernel or stride is zero, or the padded input
/// is smaller than the kernel.
pub fn max_pool2d_f64(
    input: &[f64],
    shape: (usize, usize, usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize, usize, usize),
) -> (Vec<f64>, (usize, usize)) {
    pool2d_f64(
        "max_pool2d",
        input,
        shape,
        kernel,
        stride,
        padding,
        |window| {
            // Once the running maximum is NaN, no comparison replaces it, so the NaN survives.
            window.iter().fold(f64::NEG_INFINITY, |best, &value| {
                if value.is_nan() || value > best {
                    value
                } else {
                    best
                }
            })
        },
    )
}

/// Average pooling over NHWC `input` `[batch, height, width, channels]`, in f64, as PyTorch's
/// `AvgPool2d` and ONNX's `AveragePool` (no `ceil_mode`, no divisor override). The padding
/// contributes zeros; with `count_include_pad` the divisor is the whole kernel area, without it
/// only the taps inside the image count. `padding` is `(top, left, bottom, right)`. Returns the
/// output `[batch, out_h, out_w, channels]` and `(out_h, out_w)`, sized as in [`conv2d_f64`]. A
/// window wholly inside the padding gives 0 with `count_include_pad` and NaN (0 / 0) without.
///
/// # Panics
/// As [`max_pool2d_f64`].
pub fn avg_pool2d_f64(
    input: &[f64],
    shape: (usize, usize, usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize, usize, usize),
    count_include_pad: bool,
) -> (Vec<f64>, (usize, usize)) {
    let kernel_area = (kernel.0 * kernel.1) as f64;
    pool2d_f64(
        "avg_pool2d",
        input,
        shape,
        kernel,
        stride,
        padding,
        |window| {
            let sum: f64 = window.iter().sum();
            if count_include_pad {
                sum / kernel_area
            } else {
                sum / window.len() as f64
            }
        },
    )
}

/// The mean of each channel over all pixels of each image: NHWC `input`
/// `[batch, height, width, channels]` to `[batch, channels]`, in f64, as ONNX's
/// `GlobalAveragePool` followed by a flatten (and PyTorch's `AdaptiveAvgPool2d(1)`).
///
/// # Panics
/// If `input`'s length disagrees with its shape, or an image has no pixels.
pub fn global_avg_pool_f64(
    input: &[f64],
    (batch, height, width, channels): (usize, usize, usize, usize),
) -> Vec<f64> {
    assert_eq!(
        input.len(),
        batch * height * width * channels,
        "reference global_avg_pool input length for [{batch}, {height}, {width}, {channels}]"
    );
    let pixels = height * width;
    assert!(
        pixels > 0,
        "reference global_avg_pool: the images have no pixels"
    );
    let mut output = vec![0.0f64; batch * channels];
    for image in 0..batch {
        for channel in 0..channels {
            let mut sum = 0.0f64;
            for pixel in 0..pixels {
                sum += input[(image * pixels + pixel) * channels + channel];
            }
            output[image * channels + channel] = sum / pixels as f64;
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    fn random_values(rng: &mut StdRng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// A convolution with the given shape and the bias present.
    fn conv<'a>(
        weight: &'a [f32],
        bias: &'a [f32],
        (in_channels, out_channels): (usize, usize),
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize, usize, usize),
    ) -> Conv2dRef<'a> {
        Conv2dRef {
            weight,
            bias,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
        }
    }

    const RELU_WITH_RESIDUAL: Epilogue = Epilogue {
        activation: Activation::Relu,
        add_residual: true,
    };

    #[test]
    fn a_one_by_one_convolution_is_a_linear_layer_on_the_pixels() {
        let mut rng = StdRng::seed_from_u64(10);
        let (batch, height, width, in_channels, out_channels) = (2, 3, 17, 7, 3);
        let pixels = batch * height * width;
        let input = to_f64(&random_values(&mut rng, pixels * in_channels));
        let weight = random_values(&mut rng, out_channels * in_channels);
        let bias = random_values(&mut rng, out_channels);
        let residual = to_f64(&random_values(&mut rng, pixels * out_channels));
        for epilogue in Epilogue::ALL {
            let layer = conv(
                &weight,
                &bias,
                (in_channels, out_channels),
                (1, 1),
                (1, 1),
                (0, 0, 0, 0),
            );
            let (convolved, size) = conv2d_f64(
                &input,
                (batch, height, width),
                layer,
                Some(&residual),
                epilogue,
            );
            let linear = LinearRef {
                weight: &weight,
                bias: &bias,
                in_features: in_channels,
                out_features: out_channels,
            };
            // The same sums in the same order, so the results agree exactly.
            let expected = linear_f64(&input, pixels, linear, Some(&residual), epilogue);
            assert_eq!(size, (height, width));
            assert_eq!(convolved, expected, "{epilogue}");
        }
    }

    #[test]
    fn an_impulse_comes_out_as_the_kernel_turned_half_a_turn_as_in_pytorch() {
        // PyTorch's convolution is a cross-correlation: out[y][x] = Σ w[ky][kx] · in[y+ky−1][x+kx−1]
        // with padding 1, so an impulse at (p, q) gives out[y][x] = w[p−y+1][q−x+1].
        let (height, width, in_channels, out_channels) = (5, 4, 2, 3);
        let (impulse_y, impulse_x, impulse_channel) = (2, 1, 1);
        let mut input = vec![0.0f64; height * width * in_channels];
        input[(impulse_y * width + impulse_x) * in_channels + impulse_channel] = 1.0;
        let weight_at =
            |out_channel: usize, in_channel: usize, kernel_y: usize, kernel_x: usize| {
                (100 * out_channel + 10 * in_channel + 3 * kernel_y + kernel_x + 1) as f32
            };
        let mut weight = Vec::new();
        for out_channel in 0..out_channels {
            for in_channel in 0..in_channels {
                for kernel_y in 0..3 {
                    for kernel_x in 0..3 {
                        weight.push(weight_at(out_channel, in_channel, kernel_y, kernel_x));
                    }
                }
            }
        }
        let layer = conv(
            &weight,
            &[],
            (in_channels, out_channels),
            (3, 3),
            (1, 1),
            (1, 1, 1, 1),
        );
        let (output, size) =
            conv2d_f64(&input, (1, height, width), layer, None, Epilogue::default());
        assert_eq!(size, (height, width));
        for out_y in 0..height {
            for out_x in 0..width {
                for out_channel in 0..out_channels {
                    let kernel_y = (impulse_y + 1).checked_sub(out_y).filter(|&k| k < 3);
                    let kernel_x = (impulse_x + 1).checked_sub(out_x).filter(|&k| k < 3);
                    let expected = match (kernel_y, kernel_x) {
                        (Some(kernel_y), Some(kernel_x)) => {
                            f64::from(weight_at(out_channel, impulse_channel, kernel_y, kernel_x))
                        }
                        _ => 0.0,
                    };
                    let index = (out_y * width + out_x) * out_channels + out_channel;
                    assert_eq!(output[index], expected, "({out_y}, {out_x}, {out_channel})");
                }
            }
        }
    }

    #[test]
    fn stride_two_with_asymmetric_padding_matches_a_hand_computed_case() {
        // Input 3×3 (1..=9), kernel [[1, 2], [3, 4]], stride 2, padding top 0, left 1, bottom 1,
        // right 0. Padded, the input is
        //   0 1 2 3
        //   0 4 5 6
        //   0 7 8 9
        //   0 0 0 0
        // and the four 2×2 windows at stride 2 give 0+2+0+16 = 18, 2+6+15+24 = 47,
        // 0+14+0+0 = 14 and 8+18+0+0 = 26, plus the bias 0.5.
        let input: Vec<f64> = (1..=9).map(f64::from).collect();
        let layer = conv(
            &[1.0, 2.0, 3.0, 4.0],
            &[0.5],
            (1, 1),
            (2, 2),
            (2, 2),
            (0, 1, 1, 0),
        );
        let (output, size) = conv2d_f64(&input, (1, 3, 3), layer, None, Epilogue::default());
        assert_eq!(size, (2, 2));
        assert_eq!(output, vec![18.5, 47.5, 14.5, 26.5]);
        // Four rows: (4 + 0 + 1 − 2) / 2 + 1 = 2, the last row of the padding left over.
        let taller = vec![1.0; 4 * 3];
        let (_, size) = conv2d_f64(&taller, (1, 4, 3), layer, None, Epilogue::default());
        assert_eq!(size, (2, 2));
    }

    #[test]
    fn a_seven_by_seven_stem_at_stride_two_sizes_and_counts_its_taps() {
        // ResNet's stem on an 11×9 three-channel image: (11 + 6 − 7) / 2 + 1 = 6 rows and
        // (9 + 6 − 7) / 2 + 1 = 5 columns. With ones everywhere, each output is the number of
        // taps inside the image times the three channels.
        let (batch, height, width, out_channels) = (2, 11, 9, 4);
        let input = vec![1.0f64; batch * height * width * 3];
        let weight = vec![1.0f32; out_channels * 3 * 7 * 7];
        let layer = conv(
            &weight,
            &[],
            (3, out_channels),
            (7, 7),
            (2, 2),
            (3, 3, 3, 3),
        );
        let (output, size) = conv2d_f64(
            &input,
            (batch, height, width),
            layer,
            None,
            Epilogue::default(),
        );
        assert_eq!(size, (6, 5));
        assert_eq!(output.len(), batch * 6 * 5 * out_channels);
        let at = |image: usize, out_y: usize, out_x: usize| {
            output[((image * 6 + out_y) * 5 + out_x) * out_channels + out_channels - 1]
        };
        // Rows −3..=3 and columns −3..=3: 4 × 4 taps inside.
        assert_eq!(at(0, 0, 0), 48.0);
        // Rows 1..=7 and columns 1..=7: all 49 inside.
        assert_eq!(at(1, 2, 2), 147.0);
        // Rows 7..=13 (7..=10 inside) and columns 5..=11 (5..=8 inside).
        assert_eq!(at(1, 5, 4), 48.0);
    }

    #[test]
    fn the_epilogue_adds_the_bias_then_the_residual_then_applies_relu() {
        // A 1×2 image, one channel, a 1×1 kernel of 2 and bias −1: 2·1 − 1 = 1 and
        // 2·(−3) − 1 = −7; plus the residual [0.5, 4] that is 1.5 and −3, and ReLU gives 1.5, 0.
        let input = [1.0, -3.0];
        let residual = [0.5, 4.0];
        let layer = conv(&[2.0], &[-1.0], (1, 1), (1, 1), (1, 1), (0, 0, 0, 0));
        let run = |epilogue| conv2d_f64(&input, (1, 1, 2), layer, Some(&residual), epilogue).0;
        assert_eq!(run(RELU_WITH_RESIDUAL), vec![1.5, 0.0]);
        let identity_with_residual = Epilogue {
            activation: Activation::Identity,
            add_residual: true,
        };
        assert_eq!(run(identity_with_residual), vec![1.5, -3.0]);
        let relu_alone = Epilogue {
            activation: Activation::Relu,
            add_residual: false,
        };
        assert_eq!(run(relu_alone), vec![1.0, 0.0]);
        assert_eq!(run(Epilogue::default()), vec![1.0, -7.0]);
    }

    #[test]
    fn a_nan_reaches_exactly_the_outputs_whose_window_covers_it_even_through_relu() {
        let (height, width) = (4, 4);
        let mut input = vec![-1.0f64; height * width];
        input[0] = f64::NAN;
        let layer = conv(&[1.0; 9], &[0.0], (1, 1), (3, 3), (1, 1), (1, 1, 1, 1));
        let residual = vec![0.0f64; height * width];
        for epilogue in Epilogue::ALL {
            let (output, _) =
                conv2d_f64(&input, (1, height, width), layer, Some(&residual), epilogue);
            for out_y in 0..height {
                for out_x in 0..width {
                    let covers_the_nan = out_y <= 1 && out_x <= 1;
                    assert_eq!(
                        output[out_y * width + out_x].is_nan(),
                        covers_the_nan,
                        "{epilogue} at ({out_y}, {out_x})"
                    );
                }
            }
        }
    }

    #[test]
    fn relu_keeps_a_nan_in_the_linear_reference_and_the_graph_reference() {
        let layer = LinearRef {
            weight: &[1.0],
            bias: &[],
            in_features: 1,
            out_features: 1,
        };
        let residual = [0.0];
        let output = linear_f64(&[f64::NAN], 1, layer, Some(&residual), RELU_WITH_RESIDUAL);
        assert!(output[0].is_nan());
        let mut builder = crate::graph::GraphBuilder::new();
        let input = builder.input("x", 2).expect("input");
        let relu = builder.relu("relu", input).expect("relu");
        let graph = builder.build(relu).expect("graph");
        let output = forward_f64(&graph, &[f32::NAN, -2.0], 1);
        assert!(output[0].is_nan());
        assert_eq!(output[1], 0.0);
    }

    #[test]
    #[should_panic(expected = "shorter than the kernel")]
    fn a_convolution_with_no_output_pixel_panics_with_a_clear_message() {
        let layer = conv(&[1.0; 9], &[], (1, 1), (3, 3), (1, 1), (0, 0, 0, 0));
        let _ = conv2d_f64(&[1.0; 4], (1, 2, 2), layer, None, Epilogue::default());
    }

    #[test]
    fn resnets_max_pool_matches_a_hand_computed_case_and_the_padding_never_wins() {
        // Channel 0 is all negative, so a padding that counted as zero would show up as 0.
        // Channel 1 is 10·(1..=9). With a 3×3 window at stride 2 and padding 1, the four windows
        // cover the pixels {0,1,3,4}, {1,2,4,5}, {3,4,6,7} and {4,5,7,8} (row-major indices).
        let mut input = Vec::new();
        for pixel in 1..=9 {
            input.push(-f64::from(pixel));
            input.push(10.0 * f64::from(pixel));
        }
        let (output, size) = max_pool2d_f64(&input, (1, 3, 3, 2), (3, 3), (2, 2), (1, 1, 1, 1));
        assert_eq!(size, (2, 2));
        assert_eq!(output, vec![-1.0, 50.0, -2.0, 60.0, -4.0, 80.0, -5.0, 90.0]);
        // The sizes ResNet sees: 112 → 56, and an odd 17 → 9, 1 → 1.
        for (side, pooled) in [(112, 56), (17, 9), (1, 1)] {
            let image = vec![0.0f64; side * 3];
            let (_, size) = max_pool2d_f64(&image, (1, side, 3, 1), (3, 3), (2, 2), (1, 1, 1, 1));
            assert_eq!(size, (pooled, 2), "height {side}");
        }
    }

    #[test]
    fn a_window_holding_a_nan_pools_to_nan_wherever_the_nan_sits_in_it() {
        // 5×5 with a 3×3 window at stride 2 and padding 1: output (y, x) covers rows 2y−1..=2y+1
        // and columns 2x−1..=2x+1.
        for (nan_at, large_at) in [((1, 1), (0, 0)), ((0, 0), (1, 1))] {
            let mut input = vec![1.0f64; 25];
            input[nan_at.0 * 5 + nan_at.1] = f64::NAN;
            input[large_at.0 * 5 + large_at.1] = 100.0;
            let (output, size) = max_pool2d_f64(&input, (1, 5, 5, 1), (3, 3), (2, 2), (1, 1, 1, 1));
            assert_eq!(size, (3, 3));
            for out_y in 0..3 {
                for out_x in 0..3 {
                    let covers = |(y, x): (usize, usize)| {
                        y + 1 >= 2 * out_y
                            && y <= 2 * out_y + 1
                            && x + 1 >= 2 * out_x
                            && x <= 2 * out_x + 1
                    };
                    let value = output[out_y * 3 + out_x];
                    if covers(nan_at) {
                        assert!(
                            value.is_nan(),
                            "NaN at {nan_at:?}, output ({out_y}, {out_x})"
                        );
                    } else if covers(large_at) {
                        assert_eq!(value, 100.0);
                    } else {
                        assert_eq!(value, 1.0);
                    }
                }
            }
        }
    }

    #[test]
    fn average_pooling_divides_by_the_kernel_or_by_the_taps_inside() {
        // 1..=9 in a 3×3, 3×3 window at stride 2, padding 1: the window sums are 1+2+4+5 = 12,
        // 2+3+5+6 = 16, 4+5+7+8 = 24 and 5+6+8+9 = 28, each over four pixels inside.
        let input: Vec<f64> = (1..=9).map(f64::from).collect();
        let pool = |count_include_pad| {
            avg_pool2d_f64(
                &input,
                (1, 3, 3, 1),
                (3, 3),
                (2, 2),
                (1, 1, 1, 1),
                count_include_pad,
            )
        };
        let (included, size) = pool(true);
        assert_eq!(size, (2, 2));
        assert_eq!(
            included,
            vec![12.0 / 9.0, 16.0 / 9.0, 24.0 / 9.0, 28.0 / 9.0]
        );
        assert_eq!(pool(false).0, vec![3.0, 4.0, 6.0, 7.0]);
        // Asymmetric padding, bottom and right only, a 2×2 window at stride 1 over [[1, 2], [3, 4]]:
        // the windows hold {1,2,3,4}, {2,4}, {3,4} and {4}.
        let square = [1.0, 2.0, 3.0, 4.0];
        let pool = |count_include_pad| {
            avg_pool2d_f64(
                &square,
                (1, 2, 2, 1),
                (2, 2),
                (1, 1),
                (0, 0, 1, 1),
                count_include_pad,
            )
        };
        assert_eq!(pool(true), (vec![2.5, 1.5, 1.75, 1.0], (2, 2)));
        assert_eq!(pool(false), (vec![2.5, 3.0, 3.5, 4.0], (2, 2)));
    }

    #[test]
    fn global_average_pooling_takes_each_channels_mean_per_image() {
        // Two images of 1×3 pixels with two channels: image 0 holds (1, 10), (2, 20), (3, 30),
        // image 1 holds (0, 1), (0, 2), (6, 3).
        let input = [
            1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 0.0, 1.0, 0.0, 2.0, 6.0, 3.0,
        ];
        assert_eq!(
            global_avg_pool_f64(&input, (2, 1, 3, 2)),
            vec![2.0, 20.0, 2.0, 2.0]
        );
        // The same pixels as a 3×1 column give the same means.
        assert_eq!(
            global_avg_pool_f64(&input, (2, 3, 1, 2)),
            vec![2.0, 20.0, 2.0, 2.0]
        );
    }
}
