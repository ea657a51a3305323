//! Shader portability without the hardware: every source the host compiles (each kernel of
//! `ALL_KERNELS`, generated for f32 and f16 storage) is parsed and validated by naga, its overrides
//! resolved for every combination of its boolean `override` constants and of the integer values
//! the host sets, and translated to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL), so
//! that a construct one backend cannot express fails here rather than on a user's machine.

use std::path::PathBuf;

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use resgraph::kernels::ALL_KERNELS;
use resgraph::kernels::source::{ACTIVATION, FUSED_EPILOGUE, KernelSource, generate};
use resgraph::precision::Precision;

const PRECISIONS: [Precision; 2] = [Precision::F32, Precision::F16];

fn shader_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the shaders/ folder")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wgsl"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no WGSL files found in {}",
        dir.display()
    );
    files
}

#[test]
fn every_shader_file_is_part_of_a_kernel_the_host_compiles() {
    // The sources checked below are the generated ones, so a WGSL file that no kernel uses
    // would never be checked at all.
    for path in shader_files() {
        let text = std::fs::read_to_string(&path).expect("read shader");
        let used = ALL_KERNELS
            .iter()
            .any(|kernel| kernel.body == text || kernel.pieces.contains(&text.as_str()));
        assert!(
            used,
            "{} is part of no kernel in ALL_KERNELS",
            path.display()
        );
    }
    assert!(
        ALL_KERNELS
            .iter()
            .any(|kernel| kernel.pieces.contains(&FUSED_EPILOGUE))
    );
}

#[test]
fn every_kernel_with_a_relu_takes_the_relu_that_keeps_nan() {
    // `max(x, 0.0)` may drop a NaN, so ReLU lives in activation.wgsl and nowhere else: a kernel
    // that applies one lists that piece (the fused epilogue calls it).
    for kernel in ALL_KERNELS {
        let mut text = kernel.body.to_string();
        for piece in kernel.pieces {
            text.push_str(piece);
        }
        if text.contains("APPLY_RELU") || kernel.pieces.contains(&FUSED_EPILOGUE) {
            assert!(
                kernel.pieces.contains(&ACTIVATION),
                "{} applies a ReLU without activation.wgsl",
                kernel.name
            );
        }
        for (line_number, line) in kernel.body.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !(code.contains("max(") && code.contains("0.0")),
                "{} line {}: a ReLU written as max(x, 0.0) turns NaN into 0: {line}",
                kernel.name,
                line_number + 1
            );
        }
    }
}

fn uses_cooperative_matrices(kernel: &KernelSource) -> bool {
    kernel.extensions.contains(&"wgpu_cooperative_matrix")
}

fn validate(module: &naga::Module) -> ModuleInfo {
    Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(module)
        .unwrap_or_else(|error| panic!("validation failed: {error:?}"))
}

/// Every assignment of true/false to the module's boolean overrides (others keep defaults).
/// The integer override values the host sets besides the defaults: the GEMV's one-row and
/// four-row pipelines, and the cooperative GEMMs' subgroup size (a workgroup of one subgroup, or
/// of 4 for the staged one: 32 on NVIDIA and Apple, 64 where an adapter fixes that size).
const HOST_INTEGER_OVERRIDES: &[(&str, &[f64])] = &[
    ("GEMV_ROWS", &[1.0, 4.0]),
    ("WORKGROUP_SIZE", &[32.0, 64.0]),
    ("SUBGROUP_SIZE", &[32.0, 64.0]),
];

/// Every assignment of true/false to the module's boolean overrides, crossed with the integer
/// values of [`HOST_INTEGER_OVERRIDES`] the module declares (others keep their defaults).
fn override_combinations(module: &naga::Module) -> Vec<PipelineConstants> {
    let declared = |ty: naga::Scalar| -> Vec<String> {
        module
            .overrides
            .iter()
            .filter(|(_, o)| module.types[o.ty].inner == naga::TypeInner::Scalar(ty))
            .filter_map(|(_, o)| o.name.clone())
            .collect()
    };
    let booleans = declared(naga::Scalar::BOOL);
    let integers = declared(naga::Scalar::U32);
    let mut combinations: Vec<PipelineConstants> = (0..1u32 << booleans.len())
        .map(|bits| {
            let mut constants = PipelineConstants::default();
            for (index, name) in booleans.iter().enumerate() {
                constants.insert(name.clone(), f64::from((bits >> index) & 1));
            }
            constants
        })
        .collect();
    for (name, values) in HOST_INTEGER_OVERRIDES {
        if !integers.iter().any(|declared| declared == name) {
            continue;
        }
        combinations = combinations
            .into_iter()
            .flat_map(|constants| {
                values.iter().map(move |value| {
                    let mut constants = constants.clone();
                    constants.insert((*name).to_string(), *value);
                    constants
                })
            })
            .collect();
    }
    combinations
}

