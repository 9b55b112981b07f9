//! Each request's context: its id (`x-request-id`) and its W3C trace context (`traceparent`),
//! read from the request when the client sent sane ones, else made here; and its deadline.
//!
//! The host hands the context to every plugin call the request makes
//! ([`graft_host::RequestContext`]), the outbound HTTP client sends it on, error answers name
//! the id and the log lines of a failed request carry it.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use graft_host::RequestContext;

/// The request and response header with the request's id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The longest request id taken from a client.
const MAX_REQUEST_ID: usize = 128;

/// The context of a request with these headers, due by `deadline` from now.
pub(crate) fn context(headers: &HeaderMap, deadline: Option<Duration>) -> Arc<RequestContext> {
    let id = headers
        .get(REQUEST_ID_HEADER)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID)
        .filter(|v| v.iter().all(|b| (0x21..=0x7e).contains(b)))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or_else(|| hex(&random_u128().to_be_bytes()[..8]), str::to_owned);
    let parent = headers
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let (trace_id, flags) =
        parent.unwrap_or_else(|| (hex(&random_u128().to_be_bytes()), "00".into()));
    let span_id = hex(&random_u128().to_be_bytes()[..8]);
    Arc::new(RequestContext {
        id,
        traceparent: format!("00-{trace_id}-{span_id}-{flags}"),
        deadline: deadline.map(|d| Instant::now() + d),
    })
}

/// The trace id and flags of a valid version-00 `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`,
/// ids not all zeros).
fn parse_traceparent(value: &str) -> Option<(String, String)> {
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
        && lower_hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then(|| (trace.to_owned(), flags.to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
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
    use super::*;

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_gets_a_span_of_ours() {
        let mut headers = HeaderMap::new();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(TRACEPARENT_HEADER, incoming.parse().unwrap());
        headers.insert(REQUEST_ID_HEADER, "abc-123".parse().unwrap());
        let ctx = context(&headers, None);
        assert_eq!(ctx.id, "abc-123");
        let parts: Vec<&str> = ctx.traceparent.split('-').collect();
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
            let ctx = context(&headers, Some(Duration::from_secs(1)));
            assert_eq!(ctx.id.len(), 16, "{bad}");
            assert!(
                parse_traceparent(&ctx.traceparent).is_some(),
                "{}",
                ctx.traceparent
            );
            assert!(!ctx.traceparent.contains("4bf92f"), "{bad}");
            assert!(ctx.deadline.is_some());
        }
        let (a, b) = (
            context(&HeaderMap::new(), None),
            context(&HeaderMap::new(), None),
        );
        assert_ne!(a.id, b.id);
    }
}
