//! `graft worker`: the worker's side. It prepares its config's release as `graft serve` would
//! but binds no listener (neither the app's nor the admin plane's: only its front reaches it),
//! serves the front's requests on its channel's socket (see `channel.rs`), says where once it
//! serves (one JSON line on standard output), and stops on
//! SIGTERM or SIGINT (draining first) or when its standard input closes (the front is gone).

use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::Context as _;

use super::{shutdown_signal, Server};
use crate::config::ServeConfig;
use crate::worker::Ready;

/// Runs a worker until it is told to stop.
///
/// # Errors
///
/// If the config cannot be read, the memory limit set, or the server started (its release
/// refused, most often): the front reports it as the worker's start failure.
pub fn run(config: &Path, channel: &Path, memory_limit_mb: Option<u64>) -> anyhow::Result<()> {
    if let Some(limit) = memory_limit_mb {
        limit_memory(limit.saturating_mul(1 << 20))?;
    }
    let mut config = ServeConfig::load(config)?;
    config.headless = true;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let server = Server::start(config).await?;
        crate::worker::serve_channel(channel, server.router(), server.calls(), server.links())
            .with_context(|| format!("binding {}", channel.display()))?;
        let ready = serde_json::to_string(&Ready {
            channel: channel.to_owned(),
        })?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}")?;
        stdout.flush()?;
        drop(stdout);
        let front_gone = tokio::task::spawn_blocking(|| {
            let mut sink = [0_u8; 64];
            let mut stdin = std::io::stdin().lock();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        });
        let stop = async {
            tokio::select! {
                () = shutdown_signal() => {}
                _ = front_gone => {}
            }
        };
        let _ = server.run_until(stop).await;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

/// Prepares the release in `dir` on a scratch host, as a deploy would, with the host services
/// `graft serve` provides, and exits: `graft preflight`, which the front runs before it loads a
/// release itself (see `graft/src/worker/preflight.rs`). Its log goes to standard output,
/// which says, before each plugin's code runs, the step, the plugin and the file.
///
/// # Errors
///
/// If the memory limit cannot be set, or the release is refused (the front then prepares it
/// itself, and reports the refusal as its own).
pub fn run_preflight(dir: &Path, memory_limit_mb: Option<u64>) -> anyhow::Result<()> {
    if let Some(limit) = memory_limit_mb {
        limit_memory(limit.saturating_mul(1 << 20))?;
    }
    graft_host::check::check_with(dir, |builder| {
        super::provide_services(builder, &Default::default())
    })?;
    Ok(())
}

/// Caps what this process may allocate (`RLIMIT_DATA`: heap and private writable mappings),
/// so that a leak aborts this worker alone.
#[allow(unsafe_code)]
fn limit_memory(bytes: u64) -> anyhow::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct it is given, which lives for the call.
    let failed = unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } != 0;
    anyhow::ensure!(
        !failed,
        "setting the memory limit: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}
