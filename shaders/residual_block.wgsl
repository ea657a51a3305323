// A whole residual block in one dispatch:
//   hidden = relu(a · W1ᵀ + b1)        kept in workgroup memory, never written to global memory
//   out    = relu(hidden · W2ᵀ + b2 + a)
//
// Needs the SUBGROUP feature with subgroups of at least 8 invocations, 16 KiB of workgroup memory
// and a hidden width of at most MAX_HIDDEN (the host checks all three).
//
// Layouts are those of gemm.wgsl: a [rows, cols] row-major; each weight in 16-column blocks
// [ceil(out/16)][in_padded][16] read as vec4, in_padded the input width rounded up to 8; each bias
// padded to a multiple of 16 f32.
//
// Work split: a workgroup owns BLOCK_ROWS rows of the batch and the whole width. Each invocation
// owns 8 output columns (64 invocations cover 512 columns per pass) and keeps BLOCK_ROWS x 8
// accumulators. The activations a row contributes at one k are the same for every invocation, so
// for each chunk of 8 k's invocation i of a subgroup loads the values of k0 + (i % 8) and
// subgroupBroadcast hands them to the rest: the activation loads are shared 8 ways, as the weight
// loads are in gemm_subgroup.wgsl. Each invocation loads its own columns' weights.
//
// Why it can win: one dispatch instead of two, and the hidden activation never makes the round
// trip through global memory. Why it can lose: a workgroup holds only BLOCK_ROWS rows, so every
// workgroup streams both weight matrices, and a small batch is one workgroup. The tuner times it
// against the two-dispatch form and kernel selection keeps the faster.

// `Scalar`, the storage type of activations and weights (f32, or f16 for f16 models), is declared
// by the host's source generator (src/kernels/source.rs), which also adds `enable f16;` for f16.
// Arithmetic is always f32, and the hidden activation is kept in f32.

