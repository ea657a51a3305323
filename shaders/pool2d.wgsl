// 2-D max and average pooling over NHWC activations, one dispatch:
//   output[n, oy, ox, c] = reduce over the window's taps inside the image of input[n, y, x, c].
//
// Layouts:
//   input    NHWC [batch, in_h, in_w, channels], Scalar.
//   output   NHWC [batch, out_h, out_w, channels], Scalar.
//
// Each invocation computes 4 consecutive channels of one output pixel, so that a pixel's window
// bounds are computed once for 4 values and, when channels is a multiple of 4, each tap is one
// vec4 load (lavapipe and llvmpipe pay about the same for a vec4 load as for a scalar one). The
// flat invocation index is spread over a 2-D grid of workgroups, so that large outputs stay within
// the per-dimension workgroup limit.
//
// The window is clipped to the image before the loop, so only taps inside the image are read:
// max pooling's padding is -infinity and never wins, and average pooling's padding is zero, which
// only changes the divisor. The host refuses windows that lie wholly in the padding (as PyTorch
// does), so every window has at least one tap and no result is -infinity or 0 / 0.
//
// NaN propagates as in PyTorch: a window holding a NaN gives NaN. WGSL lets an implementation
// assume that no NaN occurs (and `max` drops a NaN on some drivers), so NaNs are detected from
// their bits, which no floating-point assumption can remove, and the NaN is stored explicitly.

// `Scalar`, the storage type of activations (f32, or f16 for f16 models), is declared by the
// host's source generator (src/kernels/source.rs), which also adds `enable f16;` for f16.
// Arithmetic is always f32.

struct PoolParams {
    // Invocations the dispatch covers: images * out_h * out_w * channel_groups.
    invocations: u32,
    // Workgroups along x of the 2-D grid.
    groups_x: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    // ceil(channels / 4): the invocations per output pixel.
    channel_groups: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
    unused0: u32,
    unused1: u32,
}

@group(0) @binding(0) var<uniform> params: PoolParams;
@group(0) @binding(1) var<storage, read> input: array<Scalar>;
@group(0) @binding(2) var<storage, read_write> output: array<Scalar>;
// The input again (the same buffer), read as vec4 when VEC4_CHANNELS.
@group(0) @binding(3) var<storage, read> input4: array<vec4<Scalar>>;

// Average pooling when true, max pooling when false.
override AVERAGE: bool = false;
// For average pooling: divide by the whole kernel area (PyTorch's default) when true, by the taps
// inside the image when false.
override COUNT_INCLUDE_PAD: bool = true;
// Whether channels is a multiple of 4, so that 4 channels of a pixel are one vec4 load.
override VEC4_CHANNELS: bool = false;

const WORKGROUP_SIZE: u32 = 64u;

// The input rows (or columns) [begin, end) a window starting at `start` in padded coordinates
// covers inside an image of `size` with `pad_before` rows of padding before it.
fn clip_window(start: u32, kernel: u32, pad_before: u32, size: u32) -> vec2<u32> {
    let begin = max(start, pad_before) - pad_before;
    let end = min(start + kernel, pad_before + size) - pad_before;
    return vec2<u32>(begin, end);
}

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn pool2d(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = (workgroup.y * params.groups_x + workgroup.x) * WORKGROUP_SIZE + local;
    if (index >= params.invocations) {
        return;
    }
    let channel0 = (index % params.channel_groups) * 4u;
    let pixel = index / params.channel_groups;
    let out_x = pixel % params.out_w;
    let out_y = (pixel / params.out_w) % params.out_h;
    let image = pixel / (params.out_w * params.out_h);
    let rows = clip_window(out_y * params.stride_h, params.kernel_h, params.pad_top, params.in_h);
    let cols = clip_window(out_x * params.stride_w, params.kernel_w, params.pad_left, params.in_w);
    let image_base = image * params.in_h;

    // A sum starts at zero; a maximum starts at the window's first tap inside the image, so that
    // the padding (-infinity) needs no value of its own.
    var result = vec4<f32>(0.0);
    if (!AVERAGE) {
        result = load4(((image_base + rows.x) * params.in_w + cols.x) * params.channels, channel0);
    }
    var nan_lanes = vec4<bool>(false);
    var nan_values = vec4<f32>(0.0);
    for (var y = rows.x; y < rows.y; y = y + 1u) {
        for (var x = cols.x; x < cols.y; x = x + 1u) {
            let value = load4(((image_base + y) * params.in_w + x) * params.channels, channel0);
            let nan = is_nan4(value);
            nan_lanes = nan_lanes | nan;
            nan_values = select(nan_values, value, nan);
            if (AVERAGE) {
                result = result + value;
            } else {
                result = max(result, value);
            }
        }
    }
    if (AVERAGE) {
        var divisor = (rows.y - rows.x) * (cols.y - cols.x);
        if (COUNT_INCLUDE_PAD) {
            divisor = params.kernel_h * params.kernel_w;
        }
        result = result / f32(divisor);
    }
    result = select(result, nan_values, nan_lanes);

    let output_base = pixel * params.channels + channel0;
    for (var lane = 0u; lane < 4u; lane = lane + 1u) {
        if (channel0 + lane < params.channels) {
            output[output_base + lane] = Scalar(result[lane]);
        }
    }
}

// is_nan4 is in activation.wgsl and load4 in pool_load.wgsl, which the host appends to this file.
