//! Moving images between PyTorch's channel-first order (NCHW: a channel's pixels contiguous) and
//! resgraph's channel-last storage (NHWC: a pixel's channels contiguous). The CLI converts run
//! inputs and outputs with these, and the planner uses the same permutation on the weight rows
//! of a linear layer that reads a flattened image. The f64 reference keeps its own flatten, so
//! that it checks this permutation rather than sharing it.

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
