//! The CPU oracle itself: a hand-computed example, and an error measure that NaN never passes.

use resgraph::epilogue::{Activation, Epilogue};
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
