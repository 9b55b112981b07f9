//! What the operator decides about a table: where it is kept and how large it may grow.

use serde::{Deserialize, Serialize};

/// How a table's entries are kept across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Durability {
    /// In memory only: the table starts empty after a restart.
    Memory,
    /// Saved to the store when the server stops (and with every state save): what was written
    /// since the last save is lost if the process dies without stopping.
    #[default]
    OnStop,
    /// Saved to the store every `state_save_interval_ms` (and when the server stops): what was
    /// written since the last save is lost if the process dies.
    Interval,
    /// A write is acknowledged (the plugin's call returns) only once it is in the store,
    /// committed and fsynced: it survives SIGKILL and power loss. Concurrent writes share one
    /// commit (group commit).
    EveryWrite,
}

impl Durability {
    /// Whether the table is kept in the store at all.
    pub fn is_persisted(self) -> bool {
        self != Self::Memory
    }
}

/// The operator's settings for one table (or the defaults for all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TableSettings {
    /// How its entries are kept.
    #[serde(default)]
    pub durability: Durability,
    /// At most this many entries: an insert of a new key past it is refused
    /// (`TableError::Full` in the plugin).
    #[serde(default)]
    pub max_entries: Option<u64>,
    /// At most this many bytes of keys and encoded values: a write past it is refused.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

impl TableSettings {
    /// Settings with this durability and no limits.
    pub fn new(durability: Durability) -> Self {
        Self {
            durability,
            ..Self::default()
        }
    }

    /// With at most `entries` entries.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = Some(entries);
        self
    }

    /// With at most `bytes` bytes of keys and values.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }
}

/// The settings of every table: defaults, and those the operator gave per table.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableConfig {
    pub(crate) defaults: TableSettings,
    /// By `plugin.table`.
    pub(crate) each: std::collections::HashMap<String, TableSettings>,
}

impl TableConfig {
    /// The settings of table `table` of plugin `plugin`.
    pub(crate) fn of(&self, plugin: &str, table: &str) -> TableSettings {
        self.each
            .get(&format!("{plugin}.{table}"))
            .copied()
            .unwrap_or(self.defaults)
    }
}
