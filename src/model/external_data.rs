//! ONNX external data: tensors whose bytes live in a side file next to the model, as PyTorch's
//! default exporter (`torch.onnx.export`, dynamo, since 2.9) and `onnx.save_model(...,
//! save_as_external_data=True)` write them (`m.onnx` + `m.onnx.data`).
//!
//! A tensor names its file with the `location` entry, relative to the model's folder, and its
//! bytes with `offset` and `length`. Because a model file may come from anyone, the location is
//! confined to the model's folder: an absolute path, a `..` component, or a symlink that leads out
//! of the folder is refused. The range is checked against the file's real size and against what
//! the tensor's dims need before anything is read, and only that range is read: a multi-gigabyte
//! side file is never read whole.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Where one tensor's bytes are, as its `external_data` entries say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExternalLocation {
    /// The `location` entry: a path relative to the model's folder.
    pub location: String,
    /// The `offset` entry: where the bytes start (0 when absent).
    pub offset: u64,
    /// The `length` entry: how many bytes (to the end of the file when absent).
    pub length: Option<u64>,
}

impl ExternalLocation {
    /// Reads the `location`, `offset` and `length` entries (`checksum` and unknown keys are
    /// ignored, as the ONNX specification allows). `what` names the tensor in errors.
    pub(crate) fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
        what: &str,
    ) -> std::result::Result<Self, String> {
        let (mut location, mut offset, mut length) = (None, 0u64, None);
        let number = |key: &str, value: &str| {
            value.trim().parse::<u64>().map_err(|_| {
                format!("{what}: external data {key} {value:?} is not a non-negative integer")
            })
        };
        for (key, value) in entries {
            match key {
                "location" => location = Some(value.to_string()),
                "offset" => offset = number(key, value)?,
                "length" => length = Some(number(key, value)?),
                _ => {}
            }
        }
        let location = location
            .filter(|location| !location.is_empty())
            .ok_or_else(|| format!("{what} stores its data externally but names no location"))?;
        Ok(ExternalLocation {
            location,
            offset,
            length,
        })
    }
}

/// Checks that `location` is a plain relative path that stays inside its folder by name: not
/// absolute, no root or drive, no `..`.
fn check_relative(location: &str, what: &str) -> std::result::Result<(), String> {
    let path = Path::new(location);
    let escapes = path.is_absolute()
        || path.components().any(|component| {
            matches!(
                component,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        });
    if escapes {
        return Err(format!(
            "{what}: external data location {location:?} is refused: it must be a path relative \
             to the model's folder, without `..`"
        ));
    }
    Ok(())
}

/// The side file `location` inside `folder`, after checking that it stays there once symlinks
/// are resolved and that it is a regular file.
fn resolve(folder: &Path, location: &str, what: &str) -> std::result::Result<PathBuf, String> {
    check_relative(location, what)?;
    let joined = folder.join(location);
    let shown = joined.display();
    let real_folder = folder
        .canonicalize()
        .map_err(|error| format!("{what}: the model's folder {}: {error}", folder.display()))?;
    let real_file = joined
        .canonicalize()
        .map_err(|error| format!("{what}: external data file {shown}: {error}"))?;
    if !real_file.starts_with(&real_folder) {
        return Err(format!(
            "{what}: external data file {shown} is refused: it leads out of the model's folder \
             (to {})",
            real_file.display()
        ));
    }
    let metadata = std::fs::metadata(&real_file)
        .map_err(|error| format!("{what}: external data file {shown}: {error}"))?;
    if !metadata.is_file() {
        return Err(format!(
            "{what}: external data file {shown} is not a regular file"
        ));
    }
    Ok(real_file)
}

/// Where an ONNX model's external data comes from.
#[derive(Clone, Copy, Debug)]
pub enum ExternalData<'a> {
    /// Nowhere: a tensor stored externally is an error saying so.
    Unavailable,
    /// The model's folder on the file system; each tensor's `location` is confined to it.
    Folder(&'a Path),
    /// The side file's bytes, from a host without files (a page's `ArrayBuffer`, say). Every
    /// external tensor must name one and the same `location` (a plain relative path); its
    /// ranges are checked against these bytes.
    Buffer(&'a [u8]),
}

/// Reads the `expected_len` bytes of one tensor described by `external` out of the side file's
/// bytes, `data`. `what` names the tensor, `model` the model, in the one-line error.
pub(crate) fn slice_external_bytes(
    data: &[u8],
    external: &ExternalLocation,
    expected_len: u64,
    what: &str,
    model: &str,
) -> Result<Vec<u8>> {
    let range = check_relative(&external.location, what).and_then(|()| {
        let shown = format!("{} (given as bytes)", external.location);
        checked_range(external, data.len() as u64, expected_len, what, &shown)
    });
    let (offset, length) = range.map_err(|reason| Error::Model {
        path: model.to_string(),
        reason,
    })?;
    // Both fit: they were checked against the slice's own length.
    Ok(data[offset as usize..(offset + length) as usize].to_vec())
}

/// The tensor's `(offset, length)` in a side file of `size` bytes, after checking the range
/// against the file and `expected_len` against what the tensor's dims need. `shown` names the
/// file in the message.
fn checked_range(
    external: &ExternalLocation,
    size: u64,
    expected_len: u64,
    what: &str,
    shown: &str,
) -> std::result::Result<(u64, u64), String> {
    let offset = external.offset;
    if offset > size {
        return Err(format!(
            "{what}: external data offset {offset} is past the end of {shown} ({size} bytes)"
        ));
    }
    let length = external.length.unwrap_or(size - offset);
    if length != expected_len {
        return Err(format!(
            "{what}: external data length {length} in {shown} does not match the {expected_len} \
             bytes its dims and data type need"
        ));
    }
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "{what}: external data file {shown} is too short: the tensor needs bytes \
             {offset}..{} and the file has {size}",
            offset.saturating_add(length)
        ));
    }
    Ok((offset, length))
}

