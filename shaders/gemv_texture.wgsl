// Fused small-batch GEMM ("GEMV"): output = act(activations · weightsᵀ + bias [+ residual]) for
// a few rows, with the weights in a texture.
//
// Needs the SUBGROUP feature and subgroups of at least 8 invocations (the host checks both).
//
// Layouts (rows = M, cols = N, inner = K):
//   activations  [rows, inner] f32, row-major.
//   weights      rgba32float 2-D array texture, 8 texels wide, inner padded to a multiple of 8
//                high, ceil(cols4 / 8) layers (cols4 = ceil(cols/4)): texel (x, k, layer) holds
//                the weights of columns 4c..4c+3 for k, where c = 8 * layer + x; zero-padded.
//                One layer is the columns of 8 consecutive invocations, so each group of 8 (a
//                SIMD chunk on lavapipe) streams through one contiguous block of memory.
//   bias         [ceil(cols/16) * 16] f32 as vec4, zero-padded.
//   residual     [rows, cols] f32, read only when ADD_RESIDUAL.
//   output       [rows, cols] f32.
//
// Work split: invocation x owns the 4 columns of texel x; workgroup y covers GEMV_ROWS rows.
//
// Why a texture: with one or a few rows there is no reuse of a weight across rows, so the kernel
// is bound by how fast weights are loaded. On CPU adapters (lavapipe) a storage-buffer load in a
// loop runs lane by lane, while a texel fetch is a vectorised gather: measured 2.5x faster for a
// 512 x 512 matrix-vector product. The activations of one row are the same for every invocation,
// so each invocation loads one of every 8 and subgroupBroadcast shares them.

// `Scalar`, the storage type of activations and weights (f32, or f16 for f16 models), is declared
// by the host's source generator (src/kernels/source.rs), which also adds `enable f16;` for f16.
// Arithmetic is always f32.

