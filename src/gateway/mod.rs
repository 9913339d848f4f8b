//! `quartermaster gateway`: an OpenAI-compatible proxy that enforces TokenBudgets and meters every
//! request. Its own process and Deployment, horizontally scalable: budgets hold across replicas through
//! slices leased from the ledger ([`enforce`]).
//!
//! Serving a request makes no Kubernetes call and no database round trip (bar taking a new slice): keys,
//! budgets and upstreams come from [`directory`], fed by watches ([`watch`]); usage is summed in memory
//! and flushed to the ledger every `flush_interval`.
//!
//! Routes: `POST /v1/chat/completions`, `/v1/responses`, `/v1/completions`, `/v1/embeddings` (JSON, or
//! `stream: true` as server-sent events), `GET /v1/models`, and bare `/healthz`, `/readyz`; `/metrics`
//! (and health again) on a separate admin address ([`Gateway::serve_admin`]). A route it does not meter
//! it does not proxy.

pub mod directory;
pub mod endpoint;
pub mod enforce;
pub mod errors;
pub mod http_server;
pub mod metrics;
pub mod output;
pub mod pool;
pub mod proxy;
pub mod rates;
pub mod request_body;
pub mod route;
pub mod routes;
pub mod sse;
pub mod threads;
pub mod upstream;
pub mod upstream_refusal;
pub mod usage;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use directory::Directory;
use enforce::Enforcer;
use metrics::GatewayMetrics;

/// Gateway settings.
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayConfig {
    /// Address to listen on.
    #[arg(
        long = "listen",
        default_value = "0.0.0.0:8090",
        env = "QM_GATEWAY_LISTEN"
    )]
    pub listen: SocketAddr,
    /// Address of the admin server: `/metrics` (whose labels name every tenant's budgets), `/healthz`
    /// and `/readyz`. Keep it off the network clients reach.
    #[arg(
        long = "admin-listen",
        default_value = "0.0.0.0:9091",
        env = "QM_GATEWAY_ADMIN_LISTEN"
    )]
    pub admin_listen: SocketAddr,
    /// How long a client may take to send a request's body, once its head (and key) arrived.
    #[arg(long = "body-timeout-secs", default_value = "30", value_parser = secs)]
    pub body_timeout: Duration,
    /// Client connections open at once, over all serving threads; one more is answered 503 and closed.
    #[arg(long = "max-connections", default_value_t = 10_000)]
    pub max_connections: usize,
    /// How long to wait for an upstream's response headers before trying the next upstream.
    #[arg(long = "upstream-timeout-secs", default_value = "60", value_parser = secs)]
    pub upstream_timeout: Duration,
    /// How often metered usage is written to the ledger (one batched write).
    #[arg(long = "flush-interval-ms", default_value = "1000", value_parser = millis)]
    pub flush_interval: Duration,
    /// A slice takes at most 1/N of what is left of a budget's period.
    #[arg(long = "slice-share", default_value_t = 8)]
    pub slice_share: i64,
    /// Seconds after which a replica gives an idle slice back.
    #[arg(long = "slice-idle-secs", default_value_t = 2)]
    pub slice_idle_secs: i64,
    /// Largest request body, bytes.
    #[arg(long = "max-body-bytes", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Serving threads, each with its own event loop, connections and upstream connection pool (0:
    /// one per CPU the process may use).
    #[arg(long = "workers", default_value_t = 0, env = "QM_GATEWAY_WORKERS")]
    pub workers: usize,
}

fn secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

fn millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| e.to_string())
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            admin_listen: "127.0.0.1:0".parse().expect("valid address"),
            body_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            upstream_timeout: Duration::from_secs(60),
            flush_interval: Duration::from_millis(1000),
            slice_share: 8,
            slice_idle_secs: 2,
            max_body_bytes: 16 << 20,
            workers: 0,
        }
    }
}

/// One gateway process.
pub struct Gateway {
    /// Keys, budgets and upstreams.
    pub directory: Arc<Directory>,
    /// Budget slices and the usage meter.
    pub enforcer: Arc<Enforcer>,
    /// Metrics.
    pub metrics: GatewayMetrics,
    /// Settings.
    pub config: GatewayConfig,
    ready: AtomicBool,
}

impl Gateway {
    /// A gateway over `ledger`; `instance` is unique per process start.
    pub fn new(config: GatewayConfig, ledger: crate::ledger::Ledger, instance: &str) -> Arc<Self> {
        crate::install_crypto_provider();
        Arc::new(Self {
            directory: Arc::default(),
            enforcer: Arc::new(Enforcer::new(
                ledger,
                instance,
                config.slice_share,
                config.slice_idle_secs,
            )),
            metrics: GatewayMetrics::new(),
            config,
            ready: AtomicBool::new(false),
        })
    }

    /// Marks the directory filled (readiness).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Flushes usage and gives idle slices back, every `flush_interval`, until `shutdown`; then flushes
    /// and gives every slice back.
    pub async fn background(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => self.housekeep(false).await,
                _ = &mut shutdown => break,
            }
        }
        self.housekeep(true).await;
    }

    /// One round of housekeeping: flush usage, give back idle (or, with `all`, every) slice.
    pub async fn housekeep(&self, all: bool) {
        if let Err(e) = self.enforcer.flush().await {
            self.metrics
                .ledger_errors
                .with_label_values(&["flush"])
                .inc();
            tracing::warn!(error = %e, "usage flush failed; kept for the next one");
        }
        if let Err(e) = self.enforcer.give_back(all).await {
            self.metrics
                .ledger_errors
                .with_label_values(&["release"])
                .inc();
            tracing::warn!(error = %e, "returning budget slices failed; kept for the next round");
        }
    }

    /// Serves the admin routes (`/metrics`, `/healthz`, `/readyz`: [`routes::admin`]) on `listener`
    /// until `stop`.
    pub async fn serve_admin(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, "gateway admin server listening");
        let answer = move |req| routes::admin(self.clone(), req);
        http_server::serve(listener, answer, stop, None).await
    }

    /// Serves on `listener` until `shutdown` (on [`threads::serve`]'s serving threads), then flushes
    /// and gives every slice back. Housekeeping and ledger calls stay on the caller's runtime.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let bg = tokio::spawn(self.clone().background(async move {
            let mut rx = rx;
            let _ = rx.wait_for(|v| *v).await;
        }));
        tracing::info!(addr = %listener.local_addr()?, "gateway listening");
        let gw = self.clone();
        let answer = move || {
            let gw = gw.clone();
            move |req| routes::answer(gw.clone(), req)
        };
        let cap = http_server::ConnectionCap::new(self.config.max_connections);
        let served =
            threads::serve(listener, self.config.workers, answer, shutdown, Some(cap)).await;
        let _ = tx.send(true);
        let _ = bg.await;
        served
    }
}
