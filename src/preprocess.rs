//! From a photo to a torchvision classifier's input, and from its logits to classes.
//!
//! A ResNet trained on ImageNet expects its images prepared exactly as in training's evaluation:
//! torchvision's `Resize(256)`, `CenterCrop(224)`, `ToTensor()`, `Normalize(mean, std)` on a
//! Pillow image. A different resampler moves every pixel a little and the logits with it, so
//! [`ImageTransform`] computes what torchvision computes, step for step: Pillow's bilinear
//! resampling (antialiased: the triangle filter widens with the shrink factor, weights in 22-bit
//! fixed point, the horizontal pass first and each pass rounded to 8 bits), torchvision's output
//! size (the longer side truncated), its centre crop (zero padding where the crop is larger, the
//! window's offset rounded half to even, as Python's `round`) and the float32 arithmetic of
//! `ToTensor` and `Normalize`. `tests/preprocess.rs` checks the result against Pillow's, bit for
//! bit, on images that shrink, grow, and are smaller than the crop.
//!
//! Decoding the file (PNG, JPEG) is the caller's: the command line uses the `image` crate, a web
//! page its canvas.

use crate::error::{Error, Result};
use crate::graph::{Graph, ValueShape};

/// An 8-bit RGB image: `height` rows of `width` pixels, top row first, three bytes a pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps `pixels` (`width × height × 3` bytes, row-major, R, G, B); an error if the length
    /// does not match or a side is zero.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self> {
        if width == 0 {
            return Err(Error::zero_sized("an RGB image", "width"));
        }
        if height == 0 {
            return Err(Error::zero_sized("an RGB image", "height"));
        }
        let expected = width
            .checked_mul(height)
            .and_then(|count| count.checked_mul(3))
            .ok_or_else(|| {
                Error::shape_mismatch(
                    "an RGB image",
                    "a size whose bytes can be counted",
                    format!("{width}x{height}"),
                )
            })?;
        if pixels.len() != expected {
            return Err(Error::shape_mismatch(
                format!("an RGB image of {width}x{height} pixels"),
                format!("{expected} bytes"),
                format!("{} bytes", pixels.len()),
            ));
        }
        Ok(RgbImage {
            width,
            height,
            pixels,
        })
    }

    /// Wraps the RGB of `rgba` (`width × height × 4` bytes, as a canvas's `ImageData` holds
    /// them), dropping the alpha as Pillow's `convert("RGB")` does.
    pub fn from_rgba(width: usize, height: usize, rgba: &[u8]) -> Result<Self> {
        let expected = width
            .checked_mul(height)
            .and_then(|count| count.checked_mul(4));
        if expected != Some(rgba.len()) {
            return Err(Error::shape_mismatch(
                format!("RGBA pixels of a {width}x{height} image"),
                "4 bytes a pixel",
                format!("{} bytes", rgba.len()),
            ));
        }
        let pixels = rgba
            .chunks_exact(4)
            .flat_map(|pixel| [pixel[0], pixel[1], pixel[2]])
            .collect();
        RgbImage::new(width, height, pixels)
    }

    /// Pixels per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The bytes, row-major, three a pixel.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The image resampled to `width × height` as Pillow's `Image.resize(..., BILINEAR)` does.
    pub fn resize_bilinear(&self, width: usize, height: usize) -> Result<RgbImage> {
        if width == 0 || height == 0 {
            return Err(Error::zero_sized(
                "a resized image",
                if width == 0 { "width" } else { "height" },
            ));
        }
        // Pillow resamples rows first, then columns, each pass rounded to 8 bits; a pass whose
        // side keeps its size is skipped (it would copy the pixels unchanged anyway).
        let image = match (width != self.width, height != self.height) {
            (true, true) => self.resample_rows(width).resample_columns(height),
            (true, false) => self.resample_rows(width),
            (false, true) => self.resample_columns(height),
            (false, false) => self.clone(),
        };
        Ok(image)
    }

    /// The horizontal pass: every row resampled to `width` pixels.
    fn resample_rows(&self, width: usize) -> RgbImage {
        let taps = filter_taps(self.width, width);
        let mut pixels = vec![0u8; width * self.height * 3];
        for row in 0..self.height {
            let source = &self.pixels[row * self.width * 3..(row + 1) * self.width * 3];
            for (column, tap) in taps.iter().enumerate() {
                for channel in 0..3 {
                    pixels[(row * width + column) * 3 + channel] =
                        tap.apply(|index| source[index * 3 + channel]);
                }
            }
        }
        RgbImage {
            width,
            height: self.height,
            pixels,
        }
    }

    /// The vertical pass: every column resampled to `height` pixels.
    fn resample_columns(&self, height: usize) -> RgbImage {
        let taps = filter_taps(self.height, height);
        let stride = self.width * 3;
        let mut pixels = vec![0u8; height * stride];
        for (row, tap) in taps.iter().enumerate() {
            for offset in 0..stride {
                pixels[row * stride + offset] =
                    tap.apply(|index| self.pixels[index * stride + offset]);
            }
        }
        RgbImage {
            width: self.width,
            height,
            pixels,
        }
    }
}

