//! `resgraph::preprocess` against torchvision's ImageNet evaluation transform as Pillow computes
//! it (`scripts/classify_reference.py` wrote the expected tensors into `tests/data/classify`):
//! images that shrink (by up to 5×), grow, are wider or taller than the crop, are smaller than it
//! (zero padding) or one pixel, must give the same float32 values bit for bit.

use std::path::{Path, PathBuf};

use resgraph::preprocess::{IMAGENET_MEAN, IMAGENET_STD, ImageTransform, RgbImage};
use resgraph::read_npy;
use serde_json::Value;

/// `RESGRAPH_CLASSIFY_CASES` (a fresh set `.ci/run` writes for an ImageNet-sized crop, with
/// photograph-sized images), else the committed set.
fn data() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("RESGRAPH_CLASSIFY_CASES")
        .map(|cases| root.join(cases))
        .unwrap_or_else(|| root.join("tests/data/classify"))
}

/// The 8-bit RGB PNG at `path`.
fn decode_png(path: &Path) -> RgbImage {
    let file = std::fs::File::open(path).expect("open the png");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut pixels).expect("png pixels");
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
    pixels.truncate(info.buffer_size());
    RgbImage::new(info.width as usize, info.height as usize, pixels).expect("image")
}

#[test]
fn the_transform_matches_torchvision_on_pillow_bit_for_bit() {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(data().join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let crop = &manifest["crop"];
    let (crop_height, crop_width) = (
        crop[0].as_u64().expect("crop height") as usize,
        crop[1].as_u64().expect("crop width") as usize,
    );
    let transform = ImageTransform::imagenet(crop_height, crop_width);
    assert_eq!(
        transform.resize as u64,
        manifest["resize"].as_u64().expect("resize")
    );
    for (channel, (mean, std)) in IMAGENET_MEAN.iter().zip(IMAGENET_STD).enumerate() {
        assert_eq!(manifest["mean"][channel].as_f64(), Some(f64::from(*mean)));
        assert_eq!(manifest["std"][channel].as_f64(), Some(f64::from(std)));
    }
    let mut checked = 0;
    for case in manifest["cases"].as_array().expect("cases") {
        let image = case["image"].as_str().expect("image");
        // JPEG decoders differ by a level here and there; the bit-for-bit check is on PNGs.
        if !image.ends_with(".png") {
            continue;
        }
        let values = transform
            .apply(&decode_png(&data().join(image)))
            .expect("transform");
        let expected = read_npy(&data().join(case["input"].as_str().expect("input"))).expect("npy");
        assert_eq!(expected.shape, vec![3, crop_height, crop_width], "{image}");
        let differing = values
            .iter()
            .zip(&expected.data)
            .filter(|(value, expected)| value.to_bits() != expected.to_bits())
            .count();
        assert_eq!(
            differing,
            0,
            "{image}: {differing} of {} values differ from Pillow's, the first at {:?}",
            values.len(),
            values
                .iter()
                .zip(&expected.data)
                .position(|(value, expected)| value.to_bits() != expected.to_bits())
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} PNG cases were checked");
}
