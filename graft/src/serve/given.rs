//! A worker's side of its link (`worker/link.rs`, `worker/direct.rs`): the client connections
//! its front gives it, served as the front's listener serves its own (`listen::serve_given`),
//! each one's state kept in the memory the front reads (`conn.rs`); what ends or comes back,
//! the requests served, and the calls past their deadline, told to the front.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderValue;
use axum::Router;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

use super::conn::{LinkSide, Tracking};
use super::listen::{self, ConnLimits, Direct, Given, GivenEnd};
use crate::worker::link::{Incoming, Link, Served, ToFront, ToWorker};
use crate::worker::states::{self, States};
use crate::worker::Links;

/// How often the requests served are reported, and deadlines looked at.
const REPORT_EVERY: Duration = Duration::from_millis(10);

/// How many requests served are reported at once at most.
const MAX_REPORTED: usize = 4096;

/// What serves the worker's links: its app's router, as its front's listener would.
pub(super) fn links(
    router: Router,
    direct: Arc<Direct>,
    limits: ConnLimits,
    grace: Duration,
    stop: watch::Receiver<bool>,
) -> Links {
    Links(Arc::new(move |stream| {
        let served = serve_link(
            stream,
            router.clone(),
            Arc::clone(&direct),
            limits,
            grace,
            stop.clone(),
        );
        tokio::spawn(served);
    }))
}

/// The worker's side of a link, as a connection's tracking reaches it.
#[derive(Debug)]
struct Side {
    states: States,
    /// Requests served and not reported yet.
    served: Mutex<Vec<Served>>,
    /// The connections being served, by slot.
    serving: Mutex<HashMap<u32, Tracking>>,
    /// Requests given up to the front whose connection ended while their call ran on: watched
    /// until their grace period is over.
    lingering: Mutex<Vec<Tracking>>,
    grace: Duration,
    /// The front's number of this worker's generation, as answers carry it.
    generation: HeaderValue,
}

impl LinkSide for Side {
    fn cell(&self, slot: u32) -> &AtomicU32 {
        // Slots are checked when a connection is given.
        self.states.get(slot).expect("a slot within the states")
    }

    fn route(&self, slot: u32) -> &AtomicU32 {
        self.states.route(slot).expect("a slot within the states")
    }

    fn end(&self, slot: u32) -> &AtomicU64 {
        self.states.end(slot).expect("a slot within the states")
    }

    fn serving(&self) -> bool {
        self.states.serving().load(Ordering::Acquire) != 0
    }

    fn served(&self, served: Served) {
        let mut all = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() < MAX_REPORTED * 16 {
            all.push(served);
        }
    }

    fn grace(&self) -> Duration {
        self.grace
    }

    fn generation(&self) -> &HeaderValue {
        &self.generation
    }
}

