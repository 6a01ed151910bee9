//! `/dashboard`: the operator page (contract section 6), three static files embedded
//! in the binary (`api/assets/dashboard/`), so the page works on a machine without
//! internet and ships with the version of the API it talks to.
//!
//! The page itself holds no data and needs no auth: it shows a sign-in form and then
//! reads everything through the bearer-protected `/api` (see `app.js` for why the token
//! lives in sessionStorage). A strict Content-Security-Policy allows only these files,
//! so injected markup could not run script even if escaping failed somewhere.

use poem::{
    Response, Route, get, handler,
    http::{StatusCode, header},
};

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(body)
}

#[handler]
fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

#[handler]
fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

#[handler]
fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

/// The dashboard's routes, nested at `/dashboard`.
pub fn routes() -> Route {
    Route::new()
        .at("/", get(index))
        .at("/app.js", get(app_js))
        .at("/app.css", get(app_css))
}
