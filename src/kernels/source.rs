//! The one way a shader is specialised besides its `override` constants: a small source
//! generator.
//!
//! WGSL's pipeline-overridable constants set values (epilogue switches, workgroup sizes), and
//! every kernel uses them for those. They cannot set a type, so the storage precision (and, for
//! the cooperative GEMM, the tile types that follow from it) is written into the source here:
//! [`generate`] puts a prelude of `enable` directives and type declarations before the kernel's
//! WGSL file and appends the shared pieces it lists. The output is keyed by
//! [`SourceKey`] (shader and precision), as the pipelines built from it are keyed by
//! [`crate::gpu::pipelines::KernelKey`]; `tests/shaders.rs` validates exactly these sources, for
//! every kernel in [`super::ALL_KERNELS`] and every precision.

use crate::gpu::pipelines::{BindingKind, SourceKey};
use crate::precision::Precision;

/// `shaders/fused_epilogue.wgsl`: the residual, activation and bounds-checked store shared by
/// the GEMM, GEMV, convolution and whole-block kernels. It calls [`ACTIVATION`]'s ReLU, so a
/// kernel that lists it lists `ACTIVATION` too.
pub const FUSED_EPILOGUE: &str = include_str!("../../shaders/fused_epilogue.wgsl");

/// `shaders/gemm_params.wgsl`: `GemmParams` at binding 0 of every GEMM kernel.
pub const GEMM_PARAMS: &str = include_str!("../../shaders/gemm_params.wgsl");

/// `shaders/operand_bindings.wgsl`: bindings 1–6 (activations, blocked weights, bias, residual,
/// output, activations as vec4) of those GEMM kernels and of the convolutions.
pub const OPERAND_BINDINGS: &str = include_str!("../../shaders/operand_bindings.wgsl");

/// `shaders/activation.wgsl`: the ReLU that keeps NaN (`max(x, 0)` alone may turn NaN into 0),
/// for every kernel that applies one.
pub const ACTIVATION: &str = include_str!("../../shaders/activation.wgsl");

/// A kernel's WGSL and the shape of its one bind group.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// A name unique among resgraph's shaders; with the precision it keys the module cache.
    pub name: &'static str,
    /// The kernel's own WGSL file (from `shaders/`, included at compile time). It uses `Scalar`
    /// for stored values and leaves its declaration to the generator.
    pub body: &'static str,
    /// Shared WGSL pieces appended after the body, in order.
    pub pieces: &'static [&'static str],
    /// WGSL extensions the kernel needs besides `f16`, enabled at the top of the source.
    pub extensions: &'static [&'static str],
    /// Declarations that depend on the precision besides `Scalar` (types, which overrides cannot
    /// express), as WGSL text.
    pub declarations: fn(Precision) -> String,
    /// The compute entry point.
    pub entry_point: &'static str,
    /// The bindings of group 0, in binding-number order.
    pub bindings: &'static [BindingKind],
}

impl KernelSource {
    /// The key of this kernel's source generated for `precision`.
    pub fn source_key(&self, precision: Precision) -> SourceKey {
        SourceKey {
            shader: self.name,
            precision,
        }
    }
}

/// For [`KernelSource::declarations`]: a kernel that needs nothing besides `Scalar`.
pub fn no_declarations(_: Precision) -> String {
    String::new()
}

/// The WGSL the host compiles for `kernel` with `precision` storage: the `enable` directives
/// (`f16` for f16 storage, then the kernel's extensions), `alias Scalar`, the kernel's own
/// declarations, its body, and its shared pieces.
pub fn generate(kernel: &KernelSource, precision: Precision) -> String {
    let scalar = match precision {
        Precision::F32 => "f32",
        Precision::F16 => "f16",
    };
    let mut source = String::new();
    if precision == Precision::F16 {
        source.push_str("enable f16;\n");
    }
    for extension in kernel.extensions {
        source.push_str(&format!("enable {extension};\n"));
    }
    source.push_str(&format!(
        "// Generated for {precision} storage by resgraph (src/kernels/source.rs).\n\
         alias Scalar = {scalar};\n"
    ));
    source.push_str(&(kernel.declarations)(precision));
    source.push('\n');
    source.push_str(kernel.body);
    for piece in kernel.pieces {
        source.push('\n');
        source.push_str(piece);
    }
    source
}

/// A stable 64-bit checksum (FNV-1a) of `text`, the same on every platform and in every build, for
/// keys that must notice when a kernel's source changes.
pub fn checksum(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiles(precision: Precision) -> String {
        format!("const SIDE: u32 = {}u;\n", precision.element_bytes() * 4)
    }

    const TEST_KERNEL: KernelSource = KernelSource {
        name: "test",
        body: "fn body() {}\n",
        pieces: &["fn piece() {}\n"],
        extensions: &["wgpu_cooperative_matrix"],
        declarations: tiles,
        entry_point: "main",
        bindings: &[],
    };

    #[test]
    fn f32_sources_declare_f32_storage_and_enable_only_the_kernels_extensions() {
        let source = generate(&TEST_KERNEL, Precision::F32);
        assert!(source.starts_with("enable wgpu_cooperative_matrix;\n"));
        assert!(!source.contains("enable f16;"));
        assert!(source.contains("alias Scalar = f32;\n"));
        assert!(source.contains("const SIDE: u32 = 16u;\n"));
        let (body, piece) = (
            source.find("fn body()").expect("body"),
            source.find("fn piece()").expect("piece"),
        );
        assert!(body < piece, "pieces come after the body");
    }

    #[test]
    fn f16_sources_enable_f16_first_and_declare_f16_storage() {
        let source = generate(&TEST_KERNEL, Precision::F16);
        assert!(source.starts_with("enable f16;\nenable wgpu_cooperative_matrix;\n"));
        assert!(source.contains("alias Scalar = f16;\n"));
        assert!(source.contains("const SIDE: u32 = 8u;\n"));
    }

    #[test]
    fn the_checksum_is_stable_and_sees_a_one_byte_change() {
        assert_eq!(checksum(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(checksum("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(
            checksum("alias Scalar = f32;"),
            checksum("alias Scalar = f16;")
        );
    }
}
