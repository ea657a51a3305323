//! NumPy `.npy` files of float32, in and out: the data format of `resgraph run`.
//!
//! The format is one page long (a magic string, a version, a Python-dict header, raw data), and
//! reading it strictly matters more here than generality: the header is parsed by hand, only
//! little-endian float32 in C order is accepted, and the declared shape is checked against the
//! file's actual length before anything is allocated, so a hostile header cannot make resgraph
//! allocate more than the file holds.

use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Headers longer than this are refused (NumPy itself writes a few hundred bytes at most).
const MAX_HEADER_LEN: usize = 1 << 16;

/// A float32 array read from an `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The shape, as the header declares it.
    pub shape: Vec<usize>,
    /// The values in C (row-major) order.
    pub data: Vec<f32>,
}

/// The most data a `.npy` stream that is not a regular file (a pipe, a device) may declare:
/// 4 GiB, past what any device binds as one buffer. A regular file's declared size is checked
/// against its real length instead.
const MAX_STREAMED_DATA: u64 = 1 << 32;

/// Reads a float32 `.npy` file: the header first, then exactly the data it declares. A regular
/// file whose length differs from what the header declares is refused before the data is read;
/// a pipe or device (`/dev/stdin`) is read no further than the declared data, and `/dev/zero`
/// fails at the magic string.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let io_error = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    if metadata.is_dir() {
        return Err(io_error(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory, not an .npy file",
        )));
    }
    let length = metadata.is_file().then_some(metadata.len());
    read_npy_from(std::io::BufReader::new(file), length).map_err(|reason| match reason {
        NpyError::Format(reason) => Error::Npy {
            path: path.display().to_string(),
            reason,
        },
        NpyError::Io(source) => io_error(source),
    })
}

/// Parses the bytes of a float32 `.npy` file; the error is a one-line reason.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    read_npy_from(bytes, Some(bytes.len() as u64)).map_err(|error| match error {
        NpyError::Format(reason) => reason,
        NpyError::Io(source) => source.to_string(),
    })
}

enum NpyError {
    /// The bytes are not a float32 `.npy` file resgraph reads (a one-line reason).
    Format(String),
    /// Reading failed.
    Io(std::io::Error),
}

impl From<String> for NpyError {
    fn from(reason: String) -> Self {
        NpyError::Format(reason)
    }
}

impl From<&str> for NpyError {
    fn from(reason: &str) -> Self {
        NpyError::Format(reason.to_string())
    }
}

/// Reads exactly `buffer.len()` bytes; the end of the stream first is the format error
/// `truncated`.
fn read_exactly(
    reader: &mut impl std::io::Read,
    buffer: &mut [u8],
    truncated: &str,
) -> std::result::Result<(), NpyError> {
    reader.read_exact(buffer).map_err(|error| {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            NpyError::Format(truncated.to_string())
        } else {
            NpyError::Io(error)
        }
    })
}

/// Reads an `.npy` file from `reader`; `length` is the whole file's length where it is known
/// (a regular file), checked against the header before the data is read.
fn read_npy_from(
    mut reader: impl std::io::Read,
    length: Option<u64>,
) -> std::result::Result<NpyArray, NpyError> {
    let not_npy = "not an .npy file (the \\x93NUMPY magic is missing)";
    let mut prefix = [0u8; 8];
    read_exactly(&mut reader, &mut prefix, not_npy)?;
    if &prefix[..MAGIC.len()] != MAGIC {
        return Err(not_npy.into());
    }
    let (header_len, header_start) = match prefix[MAGIC.len()] {
        1 => {
            let mut raw = [0u8; 2];
            read_exactly(&mut reader, &mut raw, "truncated header length")?;
            (usize::from(u16::from_le_bytes(raw)), 10)
        }
        2 | 3 => {
            let mut raw = [0u8; 4];
            read_exactly(&mut reader, &mut raw, "truncated header length")?;
            let len = u32::from_le_bytes(raw);
            (
                usize::try_from(len).map_err(|_| "header length overflows")?,
                12,
            )
        }
        other => return Err(format!("unsupported .npy format version {other}").into()),
    };
    if header_len > MAX_HEADER_LEN {
        return Err(format!("header of {header_len} bytes is implausibly long").into());
    }
    let mut header = vec![0u8; header_len];
    let truncated = format!("the header claims {header_len} bytes but the file ends first");
    read_exactly(&mut reader, &mut header, &truncated)?;
    let header = std::str::from_utf8(&header).map_err(|_| "the header is not text")?;
    let shape = parse_header(header)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
        .ok_or("the shape's element count overflows")?;
    let expected = count
        .checked_mul(4)
        .ok_or("the shape's byte count overflows")? as u64;
    match length {
        Some(length) => {
            let held = length.saturating_sub((header_start + header_len) as u64);
            if held != expected {
                return Err(format!(
                    "shape {shape:?} needs {expected} bytes of data but the file holds {held}"
                )
                .into());
            }
        }
        None if expected > MAX_STREAMED_DATA => {
            return Err(format!(
                "shape {shape:?} needs {expected} bytes of data, more than the {MAX_STREAMED_DATA} \
                 resgraph reads from a stream"
            )
            .into());
        }
        None => {}
    }
    // Read no more than declared (one byte more shows a stream that goes on), into a buffer
    // that grows with what actually arrives.
    let mut data_bytes = Vec::new();
    std::io::Read::read_to_end(&mut reader.take(expected + 1), &mut data_bytes)
        .map_err(NpyError::Io)?;
    if data_bytes.len() as u64 != expected {
        let held = if data_bytes.len() as u64 > expected {
            "more".to_string()
        } else {
            data_bytes.len().to_string()
        };
        return Err(format!(
            "shape {shape:?} needs {expected} bytes of data but the file holds {held}"
        )
        .into());
    }
    let data = data_bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    Ok(NpyArray { shape, data })
}