#[test]
fn every_generated_source_validates_and_translates_to_every_backend_language() {
    let mut translated = 0;
    for kernel in ALL_KERNELS {
        // Exactly the sources the host compiles: every kernel with every storage precision.
        for precision in PRECISIONS {
            let source = generate(kernel, precision);
            let name = format!("{} ({precision})", kernel.name);
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|error| panic!("{name}: {}", error.emit_to_string(&source)));
            let info = validate(&module);
            let entry = module
                .entry_points
                .iter()
                .find(|entry| entry.name == kernel.entry_point)
                .unwrap_or_else(|| panic!("{name}: no entry point {}", kernel.entry_point));
            // Every binding the shader declares is in the host's table (the cooperative GEMM
            // leaves the table's last entry unused).
            for (_, variable) in module.global_variables.iter() {
                if let Some(binding) = &variable.binding {
                    assert_eq!(binding.group, 0, "{name}: one bind group");
                    assert!(
                        (binding.binding as usize) < kernel.bindings.len(),
                        "{name}: binding {} is not in the host's binding table",
                        binding.binding
                    );
                }
            }
            for constants in override_combinations(&module) {
                let (resolved, resolved_info) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((entry.stage, &entry.name)),
                    &constants,
                )
                .unwrap_or_else(|error| panic!("{name}: overrides {constants:?}: {error}"));
                let context = format!("{name} entry {} overrides {constants:?}", entry.name);
                // wgpu's GL backend has no f16 (SHADER_F16 is never offered there), so the f16
                // forms are translated for Vulkan, Metal and DX12 only; wgpu offers cooperative
                // matrices on Vulkan and Metal only.
                let targets = if uses_cooperative_matrices(kernel) {
                    Targets::VULKAN_AND_METAL
                } else if precision == Precision::F32 {
                    Targets::ALL
                } else {
                    Targets::ALL_BUT_GL
                };
                translate_all(&resolved, &resolved_info, entry, &context, targets);
                translated += 1;
            }
        }
    }
    assert!(
        translated >= ALL_KERNELS.len() * 2,
        "too few forms were translated"
    );
}

/// Which backend languages a shader form must translate to.
#[derive(Clone, Copy)]
struct Targets {
    hlsl: bool,
    glsl: bool,
}

impl Targets {
    const ALL: Targets = Targets {
        hlsl: true,
        glsl: true,
    };
    const ALL_BUT_GL: Targets = Targets {
        hlsl: true,
        glsl: false,
    };
    const VULKAN_AND_METAL: Targets = Targets {
        hlsl: false,
        glsl: false,
    };
}

fn translate_all(
    module: &naga::Module,
    info: &ModuleInfo,
    entry: &naga::EntryPoint,
    context: &str,
    targets: Targets,
) {
    let spirv = naga::back::spv::write_vec(
        module,
        info,
        &naga::back::spv::Options::default(),
        Some(&naga::back::spv::PipelineOptions {
            shader_stage: entry.stage,
            entry_point: entry.name.clone(),
        }),
    )
    .unwrap_or_else(|error| panic!("{context}: SPIR-V: {error}"));
    assert!(!spirv.is_empty(), "{context}: empty SPIR-V");

    // MSL 2.3 is the first with the simdgroup matrices that cooperative matrices map to.
    let msl_options = naga::back::msl::Options {
        lang_version: (2, 3),
        ..Default::default()
    };
    let (msl, _) = naga::back::msl::write_string(
        module,
        info,
        &msl_options,
        &naga::back::msl::PipelineOptions {
            entry_point: Some((entry.stage, entry.name.clone())),
            ..Default::default()
        },
    )
    .unwrap_or_else(|error| panic!("{context}: MSL: {error}"));
    assert!(msl.contains("kernel"), "{context}: MSL has no kernel");

    if !targets.hlsl {
        return;
    }
    let mut hlsl = String::new();
    let hlsl_options = naga::back::hlsl::Options {
        // 6.2 is the first shader model with 16-bit types.
        shader_model: naga::back::hlsl::ShaderModel::V6_2,
        ..Default::default()
    };
    let hlsl_pipeline = naga::back::hlsl::PipelineOptions {
        entry_point: Some((entry.stage, entry.name.clone())),
    };
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
        .write(module, info, None)
        .unwrap_or_else(|error| panic!("{context}: HLSL: {error}"));
    assert!(
        hlsl.contains("numthreads"),
        "{context}: HLSL has no entry point"
    );

    if !targets.glsl {
        return;
    }
    let mut glsl = String::new();
    let glsl_options = naga::back::glsl::Options {
        version: naga::back::glsl::Version::new_gles(310),
        ..Default::default()
    };
    let glsl_pipeline = naga::back::glsl::PipelineOptions {
        shader_stage: entry.stage,
        entry_point: entry.name.clone(),
        multiview: None,
    };
    naga::back::glsl::Writer::new(
        &mut glsl,
        module,
        info,
        &glsl_options,
        &glsl_pipeline,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut writer| writer.write())
    .unwrap_or_else(|error| panic!("{context}: GLSL: {error}"));
    assert!(
        glsl.contains("local_size_x"),
        "{context}: GLSL has no workgroup size"
    );
}

