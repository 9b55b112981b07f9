//! The libraries a host has loaded, by the SHA-256 of their build: a build that is still loaded
//! is reused, never loaded twice.
//!
//! Prepares run concurrently, so two of them may want the same new build at once. Loading (the
//! `dlopen`, the checks, and the entry here) happens under one lock, so the second finds the
//! first's library instead of opening the image again and running its initialiser twice. That
//! lock adds no waiting of its own: glibc holds its global loader lock for the whole of a
//! `dlopen` anyway. Staging (reading, hashing, copying) and initialisers run outside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::loader::{LoadError, LoadedPlugin};

/// Every live library, weakly: generations (and running initialisers) own them.
#[derive(Debug, Default)]
pub(crate) struct Libraries {
    by_sha256: Mutex<HashMap<String, Weak<LoadedPlugin>>>,
    loading: Mutex<()>,
}

impl Libraries {
    /// The library of build `sha256`: the one already loaded, or a new one from `load`.
    pub(crate) fn get_or_load(
        &self,
        sha256: &str,
        load: impl FnOnce() -> Result<LoadedPlugin, LoadError>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(loaded) = self.get(sha256) {
            return Ok(loaded);
        }
        let loaded = Arc::new(load()?);
        let mut map = self.lock();
        map.retain(|_, plugin| plugin.strong_count() > 0);
        map.insert(sha256.to_owned(), Arc::downgrade(&loaded));
        Ok(loaded)
    }

    /// The library of build `sha256`, if it is loaded.
    pub(crate) fn get(&self, sha256: &str) -> Option<Arc<LoadedPlugin>> {
        self.lock().get(sha256).and_then(Weak::upgrade)
    }

    /// Every live library.
    pub(crate) fn live(&self) -> Vec<Arc<LoadedPlugin>> {
        self.lock().values().filter_map(Weak::upgrade).collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Weak<LoadedPlugin>>> {
        self.by_sha256.lock().unwrap_or_else(|e| e.into_inner())
    }
}
