//! The one way `graft serve` deploys: from the admin API (a directory or an unpacked bundle) and
//! from watch mode alike.
//!
//! A deploy prepares the release (the slow part, on the calling blocking thread, holding no lock
//! the admin plane or other deploys wait for), then publishes it. Concurrent deploys therefore go
//! live in the order their prepares finish; one prepared against a generation that is no longer
//! current is refused at `publish` (it would undo the release that went live meanwhile). A deploy
//! whose client went away while it prepared is not published, and says so in the log; one whose
//! client leaves after it was published is live, and the log says which generation it became.
//!
//! While a staged rollout is under way, plain deploys and rollbacks are refused (409): promote
//! or abort the rollout first.

use std::path::Path;
use std::sync::Arc;

use graft_host::Host;

use crate::api::{ApiError, DeployResponse, ErrorCode, RolloutOptions};
use crate::metrics::Metrics;
use crate::rollout::{RolloutError, RolloutPlan, Rollouts, Route as Side};
use crate::worker::Workers;

/// Deploys, rollbacks and rollout starts, with their metrics.
#[derive(Debug)]
pub(crate) struct Deployer {
    pub(crate) host: Arc<Host>,
    pub(crate) rollouts: Arc<Rollouts>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) workers: Arc<Workers>,
}

impl Deployer {
    /// Deploys the release in `dir`, or starts a rollout with it as the canary. Blocks for as
    /// long as the release takes to prepare. `client_gone` is asked once the release is
    /// prepared: if it says yes, the release is dropped instead of published.
    pub(crate) fn deploy(
        &self,
        dir: &Path,
        options: &RolloutOptions,
        client_gone: &dyn Fn() -> bool,
    ) -> Result<DeployResponse, ApiError> {
        if !options.wanted() && options.thresholds() != crate::rollout::Thresholds::default() {
            return Err(ApiError::bad_request(
                "a rollout's thresholds are for a rollout: ask for one (rollout, canary or plan)",
            ));
        }
        if options.dry_run {
            return self.dry_run(dir, options);
        }
        if options.wanted() {
            return self.start_rollout(dir, options);
        }
        self.no_rollout_under_way()?;
        // Under `isolation = "all"`, loaded first in a process of its own: a plugin that
        // crashes while loading or initialising takes that down, not this one.
        self.workers
            .preflight(dir, Side::Stable)
            .inspect_err(|_| self.metrics.deploy(None))?;
        let prepared = self.host.prepare(dir).map_err(|e| self.rejected(&e))?;
        if client_gone() {
            tracing::warn!(
                generation = prepared.id(),
                release = prepared.report().release.as_deref().unwrap_or(""),
                "deploy not published: its client went away while it prepared"
            );
            return Err(ApiError::new(ErrorCode::Conflict, "the client went away"));
        }
        // A rollout may have started while this release prepared: it would be aborted by a
        // stable that changed under its canary, so this deploy gives way instead.
        self.no_rollout_under_way()?;
        // The very release live: nothing to publish (nor to count as a deploy).
        if let Some(report) = prepared.unchanged(self.host.current().id()) {
            return Ok(report.into());
        }
        // Under `isolation = "all"` the release's worker serves before it goes live: one
        // that cannot start refuses the release, and nothing changes.
        let _kept = match self.workers.start(prepared.generation(), Side::Stable) {
            Ok(kept) => kept,
            Err(why) => {
                self.metrics.deploy(None);
                let message = format!("the release's worker process could not start: {why}");
                return Err(ApiError::new(ErrorCode::DeployRejected, message));
            }
        };
        let report = self.host.publish(prepared).map_err(|e| self.rejected(&e))?;
        self.metrics.deploy(Some(&report));
        Ok(report.into())
    }

    /// Everything the deploy (or the rollout's start) would do short of going live, against
    /// what is live, including loading it first in a process of its own under isolation; then
    /// nothing. Neither counted as a deploy nor refused while a rollout is under way.
    fn dry_run(&self, dir: &Path, options: &RolloutOptions) -> Result<DeployResponse, ApiError> {
        let side = if options.wanted() {
            Side::Canary
        } else {
            Side::Stable
        };
        self.workers.preflight(dir, side)?;
        let report = self.host.dry_run(dir).map_err(|e| ApiError::from(&e))?;
        Ok(DeployResponse {
            dry_run: true,
            ..report.into()
        })
    }

    /// Makes an earlier release current again: the previous one, or the one `to` names.
    pub(crate) fn rollback(&self, to: &graft_host::RollbackTo) -> Result<DeployResponse, ApiError> {
        self.no_rollout_under_way()?;
        let report = self.host.rollback_to(to).map_err(|e| self.rejected(&e))?;
        self.metrics.deploy(Some(&report));
        Ok(report.into())
    }

    fn start_rollout(
        &self,
        dir: &Path,
        options: &RolloutOptions,
    ) -> Result<DeployResponse, ApiError> {
        let plan = options
            .plan
            .as_deref()
            .map(str::parse::<RolloutPlan>)
            .transpose()
            .map_err(|reason| ApiError::bad_request(format!("invalid rollout plan: {reason}")))?;
        // The canary runs in a worker: loaded first in a process of its own, as a deploy is.
        self.workers
            .preflight(dir, Side::Canary)
            .inspect_err(|_| self.metrics.deploy(None))?;
        match self
            .rollouts
            .start(dir, options.canary, plan, options.thresholds())
        {
            Ok((report, rollout)) => {
                // Requests split between the sides from now: the connections stable's worker
                // serves itself come back to the front, which routes each request.
                self.workers.placement_changed(None);
                // Under isolation, the canary's worker serves before this answers; one that
                // cannot start aborts the rollout it began.
                if let Some(canary) = self.rollouts.canary() {
                    if let Err(why) = self.workers.start(&canary, Side::Canary).map(drop) {
                        let reason = format!("the canary's worker process could not start: {why}");
                        self.rollouts.abort_canary(canary.id(), reason.clone());
                        self.metrics.deploy(None);
                        return Err(ApiError::new(ErrorCode::DeployRejected, reason));
                    }
                }
                self.metrics.deploy(Some(&report));
                Ok(DeployResponse {
                    rollout: Some(rollout),
                    ..report.into()
                })
            }
            Err(RolloutError::Deploy(error)) => Err(self.rejected(&error)),
            Err(error @ RolloutError::Plan(_)) => Err(ApiError::bad_request(error)),
            Err(error) => Err(ApiError::new(ErrorCode::Conflict, error)),
        }
    }

    fn no_rollout_under_way(&self) -> Result<(), ApiError> {
        if self.rollouts.under_way() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a rollout is under way: promote or abort it first",
            ));
        }
        Ok(())
    }

    /// Counts a refused release and turns it into its response.
    fn rejected(&self, error: &graft_host::DeployError) -> ApiError {
        self.metrics.deploy(None);
        ApiError::from(error)
    }
}