/// Fractional bits of Pillow's fixed-point filter weights: 32 bits less 8 for the pixel and 2
/// for sums past one.
const WEIGHT_BITS: u32 = 22;

/// The source pixels one output pixel of a resampling pass reads, and their fixed-point weights.
struct FilterTap {
    first: usize,
    weights: Vec<i32>,
}

impl FilterTap {
    /// The weighted sum of the source values `value(first..)`, rounded and clamped to 8 bits.
    fn apply(&self, value: impl Fn(usize) -> u8) -> u8 {
        let mut sum: i32 = 1 << (WEIGHT_BITS - 1);
        for (offset, &weight) in self.weights.iter().enumerate() {
            sum += i32::from(value(self.first + offset)) * weight;
        }
        (sum >> WEIGHT_BITS).clamp(0, 255) as u8
    }
}

/// The bilinear (triangle) filter's taps for resampling `in_size` pixels to `out_size`, as
/// Pillow computes them: the filter is widened by the shrink factor (antialiasing), centred on
/// each output pixel's centre, its weights normalised to sum to one and then rounded to fixed
/// point. The arithmetic is in f64 in Pillow's order, so that every weight comes out the same.
fn filter_taps(in_size: usize, out_size: usize) -> Vec<FilterTap> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    // The triangle filter reaches one source pixel each side, times the widening.
    let support = filter_scale;
    let inverse = 1.0 / filter_scale;
    (0..out_size)
        .map(|out| {
            let center = (out as f64 + 0.5) * scale;
            // C's conversion truncates toward zero; a negative start is clamped to 0 either way.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (first..end)
                .map(|index| triangle((index as f64 - center + 0.5) * inverse))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&weight| {
                    let weight = if total != 0.0 { weight / total } else { weight };
                    let fixed = weight * f64::from(1u32 << WEIGHT_BITS);
                    // Rounded half away from zero, as Pillow does.
                    if fixed < 0.0 {
                        (fixed - 0.5) as i32
                    } else {
                        (fixed + 0.5) as i32
                    }
                })
                .collect();
            FilterTap { first, weights }
        })
        .collect()
}

/// The bilinear filter: `1 − |x|` inside (−1, 1), zero outside.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// ImageNet's per-channel mean (R, G, B), as torchvision's models were trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (R, G, B).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// torchvision's evaluation transform: `Resize(resize)` (the shorter side to `resize` pixels),
/// `CenterCrop((crop_height, crop_width))`, `ToTensor()`, `Normalize(mean, std)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageTransform {
    /// The shorter side's length after resizing.
    pub resize: usize,
    /// The crop's height: the model's input height.
    pub crop_height: usize,
    /// The crop's width: the model's input width.
    pub crop_width: usize,
    /// Subtracted from each channel (after scaling to [0, 1]).
    pub mean: [f32; 3],
    /// Each channel is divided by this.
    pub std: [f32; 3],
}

