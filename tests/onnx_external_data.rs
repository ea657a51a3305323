//! ONNX models whose weights live in a side file (`m.onnx` + `m.onnx.data`), as PyTorch's default
//! exporter writes them: they load in the library and in every CLI command that takes a model,
//! with the same answers as the same model stored in one file, and a broken side file is a
//! one-line error naming the file and the tensor.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use resgraph::graph::synthetic::random_input;
use resgraph::model::onnx::proto;
use resgraph::reference::forward_f64;
use resgraph::{load_model, parse_model_bytes, read_npy};

/// A committed model with a stem, two residual blocks and a head (13 → 17 → 5), every weight
/// stored inside the model.
fn embedded_model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx/pytorch_gemm_w17_stem_head.onnx")
}

/// The raw little-endian bytes of an initializer stored inside the model.
fn tensor_bytes(tensor: &proto::TensorProto) -> Vec<u8> {
    match &tensor.raw_data {
        Some(raw) if !raw.is_empty() => raw.clone(),
        _ if !tensor.float_data.is_empty() => tensor
            .float_data
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect(),
        _ => tensor
            .int64_data
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect(),
    }
}

/// Moves every initializer of the model at `source` into `folder/data_name`, each at an offset
/// aligned to 4096 bytes after a 2048-byte gap (as PyTorch's exporter aligns them), and writes
/// the model to `folder/model_name`. `edit` may change each tensor's external-data entries.
fn externalize(
    folder: &Path,
    model_name: &str,
    data_name: &str,
    edit: impl Fn(&str, &mut Vec<(String, String)>),
) -> PathBuf {
    let bytes = std::fs::read(embedded_model_path()).expect("read the committed model");
    let mut model = proto::ModelProto::decode(bytes.as_slice()).expect("decode");
    let graph = model.graph.as_mut().expect("a graph");
    let mut data = Vec::new();
    for tensor in &mut graph.initializer {
        let payload = tensor_bytes(tensor);
        let offset = (data.len() + 2048).next_multiple_of(4096);
        data.resize(offset, 0xAB);
        data.extend_from_slice(&payload);
        let mut entries = vec![
            ("location".to_string(), data_name.to_string()),
            ("offset".to_string(), offset.to_string()),
            ("length".to_string(), payload.len().to_string()),
        ];
        edit(tensor.name.as_deref().unwrap_or_default(), &mut entries);
        tensor.raw_data = None;
        tensor.float_data.clear();
        tensor.int64_data.clear();
        tensor.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
        tensor.external_data = entries
            .into_iter()
            .map(|(key, value)| proto::StringStringEntryProto {
                key: Some(key),
                value: Some(value),
            })
            .collect();
    }
    std::fs::write(folder.join(data_name), &data).expect("write the data file");
    let path = folder.join(model_name);
    std::fs::write(&path, model.encode_to_vec()).expect("write the model");
    path
}

fn no_edit(_: &str, _: &mut Vec<(String, String)>) {}

/// The error `load_model` gives for the model at `path`, which must be one line.
fn load_error(path: &Path) -> String {
    let error = load_model(path).expect_err("the model must be refused");
    let text = error.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    text
}

#[test]
fn a_model_with_external_data_gives_the_same_answers_as_the_embedded_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let external = externalize(dir.path(), "m.onnx", "m.onnx.data", no_edit);
    let embedded_graph = load_model(&embedded_model_path()).expect("embedded model");
    let external_graph = load_model(&external).expect("external data model");
    assert_eq!(
        external_graph.parameter_count(),
        embedded_graph.parameter_count()
    );
    let batch = 3;
    let input = random_input(batch * embedded_graph.input_width(), 11);
    let expected = forward_f64(&embedded_graph, &input, batch);
    let actual = forward_f64(&external_graph, &input, batch);
    assert_eq!(actual, expected, "the weights differ");
}

