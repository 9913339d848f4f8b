//! `quartermaster sim`: a loopback vendor simulator, our counterpart of Cluster API's in-memory provider.
//! It speaks the DigitalOcean API subset the DigitalOcean client uses, with a realistic state machine
//! (new → active, off, resizing...) and delays, state kept in an append-only journal file (so it survives
//! restarts; see [`state`]), and
//! configurable latency and faults (errors, 429 with Retry-After, slow responses; `POST /_sim/outage`
//! with `{"on": true}` answers every vendor call 503 until `{"on": false}`).
//!
//! A ProviderConfig of type `digitalocean` with `endpoint: http://127.0.0.1:PORT` exercises the very client
//! that talks to DigitalOcean; one of type `onence` with the same endpoint, the 1NCE client ([`onence`]);
//! one of type `stripe`, the Stripe client ([`stripe`]); one of type `openai` with endpoint
//! `http://127.0.0.1:PORT/v1`, the gateway's upstream ([`openai`]).

pub mod digitalocean;
mod monitoring;
pub mod onence;
pub mod openai;
mod state;
pub mod stripe;
mod vpcs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

/// Simulator settings.
#[derive(Clone, Debug, clap::Args)]
pub struct SimConfig {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:18089")]
    pub listen: SocketAddr,
    /// File the simulator keeps its state in (created if missing).
    #[arg(long, default_value = "quartermaster-sim.json")]
    pub state: PathBuf,
    /// Only this bearer token is accepted (default: any non-empty token).
    #[arg(long, env = "QM_SIM_TOKEN")]
    pub token: Option<String>,
    /// Added latency on every API call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// How long a droplet create (or snapshot) request is held open after the droplet (or snapshot) is
    /// recorded, in milliseconds (simulates a slow vendor: it exists even if the caller gives up).
    #[arg(long, default_value_t = 0)]
    pub create_latency_ms: u64,
    /// Fraction (0..1) of API calls answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fraction (0..1) of API calls answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Retry-After seconds sent with 429.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Fraction (0..1) of API calls delayed by --slow-ms.
    #[arg(long, default_value_t = 0.0)]
    pub slow_rate: f64,
    /// Delay of a slow call, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub slow_ms: u64,
    /// Seconds from create to active.
    #[arg(long, default_value_t = 3)]
    pub provision_secs: u64,
    /// Seconds for power on/off and reboot.
    #[arg(long, default_value_t = 1)]
    pub power_secs: u64,
    /// Seconds for a resize.
    #[arg(long, default_value_t = 2)]
    pub resize_secs: u64,
    /// Seconds from delete to gone.
    #[arg(long, default_value_t = 1)]
    pub delete_secs: u64,
    /// Seconds a droplet snapshot takes (listed in `/v2/snapshots` once taken).
    #[arg(long, default_value_t = 3)]
    pub snapshot_secs: u64,
    /// Snapshot actions are answered 422 (a plan that cannot snapshot).
    #[arg(long)]
    pub refuse_snapshots: bool,
    /// Sizes a resize to is answered 422 (a vendor refusal no catalog check can foresee); repeatable.
    #[arg(long = "refuse-resize-to")]
    pub refuse_resize_to: Vec<String>,
    /// 1NCE subset: how many SIMs the account holds (ICCIDs 8988280666000000000 upwards).
    #[arg(long, default_value_t = 3)]
    pub onence_sims: u32,
    /// 1NCE subset: seconds until a SIM change is applied.
    #[arg(long, default_value_t = 2)]
    pub onence_apply_secs: u64,
    /// 1NCE subset: requests a second answered before 429 (1NCE's 10; 0: no limit).
    #[arg(long, default_value_t = 10)]
    pub onence_rate_limit: u32,
    /// 1NCE subset: how long a top-up request is held open after the order is made, in milliseconds
    /// (the order exists even if the caller gives up).
    #[arg(long, default_value_t = 0)]
    pub onence_top_up_latency_ms: u64,
    /// 1NCE subset: how long an SMS request is held open after the message is stored, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub onence_sms_latency_ms: u64,
    /// 1NCE subset: push Data Streamer usage records and forwarded device SMS to this base URL
    /// (`quartermaster run`'s HTTP server: `/webhooks/onence/usage` and `/webhooks/onence/sms`), re-sent
    /// until answered 200, as 1NCE does.
    #[arg(long)]
    pub onence_push_url: Option<String>,
    /// HTTP Basic user and password for the pushes, `USER:PASSWORD`.
    #[arg(long, env = "QM_SIM_ONENCE_PUSH_AUTH", hide_env_values = true)]
    pub onence_push_auth: Option<String>,
    /// Stripe subset: the length of a billing period, seconds (a month of 30 days).
    #[arg(long, default_value_t = 30 * 86_400)]
    pub stripe_period_secs: i64,
    /// Stripe subset: POST every event to this URL (`quartermaster run`'s `/webhooks/stripe`), signed
    /// with `--stripe-webhook-secret`, re-sent until answered 2xx.
    #[arg(long)]
    pub stripe_webhook_url: Option<String>,
    /// Stripe subset: the webhook signing secret (`whsec_…`).
    #[arg(long, env = "QM_SIM_STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// OpenAI subset: added latency of every answer, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub openai_latency_ms: u64,
    /// OpenAI subset: output tokens of an answer (fewer when the request's limit is lower).
    #[arg(long, default_value_t = 16)]
    pub openai_completion_tokens: i64,
    /// OpenAI subset: delay between two chunks of a stream, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub openai_chunk_delay_ms: u64,
}

