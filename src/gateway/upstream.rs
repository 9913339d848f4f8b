//! The upstream leg: hyper's pooled HTTP/1 client, one per serving thread, over TLS (rustls, the
//! system's roots) or plain TCP, `TCP_NODELAY`. Requests go out as built — no URL re-parsing, redirect
//! or proxy layer per request (reqwest re-parses each URL twice and formats it once, a visible share of
//! the gateway's CPU); the gateway never follows an upstream's redirect.

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The client type.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An upstream's answer, its body streamed.
pub type Answer = hyper::Response<hyper::body::Incoming>;

thread_local! {
    /// This serving thread's client: each thread keeps its own pool of upstream connections, so a
    /// connection's task runs on the thread that sends on it and a request wakes no other thread.
    static CLIENT: UpstreamClient = build();
}

/// This thread's upstream client.
pub fn client() -> UpstreamClient {
    CLIENT.with(UpstreamClient::clone)
}

fn build() -> UpstreamClient {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(Duration::from_secs(5)));
    tcp.enforce_http(false);
    let tls = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "no system TLS roots: HTTPS upstreams cannot be verified");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    };
    let connector = tls.https_or_http().enable_http1().wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// A JSON POST of `body` to `uri` with `authorization`.
pub fn post(
    uri: &http::Uri,
    authorization: &http::HeaderValue,
    body: impl Into<Bytes>,
) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::new(Full::new(body.into()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri.clone();
    let h = req.headers_mut();
    h.insert(http::header::AUTHORIZATION, authorization.clone());
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    req
}

/// The whole body of `answer`.
pub async fn read(answer: Answer) -> Result<Bytes, hyper::Error> {
    use http_body_util::BodyExt;
    Ok(answer.into_body().collect().await?.to_bytes())
}
