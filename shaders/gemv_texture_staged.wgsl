// Fused small-batch GEMM ("GEMV") without subgroups: output = act(activations · weightsᵀ + bias
// [+ residual]) for a few rows, with the weights in a texture, for adapters whose subgroups are
// missing or narrower than 8 (a browser through wgpu's WebGPU backend, SwiftShader, GL).
//
// The same layouts, bindings, parameters and work split as gemv_texture.wgsl: invocation x owns
// the 4 columns of texel x, workgroup y covers GEMV_ROWS rows. What differs is how the
// activations reach every invocation: gemv_texture.wgsl has each of 8 invocations load one and
// shares them with subgroupBroadcast; here the workgroup stages STAGE_K activations of each row
// in workgroup memory, one barrier on each side, and every invocation reads them from there (the
// same address for all, which a GPU serves as a broadcast).

// The parameter block, bindings, overrides and the final store are in gemv_bindings.wgsl, which
// the host appends to this file, as it does fused_epilogue.wgsl.

// Activations of each row staged per round: 4 rows x 256 x 4 bytes = 4 KiB of workgroup memory.
const STAGE_K: u32 = 256u;
var<workgroup> staged: array<f32, 1024>;

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn gemv(
    @builtin(global_invocation_id) global: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
    @builtin(workgroup_id) workgroup: vec3<u32>,
) {
    let texel = global.x % 8u;
    let layer = global.x / 8u;
    let inner = params.inner;
    // The texture is zero-padded to a multiple of 8 rows; staged values past `inner` are zero.
    let inner_padded = (inner + 7u) / 8u * 8u;
    let last_row = params.rows - 1u;
    let row0 = workgroup.y * GEMV_ROWS;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k_base = 0u; k_base < inner_padded; k_base = k_base + STAGE_K) {
        // Every invocation takes part in staging, columns past the end included: the loop and
        // its barriers are uniform across the workgroup.
        for (var i = local; i < GEMV_ROWS * STAGE_K; i = i + WORKGROUP_SIZE) {
            let row = row0 + i / STAGE_K;
            let k = k_base + i % STAGE_K;
            // Rows past the end read the last row again; their results are never stored.
            let source = min(row, last_row) * inner + min(k, inner - 1u);
            staged[i] = select(0.0, f32(activations[source]), k < inner);
        }
        workgroupBarrier();
        let count = min(STAGE_K, inner_padded - k_base);
        for (var kk = 0u; kk < count; kk = kk + 1u) {
            let w = textureLoad(weights, vec2<u32>(texel, k_base + kk), layer, 0);
            acc0 = fma(vec4<f32>(staged[kk]), w, acc0);
            if (GEMV_ROWS > 1u) {
                acc1 = fma(vec4<f32>(staged[STAGE_K + kk]), w, acc1);
                acc2 = fma(vec4<f32>(staged[2u * STAGE_K + kk]), w, acc2);
                acc3 = fma(vec4<f32>(staged[3u * STAGE_K + kk]), w, acc3);
            }
        }
        // No invocation stages the next round before all have read this one.
        workgroupBarrier();
    }

    store_rows(global.x, row0, acc0, acc1, acc2, acc3);
}

// store_rows is in gemv_bindings.wgsl, and store4 (the residual, activation and bounds-checked
// store) in fused_epilogue.wgsl, which the host appends to this file.
