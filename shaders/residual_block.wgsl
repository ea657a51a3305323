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
// subgroupShuffle hands them to the rest: the activation loads are shared 8 ways, as the weight
// loads are in gemm_subgroup.wgsl. Each invocation loads its own columns' weights.
//
// Why it can win: one dispatch instead of two, and the hidden activation never makes the round
// trip through global memory. Why it can lose: a workgroup holds only BLOCK_ROWS rows, so every
// workgroup streams both weight matrices, and a small batch is one workgroup. The planner times it
// against the two-dispatch form and keeps the faster.

// The storage type of activations and weights (f16 for f16 models); arithmetic is f32, and the
// hidden activation is kept in f32.
alias Scalar = f32;

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
    // pass covers them all).
    {
        let col0 = local * 8u;
        let indices = column_indices(col0, params.hidden, params.cols_padded);
        var w_index = indices.x;
        var acc: array<vec4<f32>, 16>;
        for (var r = 0u; r < 16u; r = r + 1u) {
            acc[r] = vec4<f32>(0.0);
        }
        for (var k0 = 0u; k0 < params.cols; k0 = k0 + 8u) {
            // Past the end of a row the padded weights are zero; the activation is made zero too
            // so that an infinite input cannot produce a NaN.
            let in_row = k0 + lane8 < params.cols;
            let k = min(k0 + lane8, params.cols - 1u);
            var x: array<f32, 8>;
            for (var r = 0u; r < BLOCK_ROWS; r = r + 1u) {
                let row = min(row0 + r, last_row);
                x[r] = select(0.0, f32(residual[row * params.cols + k]), in_row);
            }
            for (var j = 0u; j < 8u; j = j + 1u) {
                let w_low = vec4<f32>(first_weights[w_index + j * 4u]);
                let w_high = vec4<f32>(first_weights[w_index + j * 4u + 1u]);
                for (var r = 0u; r < BLOCK_ROWS; r = r + 1u) {
                    let x_rk = vec4<f32>(subgroupShuffle(x[r], j));
                    acc[r * 2u] = fma(x_rk, w_low, acc[r * 2u]);
                    acc[r * 2u + 1u] = fma(x_rk, w_high, acc[r * 2u + 1u]);
                }
            }
            w_index = w_index + 32u;
        }
        let b_low = first_bias[indices.y];
        let b_high = first_bias[indices.y + 1u];
        for (var r = 0u; r < BLOCK_ROWS; r = r + 1u) {
            let low = max(acc[r * 2u] + b_low, vec4<f32>(0.0));
            let high = max(acc[r * 2u + 1u] + b_high, vec4<f32>(0.0));
            for (var c = 0u; c < 4u; c = c + 1u) {
                hidden[r * MAX_HIDDEN + col0 + c] = select(0.0, low[c], col0 + c < params.hidden);
                hidden[r * MAX_HIDDEN + col0 + 4u + c] =
                    select(0.0, high[c], col0 + 4u + c < params.hidden);
            }
        }
    }
    workgroupBarrier();

    // Second layer, with the shortcut: every output column, COLUMNS_PER_PASS at a time.
    for (var pass0 = 0u; pass0 < params.cols; pass0 = pass0 + COLUMNS_PER_PASS) {
        let col0 = pass0 + local * 8u;
        let indices = column_indices(col0, params.cols, params.hidden_padded);
        var w_index = indices.x;
        var acc: array<vec4<f32>, 16>;
        for (var r = 0u; r < 16u; r = r + 1u) {
            acc[r] = vec4<f32>(0.0);
        }
        for (var k0 = 0u; k0 < params.hidden; k0 = k0 + 8u) {
            var h: array<f32, 8>;
            for (var r = 0u; r < BLOCK_ROWS; r = r + 1u) {
                h[r] = hidden[r * MAX_HIDDEN + k0 + lane8];
            }
            for (var j = 0u; j < 8u; j = j + 1u) {
                let w_low = vec4<f32>(second_weights[w_index + j * 4u]);
                let w_high = vec4<f32>(second_weights[w_index + j * 4u + 1u]);
                for (var r = 0u; r < BLOCK_ROWS; r = r + 1u) {
                    let h_rk = vec4<f32>(subgroupShuffle(h[r], j));
                    acc[r * 2u] = fma(h_rk, w_low, acc[r * 2u]);
                    acc[r * 2u + 1u] = fma(h_rk, w_high, acc[r * 2u + 1u]);
                }
            }
            w_index = w_index + 32u;
        }
        let b_low = second_bias[indices.y];
        let b_high = second_bias[indices.y + 1u];
        for (var r = 0u; r < BLOCK_ROWS; r = r + 1u) {
            store4(row0 + r, col0, acc[r * 2u] + b_low);
            store4(row0 + r, col0 + 4u, acc[r * 2u + 1u] + b_high);
        }
    }
}

// store4 (the residual, activation and bounds-checked store) is in fused_epilogue.wgsl, which
// the host appends to this file.
// requires: fused_epilogue.wgsl
