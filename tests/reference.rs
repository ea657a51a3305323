//! The CPU oracle itself: a hand-computed example, and an error measure that NaN never passes.

use resgraph::epilogue::{Activation, Epilogue};
use resgraph::kernels::gemm::weights_to_kernel_layout;
use resgraph::reference::{LinearRef, linear_f64, relative_error};

#[test]
fn the_reference_matches_a_hand_computed_example() {
    // x = [1, 2], W = [[1, 0], [0, -1], [1, 1]], b = [0.5, 0, -4], r = [1, 1, 1]
    let layer = LinearRef {
        weight: &[1.0, 0.0, 0.0, -1.0, 1.0, 1.0],
        bias: &[0.5, 0.0, -4.0],
        in_features: 2,
        out_features: 3,
    };
    let residual = [1.0, 1.0, 1.0];
    let epilogue = Epilogue {
        activation: Activation::Relu,
        add_residual: true,
    };
    let out = linear_f64(&[1.0, 2.0], 1, layer, Some(&residual), epilogue);
    assert_eq!(out, vec![2.5, 0.0, 0.0]);
    let identity = Epilogue::default();
    let out = linear_f64(&[1.0, 2.0], 1, layer, None, identity);
    assert_eq!(out, vec![1.5, -2.0, -1.0]);
}

#[test]
fn nan_and_infinity_never_pass_a_tolerance() {
    let reference = [1.0, 2.0, 3.0];
    assert_eq!(relative_error(&[1.0, 2.0, 3.0], &reference), 0.0);
    assert!(relative_error(&[1.0, f32::NAN, 3.0], &reference).is_infinite());
    assert!(relative_error(&[1.0, f32::INFINITY, 3.0], &reference).is_infinite());
    assert!(relative_error(&[1.0, 2.0], &reference).is_infinite());
    assert!(relative_error(&[0.0, 0.0, 0.0], &reference) > 0.99);
}

#[test]
fn the_kernel_weight_layout_is_blocked_transposed_and_zero_padded() {
    // A 17 x 3 weight (out x in): 2 blocks of 16 columns, inner padded from 3 to 8.
    let (out_features, in_features) = (17, 3);
    let weight: Vec<f32> = (0..out_features * in_features)
        .map(|i| i as f32 + 1.0)
        .collect();
    let layout = weights_to_kernel_layout(&weight, out_features, in_features);
    assert_eq!(layout.len(), 2 * 8 * 16);
    for col in 0..out_features {
        for k in 0..in_features {
            let (block, lane) = (col / 16, col % 16);
            assert_eq!(
                layout[block * 8 * 16 + k * 16 + lane],
                weight[col * in_features + k]
            );
        }
    }
    let nonzero = layout.iter().filter(|&&value| value != 0.0).count();
    assert_eq!(nonzero, out_features * in_features, "padding must be zero");
}
