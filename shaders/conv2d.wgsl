// Fused 2-D convolution as an implicit GEMM:
// output = act(conv(input, weights) + bias [+ residual]), one dispatch, no im2col buffer.
//
// The convolution is the GEMM output[pixel, oc] = sum_k patch[pixel, k] * weight[oc, k] where a
// pixel is one output position (n, oh, ow) and k runs over the (kh, kw, c) of its receptive
// field. The patch matrix is never materialised: each invocation computes the input address of
// the activations it needs from (n, oh, ow) and (kh, kw, c), and reads zero in the padding.
//
// Layouts:
//   input      NHWC [batch, in_h, in_w, in_channels], Scalar.
//   weights    the GEMM's blocked layout [ceil(cols/16)][inner_padded][16] over k = (kh, kw, c)
//              with c padded to channels4 (a multiple of 4, zero weights past in_channels):
//              PyTorch's [out, in, kh, kw] weight reordered to [out, kh, kw, channels4] at upload.
//   bias       [ceil(cols/16) * 16] f32 as vec4, zero-padded.
//   residual   NHWC [batch, out_h, out_w, cols] (rows = batch * out_h * out_w), read only when
//              ADD_RESIDUAL.
//   output     NHWC [batch, out_h, out_w, cols].
//
// Work split, as gemm.wgsl: a workgroup covers 4 * WORKGROUP_SIZE output pixels and one
// 16-channel block; each invocation keeps 4 pixels x 16 channels in registers. The k loop is
// (kh, kw) outside and channels inside, 4 at a time, so that a pixel's padding test and input
// address are computed once per (kh, kw), and 4 consecutive channels are one vec4 load when
// in_channels is a multiple of 4 (every layer of a ResNet but the first).

// `Scalar`, the storage type of activations and weights (f32, or f16 for f16 models), is declared
// by the host's source generator (src/kernels/source.rs), which also adds `enable f16;` for f16.
// Arithmetic is always f32.

struct ConvParams {
    // The GEMM view: rows = batch * out_h * out_w output pixels, cols = out channels.
    rows: u32,
    cols: u32,
    // kernel_h * kernel_w * channels4, and that rounded up to 8 (the weight layout's padding).
    inner: u32,
    inner_padded: u32,
    in_h: u32,
    in_w: u32,
    in_channels: u32,
    channels4: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
}

@group(0) @binding(0) var<uniform> params: ConvParams;
// Bindings 1–6 are in operand_bindings.wgsl, which the host appends.

// The epilogue, fixed per pipeline so that the driver removes the branches it does not take.
override APPLY_RELU: bool = false;
override ADD_RESIDUAL: bool = false;
// Invocations per workgroup; a multiple of 8.
override WORKGROUP_SIZE: u32 = 64u;
// Whether in_channels is a multiple of 4, so that 4 channels of a pixel are one vec4 load.
override VEC4_ACTIVATIONS: bool = false;

// Where one output pixel's receptive field starts in the input: its image's first value and the
// input row and column of its top-left tap (which may lie in the padding, hence i32).
struct PixelOrigin {
    image_base: u32,
    top: i32,
    left: i32,
}

fn pixel_origin(pixel: u32) -> PixelOrigin {
    let per_image = params.out_h * params.out_w;
    let image = pixel / per_image;
    let within = pixel % per_image;
    let oh = within / params.out_w;
    let ow = within % params.out_w;
    return PixelOrigin(
        image * params.in_h * params.in_w * params.in_channels,
        i32(oh * params.stride_h) - i32(params.pad_top),
        i32(ow * params.stride_w) - i32(params.pad_left),
    );
}

// The input offset of tap (kh, kw) of a pixel, and whether the tap lies inside the image (taps in
// the padding read zero; their offset is clamped to 0 so that no load leaves the buffer).
fn tap_offset(origin: PixelOrigin, kh: u32, kw: u32) -> vec2<u32> {
    let ih = origin.top + i32(kh);
    let iw = origin.left + i32(kw);
    let inside = ih >= 0 && iw >= 0 && u32(ih) < params.in_h && u32(iw) < params.in_w;
    let pixel = u32(max(ih, 0)) * params.in_w + u32(max(iw, 0));
    let offset = origin.image_base + pixel * params.in_channels;
    return vec2<u32>(select(0u, offset, inside), u32(inside));
}

