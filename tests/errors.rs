//! Bad input gets a typed error, never a panic: shapes that do not chain, zero-sized dimensions,
//! sizes past the device's limits, aliased operands, wgpu validation errors, unknown adapters.

mod common;

use resgraph::Error;
use resgraph::epilogue::Activation;
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::{
    AdapterIdentity, AdapterOptions, GpuContext, choose_adapter, parse_backends,
};
use resgraph::kernels::PreparedKernel;
use resgraph::kernels::gemm::{GemmOperands, GemmVariant, LinearWeights, prepare_gemm};

fn operands<'a>(
    input: &'a DeviceMatrix,
    weights: &'a LinearWeights,
    residual: Option<&'a DeviceMatrix>,
    output: &'a DeviceMatrix,
) -> GemmOperands<'a> {
    GemmOperands {
        input,
        weights,
        residual,
        output,
        activation: Activation::Relu,
    }
}

/// Prepares a GEMM with the portable variant, which every device runs.
fn prepare_portable(
    context: &GpuContext,
    operands: &GemmOperands<'_>,
) -> resgraph::Result<PreparedKernel> {
    prepare_gemm(context, operands, GemmVariant::Portable)
}

#[test]
fn an_input_of_the_wrong_width_is_a_shape_mismatch() {
    let context = common::primary_context();
    let weights = LinearWeights::upload(context, 4, 3, &[0.0; 12], None).expect("weights");
    let input = DeviceMatrix::new(context, "x", 2, 5).expect("x");
    let output = DeviceMatrix::new(context, "y", 2, 4).expect("y");
    let error = prepare_portable(context, &operands(&input, &weights, None, &output)).unwrap_err();
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
    assert!(error.to_string().contains("gemm input"), "{error}");
}

#[test]
fn an_output_or_residual_of_the_wrong_shape_is_a_shape_mismatch() {
    let context = common::primary_context();
    let weights = LinearWeights::upload(context, 4, 3, &[0.0; 12], None).expect("weights");
    let input = DeviceMatrix::new(context, "x", 2, 3).expect("x");
    let good_output = DeviceMatrix::new(context, "y", 2, 4).expect("y");
    let bad_output = DeviceMatrix::new(context, "y", 3, 4).expect("y");
    let bad_residual = DeviceMatrix::new(context, "r", 2, 5).expect("r");
    let error =
        prepare_portable(context, &operands(&input, &weights, None, &bad_output)).unwrap_err();
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
    let error = prepare_portable(
        context,
        &operands(&input, &weights, Some(&bad_residual), &good_output),
    )
    .unwrap_err();
    assert!(error.to_string().contains("residual"), "{error}");
}

