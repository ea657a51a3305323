// Fused 2-D convolution as an implicit GEMM, subgroup variant:
// output = act(conv(input, weights) + bias [+ residual]), one dispatch, no im2col buffer.
//
// Needs the SUBGROUP feature and subgroups of at least 8 invocations (the host checks both).
// It reads the same layouts as conv2d.wgsl (see there): NHWC activations, and weights in the
// GEMM's blocked layout [ceil(cols/16)][inner_padded][16] over k = (kh, kw, c), with c padded to
// channels4 (a multiple of 4) and inner = kernel_h * kernel_w * channels4 padded to a multiple
// of 8.
//
// Work split, as gemm_subgroup.wgsl: a workgroup covers 4 * WORKGROUP_SIZE output pixels and one
// 16-channel block; each group of 8 consecutive invocations owns 32 pixels (invocation i of the
// group: pixels base + i, base + 8 + i, base + 16 + i, base + 24 + i) and keeps 4 pixels x 16
// channels in registers.
//
// Why subgroups: on CPU adapters (lavapipe) every storage load whose address differs between
// invocations runs lane by lane, so loads, not FMAs, bound the kernel. The 16 weights of one k
// are the same for every pixel, so for each chunk of 8 k's invocation i loads only the weights
// of k0 + i and subgroupBroadcast hands them to the others: 8x fewer weight loads than
// conv2d.wgsl. The activations differ per pixel and are loaded directly, as two halves of 4 k's.
//
// A chunk of 8 k's is two halves of 4 consecutive channels of one tap each, because channels4 is
// a multiple of 4. When channels4 is a multiple of 8 both halves lie in the same tap; otherwise
// (3 or 12 input channels, say) a chunk straddles two taps, and the high half belongs to the
// next tap, or lies past the last one in the padding of inner. So each half keeps a cursor of its
// own, (kh, kw, c), and its own input offsets for the 4 pixels, recomputed only when its tap
// changes. Where the host knows that no chunk straddles (CHUNKS_WITHIN_TAPS, every ResNet layer
// but the stem), one cursor serves both halves and the straddling code is compiled out.

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
// Whether in_channels is a multiple of 4, so that each half of a chunk is one vec4 load per
// pixel. On CPU adapters every storage load instruction runs a lane-by-lane loop whatever its
// width, so one vec4 load costs about what one scalar load does.
override VEC4_ACTIVATIONS: bool = false;
// Whether channels4 is a multiple of 8, so that every chunk of 8 k's lies in one tap (every
// ResNet layer but the stem): then one cursor serves both halves.
override CHUNKS_WITHIN_TAPS: bool = false;

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

// A position in the weights' k order: tap (kh, kw) and channel c, which is a multiple of 4. A
// cursor whose kh has reached kernel_h lies in the zero padding at the end of inner.
struct TapCursor {
    kh: u32,
    kw: u32,
    c: u32,
}

// The cursor `by` k's further on (by <= 8, so at most two taps further: channels4 >= 4). The
// cursor is the same in every invocation, so the loop costs a few uniform steps.
fn advance_cursor(cursor: TapCursor, by: u32) -> TapCursor {
    var next = cursor;
    next.c = next.c + by;
    while (next.c >= params.channels4) {
        next.c = next.c - params.channels4;
        next.kw = next.kw + 1u;
        if (next.kw == params.kernel_w) {
            next.kw = 0u;
            next.kh = next.kh + 1u;
        }
    }
    return next;
}

// The input offset of the cursor's tap for one pixel, and whether that tap reads the input: 0 in
// the image's padding and past the last tap (both read zero). Offsets that are not read are
// clamped to 0 so that every load stays in bounds.
fn tap_offset(origin: PixelOrigin, cursor: TapCursor) -> vec2<u32> {
    let ih = origin.top + i32(cursor.kh);
    let iw = origin.left + i32(cursor.kw);
    let inside = cursor.kh < params.kernel_h && ih >= 0 && iw >= 0 && u32(ih) < params.in_h
        && u32(iw) < params.in_w;
    let pixel = u32(max(ih, 0)) * params.in_w + u32(max(iw, 0));
    let offset = origin.image_base + pixel * params.in_channels;
    return vec2<u32>(select(0u, offset, inside), u32(inside));
}

