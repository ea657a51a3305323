// The parameter block, bindings, overrides and final store of both texture GEMV kernels
// (gemv_texture.wgsl and gemv_texture_staged.wgsl), appended to each by the host
// (src/kernels/gemv.rs): one binding table, two ways of sharing the activations.

struct GemvParams {
    rows: u32,
    cols: u32,
    inner: u32,
    cols4: u32,
}

@group(0) @binding(0) var<uniform> params: GemvParams;
@group(0) @binding(1) var<storage, read> activations: array<Scalar>;
@group(0) @binding(2) var weights: texture_2d_array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> residual: array<Scalar>;
@group(0) @binding(5) var<storage, read_write> output: array<Scalar>;

override APPLY_RELU: bool = false;
override ADD_RESIDUAL: bool = false;
// Rows per workgroup: 1 or 4. Fixed per pipeline, so unused rows cost nothing.
override GEMV_ROWS: u32 = 4u;
// Invocations per workgroup; a multiple of 8.
override WORKGROUP_SIZE: u32 = 32u;

// Adds the bias to the accumulators of invocation `column4` (output columns 4·column4 to
// 4·column4 + 3) for rows row0 to row0 + GEMV_ROWS − 1, and stores them through store4 (residual,
// activation, bounds). An invocation past the last column stores nothing.
fn store_rows(column4: u32, row0: u32, acc0: vec4<f32>, acc1: vec4<f32>, acc2: vec4<f32>, acc3: vec4<f32>) {
    if (column4 >= params.cols4) {
        return;
    }
    let col0 = column4 * 4u;
    let b = bias[column4];
    store4(row0, col0, acc0 + b);
    if (GEMV_ROWS > 1u) {
        store4(row0 + 1u, col0, acc1 + b);
        store4(row0 + 2u, col0, acc2 + b);
        store4(row0 + 3u, col0, acc3 + b);
    }
}