impl ImageTransform {
    /// The ImageNet evaluation transform for a model taking `crop_height × crop_width` images:
    /// ImageNet's mean and deviation, and the shorter side resized in torchvision's proportion
    /// (256 before a 224 crop) to the crop's shorter side, rounded: 256 for 224 × 224.
    pub fn imagenet(crop_height: usize, crop_width: usize) -> Self {
        let shorter = crop_height.min(crop_width);
        ImageTransform {
            resize: (shorter as f64 * 256.0 / 224.0).round() as usize,
            crop_height,
            crop_width,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// The `[3, crop_height, crop_width]` values (channels first, as PyTorch's tensor of one
    /// image) that the transform makes of `image`.
    pub fn apply(&self, image: &RgbImage) -> Result<Vec<f32>> {
        if self.resize == 0 {
            return Err(Error::zero_sized("the image transform", "resize"));
        }
        if self.crop_height == 0 || self.crop_width == 0 {
            return Err(Error::zero_sized(
                "the image transform",
                if self.crop_height == 0 {
                    "crop height"
                } else {
                    "crop width"
                },
            ));
        }
        let (width, height) = resized_size(image.width, image.height, self.resize);
        let resized = image.resize_bilinear(width, height)?;
        let (crop_height, crop_width) = (self.crop_height, self.crop_width);
        // Zero padding where the crop is larger than the image (torchvision pads left and top by
        // half the shortfall rounded down, right and bottom by the rest), then the crop's window,
        // its offset rounded half to even, as Python's round().
        let pad_left = crop_width.saturating_sub(width) / 2;
        let pad_top = crop_height.saturating_sub(height) / 2;
        let padded_width = width.max(crop_width);
        let padded_height = height.max(crop_height);
        let top = ((padded_height - crop_height) as f64 / 2.0).round_ties_even() as usize;
        let left = ((padded_width - crop_width) as f64 / 2.0).round_ties_even() as usize;
        let plane = crop_height * crop_width;
        let mut values = vec![0.0f32; 3 * plane];
        for row in 0..crop_height {
            for column in 0..crop_width {
                // The pixel's place in the resized image, if it is not padding.
                let source_row = (row + top).checked_sub(pad_top).filter(|&r| r < height);
                let source_column = (column + left).checked_sub(pad_left).filter(|&c| c < width);
                for channel in 0..3 {
                    let byte = match (source_row, source_column) {
                        (Some(r), Some(c)) => resized.pixels[(r * width + c) * 3 + channel],
                        _ => 0,
                    };
                    // ToTensor divides in float32, Normalize subtracts and divides in float32.
                    let scaled = f32::from(byte) / 255.0f32;
                    values[channel * plane + row * crop_width + column] =
                        (scaled - self.mean[channel]) / self.std[channel];
                }
            }
        }
        Ok(values)
    }
}

/// torchvision's size for `Resize(size)` of a `width × height` image: the shorter side becomes
/// `size` and the longer keeps the aspect ratio, truncated (`int(size * long / short)`).
/// Returns (width, height).
fn resized_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((size as f64 * long as f64) / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// What an image classifier takes and gives, read off its graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassifierShape {
    /// The input images' height.
    pub height: usize,
    /// The input images' width.
    pub width: usize,
    /// The logits per image.
    pub classes: usize,
}

impl ClassifierShape {
    /// The shape of `graph` as a classifier: RGB images `[3, height, width]` in, one logit per
    /// class out; otherwise the reason it cannot classify images, as one sentence.
    pub fn of(graph: &Graph) -> std::result::Result<Self, String> {
        let ValueShape::Image {
            channels: 3,
            height,
            width,
        } = graph.input_shape()
        else {
            return Err(format!(
                "classifying images needs a model whose input is an RGB image [3, height, \
                 width]; this one takes {:?}",
                graph.input_shape().torch_dims()
            ));
        };
        let ValueShape::Dense { width: classes } = graph.output_shape() else {
            return Err(format!(
                "classifying images needs a model that gives one logit per class; this one \
                 gives {:?}",
                graph.output_shape().torch_dims()
            ));
        };
        Ok(ClassifierShape {
            height,
            width,
            classes,
        })
    }

    /// The ImageNet evaluation transform for this model's input size.
    pub fn transform(&self) -> ImageTransform {
        ImageTransform::imagenet(self.height, self.width)
    }

    /// ImageNet's class names if the model has 1000 classes (torchvision's classifiers' order),
    /// else none.
    pub fn default_labels(&self) -> Option<Vec<&'static str>> {
        (self.classes == 1000).then(imagenet_classes)
    }
}

/// The softmax of `logits`, computed in f64 (shifted by the largest logit, so that large logits
/// do not overflow). A NaN logit makes every probability NaN, as in PyTorch.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    if logits.iter().any(|logit| logit.is_nan()) {
        return vec![f64::NAN; logits.len()];
    }
    let largest = logits.iter().fold(f64::NEG_INFINITY, |largest, &logit| {
        largest.max(f64::from(logit))
    });
    let exponentials: Vec<f64> = logits
        .iter()
        .map(|&logit| (f64::from(logit) - largest).exp())
        .collect();
    let total: f64 = exponentials.iter().sum();
    exponentials.iter().map(|value| value / total).collect()
}

