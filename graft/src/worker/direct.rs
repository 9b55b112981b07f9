//! Connections the current generation's worker serves itself: under `isolation = "all"`, while
//! no rollout splits requests, the front hands each client connection to the worker (its
//! descriptor, over the worker's link: `link.rs`) instead of forwarding each request, so a
//! request costs what it costs in process. Measured, see `docs/architecture.md`.
//!
//! The guarantees stay those of forwarding:
//! - **A request pins one generation.** The front keeps a word per worker in memory both map
//!   (`states.rs`) saying whether the worker serves requests; the moment its generation stops
//!   being the one to serve (a release went live: told by [`graft_host::Host::on_switch`] right
//!   after the store; a rollout started), the front clears it and recalls the connections. A
//!   request that starts in the worker after that is not served there: its connection comes
//!   back with the request's bytes, nothing written, and the front serves it (or hands it to
//!   the new generation's worker). Idle connections come back at once, busy ones after their
//!   answer.
//! - **A crash fails only the requests in flight.** The front keeps its own descriptor of each
//!   connection it handed over, and the worker keeps each connection's state in the shared
//!   memory: on a crash, the front takes back the connections that were between requests
//!   (including those whose answer's last write had returned when the worker had not said so
//!   yet: [`Fate`]), answers 502 (the JSON error shape) on those with a request read and no
//!   answer begun, and closes those whose answer was being written.
//! - **A call past its deadline is answered 503 at the deadline** by the front, on the
//!   connection the worker gives up (it marks the state `TAKEN` first, so that only one of
//!   them ever writes); a call still running after the grace period has its worker recycled.
//! - **Metrics**: the worker reports each request it served (its `[[route]]`'s number, or a
//!   plugin route's method and pattern; its status and time), and the front counts it as if it
//!   had served it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::link::{Incoming, Link, ServedRoute, ToFront, ToWorker};
use super::process::Process;
use super::slot::Slot;
use super::states::{self, States, CLEAN, ENDING, IN_REQUEST, READ_AHEAD, TAKEN};
use super::{Isolation, Workers};
use crate::api::{ApiError, ErrorCode};
use crate::rollout::Route as Side;

/// A connection between two requests on its way to be served elsewhere (to a worker, or back
/// from one): the socket, the bytes read from it and not parsed, and its place under the
/// listener's connection cap.
#[derive(Debug)]
pub(crate) struct Moving {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) unread: Bytes,
    pub(crate) permit: OwnedSemaphorePermit,
}

/// Where the app's connections may be served instead of by the front's listener.
pub(crate) trait Elsewhere: Send + Sync {
    /// Whether [`Elsewhere::take`] would take a connection now.
    fn open(&self) -> bool;
    /// Takes `moving`, or gives it back to be served by the listener.
    fn take(&self, moving: Moving) -> Pin<Box<dyn Future<Output = Option<Moving>> + Send + '_>>;
    /// Changes whenever [`Elsewhere::open`] may have changed.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Where connections coming back from a worker go, to be served by the listener.
    fn attach(&self, back: mpsc::UnboundedSender<Moving>);
}

/// The front's side of one worker's link: the connections it holds a descriptor of.
#[derive(Debug)]
pub(crate) struct FrontLink {
    link: Link,
    states: States,
    held: Mutex<Held>,
    /// Set once the link ended (the worker is gone).
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Held {
    /// The connections the worker serves, by slot.
    given: HashMap<u32, Lent>,
    /// Slots whose connection the front answered (past its deadline) and the worker has not
    /// said ended yet: not reused until it has.
    taken: HashSet<u32>,
    free: Vec<u32>,
    next: u32,
}

/// A connection the worker serves: the front's descriptor of it, and its place under the
/// listener's cap.
#[derive(Debug)]
struct Lent {
    stream: std::net::TcpStream,
    permit: OwnedSemaphorePermit,
}

/// What becomes of a connection a worker served when the worker ends.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Between two requests: served on.
    Resume,
    /// A request read and not answered: answered 502, closed.
    Fail,
    /// An answer partly written, or its state unknown: closed.
    Close,
}

impl Fate {
    /// By the slot's state and end word, and the kernel's count of bytes written on the
    /// connection ([`states::written`]; `None`: unknown).
    fn of(state: u32, end: u64, written: Option<u64>) -> Self {
        let read_ahead = state & READ_AHEAD != 0;
        match state & !READ_AHEAD {
            CLEAN if !read_ahead => Self::Resume,
            IN_REQUEST if !read_ahead => Self::Fail,
            // The answer's last write returned: the worker had not said so yet.
            ENDING if written == Some(end) => match read_ahead {
                false => Self::Resume,
                true => Self::Fail,
            },
            _ => Self::Close,
        }
    }
}

