//! Saving plugin state ([`graft_api::State::PERSIST`]) to the data directory, so that a restart
//! comes back with it (the first release a host publishes reads it back; see `prepare.rs`).
//!
//! A save copies the values at a request boundary, the way a migration does: it closes the
//! gate, waits for the counted pins to drop (until the drain deadline), copies the bytes of
//! every saved value of the current generation, and opens the gate again; the files are
//! written after that, with the boundary open.

use std::time::Duration;

use crate::error::SaveStateError;
use crate::snapshot;

use super::Host;

/// What a state save did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SavedState {
    /// The plugins whose state was saved.
    pub plugins: Vec<String>,
    /// How long new requests were held at the boundary while the values were copied.
    pub pause: Duration,
}

impl Host {
    /// Saves the state of the current generation's plugins that ask for it to the data
    /// directory (`state/<plugin>.state`, each written whole: temp file, fsync, rename), and
    /// removes the saved state of plugins no longer live. A host starting on this data
    /// directory comes back with it. Call it when a server stops (after its requests drained)
    /// and, if wanted, periodically: each save holds new requests at the boundary for as long
    /// as copying takes, like a migration, and only if some plugin's state is saved.
    ///
    /// Before the first release went live this does nothing, so that saved state is never
    /// replaced by the empty generation's.
    ///
    /// # Errors
    ///
    /// [`SaveStateError`] if requests are still in flight at the drain deadline or a file
    /// cannot be written; what was saved before stays as it was.
    pub fn save_state(&self) -> Result<SavedState, SaveStateError> {
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        if self.current.load().id() == 0 {
            return Ok(SavedState::default());
        }
        let has_saved = self.current.load().persisted_states().next().is_some();
        let (snapshots, pause) = if has_saved {
            let (closed, paused) = self
                .quiesce()
                .ok_or(SaveStateError::Drain(self.settings.migration_drain))?;
            // Read after the gate closed: a migrating publish stores under the closed gate, so
            // this is the generation whose cells no request is writing.
            let current = self.current.load_full();
            let snapshots: Vec<_> = current
                .persisted_states()
                .map(|cell| (cell.plugin.clone(), cell.snapshot()))
                .collect();
            drop(closed);
            (snapshots, paused.elapsed())
        } else {
            (Vec::new(), Duration::ZERO)
        };
        snapshot::write_all(&self.state_dir, &snapshots)
            .map_err(|e| SaveStateError::Io(self.state_dir.clone(), e))?;
        let plugins: Vec<String> = snapshots.into_iter().map(|(plugin, _)| plugin).collect();
        tracing::info!(
            ?plugins,
            pause_us = u64::try_from(pause.as_micros()).unwrap_or(u64::MAX),
            "state saved"
        );
        Ok(SavedState { plugins, pause })
    }
}
