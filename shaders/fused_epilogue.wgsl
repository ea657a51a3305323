// The fused epilogue shared by the GEMM and GEMV kernels. It is not a shader on its own: the host's
// source generator (src/kernels/source.rs) appends it to every kernel that lists it among its
// pieces, and it uses that kernel's `params` (rows, cols), `residual`, `output`, `Scalar`,
// `ADD_RESIDUAL` and `APPLY_RELU`, and activation.wgsl's `relu_keep_nan`.

// Adds the residual, applies the activation and stores those of 4 outputs that lie inside the
// matrix.
fn store4(row: u32, col0: u32, value: vec4<f32>) {
    if (row >= params.rows) {
        return;
    }
    let base = row * params.cols + col0;
    for (var c = 0u; c < 4u; c = c + 1u) {
        if (col0 + c < params.cols) {
            var v = value[c];
            if (ADD_RESIDUAL) {
                v = v + f32(residual[base + c]);
            }
            if (APPLY_RELU) {
                v = relu_keep_nan(v);
            }
            output[base + c] = Scalar(v);
        }
    }
}