// Four channels c0..c0+3 of one tap of one pixel: zero where the tap reads nothing and past
// in_channels. The load happens either way (at offset 0 when the tap reads nothing) and the
// result is selected, so that no invocation branches.
fn load_half(tap: vec2<u32>, c0: u32) -> vec4<f32> {
    let zero = vec4<f32>(0.0);
    if (VEC4_ACTIVATIONS) {
        return select(zero, vec4<f32>(activations4[(tap.x + c0) / 4u]), tap.y != 0u);
    }
    var chunk = zero;
    let last_channel = params.in_channels - 1u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let c = c0 + j;
        let value = f32(activations[tap.x + min(c, last_channel)]);
        chunk[j] = select(0.0, value, tap.y != 0u && c < params.in_channels);
    }
    return chunk;
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn conv2d(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
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
    // The low half of each chunk starts at k0, the high half at k0 + 4; each has its tap's input
    // offsets for the 4 pixels.
    var low = TapCursor(0u, 0u, 0u);
    var high = advance_cursor(low, 4u);
    var low_tap0 = tap_offset(origin0, low);
    var low_tap1 = tap_offset(origin1, low);
    var low_tap2 = tap_offset(origin2, low);
    var low_tap3 = tap_offset(origin3, low);
    var high_tap0 = tap_offset(origin0, high);
    var high_tap1 = tap_offset(origin1, high);
    var high_tap2 = tap_offset(origin2, high);
    var high_tap3 = tap_offset(origin3, high);
    // This invocation loads the weights of k0 + (subgroup_lane % 8) for each chunk of 8 k's.
    var w_index = (block * params.inner_padded + subgroup_lane % 8u) * 4u;
    for (var k0 = 0u; k0 < params.inner; k0 = k0 + 8u) {
        let w0 = vec4<f32>(weights[w_index]);
        let w1 = vec4<f32>(weights[w_index + 1u]);
        let w2 = vec4<f32>(weights[w_index + 2u]);
        let w3 = vec4<f32>(weights[w_index + 3u]);
        w_index = w_index + 32u;
        // The chunk's 8 activations of each pixel, as two vec4 (k0..k0+3 and k0+4..k0+7).
        let x0_low = load_half(low_tap0, low.c);
        let x1_low = load_half(low_tap1, low.c);
        let x2_low = load_half(low_tap2, low.c);
        let x3_low = load_half(low_tap3, low.c);
        var x0_high: vec4<f32>;
        var x1_high: vec4<f32>;
        var x2_high: vec4<f32>;
        var x3_high: vec4<f32>;
        if (CHUNKS_WITHIN_TAPS) {
            x0_high = load_half(low_tap0, low.c + 4u);
            x1_high = load_half(low_tap1, low.c + 4u);
            x2_high = load_half(low_tap2, low.c + 4u);
            x3_high = load_half(low_tap3, low.c + 4u);
        } else {
            x0_high = load_half(high_tap0, high.c);
            x1_high = load_half(high_tap1, high.c);
            x2_high = load_half(high_tap2, high.c);
            x3_high = load_half(high_tap3, high.c);
        }
        {
            let w0_k = subgroupBroadcast(w0, 0u);
            let w1_k = subgroupBroadcast(w1, 0u);
            let w2_k = subgroupBroadcast(w2, 0u);
            let w3_k = subgroupBroadcast(w3, 0u);
            let x0_k = vec4<f32>(x0_low[0]);
            let x1_k = vec4<f32>(x1_low[0]);
            let x2_k = vec4<f32>(x2_low[0]);
            let x3_k = vec4<f32>(x3_low[0]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 1u);
            let w1_k = subgroupBroadcast(w1, 1u);
            let w2_k = subgroupBroadcast(w2, 1u);
            let w3_k = subgroupBroadcast(w3, 1u);
            let x0_k = vec4<f32>(x0_low[1]);
            let x1_k = vec4<f32>(x1_low[1]);
            let x2_k = vec4<f32>(x2_low[1]);
            let x3_k = vec4<f32>(x3_low[1]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 2u);
            let w1_k = subgroupBroadcast(w1, 2u);
            let w2_k = subgroupBroadcast(w2, 2u);
            let w3_k = subgroupBroadcast(w3, 2u);
            let x0_k = vec4<f32>(x0_low[2]);
            let x1_k = vec4<f32>(x1_low[2]);
            let x2_k = vec4<f32>(x2_low[2]);
            let x3_k = vec4<f32>(x3_low[2]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 3u);
            let w1_k = subgroupBroadcast(w1, 3u);
            let w2_k = subgroupBroadcast(w2, 3u);
            let w3_k = subgroupBroadcast(w3, 3u);
            let x0_k = vec4<f32>(x0_low[3]);
            let x1_k = vec4<f32>(x1_low[3]);
            let x2_k = vec4<f32>(x2_low[3]);
            let x3_k = vec4<f32>(x3_low[3]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 4u);
            let w1_k = subgroupBroadcast(w1, 4u);
            let w2_k = subgroupBroadcast(w2, 4u);
            let w3_k = subgroupBroadcast(w3, 4u);
            let x0_k = vec4<f32>(x0_high[0]);
            let x1_k = vec4<f32>(x1_high[0]);
            let x2_k = vec4<f32>(x2_high[0]);
            let x3_k = vec4<f32>(x3_high[0]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 5u);
            let w1_k = subgroupBroadcast(w1, 5u);
            let w2_k = subgroupBroadcast(w2, 5u);
            let w3_k = subgroupBroadcast(w3, 5u);
            let x0_k = vec4<f32>(x0_high[1]);
            let x1_k = vec4<f32>(x1_high[1]);
            let x2_k = vec4<f32>(x2_high[1]);
            let x3_k = vec4<f32>(x3_high[1]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 6u);
            let w1_k = subgroupBroadcast(w1, 6u);
            let w2_k = subgroupBroadcast(w2, 6u);
            let w3_k = subgroupBroadcast(w3, 6u);
            let x0_k = vec4<f32>(x0_high[2]);
            let x1_k = vec4<f32>(x1_high[2]);
            let x2_k = vec4<f32>(x2_high[2]);
            let x3_k = vec4<f32>(x3_high[2]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        {
            let w0_k = subgroupBroadcast(w0, 7u);
            let w1_k = subgroupBroadcast(w1, 7u);
            let w2_k = subgroupBroadcast(w2, 7u);
            let w3_k = subgroupBroadcast(w3, 7u);
            let x0_k = vec4<f32>(x0_high[3]);
            let x1_k = vec4<f32>(x1_high[3]);
            let x2_k = vec4<f32>(x2_high[3]);
            let x3_k = vec4<f32>(x3_high[3]);
            acc0_0 = fma(x0_k, w0_k, acc0_0);
            acc0_1 = fma(x0_k, w1_k, acc0_1);
            acc0_2 = fma(x0_k, w2_k, acc0_2);
            acc0_3 = fma(x0_k, w3_k, acc0_3);
            acc1_0 = fma(x1_k, w0_k, acc1_0);
            acc1_1 = fma(x1_k, w1_k, acc1_1);
            acc1_2 = fma(x1_k, w2_k, acc1_2);
            acc1_3 = fma(x1_k, w3_k, acc1_3);
            acc2_0 = fma(x2_k, w0_k, acc2_0);
            acc2_1 = fma(x2_k, w1_k, acc2_1);
            acc2_2 = fma(x2_k, w2_k, acc2_2);
            acc2_3 = fma(x2_k, w3_k, acc2_3);
            acc3_0 = fma(x3_k, w0_k, acc3_0);
            acc3_1 = fma(x3_k, w1_k, acc3_1);
            acc3_2 = fma(x3_k, w2_k, acc3_2);
            acc3_3 = fma(x3_k, w3_k, acc3_3);
        }
        if (CHUNKS_WITHIN_TAPS) {
            // Both halves lie in the low cursor's tap; move it on by one chunk, and to the next
            // tap once its channels are done.
            low.c = low.c + 8u;
            if (low.c == params.channels4) {
                low.c = 0u;
                low.kw = low.kw + 1u;
                if (low.kw == params.kernel_w) {
                    low.kw = 0u;
                    low.kh = low.kh + 1u;
                }
                low_tap0 = tap_offset(origin0, low);
                low_tap1 = tap_offset(origin1, low);
                low_tap2 = tap_offset(origin2, low);
                low_tap3 = tap_offset(origin3, low);
            }
        } else {
            // Move both halves on by one chunk; a half's offsets change only with its tap.
            let next_low = advance_cursor(low, 8u);
            if (next_low.kw != low.kw || next_low.kh != low.kh) {
                low_tap0 = tap_offset(origin0, next_low);
                low_tap1 = tap_offset(origin1, next_low);
                low_tap2 = tap_offset(origin2, next_low);
                low_tap3 = tap_offset(origin3, next_low);
            }
            low = next_low;
            let next_high = advance_cursor(high, 8u);
            if (next_high.kw != high.kw || next_high.kh != high.kh) {
                high_tap0 = tap_offset(origin0, next_high);
                high_tap1 = tap_offset(origin1, next_high);
                high_tap2 = tap_offset(origin2, next_high);
                high_tap3 = tap_offset(origin3, next_high);
            }
            high = next_high;
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
