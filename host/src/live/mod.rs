//! The live set's parts: what a request holds and calls through.
//!
//! - `generation`: an immutable snapshot of plugins, links, cells, tables and routes;
//!   [`Export`](generation::Export) handles and resolved calls.
//! - `pin`: [`Pin`](pin::Pin) / [`OwnedPin`](pin::OwnedPin), holding one generation for a
//!   request.
//! - `calls`: the calls in flight on every generation (what each can reach, since when), which
//!   owned pins register in.
//! - `gate`: the request boundary a migration or a save closes for the calls that can reach its
//!   plugins.
//! - `route`: the routes a generation's plugins declare, gathered, and their handlers called.
//! - `async_call`: an async export's future, polled under its pin.
//!
//! These refer to one another (a pin holds a generation, a generation counts its pins' calls);
//! nothing outside this module is referred to by them but the pipeline's products (loaded
//! plugins, links, state and tables) and the error types.

pub(crate) mod async_call;
pub(crate) mod calls;
pub(crate) mod gate;
pub(crate) mod generation;
pub mod pin;
pub mod route;
