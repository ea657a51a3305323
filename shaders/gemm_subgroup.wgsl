// Fused GEMM, subgroup variant: output = act(activations · weightsᵀ + bias [+ residual]).
//
// Needs the SUBGROUP feature and subgroups of at least 8 invocations (the host checks both).
//
// Layouts (rows = M, cols = N, inner = K):
//   activations  [rows, inner] f32, row-major.
//   weights      [ceil(cols/16)][inner_padded][16] f32, read as 4 vec4 per (column block, k):
//                PyTorch's [cols, inner] weight, transposed once at upload into 16-column
//                blocks, with inner zero-padded to a multiple of 8 and cols to a multiple of 16.
//   bias         [ceil(cols/16) * 16] f32 as vec4, zero-padded.
//   residual     [rows, cols] f32, read only when ADD_RESIDUAL.
//   output       [rows, cols] f32.
//
// Work split: a workgroup covers 4 * WORKGROUP_SIZE rows and one 16-column block. Each group of 8
// consecutive invocations owns 32 rows (invocation i of the group: rows base + i, base + 8 + i,
// base + 16 + i, base + 24 + i) and keeps 4 rows x 16 columns of outputs in registers.
//
// Why subgroups: on CPU adapters (lavapipe) every storage load inside a loop is executed lane by
// lane, so loads, not FMAs, bound the kernel. The 16 weights a row needs for one k are the same
// for every invocation of the group, so for each chunk of 8 k's invocation i loads only the
// weights of k0 + i and subgroupBroadcast hands them to the others: 8x fewer weight loads. The
// activations differ per row and are loaded directly. No workgroup memory, no barriers (a barrier
// turns every 8 lanes into a coroutine on lavapipe).

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
// Whether inner is a multiple of 4, so that activations can be read 4 at a time. On CPU adapters
// every storage load instruction runs a lane-by-lane loop, whatever its width, so one vec4 load
// costs about what one scalar load does: this halves the kernel's time on lavapipe.
override VEC4_ACTIVATIONS: bool = false;

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn gemm(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
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
    // This invocation loads the weights of k0 + (subgroup_lane % 8) for each chunk of 8 k's.
    var w_index = (block * params.inner_padded + subgroup_lane % 8u) * 4u;
    for (var k0 = 0u; k0 < inner; k0 = k0 + 8u) {
        let w0 = vec4<f32>(weights[w_index]);
        let w1 = vec4<f32>(weights[w_index + 1u]);
        let w2 = vec4<f32>(weights[w_index + 2u]);
        let w3 = vec4<f32>(weights[w_index + 3u]);
        w_index = w_index + 32u;
        // The chunk's 8 activations of each row, as two vec4 (k0..k0+3 and k0+4..k0+7).
        var x0_low: vec4<f32>;
        var x1_low: vec4<f32>;
        var x2_low: vec4<f32>;
        var x3_low: vec4<f32>;
        var x0_high: vec4<f32>;
        var x1_high: vec4<f32>;
        var x2_high: vec4<f32>;
        var x3_high: vec4<f32>;
        if (VEC4_ACTIVATIONS) {
            // inner is a multiple of 4: each half of the chunk is one vec4 load, which lies
            // either wholly inside the row or wholly past its end (then it is zero).
            let k4 = k0 / 4u;
            let in_row_high = k0 + 4u < inner;
            let k4_high = min(k4 + 1u, inner / 4u - 1u);
            x0_low = vec4<f32>(activations4[x_base0 / 4u + k4]);
            x1_low = vec4<f32>(activations4[x_base1 / 4u + k4]);
            x2_low = vec4<f32>(activations4[x_base2 / 4u + k4]);
            x3_low = vec4<f32>(activations4[x_base3 / 4u + k4]);
            let zero = vec4<f32>(0.0);
            x0_high = select(zero, vec4<f32>(activations4[x_base0 / 4u + k4_high]), in_row_high);
            x1_high = select(zero, vec4<f32>(activations4[x_base1 / 4u + k4_high]), in_row_high);
            x2_high = select(zero, vec4<f32>(activations4[x_base2 / 4u + k4_high]), in_row_high);
            x3_high = select(zero, vec4<f32>(activations4[x_base3 / 4u + k4_high]), in_row_high);
        } else {
            for (var j = 0u; j < 4u; j = j + 1u) {
                // Past the end of a row (inner not a multiple of 8) the padded weights are zero;
                // the activation is set to zero too so that an infinite input cannot make a NaN.
                let in_row_low = k0 + j < inner;
                let in_row_high = k0 + 4u + j < inner;
                let k_low = min(k0 + j, inner - 1u);
                let k_high = min(k0 + 4u + j, inner - 1u);
                x0_low[j] = select(0.0, f32(activations[x_base0 + k_low]), in_row_low);
                x1_low[j] = select(0.0, f32(activations[x_base1 + k_low]), in_row_low);
                x2_low[j] = select(0.0, f32(activations[x_base2 + k_low]), in_row_low);
                x3_low[j] = select(0.0, f32(activations[x_base3 + k_low]), in_row_low);
                x0_high[j] = select(0.0, f32(activations[x_base0 + k_high]), in_row_high);
                x1_high[j] = select(0.0, f32(activations[x_base1 + k_high]), in_row_high);
                x2_high[j] = select(0.0, f32(activations[x_base2 + k_high]), in_row_high);
                x3_high[j] = select(0.0, f32(activations[x_base3 + k_high]), in_row_high);
            }
        }
        {
            let w0_k = subgroupBroadcast(w0, 0u);
            let w1_k = subgroupBroadcast(w1, 0u);
            let w2_k = subgroupBroadcast(w2, 0u);
            let w3_k = subgroupBroadcast(w3, 0u);
            let x0_k = vec4<f32>(x0_low[0]);
            let x1_k = vec4<f32>(x1_low[0]);
            let x2_k = vec4<f32>(x2_low[0]);
            let x3_k = vec4<f32>(x3_low[0]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 1u);
            let w1_k = subgroupBroadcast(w1, 1u);
            let w2_k = subgroupBroadcast(w2, 1u);
            let w3_k = subgroupBroadcast(w3, 1u);
            let x0_k = vec4<f32>(x0_low[1]);
            let x1_k = vec4<f32>(x1_low[1]);
            let x2_k = vec4<f32>(x2_low[1]);
            let x3_k = vec4<f32>(x3_low[1]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 2u);
            let w1_k = subgroupBroadcast(w1, 2u);
            let w2_k = subgroupBroadcast(w2, 2u);
            let w3_k = subgroupBroadcast(w3, 2u);
            let x0_k = vec4<f32>(x0_low[2]);
            let x1_k = vec4<f32>(x1_low[2]);
            let x2_k = vec4<f32>(x2_low[2]);
            let x3_k = vec4<f32>(x3_low[2]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 3u);
            let w1_k = subgroupBroadcast(w1, 3u);
            let w2_k = subgroupBroadcast(w2, 3u);
            let w3_k = subgroupBroadcast(w3, 3u);
            let x0_k = vec4<f32>(x0_low[3]);
            let x1_k = vec4<f32>(x1_low[3]);
            let x2_k = vec4<f32>(x2_low[3]);
            let x3_k = vec4<f32>(x3_low[3]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 4u);
            let w1_k = subgroupBroadcast(w1, 4u);
            let w2_k = subgroupBroadcast(w2, 4u);
            let w3_k = subgroupBroadcast(w3, 4u);
            let x0_k = vec4<f32>(x0_high[0]);
            let x1_k = vec4<f32>(x1_high[0]);
            let x2_k = vec4<f32>(x2_high[0]);
            let x3_k = vec4<f32>(x3_high[0]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 5u);
            let w1_k = subgroupBroadcast(w1, 5u);
            let w2_k = subgroupBroadcast(w2, 5u);
            let w3_k = subgroupBroadcast(w3, 5u);
            let x0_k = vec4<f32>(x0_high[1]);
            let x1_k = vec4<f32>(x1_high[1]);
            let x2_k = vec4<f32>(x2_high[1]);
            let x3_k = vec4<f32>(x3_high[1]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 6u);
            let w1_k = subgroupBroadcast(w1, 6u);
            let w2_k = subgroupBroadcast(w2, 6u);
            let w3_k = subgroupBroadcast(w3, 6u);
            let x0_k = vec4<f32>(x0_high[2]);
            let x1_k = vec4<f32>(x1_high[2]);
            let x2_k = vec4<f32>(x2_high[2]);
            let x3_k = vec4<f32>(x3_high[2]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 7u);
            let w1_k = subgroupBroadcast(w1, 7u);
            let w2_k = subgroupBroadcast(w2, 7u);
            let w3_k = subgroupBroadcast(w3, 7u);
            let x0_k = vec4<f32>(x0_high[3]);
            let x1_k = vec4<f32>(x1_high[3]);
            let x2_k = vec4<f32>(x2_high[3]);
            let x3_k = vec4<f32>(x3_high[3]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
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
