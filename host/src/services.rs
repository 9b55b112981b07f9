//! What the host offers plugins: the [`HostApi`] handed to every plugin's initialiser.
//!
//! Plugin log events arrive here already formatted and are re-emitted into the host's `tracing`
//! subscriber under the target `graft::plugin`, with the plugin's name and its own target as
//! fields, so `RUST_LOG=graft::plugin=debug` (or a per-plugin field filter) controls them.
//! Every callback is `extern "C"`: a panic unwinding out of them would abort, so none can.
//!
//! The async services (a timer, the blocking pool) are the embedder's runtime's: graft-host
//! has no runtime of its own, so the embedder installs its [`AsyncServices`] once per process
//! ([`set_async_services`]; `graft serve` installs tokio's). One set per process, because the
//! services reach plugins through one static [`HostApi`].

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use abi_stable::prefix_type::WithMetadata;
use abi_stable::std_types::{ROption, RResult, RStr};
use async_ffi::FutureExt as _;
use graft_api::ffi::{
    level_from_u8, BlockingJob, ErrorKind, FfiError, HostApi, HostApiRef, HostFuture, LogRecord,
    RequestInfo,
};
use tracing::Level;

const HOST_API: &WithMetadata<HostApi> = &WithMetadata::new(HostApi {
    log,
    log_enabled,
    sleep,
    run_blocking,
    request_context,
});

/// A boxed future of the embedder's runtime.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What an async runtime offers plugins' async exports: implemented by the embedder (for
/// tokio: `tokio::time::sleep` and `tokio::task::spawn_blocking`).
pub trait AsyncServices: Send + Sync + 'static {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture;
    /// Runs `work` on a pool for blocking work; the future completes when it returned.
    fn run_blocking(&self, work: Box<dyn FnOnce() + Send>) -> BoxFuture;
}

static SERVICES: OnceLock<Arc<dyn AsyncServices>> = OnceLock::new();

/// Installs the async services plugins get (the first call wins; later ones are ignored and
/// return `false`). Until one is installed, a plugin's `graft_api::sleep` and
/// `graft_api::blocking` fail with an error that says so.
pub fn set_async_services(services: Arc<dyn AsyncServices>) -> bool {
    SERVICES.set(services).is_ok()
}

fn no_services(service: &str) -> FfiError {
    FfiError {
        kind: ErrorKind::UNAVAILABLE,
        message: format!(
            "the host has no {service}: the embedder installs one with \
             graft_host::set_async_services"
        )
        .into(),
    }
}

fn panicked(service: &str) -> FfiError {
    FfiError {
        kind: ErrorKind::INTERNAL,
        message: format!("the host's {service} panicked").into(),
    }
}

extern "C" fn sleep(millis: u64) -> HostFuture {
    let Some(services) = SERVICES.get() else {
        return std::future::ready(RResult::RErr(no_services("timer"))).into_ffi();
    };
    let Ok(sleeping) = catch_unwind(AssertUnwindSafe(|| {
        services.sleep(Duration::from_millis(millis))
    })) else {
        return std::future::ready(RResult::RErr(panicked("timer"))).into_ffi();
    };
    async move {
        sleeping.await;
        RResult::ROk(())
    }
    .into_ffi()
}

extern "C" fn run_blocking(job: BlockingJob) -> HostFuture {
    let Some(services) = SERVICES.get() else {
        // The job owns its data: run it here rather than leak it.
        (job.run)(job.data);
        return std::future::ready(RResult::ROk(())).into_ffi();
    };
    // The job runs plugin code, maybe after the call that started it was dropped: it holds a
    // pin of that call's generation of its own until it returns.
    let pin = crate::live::async_call::polling_pin();
    // It serves the same request: it sees the same context.
    let request = crate::request::current_request();
    let work = Box::new(move || {
        // The whole job moves in (it is `Send`), not its raw pointer alone.
        let job = job;
        crate::request::with_request(request.as_ref(), || (job.run)(job.data));
        drop(pin);
    });
    let Ok(running) = catch_unwind(AssertUnwindSafe(|| services.run_blocking(work))) else {
        return std::future::ready(RResult::RErr(panicked("blocking pool"))).into_ffi();
    };
    async move {
        running.await;
        RResult::ROk(())
    }
    .into_ffi()
}

extern "C" fn request_context() -> ROption<RequestInfo> {
    catch_unwind(|| {
        crate::request::current_request().map(|request| RequestInfo {
            id: request.id.as_str().into(),
            traceparent: request.trace.traceparent().into(),
            deadline_ms: request.remaining().map_or(u64::MAX, |left| {
                u64::try_from(left.as_millis()).unwrap_or(u64::MAX - 1)
            }),
        })
    })
    .ok()
    .flatten()
    .into()
}

/// The services handed to plugins.
pub(crate) fn host_api() -> HostApiRef {
    HostApiRef(HOST_API.static_as_prefix())
}

extern "C" fn log(record: LogRecord<'_>) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let (plugin, target, message) = (
            record.plugin.as_str(),
            record.target.as_str(),
            record.message.as_str(),
        );
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(target: "graft::plugin", $level, plugin, plugin_target = target, "{message}")
            };
        }
        match level_from_u8(record.level) {
            Level::ERROR => emit!(Level::ERROR),
            Level::WARN => emit!(Level::WARN),
            Level::INFO => emit!(Level::INFO),
            Level::DEBUG => emit!(Level::DEBUG),
            _ => emit!(Level::TRACE),
        }
    }));
}

extern "C" fn log_enabled(level: u8, _target: RStr<'_>) -> bool {
    catch_unwind(|| match level_from_u8(level) {
        Level::ERROR => tracing::enabled!(target: "graft::plugin", Level::ERROR),
        Level::WARN => tracing::enabled!(target: "graft::plugin", Level::WARN),
        Level::INFO => tracing::enabled!(target: "graft::plugin", Level::INFO),
        Level::DEBUG => tracing::enabled!(target: "graft::plugin", Level::DEBUG),
        _ => tracing::enabled!(target: "graft::plugin", Level::TRACE),
    })
    .unwrap_or(false)
}
