//! Accepting connections: hyper's HTTP/1 server under the limits a public listener needs.
//!
//! - **A connection cap** ([`ConnLimits::max_connections`]): past it the listener stops
//!   accepting (connections wait in the kernel's backlog) instead of running out of file
//!   descriptors, which would also make the admin listener unreachable.
//! - **A header-read timeout** ([`ConnLimits::header_read_timeout`]): a connection must deliver
//!   a complete request head within it, counted from when it was accepted or answered its
//!   previous request. It cuts slowly trickled headers, and it is the idle timeout of
//!   keep-alive connections too.
//! - **A body timeout** ([`ConnLimits::body_timeout`]): a request body must arrive within it,
//!   counted from when the server first waited for it ([`BodyTimeoutError`] past it; the app
//!   answers 408).
//!
//! The header-read timeout costs no timer and no clock read per request: each connection
//! records when it went idle (accepted, or its last response produced; on a clock the sweeper
//! advances) and whether a request is being served, and one sweeper per listener closes, every
//! [`SWEEPS_PER_TIMEOUT`]th of the timeout, the connections idle for longer than it. (hyper's
//! own `header_read_timeout` resets a timer for every request: with it on, `swap-under-load.sh
//! --baseline static` printed ratios well below those without it.) A connection
//! is therefore closed between one and 1.25 timeouts after it went idle. Likewise the body
//! timeout starts a timer only when a body is not already all there: a small body that came
//! with its head costs none.
//!
//! `connections.rs` keeps the connections' idle clocks and closes those past the timeout;
//! `one.rs` serves one connection (hyper, the router, and moving it between two requests).
//!
//! On stop, the listener closes and every connection finishes the request it is serving, then
//! closes (hyper's graceful shutdown).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::arrival::Wanted;
use super::conn::{Conn, Tracking};
use crate::shards::Shards;
use crate::worker::{Elsewhere, Moving};

mod connections;
mod one;

use connections::Connections;
use one::{serve_one, Leave, Outcome, Service1};
pub(crate) use one::{BodyTimeoutError, Direct};

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub(crate) max_connections: usize,
    /// At the cap, accept anyway and close the connection idle the longest to make room (the
    /// admin plane: idle connections, with a token or without, cannot lock operators out);
    /// otherwise stop accepting until a connection closes (the app: back-pressure).
    pub(crate) evict_idle_at_cap: bool,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_timeout: Duration,
}

/// How long to wait before accepting again after `accept` failed (out of file descriptors,
/// usually): a connection closing frees one meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the app's listener serves with.
pub(crate) struct App {
    pub(crate) router: Router,
    pub(crate) direct: Option<Arc<Direct>>,
    /// Requests carry when their bytes arrived while this says so (see `arrival.rs`).
    pub(crate) stamps: Option<Wanted>,
    pub(crate) elsewhere: Option<Arc<dyn Elsewhere>>,
}

/// Serves `app` on `listener` until `stop` turns true, then lets open connections finish
/// their requests. Each connection is served from accept to close by one of `shards` in turn
/// ([`Shards::none`]: on the runtime this runs on), unless it is served elsewhere
/// ([`Elsewhere`]: it goes there when accepted, and at a request boundary whenever that opens).
pub(crate) async fn serve(
    listener: TcpListener,
    shards: Arc<Shards>,
    app: App,
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
) {
    let http = Arc::new(hyper::server::conn::http1::Builder::new());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = Connections::start(limits.header_read_timeout, stop.clone());
    let (back, mut returned) = mpsc::unbounded_channel::<Moving>();
    if let Some(elsewhere) = &app.elsewhere {
        elsewhere.attach(back.clone());
    }
    let mut tasks = JoinSet::new();
    loop {
        // A connection back from a worker holds its place under the cap already: it is taken
        // while the listener waits for room for a new one.
        let moving = tokio::select! {
            biased;
            Some(moving) = returned.recv() => moving,
            accepted = accept(&listener, &slots, limits.evict_idle_at_cap, &connections) => {
                match accepted {
                    Some(moving) => moving,
                    None => continue,
                }
            }
            () = stopped(stop.clone()) => break,
        };
        let moving = match &app.elsewhere {
            Some(elsewhere) if elsewhere.open() => match elsewhere.take(moving).await {
                Some(moving) => moving,
                None => continue,
            },
            _ => moving,
        };
        let serving = serve_here(
            moving,
            &app,
            Arc::clone(&connections),
            Arc::clone(&http),
            limits.body_timeout,
            back.clone(),
        );
        match shards.next() {
            Some(shard) => tasks.spawn_on(serving, shard),
            None => tasks.spawn(serving),
        };
        // Reap the tasks that ended, so the set does not grow with every connection served.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    connections.stop_all();
    while tasks.join_next().await.is_some() {}
}

/// Accepts the next connection under the cap (`None`: accept failed, try again): room first,
/// then the connection; or, at the cap with `evict_idle`, the connection first, then the room
/// of the connection idle the longest. Cancelled while it waits, it holds nothing (an accepted
/// connection is never waited on for room but with `evict_idle`, the admin plane's, which has
/// no connections coming back to race with).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    evict_idle: bool,
    connections: &Connections,
) -> Option<Moving> {
    let early = if evict_idle {
        None
    } else {
        Some(
            Arc::clone(slots)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed"),
        )
    };
    let stream = match listener.accept().await {
        Ok((stream, _)) => stream,
        Err(error) => {
            tracing::warn!(%error, "accept failed; retrying");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    let permit = match early {
        Some(permit) => permit,
        None => match Arc::clone(slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                connections.close_longest_idle();
                Arc::clone(slots)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        },
    };
    // Taken off this runtime's I/O driver, to be registered with the one that serves it (once
    // per connection).
    match stream.into_std() {
        Ok(stream) => Some(Moving {
            stream,
            unread: Bytes::new(),
            permit,
        }),
        Err(error) => {
            tracing::warn!(%error, "could not hand a connection to an app thread");
            None
        }
    }
}

/// Serves a connection of the front's listener: until it closes, or until it leaves for a
/// worker (then it goes back through `back`, to be handed over).
fn serve_here(
    moving: Moving,
    app: &App,
    connections: Arc<Connections>,
    http: Arc<hyper::server::conn::http1::Builder>,
    body_timeout: Duration,
    back: mpsc::UnboundedSender<Moving>,
) -> impl Future<Output = ()> + Send + 'static {
    let (id, tracked) = connections.track();
    let (router, direct, stamps) = (app.router.clone(), app.direct.clone(), app.stamps.clone());
    let leave = app.elsewhere.as_ref().map(|elsewhere| {
        let open = Arc::clone(elsewhere);
        Leave {
            changes: elsewhere.changes(),
            now: Box::new(move || open.open()),
        }
    });
    async move {
        let Moving {
            stream,
            unread,
            permit,
        } = moving;
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "an app thread could not take a connection");
                connections.forget(id);
                return;
            }
        };
        let (stream, service) =
            Service1::new(stream, stamps, router, tracked, body_timeout, direct, None);
        let outcome = serve_one(Conn::new(stream, unread, None), service, &http, leave).await;
        connections.forget(id);
        if let Outcome::Left(stream, unread) = outcome {
            match stream.into_std() {
                Ok(stream) => {
                    let _ = back.send(Moving {
                        stream,
                        unread,
                        permit,
                    });
                }
                Err(error) => tracing::warn!(%error, "a connection could not leave its app thread"),
            }
        }
    }
}

