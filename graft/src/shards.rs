//! The app's threads: one runtime per thread ("shard"), each serving the connections handed to
//! it from accept to close, so that a request's tasks never move to another core; under
//! `isolation = "all"` the first one also runs the worker's channel ([`crate::worker`]).
//!
//! Why, measured (2-core VM, wrk `-t2 -c32` on loopback, the foo service, side by side with the
//! one shared multi-thread runtime this replaced, 5 to 6 rounds of 3 s): in process 108k-126k
//! requests/s against 100k-114k (+8 to 10%); isolated 79k-93k against 64k-80k (+15 to 23%).
//! With wrk checking every answer (as `swap-under-load` does, wrk then needs more of the two
//! cores) the difference is within the noise: 116k against 114k, 77k against 75k. A wake-up on
//! another core is what costs on a VM (an exit to the hypervisor); a connection kept on one
//! thread makes fewer of them.
//!
//! `app_threads` (default: the CPUs graft may use) sets how many; `pin_app_threads` whether
//! each is pinned to a CPU of its own, by default only when graft may use exactly as many CPUs
//! as it runs app threads (a machine or a cpuset of its own: pinning then takes nothing from
//! anyone; on a shared machine limited by a CPU quota it would crowd the first CPUs). Pinned or
//! not measured the same in the runs above. A thread a pinned shard starts (its blocking pool:
//! slow plugin calls) may run on every CPU graft may use.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

/// The app's threads.
#[derive(Debug)]
pub(crate) struct Shards {
    shards: Vec<Shard>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Shard {
    handle: Handle,
    cpu: Option<usize>,
    /// Dropped to stop the shard: its thread then drops its runtime and what runs on it.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Shards {
    /// Starts `threads` shards (at least one), pinned as `pin` says (`None`: when `threads` is
    /// the number of CPUs this process may use).
    ///
    /// # Errors
    ///
    /// If a thread or its runtime cannot be started.
    pub(crate) fn start(threads: usize, pin: Option<bool>) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let allowed = affinity::allowed();
        let pinned = pin.unwrap_or(threads == allowed.len() && threads > 1);
        let shards = (0..threads)
            .map(|index| {
                // None if the system did not say which CPUs this process may use.
                let cpu = pinned
                    .then(|| allowed.get(index % allowed.len().max(1)).copied())
                    .flatten();
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let handle = run_thread(format!("graft-app-{index}"), cpu, async {
                    let _ = stopped.await;
                })?;
                Ok(Shard {
                    handle,
                    cpu,
                    _stop: stop,
                })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            shards,
            next: AtomicUsize::new(0),
        })
    }

