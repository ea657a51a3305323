// Fused GEMM, tiled family: output = act(activations · weightsᵀ + bias [+ residual]).
//
// One shader, many kernels: the block tile, the per-invocation micro-tile, the depth of the
// inner-dimension slice staged in workgroup memory, the workgroup's shape and whether the next
// slice is loaded while the current one is multiplied are all `override` constants, so that the
// tuner (src/tune.rs) can search them per adapter and shape without a source per point. The
// host's `TiledGemmConfig` (src/kernels/gemm.rs) lists the points and checks each against the
// device's limits.
//
// Layouts are the other GEMM kernels' (see gemm_subgroup.wgsl): activations [rows, inner]
// row-major; weights [ceil(cols/16)][inner_padded][16] read as 4 vec4 per (column block, k);
// bias [ceil(cols/16) * 16] f32; residual and output [rows, cols].
//
// Work split: a workgroup of THREAD_ROWS × THREAD_COLS invocations covers BLOCK_ROWS =
// THREAD_ROWS · MICRO_ROWS rows and BLOCK_COLS = THREAD_COLS · MICRO_COLS columns. Each step
// stages a K_DEPTH-deep slice of both operands in workgroup memory (activations transposed to
// [k][row], weights as [k][column] vec4), then every invocation multiplies its MICRO_ROWS ×
// MICRO_COLS outputs out of it. Invocation (ty, tx) owns rows ty + i·THREAD_ROWS and the vec4
// columns tx + j·THREAD_COLS: the invocations of a row of the workgroup read consecutive vec4 of
// the weight slice (no bank conflicts) and one activation each (a broadcast).
//
// This is the GPU's shape of GEMM: workgroup memory and barriers. On CPU adapters (lavapipe) a
// barrier turns every 8 lanes into a coroutine, so there the tuner keeps the subgroup GEMM.

// GemmParams and binding 0 are in gemm_params.wgsl, bindings 1–6 in operand_bindings.wgsl; the
// host appends both.

// The epilogue, fixed per pipeline.
override APPLY_RELU: bool = false;
override ADD_RESIDUAL: bool = false;
// Whether inner is a multiple of 4, so that a row's activations can be read 4 at a time.
override VEC4_ACTIVATIONS: bool = false;

// The family's point. The host sets all five; the defaults are the point that measured best in
// the H200 probe's plain SIMT kernel (a 128 × 128 block, 8 × 8 per invocation).
override THREAD_ROWS: u32 = 16u;
override THREAD_COLS: u32 = 16u;
// At most MAX_MICRO_ROWS.
override MICRO_ROWS: u32 = 8u;
// 4 or 8 (one or two vec4).
override MICRO_COLS: u32 = 8u;
// A multiple of 4.
override K_DEPTH: u32 = 16u;
// Whether the next slice is read from storage into registers before the current one is
// multiplied, so that its memory latency hides behind the FMAs.
override PREFETCH: bool = false;

override THREADS: u32 = THREAD_ROWS * THREAD_COLS;
override BLOCK_ROWS: u32 = THREAD_ROWS * MICRO_ROWS;
override BLOCK_COLS: u32 = THREAD_COLS * MICRO_COLS;
override BLOCK_VEC4_COLS: u32 = BLOCK_COLS / 4u;
override MICRO_VEC4_COLS: u32 = MICRO_COLS / 4u;
// vec4 of each operand's slice, and how many each invocation stages.
override SLICE_A_VEC4: u32 = BLOCK_ROWS * K_DEPTH / 4u;
override SLICE_B_VEC4: u32 = BLOCK_VEC4_COLS * K_DEPTH;
override STAGED_A: u32 = (SLICE_A_VEC4 + THREADS - 1u) / THREADS;
override STAGED_B: u32 = (SLICE_B_VEC4 + THREADS - 1u) / THREADS;
// Workgroup memory: the activation slice as [k][row], the weight slice as [k][vec4 column].
override TILE_A_SIZE: u32 = K_DEPTH * BLOCK_ROWS;
override TILE_B_SIZE: u32 = SLICE_B_VEC4;

// Fixed bounds of the per-invocation arrays; the host keeps every point inside them.
const MAX_MICRO_ROWS: u32 = 8u;
const MAX_ACCUMULATORS: u32 = 16u;
const MAX_STAGED: u32 = 8u;

var<workgroup> tile_a: array<f32, TILE_A_SIZE>;
var<workgroup> tile_b: array<vec4<f32>, TILE_B_SIZE>;

// Four activations of one row: k .. k + 3 of the slice starting at k0, zero past the row's end
// (so that an infinite input cannot meet a padded zero weight and make a NaN).
fn load_activations(row: u32, k: u32) -> vec4<f32> {
    let inner = params.inner;
    let base = row * inner;
    if (VEC4_ACTIVATIONS) {
        // inner is a multiple of 4, so the vec4 lies wholly inside the row or wholly past it.
        if (k < inner) {
            return vec4<f32>(activations4[(base + k) / 4u]);
        }
        return vec4<f32>(0.0);
    }
    var value = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c = c + 1u) {
        if (k + c < inner) {
            value[c] = f32(activations[base + k + c]);
        }
    }
    return value;
}

