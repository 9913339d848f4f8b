//! `quartermaster bench gateway`: the LLM gateway's added latency, CPU and throughput — figures, never
//! a pass/fail.
//!
//! Everything runs in this one process on loopback: two simulator upstreams (answering at once, and
//! after 20 ms), the gateway (budget enforced through a ledger slice, usage metered and flushed to the
//! ledger), and the load generator. Each measurement is made twice with the same client — straight to
//! the upstream, then through the gateway — and the gateway's figure is the difference:
//! - added latency at concurrency 1 and at a fixed open-loop rate (p50, p99; microseconds);
//! - the gateway's CPU per request: the process's CPU time through the gateway minus straight, over
//!   the requests;
//! - the highest rate sustained against the 20 ms upstream with fewer than 0.1 % errors;
//! - streams: added time to the first chunk, and added delay per chunk (with the largest gap, which a
//!   Nagle/delayed-ACK stall would show as ~40 ms);
//! - the floor: the same figures for a plain proxy with the gateway's HTTP stack and none of its logic,
//!   so what the gateway's own work costs is told apart from what any proxy costs on this machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::ObjectMeta;

use super::BoxError;
use crate::budget::keys;
use crate::crd::provider_config::{
    ModelPrice, ProviderConfigSpec, ProviderType, SecretKeyReference,
};
use crate::crd::token_budget::{ApiKeyStatus, TokenBudgetSpec, TokenBudgetStatus};
use crate::crd::{ProviderConfig, TokenBudget};
use crate::gateway::directory::Upstream;
use crate::gateway::{Gateway, GatewayConfig};

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayBench {
    /// Requests of each concurrency-1 run.
    #[arg(long, default_value_t = 3000)]
    pub requests: usize,
    /// The open-loop rate of the latency-under-load runs, requests a second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Seconds of each open-loop run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rates tried for the highest sustained rate (against the 20 ms upstream), requests a second.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2000,3000,4000,5000,6000,8000"
    )]
    pub rates: Vec<u64>,
    /// Streams of the streaming runs.
    #[arg(long, default_value_t = 50)]
    pub streams: usize,
    /// Ledger URL (default: a SQLite file in --work-dir).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Folder for the simulators' state and the SQLite ledger (created; default: a new folder under
    /// the system's temporary folder).
    #[arg(long)]
    pub work_dir: Option<std::path::PathBuf>,
}

struct Target {
    url: String,
    key: String,
}

const BODY: &str = r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hello there, how are you"}]}"#;
const STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"hello"}]}"#;

fn cpu_now() -> f64 {
    super::cpu_secs(std::process::id())
}

async fn sim(
    dir: &std::path::Path,
    latency_ms: u64,
    chunk_delay_ms: u64,
) -> Result<String, BoxError> {
    let mut cfg =
        crate::sim::SimConfig::fast(dir.join(format!("sim-{latency_ms}-{chunk_delay_ms}.json")));
    cfg.openai_latency_ms = latency_ms;
    cfg.openai_chunk_delay_ms = chunk_delay_ms;
    let s = crate::sim::Sim::bind(cfg).await?;
    let url = format!("http://{}/v1", s.addr()?);
    tokio::spawn(s.serve(futures::future::pending()));
    Ok(url)
}

fn provider(name: &str, endpoint: &str) -> ProviderConfig {
    ProviderConfig::new(
        name,
        ProviderConfigSpec {
            type_: ProviderType::Openai,
            credentials_secret_ref: SecretKeyReference {
                name: "x".into(),
                namespace: "x".into(),
                key: "token".into(),
            },
            endpoint: Some(endpoint.into()),
            rate_limit: None,
            suspended: false,
            allowed_namespaces: vec![],
            adoption: None,
            markup_percent: None,
            sim_claims: vec![],
            top_up_price: None,
            plans: vec![],
            models: vec![ModelPrice {
                name: "gpt-4o-mini".into(),
                upstream_model: None,
                input_per_million: "0.15".into(),
                output_per_million: "0.60".into(),
                currency: "USD".into(),
            }],
        },
    )
}

