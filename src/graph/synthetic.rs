//! Synthetic residual MLPs with PyTorch's `nn.Linear` initialisation and a fixed seed: what
//! `resgraph bench` runs when no model is given, and what the tests build stacks from.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::Result;
use crate::graph::{Graph, GraphBuilder, LinearParams};

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