// The staged vec4 number `index` of the activation slice at k0: row index / (K_DEPTH / 4) of
// the block, k's 4 · (index % (K_DEPTH / 4)) onwards. Rows past the end read the last row
// again (their results are never stored), so every load stays in bounds.
fn stage_a(block_row: u32, index: u32, k0: u32) -> vec4<f32> {
    if (index >= SLICE_A_VEC4) {
        return vec4<f32>(0.0);
    }
    let quads = K_DEPTH / 4u;
    let row = min(block_row + index / quads, params.rows - 1u);
    return load_activations(row, k0 + (index % quads) * 4u);
}

// The staged vec4 number `index` of the weight slice at k0: k index / BLOCK_VEC4_COLS of the
// slice, vec4 column index % BLOCK_VEC4_COLS of the block. Past the padded inner dimension or
// the last column block it is zero.
fn stage_b(block_col: u32, index: u32, k0: u32) -> vec4<f32> {
    if (index >= SLICE_B_VEC4) {
        return vec4<f32>(0.0);
    }
    let k = k0 + index / BLOCK_VEC4_COLS;
    let vec4_col = block_col / 4u + index % BLOCK_VEC4_COLS;
    let column_block = vec4_col / 4u;
    let column_blocks = (params.cols + 15u) / 16u;
    if (k >= params.inner_padded || column_block >= column_blocks) {
        return vec4<f32>(0.0);
    }
    return vec4<f32>(weights[(column_block * params.inner_padded + k) * 4u + vec4_col % 4u]);
}

@compute @workgroup_size(THREADS, 1, 1)
fn gemm(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) thread: u32,
) {
    let tx = thread % THREAD_COLS;
    let ty = thread / THREAD_COLS;
    let block_row = workgroup.x * BLOCK_ROWS;
    let block_col = workgroup.y * BLOCK_COLS;
    let quads = K_DEPTH / 4u;

    var acc: array<vec4<f32>, MAX_ACCUMULATORS>;
    var staged_a: array<vec4<f32>, MAX_STAGED>;
    var staged_b: array<vec4<f32>, MAX_STAGED>;

    // No invocation returns early: every one takes part in every barrier.
    for (var k0 = 0u; k0 < params.inner; k0 = k0 + K_DEPTH) {
        if (!PREFETCH || k0 == 0u) {
            for (var s = 0u; s < STAGED_A; s = s + 1u) {
                staged_a[s] = stage_a(block_row, thread + s * THREADS, k0);
            }
            for (var s = 0u; s < STAGED_B; s = s + 1u) {
                staged_b[s] = stage_b(block_col, thread + s * THREADS, k0);
            }
        }
        // The previous slice's multiplications are done before it is overwritten.
        workgroupBarrier();
        for (var s = 0u; s < STAGED_A; s = s + 1u) {
            let index = thread + s * THREADS;
            if (index < SLICE_A_VEC4) {
                let row = index / quads;
                let k = (index % quads) * 4u;
                let value = staged_a[s];
                tile_a[(k + 0u) * BLOCK_ROWS + row] = value.x;
                tile_a[(k + 1u) * BLOCK_ROWS + row] = value.y;
                tile_a[(k + 2u) * BLOCK_ROWS + row] = value.z;
                tile_a[(k + 3u) * BLOCK_ROWS + row] = value.w;
            }
        }
        for (var s = 0u; s < STAGED_B; s = s + 1u) {
            let index = thread + s * THREADS;
            if (index < SLICE_B_VEC4) {
                tile_b[index] = staged_b[s];
            }
        }
        workgroupBarrier();
        if (PREFETCH && k0 + K_DEPTH < params.inner) {
            for (var s = 0u; s < STAGED_A; s = s + 1u) {
                staged_a[s] = stage_a(block_row, thread + s * THREADS, k0 + K_DEPTH);
            }
            for (var s = 0u; s < STAGED_B; s = s + 1u) {
                staged_b[s] = stage_b(block_col, thread + s * THREADS, k0 + K_DEPTH);
            }
        }
        for (var k = 0u; k < K_DEPTH; k = k + 1u) {
            var a: array<f32, MAX_MICRO_ROWS>;
            for (var i = 0u; i < MICRO_ROWS; i = i + 1u) {
                a[i] = tile_a[k * BLOCK_ROWS + ty + i * THREAD_ROWS];
            }
            for (var j = 0u; j < MICRO_VEC4_COLS; j = j + 1u) {
                let b = tile_b[k * BLOCK_VEC4_COLS + tx + j * THREAD_COLS];
                for (var i = 0u; i < MICRO_ROWS; i = i + 1u) {
                    let slot = i * MICRO_VEC4_COLS + j;
                    acc[slot] = fma(vec4<f32>(a[i]), b, acc[slot]);
                }
            }
        }
    }

    let bias_last = arrayLength(&bias) - 1u;
    for (var i = 0u; i < MICRO_ROWS; i = i + 1u) {
        let row = block_row + ty + i * THREAD_ROWS;
        for (var j = 0u; j < MICRO_VEC4_COLS; j = j + 1u) {
            let vec4_col = block_col / 4u + tx + j * THREAD_COLS;
            // Columns past the padded bias are past cols too: store4 drops them.
            let b = bias[min(vec4_col, bias_last)];
            store4(row, vec4_col * 4u, acc[i * MICRO_VEC4_COLS + j] + b);
        }
    }
}

// store4 (the residual, activation and bounds-checked store) is in fused_epilogue.wgsl, which
// the host appends to this file.