/// Parses the header's Python dict literal as NumPy does: exactly the keys `descr`,
/// `fortran_order` and `shape`, each once; only little-endian float32 in C order is accepted.
/// Returns the shape.
fn parse_header(header: &str) -> std::result::Result<Vec<usize>, String> {
    let body = header
        .trim_end_matches(['\n', ' ', '\0'])
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or("the header is not a dict literal")?;
    let mut descr = None;
    let mut fortran_order = None;
    let mut shape = None;
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after_key) = quoted_string(rest).ok_or_else(|| {
            format!(
                "malformed header: expected a quoted key at {:?}",
                clip(rest)
            )
        })?;
        let after_colon = after_key
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| format!("malformed header: no ':' after {key:?}"))?
            .trim_start();
        let (value, after_value) = match key {
            "descr" => {
                let (text, after) = quoted_string(after_colon)
                    .ok_or("malformed header: descr is not a quoted string")?;
                (HeaderValue::Descr(text), after)
            }
            "fortran_order" => {
                if let Some(after) = after_colon.strip_prefix("False") {
                    (HeaderValue::Fortran(false), after)
                } else if let Some(after) = after_colon.strip_prefix("True") {
                    (HeaderValue::Fortran(true), after)
                } else {
                    return Err("malformed header: fortran_order is not True or False".into());
                }
            }
            "shape" => {
                let end = after_colon
                    .find(')')
                    .filter(|_| after_colon.starts_with('('))
                    .ok_or("malformed header: shape is not a tuple")?;
                let dims = parse_shape(&after_colon[..=end])?;
                (HeaderValue::Shape(dims), &after_colon[end + 1..])
            }
            other => return Err(format!("the header has an unknown key {other:?}")),
        };
        let slot_filled = match value {
            HeaderValue::Descr(text) => descr.replace(text).is_some(),
            HeaderValue::Fortran(flag) => fortran_order.replace(flag).is_some(),
            HeaderValue::Shape(dims) => shape.replace(dims).is_some(),
        };
        if slot_filled {
            return Err(format!("the header gives {key:?} twice"));
        }
        let after_value = after_value.trim_start();
        rest = match after_value.strip_prefix(',') {
            Some(after_comma) => after_comma.trim_start(),
            None if after_value.is_empty() => after_value,
            None => {
                return Err(format!(
                    "malformed header: expected ',' at {:?}",
                    clip(after_value)
                ));
            }
        };
    }
    let descr = descr.ok_or("the header has no \"descr\" entry")?;
    let fortran_order = fortran_order.ok_or("the header has no \"fortran_order\" entry")?;
    let shape = shape.ok_or("the header has no \"shape\" entry")?;
    if descr != "<f4" && descr != "=f4" {
        return Err(format!(
            "dtype {descr:?} is not float32 (expected '<f4'); convert with `x.astype(np.float32)`"
        ));
    }
    if fortran_order {
        return Err(
            "Fortran-ordered arrays are not supported; use np.ascontiguousarray".to_string(),
        );
    }
    Ok(shape)
}

enum HeaderValue<'h> {
    Descr(&'h str),
    Fortran(bool),
    Shape(Vec<usize>),
}

/// A string in single or double quotes at the start of `text` (without escapes, which no key
/// or dtype NumPy writes contains), and the text after it.
fn quoted_string(text: &str) -> Option<(&str, &str)> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = &text[1..];
    let end = inner.find(quote)?;
    Some((&inner[..end], &inner[end + 1..]))
}

/// The first few characters of `text`, for an error message.
fn clip(text: &str) -> String {
    text.chars().take(20).collect()
}

fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| format!("malformed shape {text:?}"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("malformed dimension {part:?} in shape {text:?}"))
        })
        .collect()
}

/// The bytes of a float32 `.npy` file (format 1.0) holding `data` with `shape`.
pub fn encode_npy(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // NumPy pads the header with spaces and a newline so the data starts 64-byte aligned.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for value in data {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// Writes a float32 `.npy` file atomically (see [`super::write_file_atomically`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn write_npy_atomically(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    super::write_file_atomically(path, &encode_npy(shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` with every occurrence of `from` replaced by `to` (same length), byte for byte.
    fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut out = bytes.to_vec();
        let mut index = 0;
        while index + from.len() <= out.len() {
            if &out[index..index + from.len()] == from {
                out[index..index + from.len()].copy_from_slice(to);
                index += from.len();
            } else {
                index += 1;
            }
        }
        out
    }

    #[test]
    fn npy_files_of_the_wrong_dtype_rank_or_length_are_refused() {
        let good = encode_npy(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let parsed = parse_npy(&good).expect("round trip");
        assert_eq!(parsed.shape, vec![2, 3]);
        assert_eq!(parsed.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let as_f64 = replace_bytes(&good, b"<f4", b"<f8");
        assert!(parse_npy(&as_f64).unwrap_err().contains("float32"));
        assert!(
            parse_npy(&good[..good.len() - 1])
                .unwrap_err()
                .contains("needs 24 bytes")
        );
        // A shape of 10^11 floats over 24 bytes of data: refused before any allocation.
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 100000), }\n";
        let mut huge = b"\x93NUMPY\x01\x00".to_vec();
        huge.extend_from_slice(&(header.len() as u16).to_le_bytes());
        huge.extend_from_slice(header.as_bytes());
        huge.extend_from_slice(&[0u8; 24]);
        assert!(parse_npy(&huge).unwrap_err().contains("needs"));
        assert!(parse_npy(b"not an npy file").is_err());
        let fortran = replace_bytes(&good, b"False", b"True ");
        assert!(parse_npy(&fortran).unwrap_err().contains("Fortran"));
    }

    /// An .npy file (format 1.0) with `header` as its header text and `data_len` zero bytes.
    fn with_header(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data_len));
        bytes
    }

    #[test]
    fn headers_numpy_would_read_otherwise_or_refuse_are_refused() {
        let cases = [
            // NumPy keeps the last of two keys (Fortran order here); resgraph refuses.
            (
                "{'descr': '<f4', 'fortran_order': False, 'fortran_order': True, 'shape': (2,), }",
                "twice",
            ),
            (
                "{'descr': <f4, 'fortran_order': False, 'shape': (2,), }",
                "descr",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
                "unknown key",
            ),
            ("{'descr': '<f4', 'shape': (2,), }", "fortran_order"),
            (
                "{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}",
                "expected ','",
            ),
            (
                "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}",
                "True or False",
            ),
            (
                "'descr': '<f4', 'fortran_order': False, 'shape': (2,)",
                "dict literal",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': 2}",
                "tuple",
            ),
        ];
        for (header, expected) in cases {
            let error = parse_npy(&with_header(header, 8)).expect_err(header);
            assert!(error.contains(expected), "{header}: {error}");
        }
        let numpy_style = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }          \n";
        assert_eq!(
            parse_npy(&with_header(numpy_style, 8))
                .expect("numpy")
                .shape,
            [2]
        );
        let compact = "{\"shape\":(1,2),\"descr\":\"<f4\",\"fortran_order\":False}";
        assert_eq!(
            parse_npy(&with_header(compact, 8)).expect("compact").shape,
            [1, 2]
        );
    }

    #[test]
    fn a_stream_is_read_no_further_than_the_header_declares() {
        // A stream (no known length) that goes on past its data: refused after reading one
        // byte more than declared, not read to its end.
        let good = encode_npy(&[2], &[1.0, 2.0]);
        let endless = std::io::Read::chain(&good[..], std::io::repeat(0));
        let error = match read_npy_from(endless, None) {
            Err(NpyError::Format(reason)) => reason,
            _ => panic!("an endless stream was accepted"),
        };
        assert!(error.contains("holds more"), "{error}");
        // The same bytes as a stream that ends: read.
        match read_npy_from(&good[..], None) {
            Ok(array) => assert_eq!(array.data, [1.0, 2.0]),
            Err(_) => panic!("a finite stream was refused"),
        }
        // A stream declaring more than resgraph reads from a stream: refused from the header.
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2000000000,), }";
        match read_npy_from(&with_header(header, 0)[..], None) {
            Err(NpyError::Format(reason)) => assert!(reason.contains("from a stream"), "{reason}"),
            _ => panic!("a stream declaring 8 GB was accepted"),
        }
    }
}
