//! The dashboard at `GET /ui`: one HTML page, its script and its style
//! sheet, compiled into the binary (no CDN, no build step). The page reads
//! the same JSON endpoints as anyone (`/v1/targets`, `/v1/partitions`,
//! `/v1/plugins`, `/v1/stats`) and follows `/v1/events`; it sends the bearer
//! token an operator types in (kept in the tab's `sessionStorage`) and
//! offers the token-guarded actions (roll back a plugin, reload the config)
//! only then.
//!
//! Served with a Content-Security-Policy that allows nothing but this
//! origin's own script, style and requests, and no framing.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// `(file, content type, text)` of every asset.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("ui/style.css"),
    ),
];

/// `default-src 'none'` and only what the page uses, from its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The asset `name`, or 404.
pub async fn asset(name: &str) -> Response {
    let Some((_, content_type, text)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such dashboard file\n").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *text,
    )
        .into_response()
}

/// [`asset`] for a path segment.
pub async fn asset_owned(name: String) -> Response {
    asset(&name).await
}
