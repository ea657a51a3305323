//! Host side of the fused `act(X·Wᵀ + b [+ R])` GEMM kernels (`shaders/gemm*.wgsl`).
//!
//! A layer's weights are converted once, at upload, from PyTorch's `[out, in]` layout to the
//! kernels' blocked layout `[ceil(out/16)][in_padded][16]` (`in_padded` the next multiple of 8);
//! after that a dispatch is prepared once (pipeline, parameters, bind group) and can be recorded
//! into any number of compute passes.
//!
//! Three shader variants share the weight layout: a portable one, a faster one that shares
//! weights across a subgroup, and one on cooperative matrices (tensor cores) for adapters that
//! have wgpu's experimental feature. Which one runs a layer is decided by `crate::select`, by
//! rule or by measuring (`crate::tune`).

use crate::epilogue::{Activation, Epilogue};
use crate::error::{Error, Result};
use crate::gpu::buffers::{self, DeviceMatrix};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::BindingKind;
use crate::kernels::launch::{
    LaunchDescriptor, LaunchShape, PreparedKernel, check_operands, param_bytes, to_u32,
};
use crate::kernels::source::{
    ACTIVATION, FUSED_EPILOGUE, GEMM_PARAMS, KernelSource, OPERAND_BINDINGS, no_declarations,
};
use crate::precision::Precision;
use crate::shape::check_linear_shape;

use super::workgroup_count;

/// The bindings of the GEMM kernels, in binding order (the cooperative kernel leaves binding 6
/// unused).
const GEMM_BINDINGS: &[BindingKind] = &[
    BindingKind::Uniform,          // 0: params
    BindingKind::StorageRead,      // 1: activations X [rows, inner]
    BindingKind::StorageRead,      // 2: weights, 16-column blocks
    BindingKind::StorageRead,      // 3: bias, padded to 16
    BindingKind::StorageRead,      // 4: residual R [rows, cols]
    BindingKind::StorageReadWrite, // 5: output [rows, cols]
    // 6: X again, read as vec4 where the inner dimension is a multiple of 4 (a placeholder
    // otherwise, and unused by the cooperative kernel).
    BindingKind::StorageRead,
];

/// The portable GEMM: register blocking only, runs on every adapter.
pub const GEMM_PORTABLE_KERNEL: KernelSource = KernelSource {
    name: "gemm",
    body: include_str!("../../shaders/gemm.wgsl"),
    pieces: &[GEMM_PARAMS, OPERAND_BINDINGS, ACTIVATION, FUSED_EPILOGUE],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "gemm",
    bindings: GEMM_BINDINGS,
};

/// The subgroup GEMM: weights shared across 8 invocations with `subgroupBroadcast`.
pub const GEMM_SUBGROUP_KERNEL: KernelSource = KernelSource {
    name: "gemm_subgroup",
    body: include_str!("../../shaders/gemm_subgroup.wgsl"),
    pieces: &[GEMM_PARAMS, OPERAND_BINDINGS, ACTIVATION, FUSED_EPILOGUE],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "gemm",
    bindings: GEMM_BINDINGS,
};

/// The small-batch GEMM: each workgroup's invocations split the inner dimension of 4 rows × 16
/// columns and reduce through workgroup memory (a GPU's matrix-vector product).
pub const GEMM_SMALL_BATCH_KERNEL: KernelSource = KernelSource {
    name: "gemm_small_batch",
    body: include_str!("../../shaders/gemm_small_batch.wgsl"),
    pieces: &[GEMM_PARAMS, OPERAND_BINDINGS, ACTIVATION, FUSED_EPILOGUE],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "gemm",
    bindings: GEMM_BINDINGS,
};

/// The tiled GEMM family: block and micro-tiles, slice depth, workgroup shape and prefetching
/// set per pipeline from a [`TiledGemmConfig`]; the GPU's shape of GEMM (workgroup memory and
/// barriers).
pub const GEMM_TILED_KERNEL: KernelSource = KernelSource {
    name: "gemm_tiled",
    body: include_str!("../../shaders/gemm_tiled.wgsl"),
    pieces: &[GEMM_PARAMS, OPERAND_BINDINGS, ACTIVATION, FUSED_EPILOGUE],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "gemm",
    bindings: GEMM_BINDINGS,
};

/// The cooperative-matrix GEMM: tiles multiplied with `coopMultiplyAdd`, staged through
/// workgroup memory, with the same fused epilogue. Its tile types follow the precision
/// ([`cooperative_declarations`]).
pub const GEMM_COOPERATIVE_KERNEL: KernelSource = KernelSource {
    name: "gemm_cooperative",
    body: include_str!("../../shaders/gemm_cooperative.wgsl"),
    pieces: &[GEMM_PARAMS, ACTIVATION, FUSED_EPILOGUE],
    extensions: &["wgpu_cooperative_matrix"],
    declarations: cooperative_declarations,
    entry_point: "gemm",
    bindings: GEMM_BINDINGS,
};

