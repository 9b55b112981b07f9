//! `[http_client]`: what plugins may fetch, and how (see [`outbound`](crate::outbound)).

use serde::Deserialize;

/// `[http_client]` in `graft.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpClientConfig {
    /// Hosts plugins may call: `host` (any port) or `host:port`. Empty: none.
    #[serde(default)]
    pub allow: Vec<String>,
    /// How long connecting may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a whole fetch may take, body included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The largest response body read; larger is
    /// [`FetchError::TooLarge`](graft_api::services::FetchError::TooLarge).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Idle connections kept per upstream.
    #[serde(default = "default_max_idle_per_host")]
    pub max_idle_per_host: usize,
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_response_bytes() -> u64 {
    1 << 20
}
fn default_max_idle_per_host() -> usize {
    32
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            connect_timeout_ms: default_connect_timeout_ms(),
            timeout_ms: default_timeout_ms(),
            max_response_bytes: default_max_response_bytes(),
            max_idle_per_host: default_max_idle_per_host(),
        }
    }
}

impl HttpClientConfig {
    /// Checks the settings: timeouts and limits of at least 1.
    pub fn validate(&self) -> Result<(), String> {
        if self.connect_timeout_ms == 0 || self.timeout_ms == 0 || self.max_response_bytes == 0 {
            return Err("[http_client] timeouts and max_response_bytes must be at least 1".into());
        }
        if let Some(bad) = self.allow.iter().find(|h| h.is_empty() || h.contains('/')) {
            return Err(format!(
                "[http_client] allow: {bad:?} is not a host or host:port"
            ));
        }
        Ok(())
    }
}
