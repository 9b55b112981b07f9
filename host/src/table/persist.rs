//! Tables in the store: what a save writes of a table, and the committer that makes the writes
//! of every-write tables durable before they are acknowledged.
//!
//! A table remembers the keys written since its last save (its dirty keys). A save writes, for
//! each of them, the value there now (or its removal), tagged with the table's schema, in one
//! durable transaction: a key written while a save runs is either in it or dirty for the next
//! one. After a migration the new table also has every key to write again in its schema, and the
//! deploy answers once they are written (see `host/publish.rs`); until then a restart reads an
//! entry of an older schema through the starting build's `up`, so no entry is lost.
//!
//! Every-write tables: a writer marks its key dirty, takes a ticket (a sequence number) and
//! waits for a commit that started after it took it. One committer thread writes the dirty keys
//! of every every-write table, commits (one fsync) and wakes every writer it covered: writes
//! that arrive while a commit runs share the next one (group commit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use crate::keyset::Key;
use crate::store::{Save, Store, TableWrite};

use super::entries::Table;

/// How many keys one commit of the committer writes again after a migration, at most, beside
/// the dirty ones: the writers waiting on a commit are never held up by a whole table's rewrite.
const REWRITE_BATCH: usize = 2_000;

/// What one save writes of `table`: its dirty keys (taken) and up to `rewrite_limit` keys still
/// to be written again. [`put_back`] returns them to the table if the save fails.
pub(crate) fn table_write(table: &Table, rewrite_limit: usize) -> TableWrite {
    let mut keys = table.take_dirty();
    let rewritten = table.take_rewrite(rewrite_limit);
    let rewritten_from = keys.len();
    keys.extend(rewritten);
    let entries = keys
        .into_iter()
        .map(|key| {
            let value = table.get(&key);
            (key, value)
        })
        .collect();
    TableWrite {
        label: store_label(table),
        key: table.key_kind.0,
        schema: table.schema,
        fingerprint: table.fingerprint.clone(),
        replace: table.take_replace_saved(),
        entries,
        rewritten_from,
    }
}

/// Gives a failed save's keys back to their table, for the next save.
pub(crate) fn put_back(table: &Table, write: TableWrite) {
    if write.replace {
        table.replace_saved();
    }
    let mut keys: Vec<Key> = write.entries.into_iter().map(|(key, _)| key).collect();
    let rewritten = keys.split_off(write.rewritten_from.min(keys.len()));
    table.put_back_dirty(keys);
    table.put_back_rewrite(rewritten);
}

/// `plugin/table`: the table's name in the store.
pub(crate) fn store_label(table: &Table) -> String {
    format!("{}/{}", table.plugin, table.name)
}

/// Makes the writes of every-write tables durable, in groups (see the module docs).
pub(crate) struct Committer {
    store: Arc<Store>,
    shared: Arc<Shared>,
}

/// What the committer's thread and the writers share; the thread holds no strong reference to
/// the [`Committer`] while it waits, so the host (and its store) can go.
struct Shared {
    /// Tickets handed out: one per write waiting to be durable.
    tickets: AtomicU64,
    state: Mutex<CommitState>,
    /// Wakes the committer thread.
    work: Condvar,
    /// Wakes the writers when a commit ends.
    committed: Condvar,
}