/// The staged cooperative-matrix GEMM: 2 × 2 subgroups per workgroup, each with 4 × 4
/// accumulator tiles, operand slices two tiles deep staged in workgroup memory, the same fused
/// epilogue (the structure that reached 196–219 TFLOP/s in WGSL on an H200).
pub const GEMM_COOPERATIVE_STAGED_KERNEL: KernelSource = KernelSource {
    name: "gemm_cooperative_staged",
    body: include_str!("../../shaders/gemm_cooperative_staged.wgsl"),
    pieces: &[GEMM_PARAMS, OPERAND_BINDINGS, ACTIVATION, FUSED_EPILOGUE],
    extensions: &["wgpu_cooperative_matrix"],
    declarations: cooperative_staged_scalar_declarations,
    entry_point: "gemm",
    bindings: GEMM_BINDINGS,
};

/// The staged cooperative GEMM with its workgroup arrays of `vec4<Scalar>`: one staging store
/// per four values (the H200 probe's last step, 196 → 219 TFLOP/s), with `coopLoadT` reading a
/// vector array. Offered beside the scalar form, so that a driver that reads such an array
/// otherwise than the probe's did is caught by the tuner's check, not trusted.
pub const GEMM_COOPERATIVE_STAGED_VEC4_KERNEL: KernelSource = KernelSource {
    name: "gemm_cooperative_staged_vec4",
    declarations: cooperative_staged_vec4_declarations,
    ..GEMM_COOPERATIVE_STAGED_KERNEL
};

/// The staged cooperative GEMM's declarations with scalar staging arrays: the tile types, and
/// stores of four values as four scalars.
pub fn cooperative_staged_scalar_declarations(precision: Precision) -> String {
    cooperative_declarations(precision)
        + "const STAGE_WIDTH: u32 = 1u;\n\
           alias Stage = Scalar;\n\
           fn stage_activations(at: u32, value: vec4<Scalar>) {\n\
           \x20   staged_activations[at] = value.x;\n\
           \x20   staged_activations[at + 1u] = value.y;\n\
           \x20   staged_activations[at + 2u] = value.z;\n\
           \x20   staged_activations[at + 3u] = value.w;\n\
           }\n\
           fn stage_weights(at: u32, value: vec4<Scalar>) {\n\
           \x20   staged_weights[at] = value.x;\n\
           \x20   staged_weights[at + 1u] = value.y;\n\
           \x20   staged_weights[at + 2u] = value.z;\n\
           \x20   staged_weights[at + 3u] = value.w;\n\
           }\n"
}

/// The staged cooperative GEMM's declarations with `vec4` staging arrays: the tile types, and
/// one store per four values (`at`, in scalars, is always a multiple of 4).
pub fn cooperative_staged_vec4_declarations(precision: Precision) -> String {
    cooperative_declarations(precision)
        + "const STAGE_WIDTH: u32 = 4u;\n\
           alias Stage = vec4<Scalar>;\n\
           fn stage_activations(at: u32, value: vec4<Scalar>) {\n\
           \x20   staged_activations[at / 4u] = value;\n\
           }\n\
           fn stage_weights(at: u32, value: vec4<Scalar>) {\n\
           \x20   staged_weights[at / 4u] = value;\n\
           }\n"
}

/// Subgroups per workgroup of the staged cooperative GEMM (`SUBGROUPS` in its shader).
pub const COOPERATIVE_STAGED_SUBGROUPS: u32 = 4;

/// The cooperative GEMM's precision-dependent declarations: the tile side `TILE` and the tile
/// types of [`cooperative_config`] (8×8 f32 operands, or 16×16 f16 operands; f32 accumulators).
pub fn cooperative_declarations(precision: Precision) -> String {
    let side = cooperative_config(precision).m_size;
    format!(
        "const TILE: u32 = {side}u;\n\
         alias TileA = coop_mat{side}x{side}<Scalar, A>;\n\
         alias TileB = coop_mat{side}x{side}<Scalar, B>;\n\
         alias TileC = coop_mat{side}x{side}<f32, C>;\n"
    )
}

/// Output rows each invocation keeps in registers.
pub const ROWS_PER_INVOCATION: u32 = 4;
/// Output columns per workgroup: one block of the weight layout.
pub const COLUMN_BLOCK: usize = 16;
/// The weight layout pads the inner dimension to a multiple of this (the subgroup chunk).
pub const INNER_CHUNK: usize = 8;
/// Invocations per workgroup (`WORKGROUP_SIZE` in the shaders).
pub const WORKGROUP_SIZE: u32 = 64;
/// Rows one workgroup covers.
pub const ROWS_PER_WORKGROUP: u32 = WORKGROUP_SIZE * ROWS_PER_INVOCATION;
/// Rows one workgroup of the small-batch GEMM covers (`ROWS` in its shader).
pub const SMALL_BATCH_ROWS: usize = 4;
/// Invocations per workgroup of the small-batch GEMM (`THREADS` in its shader).
pub const SMALL_BATCH_WORKGROUP_SIZE: u32 = 64;
/// The largest batch the tuner times the small-batch GEMM for: past it, its workgroups (4 rows
/// each) read every weight once per 4 rows, which the tiled kernels beat.
pub const SMALL_BATCH_MAX_ROWS: usize = 64;

