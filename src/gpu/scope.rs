//! wgpu's error scopes turned into resgraph's [`Error`]: every wgpu call that can fail runs inside
//! [`capture`], so that wgpu's default handler (which panics) never sees a resgraph error.
//!
//! This module knows only a `wgpu::Device`, so that both the context and the pipeline cache can
//! use it without importing each other.

use crate::error::{Error, Result};

/// Runs `work` inside validation, out-of-memory and internal error scopes of `device` and turns
/// the first error wgpu reports into [`Error::Gpu`], naming `operation`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn capture<T>(
    device: &wgpu::Device,
    operation: &str,
    work: impl FnOnce() -> T,
) -> Result<T> {
    let scopes = push_scopes(device);
    let value = work();
    let errors = scopes.map(|scope| pollster::block_on(scope.pop()));
    first_error(errors, operation).map(|()| value)
}

/// On the web a scope's pop resolves only through the browser's event loop, so nothing can
/// block on it: `work` runs inside whatever scopes are open, and every entry point the web uses
/// is async and runs inside [`capture_future`], whose scopes catch what `work` raises.
#[cfg(target_arch = "wasm32")]
pub(crate) fn capture<T>(
    _device: &wgpu::Device,
    _operation: &str,
    work: impl FnOnce() -> T,
) -> Result<T> {
    Ok(work())
}

/// As [`capture`] around a whole future, awaiting the scopes instead of blocking on them (on the
/// web a pop resolves only through the browser's event loop): the scopes stay open while `work`
/// runs, across its awaits, so that an error raised anywhere in it (on the web, where [`capture`]
/// opens no scopes of its own) becomes [`Error::Gpu`] naming `operation`. That error comes before
/// `work`'s own, which is then most likely its consequence.
pub(crate) async fn capture_future<T>(
    device: &wgpu::Device,
    operation: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let [validation, out_of_memory, internal] = push_scopes(device);
    let value = work.await;
    let errors = [
        validation.pop().await,
        out_of_memory.pop().await,
        internal.pop().await,
    ];
    first_error(errors, operation)?;
    value
}

/// Pushes internal, out-of-memory and validation scopes, and returns them in the order they
/// must be popped (innermost first).
fn push_scopes(device: &wgpu::Device) -> [wgpu::ErrorScopeGuard; 3] {
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    [validation, out_of_memory, internal]
}

/// The first error the scopes caught, as [`Error::Gpu`] naming `operation`.
fn first_error(errors: [Option<wgpu::Error>; 3], operation: &str) -> Result<()> {
    match errors.into_iter().flatten().next() {
        Some(error) => Err(Error::Gpu {
            operation: operation.to_string(),
            message: error_chain(&error),
        }),
        None => Ok(()),
    }
}

/// wgpu's error message followed by its chain of sources, on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message.replace('\n', " ")
}
