// Fused GEMM on cooperative matrices, several subgroups per workgroup, operands staged in
// workgroup memory: output = act(activations · weightsᵀ + bias [+ residual]).
//
// The structure is the one the H200 probe of issue 11 measured fastest through WGSL (196–219
// TFLOP/s for a plain f16 GEMM at 1024 × 4096 × 4096, against 2.9 for gemm_cooperative.wgsl):
// several subgroups per workgroup, a deeper slice of K staged through workgroup memory, and 16
// accumulator tiles per subgroup. What mattered there, in order: several subgroups; staging;
// many accumulators per subgroup; wide staging loads.
//
// Needs what gemm_cooperative.wgsl needs (wgpu's EXPERIMENTAL_COOPERATIVE_MATRIX, the tile
// configuration of the model's precision, a fixed subgroup size); the host's source generator
// declares `Scalar`, `TILE`, `TileA`, `TileB` and `TileC` the same way (16 × 16 f16 operands with
// f32 accumulators for f16 storage, 8 × 8 f32 for f32).
//
// Layouts are the other GEMM kernels': activations [rows, inner] row-major (read as vec4 where
// inner is a multiple of 4); weights [ceil(cols/16)][inner_padded][16]; bias [ceil(cols/16)·16]
// f32; residual and output [rows, cols].
//
// Work split: a workgroup is 2 × 2 subgroups (SUBGROUP_SIZE invocations each, the host's fixed
// subgroup size) and covers a BLOCK × BLOCK output block, BLOCK = 8 · TILE (128 for f16). Each
// subgroup owns one BLOCK/2 square quadrant: 4 × 4 accumulator tiles. Each step stages a
// K_STEP = 2 · TILE deep slice of both operands in workgroup memory (activations [row][k],
// weights [k][column], zero past every edge), then each subgroup multiplies its 16 tiles.
//
// The subgroup's index is local_invocation_index / SUBGROUP_SIZE, not a subgroup builtin: NVIDIA's
// driver is reported to crash building pipelines that mix cooperative matrices with subgroup
// builtins (kvark/blade#333). It only offsets pointers, so control flow stays uniform, as
// cooperative operations require: no invocation returns early and every loop around them runs a
// uniform count. naga does not mark workgroup memory as shared under the Vulkan memory model
// (wgpu #8805), so barriers order every staged access.
//
// The fused epilogue is kept: each subgroup stores one accumulator tile at a time into its own
// TILE × TILE patch of workgroup memory, and its invocations add bias and residual, apply the
// activation and write their share with store4. Nothing partial reaches global memory.

const BLOCK: u32 = 8u * TILE;
const QUADRANT: u32 = 4u * TILE;
const K_STEP: u32 = 2u * TILE;
const SUBGROUPS: u32 = 4u;

// GemmParams and binding 0 are in gemm_params.wgsl, bindings 1–6 in operand_bindings.wgsl; the
// host appends both.

override APPLY_RELU: bool = false;
override ADD_RESIDUAL: bool = false;
override VEC4_ACTIVATIONS: bool = false;
// The adapter's fixed subgroup size; a workgroup is SUBGROUPS of them.
override SUBGROUP_SIZE: u32 = 32u;
override INVOCATIONS: u32 = SUBGROUPS * SUBGROUP_SIZE;

// The activation slice, [BLOCK rows][K_STEP] row-major, and the weight slice as the B operand,
// [K_STEP][BLOCK columns] row-major, in elements of `Stage`: the generator declares `Stage`
// (Scalar, or vec4<Scalar> for wider staging stores), `STAGE_WIDTH` (its scalars) and the
// store helpers `stage_activations` and `stage_weights` (GEMM_COOPERATIVE_STAGED_KERNEL and its
// vec4 twin in src/kernels/gemm.rs). coopLoadT takes its stride in the array's elements.
var<workgroup> staged_activations: array<Stage, BLOCK * K_STEP / STAGE_WIDTH>;
var<workgroup> staged_weights: array<Stage, K_STEP * BLOCK / STAGE_WIDTH>;
// One finished accumulator tile per subgroup, for the epilogue.
var<workgroup> staged_outputs: array<f32, SUBGROUPS * TILE * TILE>;