#[test]
fn external_data_without_a_length_runs_to_the_end_of_its_own_file() {
    // One side file per tensor and no offset or length: the other way onnx writes external data.
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = std::fs::read(embedded_model_path()).expect("read");
    let mut model = proto::ModelProto::decode(bytes.as_slice()).expect("decode");
    for (index, tensor) in model
        .graph
        .as_mut()
        .expect("graph")
        .initializer
        .iter_mut()
        .enumerate()
    {
        let name = format!("tensor_{index}.bin");
        std::fs::write(dir.path().join(&name), tensor_bytes(tensor)).expect("write");
        tensor.raw_data = None;
        tensor.float_data.clear();
        tensor.int64_data.clear();
        tensor.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
        tensor.external_data = vec![proto::StringStringEntryProto {
            key: Some("location".to_string()),
            value: Some(name),
        }];
    }
    let path = dir.path().join("split.onnx");
    std::fs::write(&path, model.encode_to_vec()).expect("write");
    let graph = load_model(&path).expect("load");
    let reference = load_model(&embedded_model_path()).expect("load");
    let input = random_input(2 * graph.input_width(), 12);
    assert_eq!(
        forward_f64(&graph, &input, 2),
        forward_f64(&reference, &input, 2)
    );
}

#[test]
fn a_missing_short_or_directory_data_file_names_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = externalize(dir.path(), "m.onnx", "m.onnx.data", no_edit);

    std::fs::remove_file(dir.path().join("m.onnx.data")).expect("remove");
    let missing = load_error(&path);
    assert!(missing.contains("m.onnx.data"), "{missing}");
    assert!(missing.contains("initializer"), "{missing}");

    std::fs::create_dir(dir.path().join("m.onnx.data")).expect("mkdir");
    let directory = load_error(&path);
    assert!(directory.contains("not a regular file"), "{directory}");
    std::fs::remove_dir(dir.path().join("m.onnx.data")).expect("rmdir");

    // The first tensor starts at 4096 and needs 884 bytes: a 4500-byte file cuts it short.
    std::fs::write(dir.path().join("m.onnx.data"), [0u8; 4500]).expect("write");
    let short = load_error(&path);
    assert!(short.contains("too short"), "{short}");
    assert!(short.contains("m.onnx.data"), "{short}");
}

#[test]
fn locations_outside_the_models_folder_are_refused() {
    let outer = tempfile::tempdir().expect("temp dir");
    let folder = outer.path().join("model");
    std::fs::create_dir(&folder).expect("mkdir");
    // A data file one level up, where a `..` would find it.
    externalize(outer.path(), "outside.onnx", "outside.onnx.data", no_edit);
    let parent = externalize(&folder, "parent.onnx", "unused.data", |_, entries| {
        entries[0].1 = "../outside.onnx.data".to_string();
    });
    let error = load_error(&parent);
    assert!(error.contains("refused"), "{error}");
    let absolute_target = outer.path().join("outside.onnx.data");
    let absolute = externalize(&folder, "absolute.onnx", "unused2.data", |_, entries| {
        entries[0].1 = absolute_target.display().to_string();
    });
    let error = load_error(&absolute);
    assert!(error.contains("refused"), "{error}");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&absolute_target, folder.join("link.data")).expect("symlink");
        let linked = externalize(&folder, "linked.onnx", "unused3.data", |_, entries| {
            entries[0].1 = "link.data".to_string();
        });
        let error = load_error(&linked);
        assert!(error.contains("leads out of the model's folder"), "{error}");
    }
}

#[test]
fn offsets_and_lengths_that_disagree_with_the_file_or_the_dims_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let past_end = externalize(dir.path(), "past.onnx", "past.onnx.data", |_, entries| {
        entries[1].1 = "999999999".to_string();
    });
    let error = load_error(&past_end);
    assert!(error.contains("past the end"), "{error}");
    let wrong_length = externalize(dir.path(), "wrong.onnx", "wrong.onnx.data", |_, entries| {
        entries[2].1 = "4".to_string();
    });
    let error = load_error(&wrong_length);
    assert!(error.contains("does not match"), "{error}");
    let not_a_number = externalize(dir.path(), "nan.onnx", "nan.onnx.data", |_, entries| {
        entries[1].1 = "twelve".to_string();
    });
    let error = load_error(&not_a_number);
    assert!(error.contains("not a non-negative integer"), "{error}");
}

fn resgraph(cache: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resgraph"))
        .args(args)
        .env_remove("RESGRAPH_ADAPTER")
        .env_remove("WGPU_BACKEND")
        .env("RESGRAPH_CACHE_DIR", cache)
        .output()
        .expect("run resgraph")
}