/// Which GEMM shader runs a dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmVariant {
    /// `shaders/gemm.wgsl`: register blocking, no optional features.
    Portable,
    /// `shaders/gemm_subgroup.wgsl`: register blocking plus weights shared through subgroup
    /// broadcasts; measured 2-4x faster than the portable variant on lavapipe.
    Subgroup,
    /// `shaders/gemm_cooperative.wgsl`: cooperative matrices (tensor cores), 8×8 f32 tiles or
    /// 16×16 f16 tiles with f32 accumulators. Needs `EXPERIMENTAL_COOPERATIVE_MATRIX`, the tile
    /// configuration in the adapter's list, and a fixed subgroup size; chosen only by measuring.
    Cooperative,
    /// `shaders/gemm_cooperative_staged.wgsl`: cooperative matrices with 4 subgroups per
    /// workgroup, 16 accumulator tiles each and slices staged in workgroup memory (a 128 × 128
    /// block for f16). Needs what [`Self::Cooperative`] needs, a workgroup of 4 subgroups and its
    /// workgroup memory; chosen only by measuring.
    CooperativeStaged,
    /// The same shader with workgroup arrays of `vec4` (one staging store per four values);
    /// needs what [`Self::CooperativeStaged`] needs; chosen only by measuring.
    CooperativeStagedVec4,
    /// `shaders/gemm_small_batch.wgsl`: 64 invocations split the inner dimension of 4 rows × 16
    /// columns and reduce through workgroup memory; for batches of a few rows on GPUs. Needs no
    /// optional feature; chosen only by measuring.
    SmallBatch,
    /// `shaders/gemm_tiled.wgsl` at one point of its family: operand slices staged in workgroup
    /// memory, a micro-tile per invocation. Needs the workgroup memory and invocations its point
    /// asks for; chosen only by measuring (the tuner searches [`TiledGemmConfig::family`]).
    Tiled(TiledGemmConfig),
}

impl GemmVariant {
    /// Every variant, for tests and benchmarks; the tiled family by its default point
    /// ([`TiledGemmConfig::family`] lists the others).
    pub const ALL: [GemmVariant; 7] = [
        GemmVariant::Portable,
        GemmVariant::Subgroup,
        GemmVariant::Cooperative,
        GemmVariant::CooperativeStaged,
        GemmVariant::CooperativeStagedVec4,
        GemmVariant::SmallBatch,
        GemmVariant::Tiled(TiledGemmConfig::DEFAULT),
    ];

    /// The variant's name as the tuning cache and `bench` report it: the shader's name, and for
    /// the tiled family its point (`gemm_tiled/16x16t/8x8/k16/prefetch`).
    pub fn label(self) -> String {
        match self {
            GemmVariant::Tiled(config) => format!("{}/{}", GEMM_TILED_KERNEL.name, config.label()),
            other => other.kernel().name.to_string(),
        }
    }

    /// The variant a [`Self::label`] names, for reading the tuning cache: any tiled point of the
    /// family, not only the default.
    pub fn from_label(label: &str) -> Option<Self> {
        if let Some(point) = label
            .strip_prefix(GEMM_TILED_KERNEL.name)
            .and_then(|rest| rest.strip_prefix('/'))
        {
            return TiledGemmConfig::family()
                .into_iter()
                .find(|config| config.label() == point)
                .map(GemmVariant::Tiled);
        }
        GemmVariant::ALL
            .into_iter()
            .filter(|variant| !matches!(variant, GemmVariant::Tiled(_)))
            .find(|variant| variant.kernel().name == label)
    }

    /// Whether the device can run this variant with `precision` storage: the subgroup variant
    /// needs the `SUBGROUP` feature and subgroups of at least 8 invocations; the cooperative one
    /// needs the tile configuration of [`cooperative_config`] and a fixed subgroup size.
    pub fn supported_by(self, context: &GpuContext, precision: Precision) -> bool {
        let info = context.adapter_info();
        match self {
            GemmVariant::Portable | GemmVariant::SmallBatch => true,
            GemmVariant::Tiled(config) => config.check_limits(context).is_ok(),
            GemmVariant::Subgroup => {
                context.features().contains(wgpu::Features::SUBGROUP)
                    && info.subgroup_min_size >= INNER_CHUNK as u32
            }
            GemmVariant::Cooperative
            | GemmVariant::CooperativeStaged
            | GemmVariant::CooperativeStagedVec4 => {
                let wanted = cooperative_config(precision);
                let limits = context.limits();
                let (subgroups, workgroup_bytes) = match self {
                    GemmVariant::Cooperative => (1, 0),
                    _ => (
                        COOPERATIVE_STAGED_SUBGROUPS,
                        cooperative_staged_workgroup_bytes(precision),
                    ),
                };
                context.features().contains(wgpu::Features::SUBGROUP)
                    && fixed_subgroup_size(context).is_some_and(|size| {
                        size * subgroups <= limits.max_compute_invocations_per_workgroup
                            && size * subgroups <= limits.max_compute_workgroup_size_x
                    })
                    && workgroup_bytes <= u64::from(limits.max_compute_workgroup_storage_size)
                    && context.cooperative_matrix_configs().contains(&wanted)
            }
        }
    }