async fn serve_link(
    stream: UnixStream,
    router: Router,
    direct: Arc<Direct>,
    limits: ConnLimits,
    grace: Duration,
    stop: watch::Receiver<bool>,
) {
    let link = Arc::new(Link::new(stream));
    let mut incoming = Incoming::default();
    let side = match link.next_from_front(&mut incoming).await {
        Ok(Some(ToWorker::Hello {
            states,
            slots,
            generation,
        })) => match States::open(states, slots) {
            Ok(states) => Arc::new(Side {
                states,
                served: Mutex::default(),
                serving: Mutex::default(),
                lingering: Mutex::default(),
                grace,
                generation: HeaderValue::from(generation),
            }),
            Err(error) => {
                tracing::error!(%error, "the front's connection states could not be mapped");
                return;
            }
        },
        _ => {
            tracing::error!("the front's link did not begin with its hello");
            return;
        }
    };
    let (give, given) = mpsc::unbounded_channel();
    let (ended, mut endings) = mpsc::unbounded_channel();
    let (recall, recalled) = watch::channel(0_u64);
    tokio::spawn(listen::serve_given(
        given,
        router,
        Some(direct),
        limits,
        recalled,
        ended,
        stop,
    ));
    watch_deadlines(Arc::clone(&link), Arc::clone(&side));
    let reporting = Arc::clone(&link);
    let reported = Arc::clone(&side);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(REPORT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                Some(end) = endings.recv() => {
                    let slot = match &end {
                        GivenEnd::Closed { slot } | GivenEnd::Returned { slot, .. } => *slot,
                    };
                    let gone = reported.serving.lock().unwrap_or_else(PoisonError::into_inner).remove(&slot);
                    if let Some(tracking) = gone.filter(Tracking::runs_on) {
                        reported.lingering.lock().unwrap_or_else(PoisonError::into_inner).push(tracking);
                    }
                    // Its requests counted before it goes.
                    report_served(&reporting, &reported).await;
                    match end {
                        GivenEnd::Closed { slot } => ToFront::Ended { slot },
                        GivenEnd::Returned { slot, unread } => ToFront::Returned {
                            slot,
                            unread: unread.to_vec(),
                        },
                    }
                }
                _ = ticks.tick() => {
                    report_served(&reporting, &reported).await;
                    continue;
                }
                else => return,
            };
            if reporting.send_to_front(&message).await.is_err() {
                return;
            }
        }
    });
    loop {
        match link.next_from_front(&mut incoming).await {
            Ok(Some(ToWorker::Give {
                slot,
                unread,
                connection,
            })) => {
                if side.states.get(slot).is_none() {
                    tracing::warn!(slot, "a connection given with a slot past the states");
                    continue;
                }
                let stream = std::net::TcpStream::from(connection);
                let _ = stream.set_nonblocking(true);
                // Counted here, off the front's accept loop: where this worker's writes start.
                let given_at = states::written(&stream);
                let link_side = Arc::clone(&side) as Arc<dyn LinkSide>;
                let tracking = Tracking::new(slot, link_side, given_at);
                side.serving
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(slot, tracking.clone());
                let _ = give.send(Given {
                    slot,
                    stream,
                    unread: Bytes::from(unread),
                    tracking,
                });
            }
            Ok(Some(ToWorker::Recall)) => recall.send_modify(|n| *n += 1),
            Ok(Some(ToWorker::Hello { .. })) => {}
            // The front is gone (the worker stops when its input closes).
            Ok(None) | Err(_) => return,
        }
    }
}

/// Reports the requests served since the last report.
async fn report_served(link: &Link, side: &Side) {
    loop {
        let served: Vec<Served> = {
            let mut all = side.served.lock().unwrap_or_else(PoisonError::into_inner);
            let n = all.len().min(MAX_REPORTED);
            all.drain(..n).collect()
        };
        if served.is_empty() || link.send_to_front(&ToFront::Served(served)).await.is_err() {
            return;
        }
    }
}

/// Watches the deadlines of the requests being served, on a thread of its own (plugin calls
/// may hold every thread of the runtime): a request past its deadline is given up to the front,
/// which answers it; a call still running the grace period later asks for this worker to be
/// replaced. Until the link ends.
fn watch_deadlines(link: Arc<Link>, side: Arc<Side>) {
    let watching = std::thread::Builder::new()
        .name("graft-deadlines".into())
        .spawn(move || {
            let stuck = AtomicBool::new(false);
            loop {
                std::thread::sleep(REPORT_EVERY);
                if Arc::strong_count(&link) == 1 {
                    return; // the link is gone
                }
                for message in overdue(&side, &stuck) {
                    if link.send_to_front_blocking(&message).is_err() {
                        return;
                    }
                }
            }
        });
    if let Err(error) = watching {
        tracing::error!(%error, "could not start the watch on deadlines");
    }
}

/// The connections whose request is past its deadline, given up to the front; and whether a
/// call runs on past its deadline and the grace period (once).
fn overdue(side: &Side, stuck: &AtomicBool) -> Vec<ToFront> {
    let now = Instant::now();
    let mut messages = Vec::new();
    let past_grace = |tracking: &Tracking| {
        tracking
            .deadline_at()
            .is_some_and(|deadline| now >= deadline + side.grace && tracking.runs_on())
    };
    let mut stuck_now = false;
    for tracking in side
        .serving
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
    {
        if tracking
            .deadline_at()
            .is_some_and(|deadline| now >= deadline)
            && tracking.take()
        {
            messages.push(ToFront::Overdue {
                slot: tracking.slot(),
            });
        }
        stuck_now |= past_grace(tracking);
    }
    let mut lingering = side
        .lingering
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    stuck_now |= lingering.iter().any(past_grace);
    lingering.retain(|tracking| tracking.runs_on() && !past_grace(tracking));
    if stuck_now && !stuck.swap(true, Ordering::AcqRel) {
        messages.push(ToFront::Stuck);
    }
    messages
}
