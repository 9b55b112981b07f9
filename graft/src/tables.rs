//! What the CLI prints: each answer of the admin API rendered from its typed value.

use std::fmt;

use graft_host::status::{GenerationRole, LibraryState};

use crate::api::{DeployResponse, StatusResponse};
use crate::rollout::{RolloutState, RolloutStatus};

/// `generation 2 live: release v2; ...`, or the canary and its rollout.
impl fmt::Display for DeployResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            let would = self
                .report
                .to_string()
                .replacen(" live: ", " would go live: ", 1);
            return writeln!(f, "dry run, nothing changed: {would}");
        }
        match &self.rollout {
            None => writeln!(f, "{}", self.report),
            Some(rollout) => {
                writeln!(
                    f,
                    "generation {} deployed as a canary: release {}",
                    self.report.generation,
                    self.report.release.as_deref().unwrap_or("-")
                )?;
                rollout.fmt(f)
            }
        }
    }
}

/// The generations (the current one marked `*`, the canary `canary`), libraries, the last
/// deploy's failure, and the rollout.
impl fmt::Display for StatusResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = &self.host;
        let rollout = self.rollout.as_ref().filter(|r| r.state.is_under_way());
        writeln!(f, "current generation {}", status.current)?;
        writeln!(
            f,
            "{:<6} {:<8} {:<12} {:>9} {:>10}  plugins",
            "gen", "current", "release", "in-flight", "age"
        )?;
        for g in &status.generations {
            let mark = match g.role {
                GenerationRole::Current => "*",
                _ if rollout.is_some_and(|r| r.canary == g.id) => "canary",
                GenerationRole::Prepared => "prepared",
                _ => "",
            };
            let plugins: Vec<String> = g
                .plugins
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect();
            writeln!(
                f,
                "{:<6} {:<8} {:<12} {:>9} {:>8}ms  {}",
                g.id,
                mark,
                g.release.as_deref().unwrap_or("-"),
                g.in_flight,
                g.age_ms,
                plugins.join(", ")
            )?;
        }
        let threads = &self.app_threads;
        match threads.pinned_cpus.as_slice() {
            [] => writeln!(f, "app threads: {}", threads.count)?,
            cpus => writeln!(f, "app threads: {}, pinned to CPUs {cpus:?}", threads.count)?,
        }
        writeln!(f, "libraries mapped: {}", status.libraries.len())?;
        // The ones not simply loaded: each says why it is still mapped.
        for library in &status.libraries {
            let why = match library.state {
                LibraryState::Loaded => continue,
                LibraryState::Initialising => "initialising",
                LibraryState::Abandoned => "abandoned (its initialiser ran past the deadline)",
                LibraryState::Pinned => "pinned (closed, but the plugin keeps it mapped)",
                LibraryState::Unloading => "unloading (its pre_unload hook is running)",
                _ => "not loaded normally",
            };
            writeln!(
                f,
                "  {} {}: {why}: {}",
                library.plugin,
                library.version,
                library.path.display()
            )?;
        }
        for table in &status.tables {
            let limit = |max: Option<u64>| max.map_or_else(String::new, |max| format!(" of {max}"));
            writeln!(
                f,
                "table {}.{} (schema {}, {:?}): {} entries{}, {} bytes{}",
                table.plugin,
                table.name,
                table.schema,
                table.durability,
                table.entries,
                limit(table.max_entries),
                table.bytes,
                limit(table.max_bytes)
            )?;
        }
        // Calls running for a second or more: most are past their route's deadline and cannot
        // be stopped (a synchronous call), or simply slow.
        let long: Vec<_> = status.calls.iter().filter(|c| c.age_ms >= 1000).collect();
        if !long.is_empty() {
            writeln!(
                f,
                "calls in flight for 1 s or more ({} in flight in all):",
                status.in_flight
            )?;
            for call in long {
                writeln!(f, "  {call}")?;
            }
        }
        if let Some(error) = status.last_deploy.as_ref().and_then(|d| d.error.as_deref()) {
            writeln!(f, "last deploy failed: {error}")?;
        }
        if let Some(rollout) = &self.rollout {
            rollout.fmt(f)?;
        }
        Ok(())
    }
}

/// A rollout's state, step, weights, per-side figures, last verdict and last event.
impl fmt::Display for RolloutStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan: Vec<String> = self
            .plan
            .iter()
            .map(|step| {
                if step.bake.is_zero() {
                    format!("{}%", step.weight)
                } else {
                    format!("{}%/{:.0}s", step.weight, step.bake.as_secs_f64())
                }
            })
            .collect();
        if !self.state.is_under_way() {
            // Ended: its outcome, not the weights it had (a promoted canary is the current
            // generation; an aborted one is gone).
            let took = match (self.events.first(), self.events.last()) {
                (Some(first), Some(last)) => {
                    format!(
                        " after {:.1} s",
                        last.at_ms.saturating_sub(first.at_ms) as f64 / 1e3
                    )
                }
                _ => String::new(),
            };
            let outcome = match self.state {
                RolloutState::Promoted => format!("generation {} is current", self.canary),
                _ => format!("stable generation {} serves on", self.stable),
            };
            return writeln!(
                f,
                "rollout {}{took}: release {} (canary generation {}); {outcome}; {}",
                self.state,
                self.release.as_deref().unwrap_or("-"),
                self.canary,
                self.last_message()
            );
        }
        writeln!(
            f,
            "rollout {}: release {}, canary generation {} beside stable generation {}",
            self.state,
            self.release.as_deref().unwrap_or("-"),
            self.canary,
            self.stable,
        )?;
        writeln!(
            f,
            "step {} of {}, canary weight {}%, {:.1} s into the step (plan {})",
            self.step,
            plan.len(),
            self.weight,
            self.step_elapsed_ms as f64 / 1000.0,
            plan.join(", ")
        )?;
        writeln!(
            f,
            "{:<8} {:>9} {:>7} {:>10} {:>10}",
            "", "requests", "errors", "error rate", "p99"
        )?;
        for (side, w) in [
            ("stable", &self.stable_window),
            ("canary", &self.canary_window),
        ] {
            writeln!(
                f,
                "{:<8} {:>9} {:>7} {:>9.2}% {:>10}",
                side,
                w.requests,
                w.errors,
                w.error_rate * 100.0,
                w.p99_ms.map_or("-".into(), |ms| format!("{ms:.2} ms")),
            )?;
        }
        if let Some(verdict) = &self.last_verdict {
            match verdict.reason() {
                Some(reason) => writeln!(f, "last verdict: {}: {reason}", verdict.kind())?,
                None => writeln!(f, "last verdict: {}", verdict.kind())?,
            }
        }
        if let Some(last) = self.events.last() {
            writeln!(f, "last event: {}: {}", last.event, last.message)?;
        }
        Ok(())
    }
}
