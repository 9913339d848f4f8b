//! The proxies `quartermaster bench gateway` measures, each run in its own child process (the hidden
//! `quartermaster bench proxy`) so that its CPU time is its own: the gateway itself, and two floors —
//! a plain proxy with the gateway's HTTP stack and none of its logic, and a TCP relay.
//!
//! The child binds a loopback port, prints `URL KEY` as its first line on stdout and serves until its
//! stdin closes; a gateway then flushes its usage to its ledger before it exits.

use kube::api::ObjectMeta;
use tokio::io::AsyncReadExt;

use super::BoxError;
use crate::budget::keys;
use crate::crd::provider_config::ProviderConfigSpec;
use crate::crd::token_budget::{ApiKeyStatus, TokenBudgetSpec, TokenBudgetStatus};
use crate::crd::{ProviderConfig, TokenBudget};
use crate::gateway::directory::Upstream;
use crate::gateway::{Gateway, GatewayConfig, threads, upstream};

/// What a proxy child runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyKind {
    /// The gateway: budget enforced through a ledger slice, usage metered and flushed every second.
    Gateway,
    /// The gateway's HTTP stack (its serving threads, axum, its hyper upstream client) and none of its
    /// logic.
    Plain,
    /// Bytes copied between two sockets, no HTTP.
    Relay,
}

/// A proxy child's settings.
#[derive(Clone, Debug, clap::Args)]
pub struct ProxyArgs {
    /// What to run.
    #[arg(long, value_enum)]
    pub kind: ProxyKind,
    /// The upstream's base URL (`http://HOST:PORT/v1`).
    #[arg(long)]
    pub upstream: String,
    /// The gateway's budget name (also names its SQLite ledger file).
    #[arg(long, default_value = "bench")]
    pub name: String,
    /// Ledger URL (default: a SQLite file in --work-dir).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Folder of the SQLite ledger.
    #[arg(long)]
    pub work_dir: std::path::PathBuf,
}

/// Runs one proxy child until its stdin closes.
pub async fn proxy(a: ProxyArgs) -> Result<(), BoxError> {
    crate::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let stop = async {
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    match a.kind {
        ProxyKind::Gateway => {
            let ledger = crate::ledger::Ledger::connect(
                a.database_url.as_deref(),
                &a.work_dir.join(format!("ledger-{}.db", a.name)),
            )
            .await?;
            ledger.migrate().await?;
            let (key, served) = gateway(ledger, &a.upstream, &a.name, listener, stop).await?;
            println!("{url} {key}");
            served.await??;
        }
        ProxyKind::Plain => {
            println!("{url} unused");
            plain_proxy(&a.upstream, listener, stop).await?;
        }
        ProxyKind::Relay => {
            println!("{url} unused");
            tcp_relay(&a.upstream, listener, stop).await?;
        }
    }
    Ok(())
}

fn provider(name: &str, endpoint: &str) -> Result<ProviderConfig, BoxError> {
    let spec: ProviderConfigSpec = serde_json::from_value(serde_json::json!({
        "type": "openai", "endpoint": endpoint,
        "credentialsSecretRef": {"name": "x", "namespace": "x", "key": "token"},
        "models": [{"name": "gpt-4o-mini", "inputPerMillion": "0.15", "outputPerMillion": "0.60",
                    "currency": "USD"}],
    }))?;
    Ok(ProviderConfig::new(name, spec))
}

/// A gateway in front of `upstream`, with one budget of a practically endless allocation, serving on
/// `listener` until `stop` resolves (then its usage is flushed to `ledger`); returns its API key.
async fn gateway(
    ledger: crate::ledger::Ledger,
    upstream: &str,
    name: &str,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(String, tokio::task::JoinHandle<std::io::Result<()>>), BoxError> {
    let key = keys::generate();
    let spec: TokenBudgetSpec = serde_json::from_value(serde_json::json!({
        "tokens": 1_000_000_000_000u64, "period": "Monthly",
        "providerConfigRef": {"name": "up"}, "apiKeys": [{"name": "bench"}],
    }))?;
    let mut b = TokenBudget::new(name, spec);
    b.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("bench".into()),
        uid: Some(format!("bench-{name}-{}", uuid::Uuid::new_v4().simple())),
        ..Default::default()
    };
    b.status = Some(TokenBudgetStatus {
        api_keys: vec![ApiKeyStatus {
            name: "bench".into(),
            secret_name: "x".into(),
            sha256: keys::hash(&key),
        }],
        ..Default::default()
    });
    let gw = Gateway::new(GatewayConfig::default(), ledger, &format!("bench-{name}"));
    gw.directory.put_budget(&b);
    gw.directory.put_upstream(
        Upstream::of(&provider("up", upstream)?, "sk-bench".into()).ok_or("upstream")?,
    );
    gw.set_ready(true);
    Ok((key, tokio::spawn(gw.serve(listener, stop))))
}

/// A plain proxy in front of `upstream` with the gateway's HTTP stack (its serving threads, HTTP
/// server, body reading and upstream client) and none of its logic (no key lookup, JSON, budget,
/// metering or metrics): the floor the gateway's figures are compared with. Serves until `stop`.
async fn plain_proxy(
    upstream: &str,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    use crate::gateway::http_server::{self, Request, Response};
    let url = crate::gateway::endpoint::Endpoint::parse(&format!("{upstream}/chat/completions"))
        .ok_or("the upstream is not an absolute http(s) URL")?;
    let url = std::sync::Arc::new(url);
    let limit = crate::gateway::GatewayConfig::default().max_body_bytes;
    let handler = move || {
        let url = url.clone();
        move |req: Request| {
            let url = url.clone();
            async move {
                let bad_gateway = || {
                    let mut r = Response::default();
                    *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                    r
                };
                let (parts, body) = req.into_parts();
                let Ok(body) = http_server::read_body(body, &parts.headers, limit).await else {
                    return bad_gateway();
                };
                let auth = http::HeaderValue::from_static("Bearer sk-bench");
                let Ok(resp) = upstream::client()
                    .request(&url, upstream::post(&url, &auth, body))
                    .await
                else {
                    return bad_gateway();
                };
                let status = resp.status();
                let Ok(bytes) = upstream::read(resp.into_body()).await else {
                    return bad_gateway();
                };
                let mut r = Response::new(axum::body::Body::from(bytes));
                *r.status_mut() = status;
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
        }
    };
    threads::serve(listener, 0, handler, stop, None).await?;
    Ok(())
}

/// A TCP relay in front of `upstream` (`http://HOST:PORT/v1`) on the gateway's serving threads: bytes
/// copied between the two sockets, one upstream connection per client connection, no HTTP at all —
/// the least any proxy can cost. Serves until `stop`.
async fn tcp_relay(
    upstream: &str,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let addr = reqwest::Url::parse(upstream)?
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .ok_or("upstream address")?;
    let each = move || -> threads::Serving {
        Box::new(move |listener, stop| {
            Box::pin(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                tokio::select! {
                    _ = stop => Ok(()),
                    _ = relay(listener, addr) => Ok(()),
                }
            })
        })
    };
    threads::run(listener, 0, each, stop).await?;
    Ok(())
}

async fn relay(listener: tokio::net::TcpListener, upstream: std::net::SocketAddr) {
    while let Ok((mut down, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let _ = (down.set_nodelay(true), up.set_nodelay(true));
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
    }
}
