//! Durations on the wire as milliseconds (`"go_live_ms": 0.034`), not serde's `{secs, nanos}`.
//!
//! For `#[serde(with = "graft_host::millis")]` on a [`Duration`] field; the field's name should
//! say the unit (`#[serde(rename = "elapsed_ms")]`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes a duration as fractional milliseconds.
///
/// # Errors
///
/// The serializer's.
pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration.as_secs_f64() * 1e3)
}

/// Reads fractional milliseconds.
///
/// # Errors
///
/// If the value is not a number, or is negative or too large for a [`Duration`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ms = f64::deserialize(d)?;
    Duration::try_from_secs_f64(ms / 1e3).map_err(serde::de::Error::custom)
}
