// The parameter block, bindings and overrides of both texture GEMV kernels (gemv_texture.wgsl and
// gemv_texture_staged.wgsl), appended to each by the host (src/kernels/gemv.rs): one binding
// table, two ways of sharing the activations.

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
