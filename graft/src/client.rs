//! A client of the admin API (see [`api`](crate::api)): what `graft deploy`, `graft rollback`,
//! `graft status`, `graft rollout` and `graft fleet` use. Every answer is a typed value.

use graft_host::bounded::{truncate, Bounded, MAX_QUOTE};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    ApiError, DeployRequest, DeployResponse, RolloutAction, RolloutOptions, StatusResponse,
};
use crate::rollout::RolloutStatus;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The admin API could not be reached.
    #[error("talking to the admin API at {}", Bounded(url))]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: ureq::Error,
    },
    /// The server answered with an error (a refused release among them).
    #[error("{}", .error.message)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error the server sent.
        error: ApiError,
    },
    /// The server answered something that is not what the API says.
    #[error("the admin API answered {status} with an unexpected body: {body}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// The body, or its start.
        body: String,
    },
}

impl ClientError {
    /// The error the server sent, if it sent one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Talks to one server's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    /// A client of the admin API at `base` (`http://127.0.0.1:9090`), with an optional token.
    pub fn new(base: &str, token: Option<String>) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// The same client, giving up on a request after `timeout` (none by default: a deploy may
    /// take as long as its plugins' initialisers).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build();
        self.agent = ureq::Agent::new_with_config(config);
        self
    }

    /// Whether the admin API is on this machine (a loopback address or `localhost`), so that
    /// it can read a release directory by its path.
    pub fn is_local(&self) -> bool {
        let rest = self
            .base
            .split_once("://")
            .map_or(self.base.as_str(), |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host),
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// `GET /status`.
    ///
    /// # Errors
    ///
    /// [`ClientError`] if the request fails.
    pub fn status(&self) -> Result<StatusResponse, ClientError> {
        self.get("/status")
    }

    /// `POST /deploy` of a release directory on the server's filesystem (as a canary if the
    /// request asks for a rollout).
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] with the server's reason when the release is refused.
    pub fn deploy(&self, request: &DeployRequest) -> Result<DeployResponse, ClientError> {
        self.post("/deploy", request)
    }

    /// `POST /deploy` of a release bundle (see [`bundle::pack`](crate::bundle::pack)): for a host
    /// that shares no filesystem with the caller.
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] with the server's reason when the release is refused.
    pub fn deploy_bundle(
        &self,
        bundle: &[u8],
        options: &RolloutOptions,
    ) -> Result<DeployResponse, ClientError> {
        let url = format!("{}/deploy", self.base);
        let mut query = Vec::new();
        if options.rollout {
            query.push(("rollout", "true".to_owned()));
        }
        query.extend(options.canary.map(|weight| ("canary", weight.to_string())));
        query.extend(options.plan.clone().map(|plan| ("plan", plan)));
        query.extend(
            options
                .min_requests
                .map(|n| ("min_requests", n.to_string())),
        );
        query.extend(
            options
                .max_error_rate
                .map(|r| ("max_error_rate", r.to_string())),
        );
        query.extend(
            options
                .max_p99_ratio
                .map(|r| ("max_p99_ratio", r.to_string())),
        );
        query.extend(
            options
                .p99_slack_ms
                .map(|ms| ("p99_slack_ms", ms.to_string())),
        );
        if options.dry_run {
            query.push(("dry_run", "true".to_owned()));
        }
        let request = self
            .agent
            .post(&url)
            .query_pairs(query.iter().map(|(k, v)| (*k, v.as_str())))
            .header("content-type", "application/x-tar");
        answer(&url, self.authorised(request).send(bundle))
    }

    /// `POST /rollback`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] with the server's reason when there is nothing to roll back to.
    pub fn rollback(&self) -> Result<DeployResponse, ClientError> {
        self.post("/rollback", &serde_json::Value::Null)
    }

    /// `POST /rollback` to the earlier release `to` names.
    ///
    /// # Errors
    ///
    /// As [`AdminClient::rollback`]; [`ClientError::Api`] too if no earlier release matches.
    pub fn rollback_to(&self, to: graft_host::RollbackTo) -> Result<DeployResponse, ClientError> {
        self.post("/rollback", &crate::api::RollbackRequest::new(to))
    }

    /// `GET /rollout`: the rollout under way, or the last one.
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] (404) if no rollout has run.
    pub fn rollout(&self) -> Result<RolloutStatus, ClientError> {
        self.get("/rollout")
    }

    /// `POST /rollout/{action}`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] (409) if no rollout is under way.
    pub fn rollout_action(&self, action: RolloutAction) -> Result<RolloutStatus, ClientError> {
        self.post(&format!("/rollout/{action}"), &serde_json::Value::Null)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        answer(&url, self.authorised(self.agent.get(&url)).call())
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        answer(&url, self.authorised(self.agent.post(&url)).send_json(body))
    }

    /// The request with the bearer token, if the client has one.
    fn authorised<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }
}

/// Reads an admin API answer: `T` on success, the server's [`ApiError`] otherwise.
fn answer<T: DeserializeOwned>(
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, ClientError> {
    let mut response = sent.map_err(|source| ClientError::Transport {
        url: url.to_owned(),
        source,
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|source| ClientError::Transport {
            url: url.to_owned(),
            source,
        })?;
    let unexpected = || ClientError::Unexpected {
        status,
        body: truncate(&text, MAX_QUOTE).into_owned(),
    };
    if (200..300).contains(&status) {
        serde_json::from_str(&text).map_err(|_| unexpected())
    } else {
        match serde_json::from_str::<ApiError>(&text) {
            Ok(error) => Err(ClientError::Api { status, error }),
            Err(_) => Err(unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AdminClient;

    #[test]
    fn loopback_admin_urls_are_local_and_others_are_not() {
        for local in [
            "http://127.0.0.1:9090",
            "http://localhost:9090/",
            "http://[::1]:9090",
            "127.0.0.5:1",
        ] {
            assert!(AdminClient::new(local, None).is_local(), "{local}");
        }
        for remote in [
            "http://10.0.0.7:9090",
            "http://graft.example:9090",
            "http://[2001:db8::1]:9090",
        ] {
            assert!(!AdminClient::new(remote, None).is_local(), "{remote}");
        }
    }
}