fn succeeded(output: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{what} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn run_inspect_convert_and_bench_take_a_model_with_external_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let external = externalize(dir.path(), "m.onnx", "m.onnx.data", no_edit);
    let external = external.to_str().expect("a UTF-8 path");
    let embedded = embedded_model_path();
    let embedded = embedded.to_str().expect("a UTF-8 path");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let graph = load_model(Path::new(embedded)).expect("load");
    std::fs::write(
        file("x.npy"),
        resgraph::model::npy::encode_npy(
            &[4, graph.input_width()],
            &random_input(4 * graph.input_width(), 13),
        ),
    )
    .expect("write the input");

    let run = |model: &str, output: &str| {
        let args = [
            "run",
            model,
            "--input",
            &file("x.npy"),
            "--output",
            &file(output),
        ];
        succeeded(&resgraph(&cache, &args), "run");
        read_npy(Path::new(&file(output))).expect("read the output")
    };
    let from_external = run(external, "external.npy");
    let from_embedded = run(embedded, "embedded.npy");
    assert_eq!(from_external.shape, from_embedded.shape);
    assert_eq!(from_external.data, from_embedded.data);

    let inspect = succeeded(&resgraph(&cache, &["inspect", external]), "inspect");
    let inspect_embedded = succeeded(&resgraph(&cache, &["inspect", embedded]), "inspect");
    assert_eq!(
        inspect.replace(external, "MODEL"),
        inspect_embedded.replace(embedded, "MODEL")
    );

    let converted = file("converted.safetensors");
    succeeded(
        &resgraph(&cache, &["convert", external, &converted]),
        "convert",
    );
    let reloaded = load_model(Path::new(&converted)).expect("the converted model");
    let input = random_input(2 * graph.input_width(), 14);
    assert_eq!(
        forward_f64(&reloaded, &input, 2),
        forward_f64(&graph, &input, 2)
    );

    let bench = resgraph(
        &cache,
        &[
            "bench", "--model", external, "--batch", "2", "--iters", "2", "--warmup", "1",
            "--check", "--json",
        ],
    );
    let stdout = succeeded(&bench, "bench --model");
    assert!(stdout.contains("\"max_rel_err\""), "{stdout}");
}

#[test]
fn a_model_and_its_side_file_given_as_bytes_load_as_from_their_folder() {
    // What a browser hands over: the model's bytes and the side file's, with no folder.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = externalize(dir.path(), "m.onnx", "m.onnx.data", no_edit);
    let model = std::fs::read(&path).expect("model");
    let data = std::fs::read(dir.path().join("m.onnx.data")).expect("data");
    let from_bytes = parse_model_bytes("m.onnx", &model, Some(&data)).expect("from bytes");
    let from_folder = load_model(&path).expect("from the folder");
    let input = random_input(2 * from_folder.input_width(), 5);
    assert_eq!(
        forward_f64(&from_bytes, &input, 2),
        forward_f64(&from_folder, &input, 2),
        "the weights differ"
    );
    let one_line = |error: resgraph::Error| {
        let text = error.to_string();
        assert!(!text.contains('\n'), "not one line: {text}");
        text
    };
    let missing = one_line(parse_model_bytes("m.onnx", &model, None).expect_err("no side file"));
    assert!(
        missing.contains("m.onnx.data") && missing.contains("was not given"),
        "{missing}"
    );
    let short = one_line(
        parse_model_bytes("m.onnx", &model, Some(&data[..data.len() - 1])).expect_err("short"),
    );
    assert!(short.contains("too short"), "{short}");
    // Tensors spread over two files cannot come from one buffer.
    let two_files = externalize(dir.path(), "two.onnx", "two.onnx.data", |name, entries| {
        if name.contains("head") {
            entries[0].1 = "other.bin".to_string();
        }
    });
    let model = std::fs::read(two_files).expect("model");
    let data = std::fs::read(dir.path().join("two.onnx.data")).expect("data");
    let mixed = one_line(parse_model_bytes("two.onnx", &model, Some(&data)).expect_err("two"));
    assert!(
        mixed.contains("other.bin") || mixed.contains("two.onnx.data"),
        "{mixed}"
    );
    assert!(mixed.contains("several files"), "{mixed}");
}
