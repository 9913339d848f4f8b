//! The Kubernetes client every controller uses: kube's default stack plus a client-side limit on
//! requests and a count of them.
//!
//! # Guarantees
//! - At most `qps` requests per second start, with bursts of up to `burst` (a token bucket, like
//!   client-go's QPS/burst), so a large fleet cannot starve `kubectl` and other controllers of the API
//!   server. Each request takes one token when it starts; long-running watches take one per (re)connect.
//! - `quartermaster_kube_requests_total{verb,resource}` counts every request by verb (get, list, watch,
//!   create, update, patch, delete) and resource (e.g. `virtualmachines`, `secrets`), so tests and
//!   benchmarks can see what reconciles asked of the API server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use prometheus::{IntCounterVec, Opts, Registry};
use tower::{Layer, Service};

use crate::http::RateLimiter;

/// Client-side limit on Kubernetes requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeLimits {
    /// Requests per second (0: unlimited).
    pub qps: u32,
    /// Requests that may start at once after a quiet period.
    pub burst: u32,
}

impl Default for KubeLimits {
    fn default() -> Self {
        Self {
            qps: 2000,
            burst: 4000,
        }
    }
}

/// Counts Kubernetes requests by verb.
#[derive(Clone)]
pub struct KubeMetrics {
    requests: IntCounterVec,
}

impl KubeMetrics {
    /// Registers `quartermaster_kube_requests_total` in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "quartermaster_kube_requests_total",
                "Requests sent to the Kubernetes API server, by verb.",
            ),
            &["verb", "resource"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("metric registered once");
        Self { requests }
    }

    /// Requests sent with `verb` for `resource` so far.
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.requests.with_label_values(&[verb, resource]).get()
    }
}

/// A client for `config` with the request limit and the counter.
pub fn client(
    config: kube::Config,
    limits: KubeLimits,
    metrics: Option<KubeMetrics>,
) -> Result<kube::Client, kube::Error> {
    let layer = LimitLayer {
        limiter: (limits.qps > 0).then(|| Arc::new(RateLimiter::new(limits.qps, limits.burst))),
        metrics,
    };
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build())
}

/// The kube verb of a request (from its method, path and `watch` parameter).
pub fn verb_of<B>(req: &Request<B>) -> &'static str {
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    match req.method().as_str() {
        "GET" if watch => "watch",
        "GET" if names_an_object(req.uri().path()) => "get",
        "GET" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "other",
    }
}

/// The path after `/api/{version}` or `/apis/{group}/{version}`.
fn resource_path(path: &str) -> Vec<&str> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => rest.to_vec(),
        _ => Vec::new(),
    }
}

/// The resource (plural) a request is about: `secrets`, `virtualmachines`…; `other` for non-API paths.
pub fn resource_of<B>(req: &Request<B>) -> &'static str {
    let rest = resource_path(req.uri().path());
    let r: &str = match rest.as_slice() {
        ["namespaces", _ns, resource, ..] => resource,
        [resource, ..] => resource,
        [] => "other",
    };
    // NB: label values must be 'static and bounded: only the kinds Quartermaster talks to.
    const KNOWN: &[&str] = &[
        "virtualmachines",
        "projects",
        "providerconfigs",
        "simcards",
        "subscriptions",
        "tokenbudgets",
        "secrets",
        "events",
        "leases",
        "namespaces",
        "customresourcedefinitions",
    ];
    KNOWN.iter().find(|k| **k == r).copied().unwrap_or("other")
}

/// Whether an API path names one object (`…/{resource}/{name}[/{subresource}]`) rather than a collection.
fn names_an_object(path: &str) -> bool {
    match resource_path(path).as_slice() {
        // `namespaces/{name}` is itself an object; `namespaces/{ns}/{resource}[/{name}...]` is scoped.
        ["namespaces", _ns, _resource, _name, ..] => true,
        ["namespaces", _ns, _resource] => false,
        ["namespaces", _name] => true,
        [_resource, _name, ..] => true,
        _ => false,
    }
}

#[derive(Clone)]
struct LimitLayer {
    limiter: Option<Arc<RateLimiter>>,
    metrics: Option<KubeMetrics>,
}

impl<S> Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
            token: None,
            has_token: false,
        }
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Takes a token in `poll_ready` (so the request waits before it is sent), counts in `call`.
struct LimitService<S> {
    inner: S,
    limiter: Option<Arc<RateLimiter>>,
    metrics: Option<KubeMetrics>,
    token: Option<TokenFuture>,
    has_token: bool,
}

impl<S, B> Service<Request<B>> for LimitService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(limiter) = &self.limiter
            && !self.has_token
        {
            let l = limiter.clone();
            let wait = self
                .token
                .get_or_insert_with(|| Box::pin(async move { l.acquire().await }));
            match wait.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.token = None;
                    self.has_token = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.has_token = false;
        if let Some(m) = &self.metrics {
            m.requests
                .with_label_values(&[verb_of(&req), resource_of(&req)])
                .inc();
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn verbs() {
        let cases = [
            ("GET", "/api/v1/namespaces/a/secrets/s", "get"),
            ("GET", "/api/v1/namespaces/a/secrets", "list"),
            ("GET", "/api/v1/secrets?labelSelector=x", "list"),
            ("GET", "/api/v1/namespaces/a", "get"),
            ("GET", "/api/v1/namespaces", "list"),
            (
                "GET",
                "/apis/quartermaster.dev/v1alpha1/virtualmachines?watch=true&resourceVersion=1",
                "watch",
            ),
            (
                "GET",
                "/apis/quartermaster.dev/v1alpha1/providerconfigs/pc",
                "get",
            ),
            (
                "PATCH",
                "/apis/quartermaster.dev/v1alpha1/namespaces/a/virtualmachines/v/status",
                "patch",
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/a/events",
                "create",
            ),
            ("DELETE", "/api/v1/namespaces/a/secrets/s", "delete"),
        ];
        for (m, u, want) in cases {
            assert_eq!(verb_of(&req(m, u)), want, "{m} {u}");
        }
        assert_eq!(
            resource_of(&req("GET", "/api/v1/namespaces/a/secrets/s")),
            "secrets"
        );
        assert_eq!(
            resource_of(&req(
                "GET",
                "/apis/quartermaster.dev/v1alpha1/providerconfigs/pc"
            )),
            "providerconfigs"
        );
        assert_eq!(
            resource_of(&req("GET", "/api/v1/namespaces/a")),
            "namespaces"
        );
        assert_eq!(resource_of(&req("GET", "/api/v1/pods")), "other");
        assert_eq!(resource_of(&req("GET", "/version")), "other");
    }
}
