//! One thread per context that polls the device while async runs wait for it (native only).
//!
//! wgpu runs map callbacks, which wake [`crate::CompiledModel::run_async`], only while someone
//! polls the device. A blocking run polls on its own thread; an async one must not block its
//! executor, so the poll happens here instead. A single thread serves every async run of a
//! context: it starts with the first one, sleeps while none waits, and ends with the context.
//! (A thread started per run, as before, cost a thread's creation on every run and as many
//! threads as runs in flight.)
//!
//! On the web the browser drives the device itself, so nothing here exists there.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// What a waiting run is told when the device could not be polled (it was lost, say): its map
/// callbacks may never run now, so the run fails instead of hanging.
type OnPollFailure = Box<dyn FnOnce() + Send>;

/// The runs waiting on the device, and whether the context is gone.
#[derive(Default)]
struct Waiting {
    runs: Vec<OnPollFailure>,
    context_dropped: bool,
}

/// State shared by the context and its polling thread.
#[derive(Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Signalled when a run starts waiting or the context is dropped.
    changed: Condvar,
}

impl Shared {
    /// Locks the waiting list. A panic while it was held cannot leave it inconsistent (every
    /// change is one push, one `take` or one flag), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The polling thread of one context, started by the first async run.
#[derive(Default)]
pub(crate) struct DevicePoller {
    shared: Arc<Shared>,
    /// Whether the thread has been started.
    started: Mutex<bool>,
}

impl DevicePoller {
    /// Has the device polled until all work submitted so far is done, which runs the map
    /// callbacks of a run that submitted before calling this. `on_failure` runs if the poll
    /// fails instead. The first call starts the polling thread.
    pub(crate) fn poll_until_done(
        &self,
        device: &wgpu::Device,
        on_failure: impl FnOnce() + Send + 'static,
    ) -> Result<()> {
        self.start_once(device)?;
        self.shared.lock().runs.push(Box::new(on_failure));
        self.shared.changed.notify_one();
        Ok(())
    }

    fn start_once(&self, device: &wgpu::Device) -> Result<()> {
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *started {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let device = device.clone();
        std::thread::Builder::new()
            .name("resgraph device poll".to_string())
            .spawn(move || poll_while_runs_wait(&shared, &device))
            .map_err(|error| Error::DeviceWait {
                reason: format!("starting the thread that polls the device: {error}"),
            })?;
        *started = true;
        Ok(())
    }
}

impl Drop for DevicePoller {
    /// Tells the thread to end once the runs still waiting are served. It is not joined: it may
    /// be waiting for the GPU, and the context's owner should not.
    fn drop(&mut self) {
        self.shared.lock().context_dropped = true;
        self.shared.changed.notify_one();
    }
}

/// The polling thread's loop: sleep until runs wait, poll until the device has done everything
/// submitted so far, and repeat. A run that starts waiting during a poll submitted after it
/// began, so it is served by the next one.
fn poll_while_runs_wait(shared: &Shared, device: &wgpu::Device) {
    loop {
        let runs = {
            let mut waiting = shared.lock();
            while waiting.runs.is_empty() && !waiting.context_dropped {
                waiting = shared
                    .changed
                    .wait(waiting)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if waiting.runs.is_empty() {
                return;
            }
            std::mem::take(&mut waiting.runs)
        };
        if device.poll(wgpu::PollType::wait_indefinitely()).is_err() {
            for on_failure in runs {
                on_failure();
            }
        }
    }
}
