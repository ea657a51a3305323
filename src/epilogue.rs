//! What a fused GEMM applies after the matrix product: an optional residual add and an
//! activation. These are plain descriptions, shared by the kernels and the CPU reference, and
//! touch no GPU type.

/// The activation applied last in a fused GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// No activation: the output is the affine result (plus the residual, if any).
    #[default]
    Identity,
    /// `max(x, 0)`, with NaN kept NaN as in PyTorch (`shaders/activation.wgsl`).
    Relu,
}

impl Activation {
    /// Applies the activation to one value in f64, for the CPU reference.
    ///
    /// ReLU keeps a NaN as NaN, as PyTorch's does: `f64::max` alone would return the other
    /// operand and turn a NaN into zero, hiding a poisoned value from every comparison.
    pub fn apply_f64(self, value: f64) -> f64 {
        match self {
            Activation::Identity => value,
            Activation::Relu if value.is_nan() => value,
            Activation::Relu => value.max(0.0),
        }
    }
}

/// The full epilogue of a fused GEMM: `act(X·Wᵀ + b [+ R])`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Epilogue {
    /// The activation applied last.
    pub activation: Activation,
    /// Whether a residual matrix of the output's shape is added before the activation.
    pub add_residual: bool,
}

impl Epilogue {
    /// All four epilogues: identity or ReLU, with or without the residual add.
    pub const ALL: [Epilogue; 4] = [
        Epilogue {
            activation: Activation::Identity,
            add_residual: false,
        },
        Epilogue {
            activation: Activation::Relu,
            add_residual: false,
        },
        Epilogue {
            activation: Activation::Identity,
            add_residual: true,
        },
        Epilogue {
            activation: Activation::Relu,
            add_residual: true,
        },
    ];
}

impl std::fmt::Display for Epilogue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let activation = match self.activation {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
        };
        if self.add_residual {
            write!(formatter, "{activation}(xW+b+r)")
        } else {
            write!(formatter, "{activation}(xW+b)")
        }
    }
}
