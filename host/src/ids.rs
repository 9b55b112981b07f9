//! Generation ids: unique and increasing for the life of a data directory, across restarts.
//!
//! Every prepare takes an id, published or not (a canary serves requests under one). Writing
//! the counter for each would put an fsync on every deploy, so ids are reserved in blocks: the
//! file `DATA/generations` holds a bound below which ids may have been handed out, raised by
//! [`BLOCK`] (temp file, fsync, rename) before an id at or past it is handed out. A restarted
//! host starts at the bound, so an id is never served twice; a restart skips the rest of a
//! block.
//!
//! Ids stop at [`MAX_ID`], 2^53 - 1, the largest integer a JSON client (JavaScript's numbers)
//! reads exactly; a host that would hand out more refuses the deploy rather than wrap through 0
//! (only a tampered `generations` file or release record gets there).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::atomic_file;
use crate::error::DeployCause;

/// The file, in the data directory, that holds the reserved bound.
pub(crate) const FILE: &str = "generations";

/// The largest generation id: 2^53 - 1.
pub(crate) const MAX_ID: u64 = (1 << 53) - 1;

/// How many ids one write of the file reserves.
const BLOCK: u64 = 1024;

/// Hands out generation ids.
#[derive(Debug)]
pub(crate) struct Ids {
    next: AtomicU64,
    /// Ids below it may be handed out without writing the file.
    reserved: Mutex<u64>,
    path: PathBuf,
}

impl Ids {
    /// Ids for the data directory `dir`, starting past every id a previous host may have used.
    pub(crate) fn open(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let start = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(1)
            .max(1);
        Self {
            next: AtomicU64::new(start),
            reserved: Mutex::new(start),
            path,
        }
    }

    /// Makes the next id at least `next` (ids recorded in the release history).
    pub(crate) fn at_least(&self, next: u64) {
        self.next.fetch_max(next, Ordering::Relaxed);
    }

    /// Whether another id can be handed out: refusing a release at its first step rather than
    /// after its plugins were loaded and initialised.
    ///
    /// # Errors
    ///
    /// As [`Ids::next`].
    pub(crate) fn check(&self) -> Result<(), DeployCause> {
        let next = self.next.load(Ordering::Relaxed);
        if next > MAX_ID {
            return Err(DeployCause::GenerationIds(next));
        }
        Ok(())
    }

    /// A new id, never handed out before in this data directory (unless the bound could not be
    /// written, which is logged).
    ///
    /// # Errors
    ///
    /// [`DeployCause::GenerationIds`] past [`MAX_ID`].
    pub(crate) fn next(&self) -> Result<u64, DeployCause> {
        let id = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| {
                id.checked_add(1).filter(|_| id <= MAX_ID)
            })
            .map_err(DeployCause::GenerationIds)?;
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        if id >= *reserved {
            let bound = id.saturating_add(BLOCK);
            match atomic_file::write(&self.path, format!("{bound}\n").as_bytes()) {
                Ok(()) => *reserved = bound,
                Err(error) => tracing::error!(
                    path = %self.path.display(),
                    %error,
                    "could not reserve generation ids: after a restart, ids may repeat"
                ),
            }
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_on_past_every_id_a_previous_host_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ids::open(dir.path());
        let used: Vec<u64> = (0..3).map(|_| first.next().unwrap()).collect();
        assert_eq!(used, [1, 2, 3]);
        let second = Ids::open(dir.path());
        let id = second.next().unwrap();
        assert!(id > 3, "{id}");
        let third = Ids::open(dir.path());
        assert!(third.next().unwrap() > id);
    }

    #[test]
    fn ids_stop_at_the_largest_a_json_client_reads_exactly_and_never_wrap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), format!("{}\n", MAX_ID - 1)).unwrap();
        let ids = Ids::open(dir.path());
        assert_eq!(ids.next().unwrap(), MAX_ID - 1);
        assert_eq!(ids.next().unwrap(), MAX_ID);
        for _ in 0..2 {
            assert!(matches!(ids.next(), Err(DeployCause::GenerationIds(_))));
        }
        // A record claiming u64::MAX was used: no overflow, and no id either.
        let ids = Ids::open(dir.path());
        ids.at_least(u64::MAX);
        let refused = ids.next().unwrap_err().to_string();
        assert!(refused.contains("used up"), "{refused}");
    }
}
