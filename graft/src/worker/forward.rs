//! Forwarding a request to its generation's worker: the answer, or the front's own when the
//! worker fails mid-request (502) or the call runs past its deadline (503, and the worker
//! recycled if the call still runs after the grace period).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::Response;
use graft_host::{Generation, RequestContext};

use super::channel::{self, Asked, ChannelError as ForwardError};
use super::process::{Ended, Process};
use super::{Slot, Workers, CRASH_SETTLES};
use crate::api::{ApiError, ErrorCode};

impl Workers {
    /// Forwards one request to `slot`'s worker and returns its answer; a worker that fails
    /// mid-request is a 502, one that is not serving yet is waited for until the deadline.
    pub(crate) async fn forward(
        &self,
        slot: &Arc<Slot>,
        mut request: Forward<'_>,
    ) -> Result<Response<Bytes>, ApiError> {
        let context = request.context;
        let deadline = context.deadline.map(tokio::time::Instant::from_std);
        let start_timeout = Duration::from_millis(self.config.start_timeout_ms);
        // Copied into the frame when sent; dropped then, as it shares hyper's read buffer.
        let body = std::mem::take(&mut request.body);
        let outgoing = channel::Outgoing {
            asked: request.asked,
            context,
            body: &body,
        };
        // A request whose worker's connection had already ended was never delivered: it waits
        // for that end to be handled and goes to the worker that replaced it, if one did.
        let mut undelivered = 0;
        let (process, sent) = loop {
            let process = slot.serving(deadline, start_timeout).await?;
            match process.channel.send(&outgoing) {
                Ok(sent) => break (process, sent),
                Err(error) if undelivered < 2 => {
                    undelivered += 1;
                    tracing::debug!(generation = slot.id, pid = process.pid, %error, "worker gone before the request was sent; trying its successor");
                    // Once its end is handled, the slot serves its successor (or fails).
                    let _ = process.ended(CRASH_SETTLES).await;
                }
                Err(error) => {
                    let ended = process.ended(CRASH_SETTLES).await;
                    return Err(self.failed(slot, &process, &error, ended.as_ref(), &request));
                }
            }
        };
        drop(body);
        let sending = InFlight::new(Arc::clone(&process));
        let call = async move {
            let _sending = sending;
            sent.get().await
        };
        let answer = match deadline {
            None => call.await,
            // Boxed, so that a call past its deadline can be moved to a task of its own and run
            // on (a request without a deadline allocates nothing for it).
            Some(deadline) => {
                let mut call = Box::pin(call);
                match tokio::time::timeout_at(deadline, &mut call).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        self.overdue(slot, &process, self.runtime.spawn(call));
                        let message = format!(
                            "past the request's deadline; the call runs on in worker pid {} (recycled if still running {} ms later)",
                            process.pid, self.config.grace_ms
                        );
                        return Err(ApiError::new(ErrorCode::DeadlineExceeded, message));
                    }
                }
            }
        };
        match answer {
            Ok(answer) => Ok(answer),
            Err(error) => {
                let ended = process.ended(CRASH_SETTLES).await;
                Err(self.failed(slot, &process, &error, ended.as_ref(), &request))
            }
        }
    }

    /// A call past its deadline: if it still runs after the grace period, its worker is
    /// recycled.
    fn overdue(
        &self,
        slot: &Arc<Slot>,
        process: &Arc<Process>,
        call: tokio::task::JoinHandle<Result<Response<Bytes>, ForwardError>>,
    ) {
        process.overdue.fetch_add(1, Ordering::SeqCst);
        let grace = Duration::from_millis(self.config.grace_ms);
        let (me, slot, process) = (self.me.clone(), Arc::clone(slot), Arc::clone(process));
        self.runtime.spawn(async move {
            let mut call = call;
            if tokio::time::timeout(grace, &mut call).await.is_err() {
                if let Some(me) = me.upgrade() {
                    let (slot, stuck) = (Arc::clone(&slot), Arc::clone(&process));
                    let _ = tokio::task::spawn_blocking(move || me.recycle(&slot, &stuck)).await;
                }
                let _ = call.await;
            }
            process.overdue.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// The answer to a request its worker failed (it crashed mid-request, most likely: the
    /// crash itself is logged with its signal by the process's waiter).
    fn failed(
        &self,
        slot: &Slot,
        process: &Process,
        error: &ForwardError,
        ended: Option<&Ended>,
        request: &Forward<'_>,
    ) -> ApiError {
        let how = ended.map_or("failed", |ended| ended.how.as_str());
        let context = request.context;
        tracing::error!(
            request_id = %context.id,
            generation = slot.id,
            pid = process.pid,
            route = request.route,
            plugin = request.serves.plugin().unwrap_or("unknown"),
            error = %error,
            worker = how,
            "request failed in its worker"
        );
        let message = format!(
            "the worker process serving generation {} {how} during the request; the server log \
             has the details under request id {}",
            slot.id, context.id
        );
        ApiError::new(ErrorCode::WorkerFailed, message)
    }
}

/// A request forwarded to a process and not answered yet: counted in its `in_flight` while it
/// lives.
struct InFlight(Arc<Process>);

impl InFlight {
    fn new(process: Arc<Process>) -> Self {
        process.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(process)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request to forward, as the front received it.
#[derive(Debug)]
pub(crate) struct Forward<'a> {
    pub(crate) asked: Asked<'a>,
    pub(crate) body: Bytes,
    pub(crate) context: &'a Arc<RequestContext>,
    /// The route's label, and what serves it, for the log.
    pub(crate) route: &'a str,
    pub(crate) serves: Serves<'a>,
}

/// What serves a forwarded request: looked up only for the log of a request its worker
/// failed, never on the way.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Serves<'a> {
    /// A `[[route]]`'s export, in the pinned generation.
    Export(&'a Generation, &'a graft_host::Export),
    /// A route the plugin named declares.
    Plugin(&'a str),
}

impl Serves<'_> {
    fn plugin(&self) -> Option<&str> {
        match *self {
            Self::Export(generation, export) => generation.exporter(export),
            Self::Plugin(plugin) => Some(plugin),
        }
    }
}
