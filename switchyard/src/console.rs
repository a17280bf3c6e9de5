//! The operator's console: three static files, embedded, served at `/` by
//! the control API. They hold no data (the page asks the API for
//! everything, with the operator's token), so they need no authentication.

use switchyard_control::http::Asset;

/// The console's files.
pub(crate) const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../assets/dashboard.html"),
    },
    Asset {
        path: "/dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/dashboard.css"),
    },
    Asset {
        path: "/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/dashboard.js"),
    },
];
