//! The upstream leg: HTTP/1 connections over TLS (rustls, the system's roots) or plain TCP,
//! `TCP_NODELAY`, kept per serving thread in its own pool ([`super::pool`]). Requests go out as built —
//! the URL parsed once per upstream ([`Endpoint`]), no redirect or proxy layer per request; the gateway
//! never follows an upstream's redirect.
//!
//! An egress proxy from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, as curl
//! reads them; `http://` proxies) is honoured per new connection: the connection is a `CONNECT` tunnel
//! through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;

use super::endpoint::Endpoint;
use super::pool::{self, Sender};

/// How long an idle connection may take to be ready for the next request. It was given back when
/// its last answer's body ended, and is ready as soon as its task has run; one still busy (an upstream
/// that answered before reading all of a large request, and stopped reading) is dropped, not waited on
/// for the whole upstream timeout: nothing was sent on it.
const REUSE_READY: Duration = Duration::from_millis(50);

/// Whether `sender` can take a request: a new connection once open, an idle one within
/// [`REUSE_READY`].
async fn ready(sender: &mut Sender, reused: bool) -> bool {
    use futures::FutureExt;
    match sender.ready().now_or_never() {
        Some(r) => r.is_ok(),
        None if reused => matches!(
            tokio::time::timeout(REUSE_READY, sender.ready()).await,
            Ok(Ok(()))
        ),
        None => sender.ready().await.is_ok(),
    }
}

/// What opens a connection to an upstream.
type Connector = Timed<hyper_rustls::HttpsConnector<Egress>>;

/// An upstream client: a connector and a pool of idle connections. Clones share both.
#[derive(Clone)]
pub struct UpstreamClient(Arc<Parts>);

