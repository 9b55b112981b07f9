//! Tables held by the host (Erlang's ETS for graft): named maps a plugin declares, whose entries
//! live in host memory and outlive every build of the plugin. See `graft_api::table` for what a
//! plugin sees.
//!
//! - `info`: what a plugin's library declares of its tables, read at load (key kind, schema,
//!   value shape, migrations).
//! - `entries`: one table's entries, limits, and what it remembers of the keys written.
//! - `ops`: the operations plugins call, through their link table (this module's `unsafe`).
//! - `persist`: what saves write of a table, and the committer of every-write tables.
//! - `settings`: the operator's durability and limits.
//!
//! How a release carries a table from one generation to the next (passed through, started
//! fresh, read back from the store, or migrated entry by entry) is a step of the pipeline:
//! `carry/table.rs`.

mod entries;
mod info;
mod ops;
mod persist;
mod settings;

pub(crate) use entries::Table;
pub(crate) use info::{MigrateFn, TableInfo};
pub(crate) use ops::slot;
pub(crate) use persist::{put_back, store_label, table_write, Committer};
pub(crate) use settings::TableConfig;
pub use settings::{Durability, TableSettings};