    /// No shards: whoever would use one uses the runtime it runs on (a worker process, the
    /// admin plane's listener, tests).
    pub(crate) fn none() -> Self {
        Self {
            shards: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// Shard `index`'s runtime.
    pub(crate) fn handle(&self, index: usize) -> &Handle {
        &self.shards[index].handle
    }

    /// The CPU shard `index` is pinned to, if it is.
    pub(crate) fn cpu(&self, index: usize) -> Option<usize> {
        self.shards[index].cpu
    }

    /// Whether the shards are pinned.
    pub(crate) fn pinned(&self) -> bool {
        self.shards.first().is_some_and(|shard| shard.cpu.is_some())
    }

    /// How many, and where each is pinned, as `/status` says.
    pub(crate) fn describe(&self) -> crate::api::AppThreads {
        crate::api::AppThreads {
            count: self.shards.len(),
            pinned_cpus: self.shards.iter().filter_map(|shard| shard.cpu).collect(),
        }
    }

    /// The next shard's runtime, in turn (a new connection's), or `None` without shards.
    pub(crate) fn next(&self) -> Option<&Handle> {
        if self.shards.is_empty() {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        Some(&self.shards[index].handle)
    }
}

/// Runs `until` on a new thread named `name`, with a runtime of its own (one worker thread),
/// pinned to `cpu` if given (the threads it starts are not: see the module doc). Returns the
/// runtime's handle once it runs; the thread ends with `until`.
///
/// The runtime is tokio's multi-thread one with a single worker, owned by a thread of its own
/// that drops it when `until` ends, so a shard can be stopped from anywhere (async code
/// included). A current-thread runtime run by the thread itself measured the same.
///
/// # Errors
///
/// If the thread or its runtime cannot be started.
pub(crate) fn run_thread(
    name: String,
    cpu: Option<usize>,
    until: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<Handle> {
    let allowed = affinity::allowed();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name.clone())
        .enable_all()
        .on_thread_start(move || {
            if cpu.is_some() {
                affinity::set(&allowed);
            }
        })
        .build()?;
    let (started, ready) = std::sync::mpsc::channel();
    // Runs on the runtime's one worker thread, which polls every task of the runtime.
    runtime.spawn(async move {
        if let Some(cpu) = cpu {
            affinity::set(&[cpu]);
        }
        let _ = started.send(());
    });
    let handle = runtime.handle().clone();
    let until = runtime.spawn(until);
    std::thread::Builder::new()
        .name(format!("{name}-owner"))
        .spawn(move || {
            let _ = runtime.block_on(until);
            runtime.shutdown_background();
        })?;
    ready
        .recv()
        .map_err(|_| std::io::Error::other("the thread ended before its runtime started"))?;
    Ok(handle)
}

/// The CPUs a thread may run on (Linux's affinity mask).
pub(crate) mod affinity {
    /// How many CPUs a mask can name.
    const SET_SIZE: usize = libc::CPU_SETSIZE as usize;

    /// The CPUs the calling thread may run on, in order; empty if the system does not say.
    #[allow(unsafe_code)]
    pub(crate) fn allowed() -> Vec<usize> {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `cpu_set_t` is plain data (all zeros: the empty set); sched_getaffinity
        // writes at most `size` bytes into it; CPU_ISSET reads the bit of a CPU below
        // CPU_SETSIZE, which every one asked is.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut set) != 0 {
                return Vec::new();
            }
            (0..SET_SIZE)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect()
        }
    }

    /// Lets the calling thread run on `cpus` only; a failure (a CPU taken away meanwhile) is
    /// logged and leaves it where it may run.
    #[allow(unsafe_code)]
    pub(crate) fn set(cpus: &[usize]) {
        let cpus: Vec<usize> = cpus.iter().copied().filter(|&cpu| cpu < SET_SIZE).collect();
        if cpus.is_empty() {
            return;
        }
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: as in `allowed`: CPU_SET writes the bit of a CPU below CPU_SETSIZE (filtered
        // above), sched_setaffinity reads `size` bytes of the set.
        let failed = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(0, size, &set) != 0
        };
        if failed {
            let error = std::io::Error::last_os_error();
            tracing::warn!(?cpus, %error, "could not pin a thread to its CPUs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_each_shard_in_turn() {
        let shards = Shards::start(3, Some(false)).unwrap();
        assert!(!shards.pinned());
        let seen: Vec<_> = (0..6)
            .map(|_| {
                let handle = shards.next().unwrap().clone();
                let (tx, rx) = std::sync::mpsc::channel();
                handle.spawn(async move {
                    let _ = tx.send(std::thread::current().name().map(str::to_owned));
                });
                rx.recv().unwrap()
            })
            .collect();
        let expected: Vec<_> = [0, 1, 2, 0, 1, 2]
            .into_iter()
            .map(|i| Some(format!("graft-app-{i}")))
            .collect();
        assert_eq!(seen, expected);
        assert!(Shards::none().next().is_none());
    }

    #[test]
    fn a_pinned_shard_runs_on_its_cpu_and_its_blocking_threads_anywhere_allowed() {
        let allowed = affinity::allowed();
        assert!(
            !allowed.is_empty(),
            "Linux says which CPUs a thread may run on"
        );
        let shards = Shards::start(allowed.len(), Some(true)).unwrap();
        assert!(shards.pinned());
        let last = allowed.len() - 1;
        assert_eq!(shards.cpu(last), Some(allowed[last]));
        let (tx, rx) = std::sync::mpsc::channel();
        shards.handle(last).spawn(async move {
            let on_shard = affinity::allowed();
            let blocking = tokio::task::spawn_blocking(affinity::allowed)
                .await
                .unwrap();
            let _ = tx.send((on_shard, blocking));
        });
        let (on_shard, blocking) = rx.recv().unwrap();
        assert_eq!(on_shard, vec![allowed[last]]);
        assert_eq!(
            blocking, allowed,
            "a thread the shard starts is not pinned with it"
        );
    }

    #[test]
    fn by_default_shards_are_pinned_only_when_they_are_as_many_as_the_cpus_allowed() {
        let allowed = affinity::allowed().len();
        let as_many = Shards::start(allowed, None).unwrap();
        assert_eq!(as_many.pinned(), allowed > 1);
        let more = Shards::start(allowed + 1, None).unwrap();
        assert!(!more.pinned());
    }
}
