//! A client of the admin API (see [`serve`](crate::serve)): what `graft deploy`, `graft rollback`,
//! `graft status`, `graft rollout` and `graft fleet` use.

use std::path::Path;

use serde_json::Value;

use crate::serve::DeployRejection;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The admin API could not be reached or answered garbage.
    #[error("talking to the admin API at {url}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: ureq::Error,
    },
    /// The server refused the release; the previous one keeps serving.
    #[error("{}", .0.error)]
    Rejected(DeployRejection),
    /// The server answered with an unexpected status.
    #[error("the admin API answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
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

    /// `GET /status`.
    ///
    /// # Errors
    ///
    /// [`ClientError`] if the request fails.
    pub fn status(&self) -> Result<Value, ClientError> {
        self.send("GET", "/status", None)
    }

    /// `POST /deploy` of a release directory on the server's filesystem.
    ///
    /// # Errors
    ///
    /// [`ClientError::Rejected`] with the server's reason when the release is refused.
    pub fn deploy(&self, dir: &Path) -> Result<Value, ClientError> {
        let request = crate::serve::DeployRequest {
            dir: dir.to_owned(),
            ..Default::default()
        };
        let body = serde_json::to_value(request).unwrap_or_default();
        self.send("POST", "/deploy", Some(body))
    }

    /// `POST /deploy` of a release directory, as the canary of a staged rollout starting at
    /// `canary` percent (or the plan's first step) and following `plan` (or the server's).
    ///
    /// # Errors
    ///
    /// [`ClientError::Rejected`] with the server's reason when the release is refused.
    pub fn deploy_canary(
        &self,
        dir: &Path,
        canary: Option<u32>,
        plan: Option<&str>,
    ) -> Result<Value, ClientError> {
        let request = crate::serve::DeployRequest {
            dir: dir.to_owned(),
            rollout: true,
            canary,
            plan: plan.map(str::to_owned),
        };
        let body = serde_json::to_value(request).unwrap_or_default();
        self.send("POST", "/deploy", Some(body))
    }

    /// `GET /rollout`: the rollout under way, or the last one.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] 404 if no rollout has run.
    pub fn rollout(&self) -> Result<Value, ClientError> {
        self.send("GET", "/rollout", None)
    }

    /// `POST /rollout/ACTION`: `pause`, `resume`, `promote` or `abort`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] 409 if no rollout is under way.
    pub fn rollout_action(&self, action: &str) -> Result<Value, ClientError> {
        self.send("POST", &format!("/rollout/{action}"), Some(Value::Null))
    }

    /// `POST /deploy` of a release bundle (see [`release::pack_bundle`](crate::release::pack_bundle)):
    /// for a host that shares no filesystem with the caller.
    ///
    /// # Errors
    ///
    /// [`ClientError::Rejected`] with the server's reason when the release is refused.
    pub fn deploy_bundle(&self, bundle: &[u8]) -> Result<Value, ClientError> {
        self.post_bundle(bundle, &[])
    }

    /// `POST /deploy` of a release bundle as the canary of a staged rollout (see
    /// [`AdminClient::deploy_canary`]).
    ///
    /// # Errors
    ///
    /// [`ClientError::Rejected`] with the server's reason when the release is refused.
    pub fn deploy_bundle_canary(
        &self,
        bundle: &[u8],
        canary: Option<u32>,
        plan: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut query = vec![("rollout", "true".to_owned())];
        query.extend(canary.map(|weight| ("canary", weight.to_string())));
        query.extend(plan.map(|plan| ("plan", plan.to_owned())));
        self.post_bundle(bundle, &query)
    }

    /// `POST /deploy` of a bundle, with `query` (percent-encoded by ureq).
    fn post_bundle(&self, bundle: &[u8], query: &[(&str, String)]) -> Result<Value, ClientError> {
        let url = format!("{}/deploy", self.base);
        let mut request = self
            .agent
            .post(&url)
            .query_pairs(query.iter().map(|(k, v)| (*k, v.as_str())))
            .header("content-type", "application/x-tar");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request
            .send(bundle)
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        answer(&url, response)
    }

    /// `POST /rollback`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Rejected`] with the server's reason when there is nothing to roll back to.
    pub fn rollback(&self) -> Result<Value, ClientError> {
        self.send("POST", "/rollback", Some(Value::Null))
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match (method, body) {
            ("GET", _) => {
                let mut request = self.agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                request.call()
            }
            (_, body) => {
                let mut request = self.agent.post(&url);
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                request.send_json(body.unwrap_or(Value::Null))
            }
        }
        .map_err(transport)?;
        answer(&url, response)
    }
}

/// Reads an admin API answer: the JSON on 200, the rejection on 422, an error otherwise.
fn answer(url: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<Value, ClientError> {
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|source| ClientError::Transport {
            url: url.to_owned(),
            source,
        })?;
    match status {
        200 => serde_json::from_str(&text).map_err(|e| ClientError::Status {
            status,
            body: e.to_string(),
        }),
        422 => match serde_json::from_str(&text) {
            Ok(rejection) => Err(ClientError::Rejected(rejection)),
            Err(_) => Err(ClientError::Status { status, body: text }),
        },
        _ => Err(ClientError::Status { status, body: text }),
    }
}
