//! The notes service's read and write paths as a user would write them in plain axum: path
//! parameters, `ETag` / `If-None-Match`, JSON in and out, notes in a concurrent map. What
//! `scripts/swap-under-load.sh --baseline static --service notes` measures `notes-v1` against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use dashmap::DashMap;
use example_types::notes::{Note, NoteInput};

#[derive(Default)]
struct Notes {
    notes: DashMap<u64, Note>,
    next: AtomicU64,
}

async fn create(State(notes): State<Arc<Notes>>, Json(input): Json<NoteInput>) -> Response {
    let id = notes.next.fetch_add(1, Ordering::Relaxed) + 1;
    let note = Note {
        id,
        title: input.title,
        body: input.body,
        link: input.link,
        version: 1,
    };
    notes.notes.insert(id, note.clone());
    let headers = [
        (header::ETAG, note.etag()),
        (header::LOCATION, format!("/notes/{id}")),
    ];
    (StatusCode::CREATED, headers, Json(note)).into_response()
}

async fn read(
    State(notes): State<Arc<Notes>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let Some(note) = notes.notes.get(&id).map(|n| n.clone()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = note.etag();
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    ([(header::ETAG, etag)], Json(note)).into_response()
}

/// `GET /notes/{id}` and `POST /notes`.
pub(crate) fn router() -> Router {
    Router::new()
        .route("/notes", axum::routing::post(create))
        .route("/notes/{id}", get(read))
        .with_state(Arc::new(Notes::default()))
}