// The parameter block, bindings, overrides and the final store are in gemv_bindings.wgsl, which
// the host appends to this file, as it does fused_epilogue.wgsl.

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn gemv(
    @builtin(global_invocation_id) global: vec3<u32>,
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    let texel = global.x % 8u;
    let layer = global.x / 8u;
    let inner = params.inner;
    let last_row = params.rows - 1u;
    let row0 = workgroup.y * GEMV_ROWS;
    // Rows past the end read the last row again; their results are never stored.
    let x_base0 = min(row0, last_row) * inner;
    let x_base1 = min(row0 + 1u, last_row) * inner;
    let x_base2 = min(row0 + 2u, last_row) * inner;
    let x_base3 = min(row0 + 3u, last_row) * inner;
    let chunk_lane = subgroup_lane % 8u;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < inner; k0 = k0 + 8u) {
        // This invocation loads activation k0 + chunk_lane of each row; past the end of a row it
        // loads zero, which meets the texture's zero padding.
        let k = k0 + chunk_lane;
        let in_row = k < inner;
        let k_clamped = min(k, inner - 1u);
        let x0 = select(0.0, f32(activations[x_base0 + k_clamped]), in_row);
        var x1 = 0.0;
        var x2 = 0.0;
        var x3 = 0.0;
        if (GEMV_ROWS > 1u) {
            x1 = select(0.0, f32(activations[x_base1 + k_clamped]), in_row);
            x2 = select(0.0, f32(activations[x_base2 + k_clamped]), in_row);
            x3 = select(0.0, f32(activations[x_base3 + k_clamped]), in_row);
        }
        {
            let w = textureLoad(weights, vec2<u32>(texel, k0 + 0u), layer, 0);
            acc0 = fma(vec4<f32>(subgroupBroadcast(x0, 0u)), w, acc0);
            if (GEMV_ROWS > 1u) {
                acc1 = fma(vec4<f32>(subgroupBroadcast(x1, 0u)), w, acc1);
                acc2 = fma(vec4<f32>(subgroupBroadcast(x2, 0u)), w, acc2);
                acc3 = fma(vec4<f32>(subgroupBroadcast(x3, 0u)), w, acc3);
            }
        }
        {
            let w = textureLoad(weights, vec2<u32>(texel, k0 + 1u), layer, 0);
            acc0 = fma(vec4<f32>(subgroupBroadcast(x0, 1u)), w, acc0);
            if (GEMV_ROWS > 1u) {
                acc1 = fma(vec4<f32>(subgroupBroadcast(x1, 1u)), w, acc1);
                acc2 = fma(vec4<f32>(subgroupBroadcast(x2, 1u)), w, acc2);
                acc3 = fma(vec4<f32>(subgroupBroadcast(x3, 1u)), w, acc3);
            }
        }
        {
            let w = textureLoad(weights, vec2<u32>(texel, k0 + 2u), layer, 0);
            acc0 = fma(vec4<f32>(subgroupBroadcast(x0, 2u)), w, acc0);
            if (GEMV_ROWS > 1u) {
                acc1 = fma(vec4<f32>(subgroupBroadcast(x1, 2u)), w, acc1);
                acc2 = fma(vec4<f32>(subgroupBroadcast(x2, 2u)), w, acc2);
                acc3 = fma(vec4<f32>(subgroupBroadcast(x3, 2u)), w, acc3);
            }
        }
        {
            let w = textureLoad(weights, vec2<u32>(texel, k0 + 3u), layer, 0);
            acc0 = fma(vec4<f32>(subgroupBroadcast(x0, 3u)), w, acc0);
            if (GEMV_ROWS > 1u) {
                acc1 = fma(vec4<f32>(subgroupBroadcast(x1, 3u)), w, acc1);
                acc2 = fma(vec4<f32>(subgroupBroadcast(x2, 3u)), w, acc2);
                acc3 = fma(vec4<f32>(subgroupBroadcast(x3, 3u)), w, acc3);
            }
        }
        {
            let w = textureLoad(weights, vec2<u32>(texel, k0 + 4u), layer, 0);
            acc0 = fma(vec4<f32>(subgroupBroadcast(x0, 4u)), w, acc0);
            if (GEMV_ROWS > 1u) {
                acc1 = fma(vec4<f32>(subgroupBroadcast(x1, 4u)), w, acc1);
                acc2 = fma(vec4<f32>(subgroupBroadcast(x2, 4u)), w, acc2);
                acc3 = fma(vec4<f32>(subgroupBroadcast(x3, 4u)), w, acc3);
            }
        }
        {
            let w = textureLoad(weights, vec2<u32>(texel, k0 + 5u), layer, 0);
            acc0 = fma(vec4<f32>(subgroupBroadcast(x0, 5u)), w, acc0);
            if (GEMV_ROWS > 1u) {
                acc1 = fma(vec4<f32>(subgroupBroadcast(x1, 5u)), w, acc1);
                acc2 = fma(vec4<f32>(subgroupBroadcast(x2, 5u)), w, acc2);
                acc3 = fma(vec4<f32>(subgroupBroadcast(x3, 5u)), w, acc3);
            }
        }
        {
            let w = textureLoad(weights, vec2<u32>(texel, k0 + 6u), layer, 0);
            acc0 = fma(vec4<f32>(subgroupBroadcast(x0, 6u)), w, acc0);
            if (GEMV_ROWS > 1u) {
                acc1 = fma(vec4<f32>(subgroupBroadcast(x1, 6u)), w, acc1);
                acc2 = fma(vec4<f32>(subgroupBroadcast(x2, 6u)), w, acc2);
                acc3 = fma(vec4<f32>(subgroupBroadcast(x3, 6u)), w, acc3);
            }
        }
        {
            let w = textureLoad(weights, vec2<u32>(texel, k0 + 7u), layer, 0);
            acc0 = fma(vec4<f32>(subgroupBroadcast(x0, 7u)), w, acc0);
            if (GEMV_ROWS > 1u) {
                acc1 = fma(vec4<f32>(subgroupBroadcast(x1, 7u)), w, acc1);
                acc2 = fma(vec4<f32>(subgroupBroadcast(x2, 7u)), w, acc2);
                acc3 = fma(vec4<f32>(subgroupBroadcast(x3, 7u)), w, acc3);
            }
        }
    }

    store_rows(global.x, row0, acc0, acc1, acc2, acc3);
}

// store_rows is in gemv_bindings.wgsl, and store4 (the residual, activation and bounds-checked
// store) in fused_epilogue.wgsl, which the host appends to this file.
