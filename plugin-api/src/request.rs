//! The context of the request a call serves: its id, its trace context, its deadline.
//!
//! Every call a request makes (its route handler, and each import those call, in any plugin)
//! sees the same context: the host keeps it for the thread that runs the call (and for every
//! poll of an async one, and for blocking work it hands over). Outside a request (an
//! initialiser, a hook, a call an embedder made without one) there is none.

use std::time::Duration;

use crate::ffi::Context;

/// The context of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    /// The request's id: the client's `x-request-id` when it sent a sane one, else the host's.
    /// The host logs its failures under it; put it in your own log lines.
    pub id: String,
    /// The W3C `traceparent` of the host's span for this request (the caller's trace id, a
    /// span id of the host's): send it on to what you call.
    pub traceparent: String,
    /// How long the request may still run, if it has a deadline.
    pub deadline: Option<Duration>,
}

/// The context of the request this thread serves now, if any (and if the host is recent
/// enough to say: graft API 2.3).
pub fn current() -> Option<RequestContext> {
    let host = crate::asynchronous::host().ok()?;
    let info = (host.request_context()?)().into_option()?;
    Some(RequestContext {
        id: info.id.into_string(),
        traceparent: info.traceparent.into_string(),
        deadline: (info.deadline_ms != u64::MAX).then(|| Duration::from_millis(info.deadline_ms)),
    })
}

impl Context<'_> {
    /// The context of the request this call serves, if any: see [`current`].
    pub fn request(&self) -> Option<RequestContext> {
        current()
    }
}
