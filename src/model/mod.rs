//! Model and data files: ONNX and safetensors in, `.npy` in and out. Every loader checks what it
//! reads against what the file claims before allocating or building anything, and turns every
//! problem into an [`Error`] that names the file and the place in it.

mod external_data;
pub mod npy;
pub mod onnx;
pub mod safetensors;

use std::path::Path;

use crate::error::{Error, Result};
use crate::graph::Graph;

/// The formats resgraph reads models from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// ONNX protobuf.
    Onnx,
    /// resgraph's safetensors format.
    Safetensors,
}

impl ModelFormat {
    /// The format of `path`, by extension, else by content (a safetensors file starts with an
    /// 8-byte header length followed by `{`).
    pub fn detect(path: &Path, bytes: &[u8]) -> ModelFormat {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("onnx") => ModelFormat::Onnx,
            Some("safetensors") => ModelFormat::Safetensors,
            _ if bytes.get(8) == Some(&b'{') => ModelFormat::Safetensors,
            _ => ModelFormat::Onnx,
        }
    }
}

/// Reads a model file (`.onnx` or `.safetensors`) into a graph.
pub fn load_model(path: &Path) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_model(path, &bytes)
}

/// Parses model bytes; `path` names the source in errors and picks the format, and an ONNX
/// model's external data is read from `path`'s folder (and nowhere else).
pub fn parse_model(path: &Path, bytes: &[u8]) -> Result<Graph> {
    let name = path.display().to_string();
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match ModelFormat::detect(path, bytes) {
        ModelFormat::Onnx => onnx::import_onnx(bytes, &name, Some(folder)),
        ModelFormat::Safetensors => safetensors::import_safetensors(bytes, &name),
    }
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same folder, synced, then
/// renamed over `path`, so that a failure never leaves a partial or clobbered file.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io_error = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(folder).map_err(io_error)?;
    file.write_all(bytes).map_err(io_error)?;
    file.as_file().sync_all().map_err(io_error)?;
    file.persist(path).map_err(|error| io_error(error.error))?;
    Ok(())
}
