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
