//! The web page: plain HTML, CSS and JavaScript, built into the binary, no
//! build step. It uses only the public API (the same JSON any client
//! gets) and `/api/events` for live updates.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// `GET /`.
pub async fn index() -> Response {
    page("text/html; charset=utf-8", include_str!("page/index.html"))
}

/// `GET /app.js`.
pub async fn script() -> Response {
    page(
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    )
}

/// `GET /style.css`.
pub async fn style() -> Response {
    page("text/css; charset=utf-8", include_str!("page/style.css"))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