// Four activations of `row` from k onwards, zero past the matrix (so that an infinite input
// cannot meet a padded zero weight and make a NaN).
fn load_activations(row: u32, k: u32) -> vec4<Scalar> {
    let inner = params.inner;
    if (row >= params.rows) {
        return vec4<Scalar>(Scalar(0.0));
    }
    let base = row * inner;
    if (VEC4_ACTIVATIONS) {
        // inner is a multiple of 4: the vec4 lies wholly inside the row or wholly past it.
        if (k < inner) {
            return activations4[(base + k) / 4u];
        }
        return vec4<Scalar>(Scalar(0.0));
    }
    var value = vec4<Scalar>(Scalar(0.0));
    for (var c = 0u; c < 4u; c = c + 1u) {
        if (k + c < inner) {
            value[c] = activations[base + k + c];
        }
    }
    return value;
}

// Four weights of columns col .. col + 3 (col a multiple of 4) at k, zero past the padded inner
// dimension or the last column block.
fn load_weights(col: u32, k: u32) -> vec4<Scalar> {
    let column_block = col / 16u;
    if (k >= params.inner_padded || column_block >= (params.cols + 15u) / 16u) {
        return vec4<Scalar>(Scalar(0.0));
    }
    return weights[(column_block * params.inner_padded + k) * 4u + (col % 16u) / 4u];
}

@compute @workgroup_size(INVOCATIONS, 1, 1)
fn gemm(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let block_row = workgroup.x * BLOCK;
    let block_col = workgroup.y * BLOCK;
    let subgroup = local / SUBGROUP_SIZE;
    let lane = local % SUBGROUP_SIZE;
    // This subgroup's quadrant within the block.
    let quadrant_row = (subgroup / 2u) * QUADRANT;
    let quadrant_col = (subgroup % 2u) * QUADRANT;

    var acc0_0 = TileC();
    var acc0_1 = TileC();
    var acc0_2 = TileC();
    var acc0_3 = TileC();
    var acc1_0 = TileC();
    var acc1_1 = TileC();
    var acc1_2 = TileC();
    var acc1_3 = TileC();
    var acc2_0 = TileC();
    var acc2_1 = TileC();
    var acc2_2 = TileC();
    var acc2_3 = TileC();
    var acc3_0 = TileC();
    var acc3_1 = TileC();
    var acc3_2 = TileC();
    var acc3_3 = TileC();

    for (var k0 = 0u; k0 < params.inner; k0 = k0 + K_STEP) {
        // Stage both slices, four values per load.
        for (var i = local; i < BLOCK * K_STEP / 4u; i = i + INVOCATIONS) {
            let row = i / (K_STEP / 4u);
            let k = (i % (K_STEP / 4u)) * 4u;
            let value = load_activations(block_row + row, k0 + k);
            stage_activations(row * K_STEP + k, value);
        }
        for (var i = local; i < K_STEP * BLOCK / 4u; i = i + INVOCATIONS) {
            let k = i / (BLOCK / 4u);
            let col = (i % (BLOCK / 4u)) * 4u;
            let value = load_weights(block_col + col, k0 + k);
            stage_weights(k * BLOCK + col, value);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < K_STEP; kk = kk + TILE) {
            // Offsets and strides in `Stage` elements; every offset is a multiple of 4 scalars.
            let a_at = (quadrant_row * K_STEP + kk) / STAGE_WIDTH;
            let a_tile = TILE * K_STEP / STAGE_WIDTH;
            let a_stride = K_STEP / STAGE_WIDTH;
            let a0 = coopLoadT<TileA>(&staged_activations[a_at + 0u * a_tile], a_stride);
            let a1 = coopLoadT<TileA>(&staged_activations[a_at + 1u * a_tile], a_stride);
            let a2 = coopLoadT<TileA>(&staged_activations[a_at + 2u * a_tile], a_stride);
            let a3 = coopLoadT<TileA>(&staged_activations[a_at + 3u * a_tile], a_stride);
            let b_at = (kk * BLOCK + quadrant_col) / STAGE_WIDTH;
            let b_tile = TILE / STAGE_WIDTH;
            let b_stride = BLOCK / STAGE_WIDTH;
            let b0 = coopLoadT<TileB>(&staged_weights[b_at + 0u * b_tile], b_stride);
            let b1 = coopLoadT<TileB>(&staged_weights[b_at + 1u * b_tile], b_stride);
            let b2 = coopLoadT<TileB>(&staged_weights[b_at + 2u * b_tile], b_stride);
            let b3 = coopLoadT<TileB>(&staged_weights[b_at + 3u * b_tile], b_stride);
            acc0_0 = coopMultiplyAdd(a0, b0, acc0_0);
            acc0_1 = coopMultiplyAdd(a0, b1, acc0_1);
            acc0_2 = coopMultiplyAdd(a0, b2, acc0_2);
            acc0_3 = coopMultiplyAdd(a0, b3, acc0_3);
            acc1_0 = coopMultiplyAdd(a1, b0, acc1_0);
            acc1_1 = coopMultiplyAdd(a1, b1, acc1_1);
            acc1_2 = coopMultiplyAdd(a1, b2, acc1_2);
            acc1_3 = coopMultiplyAdd(a1, b3, acc1_3);
            acc2_0 = coopMultiplyAdd(a2, b0, acc2_0);
            acc2_1 = coopMultiplyAdd(a2, b1, acc2_1);
            acc2_2 = coopMultiplyAdd(a2, b2, acc2_2);
            acc2_3 = coopMultiplyAdd(a2, b3, acc2_3);
            acc3_0 = coopMultiplyAdd(a3, b0, acc3_0);
            acc3_1 = coopMultiplyAdd(a3, b1, acc3_1);
            acc3_2 = coopMultiplyAdd(a3, b2, acc3_2);
            acc3_3 = coopMultiplyAdd(a3, b3, acc3_3);
        }
        // The next slice overwrites the staging arrays only after every tile load above.
        workgroupBarrier();
    }

    let row0 = block_row + quadrant_row;
    let col0 = block_col + quadrant_col;
    store_tile(acc0_0, lane, subgroup, row0 + 0u * TILE, col0 + 0u * TILE);
    store_tile(acc0_1, lane, subgroup, row0 + 0u * TILE, col0 + 1u * TILE);
    store_tile(acc0_2, lane, subgroup, row0 + 0u * TILE, col0 + 2u * TILE);
    store_tile(acc0_3, lane, subgroup, row0 + 0u * TILE, col0 + 3u * TILE);
    store_tile(acc1_0, lane, subgroup, row0 + 1u * TILE, col0 + 0u * TILE);
    store_tile(acc1_1, lane, subgroup, row0 + 1u * TILE, col0 + 1u * TILE);
    store_tile(acc1_2, lane, subgroup, row0 + 1u * TILE, col0 + 2u * TILE);
    store_tile(acc1_3, lane, subgroup, row0 + 1u * TILE, col0 + 3u * TILE);
    store_tile(acc2_0, lane, subgroup, row0 + 2u * TILE, col0 + 0u * TILE);
    store_tile(acc2_1, lane, subgroup, row0 + 2u * TILE, col0 + 1u * TILE);
    store_tile(acc2_2, lane, subgroup, row0 + 2u * TILE, col0 + 2u * TILE);
    store_tile(acc2_3, lane, subgroup, row0 + 2u * TILE, col0 + 3u * TILE);
    store_tile(acc3_0, lane, subgroup, row0 + 3u * TILE, col0 + 0u * TILE);
    store_tile(acc3_1, lane, subgroup, row0 + 3u * TILE, col0 + 1u * TILE);
    store_tile(acc3_2, lane, subgroup, row0 + 3u * TILE, col0 + 2u * TILE);
    store_tile(acc3_3, lane, subgroup, row0 + 3u * TILE, col0 + 3u * TILE);
}

