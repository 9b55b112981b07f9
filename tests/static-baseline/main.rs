//! The foo/bar/frob v1 service as a user would write it without graft: the three functions
//! compiled in, called directly, behind the same HTTP stack `graft serve` uses (axum on a
//! multi-threaded tokio runtime), with the same JSON in and out.
//!
//! Run: `static-baseline 127.0.0.1:PORT`; `POST /foo` takes a `FooInput` and answers a
//! `FooOutput`, as `graft serve` does for `foo@1`; `POST /notes` and `GET /notes/{id}` serve
//! notes as `notes-v1` does (`notes.rs`).

mod notes;

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use example_types::{BarOutput, FooInput, FooOutput, Frob1};

const VERSION: &str = "1.0.0";

fn frob(a: u64) -> Frob1 {
    Frob1 {
        x: a + 1,
        version: VERSION.into(),
    }
}

fn bar(input: Frob1) -> BarOutput {
    BarOutput {
        value: input.x * 2,
        version: VERSION.into(),
    }
}

/// `foo(a) = bar(frob(a))`, with foo-v1's optional pause between the two calls.
fn foo(input: &FooInput) -> FooOutput {
    let frobbed = frob(input.a);
    if input.pause_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(input.pause_ms));
    }
    let frob_version = frobbed.version.clone();
    let bar = bar(frobbed);
    FooOutput {
        value: bar.value,
        foo: VERSION.into(),
        bar: bar.version,
        frob: frob_version,
    }
}

async fn foo_route(
    input: Result<Json<FooInput>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<FooOutput>, StatusCode> {
    let Json(input) = input.map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(Json(foo(&input)))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let app = Router::new()
        .route("/foo", post(foo_route))
        .merge(notes::router());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "static-baseline: serving on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
