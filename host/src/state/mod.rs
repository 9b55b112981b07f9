//! Plugin state held by the host: cells that outlive libraries. How a release carries them from
//! one generation to the next (pass through, start fresh, or migrate up or down) is a step of
//! the pipeline: `carry/state.rs`.
//!
//! A state value is plain data (checked by [`types::plain_data`](crate::types::plain_data) at
//! load): the host allocates it, a plugin function writes it, and the host frees it without
//! calling into any library. A generation holds its plugins' cells; a cell is shared by every
//! generation whose plugin declares the same schema and type, so a release that changes no
//! schema passes its state through as is and needs no pause. A schema change makes a new cell,
//! filled by a migration from the old one: by the newer build's `up` when the schema goes up,
//! by the current build's `down` when it goes down (a rollback). Prepare runs the migration
//! once as a trial, so a failing or panicking migration refuses the release without a pause;
//! publish runs it again on a quiescent state (see `host/publish.rs`).
//!
//! - `info`: what a library declares of its state (types as shapes, migrations).
//! - `cell`: one value in host memory (this module's `unsafe`: allocation, copies).

mod cell;
mod info;

pub(crate) use cell::StateCell;
pub(crate) use info::StateInfo;
