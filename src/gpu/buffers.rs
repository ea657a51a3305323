//! Device buffers by role: creation with the device's limits checked first, upload, and readback
//! through a staging buffer.

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::precision::Precision;

/// The usages of a buffer that kernels bind as storage and the host may fill or read.
pub const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// Checks that a storage buffer of `bytes` can be created and bound whole on this device.
pub fn check_storage_size(context: &GpuContext, what: &str, bytes: u64) -> Result<()> {
    let limits = context.limits();
    let checks = [
        (
            "max_storage_buffer_binding_size",
            limits.max_storage_buffer_binding_size,
        ),
        ("max_buffer_size", limits.max_buffer_size),
    ];
    for (limit_name, limit) in checks {
        if bytes > limit {
            return Err(Error::BufferTooLarge {
                what: what.to_string(),
                requested: bytes,
                limit_name,
                limit,
                adapter: context.adapter_info().name.clone(),
            });
        }
    }
    Ok(())
}

/// Creates a storage buffer of `bytes` (rounded up to a multiple of 4, at least 4) after checking
/// the device's limits, inside an error scope.
pub fn create_storage_buffer(
    context: &GpuContext,
    label: &str,
    bytes: u64,
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    let size = bytes.max(4).next_multiple_of(4);
    check_storage_size(context, label, size)?;
    context.scoped(&format!("creating buffer {label}"), || {
        context.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        })
    })
}

/// Creates a storage buffer holding `data`.
pub fn upload_storage_buffer(
    context: &GpuContext,
    label: &str,
    data: &[u8],
) -> Result<wgpu::Buffer> {
    let buffer = create_storage_buffer(context, label, data.len() as u64, STORAGE_USAGE)?;
    context.scoped(&format!("uploading {label}"), || {
        context.queue().write_buffer(&buffer, 0, data);
    })?;
    Ok(buffer)
}

/// Copies the first `bytes` bytes (a multiple of 4) of `buffer` back to the host and waits.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_bytes(context: &GpuContext, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
    pollster::block_on(read_bytes_async(context, buffer, bytes))
}

/// As [`read_bytes`], awaited (on the web, the browser completes the map).
pub async fn read_bytes_async(
    context: &GpuContext,
    buffer: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<u8>> {
    read_bytes_at(context, buffer, 0, bytes).await
}

/// As [`read_bytes_async`], from `offset` bytes into `buffer`.
async fn read_bytes_at(
    context: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
) -> Result<Vec<u8>> {
    let staging = context.scoped("creating a readback buffer", || {
        context.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("resgraph readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })?;
    context.scoped("copying results to the readback buffer", || {
        let mut encoder =
            context
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("resgraph readback"),
                });
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, bytes);
        context.queue().submit([encoder.finish()]);
    })?;
    map_and_read_bytes(context, &staging, bytes).await
}

/// Maps a `MAP_READ` buffer whose copy has been submitted, waits for the map without blocking
/// where the platform drives the device (the web), and returns its first `bytes` bytes. The
/// buffer is unmapped again before returning.
pub async fn map_and_read_bytes(
    context: &GpuContext,
    staging: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<u8>> {
    let slice = staging.slice(..bytes.max(4));
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        // The receiver only disappears if the caller is gone; nothing is left to tell then.
        let _ = sender.send(result);
    });
    context.wait_idle_async().await?;
    match receiver.receive().await {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            return Err(Error::Readback {
                reason: error.to_string(),
            });
        }
        None => {
            return Err(Error::Readback {
                reason: "the map callback was dropped without running".to_string(),
            });
        }
    }
    let values = {
        let view = slice.get_mapped_range().map_err(|error| Error::Readback {
            reason: error.to_string(),
        })?;
        view[..bytes as usize].to_vec()
    };
    staging.unmap();
    Ok(values)
}

/// A row-major matrix in a device storage buffer (the whole buffer, or a range of it from
/// `offset`), stored as f32 or f16.
#[derive(Debug)]
pub struct DeviceMatrix {
    buffer: wgpu::Buffer,
    /// Where the matrix starts in the buffer, in bytes (a multiple of the device's
    /// `min_storage_buffer_offset_alignment`).
    offset: u64,
    rows: usize,
    cols: usize,
    precision: Precision,
}

impl DeviceMatrix {
    /// Allocates an uninitialised `rows` × `cols` f32 matrix (checked against the device's
    /// limits).
    pub fn new(context: &GpuContext, label: &str, rows: usize, cols: usize) -> Result<Self> {
        Self::new_with_precision(context, label, rows, cols, Precision::F32)
    }

    /// Allocates an uninitialised `rows` × `cols` matrix stored in `precision`.
    pub fn new_with_precision(
        context: &GpuContext,
        label: &str,
        rows: usize,
        cols: usize,
        precision: Precision,
    ) -> Result<Self> {
        if rows == 0 {
            return Err(Error::zero_sized(label, "rows"));
        }
        if cols == 0 {
            return Err(Error::zero_sized(label, "cols"));
        }
        let bytes = (rows as u64)
            .saturating_mul(cols as u64)
            .saturating_mul(precision.element_bytes());
        let buffer = create_storage_buffer(context, label, bytes, STORAGE_USAGE)?;
        Ok(DeviceMatrix {
            buffer,
            offset: 0,
            rows,
            cols,
            precision,
        })
    }