#[test]
fn an_output_aliasing_an_input_is_refused() {
    let context = common::primary_context();
    let weights = LinearWeights::upload(context, 3, 3, &[0.0; 9], None).expect("weights");
    let matrix = DeviceMatrix::new(context, "x", 2, 3).expect("x");
    let other = DeviceMatrix::new(context, "r", 2, 3).expect("r");
    let error = prepare_portable(context, &operands(&matrix, &weights, None, &matrix)).unwrap_err();
    assert!(
        matches!(
            error,
            Error::AliasedOutput {
                operand: "input",
                ..
            }
        ),
        "{error}"
    );
    let error =
        prepare_portable(context, &operands(&other, &weights, Some(&matrix), &matrix)).unwrap_err();
    assert!(
        matches!(
            error,
            Error::AliasedOutput {
                operand: "residual",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn zero_sized_dimensions_are_refused() {
    let context = common::primary_context();
    let error = DeviceMatrix::new(context, "x", 0, 3).unwrap_err();
    assert!(
        matches!(
            error,
            Error::ZeroSized {
                dimension: "rows",
                ..
            }
        ),
        "{error}"
    );
    let error = DeviceMatrix::new(context, "x", 3, 0).unwrap_err();
    assert!(
        matches!(
            error,
            Error::ZeroSized {
                dimension: "cols",
                ..
            }
        ),
        "{error}"
    );
    let error = LinearWeights::upload(context, 0, 3, &[], None).unwrap_err();
    assert!(
        matches!(
            error,
            Error::ZeroSized {
                dimension: "out_features",
                ..
            }
        ),
        "{error}"
    );
    let error = LinearWeights::upload(context, 3, 0, &[], None).unwrap_err();
    assert!(
        matches!(
            error,
            Error::ZeroSized {
                dimension: "in_features",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn weights_and_biases_of_the_wrong_length_are_refused() {
    let context = common::primary_context();
    let error = LinearWeights::upload(context, 2, 3, &[0.0; 5], None).unwrap_err();
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
    let error = LinearWeights::upload(context, 2, 3, &[0.0; 6], Some(&[0.0; 3])).unwrap_err();
    assert!(error.to_string().contains("bias"), "{error}");
}

#[test]
fn a_matrix_past_the_binding_limit_is_refused_before_allocation() {
    let context = common::primary_context();
    let limit = context.limits().max_storage_buffer_binding_size;
    let rows = (limit / 4 / 1024 + 1) as usize;
    let error = DeviceMatrix::new(context, "huge activations", rows, 1024).unwrap_err();
    match error {
        Error::BufferTooLarge {
            requested,
            limit: reported,
            ..
        } => {
            assert!(requested > reported);
            assert_eq!(reported, limit);
        }
        other => panic!("expected BufferTooLarge, got {other}"),
    }
}

/// A host application's device with a small storage binding limit, wrapped by resgraph.
fn device_with_binding_limit(limit: u64) -> GpuContext {
    let options = AdapterOptions::from_env().expect("options");
    let instance = resgraph::gpu::context::create_instance(options.backends);
    let adapters = resgraph::gpu::context::enumerate_adapters(&instance, options.backends);
    let identities: Vec<AdapterIdentity> = adapters
        .iter()
        .map(|adapter| AdapterIdentity::from(&adapter.get_info()))
        .collect();
    let index = choose_adapter(&identities, &options).expect("an adapter");
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: limit,
        ..wgpu::Limits::downlevel_defaults()
    };
    let (device, queue) =
        pollster::block_on(adapters[index].request_device(&wgpu::DeviceDescriptor {
            label: Some("host device"),
            required_limits: limits,
            ..Default::default()
        }))
        .expect("host device");
    GpuContext::from_device(device, queue)
}

#[test]
fn a_weight_past_the_device_binding_limit_is_a_typed_error() {
    let context = device_with_binding_limit(1 << 20);
    let (n, k) = (1024, 512); // 2 MiB of weights against a 1 MiB binding limit
    let error = LinearWeights::upload(&context, n, k, &vec![0.0; n * k], None).unwrap_err();
    match &error {
        Error::BufferTooLarge {
            limit_name, limit, ..
        } => {
            assert_eq!(*limit_name, "max_storage_buffer_binding_size");
            assert_eq!(*limit, 1 << 20);
        }
        other => panic!("expected BufferTooLarge, got {other}"),
    }
    assert!(error.to_string().contains("1024x512"), "{error}");
}

#[test]
fn a_dispatch_past_the_workgroup_limit_is_a_typed_error() {
    let context = common::primary_context();
    let limit = context.limits().max_compute_workgroups_per_dimension as usize;
    // One column, so the matrices stay small while the row count needs too many workgroups.
    let rows = (limit + 1) * resgraph::kernels::gemm::ROWS_PER_WORKGROUP as usize;
    let weights = LinearWeights::upload(context, 1, 1, &[1.0], None).expect("weights");
    let input = DeviceMatrix::new(context, "x", rows, 1).expect("x");
    let output = DeviceMatrix::new(context, "y", rows, 1).expect("y");
    let error = prepare_portable(context, &operands(&input, &weights, None, &output)).unwrap_err();
    assert!(matches!(error, Error::DispatchTooLarge { .. }), "{error}");
}

#[test]
fn a_wgpu_validation_error_is_returned_not_panicked() {
    let context = common::primary_context();
    let result = context.scoped("creating an invalid buffer", || {
        // MAP_READ may only be combined with COPY_DST: wgpu reports a validation error.
        context.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    });
    match result {
        Err(Error::Gpu { operation, .. }) => assert_eq!(operation, "creating an invalid buffer"),
        Err(other) => panic!("expected Error::Gpu, got {other}"),
        Ok(_) => panic!("an invalid buffer was accepted"),
    }
}

#[test]
fn unknown_backend_names_are_refused() {
    assert!(
        matches!(parse_backends("vulkan,gl"), Ok(b) if b == wgpu::Backends::VULKAN | wgpu::Backends::GL)
    );
    let error = parse_backends("vulkan,glx").unwrap_err();
    assert!(
        matches!(error, Error::UnknownBackend { ref name } if name == "glx"),
        "{error}"
    );
    assert!(parse_backends(" , ").is_err());
}

fn identity(name: &str, backend: wgpu::Backend, device_type: wgpu::DeviceType) -> AdapterIdentity {
    AdapterIdentity {
        name: name.to_string(),
        backend,
        device_type,
    }
}

#[test]
fn adapter_choice_follows_name_device_type_and_backend() {
    let adapters = [
        identity("llvmpipe", wgpu::Backend::Gl, wgpu::DeviceType::Cpu),
        identity("llvmpipe", wgpu::Backend::Vulkan, wgpu::DeviceType::Cpu),
        identity(
            "Radeon iGPU",
            wgpu::Backend::Vulkan,
            wgpu::DeviceType::IntegratedGpu,
        ),
        identity(
            "GeForce RTX",
            wgpu::Backend::Vulkan,
            wgpu::DeviceType::DiscreteGpu,
        ),
    ];
    let mut options = AdapterOptions::default();
    assert_eq!(choose_adapter(&adapters, &options).expect("pick"), 3);
    options.power_preference = wgpu::PowerPreference::LowPower;
    assert_eq!(choose_adapter(&adapters, &options).expect("pick"), 2);
    options.name_contains = Some("LLVMPIPE".to_string());
    assert_eq!(choose_adapter(&adapters, &options).expect("pick"), 1);
    options.name_contains = Some("apple".to_string());
    let error = choose_adapter(&adapters, &options).unwrap_err();
    assert!(matches!(error, Error::AdapterNotFound { .. }), "{error}");
    assert!(
        error.to_string().contains("GeForce RTX (vulkan)"),
        "{error}"
    );
    let error = choose_adapter(&[], &AdapterOptions::default()).unwrap_err();
    assert!(error.to_string().contains("mesa-vulkan-drivers"), "{error}");
}
