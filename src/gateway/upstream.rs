//! The upstream leg: hyper's pooled HTTP/1 client, one per serving thread, over TLS (rustls, the
//! system's roots) or plain TCP, `TCP_NODELAY`. Requests go out as built — no URL re-parsing, redirect
//! or proxy layer per request (reqwest re-parses each URL twice and formats it once, a visible share of
//! the gateway's CPU); the gateway never follows an upstream's redirect.
//!
//! An egress proxy from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, as curl
//! reads them; `http://` proxies) is honoured per new connection: the connection is a `CONNECT` tunnel
//! through it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The client type.
pub type UpstreamClient = Client<Timed<hyper_rustls::HttpsConnector<Egress>>, Full<Bytes>>;

/// How long opening a connection may take: TCP, the proxy's tunnel and the TLS handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connector whose connections must be open within `after`, else a connect error.
#[derive(Clone)]
pub struct Timed<C> {
    inner: C,
    after: Duration,
}

impl<C> tower::Service<http::Uri> for Timed<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Connecting<C::Response>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let (connecting, after) = (self.inner.call(dst), self.after);
        Box::pin(async move {
            match tokio::time::timeout(after, connecting).await {
                Ok(c) => c.map_err(Into::into),
                Err(_) => Err(format!("connecting took longer than {after:?}").into()),
            }
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection being opened.
type Connecting<R> = futures::future::BoxFuture<'static, Result<R, BoxError>>;

/// Opens the TCP connection to an upstream: directly, or through a `CONNECT` tunnel when `proxies`
/// intercepts the destination.
#[derive(Clone)]
pub struct Egress {
    tcp: HttpConnector,
    proxies: Option<Arc<Matcher>>,
}

impl Egress {
    /// Connections made by `tcp`, through the proxies `proxies` names (none: always direct).
    pub fn new(tcp: HttpConnector, proxies: Option<Matcher>) -> Self {
        Self {
            tcp,
            proxies: proxies.map(Arc::new),
        }
    }
}

impl tower::Service<http::Uri> for Egress {
    type Response = <HttpConnector as tower::Service<http::Uri>>::Response;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let Some(via) = self.proxies.as_ref().and_then(|m| m.intercept(&dst)) else {
            return Box::pin(async move { Ok(tcp.call(dst).await?) });
        };
        if via.uri().scheme_str() != Some("http") {
            return Box::pin(async {
                Err("only http:// egress proxies are supported (a CONNECT tunnel)".into())
            });
        }
        let mut tunnel = Tunnel::new(via.uri().clone(), tcp);
        if let Some(auth) = via.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        Box::pin(async move { Ok(tunnel.call(dst).await?) })
    }
}

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
    build_with(Some(Matcher::from_env()), CONNECT_TIMEOUT)
}

/// The client, with connections through `proxies` (none: always direct) open within `connect`.
pub fn build_with(proxies: Option<Matcher>, connect: Duration) -> UpstreamClient {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    // As reqwest did: an upstream gone silently (a NAT's idle drop, a lost node) is found by TCP
    // keep-alive and the kernel's user timeout, instead of a stream hanging for ever.
    tcp.set_keepalive(Some(Duration::from_secs(15)));
    tcp.set_keepalive_interval(Some(Duration::from_secs(15)));
    tcp.set_keepalive_retries(Some(3));
    tcp.set_tcp_user_timeout(Some(Duration::from_secs(30)));
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
    let connector = tls
        .https_or_http()
        .enable_http1()
        .wrap_connector(Egress::new(tcp, proxies));
    let connector = Timed {
        inner: connector,
        after: connect,
    };
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

/// The whole of an answer's body.
pub async fn read(body: hyper::body::Incoming) -> Result<Bytes, hyper::Error> {
    use http_body_util::BodyExt;
    Ok(body.collect().await?.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A `CONNECT` proxy on loopback: the targets it was asked for.
    async fn connect_proxy() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && down.read(&mut b).await.unwrap_or(0) == 1
                    {
                        head.push(b[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head.split(' ').nth(1).unwrap_or_default().to_string();
                    log.lock().unwrap().push(format!("{} {target}", &head[..7]));
                    let mut up = tokio::net::TcpStream::connect(&target).await.unwrap();
                    down.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
            }
        });
        (url, seen)
    }

    async fn target() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/v1/x", axum::routing::post(|| async { "answered" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/v1/x")
    }

    async fn send(c: &UpstreamClient, url: &str) -> String {
        let auth = http::HeaderValue::from_static("Bearer k");
        let answer = c
            .request(post(&url.parse().unwrap(), &auth, "{}"))
            .await
            .unwrap();
        String::from_utf8(read(answer.into_body()).await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn connections_go_through_the_egress_proxy_unless_no_proxy_names_the_host() {
        crate::install_crypto_provider();
        let (proxy, seen) = connect_proxy().await;
        let url = target().await;
        let via = build_with(
            Some(Matcher::builder().http(proxy.clone()).build()),
            CONNECT_TIMEOUT,
        );
        assert_eq!(send(&via, &url).await, "answered");
        let host = url.trim_start_matches("http://").split('/').next().unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![format!("CONNECT {host}")]);

        let bypass = Matcher::builder().http(proxy).no("127.0.0.1").build();
        assert_eq!(
            send(&build_with(Some(bypass), CONNECT_TIMEOUT), &url).await,
            "answered"
        );
        assert_eq!(
            send(&build_with(None, CONNECT_TIMEOUT), &url).await,
            "answered"
        );
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "only the proxied client used the proxy"
        );
    }

    #[tokio::test]
    async fn a_socks_proxy_is_refused_as_a_connect_error() {
        crate::install_crypto_provider();
        let url = target().await;
        let c = build_with(
            Some(Matcher::builder().http("socks5://127.0.0.1:9").build()),
            CONNECT_TIMEOUT,
        );
        let auth = http::HeaderValue::from_static("Bearer k");
        let e = c
            .request(post(&url.parse().unwrap(), &auth, "{}"))
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        assert!(
            format!("{e:?}").contains("only http:// egress proxies"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_answers_is_a_connect_error_within_the_connect_timeout() {
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/v1/x", listener.local_addr().unwrap());
        // Accepts, then says nothing.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let c = build_with(None, Duration::from_millis(300));
        let started = std::time::Instant::now();
        let auth = http::HeaderValue::from_static("Bearer k");
        let e = c
            .request(post(&url.parse().unwrap(), &auth, "{}"))
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
