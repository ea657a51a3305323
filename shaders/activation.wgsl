// The ReLU every kernel applies, as PyTorch and onnxruntime define it: negative values become
// zero, and NaN stays NaN; and the NaN test it uses, which the pooling kernels use too. It is not a shader on its own: the host's source generator
// (src/kernels/source.rs) appends it to every kernel that lists it among its pieces.
//
// WGSL's `max(x, 0.0)` may return either operand when x is NaN (and the drivers we run on return
// 0), so the NaN test is made on the bits, which no floating-point optimisation may fold away.

fn is_nan_bits(value: f32) -> bool {
    return (bitcast<u32>(value) & 0x7fffffffu) > 0x7f800000u;
}

fn relu_keep_nan(value: f32) -> f32 {
    return select(max(value, 0.0), value, is_nan_bits(value));
}

// Whether each lane is a NaN, from its bits: exponent all ones and a non-zero mantissa.
fn is_nan4(value: vec4<f32>) -> vec4<bool> {
    return (bitcast<vec4<u32>>(value) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
}

fn relu_keep_nan4(value: vec4<f32>) -> vec4<f32> {
    return select(max(value, vec4<f32>(0.0)), value, is_nan4(value));
}
