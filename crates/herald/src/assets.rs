//! The demo page at `/` and the browser client at `/herald.js`, embedded in the binary.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const INDEX: &str = include_str!("../assets/index.html");
// The global (classic-script) build of client/, kept in the repository by client/build.mjs.
const CLIENT_JS: &str = include_str!("../../../client/dist/rws.global.js");

/// `GET /`: the demo page.
pub(crate) async fn index() -> Html<&'static str> {
    Html(INDEX)
}

/// `GET /herald.js`: the reconnecting client, as a classic script.
pub(crate) async fn client_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
        .into_response()
}
