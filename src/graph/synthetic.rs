//! Synthetic networks from a fixed seed: residual MLPs with PyTorch's `nn.Linear` initialisation
//! (what `resgraph bench` runs when no model is given, and what the tests build stacks from), and
//! torchvision's ResNets with He initialisation (what `resgraph bench --arch` runs).

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::Result;
use crate::graph::resnet::{ResNetConv, ResNetWeights, build_resnet};
use crate::graph::{Conv2dParams, Graph, GraphBuilder, LinearParams};

/// The shape of a synthetic residual MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpShape {
    /// The input width; a stem layer maps it to `width` when they differ.
    pub input_width: usize,
    /// The width of every block.
    pub width: usize,
    /// The hidden width inside each block (`fc1` output).
    pub hidden_width: usize,
    /// The number of blocks.
    pub depth: usize,
    /// The output width; a head layer maps `width` to it when they differ.
    pub output_width: usize,
    /// Residual blocks (true) or plain blocks without the shortcut (false).
    pub residual: bool,
}

impl MlpShape {
    /// `depth` residual blocks of `width`, no stem or head: the peers' benchmark workload.
    pub fn square(width: usize, depth: usize) -> Self {
        MlpShape {
            input_width: width,
            width,
            hidden_width: width,
            depth,
            output_width: width,
            residual: true,
        }
    }
}

impl MlpShape {
    /// The weights and biases of every layer, or `None` when the count does not fit in a `u64`;
    /// what a caller checks against the memory it has before [`mlp`] allocates them.
    pub fn parameter_count(&self) -> Option<u64> {
        let linear = |out: usize, inputs: usize| {
            (out as u64)
                .checked_mul(inputs as u64)?
                .checked_add(out as u64)
        };
        let block = linear(self.hidden_width, self.width)?
            .checked_add(linear(self.width, self.hidden_width)?)?;
        let mut total = block.checked_mul(self.depth as u64)?;
        if self.input_width != self.width {
            total = total.checked_add(linear(self.width, self.input_width)?)?;
        }
        if self.output_width != self.width {
            total = total.checked_add(linear(self.output_width, self.width)?)?;
        }
        Some(total)
    }

    /// The weights of the largest linear layer (out × in), or `None` when that overflows a
    /// `u64`: each layer's weights are one device buffer.
    pub fn largest_layer_weights(&self) -> Option<u64> {
        let weights = |out: usize, inputs: usize| (out as u64).checked_mul(inputs as u64);
        let mut largest = 0u64;
        if self.depth > 0 {
            largest = weights(self.hidden_width, self.width)?;
        }
        if self.input_width != self.width {
            largest = largest.max(weights(self.width, self.input_width)?);
        }
        if self.output_width != self.width {
            largest = largest.max(weights(self.output_width, self.width)?);
        }
        Some(largest)
    }
}

/// A linear layer drawn as PyTorch's `nn.Linear` initialises one: weight and bias uniform in
/// `[-1/√in, 1/√in)`, scaled by `scale` (1 for the default initialisation).
pub fn random_linear(
    rng: &mut StdRng,
    out_features: usize,
    in_features: usize,
    scale: f32,
) -> Result<LinearParams> {
    let bound = scale / (in_features as f32).sqrt();
    let mut draw =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-bound..bound)).collect() };
    let weight = draw(out_features * in_features);
    let bias = draw(out_features);
    LinearParams::new(out_features, in_features, weight, Some(bias))
}

