//! Example plugin `ping`: the smallest HTTP plugin. Its one route goes live with the release
//! that carries it and leaves with the release that drops it.

use graft_api::{Context, Error, Request, Response};

graft_api::plugin! {
    name: "ping",
    version: env!("CARGO_PKG_VERSION"),
    exports: {},
    routes: {
        GET "/ping" => ping,
    },
}

fn ping(_: &Context<'_>, _: &Request<'_>) -> Result<Response, Error> {
    Ok(Response::text("pong"))
}
