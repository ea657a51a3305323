#!/usr/bin/env python3
"""Writes images and what torchvision's ImageNet evaluation transform and onnxruntime make of
them, for `resgraph classify` and `resgraph::preprocess` to be checked against.

The transform is torchvision's (transforms.Resize(resize), CenterCrop((height, width)),
ToTensor(), Normalize(ImageNet mean, std)) on Pillow images, written out here with Pillow and
numpy step for step as torchvision 0.20 computes it (torch itself is not needed):
  - Resize(n): the shorter side becomes n, the longer int(n * long / short) (truncated), by
    Pillow's Image.resize with BILINEAR (which antialiases: the triangle filter widens with the
    scale when shrinking);
  - CenterCrop: zero padding first where the crop is larger (left/top (crop - size) // 2,
    right/bottom (crop - size + 1) // 2), then the window at int(round((size - crop) / 2.0))
    (Python's round: halves to even);
  - ToTensor: float32 values / 255, channels first; Normalize: (x - mean) / std in float32.

Each image is written as NAME.png (and one as NAME.jpg, which decoders may read a little
differently), with NAME.input.npy, the transformed [3, height, width] float32 tensor, and with
--model, NAME.probabilities.npy, onnxruntime's softmax (computed in float64, stored as float32) over the model's logits for it. The images
are smooth colour gradients with noise, so that resampling and rounding show; their sizes cover
shrinking, enlarging, both aspect ratios, an image as large as the crop and one smaller than it.
manifest.json lists them with the transform's parameters.

    python3 scripts/classify_reference.py tests/data/classify \\
        --model tests/data/onnx_resnet/resnet18_torchscript_opset17_w4_29x32.onnx

writes the committed set (Pillow 13.0.0, numpy 2.3.5, onnxruntime 1.23.2); `.ci/run` writes a
fresh one (--large, a random --seed) for an ImageNet-sized model (--crop 224 224 --resize 256).
The manifest names the model by the path given, which the tests resolve from the checkout.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# (name, width, height): wider and taller than the crop, far larger, smaller than the crop, the
# crop's own size, and one pixel.
IMAGES = [
    ("wide_61x47", 61, 47),
    ("tall_40x73", 40, 73),
    ("large_160x120", 160, 120),
    ("small_20x17", 20, 17),
    ("exact_32x29", 32, 29),
    ("one_pixel", 1, 1),
]

# With --large, photographs' sizes too, for a crop of ImageNet's 224: shrinking by 2 or more.
LARGE_IMAGES = [("landscape_480x360", 480, 360), ("portrait_300x500", 300, 500)]


def make_image(rng, width, height):
    """A smooth gradient in each channel plus noise, as 8-bit RGB."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, size=3)
        base = 128 + 100 * np.sin(a * x / max(width, 2) * 6 + b * y / max(height, 2) * 6 + c)
        channels.append(base + rng.normal(0, 20, size=base.shape))
    return np.clip(np.stack(channels, axis=-1), 0, 255).round().astype(np.uint8)


def resized_size(width, height, size):
    """torchvision's _compute_resized_output_size for one int: (new width, new height)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop(image, crop_height, crop_width):
    """torchvision's center_crop on a Pillow image: zero padding, then the rounded window."""
    width, height = image.size
    if crop_width > width or crop_height > height:
        left = (crop_width - width) // 2 if crop_width > width else 0
        top = (crop_height - height) // 2 if crop_height > height else 0
        right = (crop_width - width + 1) // 2 if crop_width > width else 0
        bottom = (crop_height - height + 1) // 2 if crop_height > height else 0
        padded = Image.new(image.mode, (width + left + right, height + top + bottom), 0)
        padded.paste(image, (left, top))
        image = padded
        width, height = image.size
        if crop_width == width and crop_height == height:
            return image
    top = int(round((height - crop_height) / 2.0))
    left = int(round((width - crop_width) / 2.0))
    return image.crop((left, top, left + crop_width, top + crop_height))


def transform(image, resize, crop_height, crop_width):
    width, height = image.size
    image = image.resize(resized_size(width, height, resize), Image.BILINEAR)
    image = center_crop(image, crop_height, crop_width)
    tensor = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
    tensor = (tensor - MEAN) / STD
    return np.ascontiguousarray(tensor.transpose(2, 0, 1)).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, help="an ONNX classifier taking NCHW images")
    parser.add_argument("--crop", type=int, nargs=2, default=[29, 32], metavar=("H", "W"))
    parser.add_argument("--resize", type=int, default=33)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--large", action="store_true", help="add photograph-sized images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    session = None
    if args.model is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    crop_height, crop_width = args.crop
    cases = []
    images = IMAGES + (LARGE_IMAGES if args.large else [])
    for index, (name, width, height) in enumerate(images):
        pixels = make_image(rng, width, height)
        image = Image.fromarray(pixels, "RGB")
        file = f"{name}.png"
        image.save(args.out / file)
        # The JPEG is read back by Pillow so that its transform is of what a decoder sees.
        files = [file]
        if index == 0:
            image.save(args.out / f"{name}.jpg", quality=92)
            files.append(f"{name}.jpg")
        for file in files:
            decoded = Image.open(args.out / file).convert("RGB")
            stem = file.replace(".", "_")
            tensor = transform(decoded, args.resize, crop_height, crop_width)
            np.save(args.out / f"{stem}.input.npy", tensor)
            case = {"image": file, "input": f"{stem}.input.npy"}
            if session is not None:
                logits = session.run(None, {session.get_inputs()[0].name: tensor[None]})[0][0]
                logits = logits.astype(np.float64)
                probabilities = np.exp(logits - logits.max())
                probabilities /= probabilities.sum()
                np.save(args.out / f"{stem}.probabilities.npy", probabilities.astype(np.float32))
                case["probabilities"] = f"{stem}.probabilities.npy"
            cases.append(case)
    manifest = {
        "resize": args.resize,
        "crop": [crop_height, crop_width],
        "mean": MEAN.tolist(),
        "std": STD.tolist(),
        "model": str(args.model) if args.model is not None else None,
        "seed": args.seed,
        "cases": cases,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
