//! The HTTP/1 server of one serving thread: hyper's connection driver calling a plain function per
//! request. No router, extractor, protocol detection or upgrade layer sits between the socket and the
//! gateway (axum's took ~5k instructions a request: BENCHMARKS.md); the gateway matches its few routes
//! itself ([`super::routes`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use futures::FutureExt;
use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;

use super::errors::ApiError;

/// A response: the body boxed, as axum's.
pub type Response = http::Response<axum::body::Body>;

/// A request as it arrives, its body not read yet.
pub type Request = http::Request<Incoming>;

/// How long a client may take to send a request's head; an idle keep-alive connection waiting for its
/// next request is closed after as long. A client that sends half a head and stops (slowloris) holds
/// a connection no longer than this, and cannot hold up a drain.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The most client connections a server (all its serving threads) keeps open at once.
#[derive(Debug)]
pub struct ConnectionCap {
    max: usize,
    open: AtomicUsize,
}

impl ConnectionCap {
    /// At most `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: AtomicUsize::new(0),
        })
    }

    /// A place for one more connection, held until the guard is dropped; `None` when all are taken.
    fn enter(self: &Arc<Self>) -> Option<Admitted> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted(self.clone()))
    }
}

/// One connection's place under a [`ConnectionCap`].
struct Admitted(Arc<ConnectionCap>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection beyond the cap is told before it is closed: 503 in OpenAI's error shape.
fn over_capacity() -> Vec<u8> {
    let body = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "overloaded",
        "this gateway has too many open connections; try again".into(),
    )
    .body();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Answers each request on `listener`'s connections with `handler` until `stop`; then stops
/// accepting, lets each connection finish the request it is serving (a client still sending a
/// request's head gets at most [`HEADER_READ_TIMEOUT`]) and waits for them all. With a `cap`, a
/// connection beyond it is answered 503 and closed without reading anything from it.
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    handler: H,
    stop: impl Future<Output = ()>,
    cap: Option<Arc<ConnectionCap>>,
) -> std::io::Result<()>
where
    H: Fn(Request) -> F + Clone + Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    serve_with(listener, handler, stop, HEADER_READ_TIMEOUT, cap).await
}

/// [`serve`], with `header_timeout` as the [`HEADER_READ_TIMEOUT`].
async fn serve_with<H, F>(
    listener: tokio::net::TcpListener,
    handler: H,
    stop: impl Future<Output = ()>,
    header_timeout: Duration,
    cap: Option<Arc<ConnectionCap>>,
) -> std::io::Result<()>
where
    H: Fn(Request) -> F + Clone + Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors or the like: wait instead of spinning.
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // No Nagle delay on the client leg (the upstream leg sets it on its own connections).
        let _ = tcp.set_nodelay(true);
        let place = match cap.as_ref().map(ConnectionCap::enter) {
            Some(None) => {
                tokio::spawn(refuse(tcp));
                continue;
            }
            Some(place) => place,
            None => None,
        };
        let h = handler.clone();
        let service = hyper::service::service_fn(move |req| h(req).map(Ok::<_, Infallible>));
        let conn = http.serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Tells a connection beyond the cap so and closes it, within a second. What the client sent is
/// read and dropped first (up to 64 KiB): closing a socket with unread bytes sends a reset, and the
/// client would see that instead of the 503.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = async {
        tcp.write_all(&over_capacity()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64usize << 10;
        while left > 0 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// The whole request body, refused (413) past `max` bytes ([`crate::body_limit`]).
pub async fn read_body(
    body: hyper::body::Incoming,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, ApiError> {
    crate::body_limit::read(body, headers, max)
        .await
        .map_err(|r| match r {
            crate::body_limit::Refused::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body_too_large",
                format!("the request body is larger than this gateway's limit of {max} bytes"),
            ),
            crate::body_limit::Refused::Broken => {
                ApiError::bad_request("the request body could not be read to its end")
            }
        })
}

/// Errors that concern one connection only (the listener is fine).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `handler` on a fresh port until the returned sender fires.
    async fn server<H, F>(
        handler: H,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )
    where
        H: Fn(Request) -> F + Clone + Send + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            handler,
            async move {
                let _ = rx.await;
            },
            None,
        ));
        (addr, tx, served)
    }

    #[tokio::test]
    async fn a_request_in_flight_at_stop_is_answered_and_idle_connections_do_not_hold_the_stop() {
        let (addr, stop, served) = server(|_req| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(axum::body::Body::from("late"))
        })
        .await;
        // An idle keep-alive connection, and one request in flight.
        let idle = reqwest::Client::new();
        assert_eq!(
            idle.get(format!("http://{addr}/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "late"
        );
        let in_flight = tokio::spawn(reqwest::get(format!("http://{addr}/x")));
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let answer = in_flight.await.unwrap().unwrap();
        assert_eq!(answer.text().await.unwrap(), "late");
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the stop waited for the idle connection")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_head_is_cut_off_and_does_not_hold_up_the_stop() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handler = |_req| async { Response::new(axum::body::Body::from("ok")) };
        let served = tokio::spawn(serve_with(
            listener,
            handler,
            async move {
                let _ = rx.await;
            },
            Duration::from_millis(300),
            None,
        ));
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"POST / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(()).unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the half-sent head kept its connection open");
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the stop waited on the half-sent head")
            .unwrap()
            .unwrap();
    }

    /// One GET on `s`, and the first read of its answer.
    async fn get(s: &mut tokio::net::TcpStream) -> String {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_answered_503_and_closed_until_one_ends() {
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = |_req| async { Response::new(axum::body::Body::from("ok")) };
        let cap = ConnectionCap::new(2);
        tokio::spawn(serve(
            listener,
            handler,
            futures::future::pending::<()>(),
            Some(cap.clone()),
        ));
        let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut a).await.starts_with("HTTP/1.1 200"));
        assert!(get(&mut b).await.starts_with("HTTP/1.1 200"));
        // A third, while two are open: 503 in OpenAI's shape, then closed — also when it sent its
        // request first (unread bytes must not turn the close into a reset).
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut refused = String::new();
        c.read_to_string(&mut refused).await.unwrap();
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        let body = refused.split("\r\n\r\n").nth(1).unwrap();
        let e: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(e["error"]["code"], "overloaded");
        // One closes: a new connection is served again.
        drop(a);
        let mut d = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if cap.open.load(Ordering::Acquire) < 2 {
                d = Some(tokio::net::TcpStream::connect(addr).await.unwrap());
                break;
            }
        }
        let mut d = d.expect("the closed connection's place came back");
        assert!(get(&mut d).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused_whether_declared_or_streamed() {
        let (addr, _stop, _served) = server(|req: Request| async move {
            let (parts, body) = req.into_parts();
            match read_body(body, &parts.headers, 10).await {
                Ok(b) => Response::new(axum::body::Body::from(b)),
                Err(e) => e.into_response(),
            }
        })
        .await;
        let c = reqwest::Client::new();
        let url = format!("http://{addr}/");
        let ok = c.post(&url).body("0123456789").send().await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.text().await.unwrap(), "0123456789");
        let declared = c.post(&url).body("0123456789a").send().await.unwrap();
        assert_eq!(declared.status(), 413);
        let e: serde_json::Value = declared.json().await.unwrap();
        assert_eq!(e["error"]["code"], "body_too_large", "{e}");
        // Chunked: no length declared, the limit found while reading.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = vec![0u8; 1024];
        let n = s.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
}