struct BlockParams {
    // Rows of the batch.
    rows: u32,
    // The block's width: its input and output width.
    cols: u32,
    // The hidden width, at most MAX_HIDDEN.
    hidden: u32,
    // cols rounded up to 8: the inner size of W1's layout.
    cols_padded: u32,
    // hidden rounded up to 8: the inner size of W2's layout.
    hidden_padded: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: BlockParams;
// The block input a, which is also the shortcut added at the end (hence the name store4 expects).
@group(0) @binding(1) var<storage, read> residual: array<Scalar>;
@group(0) @binding(2) var<storage, read> first_weights: array<vec4<Scalar>>;
@group(0) @binding(3) var<storage, read> first_bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> second_weights: array<vec4<Scalar>>;
@group(0) @binding(5) var<storage, read> second_bias: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> output: array<Scalar>;

// The block's epilogue is always the residual add and the ReLU (store4 reads these).
const ADD_RESIDUAL: bool = true;
const APPLY_RELU: bool = true;

const BLOCK_ROWS: u32 = 8u;
const MAX_HIDDEN: u32 = 512u;
const WORKGROUP_SIZE: u32 = 64u;
// Output columns one pass of the workgroup covers: 8 per invocation.
const COLUMNS_PER_PASS: u32 = WORKGROUP_SIZE * 8u;

// hidden[r * MAX_HIDDEN + c]: the first layer's output for the workgroup's rows. Columns from
// params.hidden up to the next multiple of 8 hold zeros, so the second layer's last chunk adds
// nothing.
var<workgroup> hidden: array<f32, BLOCK_ROWS * MAX_HIDDEN>;

// The 8 columns [col0, col0 + 8) of a layer with `out` outputs whose inner size is
// `inner_padded`: the index of their first vec4 of weights at k = 0 and of their first bias vec4.
// Columns past the end use the last 16-column block, which keeps every load in bounds; their
// results are never stored.
fn column_indices(col0: u32, out: u32, inner_padded: u32) -> vec2<u32> {
    let block = min(col0 / 16u, (out - 1u) / 16u);
    let half = (col0 / 8u) % 2u;
    return vec2<u32>(block * inner_padded * 4u + half * 2u, block * 4u + half * 2u);
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn residual_block(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    let row0 = workgroup.x * BLOCK_ROWS;
    let last_row = params.rows - 1u;
    let lane8 = subgroup_lane % 8u;

    // First layer: this invocation's 8 hidden columns (the host guarantees hidden <= 512, so one
    // pass covers them all). The chunk loop is written out (8 k's, 8 rows, 2 vec4 of columns) so
    // that every accumulator is a register and every broadcast lane a constant.
    {
        let col0 = local * 8u;
        let indices = column_indices(col0, params.hidden, params.cols_padded);
        var w_index = indices.x;
        var acc0_0 = vec4<f32>(0.0);
        var acc0_1 = vec4<f32>(0.0);
        var acc1_0 = vec4<f32>(0.0);
        var acc1_1 = vec4<f32>(0.0);
        var acc2_0 = vec4<f32>(0.0);
        var acc2_1 = vec4<f32>(0.0);
        var acc3_0 = vec4<f32>(0.0);
        var acc3_1 = vec4<f32>(0.0);
        var acc4_0 = vec4<f32>(0.0);
        var acc4_1 = vec4<f32>(0.0);
        var acc5_0 = vec4<f32>(0.0);
        var acc5_1 = vec4<f32>(0.0);
        var acc6_0 = vec4<f32>(0.0);
        var acc6_1 = vec4<f32>(0.0);
        var acc7_0 = vec4<f32>(0.0);
        var acc7_1 = vec4<f32>(0.0);
        for (var k0 = 0u; k0 < params.cols; k0 = k0 + 8u) {
            // Past the end of a row the padded weights are zero; the activation is made zero too
            // so that an infinite input cannot produce a NaN.
            let in_row = k0 + lane8 < params.cols;
            let k = min(k0 + lane8, params.cols - 1u);
            let x0 = select(0.0, f32(residual[min(row0 + 0u, last_row) * params.cols + k]), in_row);
            let x1 = select(0.0, f32(residual[min(row0 + 1u, last_row) * params.cols + k]), in_row);
            let x2 = select(0.0, f32(residual[min(row0 + 2u, last_row) * params.cols + k]), in_row);
            let x3 = select(0.0, f32(residual[min(row0 + 3u, last_row) * params.cols + k]), in_row);
            let x4 = select(0.0, f32(residual[min(row0 + 4u, last_row) * params.cols + k]), in_row);
            let x5 = select(0.0, f32(residual[min(row0 + 5u, last_row) * params.cols + k]), in_row);
            let x6 = select(0.0, f32(residual[min(row0 + 6u, last_row) * params.cols + k]), in_row);
            let x7 = select(0.0, f32(residual[min(row0 + 7u, last_row) * params.cols + k]), in_row);
            {
                let w_low = vec4<f32>(first_weights[w_index + 0u]);
                let w_high = vec4<f32>(first_weights[w_index + 1u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 0u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 0u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 0u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 0u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 0u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 0u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 0u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 0u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(first_weights[w_index + 4u]);
                let w_high = vec4<f32>(first_weights[w_index + 5u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 1u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 1u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 1u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 1u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 1u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 1u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 1u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 1u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(first_weights[w_index + 8u]);
                let w_high = vec4<f32>(first_weights[w_index + 9u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 2u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 2u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 2u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 2u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 2u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 2u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 2u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 2u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(first_weights[w_index + 12u]);
                let w_high = vec4<f32>(first_weights[w_index + 13u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 3u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 3u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 3u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 3u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 3u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 3u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 3u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 3u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(first_weights[w_index + 16u]);
                let w_high = vec4<f32>(first_weights[w_index + 17u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 4u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 4u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 4u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 4u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 4u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 4u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 4u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 4u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(first_weights[w_index + 20u]);
                let w_high = vec4<f32>(first_weights[w_index + 21u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 5u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 5u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 5u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 5u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 5u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 5u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 5u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 5u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(first_weights[w_index + 24u]);
                let w_high = vec4<f32>(first_weights[w_index + 25u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 6u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 6u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 6u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 6u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 6u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 6u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 6u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 6u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(first_weights[w_index + 28u]);
                let w_high = vec4<f32>(first_weights[w_index + 29u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 7u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 7u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 7u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 7u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 7u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 7u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 7u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 7u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            w_index = w_index + 32u;
        }
        let b_low = first_bias[indices.y];
        let b_high = first_bias[indices.y + 1u];
        store_hidden(0u, col0, acc0_0 + b_low, acc0_1 + b_high);
        store_hidden(1u, col0, acc1_0 + b_low, acc1_1 + b_high);
        store_hidden(2u, col0, acc2_0 + b_low, acc2_1 + b_high);
        store_hidden(3u, col0, acc3_0 + b_low, acc3_1 + b_high);
        store_hidden(4u, col0, acc4_0 + b_low, acc4_1 + b_high);
        store_hidden(5u, col0, acc5_0 + b_low, acc5_1 + b_high);
        store_hidden(6u, col0, acc6_0 + b_low, acc6_1 + b_high);
        store_hidden(7u, col0, acc7_0 + b_low, acc7_1 + b_high);
    }
    workgroupBarrier();

    // Second layer, with the shortcut: every output column, COLUMNS_PER_PASS at a time.
    for (var pass0 = 0u; pass0 < params.cols; pass0 = pass0 + COLUMNS_PER_PASS) {
        let col0 = pass0 + local * 8u;
        let indices = column_indices(col0, params.cols, params.hidden_padded);
        var w_index = indices.x;
        var acc0_0 = vec4<f32>(0.0);
        var acc0_1 = vec4<f32>(0.0);
        var acc1_0 = vec4<f32>(0.0);
        var acc1_1 = vec4<f32>(0.0);
        var acc2_0 = vec4<f32>(0.0);
        var acc2_1 = vec4<f32>(0.0);
        var acc3_0 = vec4<f32>(0.0);
        var acc3_1 = vec4<f32>(0.0);
        var acc4_0 = vec4<f32>(0.0);
        var acc4_1 = vec4<f32>(0.0);
        var acc5_0 = vec4<f32>(0.0);
        var acc5_1 = vec4<f32>(0.0);
        var acc6_0 = vec4<f32>(0.0);
        var acc6_1 = vec4<f32>(0.0);
        var acc7_0 = vec4<f32>(0.0);
        var acc7_1 = vec4<f32>(0.0);
        for (var k0 = 0u; k0 < params.hidden; k0 = k0 + 8u) {
            let x0 = hidden[0u * MAX_HIDDEN + k0 + lane8];
            let x1 = hidden[1u * MAX_HIDDEN + k0 + lane8];
            let x2 = hidden[2u * MAX_HIDDEN + k0 + lane8];
            let x3 = hidden[3u * MAX_HIDDEN + k0 + lane8];
            let x4 = hidden[4u * MAX_HIDDEN + k0 + lane8];
            let x5 = hidden[5u * MAX_HIDDEN + k0 + lane8];
            let x6 = hidden[6u * MAX_HIDDEN + k0 + lane8];
            let x7 = hidden[7u * MAX_HIDDEN + k0 + lane8];
            {
                let w_low = vec4<f32>(second_weights[w_index + 0u]);
                let w_high = vec4<f32>(second_weights[w_index + 1u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 0u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 0u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 0u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 0u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 0u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 0u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 0u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 0u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(second_weights[w_index + 4u]);
                let w_high = vec4<f32>(second_weights[w_index + 5u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 1u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 1u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 1u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 1u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 1u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 1u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 1u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 1u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(second_weights[w_index + 8u]);
                let w_high = vec4<f32>(second_weights[w_index + 9u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 2u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 2u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 2u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 2u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 2u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 2u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 2u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 2u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(second_weights[w_index + 12u]);
                let w_high = vec4<f32>(second_weights[w_index + 13u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 3u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 3u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 3u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 3u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 3u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 3u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 3u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 3u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(second_weights[w_index + 16u]);
                let w_high = vec4<f32>(second_weights[w_index + 17u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 4u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 4u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 4u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 4u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 4u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 4u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 4u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 4u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(second_weights[w_index + 20u]);
                let w_high = vec4<f32>(second_weights[w_index + 21u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 5u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 5u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 5u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 5u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 5u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 5u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 5u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 5u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(second_weights[w_index + 24u]);
                let w_high = vec4<f32>(second_weights[w_index + 25u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 6u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 6u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 6u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 6u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 6u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 6u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 6u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 6u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            {
                let w_low = vec4<f32>(second_weights[w_index + 28u]);
                let w_high = vec4<f32>(second_weights[w_index + 29u]);
                let v0 = vec4<f32>(subgroupBroadcast(x0, 7u));
                acc0_0 = fma(v0, w_low, acc0_0);
                acc0_1 = fma(v0, w_high, acc0_1);
                let v1 = vec4<f32>(subgroupBroadcast(x1, 7u));
                acc1_0 = fma(v1, w_low, acc1_0);
                acc1_1 = fma(v1, w_high, acc1_1);
                let v2 = vec4<f32>(subgroupBroadcast(x2, 7u));
                acc2_0 = fma(v2, w_low, acc2_0);
                acc2_1 = fma(v2, w_high, acc2_1);
                let v3 = vec4<f32>(subgroupBroadcast(x3, 7u));
                acc3_0 = fma(v3, w_low, acc3_0);
                acc3_1 = fma(v3, w_high, acc3_1);
                let v4 = vec4<f32>(subgroupBroadcast(x4, 7u));
                acc4_0 = fma(v4, w_low, acc4_0);
                acc4_1 = fma(v4, w_high, acc4_1);
                let v5 = vec4<f32>(subgroupBroadcast(x5, 7u));
                acc5_0 = fma(v5, w_low, acc5_0);
                acc5_1 = fma(v5, w_high, acc5_1);
                let v6 = vec4<f32>(subgroupBroadcast(x6, 7u));
                acc6_0 = fma(v6, w_low, acc6_0);
                acc6_1 = fma(v6, w_high, acc6_1);
                let v7 = vec4<f32>(subgroupBroadcast(x7, 7u));
                acc7_0 = fma(v7, w_low, acc7_0);
                acc7_1 = fma(v7, w_high, acc7_1);
            }
            w_index = w_index + 32u;
        }
        let b_low = second_bias[indices.y];
        let b_high = second_bias[indices.y + 1u];
        store4(row0 + 0u, col0, acc0_0 + b_low);
        store4(row0 + 0u, col0 + 4u, acc0_1 + b_high);
        store4(row0 + 1u, col0, acc1_0 + b_low);
        store4(row0 + 1u, col0 + 4u, acc1_1 + b_high);
        store4(row0 + 2u, col0, acc2_0 + b_low);
        store4(row0 + 2u, col0 + 4u, acc2_1 + b_high);
        store4(row0 + 3u, col0, acc3_0 + b_low);
        store4(row0 + 3u, col0 + 4u, acc3_1 + b_high);
        store4(row0 + 4u, col0, acc4_0 + b_low);
        store4(row0 + 4u, col0 + 4u, acc4_1 + b_high);
        store4(row0 + 5u, col0, acc5_0 + b_low);
        store4(row0 + 5u, col0 + 4u, acc5_1 + b_high);
        store4(row0 + 6u, col0, acc6_0 + b_low);
        store4(row0 + 6u, col0 + 4u, acc6_1 + b_high);
        store4(row0 + 7u, col0, acc7_0 + b_low);
        store4(row0 + 7u, col0 + 4u, acc7_1 + b_high);
    }
}

// Stores the first layer's ReLU outputs of row r, columns [col0, col0 + 8), zero past the hidden
// width.
fn store_hidden(r: u32, col0: u32, low: vec4<f32>, high: vec4<f32>) {
    let relu_low = relu_keep_nan4(low);
    let relu_high = relu_keep_nan4(high);
    for (var c = 0u; c < 4u; c = c + 1u) {
        hidden[r * MAX_HIDDEN + col0 + c] = select(0.0, relu_low[c], col0 + c < params.hidden);
        hidden[r * MAX_HIDDEN + col0 + 4u + c] =
            select(0.0, relu_high[c], col0 + 4u + c < params.hidden);
    }
}

// store4 (the residual, activation and bounds-checked store) is in fused_epilogue.wgsl, which
// the host appends to this file.
