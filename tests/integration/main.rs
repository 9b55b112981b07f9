//! graft's integration tests: real plugins, built once per run, loaded into real hosts.

mod util;

mod admin_plane;

mod bad_input;
mod check_cli;
mod dev;
mod direct;
mod docs;
mod evolution;
mod fleet;
mod hardening;
mod http;
mod isolation;
mod lifecycle;
mod logging;
mod never_lost;
mod pinning;
mod publish;
mod releases;
mod rollout;
mod routes;
mod serve;
mod signing;
mod state;
mod switch;
mod tables;
mod ui;
mod unload;
mod uploads;
mod watch;
mod workers;