impl FrontLink {
    /// Says hello on a new link: the memory of `slots` connection states, and the worker's
    /// generation.
    pub(crate) async fn start(
        stream: tokio::net::UnixStream,
        slots: u32,
        generation: u64,
    ) -> std::io::Result<Self> {
        let states = States::create(slots)?;
        let link = Link::new(stream);
        link.send_to_worker(&ToWorker::Hello {
            states: states.memory()?,
            slots,
            generation,
        })
        .await?;
        Ok(Self {
            link,
            states,
            held: Mutex::default(),
            closed: AtomicBool::new(false),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the worker serving requests (a request that starts there now comes back), and
    /// recalls its connections; once.
    pub(super) fn close_serving(&self, runtime: &tokio::runtime::Handle, link: &Arc<Self>) {
        if self.states.serving().swap(0, Ordering::AcqRel) != 0 {
            let link = Arc::clone(link);
            runtime.spawn(async move {
                let _ = link.link.send_to_worker(&ToWorker::Recall).await;
            });
        }
    }

    /// Hands `moving` to the worker; gives it back if the worker cannot take it.
    async fn give(&self, moving: Moving) -> Option<Moving> {
        let slot = {
            let mut held = self.held();
            let slot = match held.free.pop() {
                Some(slot) => slot,
                None if held.next < self.states.len() => {
                    held.next += 1;
                    held.next - 1
                }
                None => return Some(moving),
            };
            let state = if moving.unread.is_empty() {
                CLEAN
            } else {
                IN_REQUEST
            };
            self.states
                .get(slot)
                .expect("slots come from the states")
                .store(state, Ordering::Release);
            slot
        };
        let Moving {
            stream,
            unread,
            permit,
        } = moving;
        let connection = match stream.try_clone() {
            Ok(copy) => std::os::fd::OwnedFd::from(copy),
            Err(error) => {
                tracing::warn!(%error, "could not hand a connection to a worker");
                self.held().free.push(slot);
                return Some(Moving {
                    stream,
                    unread,
                    permit,
                });
            }
        };
        // Held before it is sent: the worker may answer about it at once.
        self.held().given.insert(slot, Lent { stream, permit });
        let sent = self
            .link
            .send_to_worker(&ToWorker::Give {
                slot,
                unread: unread.to_vec(),
                connection,
            })
            .await;
        match sent {
            Ok(()) => None,
            Err(_) => {
                let mut held = self.held();
                let Lent { stream, permit, .. } = held.given.remove(&slot)?;
                held.free.push(slot);
                Some(Moving {
                    stream,
                    unread,
                    permit,
                })
            }
        }
    }

    /// Whether the worker serves connections the front gave it.
    pub(crate) fn holds(&self) -> bool {
        self.connections() > 0
    }

    /// How many connections the front gave the worker that it serves now.
    pub(crate) fn connections(&self) -> usize {
        self.held().given.len()
    }

    /// The connection in `slot`, no longer the worker's (its slot free again).
    fn release(&self, slot: u32) -> Option<Lent> {
        let mut held = self.held();
        let released = held.given.remove(&slot);
        if released.is_some() || held.taken.remove(&slot) {
            held.free.push(slot);
        }
        released
    }
}

impl Workers {
    /// The worker that serves connections now, if one does: under `isolation = "all"` with
    /// `serve_connections`, while no rollout is under way, the current generation's worker once
    /// it serves.
    pub(super) fn direct_target(&self) -> Option<(Arc<Slot>, Arc<Process>, Arc<FrontLink>)> {
        if self.isolation != Isolation::All
            || !self.config.serve_connections
            || self.rollouts.canary_id().is_some()
        {
            return None;
        }
        let current = self.host.current().id();
        let slot = self.placed.load().get(&current).cloned().flatten()?;
        let process = slot.process.load_full()?;
        let link = process.link.clone()?;
        if process.stopping.load(Ordering::SeqCst) || link.closed.load(Ordering::Acquire) {
            return None;
        }
        Some((slot, process, link))
    }

    /// What serves the app's connections besides the front's listener, if anything may.
    pub(crate) fn elsewhere(self: &Arc<Self>) -> Option<Arc<dyn Elsewhere>> {
        (self.isolation == Isolation::All && self.config.serve_connections)
            .then(|| Arc::clone(self) as Arc<dyn Elsewhere>)
    }

    /// A generation went live, a rollout started or ended, a worker started or ended: the
    /// workers that must not serve requests any more stop now (`switched`: the generation
    /// made current), and connections served by the front look again at where they belong.
    pub(crate) fn placement_changed(&self, switched: Option<u64>) {
        let _direct = self.direct.lock().unwrap_or_else(PoisonError::into_inner);
        let target = self.direct_target().map(|(_, process, _)| process.pid);
        let current = switched.unwrap_or_else(|| self.host.current().id());
        for slot in self.placed.load().values().flatten() {
            let Some(process) = slot.process.load_full() else {
                continue;
            };
            let Some(link) = &process.link else {
                continue;
            };
            if slot.id != current || target != Some(process.pid) {
                link.close_serving(&self.runtime, link);
            }
        }
        self.direct_changes.send_modify(|epoch| *epoch += 1);
    }

    /// Serves what a worker's link says, until it ends; then takes its connections back.
    pub(super) fn follow_link(self: &Arc<Self>, slot: &Arc<Slot>, process: &Arc<Process>) {
        let Some(link) = process.link.clone() else {
            return;
        };
        let (me, slot, process) = (Arc::downgrade(self), Arc::clone(slot), Arc::clone(process));
        self.runtime.spawn(async move {
            let mut incoming = Incoming::default();
            loop {
                let message = link.link.next_from_worker(&mut incoming).await;
                let Some(workers) = me.upgrade() else {
                    return;
                };
                match message {
                    Ok(Some(message)) => workers.heard(&slot, &process, &link, message).await,
                    Ok(None) | Err(_) => {
                        workers.link_ended(&slot, &process, &link).await;
                        return;
                    }
                }
            }
        });
    }

    async fn heard(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        process: &Arc<Process>,
        link: &Arc<FrontLink>,
        message: ToFront,
    ) {
        match message {
            ToFront::Returned { slot: at, unread } => {
                if let Some(Lent { stream, permit, .. }) = link.release(at) {
                    let moving = Moving {
                        stream,
                        unread: Bytes::from(unread),
                        permit,
                    };
                    self.rehome(moving).await;
                }
            }
            ToFront::Ended { slot: at } => drop(link.release(at)),
            ToFront::Served(served) => {
                let release = slot
                    .generation
                    .upgrade()
                    .and_then(|g| g.release().map(str::to_owned));
                for one in served {
                    let took = Duration::from_micros(u64::from(one.micros));
                    let status = axum::http::StatusCode::from_u16(one.status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    self.metrics
                        .request(slot.id, !status.is_server_error(), took);
                    let (pattern, method) = match &one.route {
                        ServedRoute::Configured(number) => {
                            let index = (*number as usize).checked_sub(1);
                            match index.and_then(|index| self.spec.route(index)) {
                                Some(route) => (route.path.as_str(), route.method.as_str()),
                                None => continue, // not one of ours: the worker is wrong
                            }
                        }
                        ServedRoute::Plugin { method, pattern } => {
                            (pattern.as_str(), method.as_str())
                        }
                    };
                    let release = release.as_deref();
                    self.metrics
                        .route(pattern, method, Side::Stable, release, status, took);
                }
            }
            ToFront::Overdue { slot: at } => {
                let taken = {
                    let mut held = link.held();
                    let given = held.given.remove(&at);
                    if given.is_some() {
                        held.taken.insert(at);
                    }
                    given
                };
                let state = link.states.get(at).map(|s| s.load(Ordering::Acquire));
                if let (Some(Lent { stream, .. }), Some(TAKEN)) = (taken, state) {
                    let message = format!(
                        "past the request's deadline; the call runs on in worker pid {} (recycled if still running {} ms later)",
                        process.pid, self.config.grace_ms
                    );
                    let error = ApiError::new(ErrorCode::DeadlineExceeded, message);
                    answer_and_close(stream, &error, slot.id).await;
                }
            }
            ToFront::Stuck => {
                let (me, slot, process) = (Arc::clone(self), Arc::clone(slot), Arc::clone(process));
                tokio::task::spawn_blocking(move || me.recycle(&slot, &process));
            }
        }
    }

    /// A worker's link ended (it exited or crashed): its connections come back to the front,
    /// as their state allows; a request in flight is answered 502 once the worker's end is
    /// known (its signal in the answer and the log).
    async fn link_ended(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        process: &Arc<Process>,
        link: &Arc<FrontLink>,
    ) {
        link.closed.store(true, Ordering::Release);
        let given = std::mem::take(&mut link.held().given);
        let mut failed = Vec::new();
        for (at, Lent { stream, permit }) in given {
            let state = link
                .states
                .get(at)
                .map_or(u32::MAX, |s| s.load(Ordering::Acquire));
            let end = link.states.end(at).map_or(0, |e| e.load(Ordering::Acquire));
            match Fate::of(state, end, states::written(&stream)) {
                Fate::Resume => {
                    let moving = Moving {
                        stream,
                        unread: Bytes::new(),
                        permit,
                    };
                    let me = Arc::clone(self);
                    self.runtime.spawn(async move { me.rehome(moving).await });
                }
                Fate::Fail => {
                    let route = link
                        .states
                        .route(at)
                        .map_or(0, |r| r.load(Ordering::Acquire));
                    failed.push((stream, permit, route));
                }
                Fate::Close => drop((stream, permit)),
            }
        }
        self.placement_changed(None);
        if failed.is_empty() {
            return;
        }
        let ended = process.ended(super::CRASH_SETTLES).await;
        let how = ended.as_ref().map_or("failed", |ended| ended.how.as_str());
        for (stream, _permit, route) in failed {
            let (path, plugin) = self.route_of(slot, route);
            tracing::error!(
                generation = slot.id,
                pid = process.pid,
                route = path.as_str(),
                plugin = plugin.as_str(),
                worker = how,
                "request failed in its worker"
            );
            let message = format!(
                "the worker process serving generation {} {how} during the request; the server \
                 log has the details",
                slot.id
            );
            let error = ApiError::new(ErrorCode::WorkerFailed, message);
            answer_and_close(stream, &error, slot.id).await;
        }
    }

    /// The path and plugin of `[[route]]` number `route` (from 1) in `slot`'s generation, for
    /// the log; `unknown` where the worker did not say.
    fn route_of(&self, slot: &Slot, route: u32) -> (String, String) {
        let unknown = || ("unknown".to_owned(), "unknown".to_owned());
        let Some(configured) = (route as usize)
            .checked_sub(1)
            .and_then(|index| self.spec.route(index))
        else {
            return unknown();
        };
        let plugin = slot
            .generation
            .upgrade()
            .zip(self.host.export(&configured.export).ok())
            .and_then(|(generation, export)| generation.exporter(&export).map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        (configured.path.clone(), plugin)
    }

    /// Sends a connection where it is served now: the current worker, or the front's listener.
    async fn rehome(&self, moving: Moving) {
        let moving = match self.open() {
            true => match self.take(moving).await {
                Some(moving) => moving,
                None => return,
            },
            false => moving,
        };
        if let Some(back) = self.back.get() {
            let _ = back.send(moving);
        }
    }
}

impl Elsewhere for Workers {
    fn open(&self) -> bool {
        self.direct_target().is_some()
    }

    fn take(&self, moving: Moving) -> Pin<Box<dyn Future<Output = Option<Moving>> + Send + '_>> {
        Box::pin(async move {
            let link = {
                // Under the lock a switch takes: a worker whose generation was just replaced
                // is never opened again.
                let _direct = self.direct.lock().unwrap_or_else(PoisonError::into_inner);
                let Some((_, _, link)) = self.direct_target() else {
                    return Some(moving);
                };
                link.states.serving().store(1, Ordering::Release);
                link
            };
            link.give(moving).await
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.direct_changes.subscribe()
    }

    fn attach(&self, back: mpsc::UnboundedSender<Moving>) {
        let _ = self.back.set(back);
    }
}

/// Answers `error` on a connection and closes it (its request was read and not answered: the
/// rest of the connection cannot be told from it).
async fn answer_and_close(stream: std::net::TcpStream, error: &ApiError, generation: u64) {
    use tokio::io::AsyncWriteExt as _;
    let body = serde_json::to_vec(error).unwrap_or_default();
    let status = error.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}: {generation}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        crate::api::GENERATION_HEADER,
    );
    let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::states::ANSWERING;

    #[test]
    fn a_connection_is_resumed_after_a_crash_only_if_nothing_of_a_request_is_lost_or_half_answered()
    {
        assert_eq!(Fate::of(CLEAN, 0, None), Fate::Resume);
        assert_eq!(Fate::of(IN_REQUEST, 0, None), Fate::Fail);
        assert_eq!(Fate::of(ANSWERING, 0, Some(0)), Fate::Close);
        assert_eq!(Fate::of(TAKEN, 0, Some(0)), Fate::Close);
        // The answer's last write: returned (the kernel took the bytes) or not.
        assert_eq!(Fate::of(ENDING, 120, Some(120)), Fate::Resume);
        assert_eq!(Fate::of(ENDING, 120, Some(100)), Fate::Close);
        assert_eq!(
            Fate::of(ENDING, 120, None),
            Fate::Close,
            "the kernel did not say"
        );
        // The next request read meanwhile: lost with the worker, so in flight.
        assert_eq!(Fate::of(ENDING | READ_AHEAD, 120, Some(120)), Fate::Fail);
        assert_eq!(
            Fate::of(ANSWERING | READ_AHEAD, 120, Some(120)),
            Fate::Close
        );
        assert_eq!(
            Fate::of(u32::MAX, 0, Some(0)),
            Fate::Close,
            "any other value"
        );
    }
}
