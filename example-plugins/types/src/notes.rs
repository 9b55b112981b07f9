//! The notes service's types and handlers (`notes-v1`, `notes-v2`): routes that ship with the
//! release, notes kept in a host-held table, link previews fetched through the host's HTTP
//! client.
//!
//! Both versions route to these handlers (v2 changes one and adds one of its own); each plugin
//! declares the tables and passes them in, as `plugin!` gives every plugin its own handles.

use graft_api::services::{FetchRequest, HttpFetchV1};
use graft_api::table::{Record, Table, TableError};
use graft_api::{Context, Error, Import, Request, Response};
use serde::{Deserialize, Serialize};

/// One note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Its id, in its URL (`/notes/{id}`).
    pub id: u64,
    /// Its title.
    pub title: String,
    /// Its text.
    pub body: String,
    /// A link whose page `GET /notes/{id}/preview` fetches.
    pub link: Option<String>,
    /// Bumped by every change: the note's `ETag`.
    pub version: u64,
}

impl Record for Note {
    const SCHEMA: u32 = 1;
}

impl Note {
    /// Its entity tag, as `ETag` and `If-Match` carry it.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// What a client sends to create or replace a note.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteInput {
    /// The title (1 to 200 characters).
    pub title: String,
    /// The text.
    #[serde(default)]
    pub body: String,
    /// A link to preview.
    #[serde(default)]
    pub link: Option<String>,
}

/// The query of `GET /notes`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    /// At most this many notes (default 50, at most [`MAX_LIMIT`]).
    limit: Option<usize>,
}

/// The most notes one `GET /notes` lists.
pub const MAX_LIMIT: usize = 1000;

/// The key of the next id in the `ids` table.
const NEXT_ID: u32 = 0;

/// The tables a notes plugin declares: the notes by id, and the id counter.
#[derive(Clone, Copy)]
pub struct Tables {
    /// `notes`.
    pub notes: Table<u64, Note>,
    /// `ids`.
    pub ids: Table<u32, u64>,
}

fn full(error: TableError) -> Error {
    match error {
        TableError::Full(why) => Error::unavailable(why),
        other => other.into(),
    }
}

fn check(input: &NoteInput) -> Result<(), Error> {
    if input.title.is_empty() || input.title.chars().count() > 200 {
        return Err(Error::invalid("title must have 1 to 200 characters"));
    }
    Ok(())
}

fn found(ctx: &Context<'_>, tables: Tables, id: u64) -> Result<Note, Error> {
    ctx.table(tables.notes)
        .get(&id)?
        .ok_or_else(|| Error::not_found(format!("no note {id}")))
}

/// `If-Match` against a note: absent or `*` matches; anything else must be its tag.
fn matches(request: &Request<'_>, note: &Note) -> bool {
    request.header("if-match").is_none_or(|tags| {
        tags.split(',')
            .any(|tag| matches!(tag.trim(), "*") || tag.trim() == note.etag())
    })
}

fn precondition_failed(note: &Note) -> Result<Response, Error> {
    Ok(Response::json(&serde_json::json!({
        "error": "precondition-failed",
        "message": format!("note {} is at version {}", note.id, note.etag()),
    }))?
    .with_status(412)
    .header("etag", note.etag()))
}

/// The response with `note` and its tag.
pub fn with_note(note: &Note) -> Result<Response, Error> {
    Ok(Response::json(note)?.header("etag", note.etag()))
}

/// `GET /notes?limit=N`: the notes, by id.
pub fn list(ctx: &Context<'_>, request: &Request<'_>, tables: Tables) -> Result<Response, Error> {
    let query: ListQuery = request.query()?;
    let limit = query.limit.unwrap_or(50).min(MAX_LIMIT);
    let (mut notes, _) = ctx.table(tables.notes).scan(10_000)?;
    notes.sort_by_key(|(id, _)| *id);
    let notes: Vec<Note> = notes.into_iter().take(limit).map(|(_, n)| n).collect();
    Response::json(&notes)
}