    /// Whether a dispatch of this variant for `rows` × `cols` outputs fits the device's
    /// workgroup-count limit (the cooperative variant's workgroups cover fewer rows).
    pub fn fits(
        self,
        context: &GpuContext,
        precision: Precision,
        rows: usize,
        cols: usize,
    ) -> bool {
        let (rows_per_workgroup, cols_per_workgroup) = self.workgroup_tile(precision);
        workgroup_count("gemm rows", rows, rows_per_workgroup, context).is_ok()
            && workgroup_count("gemm columns", cols, cols_per_workgroup, context).is_ok()
    }

    /// What the device lacks when [`Self::supported_by`] is false, for the error message.
    fn requirement(self) -> &'static str {
        match self {
            GemmVariant::Portable | GemmVariant::SmallBatch => "nothing",
            // Reported by `TiledGemmConfig::check_limits` as a `DeviceLimit` error instead.
            GemmVariant::Tiled(_) => "the workgroup memory and invocations of its point",
            GemmVariant::Subgroup => "SUBGROUP (with subgroups of at least 8 invocations)",
            GemmVariant::Cooperative => {
                "EXPERIMENTAL_COOPERATIVE_MATRIX with 8x8x8 f32 tiles (f32) or 16x16x16 f16 tiles \
                 with f32 accumulators (f16), and a known fixed subgroup size"
            }
            GemmVariant::CooperativeStaged | GemmVariant::CooperativeStagedVec4 => {
                "EXPERIMENTAL_COOPERATIVE_MATRIX with 8x8x8 f32 tiles (f32) or 16x16x16 f16 tiles \
                 with f32 accumulators (f16), a known fixed subgroup size, workgroups of 4 \
                 subgroups and 20 KiB of workgroup memory"
            }
        }
    }

    /// The shader of this variant.
    pub fn kernel(self) -> &'static KernelSource {
        match self {
            GemmVariant::Portable => &GEMM_PORTABLE_KERNEL,
            GemmVariant::Subgroup => &GEMM_SUBGROUP_KERNEL,
            GemmVariant::Cooperative => &GEMM_COOPERATIVE_KERNEL,
            GemmVariant::CooperativeStaged => &GEMM_COOPERATIVE_STAGED_KERNEL,
            GemmVariant::CooperativeStagedVec4 => &GEMM_COOPERATIVE_STAGED_VEC4_KERNEL,
            GemmVariant::SmallBatch => &GEMM_SMALL_BATCH_KERNEL,
            GemmVariant::Tiled(_) => &GEMM_TILED_KERNEL,
        }
    }

    /// Invocations per workgroup on `context`: the cooperative variant runs one subgroup per
    /// workgroup.
    pub fn workgroup_size(self, context: &GpuContext) -> u32 {
        match self {
            GemmVariant::Portable | GemmVariant::Subgroup => WORKGROUP_SIZE,
            GemmVariant::Cooperative => fixed_subgroup_size(context).unwrap_or(WORKGROUP_SIZE),
            GemmVariant::CooperativeStaged | GemmVariant::CooperativeStagedVec4 => {
                COOPERATIVE_STAGED_SUBGROUPS
                    * fixed_subgroup_size(context).unwrap_or(WORKGROUP_SIZE)
            }
            // Fixed in the shader, which sizes its reduction arrays by it.
            GemmVariant::SmallBatch => SMALL_BATCH_WORKGROUP_SIZE,
            GemmVariant::Tiled(config) => config.threads(),
        }
    }

    /// Whether the variant reads a layer's activations four at a time (`VEC4_ACTIVATIONS`): the
    /// register-blocked variants do when the inner dimension is a multiple of 4. On lavapipe that
    /// halves the subgroup GEMM's time, because every load instruction, whatever its width,
    /// runs a lane-by-lane loop there.
    pub fn reads_vec4_activations(self, inner: usize) -> bool {
        match self {
            GemmVariant::Portable
            | GemmVariant::Subgroup
            | GemmVariant::Tiled(_)
            | GemmVariant::CooperativeStaged
            | GemmVariant::CooperativeStagedVec4 => inner.is_multiple_of(4),
            GemmVariant::Cooperative | GemmVariant::SmallBatch => false,
        }
    }

    /// Output rows and columns one workgroup covers with `precision` storage.
    pub fn workgroup_tile(self, precision: Precision) -> (usize, usize) {
        match self {
            GemmVariant::Portable | GemmVariant::Subgroup => {
                (ROWS_PER_WORKGROUP as usize, COLUMN_BLOCK)
            }
            GemmVariant::Cooperative => {
                let tile = cooperative_config(precision).m_size as usize;
                (4 * tile, 2 * tile)
            }
            GemmVariant::CooperativeStaged | GemmVariant::CooperativeStagedVec4 => {
                let block = 8 * cooperative_config(precision).m_size as usize;
                (block, block)
            }
            GemmVariant::SmallBatch => (SMALL_BATCH_ROWS, COLUMN_BLOCK),
            GemmVariant::Tiled(config) => {
                (config.block_rows() as usize, config.block_cols() as usize)
            }
        }
    }
}

