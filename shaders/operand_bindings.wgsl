// Bindings 1–6 of the kernels that multiply activations by the blocked weight layout read as
// vec4: the GEMM kernels above and the implicit-GEMM convolutions (conv2d, conv2d_subgroup), each of
// which declares its own parameter block at binding 0. It is not a shader on its own: the host's
// source generator (src/kernels/source.rs) appends it to each of those kernels.
//
// Layouts (rows = M, cols = N, inner = K; for a convolution, rows are output pixels, cols output
// channels and inner the taps × channels of one pixel's window):
//   activations  [rows, inner] Scalar, row-major (for a convolution: NHWC images). Binding 6 is
//                the same buffer read as vec4, where the kernel reads four at a time, or a
//                placeholder.
//   weights      [ceil(cols/16)][inner_padded][16] Scalar, read as 4 vec4 per (column block, k):
//                PyTorch's [cols, inner] weight, transposed once at upload into 16-column
//                blocks, with inner zero-padded to a multiple of 8 and cols to a multiple of 16.
//   bias         [ceil(cols/16) * 16] f32 as vec4, zero-padded.
//   residual     [rows, cols] Scalar, read only when ADD_RESIDUAL.
//   output       [rows, cols] Scalar.

@group(0) @binding(1) var<storage, read> activations: array<Scalar>;
@group(0) @binding(2) var<storage, read> weights: array<vec4<Scalar>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> residual: array<Scalar>;
@group(0) @binding(5) var<storage, read_write> output: array<Scalar>;
@group(0) @binding(6) var<storage, read> activations4: array<vec4<Scalar>>;
