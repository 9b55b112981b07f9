//! The steps of a rollout's state machine, each on the rollout under the state's lock: a round
//! of analysis (sample, judge, step up, promote or abort), the status published after a change,
//! and what the change leaves to write once the lock is released.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use graft_host::{DisplayChain, Settle};

use super::analysis::{analyze, Counts, Verdict};
use super::status::{push_event, push_sample, write_record};
use super::{Active, RolloutState, RolloutStatus, Rollouts, Snapshot, BUCKETS};

/// What a state change leaves to do once the state's lock is released: writing to disk, which
/// takes milliseconds, or seconds while the disk flushes something else, and must not hold up
/// operators' calls and the analysis meanwhile.
#[derive(Debug, Default)]
#[must_use = "written only by Rollouts::write_down"]
pub(super) struct ToWrite {
    /// The promoted release's record of live releases.
    settle: Option<Settle>,
    /// The rollout's status, numbered: a write never replaces a newer one.
    status: Option<(u64, RolloutStatus)>,
}

impl Rollouts {
    /// One round of analysis: abort on a breach, step up or promote when a step has passed.
    pub fn tick(&self) {
        let mut state = self.lock();
        let Some(active) = state.as_mut() else {
            return;
        };
        if !active.status.state.is_under_way() {
            return;
        }
        self.sample(active);
        self.analyse(active);
        let to_write = self.publish_snapshot(active);
        drop(state);
        self.write_down(to_write);
    }

    /// Records what each side did since the last sample.
    pub(super) fn sample(&self, active: &mut Active) {
        let Some(sides) = self.sides.load_full() else {
            return;
        };
        let now = (sides.stable.snapshot(), sides.canary.snapshot());
        let (stable, canary) = (
            now.0.since(&active.sampled.0),
            now.1.since(&active.sampled.1),
        );
        push_sample(&mut active.status, stable.window(), canary.window());
        active.sampled = now;
    }

    pub(super) fn analyse(&self, active: &mut Active) {
        let stable_now = self.host.pin().id();
        if stable_now != active.status.stable {
            // A release went live by another way; promoting the canary would undo it.
            let reason = format!(
                "stable changed under the canary: generation {stable_now} went live beside the rollout"
            );
            self.finish_abort(active, reason);
            return;
        }
        let (stable, canary) = self.refresh(active);
        let verdict = analyze(&stable, &canary, &active.analysis);
        active.status.last_verdict = Some(verdict.clone());
        let step = active.plan.steps()[active.status.step - 1];
        match verdict {
            Verdict::Breach(reason) => self.finish_abort(active, reason),
            _ if active.status.state == RolloutState::Paused => {}
            _ if active.step_started.elapsed() < step.bake => {}
            Verdict::Inconclusive(reason) => {
                if !active.waiting_logged {
                    active.waiting_logged = true;
                    event(active, "waiting", format!("inconclusive: {reason}"));
                }
            }
            Verdict::Healthy if active.status.step == active.plan.steps().len() => {
                self.finish_promote(active, "every step passed".into());
            }
            Verdict::Healthy => {
                active.status.step += 1;
                let weight = active.plan.steps()[active.status.step - 1].weight;
                self.set_weight(weight);
                active.status.weight = weight;
                let message = format!(
                    "step {} passed; step {} of {}",
                    active.status.step - 1,
                    active.status.step,
                    active.plan.steps().len()
                );
                event(active, "step", message);
                self.restart_step(active);
            }
        }
    }

    /// Each side's counts since `baseline`.
    pub(super) fn windows(&self, baseline: &(Counts, Counts)) -> (Counts, Counts) {
        match self.sides.load().as_deref() {
            Some(sides) => (
                sides.stable.snapshot().since(&baseline.0),
                sides.canary.snapshot().since(&baseline.1),
            ),
            None => Default::default(),
        }
    }