// The epilogue of one accumulator tile whose top-left output is (row0, col0): through this
// subgroup's patch of workgroup memory to store4. Every invocation of the workgroup calls it the
// same number of times, so its barriers are in uniform control flow.
fn store_tile(tile: TileC, lane: u32, subgroup: u32, row0: u32, col0: u32) {
    let tile_at = subgroup * TILE * TILE;
    coopStoreT(tile, &staged_outputs[tile_at], TILE);
    workgroupBarrier();
    // The bias is padded to a multiple of 16 columns, which a tile of 8 or 16 never straddles
    // past; columns past it are past cols too, and store4 drops them.
    let last_bias = arrayLength(&bias) - 1u;
    for (var i = lane; i < TILE * TILE / 4u; i = i + SUBGROUP_SIZE) {
        let r = i / (TILE / 4u);
        let c = (i % (TILE / 4u)) * 4u;
        let s = tile_at + r * TILE + c;
        let value = vec4<f32>(
            staged_outputs[s],
            staged_outputs[s + 1u],
            staged_outputs[s + 2u],
            staged_outputs[s + 3u],
        );
        store4(row0 + r, col0 + c, value + bias[min((col0 + c) / 4u, last_bias)]);
    }
    // The tile_at is overwritten by the next tile only after every invocation has read it.
    workgroupBarrier();
}

// store4 (the residual, activation and bounds-checked store) is in fused_epilogue.wgsl, which
// the host appends to this file.