// Four channels c0..c0+3 of one tap: zero in the padding and past in_channels.
fn load4(tap: vec2<u32>, c0: u32) -> vec4<f32> {
    if (tap.y == 0u) {
        return vec4<f32>(0.0);
    }
    if (VEC4_ACTIVATIONS) {
        return vec4<f32>(activations4[(tap.x + c0) / 4u]);
    }
    var chunk = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j = j + 1u) {
        let c = c0 + j;
        if (c < params.in_channels) {
            chunk[j] = f32(activations[tap.x + c]);
        }
    }
    return chunk;
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn conv2d(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let lane = local.x % 8u;
    let group_base = (workgroup.x * WORKGROUP_SIZE + (local.x - lane)) * 4u;
    if (group_base >= params.rows) {
        // The whole group of 8 is past the last pixel (small batches): nothing to compute.
        return;
    }
    let block = workgroup.y;
    // Pixels past the end compute the last pixel again so that every load stays in bounds; their
    // results are never stored.
    let last_row = params.rows - 1u;
    let row0 = group_base + 0u + lane;
    let row1 = group_base + 8u + lane;
    let row2 = group_base + 16u + lane;
    let row3 = group_base + 24u + lane;
    let origin0 = pixel_origin(min(row0, last_row));
    let origin1 = pixel_origin(min(row1, last_row));
    let origin2 = pixel_origin(min(row2, last_row));
    let origin3 = pixel_origin(min(row3, last_row));
    var acc0_0 = vec4<f32>(0.0);
    var acc0_1 = vec4<f32>(0.0);
    var acc0_2 = vec4<f32>(0.0);
    var acc0_3 = vec4<f32>(0.0);
    var acc1_0 = vec4<f32>(0.0);
    var acc1_1 = vec4<f32>(0.0);
    var acc1_2 = vec4<f32>(0.0);
    var acc1_3 = vec4<f32>(0.0);
    var acc2_0 = vec4<f32>(0.0);
    var acc2_1 = vec4<f32>(0.0);
    var acc2_2 = vec4<f32>(0.0);
    var acc2_3 = vec4<f32>(0.0);
    var acc3_0 = vec4<f32>(0.0);
    var acc3_1 = vec4<f32>(0.0);
    var acc3_2 = vec4<f32>(0.0);
    var acc3_3 = vec4<f32>(0.0);
    // The weights advance by one (k, 16 channels) row per k, in the order (kh, kw, c).
    var w_index = block * params.inner_padded * 4u;
    for (var kh = 0u; kh < params.kernel_h; kh = kh + 1u) {
        for (var kw = 0u; kw < params.kernel_w; kw = kw + 1u) {
            let tap0 = tap_offset(origin0, kh, kw);
            let tap1 = tap_offset(origin1, kh, kw);
            let tap2 = tap_offset(origin2, kh, kw);
            let tap3 = tap_offset(origin3, kh, kw);
            for (var c0 = 0u; c0 < params.channels4; c0 = c0 + 4u) {
                let x0_chunk = load4(tap0, c0);
                let x1_chunk = load4(tap1, c0);
                let x2_chunk = load4(tap2, c0);
                let x3_chunk = load4(tap3, c0);
                {
                    let w0 = vec4<f32>(weights[w_index + 0u]);
                    let w1 = vec4<f32>(weights[w_index + 1u]);
                    let w2 = vec4<f32>(weights[w_index + 2u]);
                    let w3 = vec4<f32>(weights[w_index + 3u]);
                    let x0 = vec4<f32>(x0_chunk[0]);
                    let x1 = vec4<f32>(x1_chunk[0]);
                    let x2 = vec4<f32>(x2_chunk[0]);
                    let x3 = vec4<f32>(x3_chunk[0]);
                    acc0_0 = fma(x0, w0, acc0_0);
                    acc0_1 = fma(x0, w1, acc0_1);
                    acc0_2 = fma(x0, w2, acc0_2);
                    acc0_3 = fma(x0, w3, acc0_3);
                    acc1_0 = fma(x1, w0, acc1_0);
                    acc1_1 = fma(x1, w1, acc1_1);
                    acc1_2 = fma(x1, w2, acc1_2);
                    acc1_3 = fma(x1, w3, acc1_3);
                    acc2_0 = fma(x2, w0, acc2_0);
                    acc2_1 = fma(x2, w1, acc2_1);
                    acc2_2 = fma(x2, w2, acc2_2);
                    acc2_3 = fma(x2, w3, acc2_3);
                    acc3_0 = fma(x3, w0, acc3_0);
                    acc3_1 = fma(x3, w1, acc3_1);
                    acc3_2 = fma(x3, w2, acc3_2);
                    acc3_3 = fma(x3, w3, acc3_3);
                }
                {
                    let w0 = vec4<f32>(weights[w_index + 4u]);
                    let w1 = vec4<f32>(weights[w_index + 5u]);
                    let w2 = vec4<f32>(weights[w_index + 6u]);
                    let w3 = vec4<f32>(weights[w_index + 7u]);
                    let x0 = vec4<f32>(x0_chunk[1]);
                    let x1 = vec4<f32>(x1_chunk[1]);
                    let x2 = vec4<f32>(x2_chunk[1]);
                    let x3 = vec4<f32>(x3_chunk[1]);
                    acc0_0 = fma(x0, w0, acc0_0);
                    acc0_1 = fma(x0, w1, acc0_1);
                    acc0_2 = fma(x0, w2, acc0_2);
                    acc0_3 = fma(x0, w3, acc0_3);
                    acc1_0 = fma(x1, w0, acc1_0);
                    acc1_1 = fma(x1, w1, acc1_1);
                    acc1_2 = fma(x1, w2, acc1_2);
                    acc1_3 = fma(x1, w3, acc1_3);
                    acc2_0 = fma(x2, w0, acc2_0);
                    acc2_1 = fma(x2, w1, acc2_1);
                    acc2_2 = fma(x2, w2, acc2_2);
                    acc2_3 = fma(x2, w3, acc2_3);
                    acc3_0 = fma(x3, w0, acc3_0);
                    acc3_1 = fma(x3, w1, acc3_1);
                    acc3_2 = fma(x3, w2, acc3_2);
                    acc3_3 = fma(x3, w3, acc3_3);
                }
                {
                    let w0 = vec4<f32>(weights[w_index + 8u]);
                    let w1 = vec4<f32>(weights[w_index + 9u]);
                    let w2 = vec4<f32>(weights[w_index + 10u]);
                    let w3 = vec4<f32>(weights[w_index + 11u]);
                    let x0 = vec4<f32>(x0_chunk[2]);
                    let x1 = vec4<f32>(x1_chunk[2]);
                    let x2 = vec4<f32>(x2_chunk[2]);
                    let x3 = vec4<f32>(x3_chunk[2]);
                    acc0_0 = fma(x0, w0, acc0_0);
                    acc0_1 = fma(x0, w1, acc0_1);
                    acc0_2 = fma(x0, w2, acc0_2);
                    acc0_3 = fma(x0, w3, acc0_3);
                    acc1_0 = fma(x1, w0, acc1_0);
                    acc1_1 = fma(x1, w1, acc1_1);
                    acc1_2 = fma(x1, w2, acc1_2);
                    acc1_3 = fma(x1, w3, acc1_3);
                    acc2_0 = fma(x2, w0, acc2_0);
                    acc2_1 = fma(x2, w1, acc2_1);
                    acc2_2 = fma(x2, w2, acc2_2);
                    acc2_3 = fma(x2, w3, acc2_3);
                    acc3_0 = fma(x3, w0, acc3_0);
                    acc3_1 = fma(x3, w1, acc3_1);
                    acc3_2 = fma(x3, w2, acc3_2);
                    acc3_3 = fma(x3, w3, acc3_3);
                }
                {
                    let w0 = vec4<f32>(weights[w_index + 12u]);
                    let w1 = vec4<f32>(weights[w_index + 13u]);
                    let w2 = vec4<f32>(weights[w_index + 14u]);
                    let w3 = vec4<f32>(weights[w_index + 15u]);
                    let x0 = vec4<f32>(x0_chunk[3]);
                    let x1 = vec4<f32>(x1_chunk[3]);
                    let x2 = vec4<f32>(x2_chunk[3]);
                    let x3 = vec4<f32>(x3_chunk[3]);
                    acc0_0 = fma(x0, w0, acc0_0);
                    acc0_1 = fma(x0, w1, acc0_1);
                    acc0_2 = fma(x0, w2, acc0_2);
                    acc0_3 = fma(x0, w3, acc0_3);
                    acc1_0 = fma(x1, w0, acc1_0);
                    acc1_1 = fma(x1, w1, acc1_1);
                    acc1_2 = fma(x1, w2, acc1_2);
                    acc1_3 = fma(x1, w3, acc1_3);
                    acc2_0 = fma(x2, w0, acc2_0);
                    acc2_1 = fma(x2, w1, acc2_1);
                    acc2_2 = fma(x2, w2, acc2_2);
                    acc2_3 = fma(x2, w3, acc2_3);
                    acc3_0 = fma(x3, w0, acc3_0);
                    acc3_1 = fma(x3, w1, acc3_1);
                    acc3_2 = fma(x3, w2, acc3_2);
                    acc3_3 = fma(x3, w3, acc3_3);
                }
                w_index = w_index + 16u;
            }
        }
    }

    let col0 = block * 16u;
    let b0 = bias[block * 4u];
    let b1 = bias[block * 4u + 1u];
    let b2 = bias[block * 4u + 2u];
    let b3 = bias[block * 4u + 3u];
    store4(row0, col0 + 0u, acc0_0 + b0);
    store4(row0, col0 + 4u, acc0_1 + b1);
    store4(row0, col0 + 8u, acc0_2 + b2);
    store4(row0, col0 + 12u, acc0_3 + b3);
    store4(row1, col0 + 0u, acc1_0 + b0);
    store4(row1, col0 + 4u, acc1_1 + b1);
    store4(row1, col0 + 8u, acc1_2 + b2);
    store4(row1, col0 + 12u, acc1_3 + b3);
    store4(row2, col0 + 0u, acc2_0 + b0);
    store4(row2, col0 + 4u, acc2_1 + b1);
    store4(row2, col0 + 8u, acc2_2 + b2);
    store4(row2, col0 + 12u, acc2_3 + b3);
    store4(row3, col0 + 0u, acc3_0 + b0);
    store4(row3, col0 + 4u, acc3_1 + b1);
    store4(row3, col0 + 8u, acc3_2 + b2);
    store4(row3, col0 + 12u, acc3_3 + b3);
}

// store4 (the residual, activation and bounds-checked store) is in fused_epilogue.wgsl, which
// the host appends to this file.