/// One point of the tiled GEMM family (`shaders/gemm_tiled.wgsl`): each field is one of the
/// shader's `override` constants. The tuner searches [`Self::family`] per adapter and shape;
/// launch code only turns the point into constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TiledGemmConfig {
    /// Invocations along the block's rows (`THREAD_ROWS`).
    pub thread_rows: u32,
    /// Invocations along the block's columns (`THREAD_COLS`).
    pub thread_cols: u32,
    /// Output rows per invocation (`MICRO_ROWS`, at most 8).
    pub micro_rows: u32,
    /// Output columns per invocation (`MICRO_COLS`: 4 or 8).
    pub micro_cols: u32,
    /// Depth of the inner-dimension slice staged per step (`K_DEPTH`, a multiple of 4).
    pub k_depth: u32,
    /// Whether the next slice is loaded into registers while the current one is multiplied
    /// (`PREFETCH`).
    pub prefetch: bool,
}

impl TiledGemmConfig {
    /// The point the family is known by: a 128 × 128 block of 256 invocations, 8 × 8 outputs
    /// each, 16-deep slices, prefetching (the shape of the plain SIMT kernel that reached 32
    /// TFLOP/s in the H200 probe).
    pub const DEFAULT: TiledGemmConfig = TiledGemmConfig {
        thread_rows: 16,
        thread_cols: 16,
        micro_rows: 8,
        micro_cols: 8,
        k_depth: 16,
        prefetch: true,
    };

    /// Every point the tuner may time, in a fixed order: workgroups of 8 × 8, 16 × 8 and
    /// 16 × 16 invocations; micro-tiles of 4 or 8 rows by 4 or 8 columns; slices 8, 16 or 32
    /// deep; with and without prefetching. Blocks thus range from 32 × 32 to 128 × 128.
    pub fn family() -> Vec<TiledGemmConfig> {
        let mut family = Vec::new();
        for (thread_rows, thread_cols) in [(8, 8), (16, 8), (16, 16)] {
            for (micro_rows, micro_cols) in [(4, 4), (4, 8), (8, 4), (8, 8)] {
                for k_depth in [8, 16, 32] {
                    for prefetch in [false, true] {
                        family.push(TiledGemmConfig {
                            thread_rows,
                            thread_cols,
                            micro_rows,
                            micro_cols,
                            k_depth,
                            prefetch,
                        });
                    }
                }
            }
        }
        family
    }

    /// The family in the order the tuner times it for `rows` × `cols` outputs, most promising
    /// first, so that a search cut short by its budget has timed the likeliest winners: least
    /// padding (work on rows and columns past the matrix) first, then the most outputs per
    /// invocation (fewer loads per FMA), then blocks that still give the GPU many workgroups,
    /// then 16-deep slices before 32 and 8, prefetching first.
    pub fn search_order(rows: usize, cols: usize) -> Vec<TiledGemmConfig> {
        let mut family = Self::family();
        family.sort_by_key(|config| {
            let padded = |size: usize, block: u32| size.div_ceil(block as usize) * block as usize;
            let covered = padded(rows, config.block_rows()) * padded(cols, config.block_cols());
            // In tenths: 10 is no padding at all.
            let padding = covered * 10 / (rows * cols).max(1);
            let workgroups = covered / (config.block_rows() * config.block_cols()) as usize;
            // Fewer than about one workgroup per compute unit of a large GPU leaves it idle.
            let starved = workgroups < 128;
            let depth_rank = match config.k_depth {
                16 => 0,
                32 => 1,
                _ => 2,
            };
            (
                padding,
                starved,
                std::cmp::Reverse(config.micro_rows * config.micro_cols),
                std::cmp::Reverse(config.threads()),
                depth_rank,
                !config.prefetch,
            )
        });
        family
    }

    /// Invocations per workgroup.
    pub fn threads(self) -> u32 {
        self.thread_rows * self.thread_cols
    }

    /// Output rows one workgroup covers.
    pub fn block_rows(self) -> u32 {
        self.thread_rows * self.micro_rows
    }

    /// Output columns one workgroup covers.
    pub fn block_cols(self) -> u32 {
        self.thread_cols * self.micro_cols
    }

    /// Bytes of workgroup memory: both operands' slices, in f32.
    pub fn workgroup_bytes(self) -> u64 {
        u64::from(self.k_depth) * u64::from(self.block_rows() + self.block_cols()) * 4
    }

    /// The point as the tuning cache names it, e.g. `16x16t/8x8/k16/prefetch`: invocations,
    /// micro-tile, slice depth and prefetching.
    pub fn label(self) -> String {
        format!(
            "{}x{}t/{}x{}/k{}/{}",
            self.thread_rows,
            self.thread_cols,
            self.micro_rows,
            self.micro_cols,
            self.k_depth,
            if self.prefetch { "prefetch" } else { "direct" }
        )
    }

