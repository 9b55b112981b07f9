//! Each request's context: its id (`x-request-id`) and its W3C trace context (`traceparent`),
//! read from the request when the client sent sane ones, else made here; and its deadline.
//!
//! The host hands the context to every plugin call the request makes
//! ([`graft_host::RequestContext`]), the outbound HTTP client sends it on, error answers name
//! the id and the log lines of a failed request carry it.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use graft_host::{RequestContext, TraceContext};

pub use crate::api::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};

/// The two headers above, parsed once (a lookup by `&str` parses the name every time).
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const TRACEPARENT: HeaderName = HeaderName::from_static(TRACEPARENT_HEADER);

/// The longest request id taken from a client.
const MAX_REQUEST_ID: usize = 128;

/// The context of a request with these headers, due by `deadline`.
pub(crate) fn context(headers: &HeaderMap, deadline: Option<Instant>) -> Arc<RequestContext> {
    let id = headers
        .get(&REQUEST_ID)
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID)
        .filter(|v| v.iter().all(|b| (0x21..=0x7e).contains(b)))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or_else(|| hex(&random_u64().to_be_bytes()), str::to_owned);
    let parent = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let trace = TraceContext {
        trace_id: parent.map_or_else(random_u128, |p| p.trace_id),
        span_id: random_u64(),
        flags: parent.map_or(0, |p| p.flags),
    };
    Arc::new(RequestContext {
        id,
        trace,
        deadline,
    })
}

/// Names the request's id on its answer.
pub(crate) fn stamp_id(headers: &mut HeaderMap, context: &RequestContext) {
    if let Ok(id) = HeaderValue::from_str(&context.id) {
        headers.insert(REQUEST_ID, id);
    }
}

/// A valid version-00 `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not
/// zero), as the caller sent it.
fn parse_traceparent(value: &str) -> Option<TraceContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = parts.next().is_none()
        && version == "00"
        && lower_hex(trace, 32)
        && lower_hex(parent, 16)
        && lower_hex(flags, 2);
    let context = TraceContext {
        trace_id: u128::from_str_radix(trace, 16).ok()?,
        span_id: u64::from_str_radix(parent, 16).ok()?,
        flags: u8::from_str_radix(flags, 16).ok()?,
    };
    (valid && context.trace_id != 0 && context.span_id != 0).then_some(context)
}

/// Lowercase hex of `bytes` (at most 16).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buffer = [0u8; 32];
    for (pair, b) in buffer.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    let digits = &buffer[..2 * bytes.len().min(16)];
    std::str::from_utf8(digits)
        .expect("hex digits are ASCII")
        .to_owned()
}

thread_local! {
    /// A per-thread xorshift state, seeded from the OS once per thread: ids need to be unique
    /// and unguessable enough for tracing, not secret.
    static STATE: Cell<u64> = Cell::new({
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        u64::from_le_bytes(seed) | 1
    });
}

fn random_u64() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn random_u128() -> u128 {
    (u128::from(random_u64()) << 64) | u128::from(random_u64())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_gets_a_span_of_ours() {
        let mut headers = HeaderMap::new();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(TRACEPARENT_HEADER, incoming.parse().unwrap());
        headers.insert(REQUEST_ID_HEADER, "abc-123".parse().unwrap());
        let ctx = context(&headers, None);
        assert_eq!(ctx.id, "abc-123");
        let traceparent = ctx.trace.traceparent();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7");
        assert_eq!(parts[3], "01");
    }

    #[test]
    fn bad_or_missing_headers_get_fresh_ids() {
        let mut headers = HeaderMap::new();
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            headers.insert(TRACEPARENT_HEADER, bad.parse().unwrap());
            headers.insert(REQUEST_ID_HEADER, "has space".parse().unwrap());
            let ctx = context(&headers, Some(Instant::now() + Duration::from_secs(1)));
            assert_eq!(ctx.id.len(), 16, "{bad}");
            let traceparent = ctx.trace.traceparent();
            assert!(parse_traceparent(&traceparent).is_some(), "{traceparent}");
            assert!(!traceparent.contains("4bf92f"), "{bad}");
            assert!(ctx.deadline.is_some());
        }
        let (a, b) = (
            context(&HeaderMap::new(), None),
            context(&HeaderMap::new(), None),
        );
        assert_ne!(a.id, b.id);
    }
}
