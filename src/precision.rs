//! Storage precision of a model's weights and activations. Arithmetic is always f32; f16 halves
//! the bytes every kernel loads, which is what bounds them, at the cost of f16's 11-bit mantissa
//! on every stored value.

use crate::error::{Error, Result};

/// How weights and activations are stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    F32,
    /// 16-bit floats (needs the device feature `SHADER_F16`); accumulation stays f32.
    F16,
}

impl Precision {
    /// Bytes per stored element.
    pub fn element_bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// The relative error against the f64 reference that a whole network must stay within.
    pub fn tolerance(self) -> f64 {
        match self {
            Precision::F32 => 1e-5,
            Precision::F16 => 1e-2,
        }
    }

    /// Checks that `features` can store this precision in shaders.
    pub fn check_supported(self, features: wgpu::Features, adapter: &str) -> Result<()> {
        if self == Precision::F16 && !features.contains(wgpu::Features::SHADER_F16) {
            return Err(Error::MissingFeature {
                what: "f16 precision".to_string(),
                feature: "SHADER_F16",
                adapter: adapter.to_string(),
            });
        }
        Ok(())
    }

    /// `values` as this precision's little-endian bytes (f16 rounds to nearest).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Precision::F32 => bytemuck::cast_slice(values).to_vec(),
            Precision::F16 => values
                .iter()
                .flat_map(|&value| half::f16::from_f32(value).to_le_bytes())
                .collect(),
        }
    }

    /// Writes `values` as little-endian bytes of this precision into the start of `out`, which
    /// must hold at least `values.len() × element_bytes` bytes (a mapped staging buffer, so the
    /// input is converted straight into the memory the GPU copies from). The rest of `out` is
    /// left as it is.
    pub fn encode_into(self, values: &[f32], out: &mut [u8]) {
        match self {
            Precision::F32 => {
                for (chunk, value) in out.chunks_exact_mut(4).zip(values) {
                    chunk.copy_from_slice(&value.to_le_bytes());
                }
            }
            Precision::F16 => {
                for (chunk, value) in out.chunks_exact_mut(2).zip(values) {
                    chunk.copy_from_slice(&half::f16::from_f32(*value).to_le_bytes());
                }
            }
        }
    }

    /// Little-endian bytes of this precision back to f32 values.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Precision::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Precision::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}
