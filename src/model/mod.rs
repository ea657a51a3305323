//! Model and data files: ONNX and safetensors in, `.npy` in and out. Every loader checks what it
//! reads against what the file claims before allocating or building anything, and turns every
//! problem into an [`Error`] that names the file and the place in it.

mod external_data;
pub mod npy;
pub mod onnx;
#[cfg(not(target_arch = "wasm32"))]
mod output_file;
pub mod safetensors;

pub use external_data::ExternalData;
#[cfg(not(target_arch = "wasm32"))]
pub use output_file::{remove_unfinished_output_files, write_file_atomically};

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

/// Reads a model file (`.onnx` or `.safetensors`) into a graph. Only a regular file is read,
/// and no more of it than its length when opened: a device such as `/dev/zero` or a pipe is
/// refused rather than read without end.
pub fn load_model(path: &Path) -> Result<Graph> {
    use std::io::Read;
    let io_error = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.is_file() {
        let what = if metadata.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, pipe or socket)"
        };
        return Err(Error::Model {
            path: path.display().to_string(),
            reason: format!("is {what}; resgraph reads models from regular files"),
        });
    }
    let length = metadata.len();
    if let Some(available) = crate::host::available_memory()
        && length > available
    {
        return Err(Error::HostMemory {
            what: format!("the model file {} ({length} bytes)", path.display()),
            requested: length,
            available,
        });
    }
    let mut bytes = Vec::new();
    file.take(length)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
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
        ModelFormat::Onnx => onnx::import_onnx(bytes, &name, ExternalData::Folder(folder)),
        ModelFormat::Safetensors => safetensors::import_safetensors(bytes, &name),
    }
}

/// Parses a model given as bytes, where there are no files (a browser): `name` names it in
/// errors and, by its extension, picks the format (else the content does); an ONNX model's
/// external data, if it has any, is `external_data`, the side file's bytes.
pub fn parse_model_bytes(name: &str, bytes: &[u8], external_data: Option<&[u8]>) -> Result<Graph> {
    match ModelFormat::detect(Path::new(name), bytes) {
        ModelFormat::Onnx => {
            let external = external_data.map_or(ExternalData::Unavailable, ExternalData::Buffer);
            onnx::import_onnx(bytes, name, external)
        }
        ModelFormat::Safetensors => safetensors::import_safetensors(bytes, name),
    }
}
