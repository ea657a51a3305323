// Fused GEMM on cooperative matrices (tensor cores, simdgroup matrices):
// output = act(activations · weightsᵀ + bias [+ residual]).
//
// Needs wgpu's Features::EXPERIMENTAL_COOPERATIVE_MATRIX and an adapter that reports the tile
// configuration this file is specialised for (the host checks
// Adapter::cooperative_matrix_properties before it builds the pipeline):
//   f32 storage: 8x8x8 tiles, f32 A and B, f32 accumulators (Apple GPUs through Metal);
//   f16 storage: 16x16x16 tiles, f16 A and B, f32 accumulators (tensor cores, e.g. NVIDIA's
//   Vulkan driver).
// It also needs a fixed subgroup size, since a workgroup must be exactly one subgroup (naga does
// not allow cooperative operations under a branch on the subgroup index).
// The host's source generator (src/kernels/source.rs) declares the storage type `Scalar`, the
// tile side `TILE` and the tile types `TileA`, `TileB` and `TileC` for the configuration of the
// model's precision, and enables `wgpu_cooperative_matrix` (and `f16`).
//
// Layouts are those of gemm.wgsl: activations [rows, inner] row-major; weights in 16-column
// blocks [ceil(cols/16)][inner_padded][16]; bias [ceil(cols/16) * 16] f32 as vec4.
//
// Work split: a workgroup is one subgroup (the host sets WORKGROUP_SIZE to the adapter's fixed
// subgroup size) and computes a TILE_ROWS x TILE_COLS block of outputs in 8 accumulator tiles.
// For each TILE-wide slice of the inner dimension the subgroup stages the activations and weights
// it needs in workgroup memory, zero-padded past the matrix edges, so that awkward shapes need no
// special case and an infinite input past an edge cannot turn into a NaN; then it multiplies the
// tiles with coopMultiplyAdd.
//
// The fused epilogue is kept: the accumulators go to workgroup memory, and each invocation adds
// bias and residual to its share of the tile, applies the activation and writes it out with bounds
// checks (store4). Nothing partial ever reaches global memory.
//
// Cooperative operations need uniform control flow: no invocation returns early, and the loop
// around them runs for a uniform count.

// Outputs per workgroup: 4 x 2 tiles.
const TILE_ROWS: u32 = 4u * TILE;
const TILE_COLS: u32 = 2u * TILE;

// GemmParams and binding 0 are in gemm_params.wgsl, which the host appends. The weights are read
// as scalars here (staged one value at a time), so bindings 1–5 are this file's own.
@group(0) @binding(1) var<storage, read> activations: array<Scalar>;
@group(0) @binding(2) var<storage, read> weights: array<Scalar>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> residual: array<Scalar>;
@group(0) @binding(5) var<storage, read_write> output: array<Scalar>;

override APPLY_RELU: bool = false;
override ADD_RESIDUAL: bool = false;
// The adapter's subgroup size, so that one workgroup is exactly one subgroup.
override WORKGROUP_SIZE: u32 = 32u;

