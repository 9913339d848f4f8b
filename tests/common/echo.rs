//! An endpoint that refuses every call, quoting the credentials it was sent (its authorization and key
//! headers, and its body): what a careless vendor's error body does. Tests check that no credential
//! reaches anything Quartermaster shows.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

/// A token the echo grants when asked to: not shaped like a credential, so only its exact value finds it.
pub const ISSUED: &str = "Granted-Access-Token-Plain";

struct Echo {
    grant: bool,
    refusal: StatusCode,
}

async fn echo(State(e): State<Arc<Echo>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if e.grant && uri.path().ends_with("/token") {
        let token = serde_json::json!({"access_token": ISSUED, "expires_in": 3600});
        return axum::Json(token).into_response();
    }
    let quoted: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.as_str().contains("auth") || n.as_str().contains("key"))
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or_default()))
        .collect();
    let message = format!(
        "refused {}; body {}",
        quoted.join("; "),
        String::from_utf8_lossy(&body)
    );
    let body = serde_json::json!({"message": message, "error": {"message": message}});
    (e.refusal, axum::Json(body)).into_response()
}

/// Starts an echo answering `refusal`; with `grant`, token endpoints (`…/token`) issue [`ISSUED`]
/// instead of refusing. Returns its base URL.
pub async fn start(grant: bool, refusal: StatusCode) -> String {
    let app = axum::Router::new()
        .route("/{*p}", any(echo))
        .with_state(Arc::new(Echo { grant, refusal }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}