struct Parts {
    connector: Connector,
    pool: pool::Shared,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be opened (nothing was sent).
    #[error("connecting to the upstream failed: {0}")]
    Connect(BoxError),
    /// The request failed on its connection.
    #[error("the upstream connection failed: {0}")]
    Http(#[from] hyper::Error),
}

impl Error {
    /// Whether no connection could be opened.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl UpstreamClient {
    /// Sends `req` (built by [`post`] for `to`) on an idle connection to `to`, else a new one. A request
    /// that an idle connection closed before taking is sent again on another: nothing of it was sent.
    pub async fn request(
        &self,
        to: &Endpoint,
        mut req: http::Request<Full<Bytes>>,
    ) -> Result<Answer, Error> {
        loop {
            let idle = pool::lock(&self.0.pool).take(to.key(), Instant::now());
            let reused = idle.is_some();
            let mut sender = match idle {
                Some(s) => s,
                None => self.connect(to).await?,
            };
            if !ready(&mut sender, reused).await {
                if reused {
                    continue;
                }
                // A new connection that closed before taking anything: nothing was sent.
                return Err(Error::Connect("the connection closed at once".into()));
            }
            match sender.try_send_request(req).await {
                Ok(answer) => {
                    let (key, pool) = (to.key().clone(), self.0.pool.clone());
                    return Ok(answer.map(|b| pool::Body::new(b, pool, key, sender)));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    async fn connect(&self, to: &Endpoint) -> Result<Sender, Error> {
        use tower::Service;
        let mut connector = self.0.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(Error::Connect)?;
        let io = connector
            .call(to.uri().clone())
            .await
            .map_err(Error::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| Error::Connect(e.into()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Drops the connections idle too long (the serving thread calls it every second).
    pub fn sweep(&self) {
        pool::lock(&self.0.pool).sweep(Instant::now());
    }

    /// Idle connections kept.
    pub fn idle(&self) -> usize {
        pool::lock(&self.0.pool).len()
    }
}

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

/// An upstream's answer, its body streamed (its connection reused once the body is read).
pub type Answer = hyper::Response<pool::Body>;

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
    UpstreamClient(Arc::new(Parts {
        connector,
        pool: pool::Shared::default(),
    }))
}

/// A JSON POST of `body` to `to` with `authorization`.
pub fn post(
    to: &Endpoint,
    authorization: &http::HeaderValue,
    body: impl Into<Bytes>,
) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::new(Full::new(body.into()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = to.target().clone();
    let h = req.headers_mut();
    h.reserve(3);
    h.insert(http::header::HOST, to.host().clone());
    h.insert(http::header::AUTHORIZATION, authorization.clone());
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    req
}

/// The whole of an answer's body.
pub async fn read(body: pool::Body) -> Result<Bytes, hyper::Error> {
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

    /// A target that counts the connections it accepts and answers `/v1/x` (with `Connection: close`
    /// when `close`), and `/v1/long` with a body of a megabyte.
    async fn counting_target(close: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = accepted.clone();
        let listener = listener.tap_io(move |_| {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let app = axum::Router::new()
            .route(
                "/v1/x",
                axum::routing::post(move || async move {
                    let mut r = axum::response::Response::new(axum::body::Body::from("answered"));
                    if close {
                        r.headers_mut()
                            .insert("connection", http::HeaderValue::from_static("close"));
                    }
                    r
                }),
            )
            .route(
                "/v1/long",
                axum::routing::post(|| async { vec![b'x'; 1 << 20] }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1"), accepted)
    }

    /// A target at `/v1/x` that answers each connection's first request with `answer` as soon as
    /// the request's first bytes arrive, without reading the rest; then holds the connection open
    /// (`hold`) or closes it 50 ms later without saying so. Counts the connections it accepts.
    async fn canned_target(
        answer: &'static [u8],
        hold: bool,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/x", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = vec![0u8; 4096];
                    let _ = s.read(&mut head).await;
                    let _ = s.write_all(answer).await;
                    if hold {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                });
            }
        });
        (url, accepted)
    }

    fn count(n: &std::sync::atomic::AtomicUsize) -> usize {
        n.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn requests_in_turn_reuse_one_connection_once_each_answer_is_read() {
        crate::install_crypto_provider();
        let (base, accepted) = counting_target(false).await;
        let c = build_with(None, CONNECT_TIMEOUT);
        for _ in 0..5 {
            assert_eq!(send(&c, &format!("{base}/x")).await, "answered");
        }
        assert_eq!(count(&accepted), 1);
        assert_eq!(c.idle(), 1);

        // Two at once need two connections; both are kept.
        let x = format!("{base}/x");
        let (a, b) = tokio::join!(send(&c, &x), send(&c, &x));
        assert_eq!((a.as_str(), b.as_str()), ("answered", "answered"));
        assert_eq!(count(&accepted), 2);
        assert_eq!(c.idle(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_or_an_answer_left_unread_is_not_reused() {
        crate::install_crypto_provider();
        let (base, accepted) = counting_target(true).await;
        let c = build_with(None, CONNECT_TIMEOUT);
        for _ in 0..3 {
            assert_eq!(send(&c, &format!("{base}/x")).await, "answered");
        }
        assert_eq!(count(&accepted), 3, "each answer closed its connection");

        let (base, accepted) = counting_target(false).await;
        let auth = http::HeaderValue::from_static("Bearer k");
        let long = Endpoint::parse(&format!("{base}/long")).unwrap();
        let answer = c.request(&long, post(&long, &auth, "{}")).await.unwrap();
        drop(answer);
        assert_eq!(send(&c, &format!("{base}/x")).await, "answered");
        assert_eq!(
            count(&accepted),
            2,
            "the unread answer's connection was not reused"
        );
        let answer = c.request(&long, post(&long, &auth, "{}")).await.unwrap();
        assert_eq!(read(answer.into_body()).await.unwrap().len(), 1 << 20);
        assert_eq!(send(&c, &format!("{base}/x")).await, "answered");
        assert_eq!(
            count(&accepted),
            2,
            "a body read to its end gives its connection back"
        );
    }

    #[tokio::test]
    async fn a_request_on_an_idle_connection_the_upstream_closed_goes_out_on_a_new_one() {
        crate::install_crypto_provider();
        // Answers one request per connection and closes it without saying so.
        let (url, accepted) = canned_target(
            b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nanswered",
            false,
        )
        .await;
        let c = build_with(None, CONNECT_TIMEOUT);
        assert_eq!(send(&c, &url).await, "answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(send(&c, &url).await, "answered");
        assert_eq!(count(&accepted), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_still_busy_sending_is_passed_over_not_waited_on() {
        crate::install_crypto_provider();
        // Answers each connection's first request at once, without reading its body, then stops
        // reading (the connection stays open): a large request's body is never all sent.
        let (url, accepted) = canned_target(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nno",
            true,
        )
        .await;
        let c = build_with(None, CONNECT_TIMEOUT);
        let auth = http::HeaderValue::from_static("Bearer k");
        let to = Endpoint::parse(&url).unwrap();
        let big = post(&to, &auth, vec![b'x'; 32 << 20]);
        let answer = c.request(&to, big).await.unwrap();
        assert_eq!(answer.status(), 413);
        assert_eq!(&read(answer.into_body()).await.unwrap()[..], b"no");
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            c.request(&to, post(&to, &auth, "{}")),
        )
        .await
        .expect("waited on the busy connection")
        .unwrap();
        assert_eq!(answer.status(), 413);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(count(&accepted), 2, "the busy connection was not reused");
    }

    async fn send(c: &UpstreamClient, url: &str) -> String {
        let auth = http::HeaderValue::from_static("Bearer k");
        let to = Endpoint::parse(url).unwrap();
        let answer = c.request(&to, post(&to, &auth, "{}")).await.unwrap();
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
        let to = Endpoint::parse(&url).unwrap();
        let e = c.request(&to, post(&to, &auth, "{}")).await.unwrap_err();
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
        let to = Endpoint::parse(&url).unwrap();
        let e = c.request(&to, post(&to, &auth, "{}")).await.unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