// The activations of one inner slice, [TILE_ROWS][TILE] row-major.
var<workgroup> staged_activations: array<Scalar, TILE_ROWS * TILE>;
// The weights of one inner slice as the B operand, [TILE (inner)][TILE_COLS] row-major.
var<workgroup> staged_weights: array<Scalar, TILE * TILE_COLS>;
// The finished accumulators, [TILE_ROWS][TILE_COLS] row-major, for the epilogue.
var<workgroup> staged_outputs: array<f32, TILE_ROWS * TILE_COLS>;

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn gemm(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let row0 = workgroup.x * TILE_ROWS;
    let col0 = workgroup.y * TILE_COLS;
    let inner = params.inner;
    var acc0_0 = TileC();
    var acc0_1 = TileC();
    var acc1_0 = TileC();
    var acc1_1 = TileC();
    var acc2_0 = TileC();
    var acc2_1 = TileC();
    var acc3_0 = TileC();
    var acc3_1 = TileC();
    for (var k0 = 0u; k0 < inner; k0 = k0 + TILE) {
        for (var i = local; i < TILE_ROWS * TILE; i = i + WORKGROUP_SIZE) {
            let row = row0 + i / TILE;
            let k = k0 + i % TILE;
            var value = Scalar(0.0);
            if (row < params.rows && k < inner) {
                value = activations[row * inner + k];
            }
            staged_activations[i] = value;
        }
        for (var i = local; i < TILE * TILE_COLS; i = i + WORKGROUP_SIZE) {
            let k = k0 + i / TILE_COLS;
            let col = col0 + i % TILE_COLS;
            var value = Scalar(0.0);
            if (col < params.cols && k < inner) {
                value = weights[((col / 16u) * params.inner_padded + k) * 16u + col % 16u];
            }
            staged_weights[i] = value;
        }
        workgroupBarrier();
        let a0 = coopLoadT<TileA>(&staged_activations[0u * TILE * TILE], TILE);
        let a1 = coopLoadT<TileA>(&staged_activations[1u * TILE * TILE], TILE);
        let a2 = coopLoadT<TileA>(&staged_activations[2u * TILE * TILE], TILE);
        let a3 = coopLoadT<TileA>(&staged_activations[3u * TILE * TILE], TILE);
        let b0 = coopLoadT<TileB>(&staged_weights[0u], TILE_COLS);
        let b1 = coopLoadT<TileB>(&staged_weights[TILE], TILE_COLS);
        acc0_0 = coopMultiplyAdd(a0, b0, acc0_0);
        acc0_1 = coopMultiplyAdd(a0, b1, acc0_1);
        acc1_0 = coopMultiplyAdd(a1, b0, acc1_0);
        acc1_1 = coopMultiplyAdd(a1, b1, acc1_1);
        acc2_0 = coopMultiplyAdd(a2, b0, acc2_0);
        acc2_1 = coopMultiplyAdd(a2, b1, acc2_1);
        acc3_0 = coopMultiplyAdd(a3, b0, acc3_0);
        acc3_1 = coopMultiplyAdd(a3, b1, acc3_1);
        // The next slice overwrites the staging arrays only after every tile load above.
        workgroupBarrier();
    }

    coopStoreT(acc0_0, &staged_outputs[0u * TILE * TILE_COLS + 0u], TILE_COLS);
    coopStoreT(acc0_1, &staged_outputs[0u * TILE * TILE_COLS + TILE], TILE_COLS);
    coopStoreT(acc1_0, &staged_outputs[1u * TILE * TILE_COLS + 0u], TILE_COLS);
    coopStoreT(acc1_1, &staged_outputs[1u * TILE * TILE_COLS + TILE], TILE_COLS);
    coopStoreT(acc2_0, &staged_outputs[2u * TILE * TILE_COLS + 0u], TILE_COLS);
    coopStoreT(acc2_1, &staged_outputs[2u * TILE * TILE_COLS + TILE], TILE_COLS);
    coopStoreT(acc3_0, &staged_outputs[3u * TILE * TILE_COLS + 0u], TILE_COLS);
    coopStoreT(acc3_1, &staged_outputs[3u * TILE * TILE_COLS + TILE], TILE_COLS);
    workgroupBarrier();

    // The bias is padded to a multiple of 16 columns, which TILE_COLS (32 for f16) can pass.
    let last_bias = arrayLength(&bias) - 1u;
    for (var i = local; i < TILE_ROWS * TILE_COLS / 4u; i = i + WORKGROUP_SIZE) {
        let r = i / (TILE_COLS / 4u);
        let c = (i % (TILE_COLS / 4u)) * 4u;
        let s = r * TILE_COLS + c;
        let value = vec4<f32>(
            staged_outputs[s],
            staged_outputs[s + 1u],
            staged_outputs[s + 2u],
            staged_outputs[s + 3u],
        );
        store4(row0 + r, col0 + c, value + bias[min((col0 + c) / 4u, last_bias)]);
    }
}

// store4 (the residual, activation and bounds-checked store) is in fused_epilogue.wgsl, which
// the host appends to this file.
