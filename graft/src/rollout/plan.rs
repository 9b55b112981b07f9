//! Rollout plans: the canary's weight step by step, and how long each step must stay healthy.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One step of a rollout plan: the canary's share of traffic and how long it must stay healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    /// Percent of requests routed to the canary (1 to 100).
    pub weight: u32,
    /// How long the step lasts at least.
    #[serde(rename = "bake_ms", with = "graft_host::millis")]
    pub bake: Duration,
}

/// The steps of a rollout, in order; passing the last one promotes the canary.
///
/// Written `WEIGHT[:BAKE],...`, weights in percent and rising, bake times as
/// [humantime](https://docs.rs/humantime) durations (`30s`, `500ms`, `2m`, `1h`; none: 0):
/// `5:30s,25:30s,50:60s,100`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RolloutPlan {
    steps: Vec<PlanStep>,
}

impl RolloutPlan {
    /// The steps.
    pub fn steps(&self) -> &[PlanStep] {
        &self.steps
    }

    /// This plan started at `weight` percent: that step first (with the plan's bake time for
    /// that weight, or `bake`), then the plan's steps of greater weight.
    ///
    /// # Errors
    ///
    /// If `weight` is not 1 to 100.
    pub fn starting_at(&self, weight: u32, bake: Duration) -> Result<Self, String> {
        if !(1..=100).contains(&weight) {
            return Err(format!("a canary weight is 1 to 100 percent, not {weight}"));
        }
        let first = self
            .steps
            .iter()
            .find(|s| s.weight == weight)
            .map_or(bake, |s| s.bake);
        let mut steps = vec![PlanStep {
            weight,
            bake: first,
        }];
        steps.extend(self.steps.iter().filter(|s| s.weight > weight));
        Ok(Self { steps })
    }
}

impl Default for RolloutPlan {
    fn default() -> Self {
        "5:30s,25:30s,50:60s,100"
            .parse()
            .expect("the default plan parses")
    }
}

impl FromStr for RolloutPlan {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut steps: Vec<PlanStep> = Vec::new();
        for part in text.split(',').map(str::trim) {
            let shown = graft_host::bounded::Bounded(part);
            let (weight, bake) = part.split_once(':').unwrap_or((part, "0"));
            let weight: u32 = weight
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("step {shown:?}: the weight is a percentage"))?;
            if !(1..=100).contains(&weight) {
                return Err(format!("step {shown:?}: the weight is 1 to 100"));
            }
            if steps.last().is_some_and(|s| s.weight >= weight) {
                return Err(format!("step {shown:?}: weights must rise"));
            }
            let bake = humantime::parse_duration(bake.trim())
                .map_err(|e| format!("step {shown:?}: {e} (bake times are like 30s, 500ms, 2m)"))?;
            steps.push(PlanStep { weight, bake });
        }
        Ok(Self { steps })
    }
}

impl<'de> Deserialize<'de> for RolloutPlan {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_say_why() {
        let plan: RolloutPlan = "5:30s, 25:500ms,50:1m,100".parse().unwrap();
        let steps: Vec<(u32, Duration)> = plan.steps().iter().map(|s| (s.weight, s.bake)).collect();
        assert_eq!(
            steps,
            [
                (5, Duration::from_secs(30)),
                (25, Duration::from_millis(500)),
                (50, Duration::from_secs(60)),
                (100, Duration::ZERO)
            ]
        );
        assert!("25,5".parse::<RolloutPlan>().unwrap_err().contains("rise"));
        assert!("0:1s".parse::<RolloutPlan>().is_err());
        assert!("5:1fortnight".parse::<RolloutPlan>().is_err());
        let from_10 = plan.starting_at(10, Duration::ZERO).unwrap();
        let weights: Vec<u32> = from_10.steps().iter().map(|s| s.weight).collect();
        assert_eq!(weights, [10, 25, 50, 100]);
    }
}
