//! The context of the request a call serves: its id, trace context and deadline, for every
//! call the request makes (the route handler, each import, blocking work they hand over).
//!
//! Plugins read it through the host's services (`graft_api::request::current`), so it travels
//! beside the calls rather than in them: the embedder sets it for the thread that runs a
//! synchronous call ([`with_request`]) or for every poll of the future that runs an async one
//! ([`in_request`]), and the host's blocking pool carries it to the work it runs.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The context of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The request's id (its `x-request-id`, or one the embedder made).
    pub id: String,
    /// The W3C trace context of the embedder's span for this request: what calls to the
    /// outside send on (as [`TraceContext::traceparent`]).
    pub trace: TraceContext,
    /// When the request must be answered by, if ever.
    pub deadline: Option<Instant>,
}

/// A W3C trace context (version 00): the trace, the span, the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace's id (never 0 in a valid one).
    pub trace_id: u128,
    /// The span's id (never 0 in a valid one).
    pub span_id: u64,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// The `traceparent` header's value: `00-<trace id>-<span id>-<flags>`, in lowercase hex.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

impl RequestContext {
    /// How long the request may still run, if it has a deadline (zero once past it).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<RequestContext>>> = const { RefCell::new(None) };
}

/// The context of the request this thread serves now, if any.
pub fn current_request() -> Option<Arc<RequestContext>> {
    CURRENT.with(|current| current.borrow().clone())
}

/// Runs `f` with `request` as this thread's request context (the previous one restored after,
/// even if `f` panics).
pub fn with_request<T>(request: Option<&Arc<RequestContext>>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<RequestContext>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|current| *current.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|current| current.replace(request.cloned()));
    let _restore = Restore(previous);
    f()
}

pin_project_lite::pin_project! {
    /// A future polled with a request context set (see [`in_request`]).
    #[derive(Debug)]
    pub struct InRequest<F> {
        request: Arc<RequestContext>,
        #[pin]
        future: F,
    }
}

/// Runs `future` with `request` as the request context of every poll (and of its drop's
/// thread only if that drop happens in a poll).
pub fn in_request<F: Future>(request: Arc<RequestContext>, future: F) -> InRequest<F> {
    InRequest { request, future }
}

impl<F: Future> Future for InRequest<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        with_request(Some(this.request), || this.future.poll(cx))
    }
}
