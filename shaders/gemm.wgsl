// Fused GEMM, portable variant: output = act(activations · weightsᵀ + bias [+ residual]).
//
// Runs on every adapter (no optional feature). It shares its weight layout and work split with
// gemm_subgroup.wgsl, which is faster where subgroups exist; see that file for the layouts.
//
// Layouts (rows = M, cols = N, inner = K):
//   activations  [rows, inner] f32, row-major.
//   weights      [ceil(cols/16)][inner_padded][16] f32 (inner padded to a multiple of 8).
//   bias         [ceil(cols/16) * 16] f32 as vec4, zero-padded.
//   residual     [rows, cols] f32, read only when ADD_RESIDUAL.
//   output       [rows, cols] f32.
//
// Each invocation keeps 4 rows x 16 columns of outputs in registers (register blocking): every
// loaded weight feeds 4 FMAs and every loaded activation 16.

// `Scalar`, the storage type of activations and weights (f32, or f16 for f16 models), is declared
// by the host's source generator (src/kernels/source.rs), which also adds `enable f16;` for f16.
// Arithmetic is always f32.

// GemmParams and binding 0 are in gemm_params.wgsl, bindings 1–6 in operand_bindings.wgsl; the
// host appends both.

// The epilogue, fixed per pipeline so that the driver removes the branches it does not take.
override APPLY_RELU: bool = false;
override ADD_RESIDUAL: bool = false;
// Invocations per workgroup; a multiple of 8.
override WORKGROUP_SIZE: u32 = 64u;
// Whether inner is a multiple of 4, so that activations can be read 4 at a time (see
// gemm_subgroup.wgsl: on CPU adapters a vec4 load costs about what a scalar load does).
override VEC4_ACTIVATIONS: bool = false;

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn gemm(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let lane = local.x % 8u;
    let group_base = (workgroup.x * WORKGROUP_SIZE + (local.x - lane)) * 4u;
    if (group_base >= params.rows) {
        // The whole group of 8 is past the last row (small batches): nothing to compute.
        return;
    }
    let block = workgroup.y;
    let inner = params.inner;
    // Rows past the end read the last row again so that every load stays in bounds; their
    // results are never stored.
    let last_row = params.rows - 1u;
    let row0 = group_base + 0u + lane;
    let row1 = group_base + 8u + lane;
    let row2 = group_base + 16u + lane;
    let row3 = group_base + 24u + lane;
    let x_base0 = min(row0, last_row) * inner;
    let x_base1 = min(row1, last_row) * inner;
    let x_base2 = min(row2, last_row) * inner;
    let x_base3 = min(row3, last_row) * inner;
    var acc0_0 = vec4<f32>(0.0);
    var acc0_1 = vec4<f32>(0.0);
    var acc0_2 = vec4<f32>(0.0);
    var acc0_3 = vec4<f32>(0.0);
    var acc1_0 = vec4<f32>(0.0);
    var acc1_1 = vec4<f32>(0.0);
    var acc1_2 = vec4<f32>(0.0);
    var acc1_3 = vec4<f32>(0.0);
    var acc2_0 = vec4<f32>(0.0);
    var acc2_1 = vec4<f32>(0.0);
    var acc2_2 = vec4<f32>(0.0);
    var acc2_3 = vec4<f32>(0.0);
    var acc3_0 = vec4<f32>(0.0);
    var acc3_1 = vec4<f32>(0.0);
    var acc3_2 = vec4<f32>(0.0);
    var acc3_3 = vec4<f32>(0.0);
    var w_index = block * params.inner_padded * 4u;
    // Four k's at a time: the weights are padded to a multiple of 8 k's, so their loads stay in
    // bounds, and activations past the end of a row are zero.
    for (var k0 = 0u; k0 < inner; k0 = k0 + 4u) {
        var x0_chunk: vec4<f32>;
        var x1_chunk: vec4<f32>;
        var x2_chunk: vec4<f32>;
        var x3_chunk: vec4<f32>;
        if (VEC4_ACTIVATIONS) {
            // inner is a multiple of 4: one vec4 load per row for the four k's.
            x0_chunk = vec4<f32>(activations4[(x_base0 + k0) / 4u]);
            x1_chunk = vec4<f32>(activations4[(x_base1 + k0) / 4u]);
            x2_chunk = vec4<f32>(activations4[(x_base2 + k0) / 4u]);
            x3_chunk = vec4<f32>(activations4[(x_base3 + k0) / 4u]);
        } else {
            for (var j = 0u; j < 4u; j = j + 1u) {
                let in_row = k0 + j < inner;
                let k = min(k0 + j, inner - 1u);
                x0_chunk[j] = select(0.0, f32(activations[x_base0 + k]), in_row);
                x1_chunk[j] = select(0.0, f32(activations[x_base1 + k]), in_row);
                x2_chunk[j] = select(0.0, f32(activations[x_base2 + k]), in_row);
                x3_chunk[j] = select(0.0, f32(activations[x_base3 + k]), in_row);
            }
        }
        {
            let w0 = vec4<f32>(weights[w_index + 0u]);
            let w1 = vec4<f32>(weights[w_index + 1u]);
            let w2 = vec4<f32>(weights[w_index + 2u]);
            let w3 = vec4<f32>(weights[w_index + 3u]);
            let x0 = vec4<f32>(x0_chunk[0]);
            let x1 = vec4<f32>(x1_chunk[0]);
            let x2 = vec4<f32>(x2_chunk[0]);
            let x3 = vec4<f32>(x3_chunk[0]);
            acc0_0 = fma(x0, w0, acc0_0);
            acc0_1 = fma(x0, w1, acc0_1);
            acc0_2 = fma(x0, w2, acc0_2);
            acc0_3 = fma(x0, w3, acc0_3);
            acc1_0 = fma(x1, w0, acc1_0);
            acc1_1 = fma(x1, w1, acc1_1);
            acc1_2 = fma(x1, w2, acc1_2);
            acc1_3 = fma(x1, w3, acc1_3);
            acc2_0 = fma(x2, w0, acc2_0);
            acc2_1 = fma(x2, w1, acc2_1);
            acc2_2 = fma(x2, w2, acc2_2);
            acc2_3 = fma(x2, w3, acc2_3);
            acc3_0 = fma(x3, w0, acc3_0);
            acc3_1 = fma(x3, w1, acc3_1);
            acc3_2 = fma(x3, w2, acc3_2);
            acc3_3 = fma(x3, w3, acc3_3);
        }
        {
            let w0 = vec4<f32>(weights[w_index + 4u]);
            let w1 = vec4<f32>(weights[w_index + 5u]);
            let w2 = vec4<f32>(weights[w_index + 6u]);
            let w3 = vec4<f32>(weights[w_index + 7u]);
            let x0 = vec4<f32>(x0_chunk[1]);
            let x1 = vec4<f32>(x1_chunk[1]);
            let x2 = vec4<f32>(x2_chunk[1]);
            let x3 = vec4<f32>(x3_chunk[1]);
            acc0_0 = fma(x0, w0, acc0_0);
            acc0_1 = fma(x0, w1, acc0_1);
            acc0_2 = fma(x0, w2, acc0_2);
            acc0_3 = fma(x0, w3, acc0_3);
            acc1_0 = fma(x1, w0, acc1_0);
            acc1_1 = fma(x1, w1, acc1_1);
            acc1_2 = fma(x1, w2, acc1_2);
            acc1_3 = fma(x1, w3, acc1_3);
            acc2_0 = fma(x2, w0, acc2_0);
            acc2_1 = fma(x2, w1, acc2_1);
            acc2_2 = fma(x2, w2, acc2_2);
            acc2_3 = fma(x2, w3, acc2_3);
            acc3_0 = fma(x3, w0, acc3_0);
            acc3_1 = fma(x3, w1, acc3_1);
            acc3_2 = fma(x3, w2, acc3_2);
            acc3_3 = fma(x3, w3, acc3_3);
        }
        {
            let w0 = vec4<f32>(weights[w_index + 8u]);
            let w1 = vec4<f32>(weights[w_index + 9u]);
            let w2 = vec4<f32>(weights[w_index + 10u]);
            let w3 = vec4<f32>(weights[w_index + 11u]);
            let x0 = vec4<f32>(x0_chunk[2]);
            let x1 = vec4<f32>(x1_chunk[2]);
            let x2 = vec4<f32>(x2_chunk[2]);
            let x3 = vec4<f32>(x3_chunk[2]);
            acc0_0 = fma(x0, w0, acc0_0);
            acc0_1 = fma(x0, w1, acc0_1);
            acc0_2 = fma(x0, w2, acc0_2);
            acc0_3 = fma(x0, w3, acc0_3);
            acc1_0 = fma(x1, w0, acc1_0);
            acc1_1 = fma(x1, w1, acc1_1);
            acc1_2 = fma(x1, w2, acc1_2);
            acc1_3 = fma(x1, w3, acc1_3);
            acc2_0 = fma(x2, w0, acc2_0);
            acc2_1 = fma(x2, w1, acc2_1);
            acc2_2 = fma(x2, w2, acc2_2);
            acc2_3 = fma(x2, w3, acc2_3);
            acc3_0 = fma(x3, w0, acc3_0);
            acc3_1 = fma(x3, w1, acc3_1);
            acc3_2 = fma(x3, w2, acc3_2);
            acc3_3 = fma(x3, w3, acc3_3);
        }
        {
            let w0 = vec4<f32>(weights[w_index + 12u]);
            let w1 = vec4<f32>(weights[w_index + 13u]);
            let w2 = vec4<f32>(weights[w_index + 14u]);
            let w3 = vec4<f32>(weights[w_index + 15u]);
            let x0 = vec4<f32>(x0_chunk[3]);
            let x1 = vec4<f32>(x1_chunk[3]);
            let x2 = vec4<f32>(x2_chunk[3]);
            let x3 = vec4<f32>(x3_chunk[3]);
            acc0_0 = fma(x0, w0, acc0_0);
            acc0_1 = fma(x0, w1, acc0_1);
            acc0_2 = fma(x0, w2, acc0_2);
            acc0_3 = fma(x0, w3, acc0_3);
            acc1_0 = fma(x1, w0, acc1_0);
            acc1_1 = fma(x1, w1, acc1_1);
            acc1_2 = fma(x1, w2, acc1_2);
            acc1_3 = fma(x1, w3, acc1_3);
            acc2_0 = fma(x2, w0, acc2_0);
            acc2_1 = fma(x2, w1, acc2_1);
            acc2_2 = fma(x2, w2, acc2_2);
            acc2_3 = fma(x2, w3, acc2_3);
            acc3_0 = fma(x3, w0, acc3_0);
            acc3_1 = fma(x3, w1, acc3_1);
            acc3_2 = fma(x3, w2, acc3_2);
            acc3_3 = fma(x3, w3, acc3_3);
        }
        w_index = w_index + 16u;
    }

    let col0 = block * 16u;
    let b0 = bias[block * 4u];
    let b1 = bias[block * 4u + 1u];
    let b2 = bias[block * 4u + 2u];
    let b3 = bias[block * 4u + 3u];
    store4(row0, col0 + 0u, acc0_0 + b0);
    store4(row0, col0 + 4u, acc0_1 + b1);
    store4(row0, col0 + 8u, acc0_2 + b2);
    store4(row0, col0 + 12u, acc0_3 + b3);
    store4(row1, col0 + 0u, acc1_0 + b0);
    store4(row1, col0 + 4u, acc1_1 + b1);
    store4(row1, col0 + 8u, acc1_2 + b2);
    store4(row1, col0 + 12u, acc1_3 + b3);
    store4(row2, col0 + 0u, acc2_0 + b0);
    store4(row2, col0 + 4u, acc2_1 + b1);
    store4(row2, col0 + 8u, acc2_2 + b2);
    store4(row2, col0 + 12u, acc2_3 + b3);
    store4(row3, col0 + 0u, acc3_0 + b0);
    store4(row3, col0 + 4u, acc3_1 + b1);
    store4(row3, col0 + 8u, acc3_2 + b2);
    store4(row3, col0 + 12u, acc3_3 + b3);
}

// store4 (the residual, activation and bounds-checked store) is in fused_epilogue.wgsl, which
// the host appends to this file.