#[derive(Default)]
struct CommitState {
    /// The highest ticket a writer waits for.
    wanted: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// The last commit that failed: the tickets up to it, and why.
    failed: Option<(u64, String)>,
    /// The every-write tables alive.
    tables: Vec<Weak<Table>>,
    /// Whether the thread is running.
    running: bool,
    /// Set when the committer is dropped: the thread ends.
    stopping: bool,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    pub(crate) fn new(store: Arc<Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            shared: Arc::new(Shared {
                tickets: AtomicU64::new(0),
                state: Mutex::default(),
                work: Condvar::new(),
                committed: Condvar::new(),
            }),
        })
    }

    /// Adds an every-write table, and starts the committer's thread if it is not running.
    pub(crate) fn register(self: &Arc<Self>, table: &Arc<Table>) -> std::io::Result<()> {
        let mut state = self.shared.lock();
        state.tables.retain(|t| t.strong_count() > 0);
        state.tables.push(Arc::downgrade(table));
        if !state.running {
            let (committer, shared) = (Arc::downgrade(self), Arc::clone(&self.shared));
            std::thread::Builder::new()
                .name("graft-commit".into())
                .spawn(move || run(&committer, &shared))?;
            state.running = true;
        }
        self.shared.work.notify_one();
        Ok(())
    }

    /// Waits until everything written before this call is durable.
    ///
    /// # Errors
    ///
    /// If the commit that covered it failed (the write stays dirty for the next one).
    pub(crate) fn durable(&self) -> Result<(), String> {
        let shared = &self.shared;
        let ticket = shared.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = shared.lock();
        if state.wanted < ticket {
            state.wanted = ticket;
            shared.work.notify_one();
        }
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if let Some((up_to, why)) = &state.failed {
                if *up_to >= ticket {
                    return Err(format!("the write was not made durable: {why}"));
                }
            }
            state = shared
                .committed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Wakes the committer's thread (a held table was released, rewrites are wanted).
    pub(crate) fn wake(&self) {
        let _state = self.shared.lock();
        self.shared.work.notify_all();
    }

    /// Waits until `table` has nothing left to write again.
    pub(crate) fn wait_rewritten(&self, table: &Table) {
        self.wake();
        let mut state = self.shared.lock();
        while table.rewrite_pending() {
            let (next, _) = self
                .shared
                .committed
                .wait_timeout(state, std::time::Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner());
            state = next;
        }
    }

    /// One commit: the dirty keys of every every-write table, and a batch of rewrites.
    /// Returns the tickets it covers and whether rewrites remain.
    fn commit_once(&self) -> (u64, Result<bool, String>) {
        let tables: Vec<Arc<Table>> = {
            let mut state = self.shared.lock();
            state.tables.retain(|t| t.strong_count() > 0);
            state.tables.iter().filter_map(Weak::upgrade).collect()
        };
        // Every ticket taken before this was taken after its write's key was marked dirty:
        // the keys taken below include it.
        let covered = self.shared.tickets.load(Ordering::SeqCst);
        let writes: Vec<TableWrite> = tables
            .iter()
            .map(|table| table_write(table, REWRITE_BATCH))
            .collect();
        let save = Save {
            tables: writes,
            ..Save::default()
        };
        match self.store.save(&save) {
            Ok(()) => {
                let pending = tables.iter().any(|t| t.rewrite_pending());
                (covered, Ok(pending))
            }
            Err(error) => {
                for (table, write) in tables.iter().zip(save.tables) {
                    put_back(table, write);
                }
                (covered, Err(error.to_string()))
            }
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.work.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an every-write table keeps its writes out of the store for now.
    fn held(state: &CommitState) -> bool {
        state
            .tables
            .iter()
            .any(|t| t.upgrade().is_some_and(|t| t.is_store_held()))
    }

    /// Whether an every-write table has entries to write again.
    fn rewrites_pending(state: &CommitState) -> bool {
        state
            .tables
            .iter()
            .any(|t| t.upgrade().is_some_and(|t| t.rewrite_pending()))
    }
}

/// The committer's thread: commits while writers wait or rewrites remain; ends when the
/// committer is dropped.
fn run(committer: &Weak<Committer>, shared: &Shared) {
    loop {
        {
            let mut state = shared.lock();
            // A held table (see `Table::hold_store`) stops every commit: a commit covers the
            // writes of every table, so none is acknowledged until it is released.
            while !state.stopping
                && (Shared::held(&state)
                    || (state.wanted <= state.durable && !Shared::rewrites_pending(&state)))
            {
                state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.stopping {
                state.running = false;
                return;
            }
        }
        let Some(this) = committer.upgrade() else {
            return;
        };
        let (covered, result) = this.commit_once();
        drop(this);
        let mut state = shared.lock();
        let failed = result.is_err();
        match result {
            Ok(_) => state.durable = state.durable.max(covered),
            Err(why) => {
                tracing::error!(error = %why, "a commit of every-write tables failed; retrying");
                state.failed = Some((covered, why));
            }
        }
        shared.committed.notify_all();
        drop(state);
        if failed {
            // A store that fails fails again at once: not in a busy loop.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
