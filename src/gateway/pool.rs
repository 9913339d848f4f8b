//! A serving thread's idle upstream connections: HTTP/1 senders by scheme and authority, the most
//! recently used taken first. A connection comes back when its answer's body has been read to the
//! end ([`Body`]), so reuse costs no task and no cross-task wake-up; one that closed, or sat idle
//! longer than [`IDLE_TIMEOUT`], is dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Body as _, Bytes, Frame, SizeHint};

use super::endpoint::PoolKey;
use crate::fast_map::FastMap;

/// The sending half of an upstream connection.
pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per scheme and authority (the oldest goes first).
pub const MAX_IDLE: usize = 1024;

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Idle connections by scheme and authority, oldest first.
#[derive(Default)]
pub struct Pool {
    idle: FastMap<PoolKey, VecDeque<Idle>>,
}

/// A pool shared by a client's clones (one serving thread's: never contended).
pub type Shared = Arc<Mutex<Pool>>;

impl Pool {
    /// The most recently used open connection for `key` that has not been idle too long.
    pub fn take(&mut self, key: &PoolKey, now: Instant) -> Option<Sender> {
        let q = self.idle.get_mut(key)?;
        while let Some(i) = q.pop_back() {
            if now.saturating_duration_since(i.since) > IDLE_TIMEOUT {
                // Every other one has been idle longer.
                q.clear();
                return None;
            }
            if !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request to `key`, unless its connection closed.
    pub fn put(&mut self, key: &PoolKey, sender: Sender, now: Instant) {
        if sender.is_closed() {
            return;
        }
        let q = match self.idle.get_mut(key) {
            Some(q) => q,
            None => self.idle.entry(key.clone()).or_default(),
        };
        if q.len() >= MAX_IDLE {
            q.pop_front();
        }
        q.push_back(Idle { sender, since: now });
    }

    /// Drops the connections idle too long and the closed ones at the old end.
    pub fn sweep(&mut self, now: Instant) {
        for q in self.idle.values_mut() {
            while q.front().is_some_and(|i| {
                i.sender.is_closed() || now.saturating_duration_since(i.since) > IDLE_TIMEOUT
            }) {
                q.pop_front();
            }
        }
        self.idle.retain(|_, q| !q.is_empty());
    }

    /// Idle connections kept, all keys together.
    pub fn len(&self) -> usize {
        self.idle.values().map(VecDeque::len).sum()
    }

    /// Whether no connection is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Locks `pool` (a poisoned lock is still a valid pool: every change is one push or pop).
pub fn lock(pool: &Shared) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An answer's body: its connection goes back to the pool once the body has been read to the end.
/// Dropped before that (or after an error), the connection is not reused.
pub struct Body {
    inner: hyper::body::Incoming,
    back: Option<(Shared, PoolKey, Sender)>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("reusable", &self.back.is_some())
            .finish_non_exhaustive()
    }
}

impl Body {
    /// `inner`, whose connection `sender` goes back to `pool` under `key` at its end.
    pub fn new(inner: hyper::body::Incoming, pool: Shared, key: PoolKey, sender: Sender) -> Self {
        Self {
            inner,
            back: Some((pool, key, sender)),
        }
    }

    fn give_back(&mut self) {
        if let Some((pool, key, sender)) = self.back.take() {
            lock(&pool).put(&key, sender, Instant::now());
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.give_back(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.give_back(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.back = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // Read to the end without the final poll (a known length): the connection is still reusable.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection over an in-memory pipe; dropping the returned far end closes it.
    async fn conn() -> (Sender, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(1024);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(near))
                .await
                .unwrap();
        tokio::spawn(conn);
        (sender, far)
    }

    fn key() -> PoolKey {
        super::super::endpoint::Endpoint::parse("http://up.example:8080/v1")
            .unwrap()
            .key()
            .clone()
    }

    #[tokio::test]
    async fn a_closed_connection_is_never_taken() {
        let (mut pool, t0, key) = (Pool::default(), Instant::now(), key());
        let (open, _far_open) = conn().await;
        let (closed, far_closed) = conn().await;
        pool.put(&key, open, t0);
        pool.put(&key, closed, t0);
        drop(far_closed);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(pool.take(&key, t0).is_some());
        assert!(pool.take(&key, t0).is_none());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_dropped_on_take_and_on_sweep() {
        let (mut pool, t0, key) = (Pool::default(), Instant::now(), key());
        let (a, _fa) = conn().await;
        let (b, _fb) = conn().await;
        pool.put(&key, a, t0);
        pool.put(&key, b, t0 + Duration::from_secs(60));
        pool.sweep(t0 + Duration::from_secs(100));
        assert_eq!(
            pool.len(),
            1,
            "only the older one was idle for longer than 90 s"
        );
        assert!(pool.take(&key, t0 + Duration::from_secs(200)).is_none());
        assert!(pool.is_empty());
        let other = Endpoint::parse("https://up.example:8080/v1").unwrap();
        let (c, _fc) = conn().await;
        pool.put(&key, c, t0);
        assert!(
            pool.take(other.key(), t0).is_none(),
            "another scheme is another pool"
        );
        assert!(pool.take(&key, t0).is_some());
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept_per_key() {
        let (mut pool, t0, key) = (Pool::default(), Instant::now(), key());
        let mut far = Vec::new();
        for _ in 0..MAX_IDLE + 3 {
            let (s, f) = conn().await;
            far.push(f);
            pool.put(&key, s, t0);
        }
        assert_eq!(pool.len(), MAX_IDLE);
    }

    use super::super::endpoint::Endpoint;
}
