//! The `resgraph` binary end to end.

mod common;

use std::process::Command;

/// A tuning cache folder private to this test binary, so tests never touch the user's cache.
fn cache_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

fn resgraph(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .args(args)
        .env_remove("RESGRAPH_ADAPTER")
        .env_remove("WGPU_BACKEND")
        .env("RESGRAPH_CACHE_DIR", cache_dir())
        .output()
        .expect("run resgraph")
}

#[test]
fn info_lists_adapters_and_the_one_it_would_use() {
    let output = resgraph(&["info"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "info failed: {stdout}");
    assert!(stdout.contains("adapter(s) found"), "{stdout}");
    assert!(stdout.contains("shader-f16"), "{stdout}");
    assert!(stdout.contains("max storage binding"), "{stdout}");
    assert!(stdout.contains("resgraph would run on ["), "{stdout}");
}

#[test]
fn info_with_an_unknown_adapter_name_fails_with_one_line() {
    let output = resgraph(&["info", "--adapter", "no such adapter anywhere"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let message = stderr
        .lines()
        .find(|line| line.starts_with("resgraph: error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(message.contains("no GPU adapter matches"), "{message}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unknown_backend_is_refused() {
    let output = resgraph(&["info", "--backend", "vulkan,opengles4"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("unknown backend \"opengles4\""), "{stderr}");
}

#[test]
fn bench_json_check_reports_every_key_and_a_small_error() {
    let output = resgraph(&[
        "bench", "--width", "33", "--depth", "2", "--batch", "3", "--iters", "3", "--warmup", "1",
        "--check", "--json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    for key in [
        "precision",
        "width",
        "depth",
        "batch",
        "iters",
        "median_ms",
        "p10_ms",
        "p90_ms",
        "gflops",
        "dispatches_per_run",
        "activation_bytes",
        "weight_bytes",
        "max_rel_err",
    ] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    assert!(report["adapter"]["name"].is_string() && report["adapter"]["backend"].is_string());
    // Two blocks: two dispatches each, or one each where the tuner measured the whole-block
    // kernel faster (at this tiny size the two forms are close, so either may win).
    let whole_blocks = report["kernels"]
        .as_array()
        .is_some_and(|kernels| kernels.iter().any(|kernel| kernel == "residual_block"));
    let expected_dispatches = if whole_blocks { 2 } else { 4 };
    assert_eq!(
        report["dispatches_per_run"], expected_dispatches,
        "{report}"
    );
    assert_eq!(report["width"], 33);
    let error = report["max_rel_err"].as_f64().expect("a number");
    assert!(error <= 1e-5, "max_rel_err {error}");
    assert!(report["p10_ms"].as_f64() <= report["median_ms"].as_f64());
    assert!(report["median_ms"].as_f64() <= report["p90_ms"].as_f64());
}

#[test]
fn bench_prints_a_table_by_default() {
    let output = resgraph(&[
        "bench", "--width", "16", "--depth", "1", "--batch", "2", "--iters", "2",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for line in [
        "latency median (full run)",
        "GFLOP/s",
        "dispatches per run",
        "weight memory",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in {stdout}");
    }
}

#[test]
fn bench_rejects_a_zero_batch_with_one_line() {
    let output = resgraph(&["bench", "--width", "16", "--depth", "1", "--batch", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("resgraph: error:") && stderr.contains("max_batch"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_in_f16_passes_its_check_and_is_refused_without_shader_f16() {
    let output = resgraph(&[
        "bench",
        "--width",
        "48",
        "--depth",
        "3",
        "--batch",
        "5",
        "--iters",
        "2",
        "--precision",
        "f16",
        "--check",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(report["precision"], "f16");
    let error = report["max_rel_err"].as_f64().expect("max_rel_err");
    assert!(error <= 1e-2 && error > 0.0, "f16 error {error}");

    // llvmpipe's GL has no shader-f16: f16 is a clear error, auto falls back to f32.
    let output = resgraph(&[
        "bench",
        "--backend",
        "gl",
        "--width",
        "8",
        "--depth",
        "1",
        "--batch",
        "1",
        "--iters",
        "1",
        "--precision",
        "f16",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("SHADER_F16"), "{stderr}");
    let output = resgraph(&[
        "bench",
        "--backend",
        "gl",
        "--width",
        "8",
        "--depth",
        "1",
        "--batch",
        "1",
        "--iters",
        "1",
        "--precision",
        "auto",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(report["precision"], "f32");
}

#[test]
fn a_second_bench_does_not_retune_and_says_so() {
    // A cache of its own: the other tests' benches run in parallel and write the shared one.
    let cache = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_resgraph"))
            .args(args)
            .env_remove("RESGRAPH_ADAPTER")
            .env_remove("WGPU_BACKEND")
            .env("RESGRAPH_CACHE_DIR", cache.path())
            .output()
            .expect("run resgraph");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let args = [
        "bench", "--width", "24", "--depth", "2", "--batch", "7", "--iters", "2",
    ];
    let first = run(&args);
    assert!(first.contains("tuning: measured"), "{first}");
    let second = run(&args);
    assert!(second.contains("nothing re-tuned"), "{second}");
    let tune = run(&["tune", "--width", "24", "--depth", "2", "--batch", "7"]);
    assert!(
        tune.contains("(cached)")
            && tune.contains("layer rows=7 out=24 in=24")
            && (tune.contains("[GPU timestamps]") || tune.contains("[wall clock]")),
        "{tune}"
    );
}

#[test]
fn bench_arch_runs_a_synthetic_resnet_and_passes_its_check() {
    let output = resgraph(&[
        "bench",
        "--arch",
        "resnet18",
        "--image",
        "32",
        "--classes",
        "7",
        "--batch",
        "2",
        "--iters",
        "1",
        "--warmup",
        "1",
        "--check",
        "--json",
        "--no-tune",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench --arch failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["arch"], "resnet18");
    assert_eq!(json["image"], 32);
    let error = json["max_rel_err"].as_f64().expect("a checked error");
    assert!(error <= 1e-5, "{error}");
    let kernels = json["kernels"].to_string();
    for kernel in ["conv2d", "pool2d", "global_avg_pool"] {
        assert!(kernels.contains(kernel), "{kernels}");
    }
    let unknown = resgraph(&["bench", "--arch", "resnet9000"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("resnet50"), "{stderr}");
}

/// The one `resgraph: error:` line of a failed command, after checking that it did not panic or
/// abort (exit status 1, the CLI's status for a reported error).
fn one_error_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("memory allocation"), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("resgraph: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

#[test]
fn bench_refuses_sizes_past_the_device_or_the_host_before_allocating_them() {
    let huge = "18446744073709551615";
    for (args, expected) in [
        // 40 GB of weights in one layer: past every device's binding limit.
        (
            vec!["bench", "--width", "100000", "--depth", "1", "--no-tune"],
            "max_storage_buffer_binding_size",
        ),
        (
            vec!["bench", "--width", huge, "--depth", "1", "--no-tune"],
            "max_storage_buffer_binding_size",
        ),
        // Each layer fits a device buffer; ten thousand of them do not fit the host.
        (
            vec!["bench", "--width", "5000", "--depth", "100000", "--no-tune"],
            "host memory",
        ),
        (
            vec![
                "bench",
                "--width",
                "8",
                "--depth",
                "1",
                "--batch",
                huge,
                "--no-tune",
            ],
            "bytes",
        ),
        (
            vec![
                "bench",
                "--arch",
                "resnet18",
                "--classes",
                "100000000",
                "--no-tune",
            ],
            "classifier",
        ),
    ] {
        let started = std::time::Instant::now();
        let output = resgraph(&args);
        let line = one_error_line(&output);
        assert!(line.contains(expected), "{args:?}: {line}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn bench_options_that_would_be_ignored_are_refused() {
    for args in [
        vec!["bench", "--iters", "0"],
        vec!["bench", "--width", "64", "--model", "model.onnx"],
        vec!["bench", "--depth", "3", "--arch", "resnet18"],
    ] {
        let output = resgraph(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // clap's usage error: status 2 and a line naming the argument.
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[1]), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_finishes_with_a_warning_when_the_tuning_cache_cannot_be_saved() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_a_folder = dir.path().join("file");
    std::fs::write(&not_a_folder, b"").expect("file");
    let output = Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .args([
            "bench", "--width", "24", "--depth", "1", "--batch", "3", "--iters", "1",
        ])
        .env_remove("RESGRAPH_ADAPTER")
        .env_remove("WGPU_BACKEND")
        .env("RESGRAPH_CACHE_DIR", &not_a_folder)
        .output()
        .expect("run resgraph");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: the tuning choices could not be saved")
            && stderr.contains("not a folder"),
        "{stderr}"
    );
    assert!(stdout.contains("choices not saved"), "{stdout}");
    assert!(stdout.contains("throughput"), "{stdout}");
}

// Linux's platform cache folder is $HOME/.cache (another system's is elsewhere).
#[cfg(target_os = "linux")]
#[test]
fn an_empty_cache_dir_setting_is_unset_not_the_current_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::create_dir_all(&work).expect("work");
    let output = Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .args([
            "bench", "--width", "24", "--depth", "1", "--batch", "3", "--iters", "1",
        ])
        .current_dir(&work)
        .env_remove("RESGRAPH_ADAPTER")
        .env_remove("WGPU_BACKEND")
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", &home)
        .env("RESGRAPH_CACHE_DIR", "")
        .output()
        .expect("run resgraph");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !work.join("tuning.json").exists(),
        "written in the current folder"
    );
    assert!(
        home.join(".cache/resgraph/tuning.json").exists(),
        "not in the platform's cache folder"
    );
}

#[test]
fn no_driver_noise_about_xdg_runtime_dir_when_it_is_unset() {
    let output = Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RESGRAPH_ADAPTER")
        .env_remove("WGPU_BACKEND")
        .output()
        .expect("run resgraph");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
}

#[test]
fn a_setting_resgraph_does_not_understand_is_refused_not_ignored() {
    for (name, value, expected) in [
        ("WGPU_POWER_PREF", "fastest", "WGPU_POWER_PREF"),
        (
            "RESGRAPH_COOPERATIVE_MATRIX",
            "maybe",
            "RESGRAPH_COOPERATIVE_MATRIX",
        ),
        ("WGPU_BACKEND", "vulkan,directx", "\"directx\""),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_resgraph"))
            .arg("info")
            .env(name, value)
            .output()
            .expect("run resgraph");
        let line = one_error_line(&output);
        assert!(line.contains(expected), "{name}={value}: {line}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .arg("info")
        .env("WGPU_POWER_PREF", "High")
        .output()
        .expect("run resgraph");
    assert!(output.status.success());
}

#[cfg(unix)]
#[test]
fn an_interrupted_command_exits_130_and_leaves_no_folder_behind() {
    // A long bench, interrupted once it runs: the handler removes what the CLI made (here the
    // private XDG_RUNTIME_DIR folder, in a TMPDIR of the test's own) and exits with 130.
    let tmp = tempfile::tempdir().expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .args([
            "bench",
            "--width",
            "16",
            "--depth",
            "1",
            "--batch",
            "2",
            "--iters",
            "10000000",
            "--no-tune",
        ])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RESGRAPH_ADAPTER")
        .env_remove("WGPU_BACKEND")
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn resgraph");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let made = common::file_names(tmp.path());
    assert!(
        made.iter()
            .any(|name| name.starts_with("resgraph-runtime-")),
        "the runtime folder was not made: {made:?}"
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("list").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The standard output of a command that must have succeeded; its standard error otherwise.
fn succeeded(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "resgraph failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The folder of `scripts/classify_reference.py`'s images and torchvision's answers for them:
/// `RESGRAPH_CLASSIFY_CASES` (a fresh set `.ci/run` writes for an ImageNet-sized ResNet), else
/// the committed one.
fn classify_data() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("RESGRAPH_CLASSIFY_CASES")
        .map(|cases| root.join(cases))
        .unwrap_or_else(|| root.join("tests/data/classify"))
}

/// The committed ResNet-18 of 29 × 32 images and 10 classes, for the tests of classify's options
/// and errors.
fn classify_model() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/onnx_resnet/resnet18_torchscript_opset17_w4_29x32.onnx");
    path.display().to_string()
}

#[test]
fn classify_gives_torchvisions_probabilities_for_png_and_jpeg_images() {
    let data = classify_data();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let cases = manifest["cases"].as_array().expect("cases");
    let images: Vec<String> = cases
        .iter()
        .map(|case| {
            data.join(case["image"].as_str().expect("image"))
                .display()
                .to_string()
        })
        .collect();
    // The model the answers came from, named from the checkout.
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(manifest["model"].as_str().expect("model"))
        .display()
        .to_string();
    // Batches of 4: seven images or more run as a batch of four and a smaller one.
    let mut args = vec!["classify".to_string(), model, "--json".into()];
    args.extend(["--top", "10", "--batch", "4"].map(String::from));
    args.extend(images.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = succeeded(&resgraph(&args));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        cases.len(),
        "one JSON line per image: {stdout}"
    );
    for ((case, image), line) in cases.iter().zip(&images).zip(lines) {
        let answer: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(answer["image"].as_str(), Some(image.as_str()));
        let expected =
            resgraph::read_npy(&data.join(case["probabilities"].as_str().expect("probabilities")))
                .expect("expected probabilities");
        let classes = answer["classes"].as_array().expect("classes");
        assert_eq!(classes.len(), 10, "{line}");
        let mut previous = f64::INFINITY;
        for class in classes {
            let index = class["class"].as_u64().expect("class") as usize;
            let probability = class["probability"].as_f64().expect("probability");
            assert!(probability <= previous, "{image}: not ranked: {line}");
            previous = probability;
            // ImageNet's names come with a 1000-class model only.
            assert_eq!(
                class["label"].is_string(),
                expected.data.len() == 1000,
                "{image}: {line}"
            );
            // A PNG's input is Pillow's to the bit (tests/preprocess.rs), so only the model's
            // f32 arithmetic differs from onnxruntime's; a JPEG decoder may read a pixel a
            // level differently from libjpeg.
            let tolerance = if image.ends_with(".png") { 1e-5 } else { 3e-3 };
            let reference = f64::from(expected.data[index]);
            assert!(
                (probability - reference).abs() <= tolerance,
                "{image}: class {index} has probability {probability}, torchvision's {reference}"
            );
        }
    }
}

#[test]
fn classify_names_classes_from_a_labels_file_and_refuses_what_it_cannot_use_in_one_line() {
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/classify");
    let image = committed.join("wide_61x47.png").display().to_string();
    let model = classify_model();
    let folder = tempfile::tempdir().expect("temp dir");
    let labels = folder.path().join("labels.txt");
    let names: Vec<String> = (0..10)
        .map(|class| format!("thing number {class}"))
        .collect();
    std::fs::write(&labels, names.join("\n") + "\n").expect("labels");
    let labels = labels.display().to_string();
    let stdout = succeeded(&resgraph(&[
        "classify", &model, &image, "--labels", &labels, "--top", "2",
    ]));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], image);
    // torchvision's top class for this image is 8 (14.6%).
    assert!(lines[1].ends_with("8  thing number 8"), "{stdout}");
    assert!(lines[1].contains('%'), "{stdout}");

    let short = folder.path().join("short.txt");
    std::fs::write(&short, "one\ntwo\n").expect("short labels");
    let short = short.display().to_string();
    let message = one_error_line(&resgraph(&["classify", &model, &image, "--labels", &short]));
    assert!(
        message.contains("2 class names") && message.contains("10 classes"),
        "{message}"
    );

    let text = folder.path().join("notes.txt");
    std::fs::write(&text, "not an image at all").expect("text");
    let text = text.display().to_string();
    let message = one_error_line(&resgraph(&["classify", &model, &text]));
    assert!(message.contains("not a PNG or JPEG"), "{message}");
    // Named as a PNG, it is read as one, and fails as one.
    let named = folder.path().join("notes.png");
    std::fs::write(&named, "not an image at all").expect("text");
    let named = named.display().to_string();
    let message = one_error_line(&resgraph(&["classify", &model, &named]));
    assert!(message.contains("cannot be decoded"), "{message}");

    let png = std::fs::read(committed.join("wide_61x47.png")).expect("png");
    let truncated = folder.path().join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).expect("truncated");
    let truncated = truncated.display().to_string();
    let message = one_error_line(&resgraph(&["classify", &model, &truncated]));
    assert!(message.contains("cannot be decoded"), "{message}");

    let missing = folder.path().join("missing.jpg").display().to_string();
    let message = one_error_line(&resgraph(&["classify", &model, &missing]));
    assert!(message.contains("missing.jpg"), "{message}");

    let dense = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/onnx/external_data_w23_stem_head.onnx")
        .display()
        .to_string();
    let message = one_error_line(&resgraph(&["classify", &dense, &image]));
    assert!(message.contains("input is an RGB image"), "{message}");
}