/// A gateway in front of `upstream`, with one budget of a practically endless allocation.
async fn gateway(
    ledger: crate::ledger::Ledger,
    upstream: &str,
    name: &str,
) -> Result<(Arc<Gateway>, Target), BoxError> {
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
        Upstream::of(&provider("up", upstream), "sk-bench".into()).ok_or("upstream")?,
    );
    gw.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(gw.clone().serve(listener, futures::future::pending()));
    Ok((gw, Target { url, key }))
}

/// A plain proxy in front of `upstream` with the gateway's HTTP stack and none of its logic (no key
/// lookup, JSON, budget, metering or metrics): the floor the gateway's figures are compared with.
async fn plain_proxy(upstream: &str) -> Result<Target, BoxError> {
    use axum::body::Bytes;
    use axum::serve::ListenerExt;
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .build()?;
    let url = reqwest::Url::parse(&format!("{upstream}/chat/completions"))?;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: Bytes| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let resp = client
                    .post(url)
                    .bearer_auth("sk-bench")
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)?;
                let status = resp.status().as_u16();
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)?;
                axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(bytes))
                    .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Target {
        url,
        key: "unused".into(),
    })
}

/// A TCP relay in front of `upstream` (`http://HOST:PORT/v1`): bytes copied between the two sockets,
/// one upstream connection per client connection, no HTTP at all — the least any proxy can cost.
async fn tcp_relay(upstream: &str) -> Result<Target, BoxError> {
    let addr = reqwest::Url::parse(upstream)?
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .ok_or("upstream address")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    Ok(Target {
        url,
        key: "unused".into(),
    })
}

/// One round's figures for the relay, the plain proxy and the gateway: added p50 and p99 (µs), CPU
/// per request (µs).
type Row = [(i64, i64, f64); 3];

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .build()
        .expect("static client settings")
}

/// One request; its latency in microseconds, or `None` on any error.
async fn one(c: &reqwest::Client, t: &Target) -> Option<u64> {
    let started = Instant::now();
    let resp = c
        .post(format!("{}/chat/completions", t.url))
        .bearer_auth(&t.key)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.bytes().await.ok()?;
    Some(started.elapsed().as_micros() as u64)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sequential requests: sorted latencies and the process CPU seconds they took.
async fn sequential(c: &reqwest::Client, t: &Target, n: usize) -> (Vec<u64>, f64) {
    for _ in 0..(n / 10).max(10) {
        one(c, t).await;
    }
    let cpu = cpu_now();
    let mut l = Vec::with_capacity(n);
    for _ in 0..n {
        if let Some(us) = one(c, t).await {
            l.push(us);
        }
    }
    l.sort_unstable();
    (l, cpu_now() - cpu)
}

/// An open-loop run at `rate` a second for `secs`: sorted latencies (from each request's scheduled
/// start, so a stall counts against every request it delays), errors, CPU seconds, achieved rate.
async fn open_loop(
    c: &reqwest::Client,
    t: &Arc<Target>,
    rate: u64,
    secs: u64,
) -> (Vec<u64>, usize, f64, f64) {
    let total = (rate * secs) as usize;
    let started = Instant::now();
    let cpu = cpu_now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_nanos((i as u64) * 1_000_000_000 / rate);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        }
        let (c, t) = (c.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let r = one(&c, &t).await;
            r.map(|_| due.elapsed().as_micros() as u64)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Some(us)) => lat.push(us),
            _ => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    (lat, errors, cpu_now() - cpu, total as f64 / elapsed)
}

/// Streams: per stream, the time to the first chunk and the arrival time of every chunk (µs).
async fn streams(c: &reqwest::Client, t: &Target, n: usize) -> Vec<(u64, Vec<u64>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let Ok(resp) = c
            .post(format!("{}/chat/completions", t.url))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .body(STREAM_BODY)
            .send()
            .await
        else {
            continue;
        };
        let mut body = resp.bytes_stream();
        let mut arrivals = Vec::new();
        while let Some(Ok(_)) = body.next().await {
            arrivals.push(started.elapsed().as_micros() as u64);
        }
        if let Some(first) = arrivals.first() {
            out.push((*first, arrivals));
        }
    }
    out
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    pct(&v, 0.5)
}

fn gaps(s: &[(u64, Vec<u64>)]) -> (u64, u64) {
    let all: Vec<u64> = s
        .iter()
        .flat_map(|(_, a)| a.windows(2).map(|w| w[1] - w[0]))
        .collect();
    let mean = all.iter().sum::<u64>() / (all.len().max(1) as u64);
    (mean, all.iter().copied().max().unwrap_or(0))
}

