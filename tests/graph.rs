//! The graph builder's checks and the planner's fusion and memory plan, without a GPU.

use resgraph::Error;
use resgraph::graph::synthetic::{MlpShape, mlp};
use resgraph::graph::{GraphBuilder, LinearParams};
use resgraph::plan::{Plan, StepKind};

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

#[test]
fn a_residual_block_fuses_into_two_gemms() {
    let graph = mlp(MlpShape::square(16, 1), 1.0, 1).expect("graph");
    let plan = Plan::new(&graph).expect("plan");
    assert_eq!(plan.dispatch_count(), 2);
    match (&plan.steps[0].kind, &plan.steps[1].kind) {
        (
            StepKind::Gemm {
                residual: None,
                activation: first,
                ..
            },
            StepKind::Gemm {
                residual: Some(residual),
                activation: second,
                ..
            },
        ) => {
            assert_eq!(*first, resgraph::epilogue::Activation::Relu);
            assert_eq!(*second, resgraph::epilogue::Activation::Relu);
            assert_eq!(*residual, plan.input);
        }
        other => panic!("unexpected steps {other:?}"),
    }
    assert_eq!(
        plan.steps[1].name,
        "blocks.0.fc2+blocks.0.add+blocks.0.relu2"
    );
}

#[test]
fn at_most_two_dispatches_per_block_with_stem_and_head() {
    for depth in [1, 7, 64] {
        let shape = MlpShape {
            input_width: 13,
            width: 24,
            hidden_width: 40,
            depth,
            output_width: 5,
            residual: true,
        };
        let plan = Plan::new(&mlp(shape, 1.0, 2).expect("graph")).expect("plan");
        assert_eq!(plan.dispatch_count(), 2 * depth + 2, "depth {depth}");
    }
}

#[test]
fn activation_memory_is_flat_in_depth() {
    let shallow = Plan::new(&mlp(MlpShape::square(32, 4), 1.0, 3).expect("graph")).expect("plan");
    let deep = Plan::new(&mlp(MlpShape::square(32, 64), 1.0, 3).expect("graph")).expect("plan");
    assert_eq!(
        shallow.activation_bytes(100, 4),
        deep.activation_bytes(100, 4)
    );
    assert_eq!(
        deep.slot_widths.len(),
        3,
        "block input, hidden, block output"
    );
}

#[test]
fn no_step_writes_a_slot_it_reads() {
    let shape = MlpShape {
        input_width: 7,
        width: 9,
        hidden_width: 33,
        depth: 5,
        output_width: 3,
        residual: true,
    };
    let plan = Plan::new(&mlp(shape, 1.0, 4).expect("graph")).expect("plan");
    for step in &plan.steps {
        let written = plan.value_storage[step.output.0];
        for read in step.reads() {
            assert_ne!(plan.value_storage[read.0], written, "step {}", step.name);
        }
    }
}

#[test]
fn relus_and_adds_that_follow_no_linear_layer_stay_elementwise() {
    let mut builder = GraphBuilder::new();
    let x = builder.input("x", 6).expect("input");
    let r = builder.relu("relu_in", x).expect("relu");
    let a = builder.linear("a", r, zeros(6, 6)).expect("a");
    let b = builder.linear("b", r, zeros(6, 6)).expect("b");
    let sum = builder.add("sum", a, b).expect("sum");
    let doubled = builder.add("doubled", sum, sum).expect("doubled");
    let graph = builder.build(doubled).expect("graph");
    let plan = Plan::new(&graph).expect("plan");
    let elementwise = plan
        .steps
        .iter()
        .filter(|step| matches!(step.kind, StepKind::Elementwise { .. }))
        .count();
    // relu(x) and sum + sum are elementwise; a + b fuses b's GEMM with a as the residual.
    assert_eq!(elementwise, 2, "{:#?}", plan.steps);
    assert_eq!(plan.dispatch_count(), 4);
}
