//! The pipeline's migrate step: what a prepared generation takes over from the live one, its
//! plugins' state cells (`state.rs`) and tables (`table.rs`): passed through as they are,
//! started fresh, read back from the store, or migrated. Prepare runs each migration once as a
//! trial; publish runs it again on quiescent data (see `host/publish.rs`).
//!
//! This step knows generations and loaded plugins; the state and tables it carries know
//! neither, so that the loader can read a plugin's declarations of them.

mod state;
mod table;

pub(crate) use state::{carry as carry_state, Migration};
pub(crate) use table::{carry as carry_tables, TableHome, TableMigration};
