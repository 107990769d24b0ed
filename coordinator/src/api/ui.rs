//! The web console at `/ui/`: three static files compiled into the binary, so the
//! coordinator serves its console with nothing else installed. The page itself is
//! public (it holds no data); everything it shows comes from the Bearer-protected API
//! with the admin token the operator pastes.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::Api;

/// `(name, content type, bytes)` of every asset under `/ui/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
];

/// Scripts and styles only from this origin (no inline code), no framing, no referrer
/// leaking the console's address: the page handles the admin token.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such console file").into_response();
    };
    let mut resp = (*body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary; revalidating costs little on a local API.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn index() -> Response {
    asset("index.html")
}

async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}

/// The console's routes (no authentication: see the module docs).
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        let index = ASSETS[0].2;
        for (name, _, body) in ASSETS {
            assert!(!body.is_empty(), "{name} is empty");
            if *name != "index.html" {
                assert!(index.contains(name), "index.html does not load {name}");
            }
        }
        assert_eq!(asset("nope.js").status(), StatusCode::NOT_FOUND);
        let r = asset("app.js");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
    }
}