/// Runs the benchmark and prints its figures.
pub async fn run(b: GatewayBench) -> Result<(), BoxError> {
    crate::install_crypto_provider();
    let dir = b.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qm-bench-gateway-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let ledger =
        crate::ledger::Ledger::connect(b.database_url.as_deref(), &dir.join("ledger.db")).await?;
    ledger.migrate().await?;
    let fast_url = sim(&dir, 0, 0).await?;
    let slow_url = sim(&dir, 20, 0).await?;
    let stream_url = sim(&dir, 0, 10).await?;
    let (gw_fast, fast) = gateway(ledger.clone(), &fast_url, "fast").await?;
    let (_gw_slow, slow) = gateway(ledger.clone(), &slow_url, "slow").await?;
    let (_gw_stream, stream) = gateway(ledger.clone(), &stream_url, "stream").await?;
    let plain = plain_proxy(&fast_url).await?;
    let relay = tcp_relay(&fast_url).await?;
    let direct = |url: &str| Target {
        url: url.to_string(),
        key: "sk-bench".into(),
    };
    let c = client();
    println!(
        "gateway benchmark: {} cores, ledger {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        ledger.kind()
    );

    // Concurrency 1.
    for (label, gw_t, up) in [
        ("upstream answering at once", &fast, &fast_url),
        ("upstream answering after 20 ms", &slow, &slow_url),
    ] {
        let n = if up == &slow_url {
            b.requests / 10
        } else {
            b.requests
        };
        let (d, dcpu) = sequential(&c, &direct(up), n).await;
        let (g, gcpu) = sequential(&c, gw_t, n).await;
        println!(
            "concurrency 1, {label}, {n} requests: direct p50 {} µs p99 {} µs; through the gateway p50 {} µs p99 {} µs; added p50 {} µs, p99 {} µs; gateway CPU {:.1} µs/request",
            pct(&d, 0.5),
            pct(&d, 0.99),
            pct(&g, 0.5),
            pct(&g, 0.99),
            pct(&g, 0.5) as i64 - pct(&d, 0.5) as i64,
            pct(&g, 0.99) as i64 - pct(&d, 0.99) as i64,
            (gcpu - dcpu) * 1e6 / n as f64,
        );
    }

    // The floors, against the upstream answering at once: a TCP relay (no HTTP) and a plain proxy
    // with the gateway's HTTP stack and none of its logic. Five rounds, each running direct, relay,
    // plain proxy and gateway in turn, so a drift of the machine touches all four alike; each figure is
    // the median of the rounds' differences to direct (min..max in brackets).
    let n = b.requests;
    let mut rounds: Vec<Row> = Vec::new();
    for _ in 0..5 {
        let (d, dcpu) = sequential(&c, &direct(&fast_url), n).await;
        let mut row = [(0, 0, 0.0); 3];
        for (i, t) in [&relay, &plain, &fast].into_iter().enumerate() {
            let (l, cpu) = sequential(&c, t, n).await;
            row[i] = (
                pct(&l, 0.5) as i64 - pct(&d, 0.5) as i64,
                pct(&l, 0.99) as i64 - pct(&d, 0.99) as i64,
                (cpu - dcpu) * 1e6 / n as f64,
            );
        }
        rounds.push(row);
    }
    for (i, label) in [
        "a TCP relay (bytes copied, no HTTP)",
        "a plain proxy (the gateway's HTTP stack, no key lookup, JSON, budget or metering)",
        "the gateway",
    ]
    .into_iter()
    .enumerate()
    {
        let spread = |f: &dyn Fn(&Row) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            format!("{:.0} ({:.0}..{:.0})", v[v.len() / 2], v[0], v[v.len() - 1])
        };
        println!(
            "concurrency 1, 5 rounds of {n}, upstream at once: {label} adds p50 {} µs, p99 {} µs, CPU {} µs/request",
            spread(&|r| r[i].0 as f64),
            spread(&|r| r[i].1 as f64),
            spread(&|r| r[i].2),
        );
    }
    let direct_fast = Arc::new(direct(&fast_url));
    for (label, t) in [
        ("the TCP relay", Arc::new(relay)),
        ("the plain proxy", Arc::new(plain)),
    ] {
        let (d, _, dcpu, _) = open_loop(&c, &direct_fast, b.rate, b.seconds).await;
        let (p, _, pcpu, _) = open_loop(&c, &t, b.rate, b.seconds).await;
        println!(
            "{} requests/s for {} s, floor: {label} adds p50 {} µs, p99 {} µs (direct p50 {} µs, p99 {} µs) and {:.1} µs CPU/request",
            b.rate,
            b.seconds,
            pct(&p, 0.5) as i64 - pct(&d, 0.5) as i64,
            pct(&p, 0.99) as i64 - pct(&d, 0.99) as i64,
            pct(&d, 0.5),
            pct(&d, 0.99),
            (pcpu - dcpu) * 1e6 / (b.rate * b.seconds) as f64,
        );
    }

    // A fixed open-loop rate.
    for (label, gw_t, up) in [
        ("upstream answering at once", &fast, &fast_url),
        ("upstream answering after 20 ms", &slow, &slow_url),
    ] {
        let d_t = Arc::new(direct(up));
        let g_t = Arc::new(Target {
            url: gw_t.url.clone(),
            key: gw_t.key.clone(),
        });
        let (d, de, dcpu, _) = open_loop(&c, &d_t, b.rate, b.seconds).await;
        let (g, ge, gcpu, achieved) = open_loop(&c, &g_t, b.rate, b.seconds).await;
        let n = (b.rate * b.seconds) as f64;
        println!(
            "{} requests/s for {} s, {label}: direct p50 {} µs p99 {} µs ({de} errors); through the gateway p50 {} µs p99 {} µs ({ge} errors, {achieved:.0}/s sent); added p50 {} µs, p99 {} µs; gateway CPU {:.1} µs/request",
            b.rate,
            b.seconds,
            pct(&d, 0.5),
            pct(&d, 0.99),
            pct(&g, 0.5),
            pct(&g, 0.99),
            pct(&g, 0.5) as i64 - pct(&d, 0.5) as i64,
            pct(&g, 0.99) as i64 - pct(&d, 0.99) as i64,
            (gcpu - dcpu) * 1e6 / n,
        );
    }

    // The highest sustained rate against the 20 ms upstream.
    let g_t = Arc::new(Target {
        url: slow.url.clone(),
        key: slow.key.clone(),
    });
    let mut best = None;
    for rate in &b.rates {
        let (g, errors, _, achieved) = open_loop(&c, &g_t, *rate, 3).await;
        let total = (*rate * 3) as f64;
        let err = errors as f64 / total;
        let ok = err < 0.001 && achieved >= *rate as f64 * 0.95;
        println!(
            "sustained {rate}/s against the 20 ms upstream: {achieved:.0}/s sent, {:.3} % errors, p50 {} µs, p99 {} µs{}",
            err * 100.0,
            pct(&g, 0.5),
            pct(&g, 0.99),
            if ok { "" } else { " (not sustained)" }
        );
        if ok {
            best = Some(*rate);
        } else {
            break;
        }
    }
    match best {
        Some(r) => println!("highest sustained rate with < 0.1 % errors: {r} requests/s"),
        None => println!("no tried rate was sustained with < 0.1 % errors"),
    }

    // Streams: 16 chunks 10 ms apart, plus the usage chunk and [DONE].
    let d = streams(&c, &direct(&stream_url), b.streams).await;
    let g = streams(&c, &stream, b.streams).await;
    let (dg, dmax) = gaps(&d);
    let (gg, gmax) = gaps(&g);
    let chunks = g.first().map_or(0, |s| s.1.len());
    println!(
        "streams ({} of {chunks} chunks each): time to first chunk direct {} µs, through the gateway {} µs (added {} µs); mean gap between chunks direct {} µs, through the gateway {} µs (added {} µs per chunk); largest gap direct {} µs, through the gateway {} µs",
        g.len(),
        median(d.iter().map(|s| s.0).collect()),
        median(g.iter().map(|s| s.0).collect()),
        median(g.iter().map(|s| s.0).collect()) as i64
            - median(d.iter().map(|s| s.0).collect()) as i64,
        dg,
        gg,
        gg as i64 - dg as i64,
        dmax,
        gmax,
    );
    gw_fast.housekeep(true).await;
    println!(
        "ledger usage events after the run: {}",
        ledger.event_count().await?
    );
    Ok(())
}
