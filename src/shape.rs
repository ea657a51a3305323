//! Shape checks shared by the graph builder and the kernels' upload paths, so that a layer's
//! parameters are judged, and their errors worded, the same way wherever they enter. Pure Rust.

use crate::error::{Error, Result};

/// Checks a linear layer's parameter lengths against its stated shape: both widths at least 1,
/// `weight_len == out × in` and, when there is a bias, `bias_len == out`. Shared by every place
/// that takes a layer's parameters, so the messages are the same everywhere.
pub fn check_linear_shape(
    out_features: usize,
    in_features: usize,
    weight_len: usize,
    bias_len: Option<usize>,
) -> Result<()> {
    let what = format!("linear layer {out_features}x{in_features}");
    if out_features == 0 {
        return Err(Error::zero_sized(what, "out_features"));
    }
    if in_features == 0 {
        return Err(Error::zero_sized(what, "in_features"));
    }
    let expected = out_features.checked_mul(in_features).ok_or_else(|| {
        Error::shape_mismatch(&what, "a size that fits in memory", "an overflowing size")
    })?;
    if weight_len != expected {
        return Err(Error::shape_mismatch(
            format!("{what} weight"),
            format!("{expected} values ([{out_features}, {in_features}])"),
            format!("{weight_len} values"),
        ));
    }
    if let Some(bias_len) = bias_len
        && bias_len != out_features
    {
        return Err(Error::shape_mismatch(
            format!("{what} bias"),
            format!("{out_features} values"),
            format!("{bias_len} values"),
        ));
    }
    Ok(())
}

/// The output size of a window of `kernel` moved by `stride` over a `height × width` input with
/// `padding` (top, left, bottom, right), PyTorch's floor rule; `None` when the window does not fit
/// the padded input or the stride is zero. Shared by the graph builder and the convolution and
/// pooling kernels, so that an output size is computed one way everywhere.
pub fn window_output_size(
    (height, width): (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    (top, left, bottom, right): (usize, usize, usize, usize),
) -> Option<(usize, usize)> {
    let padded = (
        height.checked_add(top)?.checked_add(bottom)?,
        width.checked_add(left)?.checked_add(right)?,
    );
    if kernel.0 == 0 || kernel.1 == 0 || kernel.0 > padded.0 || kernel.1 > padded.1 {
        return None;
    }
    Some((
        (padded.0 - kernel.0).checked_div(stride.0)? + 1,
        (padded.1 - kernel.1).checked_div(stride.1)? + 1,
    ))
}
