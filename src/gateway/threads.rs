//! The gateway's serving threads: each runs its own single-threaded event loop, so a connection, the
//! upstream connections its requests use (one pool per thread, see `proxy`) and their tasks all stay
//! on one thread, and serving a request wakes no other thread — on a small machine a cross-thread
//! wake-up costs more than the gateway's own work on a request.

use std::future::Future;

use super::http_server::{self, Request, Response};

/// What one serving thread runs: given its copy of the listener and the stop signal, a future that
/// serves until the signal, on the thread's own runtime.
pub type Serving = Box<
    dyn FnOnce(
            std::net::TcpListener,
            Stop,
        ) -> futures::future::BoxFuture<'static, std::io::Result<()>>
        + Send,
>;

/// Resolves when the serving threads are told to stop.
pub type Stop = futures::future::BoxFuture<'static, ()>;

/// Serves `listener` on `workers` threads (see [`run`]), each answering requests with its own
/// `handler()`, with at most `cap`'s connections open over all of them.
pub async fn serve<M, H, F>(
    listener: tokio::net::TcpListener,
    workers: usize,
    handler: M,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cap: Option<std::sync::Arc<http_server::ConnectionCap>>,
) -> std::io::Result<()>
where
    M: Fn() -> H,
    H: Fn(Request) -> F + Clone + Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let each = || -> Serving {
        let (handler, cap) = (handler(), cap.clone());
        Box::new(move |listener, stop| Box::pin(http(listener, handler, stop, cap)))
    };
    run(listener, workers, each, shutdown).await
}

/// Runs `each()` on `workers` threads (0: one per CPU the process may use), each thread on its own
/// single-threaded runtime with its own copy of `listener`, until `shutdown` — or until a thread ends
/// on its own (an error), which stops them all. Returns once every thread has finished.
pub async fn run(
    listener: tokio::net::TcpListener,
    workers: usize,
    each: impl Fn() -> Serving,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut done = Vec::with_capacity(workers);
    for i in 0..workers {
        let (listener, serving, rx) = (listener.try_clone()?, each(), rx.clone());
        let (finished, fin) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || {
                let run = || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(serving(listener, Box::pin(stopped(rx))))
                };
                let _ = finished.send(run());
            })?;
        done.push(fin);
    }
    // Only the threads' copies listen: when they stop, new connections are refused at once (and go
    // to another replica) instead of waiting in the backlog while connections drain.
    drop(listener);
    let mut ended = Vec::new();
    tokio::select! {
        _ = shutdown => {}
        (r, i, _) = futures::future::select_all(done.iter_mut()) => {
            done.remove(i);
            ended.push(r);
        }
    }
    let _ = tx.send(true);
    for fin in done {
        ended.push(fin.await);
    }
    for r in ended {
        r.map_err(|_| std::io::Error::other("a gateway serving thread panicked"))??;
    }
    Ok(())
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// How far ahead the serving thread's earliest timer is kept (see [`timer_horizon`]).
const TIMER_HORIZON: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps a timer of this thread's runtime due within [`TIMER_HORIZON`] at all times.
///
/// tokio's timer wakes the event loop (a write to its eventfd, and a loop turn) whenever a new timer
/// is due before every pending one, even when it is set from the loop's own thread. Each request's
/// upstream timeout would do that on an idle thread, once per request; with this timer pending, a
/// timeout of at least [`TIMER_HORIZON`] is never the earliest, and setting one is a plain insert. It
/// costs one wake-up a second per thread, which also drops the thread's upstream connections that
/// have been idle too long.
async fn timer_horizon() {
    let client = super::upstream::client();
    loop {
        tokio::time::sleep(TIMER_HORIZON).await;
        client.sweep();
    }
}

/// The HTTP server of one serving thread: `handler` on `listener` until `stop`, connections drained.
async fn http<H, F>(
    listener: std::net::TcpListener,
    handler: H,
    stop: Stop,
    cap: Option<std::sync::Arc<http_server::ConnectionCap>>,
) -> std::io::Result<()>
where
    H: Fn(Request) -> F + Clone + Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    // The thread's upstream client (its TLS roots loaded) before the first request, not during it.
    drop(super::upstream::client());
    tokio::spawn(timer_horizon());
    let listener = tokio::net::TcpListener::from_std(listener)?;
    http_server::serve(listener, handler, stop, cap).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_on_every_thread_until_shutdown_then_returns() {
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = || {
            |_req| async {
                let name = std::thread::current().name().unwrap().to_string();
                Response::new(axum::body::Body::from(name))
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            2,
            handler,
            async move {
                let _ = rx.await;
            },
            None,
        ));
        let mut threads = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let c = reqwest::Client::new();
            let name = c.get(format!("http://{addr}/")).send().await.unwrap();
            threads.insert(name.text().await.unwrap());
        }
        assert!(
            threads.iter().all(|t| t.starts_with("gateway-")),
            "{threads:?}"
        );
        tx.send(()).unwrap();
        served.await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_thread_that_fails_stops_the_others_and_its_error_is_returned() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        let each = || -> Serving {
            let first = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            Box::new(move |_listener, stop| {
                Box::pin(async move {
                    if first {
                        return Err(std::io::Error::other("bound to fail"));
                    }
                    stop.await;
                    Ok(())
                })
            })
        };
        let r = run(listener, 2, each, futures::future::pending()).await;
        assert_eq!(r.unwrap_err().to_string(), "bound to fail");
    }
}
