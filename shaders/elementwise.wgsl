// Elementwise ReLU and addition, for the operations fusion could not fold into a GEMM epilogue
// (a ReLU or an add that follows no linear layer):
//   output[i] = act(f32(left[i]) [+ f32(right[i])])   for i < len.
//
// The flat index is spread over a 2-D grid of workgroups, so that tensors of more than
// 65535 * 256 elements stay within the per-dimension workgroup limit.

// `Scalar`, the storage type of activations and weights (f32, or f16 for f16 models), is declared
// by the host's source generator (src/kernels/source.rs), which also adds `enable f16;` for f16.
// Arithmetic is always f32.

struct ElementwiseParams {
    len: u32,
    groups_x: u32,
    unused0: u32,
    unused1: u32,
}

@group(0) @binding(0) var<uniform> params: ElementwiseParams;
@group(0) @binding(1) var<storage, read> left: array<Scalar>;
@group(0) @binding(2) var<storage, read> right: array<Scalar>;
@group(0) @binding(3) var<storage, read_write> output: array<Scalar>;

override ADD_RIGHT: bool = false;
override APPLY_RELU: bool = false;

const WORKGROUP_SIZE: u32 = 256u;

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn elementwise(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = (workgroup.y * params.groups_x + workgroup.x) * WORKGROUP_SIZE + local;
    if (index >= params.len) {
        return;
    }
    var value = f32(left[index]);
    if (ADD_RIGHT) {
        value = value + f32(right[index]);
    }
    if (APPLY_RELU) {
        value = relu_keep_nan(value);
    }
    output[index] = Scalar(value);
}
