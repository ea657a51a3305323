//! The `resgraph` binary end to end.

use std::process::Command;

fn resgraph(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .args(args)
        .env_remove("RESGRAPH_ADAPTER")
        .env_remove("WGPU_BACKEND")
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