/// The `k` largest `scores` (all of them if fewer) as (index, score), largest first; NaN ranks
/// above every number (as `torch.topk` ranks it), and ties keep the lower index first.
pub fn top_k(scores: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64)> = scores.iter().copied().enumerate().collect();
    ranked.sort_by(|(a_index, a), (b_index, b)| {
        b.is_nan()
            .cmp(&a.is_nan())
            .then_with(|| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal))
            .then_with(|| a_index.cmp(b_index))
    });
    ranked.truncate(k);
    ranked
}

/// The names of ImageNet's 1000 classes, in the order of torchvision's classifiers' outputs
/// (torchvision's `_IMAGENET_CATEGORIES`, BSD-3-Clause).
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("imagenet_classes.txt").lines().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(width: usize, height: usize, values: &[u8]) -> RgbImage {
        let pixels = values.iter().flat_map(|&value| [value; 3]).collect();
        RgbImage::new(width, height, pixels).expect("image")
    }

    #[test]
    fn halving_a_row_averages_pixel_pairs_with_pillows_rounding() {
        // Shrinking 4 → 2 widens the triangle to two source pixels each side of the output
        // pixel's centre (1.0 and 3.0 in source coordinates), clipped at the image's edges.
        let image = gray(4, 1, &[0, 100, 200, 255]);
        let half = image.resize_bilinear(2, 1).expect("resize");
        // Left: taps 0..3 with raw weights 0.75, 0.75, 0.25 → (0·3 + 100·3 + 200·1) / 7.
        // Right: taps 1..4 with 0.25, 0.75, 0.75 → (100·1 + 200·3 + 255·3) / 7.
        let left = ((100.0 * 3.0 + 200.0) / 7.0f64).round() as u8;
        let right = ((100.0 + 200.0 * 3.0 + 255.0 * 3.0) / 7.0f64).round() as u8;
        assert_eq!(half.pixels(), &[left, left, left, right, right, right]);
    }

    #[test]
    fn resizing_to_the_same_size_changes_nothing_and_one_pixel_fills_any_size() {
        let image = gray(3, 2, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(image.resize_bilinear(3, 2).expect("same size"), image);
        let dot = gray(1, 1, &[77]);
        let filled = dot.resize_bilinear(5, 4).expect("enlarge");
        assert!(filled.pixels().iter().all(|&value| value == 77));
    }

    #[test]
    fn the_resized_size_truncates_the_longer_side_as_torchvision_does() {
        assert_eq!(resized_size(640, 480, 256), (341, 256));
        assert_eq!(resized_size(480, 640, 256), (256, 341));
        assert_eq!(resized_size(500, 500, 256), (256, 256));
        assert_eq!(resized_size(1, 3, 2), (2, 6));
    }

    #[test]
    fn the_imagenet_transform_resizes_to_256_before_a_224_crop() {
        let transform = ImageTransform::imagenet(224, 224);
        assert_eq!(transform.resize, 256);
        assert_eq!(ImageTransform::imagenet(29, 32).resize, 33);
    }

    #[test]
    fn a_plain_image_normalises_to_each_channels_constant_and_padding_to_minus_mean_over_std() {
        let pixels = [10u8, 128, 250].repeat(4 * 4);
        let image = RgbImage::new(4, 4, pixels).expect("image");
        // A crop larger than the resized image: the border is zero padding.
        let transform = ImageTransform {
            resize: 4,
            crop_height: 6,
            crop_width: 5,
            ..ImageTransform::imagenet(6, 5)
        };
        let values = transform.apply(&image).expect("transform");
        assert_eq!(values.len(), 3 * 6 * 5);
        for (channel, byte) in [10u8, 128, 250].into_iter().enumerate() {
            let inside = (f32::from(byte) / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel];
            let padding = (0.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel];
            let plane = &values[channel * 30..(channel + 1) * 30];
            // Rows 1..5 and columns 0..4 hold the image (padding top 1, bottom 1; left 0,
            // right 1).
            for row in 0..6 {
                for column in 0..5 {
                    let expected = if (1..5).contains(&row) && column < 4 {
                        inside
                    } else {
                        padding
                    };
                    assert_eq!(
                        plane[row * 5 + column],
                        expected,
                        "{channel} {row} {column}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_sizes_are_typed_errors() {
        assert!(matches!(
            RgbImage::new(0, 3, vec![]),
            Err(Error::ZeroSized { .. })
        ));
        assert!(matches!(
            RgbImage::new(2, 2, vec![0; 11]),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            RgbImage::new(usize::MAX, 2, vec![]),
            Err(Error::ShapeMismatch { .. })
        ));
        let image = gray(2, 2, &[0; 4]);
        assert!(image.resize_bilinear(0, 1).is_err());
        let transform = ImageTransform {
            resize: 0,
            ..ImageTransform::imagenet(2, 2)
        };
        assert!(matches!(
            transform.apply(&image),
            Err(Error::ZeroSized { .. })
        ));
    }

    #[test]
    fn softmax_sums_to_one_survives_large_logits_and_keeps_nan() {
        let probabilities = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((probabilities[0] - 0.5).abs() < 1e-12 && probabilities[2] < 1e-300);
        assert!((softmax(&[0.1, 0.2, 0.3]).iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(softmax(&[0.0, f32::NAN]).iter().all(|p| p.is_nan()));
    }

    #[test]
    fn top_k_ranks_nan_first_then_largest_with_ties_by_index() {
        let ranked = top_k(&[0.2, 0.5, f64::NAN, 0.5, 0.1], 4);
        let indices: Vec<usize> = ranked.iter().map(|&(index, _)| index).collect();
        assert_eq!(indices, vec![2, 1, 3, 0]);
        assert_eq!(top_k(&[0.3, 0.7], 10).len(), 2);
    }

    #[test]
    fn imagenet_has_its_1000_classes_in_torchvisions_order() {
        let classes = imagenet_classes();
        assert_eq!(classes.len(), 1000);
        assert_eq!(classes[0], "tench");
        assert_eq!(classes[281], "tabby");
        assert_eq!(classes[999], "toilet tissue");
    }
}
