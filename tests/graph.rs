//! The graph builder's checks through the public API, without a GPU. (The planner's fusion and
//! memory plan are unit tests inside `src/plan/`, since the planner is internal.)

use resgraph::{Error, GraphBuilder, LinearParams};

fn zeros(out_features: usize, in_features: usize) -> LinearParams {
    LinearParams::zeros(out_features, in_features).expect("params")
}

#[test]
fn a_linear_layer_that_does_not_chain_is_an_error_naming_the_node() {
    let mut builder = GraphBuilder::new();
    let x = builder.input("x", 8).expect("input");
    let error = builder.linear("blocks.0.fc1", x, zeros(4, 9)).unwrap_err();
    assert!(
        matches!(error, Error::GraphShape { ref node, .. } if node == "blocks.0.fc1"),
        "{error}"
    );
    assert!(error.to_string().contains("in_features = 9"), "{error}");
}

#[test]
fn adding_matrices_of_different_widths_is_an_error() {
    let mut builder = GraphBuilder::new();
    let x = builder.input("x", 8).expect("input");
    let y = builder.linear("fc", x, zeros(5, 8)).expect("fc");
    let error = builder.add("sum", x, y).unwrap_err();
    assert!(
        matches!(error, Error::GraphShape { ref node, .. } if node == "sum"),
        "{error}"
    );
}

#[test]
fn a_residual_block_whose_fc2_does_not_return_to_the_input_width_is_an_error() {
    let mut builder = GraphBuilder::new();
    let x = builder.input("x", 8).expect("input");
    let error = builder
        .residual_block("blocks.3", x, zeros(16, 8), zeros(7, 16))
        .unwrap_err();
    assert!(error.to_string().contains("blocks.3.add"), "{error}");
}

#[test]
fn malformed_parameters_and_graphs_are_refused() {
    assert!(matches!(
        LinearParams::new(2, 3, vec![0.0; 5], None),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        LinearParams::new(2, 3, vec![0.0; 6], Some(vec![0.0; 3])),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        LinearParams::new(0, 3, vec![], None),
        Err(Error::ZeroSized { .. })
    ));
    let mut builder = GraphBuilder::new();
    builder.input("x", 4).expect("input");
    assert!(matches!(
        builder.input("y", 4),
        Err(Error::InvalidGraph { .. })
    ));
    assert!(matches!(
        GraphBuilder::new().input("x", 0),
        Err(Error::ZeroSized { .. })
    ));
}