/// A connection a worker serves for its front (`worker/direct.rs`): its slot in the shared
/// states, the socket and the bytes read and not parsed.
#[derive(Debug)]
pub(crate) struct Given {
    pub(crate) slot: u32,
    pub(crate) stream: std::net::TcpStream,
    pub(crate) unread: Bytes,
    pub(crate) tracking: Tracking,
}

/// How a connection a worker served ended.
#[derive(Debug)]
pub(crate) enum GivenEnd {
    /// Closed (or its answer taken over by the front).
    Closed { slot: u32 },
    /// Back to the front between two requests, with the bytes read and not parsed.
    Returned { slot: u32, unread: Bytes },
}

/// Serves the connections the front gives a worker (`given`) until `stop`: each until it
/// closes or, once `recall` changes, until its next request boundary; how each ended goes to
/// `ended`. `watch` is told of each connection's requests, for deadlines (see `direct.rs`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_given(
    mut given: mpsc::UnboundedReceiver<Given>,
    router: Router,
    direct: Option<Arc<Direct>>,
    limits: ConnLimits,
    recall: watch::Receiver<u64>,
    ended: mpsc::UnboundedSender<GivenEnd>,
    stop: watch::Receiver<bool>,
) {
    let http = Arc::new(hyper::server::conn::http1::Builder::new());
    let connections = Connections::start(limits.header_read_timeout, stop.clone());
    let mut tasks = JoinSet::new();
    loop {
        let given = tokio::select! {
            Some(given) = given.recv() => given,
            () = stopped(stop.clone()) => break,
            else => break,
        };
        let (id, tracked) = connections.track();
        let (router, direct, http) = (router.clone(), direct.clone(), Arc::clone(&http));
        let (connections, ended) = (Arc::clone(&connections), ended.clone());
        let mut recall = recall.clone();
        recall.mark_unchanged();
        let body_timeout = limits.body_timeout;
        tasks.spawn(async move {
            let Given {
                slot,
                stream,
                unread,
                tracking,
            } = given;
            let Ok(stream) = TcpStream::from_std(stream) else {
                let _ = ended.send(GivenEnd::Closed { slot });
                connections.forget(id);
                return;
            };
            let (stream, service) = Service1::new(
                stream,
                None,
                router,
                tracked,
                body_timeout,
                direct,
                Some(tracking.clone()),
            );
            let leave = Leave {
                changes: recall,
                now: Box::new(|| true),
            };
            let conn = Conn::new(stream, unread, Some(tracking));
            let outcome = serve_one(conn, service, &http, Some(leave)).await;
            connections.forget(id);
            let _ = ended.send(match outcome {
                Outcome::Closed => GivenEnd::Closed { slot },
                Outcome::Left(_, unread) => GivenEnd::Returned { slot, unread },
            });
        });
        while tasks.try_join_next().is_some() {}
    }
    connections.stop_all();
    while tasks.join_next().await.is_some() {}
}
/// Completes once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