#[test]
fn a_broken_shader_is_rejected() {
    // The check above must be able to fail: a type error does not validate.
    let source = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
    let parsed = naga::front::wgsl::parse_str(source);
    let rejected = match parsed {
        Err(_) => true,
        Ok(module) => Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .is_err(),
    };
    assert!(rejected);
}

/// The cooperative-matrix GEMMs (one subgroup per workgroup, and staged) in the forms the host
/// builds, f32 and f16.
fn cooperative_gemm_forms() -> Vec<(Precision, String)> {
    let kernels = [
        &resgraph::kernels::gemm::GEMM_COOPERATIVE_KERNEL,
        &resgraph::kernels::gemm::GEMM_COOPERATIVE_STAGED_KERNEL,
        &resgraph::kernels::gemm::GEMM_COOPERATIVE_STAGED_VEC4_KERNEL,
    ];
    kernels
        .into_iter()
        .flat_map(|kernel| {
            assert!(uses_cooperative_matrices(kernel));
            PRECISIONS
                .into_iter()
                .map(|precision| (precision, generate(kernel, precision)))
        })
        .collect()
}

#[test]
fn the_cooperative_gemm_validates_only_with_the_cooperative_matrix_capability() {
    for (precision, source) in cooperative_gemm_forms() {
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|error| panic!("{precision}: {}", error.emit_to_string(&source)));
        // The f16 form uses 16x16 f16 operand tiles and f32 accumulators; the f32 form 8x8 f32.
        let (side, operand_width) = if precision == Precision::F16 {
            (16, 2)
        } else {
            (8, 4)
        };
        let mut tile_types = 0;
        for (_, ty) in module.types.iter() {
            if let naga::TypeInner::CooperativeMatrix {
                columns,
                rows,
                scalar,
                role,
            } = ty.inner
            {
                assert_eq!((columns as u32, rows as u32), (side, side), "{precision}");
                let expected_width = if role == naga::CooperativeRole::C {
                    4
                } else {
                    operand_width
                };
                assert_eq!(scalar.width, expected_width, "{precision} {role:?}");
                tile_types += 1;
            }
        }
        assert_eq!(tile_types, 3, "{precision}: the A, B and C tile types");

        let without = Capabilities::all() - Capabilities::COOPERATIVE_MATRIX;
        assert!(
            Validator::new(ValidationFlags::all(), without)
                .validate(&module)
                .is_err(),
            "{precision}: validated without the cooperative-matrix capability"
        );
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|error| panic!("{precision}: {error:?}"));
        let entry = &module.entry_points[0];
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((entry.stage, &entry.name)),
            &PipelineConstants::default(),
        )
        .unwrap_or_else(|error| panic!("{precision}: overrides: {error}"));
        let spirv = naga::back::spv::write_vec(
            &module,
            &info,
            &naga::back::spv::Options::default(),
            Some(&naga::back::spv::PipelineOptions {
                shader_stage: entry.stage,
                entry_point: entry.name.clone(),
            }),
        )
        .unwrap_or_else(|error| panic!("{precision}: SPIR-V: {error}"));
        // OpCapability CooperativeMatrixKHR (6022) must be declared: the word pair is
        // (2 << 16 | OpCapability = 17, 6022).
        let declares_capability = spirv.windows(2).any(|pair| pair == [(2 << 16) | 17, 6022]);
        assert!(
            declares_capability,
            "{precision}: SPIR-V without CooperativeMatrixKHR"
        );
    }
}
