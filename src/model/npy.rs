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

/// Reads a float32 `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_npy(&bytes).map_err(|reason| Error::Npy {
        path: path.display().to_string(),
        reason,
    })
}

/// Parses the bytes of a float32 `.npy` file; the error is a one-line reason.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not an .npy file (the \\x93NUMPY magic is missing)".to_string());
    }
    let major = bytes[MAGIC.len()];
    let (header_len, header_start) = match major {
        1 => {
            let raw = bytes.get(8..10).ok_or("truncated header length")?;
            (usize::from(u16::from_le_bytes([raw[0], raw[1]])), 10)
        }
        2 | 3 => {
            let raw = bytes.get(8..12).ok_or("truncated header length")?;
            let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            (
                usize::try_from(len).map_err(|_| "header length overflows")?,
                12,
            )
        }
        other => return Err(format!("unsupported .npy format version {other}")),
    };
    if header_len > MAX_HEADER_LEN {
        return Err(format!("header of {header_len} bytes is implausibly long"));
    }
    let header_end = header_start + header_len;
    let header = bytes
        .get(header_start..header_end)
        .ok_or_else(|| format!("the header claims {header_len} bytes but the file ends first"))?;
    let header = std::str::from_utf8(header).map_err(|_| "the header is not text")?;
    let descr = dict_value(header, "descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if descr != "<f4" && descr != "=f4" {
        return Err(format!(
            "dtype {descr:?} is not float32 (expected '<f4'); convert with `x.astype(np.float32)`"
        ));
    }
    if dict_value(header, "fortran_order")? != "False" {
        return Err(
            "Fortran-ordered arrays are not supported; use np.ascontiguousarray".to_string(),
        );
    }
    let shape = parse_shape(dict_value(header, "shape")?)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
        .ok_or("the shape's element count overflows")?;
    let data_bytes = &bytes[header_end..];
    let expected = count
        .checked_mul(4)
        .ok_or("the shape's byte count overflows")?;
    if data_bytes.len() != expected {
        return Err(format!(
            "shape {shape:?} needs {expected} bytes of data but the file holds {}",
            data_bytes.len()
        ));
    }
    let data = data_bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    Ok(NpyArray { shape, data })
}

/// The text of `key`'s value in a Python dict literal such as NumPy writes.
fn dict_value<'h>(header: &'h str, key: &str) -> std::result::Result<&'h str, String> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let start = quoted
        .iter()
        .find_map(|pattern| header.find(pattern.as_str()).map(|at| at + pattern.len()))
        .ok_or_else(|| format!("the header has no {key:?} entry"))?;
    let rest = header[start..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| format!("malformed {key:?} entry"))?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|at| at + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| format!("malformed {key:?} entry"))?;
    Ok(rest[..end].trim())
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
}