    /// Views an existing storage buffer as a `rows` × `cols` matrix stored in `precision`, in its
    /// first `rows * cols` values. The buffer must be that large and have storage usage.
    pub fn from_buffer_with_precision(
        buffer: wgpu::Buffer,
        rows: usize,
        cols: usize,
        precision: Precision,
    ) -> Result<Self> {
        if rows == 0 {
            return Err(Error::zero_sized("matrix view", "rows"));
        }
        if cols == 0 {
            return Err(Error::zero_sized("matrix view", "cols"));
        }
        let needed = (rows as u64)
            .saturating_mul(cols as u64)
            .saturating_mul(precision.element_bytes());
        if buffer.size() < needed {
            return Err(Error::BufferUsage {
                what: "matrix view".to_string(),
                expected: format!(
                    "a buffer of at least {needed} bytes ({rows}x{cols} {precision})"
                ),
                actual: format!("{} bytes", buffer.size()),
            });
        }
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::BufferUsage {
                what: "matrix view".to_string(),
                expected: "a buffer with STORAGE usage".to_string(),
                actual: format!("usage {:?}", buffer.usage()),
            });
        }
        Ok(DeviceMatrix {
            buffer,
            offset: 0,
            rows,
            cols,
            precision,
        })
    }

    /// Views `rows` × `cols` values stored in `precision` from `offset` bytes into a host's
    /// storage buffer. The offset must be a multiple of the device's
    /// `min_storage_buffer_offset_alignment`, and the range (rounded up to whole 4-byte words)
    /// must lie inside the buffer: both are typed errors, checked here.
    pub fn from_buffer_range(
        context: &GpuContext,
        buffer: wgpu::Buffer,
        offset: u64,
        (rows, cols): (usize, usize),
        precision: Precision,
    ) -> Result<Self> {
        // WebGPU makes the alignment at least 4 bytes; a smaller report is taken as 4.
        let alignment = u64::from(context.limits().min_storage_buffer_offset_alignment).max(4);
        if !offset.is_multiple_of(alignment) {
            return Err(Error::BufferUsage {
                what: "matrix view".to_string(),
                expected: format!(
                    "an offset that is a multiple of the device's \
                     min_storage_buffer_offset_alignment ({alignment} bytes)"
                ),
                actual: format!("offset {offset}"),
            });
        }
        let whole = Self::from_buffer_with_precision(buffer, rows, cols, precision)?;
        let end = offset.saturating_add(whole.bytes());
        if end > whole.buffer.size() {
            return Err(Error::BufferUsage {
                what: "matrix view".to_string(),
                expected: format!(
                    "{} bytes ({rows}x{cols} {precision}) from offset {offset}",
                    whole.bytes()
                ),
                actual: format!("a buffer of {} bytes", whole.buffer.size()),
            });
        }
        Ok(DeviceMatrix { offset, ..whole })
    }

    /// The same range of the same buffer viewed as `rows` × `cols` values (at most as many as
    /// this view holds), for the executor's reshaped views of one value.
    pub(crate) fn reshaped(&self, rows: usize, cols: usize) -> Result<Self> {
        let view =
            Self::from_buffer_with_precision(self.buffer.clone(), rows, cols, self.precision)?;
        if view.bytes() > self.bytes() {
            return Err(Error::shape_mismatch(
                "matrix view",
                format!("at most {} values", self.len()),
                format!("{rows}x{cols}"),
            ));
        }
        Ok(DeviceMatrix {
            offset: self.offset,
            ..view
        })
    }

    /// Allocates a `rows` × `cols` matrix holding `data` (row-major).
    pub fn from_host(
        context: &GpuContext,
        label: &str,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<Self> {
        let matrix = Self::new(context, label, rows, cols)?;
        matrix.write(context, data)?;
        Ok(matrix)
    }

    /// Overwrites the whole matrix with `data` (row-major, `rows * cols` values), converted to the
    /// matrix's precision.
    pub fn write(&self, context: &GpuContext, data: &[f32]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::shape_mismatch(
                "matrix upload",
                format!("{} values ({}x{})", self.len(), self.rows, self.cols),
                format!("{} values", data.len()),
            ));
        }
        let mut bytes = self.precision.encode(data);
        // Buffer writes go in multiples of 4 bytes; the buffer is allocated rounded up to that.
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        context.scoped("uploading a matrix", || {
            context
                .queue()
                .write_buffer(&self.buffer, self.offset, &bytes);
        })
    }

    /// Sets every element to `value` (tests poison outputs with NaN this way).
    pub fn fill(&self, context: &GpuContext, value: f32) -> Result<()> {
        self.write(context, &vec![value; self.len()])
    }

    /// Copies the matrix back to the host (as f32 whatever it is stored as).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, context: &GpuContext) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(context))
    }

    /// As [`Self::read`], awaited.
    pub async fn read_async(&self, context: &GpuContext) -> Result<Vec<f32>> {
        let bytes = self.len() as u64 * self.precision.element_bytes();
        // Copies must be a multiple of 4 bytes; an odd-length f16 matrix reads one pad element.
        let bytes_read = read_bytes_at(
            context,
            &self.buffer,
            self.offset,
            bytes.next_multiple_of(4),
        )
        .await?;
        let mut values = self.precision.decode(&bytes_read);
        values.truncate(self.len());
        Ok(values)
    }

    /// How the matrix is stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Always false: a matrix has at least one row and one column.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Where the matrix starts in its buffer, in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes the matrix occupies, rounded up to whole 4-byte words (the granularity of bindings
    /// and copies).
    pub fn bytes(&self) -> u64 {
        (self.len() as u64 * self.precision.element_bytes()).next_multiple_of(4)
    }

    /// The matrix's range of its buffer, as a kernel binds it.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.bytes()),
        })
    }

    /// Whether the two matrices share any byte of one buffer (a kernel must not write what it
    /// reads).
    pub fn overlaps(&self, other: &DeviceMatrix) -> bool {
        self.buffer == other.buffer
            && self.offset < other.offset + other.bytes()
            && other.offset < self.offset + self.bytes()
    }
}
