// The NHWC load the pooling kernels share. It is not a shader on its own: the host's source
// generator (src/kernels/source.rs) appends it to the pool kernels, and it uses their `params`
// (`channels`), `input`, `input4` and `VEC4_CHANNELS`.

// Channels channel0..channel0+3 of the input value at `offset` (a pixel's first channel); lanes
// past `channels` read nothing and hold zero.
fn load4(offset: u32, channel0: u32) -> vec4<f32> {
    if (VEC4_CHANNELS) {
        return vec4<f32>(input4[(offset + channel0) / 4u]);
    }
    var values = vec4<f32>(0.0);
    for (var lane = 0u; lane < 4u; lane = lane + 1u) {
        if (channel0 + lane < params.channels) {
            values[lane] = f32(input[offset + channel0 + lane]);
        }
    }
    return values;
}