    /// The shader's `override` constants for this point.
    pub fn constants(self) -> [(&'static str, u32); 6] {
        [
            ("THREAD_ROWS", self.thread_rows),
            ("THREAD_COLS", self.thread_cols),
            ("MICRO_ROWS", self.micro_rows),
            ("MICRO_COLS", self.micro_cols),
            ("K_DEPTH", self.k_depth),
            ("PREFETCH", u32::from(self.prefetch)),
        ]
    }

    /// Checks the point against the shader's fixed bounds (micro-tile, staged registers) and
    /// `context`'s limits (invocations per workgroup, workgroup memory): a
    /// [`DeviceLimit`](Error::DeviceLimit) error naming the limit, or
    /// [`UnsupportedShape`](Error::UnsupportedShape) for a point the shader cannot express.
    pub fn check_limits(self, context: &GpuContext) -> Result<()> {
        let what = format!("the tiled gemm {}", self.label());
        let staged = |slice_vec4: u32| slice_vec4.div_ceil(self.threads().max(1));
        let slice_a = self.block_rows() * self.k_depth / 4;
        let slice_b = self.block_cols() / 4 * self.k_depth;
        let expressible = self.thread_rows > 0
            && self.thread_cols > 0
            && (1..=8).contains(&self.micro_rows)
            && matches!(self.micro_cols, 4 | 8)
            && self.k_depth > 0
            && self.k_depth.is_multiple_of(4)
            && staged(slice_a) <= 8
            && staged(slice_b) <= 8;
        if !expressible {
            return Err(Error::UnsupportedShape {
                kernel: GEMM_TILED_KERNEL.name,
                what,
                reason: "the shader holds at most 8 x 8 outputs per invocation, micro-tiles 4 or \
                         8 columns wide, slices a multiple of 4 deep and at most 8 staged vec4 \
                         per operand and invocation"
                    .to_string(),
            });
        }
        let limits = context.limits();
        let adapter = context.adapter_info().name.clone();
        let checks = [
            (
                "max_compute_invocations_per_workgroup",
                u64::from(self.threads()),
                u64::from(limits.max_compute_invocations_per_workgroup),
            ),
            (
                "max_compute_workgroup_size_x",
                u64::from(self.threads()),
                u64::from(limits.max_compute_workgroup_size_x),
            ),
            (
                "max_compute_workgroup_storage_size",
                self.workgroup_bytes(),
                u64::from(limits.max_compute_workgroup_storage_size),
            ),
        ];
        match checks
            .into_iter()
            .find(|(_, requested, available)| requested > available)
        {
            Some((limit, requested, available)) => Err(Error::DeviceLimit {
                what,
                limit,
                requested,
                available,
                adapter,
            }),
            None => Ok(()),
        }
    }
}

/// The subgroup size every workgroup of the device runs with, when it is known: the cooperative
/// GEMM makes each workgroup exactly one subgroup, because cooperative operations are
/// subgroup-wide and naga does not allow them under a branch on the subgroup index.
///
/// Known where the adapter reports one size (NVIDIA: 32), and on Apple GPUs, whose SIMD-groups
/// are always 32 wide although wgpu's Metal backend reports the range 4–64. Adapters that can
/// run either of two sizes (AMD RDNA: 32 or 64, Intel: 8 to 32) have none, and keep the other
/// variants.
pub fn fixed_subgroup_size(context: &GpuContext) -> Option<u32> {
    let info = context.adapter_info();
    if info.subgroup_min_size > 0 && info.subgroup_min_size == info.subgroup_max_size {
        Some(info.subgroup_min_size)
    } else if info.backend == wgpu::Backend::Metal && info.name.starts_with("Apple") {
        Some(32)
    } else {
        None
    }
}

/// Bytes of workgroup memory the staged cooperative GEMM declares for `precision` storage: both
/// operand slices (a block of 8 tiles by 2 tiles deep each) and one f32 tile per subgroup.
pub fn cooperative_staged_workgroup_bytes(precision: Precision) -> u64 {
    let tile = u64::from(cooperative_config(precision).m_size);
    2 * (8 * tile) * (2 * tile) * precision.element_bytes()
        + u64::from(COOPERATIVE_STAGED_SUBGROUPS) * tile * tile * 4
}

/// The cooperative-matrix configuration the cooperative GEMM uses for `precision` storage:
/// 8×8×8 f32 tiles, or 16×16×16 f16 tiles with f32 accumulators (the tensor-core shape).
pub fn cooperative_config(precision: Precision) -> wgpu::CooperativeMatrixProperties {
    let (side, ab_type) = match precision {
        Precision::F32 => (8, wgpu::CooperativeScalarType::F32),
        Precision::F16 => (16, wgpu::CooperativeScalarType::F16),
    };
    wgpu::CooperativeMatrixProperties {
        m_size: side,
        n_size: side,
        k_size: side,
        ab_type,
        cr_type: wgpu::CooperativeScalarType::F32,
        saturating_accumulation: false,
    }
}

/// The uniform block of the shaders, `GemmParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    rows: u32,
    cols: u32,
    inner: u32,
    inner_padded: u32,
}

