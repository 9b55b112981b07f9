//! Plugin logs into the host's `tracing` subscriber.
//!
//! A plugin carries its own copy of `tracing`, which has no subscriber of its own. The plugin's
//! initialiser installs [`Forward`] as that copy's global default: every event is formatted in the
//! plugin and handed to the host through [`HostApi::log`](crate::ffi::HostApi), so the host's
//! filter (`RUST_LOG`) decides what is shown. The global default (not a scoped one) is used on
//! purpose: it touches no thread-local, and a plugin thread-local with a destructor would keep the
//! library mapped after unload.

use std::fmt::Write as _;
use std::sync::OnceLock;

use abi_stable::std_types::RStr;
use tracing_core::{
    field::{Field, Visit},
    span, Event, Interest, Metadata, Subscriber,
};

use crate::ffi::{level_to_u8, HostApiRef, LogRecord};

/// The forwarding subscriber's fields, in this image's static memory, for the panic hook. An
/// allocation kept only by a plugin's static is never freed when the library is unloaded, and
/// would leak on every reload: the hook allocates nothing, and the global default, which
/// tracing-core keeps on the heap, is installed in the image's arena.
static FORWARD: OnceLock<Forward> = OnceLock::new();

/// Installs the forwarding subscriber; a second call in the same loaded image (the same build
/// loaded twice shares its statics) is a no-op: the one installed forwards to the same host.
pub(crate) fn forward_to_host(host: HostApiRef, plugin: &'static str) {
    if FORWARD.set(Forward { host, plugin }).is_err() {
        return;
    }
    // The first initialisation of this image: no other thread runs its code yet.
    crate::allocator::in_image(|| {
        let dispatch = tracing_core::Dispatch::new(Forward { host, plugin });
        let _ = tracing_core::dispatcher::set_global_default(dispatch);
    });
}

/// Replaces this image's panic hook (each plugin carries its own copy of std, and so its own
/// hook) with one that reports the panic through the host's log instead of printing to stderr.
/// The panic itself is still caught at the boundary and returned as an error. The hook captures
/// nothing (it reads [`FORWARD`]), so boxing it allocates nothing; call after
/// [`forward_to_host`].
pub(crate) fn forward_panics_to_host() {
    std::panic::set_hook(Box::new(|info| {
        let Some(Forward { host, plugin }) = FORWARD.get() else {
            return;
        };
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = crate::runtime::panic_message(info.payload());
        let message = format!("plugin panicked{location}: {message}");
        (host.log())(LogRecord {
            plugin: RStr::from_str(plugin),
            level: level_to_u8(&tracing_core::Level::ERROR),
            target: RStr::from_str("panic"),
            message: RStr::from_str(&message),
        });
    }));
}

#[derive(Clone, Copy)]
struct Forward {
    host: HostApiRef,
    plugin: &'static str,
}

impl Subscriber for Forward {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The host's filter can change at run time; ask it on every event.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        (self.host.log_enabled())(
            level_to_u8(metadata.level()),
            RStr::from_str(metadata.target()),
        )
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut message = Message::default();
        event.record(&mut message);
        let metadata = event.metadata();
        (self.host.log())(LogRecord {
            plugin: RStr::from_str(self.plugin),
            level: level_to_u8(metadata.level()),
            target: RStr::from_str(metadata.target()),
            message: RStr::from_str(&message.0),
        });
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// The event's fields in order: the message as is, the others as `name=value`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}