impl SimConfig {
    /// Settings for tests: fast transitions, no faults.
    pub fn fast(state: PathBuf) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            state,
            token: None,
            latency_ms: 0,
            create_latency_ms: 0,
            error_rate: 0.0,
            throttle_rate: 0.0,
            retry_after_secs: 1,
            slow_rate: 0.0,
            slow_ms: 5000,
            provision_secs: 1,
            snapshot_secs: 1,
            refuse_snapshots: false,
            power_secs: 1,
            resize_secs: 1,
            delete_secs: 1,
            refuse_resize_to: Vec::new(),
            onence_sims: 3,
            onence_apply_secs: 1,
            onence_rate_limit: 0,
            onence_top_up_latency_ms: 0,
            onence_sms_latency_ms: 0,
            onence_push_url: None,
            onence_push_auth: None,
            stripe_period_secs: 30 * 86_400,
            stripe_webhook_url: None,
            stripe_webhook_secret: None,
            openai_latency_ms: 0,
            openai_completion_tokens: 16,
            openai_chunk_delay_ms: 0,
        }
    }
}

/// Errors starting the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The state file exists but is unreadable.
    #[error("cannot load simulator state from {path}: {message}")]
    State {
        /// State file.
        path: String,
        /// Why.
        message: String,
    },
    /// Bind or serve failure.
    #[error("simulator server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound simulator, ready to serve.
pub struct Sim {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Sim {
    /// Loads state and binds the listener.
    pub async fn bind(config: SimConfig) -> Result<Self, SimError> {
        let store =
            digitalocean::Store::load(&config.state).map_err(|message| SimError::State {
                path: config.state.display().to_string(),
                message,
            })?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let config = Arc::new(config);
        let stats = Arc::new(Stats::default());
        let reader = stats.clone();
        let outage = Arc::new(AtomicBool::new(false));
        let router = digitalocean::router(Arc::new(tokio::sync::Mutex::new(store)), config.clone())
            .merge(onence::router(config.clone()))
            .merge(stripe::router(config.clone()))
            .merge(openai::router(config.clone()))
            .layer(middleware::from_fn_with_state(
                Faults {
                    cfg: config,
                    outage: outage.clone(),
                },
                faults,
            ))
            .route(
                "/_sim/outage",
                axum::routing::post(move |axum::Json(o): axum::Json<Outage>| async move {
                    outage.store(o.on, Ordering::Relaxed);
                    StatusCode::NO_CONTENT
                }),
            )
            .route(
                "/_sim/stats",
                axum::routing::get(move || async move { axum::Json(reader.snapshot()) }),
            )
            .layer(middleware::from_fn_with_state(stats, count));
        Ok(Self { listener, router })
    }

    /// The bound address.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), SimError> {
        tracing::info!(addr = %self.listener.local_addr()?, "simulator listening");
        use axum::serve::ListenerExt;
        // As vendors' servers do: no Nagle delay on answers (a streamed chunk leaves at once).
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// API calls served since start, by method (simulator control calls under `/_sim` are not counted);
/// `GET /_sim/stats` reports them (the reconcile benchmark reads vendor calls per VM there).
#[derive(Debug, Default)]
pub struct Stats {
    get: AtomicU64,
    post: AtomicU64,
    delete: AtomicU64,
    other: AtomicU64,
}

/// What `GET /_sim/stats` answers.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// GET calls (reads).
    pub get: u64,
    /// POST calls (creates, actions, tags).
    pub post: u64,
    /// DELETE calls.
    pub delete: u64,
    /// Anything else.
    pub other: u64,
}

impl Stats {
    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            get: self.get.load(Ordering::Relaxed),
            post: self.post.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

async fn count(State(stats): State<Arc<Stats>>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/_sim") {
        let c = match req.method().as_str() {
            "GET" => &stats.get,
            "POST" => &stats.post,
            "DELETE" => &stats.delete,
            _ => &stats.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
    next.run(req).await
}

/// `POST /_sim/outage` body: `{"on": true}` answers every vendor API call 503 until `{"on": false}`.
#[derive(serde::Deserialize)]
struct Outage {
    on: bool,
}

#[derive(Clone)]
struct Faults {
    cfg: Arc<SimConfig>,
    outage: Arc<AtomicBool>,
}

/// Latency and fault injection in front of every API call (the simulator's own `/_sim` controls excepted
/// from an outage).
async fn faults(State(f): State<Faults>, req: Request, next: Next) -> Response {
    if f.outage.load(Ordering::Relaxed) && !req.uri().path().starts_with("/_sim/") {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"id": "service_unavailable", "message": "The service is down (simulated outage)"})),
        )
            .into_response();
    }
    let cfg = f.cfg;
    if cfg.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cfg.latency_ms)).await;
    }
    let (throttle, error, slow) = {
        let r: f64 = rand::random();
        (
            r < cfg.throttle_rate,
            r >= cfg.throttle_rate && r < cfg.throttle_rate + cfg.error_rate,
            rand::random::<f64>() < cfg.slow_rate,
        )
    };
    if slow {
        tokio::time::sleep(Duration::from_millis(cfg.slow_ms)).await;
    }
    if throttle {
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({"id": "too_many_requests", "message": "API Rate limit exceeded."})),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&cfg.retry_after_secs.to_string()) {
            resp.headers_mut().insert("retry-after", v);
        }
        return resp;
    }
    if error {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({"id": "server_error", "message": "Unexpected server-side error (simulated)"})),
        )
            .into_response();
    }
    next.run(req).await
}

/// A JSON error in DigitalOcean's shape.
pub(crate) fn error(status: StatusCode, id: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::json!({"id": id, "message": message}).to_string(),
        ))
        .unwrap_or_else(|_| status.into_response())
}
