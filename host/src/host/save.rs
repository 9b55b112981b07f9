//! Saving plugin state ([`graft_api::State::PERSIST`]) to the data directory, so that a restart
//! comes back with it (the first release a host publishes reads it back; see `prepare.rs`).
//!
//! A save copies the values at a request boundary when it can: it closes the gate for the
//! requests that can reach a plugin whose state is saved, waits at most [`SAVE_HOLD`] for
//! those in flight to end, copies the values and opens the gate again. When a call that can
//! write them is still running then (a slow request), it does not wait and does not fail: it
//! opens the gate and copies the values live, each field with an atomic load (see
//! `StateCell::snapshot_live`), and says so. The files are written after that, with the
//! boundary open.
//!
//! Tables need no boundary: a save writes, for each key written since the last one, the value
//! there when it reads it (see `table/persist.rs`). Every-write tables are the committer's
//! alone: their writes are durable before they are acknowledged.

use std::time::Duration;

use crate::error::SaveStateError;
use crate::status::CallStatus;
use crate::store::Save;
use crate::table::{self, Durability, Table};

use super::Host;

/// How long a save holds requests at the boundary, at most, waiting for the calls in flight
/// that can write the state it copies.
pub const SAVE_HOLD: Duration = Duration::from_millis(1);

/// What a state save did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SavedState {
    /// The plugins whose state was saved.
    pub plugins: Vec<String>,
    /// The tables saved (`plugin.table`), and how many of their entries were written.
    pub tables: Vec<String>,
    /// Entries written (or removed) in the store.
    pub entries: usize,
    /// How long requests that can reach those plugins were held at the boundary.
    pub pause: Duration,
    /// The calls that could write the state and were still running when it was copied (the
    /// copy was taken live, field by field); empty when it was copied at a request boundary.
    pub live: Vec<CallStatus>,
}

impl Host {
    /// Saves the state of the current generation's plugins that ask for it to the store
    /// (`DATA/state.redb`, one durable transaction), and removes the saved state of plugins no
    /// longer live. A host starting on this data
    /// directory comes back with it. Call it when a server stops and, if wanted, periodically.
    ///
    /// Requests that can reach a saved plugin are held at the boundary for at most
    /// [`SAVE_HOLD`] (about 1 ms) while the values are copied; if calls that can write them are
    /// still running then, the values are copied live instead (see [`SavedState::live`]): a
    /// slow request never makes a save fail or wait. Other requests are never held.
    ///
    /// Before the first release went live this does nothing, so that saved state is never
    /// replaced by the empty generation's.
    ///
    /// # Errors
    ///
    /// [`SaveStateError`] if the store cannot be written; what was saved before stays as it was.
    pub fn save_state(&self) -> Result<SavedState, SaveStateError> {
        self.save(Durability::OnStop)
    }

    /// [`Host::save_state`] for a periodic save: state, and the tables saved at intervals
    /// ([`Durability::Interval`]); tables saved when the server stops are left for then.
    ///
    /// # Errors
    ///
    /// As [`Host::save_state`].
    pub fn save_periodic(&self) -> Result<SavedState, SaveStateError> {
        self.save(Durability::Interval)
    }

    /// Writes every entry of `table` to the store in its schema (after a migration), and waits
    /// until it is done: through the committer for an every-write table (the one writer of its
    /// entries), in one transaction otherwise.
    pub(super) fn rewrite_now(&self, table: &Table) {
        match table.settings.durability {
            Durability::Memory => {}
            Durability::EveryWrite => self.committer.wait_rewritten(table),
            _ => {
                let _one_at_a_time = self.saving.lock().unwrap_or_else(|e| e.into_inner());
                let write = table::table_write(table, usize::MAX);
                let save = Save {
                    tables: vec![write],
                    ..Save::default()
                };
                if let Err(error) = self.store.save(&save) {
                    tracing::error!(table = %table.label(), %error, "rewriting a migrated table failed");
                    for write in save.tables {
                        table::put_back(table, write);
                    }
                }
            }
        }
    }

    /// Saves state and the tables of durability `upto`: `OnStop` saves every persisted table
    /// but the every-write ones (which the committer keeps durable), `Interval` the interval
    /// ones.
    fn save(&self, upto: Durability) -> Result<SavedState, SaveStateError> {
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        if self.live.current_id() == 0 {
            return Ok(SavedState::default());
        }
        let plugins: Vec<String> = self
            .live
            .current()
            .persisted_states()
            .map(|cell| cell.plugin.clone())
            .collect();
        let mut saved = SavedState::default();
        let snapshots: Vec<_> = if plugins.is_empty() {
            Vec::new()
        } else {
            let held = self.live.quiesce(plugins, SAVE_HOLD);
            // Read after the gate closed: a migrating publish stores under the closed gate, so
            // this is the generation whose cells no request is writing (if the hold came).
            let current = self.live.current();
            let snapshots = current
                .persisted_states()
                .map(|cell| {
                    let copy = if held.is_ok() {
                        cell.snapshot()
                    } else {
                        cell.snapshot_live()
                    };
                    (cell.plugin.clone(), copy)
                })
                .collect();
            match held {
                Ok((closed, paused)) => {
                    drop(closed);
                    saved.pause = paused.elapsed();
                }
                Err(live) => {
                    saved.pause = SAVE_HOLD;
                    tracing::info!(
                        calls = %live.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        "state copied while calls that can write it run"
                    );
                    saved.live = live;
                }
            }
            snapshots
        };
        let current = self.live.current();
        let tables: Vec<_> = current
            .tables()
            .filter(|t| !t.is_store_held())
            .filter(|t| match t.settings.durability {
                Durability::Interval => true,
                Durability::OnStop => upto == Durability::OnStop,
                _ => false,
            })
            .collect();
        let writes = tables
            .iter()
            .map(|table| table::table_write(table, usize::MAX))
            .collect();
        let keep = current
            .tables()
            .filter(|t| t.settings.durability.is_persisted())
            .map(|t| table::store_label(t))
            .collect();
        let save = Save {
            cells: Some(&snapshots),
            tables: writes,
            keep_tables: Some(keep),
        };
        if let Err(e) = self.store.save(&save) {
            for (table, write) in tables.iter().zip(save.tables) {
                table::put_back(table, write);
            }
            return Err(SaveStateError::Store(self.store.path().to_owned(), e));
        }
        saved.entries = save.tables.iter().map(|w| w.entries.len()).sum();
        saved.tables = tables.iter().map(|t| t.label()).collect();
        saved.plugins = snapshots.into_iter().map(|(plugin, _)| plugin).collect();
        tracing::info!(
            plugins = ?saved.plugins,
            tables = ?saved.tables,
            entries = saved.entries,
            pause_us = u64::try_from(saved.pause.as_micros()).unwrap_or(u64::MAX),
            live = !saved.live.is_empty(),
            "state saved"
        );
        Ok(saved)
    }
}
