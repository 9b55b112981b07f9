//! The admin dashboard (`GET /ui`): one page, served by the admin listener, that reads the
//! same JSON API the CLI does (`/status`, `/rollout`) and steers it (`/deploy`, `/rollback`,
//! `/rollout/{action}`). Everything it shows comes from those calls; the page itself is static
//! (`ui.html`: HTML, CSS and script in one file, no build step, nothing fetched from elsewhere).
//!
//! Authentication is the admin API's. A browser cannot send a bearer token on a navigation, so
//! where a token is configured the page is opened once as `/ui?token=TOKEN`: the token is
//! checked, set as a cookie (`HttpOnly`, `SameSite=Strict`, for this session only) and the
//! browser is sent to `/ui`, so the token leaves the address bar and the history. Requests that
//! carry the cookie instead of the header are accepted like the header, except that one that
//! changes anything (any `POST`) must also carry `x-graft-ui: 1`, which a form or a link on
//! another site cannot set: cross-site request forgery is refused even by a browser that
//! ignores `SameSite`.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use subtle::ConstantTimeEq;

/// The page.
const PAGE: &str = include_str!("ui.html");

/// The cookie the token is kept in (hex-encoded: any token is a valid cookie value then).
const COOKIE: &str = "graft_admin_token";

/// The header a cookie-authenticated request that changes something must carry.
pub(super) const UI_HEADER: &str = "x-graft-ui";

pub(super) async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            // Nothing but itself: no script, style or connection elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// How a request to the admin API proved it may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Credential {
    /// The bearer token in `Authorization`.
    Header,
    /// The dashboard's cookie (and, for a change, its header).
    Cookie,
}

/// Whether `request` carries `token`, and how.
pub(super) fn credential(request: &Request, token: &str) -> Option<Credential> {
    let same = |given: &[u8]| bool::from(given.ct_eq(token.as_bytes()));
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if bearer.is_some_and(same) {
        return Some(Credential::Header);
    }
    let cookie = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find_map(|value| hex::decode(value).ok())?;
    if !same(&cookie) {
        return None;
    }
    let changes = request.method() != Method::GET && request.method() != Method::HEAD;
    let from_the_page = request
        .headers()
        .get(UI_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    (!changes || from_the_page).then_some(Credential::Cookie)
}

/// `GET /ui?token=TOKEN` with the right token: the cookie, and the page again without the
/// token in its address. `None` for anything else.
pub(super) fn sign_in(request: &Request, token: &str) -> Option<Response> {
    if request.method() != Method::GET || request.uri().path() != "/ui" {
        return None;
    }
    let given = request.uri().query()?.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        percent_encoding::percent_decode_str(&value.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned())
    })?;
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return None;
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        hex::encode(token)
    );
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/ui"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).ok()?);
    Some(response)
}

/// What `GET /ui` without a credential gets: how to open it.
pub(super) fn sign_in_page() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CACHE_CONTROL, "no-store")],
        Html(
            "<!doctype html><meta charset=utf-8><title>graft admin</title>\
             <p>This server's admin API needs its token. Open <code>/ui?token=TOKEN</code> \
             once (the token graft serve was given: <code>[admin] token</code> or \
             <code>GRAFT_ADMIN_TOKEN</code>); this browser keeps it for the session.",
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn the_token_counts_in_the_header_or_the_cookie_and_a_change_by_cookie_needs_the_pages_header()
    {
        let cookie = format!("other=1; {COOKIE}={}", hex::encode("s3cret"));
        let wrong = format!("{COOKIE}={}", hex::encode("s3creT"));
        for (method, headers, expected) in [
            (
                "GET",
                vec![("authorization", "Bearer s3cret")],
                Some(Credential::Header),
            ),
            (
                "POST",
                vec![("authorization", "Bearer s3cret")],
                Some(Credential::Header),
            ),
            ("GET", vec![("authorization", "Bearer s3creT")], None),
            ("GET", vec![("authorization", "s3cret")], None),
            (
                "GET",
                vec![("cookie", cookie.as_str())],
                Some(Credential::Cookie),
            ),
            ("GET", vec![("cookie", wrong.as_str())], None),
            ("GET", vec![("cookie", "graft_admin_token=zz")], None),
            // A form posted from another site carries the cookie, never the header.
            ("POST", vec![("cookie", cookie.as_str())], None),
            (
                "POST",
                vec![("cookie", cookie.as_str()), (UI_HEADER, "1")],
                Some(Credential::Cookie),
            ),
        ] {
            let got = credential(&request(method, "/status", &headers), "s3cret");
            assert_eq!(got, expected, "{method} {headers:?}");
        }
    }

    #[test]
    fn signing_in_sets_the_cookie_and_drops_the_token_from_the_address() {
        let response = sign_in(&request("GET", "/ui?token=s%33cret", &[]), "s3cret").unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[header::LOCATION], "/ui");
        let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
        assert_eq!(
            cookie,
            format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                hex::encode("s3cret")
            )
        );
        for refused in [
            "/ui?token=s3creT",
            "/ui",
            "/status?token=s3cret",
            "/ui?x=s3cret",
        ] {
            assert!(
                sign_in(&request("GET", refused, &[]), "s3cret").is_none(),
                "{refused}"
            );
        }
    }
}
