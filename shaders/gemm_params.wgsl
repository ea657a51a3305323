// The GEMM kernels' parameter block, binding 0 (GEMM_BINDINGS in src/kernels/gemm.rs), for the
// kernels that read the blocked weight layout as vec4 (gemm, gemm_subgroup, gemm_small_batch,
// gemm_tiled, gemm_cooperative_staged). It is not a shader on its own: the host's source
// generator (src/kernels/source.rs) appends it to each of those kernels, with
// operand_bindings.wgsl.

struct GemmParams {
    rows: u32,
    cols: u32,
    inner: u32,
    inner_padded: u32,
}

@group(0) @binding(0) var<uniform> params: GemmParams;
