//! Moving images between PyTorch's channel-first order (NCHW: a channel's pixels contiguous) and
//! resgraph's channel-last storage (NHWC: a pixel's channels contiguous). The CLI converts run
//! inputs and outputs with these, and the planner uses the same permutation on the weight rows
//! of a linear layer that reads a flattened image; `model_input` and `model_output` give a run's
//! input and output the shapes PyTorch uses, for the CLI and the web package alike. The f64
//! reference keeps its own flatten, so that it checks this permutation rather than sharing it.

use crate::graph::ValueShape;

/// `batch` images of `(channels, height, width)` from NCHW to NHWC. `data` holds `batch`
/// images exactly.
pub fn nchw_to_nhwc<T: Copy + Default>(
    data: &[T],
    batch: usize,
    (channels, height, width): (usize, usize, usize),
) -> Vec<T> {
    permute(data, batch, (channels, height * width), false)
}

/// `batch` images of `(channels, height, width)` from NHWC back to NCHW.
pub fn nhwc_to_nchw<T: Copy + Default>(
    data: &[T],
    batch: usize,
    (channels, height, width): (usize, usize, usize),
) -> Vec<T> {
    permute(data, batch, (channels, height * width), true)
}

/// A run's input as the model takes it: NHWC for image models, rows for dense ones.
pub struct ModelInput {
    /// Entries in the batch.
    pub batch: usize,
    /// Whether the input held one entry without a batch dimension (the output drops it too).
    pub squeeze: bool,
    /// The values in the model's order: rows, or NHWC images.
    pub values: Vec<f32>,
}

/// Checks an input of `shape` (an `.npy` file's, or a page's) against the model's input shape: `[batch, width]` or `[width]` for a
/// dense model, `[batch, channels, height, width]` or `[channels, height, width]` (PyTorch's
/// NCHW) for an image model, which is converted to NHWC. `data` must hold exactly the values
/// `shape` says.
pub fn model_input(
    input_shape: ValueShape,
    shape: &[usize],
    data: Vec<f32>,
) -> std::result::Result<ModelInput, String> {
    match shape
        .iter()
        .try_fold(1usize, |count, &dim| count.checked_mul(dim))
    {
        Some(declared) if declared == data.len() => {}
        Some(declared) => {
            return Err(format!(
                "shape {shape:?} holds {declared} values, and {} were given",
                data.len()
            ));
        }
        None => {
            return Err(format!(
                "shape {shape:?} holds more values than can be counted"
            ));
        }
    }
    let per_entry = input_shape.torch_dims();
    let image = match input_shape {
        ValueShape::Dense { .. } => None,
        ValueShape::Image {
            height,
            width,
            channels,
        } => Some((channels, height, width)),
    };
    let (batch, squeeze) = if shape == per_entry.as_slice() {
        (1, true)
    } else if shape.len() == per_entry.len() + 1 && shape[1..] == per_entry[..] {
        if shape[0] == 0 {
            return Err(format!(
                "the input holds an empty batch (shape {shape:?}); give at least one entry"
            ));
        }
        (shape[0], false)
    } else {
        let expected = per_entry
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let input = match image {
            Some(_) => format!("images [{expected}] (NCHW)"),
            None => format!("width {expected}"),
        };
        return Err(format!(
            "a rank {} input of shape {shape:?} does not match the model's input {input} \
             (expected [batch, {expected}] or [{expected}])",
            shape.len()
        ));
    };
    let values = match image {
        Some(image) => nchw_to_nhwc(&data, batch, image),
        None => data,
    };
    Ok(ModelInput {
        batch,
        squeeze,
        values,
    })
}

/// A run's output as PyTorch would shape it: images back in NCHW order, dense rows as they are,
/// with the batch dimension unless the input had none. Returns the shape and the values.
pub fn model_output(
    output_shape: ValueShape,
    input: &ModelInput,
    output: Vec<f32>,
) -> (Vec<usize>, Vec<f32>) {
    let per_entry = output_shape.torch_dims();
    let output = match output_shape {
        ValueShape::Image {
            height,
            width,
            channels,
        } => nhwc_to_nchw(&output, input.batch, (channels, height, width)),
        ValueShape::Dense { .. } => output,
    };
    let shape = if input.squeeze {
        per_entry
    } else {
        std::iter::once(input.batch).chain(per_entry).collect()
    };
    (shape, output)
}

/// Moves each image's value (channel c, pixel p) between NCHW index `c · pixels + p` and NHWC
/// index `p · channels + c`; `to_nchw` says which way.
fn permute<T: Copy + Default>(
    data: &[T],
    batch: usize,
    (channels, pixels): (usize, usize),
    to_nchw: bool,
) -> Vec<T> {
    let per_image = channels * pixels;
    debug_assert_eq!(data.len(), batch * per_image);
    let mut out = vec![T::default(); data.len()];
    for image in 0..batch {
        let base = image * per_image;
        for channel in 0..channels {
            for pixel in 0..pixels {
                let nchw = base + channel * pixels + pixel;
                let nhwc = base + pixel * channels + channel;
                if to_nchw {
                    out[nchw] = data[nhwc];
                } else {
                    out[nhwc] = data[nchw];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchw_and_nhwc_are_each_others_inverse_and_put_channels_last() {
        // One image, 2 channels of 3 pixels: NCHW [c0p0, c0p1, c0p2, c1p0, c1p1, c1p2].
        let nchw = [0, 1, 2, 10, 11, 12];
        let nhwc = nchw_to_nhwc(&nchw, 1, (2, 1, 3));
        assert_eq!(nhwc, [0, 10, 1, 11, 2, 12]);
        assert_eq!(nhwc_to_nchw(&nhwc, 1, (2, 1, 3)), nchw);
        let two: Vec<i32> = (0..24).collect();
        assert_eq!(
            nhwc_to_nchw(&nchw_to_nhwc(&two, 2, (3, 2, 2)), 2, (3, 2, 2)),
            two
        );
    }
}
