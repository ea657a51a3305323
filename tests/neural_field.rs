//! The neural-field example (`examples/neural_field.rs`), run headless at 64 × 48 for 3 frames on
//! every test backend: each frame's pixels against the f64 reference of the same network (the
//! safetensors file the example wrote, loaded here), features and colour mapping computed here
//! independently of the example's shaders. No pixel may be off by more than 2/255; frames must
//! differ over time; every frame must be one submission. It is also run in a window (winit, a
//! wgpu surface) under Xvfb for 3 frames.
//!
//! `cargo test` builds the examples before it runs the tests; a test run that filters the targets
//! (`--test neural_field` alone) must build the example first
//! (`cargo build --release --example neural_field`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use resgraph::reference::forward_f64;

const SIZE: (usize, usize) = (64, 48);
const FRAMES: usize = 3;
const DT: f64 = 0.25;
/// As in the example: the time features turn once every four seconds, the colours are a
/// logistic of 4 × the network's output, and positions are pixel centres from -1 to 1.
const TIME_FREQUENCY: f64 = std::f64::consts::PI / 2.0;
const CONTRAST: f64 = 4.0;
const OCTAVES: usize = 4;
const FEATURES: usize = 2 + 4 * OCTAVES + 2;

/// The example binary cargo built beside this test's own (`target/<profile>/examples/`).
fn example_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test's path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let binary = profile_dir
        .join("examples")
        .join(format!("neural_field{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: `cargo test` builds it; with a target filter, run `cargo build --release \
         --example neural_field` first",
        binary.display()
    );
    binary
}

/// Runs `command` (the example, on `backend`) and returns its standard output; fails the test,
/// with both outputs, if it does not succeed.
fn run_example(mut command: Command, backend: &str) -> String {
    let output = command
        .env("WGPU_BACKEND", backend)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{backend}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{backend}: {}", stdout.trim());
    stdout
}

/// Every pixel's features at `time`, in the example's order, computed in f64.
fn features(time: f64) -> Vec<f32> {
    let (width, height) = SIZE;
    let mut values = Vec::with_capacity(width * height * FEATURES);
    for py in 0..height {
        for px in 0..width {
            let x = (px as f64 + 0.5) / width as f64 * 2.0 - 1.0;
            let y = 1.0 - (py as f64 + 0.5) / height as f64 * 2.0;
            values.extend([x, y]);
            for k in 0..OCTAVES {
                let frequency = std::f64::consts::PI * f64::from(1u32 << k);
                values.extend([
                    (frequency * x).sin(),
                    (frequency * x).cos(),
                    (frequency * y).sin(),
                    (frequency * y).cos(),
                ]);
            }
            let angle = time * TIME_FREQUENCY;
            values.extend([angle.sin(), angle.cos()]);
        }
    }
    values.into_iter().map(|value| value as f32).collect()
}

/// The RGBA bytes of a PNG the example wrote.
fn read_png(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("open the frame"),
    ));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut pixels).expect("PNG data");
    assert_eq!(
        (info.width as usize, info.height as usize),
        SIZE,
        "{}",
        path.display()
    );
    assert_eq!(info.color_type, png::ColorType::Rgba);
    pixels.truncate(info.buffer_size());
    pixels
}

#[test]
fn the_headless_example_draws_the_reference_network_every_frame_in_one_submission() {
    let binary = example_binary();
    for backend in common::test_backends() {
        let out = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(&binary);
        command
            .args(["--headless", "--frames", &FRAMES.to_string(), "--size"])
            .arg(format!("{}x{}", SIZE.0, SIZE.1))
            .args(["--dt", &DT.to_string(), "--out"])
            .arg(out.path());
        run_example(command, &backend);

        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("summary.json")).expect("summary.json"),
        )
        .expect("summary JSON");
        assert_eq!(
            summary["submissions_per_frame"],
            serde_json::json!(vec![1; FRAMES]),
            "{backend}: every frame must be one submission"
        );
        assert!(
            summary["frame_ms_p50"].as_f64().is_some_and(|ms| ms > 0.0),
            "{backend}: {summary}"
        );

        let graph =
            resgraph::load_model(&out.path().join("neural_field.safetensors")).expect("weights");
        let pixels = SIZE.0 * SIZE.1;
        let mut frames = Vec::new();
        for frame in 0..FRAMES {
            let image = read_png(&out.path().join(format!("frame_{frame:03}.png")));
            let reference = forward_f64(&graph, &features(frame as f64 * DT), pixels);
            let mut worst = 0u8;
            let mut squared_error = 0.0;
            for (pixel, rgb) in reference.chunks_exact(3).enumerate() {
                for (channel, &value) in rgb.iter().enumerate() {
                    let colour = 1.0 / (1.0 + (-CONTRAST * value).exp());
                    let expected = (colour * 255.0).round().clamp(0.0, 255.0) as u8;
                    let actual = image[pixel * 4 + channel];
                    worst = worst.max(actual.abs_diff(expected));
                    squared_error += (f64::from(actual) - colour * 255.0).powi(2);
                }
                assert_eq!(image[pixel * 4 + 3], 255, "{backend}: alpha");
            }
            let mse = squared_error / (pixels * 3) as f64;
            let psnr = 10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10();
            println!(
                "{backend} frame {frame}: worst pixel off by {worst}/255, PSNR {psnr:.1} dB \
                 against the f64 reference"
            );
            assert!(
                worst <= 2,
                "{backend} frame {frame}: a pixel is off by {worst}/255"
            );
            frames.push(image);
        }
        for pair in frames.windows(2) {
            let changed = pair[0]
                .chunks_exact(4)
                .zip(pair[1].chunks_exact(4))
                .filter(|(before, after)| before != after)
                .count();
            assert!(
                changed * 10 >= pixels,
                "{backend}: only {changed} of {pixels} pixels changed between frames"
            );
        }
    }
}

#[test]
fn the_example_opens_a_window_and_animates_under_a_virtual_display() {
    // A window needs a display; CI has none, so the example runs under Xvfb (`.ci/run` installs
    // it). It draws 3 frames into a winit window through a wgpu surface, one submission each,
    // and closes. Missing Xvfb fails the test: it never skips.
    let binary = example_binary();
    let xvfb_run = Path::new("/usr/bin/xvfb-run");
    assert!(
        xvfb_run.is_file(),
        "xvfb-run is missing: install the xvfb and xauth packages (as .ci/run does)"
    );
    for backend in common::test_backends() {
        let mut command = Command::new(xvfb_run);
        command
            .args(["-a", "-s", "-screen 0 640x480x24"])
            .arg(&binary)
            .args(["--size", "64x48", "--frames", "3"]);
        let stdout = run_example(command, &backend);
        assert!(
            stdout.contains("3 frames drawn in 3 submissions"),
            "{backend}: {stdout}"
        );
    }
}
