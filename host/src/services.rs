//! What the host offers plugins: the [`HostApi`] handed to every plugin's initialiser.
//!
//! Plugin log events arrive here already formatted and are re-emitted into the host's `tracing`
//! subscriber under the target `graft::plugin`, with the plugin's name and its own target as
//! fields, so `RUST_LOG=graft::plugin=debug` (or a per-plugin field filter) controls them.
//! Both callbacks are `extern "C"`: a panic unwinding out of them would abort, so none can.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::prefix_type::WithMetadata;
use abi_stable::std_types::RStr;
use graft_api::ffi::{level_from_u8, HostApi, HostApiRef, LogRecord};
use tracing::Level;

const HOST_API: &WithMetadata<HostApi> = &WithMetadata::new(HostApi { log, log_enabled });

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
