//! The gateway's routes: which function answers a request, by path and method, and the request body
//! read within the configured limits of size and time once its key is known. A route it does not
//! meter it does not proxy. `/metrics` is served on the admin address only ([`admin`]): its labels
//! name every tenant's budgets; the client port answers health with a bare status.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::response::IntoResponse;
use http::{HeaderMap, Method, StatusCode, header};

use super::Gateway;
use super::errors::ApiError;
use super::http_server::{self, Request, Response};
use super::proxy::{self, Route};

/// What answers a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Proxied(Route),
    Models,
    Metrics,
    Healthz,
    Readyz,
}

impl Target {
    /// What answers `path` on the client port.
    fn of(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" => Self::Proxied(Route::Chat),
            "/v1/responses" => Self::Proxied(Route::Responses),
            "/v1/completions" => Self::Proxied(Route::Completions),
            "/v1/embeddings" => Self::Proxied(Route::Embeddings),
            "/v1/models" => Self::Models,
            "/healthz" => Self::Healthz,
            "/readyz" => Self::Readyz,
            _ => return None,
        })
    }

    /// What answers `path` on the admin address.
    fn of_admin(path: &str) -> Option<Self> {
        Some(match path {
            "/metrics" => Self::Metrics,
            "/healthz" => Self::Healthz,
            "/readyz" => Self::Readyz,
            _ => return None,
        })
    }

    /// The methods it takes, as an `Allow` header says them.
    fn allow(self) -> &'static str {
        match self {
            Self::Proxied(_) => "POST",
            _ => "GET, HEAD",
        }
    }

    fn takes(self, m: &Method) -> bool {
        match self {
            Self::Proxied(_) => m == Method::POST,
            _ => m == Method::GET || m == Method::HEAD,
        }
    }
}

/// Answers one request on the client port.
pub async fn answer(gw: Arc<Gateway>, req: Request) -> Response {
    let Some(target) = Target::of(req.uri().path()) else {
        return not_proxied();
    };
    if !target.takes(req.method()) {
        return method_not_allowed(req.uri().path(), target.allow());
    }
    match target {
        Target::Proxied(route) => proxied(gw, route, req).await,
        Target::Models => models(&gw, req.headers()),
        other => plain(&gw, other),
    }
}

/// Answers one request on the admin address: metrics and health, nothing a client may call.
pub async fn admin(gw: Arc<Gateway>, req: Request) -> Response {
    let Some(target) = Target::of_admin(req.uri().path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !target.takes(req.method()) {
        return method_not_allowed(req.uri().path(), target.allow());
    }
    plain(&gw, target)
}

/// A metered route: the key is checked from the request's head before any byte of its body is read
/// (an unknown key is answered 401 at once), then the body is read within the size and time limits.
async fn proxied(gw: Arc<Gateway>, route: Route, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let entry = match proxy::authenticate(&gw, &parts.headers) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let read = http_server::read_body(body, &parts.headers, gw.config.max_body_bytes);
    tokio::pin!(read);
    // A body already here (most are: it came with the head) needs no timer.
    let read = match futures::poll!(&mut read) {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => tokio::time::timeout(gw.config.body_timeout, read).await,
    };
    match read {
        // Boxed: the connection driver holds this request's future, which then stays small (moving
        // the whole proxy state machine by value cost ~850 instructions a request in memcpy).
        Ok(Ok(body)) => Box::pin(proxy::handle(gw, route, entry, body)).await,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                gw.config.body_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Metrics and health.
fn plain(gw: &Gateway, target: Target) -> Response {
    match target {
        Target::Metrics => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            gw.metrics.render(),
        )
            .into_response(),
        Target::Healthz => "ok\n".into_response(),
        Target::Readyz if gw.ready.load(Ordering::Relaxed) => "ready\n".into_response(),
        Target::Readyz => (
            StatusCode::SERVICE_UNAVAILABLE,
            "budgets and upstreams not loaded yet\n",
        )
            .into_response(),
        Target::Proxied(_) | Target::Models => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The models the key's budget may use, in OpenAI's list shape.
fn models(gw: &Gateway, headers: &HeaderMap) -> Response {
    let entry = match proxy::authenticate(gw, headers) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let b = &entry.budget;
    let mut data = Vec::new();
    for name in &b.upstreams {
        let Some(u) = gw.directory.upstream(name) else {
            continue;
        };
        if !u.serves(&b.subject.namespace) {
            continue;
        }
        let mut ids: Vec<&String> = u
            .models
            .iter()
            .filter(|(id, m)| {
                (b.models.is_empty() || b.models.contains(id))
                    && b.currency.as_ref().is_none_or(|c| *c == m.input.currency)
            })
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        for id in ids {
            data.push(
                serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": u.name}),
            );
        }
    }
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

fn not_proxied() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        "this gateway proxies only the routes it meters: /v1/chat/completions, /v1/responses, \
         /v1/completions, /v1/embeddings and /v1/models"
            .into(),
    )
    .into_response()
}

fn method_not_allowed(path: &str, allow: &'static str) -> Response {
    let mut r = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("{path} takes {allow}"),
    )
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxied_routes_take_only_post_and_the_rest_only_get() {
        for path in [
            "/v1/chat/completions",
            "/v1/responses",
            "/v1/completions",
            "/v1/embeddings",
        ] {
            let t = Target::of(path).unwrap();
            assert!(matches!(t, Target::Proxied(_)), "{path}");
            assert!(t.takes(&Method::POST) && !t.takes(&Method::GET), "{path}");
            assert_eq!(t.allow(), "POST");
        }
        for path in ["/v1/models", "/healthz", "/readyz"] {
            let t = Target::of(path).unwrap();
            assert!(t.takes(&Method::GET) && t.takes(&Method::HEAD), "{path}");
            assert!(!t.takes(&Method::POST), "{path}");
        }
        for path in [
            "/v1/images/generations",
            "/v1/chat/completions/",
            "/",
            "",
            "/metrics",
        ] {
            assert!(Target::of(path).is_none(), "{path}");
        }
        // The admin address serves metrics and health, and nothing a client calls.
        assert_eq!(Target::of_admin("/metrics"), Some(Target::Metrics));
        for path in ["/v1/chat/completions", "/v1/models", "/"] {
            assert!(Target::of_admin(path).is_none(), "{path}");
        }
    }

    #[tokio::test]
    async fn a_wrong_method_is_405_in_openais_shape_naming_what_the_route_takes() {
        let r = method_not_allowed("/v1/embeddings", "POST");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "POST");
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(e["error"]["code"], "method_not_allowed");
        assert_eq!(e["error"]["message"], "/v1/embeddings takes POST");
    }
}