/// The GEMM's parameter block and grid: one workgroup per tile of rows and columns.
#[derive(Debug)]
struct GemmLaunch {
    params: GemmParams,
    rows_per_workgroup: u32,
    column_groups: u32,
}

impl LaunchShape for GemmLaunch {
    fn params(&self, rows: u32) -> Vec<u8> {
        param_bytes(&GemmParams {
            rows,
            ..self.params
        })
    }

    fn workgroups(&self, rows: u32) -> [u32; 3] {
        [
            rows.div_ceil(self.rows_per_workgroup),
            self.column_groups,
            1,
        ]
    }
}

/// The `override` constants of one variant and epilogue on `context`, for a layer whose inner
/// dimension is `inner`.
pub fn gemm_constants(
    context: &GpuContext,
    variant: GemmVariant,
    epilogue: Epilogue,
    inner: usize,
) -> Vec<(&'static str, u32)> {
    let mut constants = vec![
        ("ADD_RESIDUAL", u32::from(epilogue.add_residual)),
        (
            "APPLY_RELU",
            u32::from(epilogue.activation == Activation::Relu),
        ),
    ];
    match variant {
        // The small-batch kernel's workgroup size is fixed in its source (its reduction arrays
        // are sized by it).
        GemmVariant::SmallBatch => {}
        // The tiled family's workgroup size follows from its point.
        GemmVariant::Tiled(config) => constants.extend(config.constants()),
        // The workgroup is 4 subgroups, the shader's own multiple.
        GemmVariant::CooperativeStaged | GemmVariant::CooperativeStagedVec4 => constants.push((
            "SUBGROUP_SIZE",
            fixed_subgroup_size(context).unwrap_or(WORKGROUP_SIZE),
        )),
        _ => constants.push(("WORKGROUP_SIZE", variant.workgroup_size(context))),
    }
    if variant.reads_vec4_activations(inner) {
        constants.push(("VEC4_ACTIVATIONS", 1));
    }
    constants
}

/// Converts a PyTorch `[out_features, in_features]` weight to the kernels' layout:
/// `[ceil(out/16)][in_padded][16]` with `in_padded` the next multiple of 8, zero-padded.
pub(crate) fn weights_to_kernel_layout(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
) -> Vec<f32> {
    let blocks = out_features.div_ceil(COLUMN_BLOCK);
    let inner_padded = in_features.next_multiple_of(INNER_CHUNK);
    let mut converted = vec![0.0f32; blocks * inner_padded * COLUMN_BLOCK];
    for (col, row) in weight.chunks_exact(in_features).enumerate() {
        let (block, lane) = (col / COLUMN_BLOCK, col % COLUMN_BLOCK);
        let block_start = block * inner_padded * COLUMN_BLOCK;
        for (k, &value) in row.iter().enumerate() {
            converted[block_start + k * COLUMN_BLOCK + lane] = value;
        }
    }
    converted
}

/// Bytes of the kernel-layout weights of an `out_features` × `in_features` layer.
pub fn kernel_layout_bytes(out_features: usize, in_features: usize, precision: Precision) -> u64 {
    (out_features.div_ceil(COLUMN_BLOCK) * COLUMN_BLOCK) as u64
        * in_features.next_multiple_of(INNER_CHUNK) as u64
        * precision.element_bytes()
}

/// A linear layer's weight and bias on the device, in the GEMM kernel's layout.
#[derive(Debug)]
pub struct LinearWeights {
    weights: wgpu::Buffer,
    bias: wgpu::Buffer,
    in_features: usize,
    out_features: usize,
    precision: Precision,
}

impl LinearWeights {
    /// Uploads a linear layer given as PyTorch stores it: `weight` row-major
    /// `[out_features, in_features]`, `bias` `[out_features]` (zeros when `None`), in f32.
    pub fn upload(
        context: &GpuContext,
        out_features: usize,
        in_features: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Self> {
        Self::upload_with_precision(
            context,
            out_features,
            in_features,
            weight,
            bias,
            Precision::F32,
        )
    }

    /// As [`Self::upload`], with the weights stored in `precision` (the bias stays f32).
    pub fn upload_with_precision(
        context: &GpuContext,
        out_features: usize,
        in_features: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
        precision: Precision,
    ) -> Result<Self> {
        check_linear_shape(
            out_features,
            in_features,
            weight.len(),
            bias.map(<[f32]>::len),
        )?;
        let what = format!("linear layer {out_features}x{in_features}");
        // Check before converting, so that a layer too large for the device fails fast and
        // without a large host allocation.
        precision.check_supported(context.features(), &context.adapter_info().name)?;
        let weight_bytes = kernel_layout_bytes(out_features, in_features, precision);
        buffers::check_storage_size(context, &format!("{what} weights"), weight_bytes)?;

        let converted = weights_to_kernel_layout(weight, out_features, in_features);
        let weights = buffers::upload_storage_buffer(
            context,
            &format!("{what} weights"),
            &precision.encode(&converted),
        )?;
        let bias = super::upload_padded_bias(context, &what, bias, out_features)?;
        Ok(LinearWeights {
            weights,
            bias,
            in_features,
            out_features,
            precision,
        })
    }

    /// The input width K.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The output width N.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// How the weights are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes the layer occupies on the device (weights and bias, padded).
    pub fn device_bytes(&self) -> u64 {
        self.weights.size() + self.bias.size()
    }

    /// The weights in the blocked layout, for the other kernels that read it.
    pub(crate) fn weights_buffer(&self) -> &wgpu::Buffer {
        &self.weights
    }

    /// The bias, f32, zero-padded to a multiple of 16.
    pub(crate) fn bias_buffer(&self) -> &wgpu::Buffer {
        &self.bias
    }
}

/// The operands of one fused GEMM.
#[derive(Clone, Copy, Debug)]
pub struct GemmOperands<'a> {
    /// X, `[rows, in_features]`.
    pub input: &'a DeviceMatrix,
    /// W and b.
    pub weights: &'a LinearWeights,
    /// R, `[rows, out_features]`, added before the activation when present.
    pub residual: Option<&'a DeviceMatrix>,
    /// The result, `[rows, out_features]`; must not be the input or the residual.
    pub output: &'a DeviceMatrix,
    /// The activation applied last.
    pub activation: Activation,
}

