//! Example plugin `notes`, v2: v1's service with one handler changed and one route added.
//!
//! - `GET /notes/{id}` answers the note with its word count (`words`), and says which build
//!   served it (`x-notes-build: 2`).
//! - `GET /stats` is new: how many notes, and their words.
//!
//! Deploying v2 over v1 changes the live routes with no restart: requests already in flight
//! finish on v1 (route and code), new ones see v2's routes. Deploying v1 again removes
//! `/stats`. The notes themselves stay in the host's table throughout.

use example_types::notes::{self, Note, Tables};
use graft_api::services::HttpFetchV1;
use graft_api::{Context, Error, Request, Response};
use serde::Serialize;

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
        GET "/stats" => stats,
    },
    async_routes: {
        GET "/notes/{id}/preview" => preview,
    },
}

const TABLES: Tables = Tables {
    notes: NOTES,
    ids: IDS,
};

/// A note as v2 answers it: with its word count.
#[derive(Serialize)]
struct Counted<'a> {
    #[serde(flatten)]
    note: &'a Note,
    words: usize,
}

/// Changed in v2: the note with its word count, and the build that served it.
fn get(ctx: &Context<'_>, request: &Request<'_>) -> Result<Response, Error> {
    let id: u64 = request.param_as("id")?;
    let note = ctx
        .table(NOTES)
        .get(&id)?
        .ok_or_else(|| Error::not_found(format!("no note {id}")))?;
    let etag = note.etag();
    if request.header("if-none-match") == Some(etag.as_str()) {
        return Ok(Response::new(304).header("etag", etag));
    }
    let words = note.body.split_whitespace().count();
    Ok(Response::json(&Counted { note: &note, words })?
        .header("etag", etag)
        .header("x-notes-build", "2"))
}

/// New in v2: how many notes, and their words.
fn stats(ctx: &Context<'_>, _: &Request<'_>) -> Result<Response, Error> {
    let (all, _) = ctx.table(NOTES).scan(10_000)?;
    let words: usize = all
        .iter()
        .map(|(_, note)| note.body.split_whitespace().count())
        .sum();
    Ok(
        Response::json(&serde_json::json!({ "notes": all.len(), "words": words }))?
            .header("x-notes-build", "2"),
    )
}

fn list(ctx: &Context<'_>, request: &Request<'_>) -> Result<Response, Error> {
    notes::list(ctx, request, TABLES)
}

fn create(ctx: &Context<'_>, request: &Request<'_>) -> Result<Response, Error> {
    notes::create(ctx, request, TABLES)
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