/// `POST /notes`: 201 with the note, its `Location` and its `ETag`.
pub fn create(ctx: &Context<'_>, request: &Request<'_>, tables: Tables) -> Result<Response, Error> {
    let input: NoteInput = request.json()?;
    check(&input)?;
    let id = ctx
        .table(tables.ids)
        .update(&NEXT_ID, |next| Some(next.unwrap_or(0) + 1))
        .map_err(full)?
        .unwrap_or(1);
    let note = Note {
        id,
        title: input.title,
        body: input.body,
        link: input.link,
        version: 1,
    };
    ctx.table(tables.notes).insert(&id, &note).map_err(full)?;
    Ok(with_note(&note)?
        .with_status(201)
        .header("location", format!("/notes/{id}")))
}

/// `GET /notes/{id}`: the note and its `ETag`; 304 when `If-None-Match` has it.
pub fn get(ctx: &Context<'_>, request: &Request<'_>, tables: Tables) -> Result<Response, Error> {
    let note = found(ctx, tables, request.param_as("id")?)?;
    let etag = note.etag();
    if request.header("if-none-match") == Some(etag.as_str()) {
        return Ok(Response::new(304).header("etag", etag));
    }
    Ok(Response::json(&note)?.header("etag", etag))
}

/// `PUT /notes/{id}`: replaces the note if `If-Match` (when sent) names its version; 412 if
/// not.
pub fn replace(
    ctx: &Context<'_>,
    request: &Request<'_>,
    tables: Tables,
) -> Result<Response, Error> {
    let id = request.param_as("id")?;
    let input: NoteInput = request.json()?;
    check(&input)?;
    let notes = ctx.table(tables.notes);
    loop {
        let current = found(ctx, tables, id)?;
        if !matches(request, &current) {
            return precondition_failed(&current);
        }
        let next = Note {
            id,
            title: input.title.clone(),
            body: input.body.clone(),
            link: input.link.clone(),
            version: current.version + 1,
        };
        // Written only if nobody changed it since it was read; else read it again.
        if notes
            .compare_and_swap(&id, Some(&current), Some(&next))
            .map_err(full)?
            .is_ok()
        {
            return with_note(&next);
        }
    }
}

/// `DELETE /notes/{id}`: 204, under the same `If-Match` rule as `PUT`.
pub fn delete(ctx: &Context<'_>, request: &Request<'_>, tables: Tables) -> Result<Response, Error> {
    let id = request.param_as("id")?;
    let notes = ctx.table(tables.notes);
    loop {
        let current = found(ctx, tables, id)?;
        if !matches(request, &current) {
            return precondition_failed(&current);
        }
        if notes.compare_and_swap(&id, Some(&current), None)?.is_ok() {
            return Ok(Response::new(204));
        }
    }
}

/// What `GET /notes/{id}/preview` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Preview {
    /// The note.
    pub id: u64,
    /// Its link.
    pub link: String,
    /// The upstream's status.
    pub status: u16,
    /// The page's `<title>`, if it has one.
    pub title: Option<String>,
}

/// `GET /notes/{id}/preview`: fetches the note's link through the host's HTTP client (whose
/// connections outlive this plugin) and answers the page's title.
pub async fn preview(
    ctx: Context<'static>,
    request: Request<'static>,
    tables: Tables,
    fetch: Import<HttpFetchV1>,
) -> Result<Response, Error> {
    let note = found(&ctx, tables, request.param_as("id")?)?;
    let Some(link) = note.link else {
        return Err(Error::not_found(format!("note {} has no link", note.id)));
    };
    let page = match ctx.call_async(fetch, FetchRequest::get(&link)).await? {
        Ok(page) => page,
        // The upstream's failure is not ours: a 502 that says what happened.
        Err(error) => {
            return Ok(Response::json(&serde_json::json!({
                "error": "upstream",
                "message": error.to_string(),
            }))?
            .with_status(502))
        }
    };
    let text = page.text();
    let title = text
        .split_once("<title>")
        .and_then(|(_, rest)| rest.split_once("</title>"))
        .map(|(title, _)| title.trim().to_owned());
    Response::json(&Preview {
        id: note.id,
        link,
        status: page.status,
        title,
    })
}
