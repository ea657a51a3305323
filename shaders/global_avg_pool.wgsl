// Global average pooling over NHWC activations, one dispatch:
//   output[n, c] = sum over the pixels p of image n of input[n, p, c], divided by the pixels.
//
// Layouts:
//   input    NHWC [batch, height, width, channels], Scalar: batch * height * width rows.
//   output   [batch, channels], Scalar: one row per image, as ONNX's GlobalAveragePool followed by
//            a flatten (the input of a ResNet's final linear layer).
//
// Each invocation sums 4 consecutive channels of one image in f32, reading one vec4 per pixel
// when channels is a multiple of 4. The flat invocation index is spread over a 2-D grid of
// workgroups, so that large batches stay within the per-dimension workgroup limit.
//
// A NaN anywhere in a channel gives NaN, as in PyTorch. WGSL lets an implementation assume that no
// NaN occurs, so NaNs are detected from their bits and the NaN is stored explicitly.

// `Scalar`, the storage type of activations (f32, or f16 for f16 models), is declared by the
// host's source generator (src/kernels/source.rs), which also adds `enable f16;` for f16.
// Arithmetic is always f32.

struct GlobalPoolParams {
    // Invocations the dispatch covers: images * channel_groups.
    invocations: u32,
    // Workgroups along x of the 2-D grid.
    groups_x: u32,
    // height * width: the pixels of one image.
    pixels: u32,
    channels: u32,
    // ceil(channels / 4): the invocations per image.
    channel_groups: u32,
    unused0: u32,
    unused1: u32,
    unused2: u32,
}

@group(0) @binding(0) var<uniform> params: GlobalPoolParams;
@group(0) @binding(1) var<storage, read> input: array<Scalar>;
@group(0) @binding(2) var<storage, read_write> output: array<Scalar>;
// The input again (the same buffer), read as vec4 when VEC4_CHANNELS.
@group(0) @binding(3) var<storage, read> input4: array<vec4<Scalar>>;

// Whether channels is a multiple of 4, so that 4 channels of a pixel are one vec4 load.
override VEC4_CHANNELS: bool = false;

const WORKGROUP_SIZE: u32 = 64u;

@compute @workgroup_size(WORKGROUP_SIZE, 1, 1)
fn global_avg_pool(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = (workgroup.y * params.groups_x + workgroup.x) * WORKGROUP_SIZE + local;
    if (index >= params.invocations) {
        return;
    }
    let channel0 = (index % params.channel_groups) * 4u;
    let image = index / params.channel_groups;
    let first_pixel = image * params.pixels;

    var sum = vec4<f32>(0.0);
    var nan_lanes = vec4<bool>(false);
    var nan_values = vec4<f32>(0.0);
    for (var pixel = 0u; pixel < params.pixels; pixel = pixel + 1u) {
        let value = load4((first_pixel + pixel) * params.channels, channel0);
        let nan = is_nan4(value);
        nan_lanes = nan_lanes | nan;
        nan_values = select(nan_values, value, nan);
        sum = sum + value;
    }
    let mean = select(sum / f32(params.pixels), nan_values, nan_lanes);

    let output_base = image * params.channels + channel0;
    for (var lane = 0u; lane < 4u; lane = lane + 1u) {
        if (channel0 + lane < params.channels) {
            output[output_base + lane] = Scalar(mean[lane]);
        }
    }
}

// is_nan4 is in activation.wgsl and load4 in pool_load.wgsl, which the host appends to this file.