/// Builds the MLP with weights scaled by `scale` from seed `seed`. Layers are named as a PyTorch
/// `state_dict` would name them: `stem`, `blocks.{i}.fc1`, `blocks.{i}.fc2`, `head`.
pub fn mlp(shape: MlpShape, scale: f32, seed: u64) -> Result<Graph> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut builder = GraphBuilder::new();
    let mut x = builder.input("input", shape.input_width)?;
    if shape.input_width != shape.width {
        let stem = random_linear(&mut rng, shape.width, shape.input_width, 1.0)?;
        x = builder.linear("stem", x, stem)?;
    }
    for block in 0..shape.depth {
        let fc1 = random_linear(&mut rng, shape.hidden_width, shape.width, scale)?;
        let fc2 = random_linear(&mut rng, shape.width, shape.hidden_width, scale)?;
        let name = format!("blocks.{block}");
        x = if shape.residual {
            builder.residual_block(&name, x, fc1, fc2)?
        } else {
            builder.plain_block(&name, x, fc1, fc2)?
        };
    }
    if shape.output_width != shape.width {
        let head = random_linear(&mut rng, shape.output_width, shape.width, 1.0)?;
        x = builder.linear("head", x, head)?;
    }
    builder.build(x)
}

/// `len` values uniform in `[-1, 1)` from seed `seed`: a benchmark or test input.
pub fn random_input(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub use super::resnet::ResNetArch;

/// A convolution with He (Kaiming) initialisation over its fan-out, as torchvision initialises
/// ResNet convolutions (uniform with the same variance), and its batch norm folded at the
/// initial statistics (scale 1, shift 0): a zero bias.
fn he_conv(
    rng: &mut StdRng,
    (out_channels, in_channels): (usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2dParams> {
    let fan_out = (out_channels * kernel * kernel) as f32;
    // A uniform distribution on [-b, b) has variance b²/3; He wants 2 / fan_out.
    let bound = (6.0 / fan_out).sqrt();
    let weight = (0..out_channels * in_channels * kernel * kernel)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Conv2dParams::new(
        (out_channels, in_channels),
        (kernel, kernel),
        (stride, stride),
        (padding, padding, padding, padding),
        weight,
        Some(vec![0.0; out_channels]),
    )
}

/// Random He-initialised weights for [`super::resnet::build_resnet`].
struct RandomResNetWeights {
    rng: StdRng,
}

impl ResNetWeights for RandomResNetWeights {
    fn conv(&mut self, conv: &ResNetConv<'_>) -> Result<Conv2dParams> {
        he_conv(
            &mut self.rng,
            conv.channels,
            conv.kernel,
            conv.stride,
            conv.padding,
        )
    }

    fn linear(
        &mut self,
        _name: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<LinearParams> {
        random_linear(&mut self.rng, out_features, in_features, 1.0)
    }
}

/// A torchvision ResNet of `arch` for square `image`-pixel RGB inputs and `classes` outputs,
/// with He-initialised weights from seed `seed` and batch norm folded into the convolutions.
/// Nodes are named as torchvision's `state_dict` names them (`conv1`, `layer1.0.conv1`,
/// `layer2.0.downsample.0`, `fc`). What `resgraph bench --arch` runs.
pub fn resnet(arch: ResNetArch, image: usize, classes: usize, seed: u64) -> Result<Graph> {
    let mut weights = RandomResNetWeights {
        rng: StdRng::seed_from_u64(seed),
    };
    build_resnet(arch, image, classes, &mut weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnets_have_torchvisions_parameter_counts() {
        // torchvision's counts: resnet18 11,689,512 and resnet50 25,557,032, with batch norm's
        // 2 parameters per channel and bias-free convolutions; folded, each batch norm leaves
        // one bias per channel, so the folded counts are lower by the batch norms' channel
        // totals (4,800 and 26,560).
        let resnet18 = resnet(ResNetArch::ResNet18, 64, 1000, 1).expect("resnet18");
        assert_eq!(resnet18.parameter_count(), 11_689_512 - 4_800);
        let resnet50 = resnet(ResNetArch::ResNet50, 64, 1000, 1).expect("resnet50");
        assert_eq!(resnet50.parameter_count(), 25_557_032 - 26_560);
        assert_eq!(resnet50.output_width(), 1000);
    }

    #[test]
    fn resnet50_at_224_costs_about_four_billion_multiply_adds() {
        let graph = resnet(ResNetArch::ResNet50, 224, 1000, 1).expect("resnet50");
        let gmacs = graph.flops_per_row() as f64 / 2e9;
        assert!((4.0..4.2).contains(&gmacs), "{gmacs} GMAC");
    }
}
