//! Example plugin `notes`, v1: an HTTP service whose routes ship with the release.
//!
//! Every route below goes live with the release that carries this build and leaves with it;
//! a request is routed by the routes of the generation it pinned, so it is always served by
//! the build that declared its route. The notes live in a table the host holds (they outlive
//! every patch), and `GET /notes/{id}/preview` fetches the note's link through the host's HTTP
//! client, whose connection pool outlives every patch too. `notes-v2` changes `GET
//! /notes/{id}` and adds `GET /stats`.

use example_types::notes::{self, Note, Tables};
use graft_api::services::HttpFetchV1;
use graft_api::{Context, Error, Request, Response};

graft_api::plugin! {
    name: "notes",
    version: env!("CARGO_PKG_VERSION"),
    tables: {
        NOTES: Table<u64, Note> = "notes",
        IDS: Table<u32, u64> = "ids",
    },
    imports: {
        FETCH: HttpFetchV1,
    },
    exports: {},
    routes: {
        GET "/notes" => list,
        POST "/notes" => create,
        GET "/notes/{id}" => get,
        PUT "/notes/{id}" => replace,
        DELETE "/notes/{id}" => delete,
    },
    async_routes: {
        GET "/notes/{id}/preview" => preview,
    },
}

const TABLES: Tables = Tables {
    notes: NOTES,
    ids: IDS,
};

fn list(ctx: &Context<'_>, request: &Request<'_>) -> Result<Response, Error> {
    notes::list(ctx, request, TABLES)
}

fn create(ctx: &Context<'_>, request: &Request<'_>) -> Result<Response, Error> {
    notes::create(ctx, request, TABLES)
}

fn get(ctx: &Context<'_>, request: &Request<'_>) -> Result<Response, Error> {
    notes::get(ctx, request, TABLES)
}

fn replace(ctx: &Context<'_>, request: &Request<'_>) -> Result<Response, Error> {
    notes::replace(ctx, request, TABLES)
}

fn delete(ctx: &Context<'_>, request: &Request<'_>) -> Result<Response, Error> {
    notes::delete(ctx, request, TABLES)
}

async fn preview(ctx: Context<'static>, request: Request<'static>) -> Result<Response, Error> {
    notes::preview(ctx, request, TABLES, FETCH).await
}
