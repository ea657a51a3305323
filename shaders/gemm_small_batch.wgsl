// Fused GEMM for small batches, shaped for GPUs: output = act(activations · weightsᵀ + bias
// [+ residual]) with each workgroup's invocations splitting the inner dimension and reducing
// through workgroup memory.
//
// With one to a few rows a GEMM is a matrix-vector product: no weight is reused across rows, and
// the tiled kernels (256 rows per workgroup) leave almost every invocation idle. Here one
// workgroup covers 4 rows × one 16-column block of the weight layout; its 64 invocations stride
// through the inner dimension together, so consecutive invocations read consecutive 64-byte rows
// of the block (coalesced on a GPU), and each keeps 4 × 16 partial sums. A workgroup-memory
// reduction then adds the 64 partial sums of each output. Needs no optional feature (GL and
// WebGPU included); chosen only by measurement (`Tuning::Measure`), for batches of up to
// 64 rows.
//
// Layouts as in gemm.wgsl (rows = M, cols = N, inner = K):
//   activations  [rows, inner], row-major.
//   weights      [ceil(cols/16)][inner_padded][16] (inner padded to a multiple of 8).
//   bias         [ceil(cols/16) * 16] f32 as vec4, zero-padded.
//   residual     [rows, cols], read only when ADD_RESIDUAL.
//   output       [rows, cols].

// `Scalar` (f32 or f16 storage) is declared by the host's source generator
// (src/kernels/source.rs). Arithmetic is always f32.

// GemmParams and binding 0 are in gemm_params.wgsl, bindings 1–6 in operand_bindings.wgsl; the
// host appends both.

override APPLY_RELU: bool = false;
override ADD_RESIDUAL: bool = false;

// Invocations per workgroup; fixed, because the reduction's workgroup arrays are sized by it.
const THREADS: u32 = 64u;
// Rows per workgroup, and vec4s of columns per row (one 16-column block).
const ROWS: u32 = 4u;
const QUADS: u32 = 4u;
// The partial sums of one invocation: ROWS × QUADS vec4s.
const SUMS: u32 = 16u;

// Every invocation's partial sums, then (in its first 4 × SUMS entries) the sums of quarters.
var<workgroup> partial: array<vec4<f32>, 1024>; // THREADS * SUMS

@compute @workgroup_size(64, 1, 1)
fn gemm(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let row0 = workgroup.x * ROWS;
    let block = workgroup.y;
    let inner = params.inner;
    // Rows past the end read the last row again, so that every load stays in bounds; their
    // sums are never stored.
    let last_row = params.rows - 1u;
    var x_base: array<u32, 4>;
    for (var r = 0u; r < ROWS; r = r + 1u) {
        x_base[r] = min(row0 + r, last_row) * inner;
    }
    var acc: array<vec4<f32>, 16>;
    for (var s = 0u; s < SUMS; s = s + 1u) {
        acc[s] = vec4<f32>(0.0);
    }
    let block_base = block * params.inner_padded * QUADS;
    for (var k = local; k < inner; k = k + THREADS) {
        let w = block_base + k * QUADS;
        let w0 = vec4<f32>(weights[w]);
        let w1 = vec4<f32>(weights[w + 1u]);
        let w2 = vec4<f32>(weights[w + 2u]);
        let w3 = vec4<f32>(weights[w + 3u]);
        for (var r = 0u; r < ROWS; r = r + 1u) {
            let x = f32(activations[x_base[r] + k]);
            acc[r * QUADS] = fma(vec4<f32>(x), w0, acc[r * QUADS]);
            acc[r * QUADS + 1u] = fma(vec4<f32>(x), w1, acc[r * QUADS + 1u]);
            acc[r * QUADS + 2u] = fma(vec4<f32>(x), w2, acc[r * QUADS + 2u]);
            acc[r * QUADS + 3u] = fma(vec4<f32>(x), w3, acc[r * QUADS + 3u]);
        }
    }
    for (var s = 0u; s < SUMS; s = s + 1u) {
        partial[local * SUMS + s] = acc[s];
    }
    workgroupBarrier();

    // Two steps: invocation t adds sum t % 16 over a quarter of the invocations (16 of them),
    // then the first 16 add the four quarters. Two barriers, no serial loop over all 64.
    let sum_index = local % SUMS;
    let quarter = local / SUMS;
    var quarter_sum = vec4<f32>(0.0);
    for (var t = quarter * 16u; t < quarter * 16u + 16u; t = t + 1u) {
        quarter_sum = quarter_sum + partial[t * SUMS + sum_index];
    }
    workgroupBarrier();
    partial[quarter * SUMS + sum_index] = quarter_sum;
    workgroupBarrier();
    if (local < SUMS) {
        let total = partial[local] + partial[SUMS + local] + partial[2u * SUMS + local]
            + partial[3u * SUMS + local];
        let r = local / QUADS;
        let quad = local % QUADS;
        store4(row0 + r, block * 16u + quad * 4u, total + bias[block * QUADS + quad]);
    }
}

// store4 (the residual, activation and bounds-checked store) is in fused_epilogue.wgsl, which
// the host appends to this file.
