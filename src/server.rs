//! The HTTP server of `quartermaster run`: `/metrics` (Prometheus text), `/healthz` (the process is alive)
//! and `/readyz` (a standby is ready to take over; the leader once its caches have synced).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

/// Role of this process in leader election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Waiting for the lease.
    Standby = 0,
    /// Holds the lease and runs the controllers.
    Leader = 1,
    /// Shutting down.
    Stopping = 2,
}

/// Shared readiness state, updated by leader election and the controllers.
#[derive(Default)]
pub struct Readiness {
    role: AtomicU8,
    synced: AtomicBool,
}

impl Readiness {
    /// Records this process's role.
    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::SeqCst);
    }
    /// Records that every controller's cache has synced.
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::SeqCst);
    }
    /// The role of this process.
    pub fn role(&self) -> Role {
        match self.role.load(Ordering::SeqCst) {
            1 => Role::Leader,
            2 => Role::Stopping,
            _ => Role::Standby,
        }
    }
    /// Readiness and the reason for it.
    pub fn readiness(&self) -> (bool, &'static str) {
        match (self.role(), self.synced.load(Ordering::SeqCst)) {
            (Role::Standby, _) => (true, "standby: waiting for the leader lease"),
            (Role::Leader, true) => (true, "leader: caches synced"),
            (Role::Leader, false) => (false, "leader: caches not yet synced"),
            (Role::Stopping, _) => (false, "shutting down"),
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Readiness>,
}

/// The router with every endpoint.
pub fn router(metrics: Metrics, health: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let (ok, why) = s.health.readiness();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{why}\n"))
}

/// Binds `addr` and serves [`router`] (plus `extra`, e.g. the webhooks) until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Readiness>,
    extra: Option<Router>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "http server listening");
    let app = match extra {
        Some(r) => router(metrics, health).merge(r),
        None => router(metrics, health),
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_role_and_sync() {
        let h = Readiness::default();
        assert!(h.readiness().0, "a standby is ready to take over");
        h.set_role(Role::Leader);
        assert!(!h.readiness().0);
        h.set_synced(true);
        assert!(h.readiness().0);
        h.set_role(Role::Stopping);
        assert!(!h.readiness().0);
    }
}
