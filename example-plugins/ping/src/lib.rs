//! Example plugin `ping`: the smallest HTTP plugin. Its routes go live with the release that
//! carries it and leave with the release that drops it.

use graft_api::{Context, Error, Request, Response};

graft_api::plugin! {
    name: "ping",
    version: env!("CARGO_PKG_VERSION"),
    exports: {},
    routes: {
        GET "/ping" => ping,
        GET "/ping/context" => context,
    },
}

fn ping(_: &Context<'_>, _: &Request<'_>) -> Result<Response, Error> {
    Ok(Response::text("pong"))
}

/// The request's context as this call sees it: its id, its trace context, its time left.
fn context(ctx: &Context<'_>, _: &Request<'_>) -> Result<Response, Error> {
    let request = ctx
        .request()
        .ok_or_else(|| Error::new("no request context"))?;
    Response::json(&serde_json::json!({
        "id": request.id,
        "traceparent": request.traceparent,
        "deadline_ms": request.deadline.map(|left| left.as_millis() as u64),
    }))
}