    /// Updates the status's windows from the counters; returns them.
    pub(super) fn refresh(&self, active: &mut Active) -> (Counts, Counts) {
        let (stable, canary) = self.windows(&active.baseline);
        active.status.stable_window = stable.window();
        active.status.canary_window = canary.window();
        active.status.step_elapsed_ms =
            u64::try_from(active.step_started.elapsed().as_millis()).unwrap_or(u64::MAX);
        (stable, canary)
    }

    /// Starts the current step's window afresh.
    pub(super) fn restart_step(&self, active: &mut Active) {
        if let Some(sides) = self.sides.load().as_deref() {
            active.baseline = (sides.stable.snapshot(), sides.canary.snapshot());
        }
        active.step_started = Instant::now();
        active.waiting_logged = false;
    }

    /// Publishes the canary as the current generation; aborts instead if the host refuses.
    pub(super) fn finish_promote(&self, active: &mut Active, reason: String) {
        let Some(prepared) = active.prepared.take() else {
            return self.finish_abort(active, "the canary is gone".into());
        };
        match self.host.go_live(prepared) {
            // Recorded once the state's lock is released (see `ToWrite`).
            Ok((_, settle)) => active.settling = Some(settle),
            Err(error) => {
                let reason = format!("promotion refused: {}", DisplayChain(&error));
                return self.finish_abort(active, reason);
            }
        }
        // The canary is current now: requests still routed to it pin the same generation.
        self.set_weight(0);
        self.canary.store(None);
        self.sides.store(None);
        active.status.state = RolloutState::Promoted;
        active.status.weight = 100;
        event(active, "promoted", reason);
        active.status.weight = 0;
    }

    pub(super) fn finish_abort(&self, active: &mut Active, reason: String) {
        self.set_weight(0);
        self.canary.store(None);
        self.sides.store(None);
        // Its in-flight requests keep their pins; its libraries go once they finish.
        active.prepared = None;
        active.status.state = RolloutState::Aborted;
        active.status.weight = 0;
        event(active, "aborted", reason);
    }

    pub(super) fn set_weight(&self, percent: u32) {
        self.weight
            .store(percent.min(100) * (BUCKETS / 100), Ordering::Relaxed);
    }

    /// Publishes the status for readers; returns what to write to disk after a state change,
    /// once the state's lock is released ([`Rollouts::write_down`]).
    pub(super) fn publish_snapshot(&self, active: &mut Active) -> ToWrite {
        self.snapshot.store(Some(Arc::new(Snapshot {
            status: active.status.clone(),
            baseline: active.baseline.clone(),
            step_started: active.step_started,
        })));
        let changed = std::mem::take(&mut active.unrecorded) && self.record.is_some();
        ToWrite {
            settle: active.settling.take(),
            status: changed.then(|| {
                let change = self.changes.fetch_add(1, Ordering::Relaxed) + 1;
                (change, active.status.clone())
            }),
        }
    }

    /// Writes what a state change left to write: the promoted release's record first (as a
    /// deploy does before it answers), then the rollout's status unless a newer one was
    /// written meanwhile.
    pub(super) fn write_down(&self, to_write: ToWrite) {
        if let Some(settle) = to_write.settle {
            self.host.settle(settle);
        }
        if let (Some((change, status)), Some(path)) = (to_write.status, &self.record) {
            let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            if *recorded < change {
                write_record(path, &status);
                *recorded = change;
            }
        }
    }
}

/// Records a state change in the status and logs it as one event.
pub(super) fn event(active: &mut Active, kind: &str, message: String) {
    let status = &active.status;
    tracing::info!(
        event = kind,
        canary = status.canary,
        stable = status.stable,
        step = status.step,
        weight = status.weight,
        canary_requests = status.canary_window.requests,
        canary_errors = status.canary_window.errors,
        canary_p99_ms = status.canary_window.p99_ms.unwrap_or(0.0),
        stable_requests = status.stable_window.requests,
        stable_errors = status.stable_window.errors,
        stable_p99_ms = status.stable_window.p99_ms.unwrap_or(0.0),
        %message,
        "rollout"
    );
    push_event(&mut active.status, kind, message);
    active.unrecorded = true;
}