impl GemmOperands<'_> {
    /// The epilogue these operands ask for.
    pub fn epilogue(&self) -> Epilogue {
        Epilogue {
            activation: self.activation,
            add_residual: self.residual.is_some(),
        }
    }

    /// Checks every shape against the others, that the output aliases no input and that every
    /// matrix has the weights' precision.
    fn validate(&self) -> Result<()> {
        let (rows, k, n) = (
            self.input.rows(),
            self.weights.in_features(),
            self.weights.out_features(),
        );
        if self.input.cols() != k {
            return Err(Error::shape_mismatch(
                "gemm input",
                format!("{k} columns (the layer's in_features)"),
                format!("{} columns", self.input.cols()),
            ));
        }
        let expected = format!("[{rows}, {n}]");
        for (role, matrix) in [
            ("gemm output", Some(self.output)),
            ("gemm residual", self.residual),
        ] {
            if let Some(matrix) = matrix
                && (matrix.rows(), matrix.cols()) != (rows, n)
            {
                return Err(Error::shape_mismatch(
                    role,
                    &expected,
                    format!("[{}, {}]", matrix.rows(), matrix.cols()),
                ));
            }
        }
        check_operands(
            "gemm operands",
            self.weights.precision(),
            &[("input", Some(self.input)), ("residual", self.residual)],
            self.output,
        )
    }
}

/// Validates the operands and prepares one fused GEMM with `variant`: a
/// [`MissingFeature`](Error::MissingFeature) error when the device cannot run it.
pub fn prepare_gemm(
    context: &GpuContext,
    operands: &GemmOperands<'_>,
    variant: GemmVariant,
) -> Result<PreparedKernel> {
    operands.validate()?;
    let precision = operands.weights.precision();
    if let GemmVariant::Tiled(config) = variant {
        config.check_limits(context)?;
    }
    if !variant.supported_by(context, precision) {
        return Err(Error::MissingFeature {
            what: format!("the {variant:?} gemm variant with {precision} storage"),
            feature: variant.requirement(),
            adapter: context.adapter_info().name.clone(),
        });
    }
    let kernel = variant.kernel();
    let (k, n) = (
        operands.weights.in_features(),
        operands.weights.out_features(),
    );
    let (rows_per_workgroup, columns_per_workgroup) = variant.workgroup_tile(precision);
    let column_groups = workgroup_count("gemm columns", n, columns_per_workgroup, context)?;
    let params = GemmParams {
        rows: to_u32(kernel.name, "gemm rows", operands.input.rows())?,
        cols: to_u32(kernel.name, "gemm columns", n)?,
        inner: to_u32(kernel.name, "gemm inner dimension", k)?,
        inner_padded: to_u32(
            kernel.name,
            "gemm inner dimension",
            k.next_multiple_of(INNER_CHUNK),
        )?,
    };
    // The vec4 view of the activations, or a placeholder that satisfies the binding.
    let activations4 = if variant.reads_vec4_activations(k) {
        operands.input.binding()
    } else {
        context.placeholder_storage().as_entire_binding()
    };
    let residual = operands.residual.map_or_else(
        || context.placeholder_storage().as_entire_binding(),
        DeviceMatrix::binding,
    );
    PreparedKernel::new(
        context,
        LaunchDescriptor {
            label: "gemm",
            kernel,
            precision,
            constants: gemm_constants(context, variant, operands.epilogue(), k),
            resources: &[
                operands.input.binding(),
                operands.weights.weights.as_entire_binding(),
                operands.weights.bias.as_entire_binding(),
                residual,
                operands.output.binding(),
                activations4,
            ],
            max_rows: operands.input.rows(),
            shape: Box::new(GemmLaunch {
                params,
                rows_per_workgroup: rows_per_workgroup as u32,
                column_groups,
            }),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
