// The GEMM kernels' parameter block, binding 0 (GEMM_BINDINGS in src/kernels/gemm.rs), for every
// GEMM kernel: gemm, gemm_subgroup, gemm_small_batch, gemm_tiled, gemm_cooperative and
// gemm_cooperative_staged. It is not a shader on its own: the host's source generator
// (src/kernels/source.rs) appends it to each of those kernels (all but gemm_cooperative with
// operand_bindings.wgsl too).

struct GemmParams {
    rows: u32,
    cols: u32,
    inner: u32,
    inner_padded: u32,
}

@group(0) @binding(0) var<uniform> params: GemmParams;
