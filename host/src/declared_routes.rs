//! The routes a plugin declares in its root module, read and checked when the loader loads it:
//! a bad method or pattern refuses the plugin, naming it. How a generation gathers them and a
//! request finds its route is `live/route.rs`.

use graft_api::ffi::PluginModRef;
use graft_api::http::{AsyncHttpFn, HttpFn};

use crate::bounded::Bounded;
use crate::decl::RouteSpec;

/// The methods a route may take.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The most routes one plugin may declare.
const MAX_ROUTES: usize = 1024;

/// The longest route pattern, in bytes.
const MAX_PATTERN: usize = 1024;

/// A route's handler, as the plugin exported it.
#[derive(Clone, Copy)]
pub(crate) enum RouteHandler {
    Sync(HttpFn),
    Async(AsyncHttpFn),
}

/// Checks a route pattern as the router will take it: starts with `/`, at most 1,024 bytes,
/// no segment in the old `:id` / `*rest` syntax (which axum refuses and matchit would take as
/// text), matchit's syntax.
pub fn check_pattern(path: &str) -> Result<(), String> {
    let quoted = || format!("{:?}", Bounded(path).to_string());
    if !path.starts_with('/') || path.len() > MAX_PATTERN {
        return Err(format!(
            "route path {} must start with / and be at most {MAX_PATTERN} bytes",
            quoted()
        ));
    }
    if let Some(segment) = path
        .split('/')
        .find(|s| s.starts_with(':') || s.starts_with('*'))
    {
        return Err(format!(
            "route path {}: a segment may not start with {:?}; a capture is written {{name}} \
             (and a wildcard {{*name}})",
            quoted(),
            &segment[..1]
        ));
    }
    matchit::Router::new()
        .insert(path, ())
        .map_err(|e| format!("route path {}: {e}", quoted()))
}

/// The routes a plugin declares, checked (none for one built before routes existed).
pub(crate) fn read_routes(
    module: PluginModRef,
) -> Result<(Vec<RouteSpec>, Vec<RouteHandler>), String> {
    let Some(decls) = module.routes() else {
        return Ok((Vec::new(), Vec::new()));
    };
    if decls.len() > MAX_ROUTES {
        return Err(format!(
            "declares {} routes, at most {MAX_ROUTES}",
            decls.len()
        ));
    }
    let mut specs: Vec<RouteSpec> = Vec::with_capacity(decls.len());
    let mut handlers = Vec::with_capacity(decls.len());
    for decl in decls.iter() {
        let (method, path) = (decl.method.as_str(), decl.path.as_str());
        if !METHODS.contains(&method) {
            return Err(format!(
                "route {} {}: unknown method (one of {})",
                Bounded(method),
                Bounded(path),
                METHODS.join(", ")
            ));
        }
        check_pattern(path)?;
        let handler = match (decl.handler, decl.async_handler) {
            (Some(handler), None) => RouteHandler::Sync(handler),
            (None, Some(handler)) => RouteHandler::Async(handler),
            _ => return Err(format!("route {method} {path}: needs exactly one handler")),
        };
        let spec = RouteSpec {
            method: method.to_owned(),
            path: path.to_owned(),
            is_async: matches!(handler, RouteHandler::Async(_)),
        };
        if specs.contains(&spec) {
            return Err(format!("route {spec} is declared twice"));
        }
        specs.push(spec);
        handlers.push(handler);
    }
    Ok((specs, handlers))
}