/// Reads the `expected_len` bytes of one tensor described by `external`, relative to `folder`.
/// `what` names the tensor, `model` the model file, in the one-line error.
pub(crate) fn read_external_bytes(
    folder: &Path,
    external: &ExternalLocation,
    expected_len: u64,
    what: &str,
    model: &str,
) -> Result<Vec<u8>> {
    read_range(folder, external, expected_len, what).map_err(|reason| Error::Model {
        path: model.to_string(),
        reason,
    })
}

fn read_range(
    folder: &Path,
    external: &ExternalLocation,
    expected_len: u64,
    what: &str,
) -> std::result::Result<Vec<u8>, String> {
    let file_path = resolve(folder, &external.location, what)?;
    let shown = folder.join(&external.location).display().to_string();
    let mut file = File::open(&file_path)
        .map_err(|error| format!("{what}: external data file {shown}: {error}"))?;
    let size = file
        .metadata()
        .map_err(|error| format!("{what}: external data file {shown}: {error}"))?
        .len();
    let (offset, length) = checked_range(external, size, expected_len, what, &shown)?;
    let length = usize::try_from(length)
        .map_err(|_| format!("{what}: {length} bytes do not fit this machine's address space"))?;
    let mut bytes = vec![0u8; length];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|error| format!("{what}: reading external data file {shown}: {error}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(location: &str, offset: u64, length: Option<u64>) -> ExternalLocation {
        ExternalLocation {
            location: location.to_string(),
            offset,
            length,
        }
    }

    fn message(result: Result<Vec<u8>>) -> String {
        match result {
            Ok(bytes) => panic!("read {} bytes, expected an error", bytes.len()),
            Err(error) => {
                let text = error.to_string();
                assert!(!text.contains('\n'), "not one line: {text}");
                text
            }
        }
    }

    #[test]
    fn entries_give_location_offset_and_length() {
        let parsed = ExternalLocation::from_entries(
            [
                ("location", "m.onnx.data"),
                ("offset", "2048"),
                ("length", "16384"),
                ("checksum", "ignored"),
            ],
            "initializer \"w\"",
        );
        assert_eq!(parsed, Ok(location("m.onnx.data", 2048, Some(16384))));
        let defaults = ExternalLocation::from_entries([("location", "d")], "t");
        assert_eq!(defaults, Ok(location("d", 0, None)));
        for bad in [
            vec![("offset", "0")],
            vec![("location", "")],
            vec![("location", "d"), ("offset", "-1")],
            vec![("location", "d"), ("length", "ten")],
        ] {
            let error = ExternalLocation::from_entries(bad.clone(), "initializer \"w\"")
                .expect_err("refused");
            assert!(error.contains("initializer \"w\""), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_range_inside_the_folder_is_read_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data: Vec<u8> = (0..=255u8).collect();
        std::fs::write(dir.path().join("m.onnx.data"), &data).expect("write");
        let bytes = read_external_bytes(
            dir.path(),
            &location("m.onnx.data", 16, Some(8)),
            8,
            "initializer \"w\"",
            "m.onnx",
        )
        .expect("read");
        assert_eq!(bytes, (16..24u8).collect::<Vec<_>>());
        // Without a length, the range runs to the end of the file.
        let rest =
            read_external_bytes(dir.path(), &location("m.onnx.data", 250, None), 6, "t", "m")
                .expect("read");
        assert_eq!(rest, vec![250, 251, 252, 253, 254, 255]);
        // A subfolder is inside the folder too.
        std::fs::create_dir(dir.path().join("weights")).expect("mkdir");
        std::fs::write(dir.path().join("weights/w.bin"), [7u8; 4]).expect("write");
        let nested =
            read_external_bytes(dir.path(), &location("weights/w.bin", 0, None), 4, "t", "m")
                .expect("read");
        assert_eq!(nested, vec![7; 4]);
    }

    #[test]
    fn ranges_past_the_end_or_of_the_wrong_length_are_refused_before_reading() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("m.onnx.data"), [0u8; 100]).expect("write");
        let read = |offset, length, expected| {
            read_external_bytes(
                dir.path(),
                &location("m.onnx.data", offset, length),
                expected,
                "initializer \"stem.weight\"",
                "m.onnx",
            )
        };
        let short = message(read(96, Some(8), 8));
        assert!(
            short.contains("too short") && short.contains("stem.weight"),
            "{short}"
        );
        assert!(short.contains("m.onnx.data"), "{short}");
        let past = message(read(101, Some(0), 0));
        assert!(past.contains("past the end"), "{past}");
        let overflow = message(read(u64::MAX - 2, Some(8), 8));
        assert!(overflow.contains("past the end"), "{overflow}");
        let wrong = message(read(0, Some(16), 8));
        assert!(wrong.contains("does not match"), "{wrong}");
        let rest_wrong = message(read(0, None, 8));
        assert!(rest_wrong.contains("does not match"), "{rest_wrong}");
    }

    #[test]
    fn missing_files_and_directories_are_one_line_errors_naming_file_and_tensor() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("m.onnx.data")).expect("mkdir");
        let read = |name: &str| {
            read_external_bytes(
                dir.path(),
                &location(name, 0, Some(4)),
                4,
                "initializer \"fc.bias\"",
                "m.onnx",
            )
        };
        let directory = message(read("m.onnx.data"));
        assert!(directory.contains("not a regular file"), "{directory}");
        let missing = message(read("gone.onnx.data"));
        assert!(
            missing.contains("gone.onnx.data") && missing.contains("fc.bias"),
            "{missing}"
        );
    }

    #[test]
    fn locations_that_leave_the_models_folder_are_refused() {
        let outer = tempfile::tempdir().expect("temp dir");
        let folder = outer.path().join("model");
        std::fs::create_dir(&folder).expect("mkdir");
        let secret = outer.path().join("secret.bin");
        std::fs::write(&secret, [1u8; 4]).expect("write");
        let read = |name: &str| {
            read_external_bytes(
                &folder,
                &location(name, 0, Some(4)),
                4,
                "initializer \"w\"",
                "m",
            )
        };
        for escaping in ["../secret.bin", "weights/../../secret.bin"] {
            let error = message(read(escaping));
            assert!(error.contains("refused"), "{escaping}: {error}");
        }
        let absolute = secret.display().to_string();
        let error = message(read(&absolute));
        assert!(error.contains("refused"), "{error}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&secret, folder.join("link.bin")).expect("symlink");
            let error = message(read("link.bin"));
            assert!(error.contains("leads out of the model's folder"), "{error}");
            // A symlink that stays inside the folder is fine.
            std::fs::write(folder.join("real.bin"), [3u8; 4]).expect("write");
            std::os::unix::fs::symlink(folder.join("real.bin"), folder.join("inside.bin"))
                .expect("symlink");
            assert_eq!(read("inside.bin").expect("read"), vec![3; 4]);
        }
    }

    #[test]
    fn offsets_past_four_gibibytes_are_read_by_range_from_a_sparse_file() {
        // The file is 5 GiB long but sparse: reading it whole would take seconds and gigabytes;
        // reading the range takes a few bytes.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big.onnx.data");
        let file = File::create(&path).expect("create");
        let size = 5u64 << 30;
        file.set_len(size).expect("sparse length");
        drop(file);
        {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open");
            file.seek(SeekFrom::Start(size - 8)).expect("seek");
            file.write_all(&[9u8; 8]).expect("write");
        }
        let bytes = read_external_bytes(
            dir.path(),
            &location("big.onnx.data", size - 8, Some(8)),
            8,
            "t",
            "m",
        )
        .expect("read");
        assert_eq!(bytes, vec![9; 8]);
    }
}
