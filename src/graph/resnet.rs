//! torchvision's ResNet architectures as graphs: the one walk over stages and blocks, with the
//! weights supplied by a [`ResNetWeights`] source (random ones for benchmarks, a `state_dict`'s
//! with batch norm folded for models read from a file).

use crate::error::Result;
use crate::graph::{Conv2dParams, Graph, GraphBuilder, LinearParams, PoolWindow};

/// torchvision's ResNet architectures, with their block kind and blocks per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResNetArch {
    /// Basic blocks, `[2, 2, 2, 2]`.
    ResNet18,
    /// Basic blocks, `[3, 4, 6, 3]`.
    ResNet34,
    /// Bottleneck blocks (expansion 4), `[3, 4, 6, 3]`.
    ResNet50,
    /// Bottleneck blocks, `[3, 4, 23, 3]`.
    ResNet101,
}

impl ResNetArch {
    /// Every architecture, in size order.
    pub const ALL: [ResNetArch; 4] = [
        ResNetArch::ResNet18,
        ResNetArch::ResNet34,
        ResNetArch::ResNet50,
        ResNetArch::ResNet101,
    ];

    /// The name torchvision gives it (`resnet50`).
    pub fn name(self) -> &'static str {
        match self {
            ResNetArch::ResNet18 => "resnet18",
            ResNetArch::ResNet34 => "resnet34",
            ResNetArch::ResNet50 => "resnet50",
            ResNetArch::ResNet101 => "resnet101",
        }
    }

    /// The architecture named `name` (`resnet18`, …), if resgraph knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|arch| arch.name() == name)
    }

    /// Blocks per stage.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            ResNetArch::ResNet18 => [2, 2, 2, 2],
            ResNetArch::ResNet34 | ResNetArch::ResNet50 => [3, 4, 6, 3],
            ResNetArch::ResNet101 => [3, 4, 23, 3],
        }
    }

    /// Whether the blocks are bottlenecks (expansion 4) rather than basic blocks.
    pub fn bottleneck(self) -> bool {
        matches!(self, ResNetArch::ResNet50 | ResNetArch::ResNet101)
    }
}

/// One convolution of a ResNet as the walk asks for it: torchvision's name for it and for the
/// batch norm that follows it, and its shape.
#[derive(Clone, Copy, Debug)]
pub struct ResNetConv<'a> {
    /// The convolution's `state_dict` name (`layer1.0.conv2`, `layer2.0.downsample.0`).
    pub name: &'a str,
    /// The batch norm's `state_dict` name (`layer1.0.bn2`, `layer2.0.downsample.1`).
    pub batch_norm: &'a str,
    /// `(out_channels, in_channels)`.
    pub channels: (usize, usize),
    /// The square kernel's side.
    pub kernel: usize,
    /// The stride along both axes.
    pub stride: usize,
    /// The zero padding on every side.
    pub padding: usize,
}

/// Where a ResNet's weights come from.
pub trait ResNetWeights {
    /// The convolution `conv`, with its batch norm folded in.
    fn conv(&mut self, conv: &ResNetConv<'_>) -> Result<Conv2dParams>;
    /// The classifier `name`, `out_features × in_features`.
    fn linear(
        &mut self,
        name: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<LinearParams>;
}

/// Asks `weights` for one convolution and adds nothing: a helper of the walk.
fn conv(
    weights: &mut dyn ResNetWeights,
    (name, batch_norm): (&str, &str),
    channels: (usize, usize),
    (kernel, stride, padding): (usize, usize, usize),
) -> Result<Conv2dParams> {
    weights.conv(&ResNetConv {
        name,
        batch_norm,
        channels,
        kernel,
        stride,
        padding,
    })
}

/// torchvision's ResNet `arch` (v1.5: a bottleneck strides in its 3×3 convolution) for square
/// `image`-pixel RGB inputs and `classes` outputs, with weights from `weights`. Nodes are named as
/// torchvision's `state_dict` names them.
pub fn build_resnet(
    arch: ResNetArch,
    image: usize,
    classes: usize,
    weights: &mut dyn ResNetWeights,
) -> Result<Graph> {
    let mut builder = GraphBuilder::new();
    let x = builder.input_image("input", (image, image, 3))?;
    let stem = conv(weights, ("conv1", "bn1"), (64, 3), (7, 2, 3))?;
    let stem = builder.conv2d("conv1", x, stem)?;
    let stem = builder.relu("relu", stem)?;
    let window = PoolWindow {
        kernel: (3, 3),
        stride: (2, 2),
        padding: (1, 1, 1, 1),
    };
    let mut x = builder.max_pool2d("maxpool", stem, window)?;
    let expansion = if arch.bottleneck() { 4 } else { 1 };
    let mut channels = 64;
    for (stage, &blocks) in arch.blocks().iter().enumerate() {
        let width = 64 << stage;
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let name = format!("layer{}.{block}", stage + 1);
            let named = |part: &str| format!("{name}.{part}");
            let out_channels = width * expansion;
            let downsample = if stride != 1 || channels != out_channels {
                let (conv_name, bn_name) = (named("downsample.0"), named("downsample.1"));
                let shape = (out_channels, channels);
                Some(conv(
                    weights,
                    (&conv_name, &bn_name),
                    shape,
                    (1, stride, 0),
                )?)
            } else {
                None
            };
            x = if arch.bottleneck() {
                let convs = [
                    conv(
                        weights,
                        (&named("conv1"), &named("bn1")),
                        (width, channels),
                        (1, 1, 0),
                    )?,
                    conv(
                        weights,
                        (&named("conv2"), &named("bn2")),
                        (width, width),
                        (3, stride, 1),
                    )?,
                    conv(
                        weights,
                        (&named("conv3"), &named("bn3")),
                        (out_channels, width),
                        (1, 1, 0),
                    )?,
                ];
                builder.bottleneck_block(&name, x, convs, downsample)?
            } else {
                let conv1 = conv(
                    weights,
                    (&named("conv1"), &named("bn1")),
                    (width, channels),
                    (3, stride, 1),
                )?;
                let conv2 = conv(
                    weights,
                    (&named("conv2"), &named("bn2")),
                    (width, width),
                    (3, 1, 1),
                )?;
                builder.basic_block(&name, x, conv1, conv2, downsample)?
            };
            channels = out_channels;
        }
    }
    let pooled = builder.global_avg_pool("avgpool", x)?;
    let flat = builder.flatten("flatten", pooled)?;
    let fc = weights.linear("fc", classes, channels)?;
    let logits = builder.linear("fc", flat, fc)?;
    builder.build(logits)
}
