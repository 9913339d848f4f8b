//! `quartermaster bench gateway`: the LLM gateway's added latency, CPU and throughput — figures, never
//! a pass/fail.
//!
//! On loopback: this process holds the load generator and three simulator upstreams (answering at
//! once, after 20 ms, and streaming); each proxy runs as its own child process (`proxies`): a gateway
//! per upstream (budget enforced through a ledger slice, usage metered and flushed to its ledger), and
//! two floors in front of the upstream answering at once — a plain proxy with the gateway's HTTP stack
//! and none of its logic, and a TCP relay. Each measurement is made straight to the upstream and
//! through the proxy with the same client:
//! - added latency at concurrency 1 and at a fixed open-loop rate (p50, p99; microseconds);
//! - the proxy's CPU per request: its own process's CPU time (every thread, nanosecond resolution)
//!   over the requests;
//! - the highest rate sustained against the 20 ms upstream with fewer than 0.1 % errors;
//! - streams: added time to the first chunk, and added delay per chunk (with the largest gap, which a
//!   Nagle/delayed-ACK stall would show as ~40 ms).
//!
//! The floors tell what the gateway's own work costs apart from what any proxy costs on this machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::BoxError;

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
/// Asks for the usage chunk, so a stream has the same chunks straight and through the gateway (which
/// otherwise withholds the usage chunk it asked the upstream for).
const STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":16,"messages":[{"role":"user","content":"hello"}]}"#;

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

/// A proxy child (see `proxies`): its process, and the target it serves.
struct Proxy {
    child: tokio::process::Child,
    target: Arc<Target>,
}

impl Proxy {
    /// Starts `quartermaster bench proxy --kind KIND` in front of `upstream` and reads its URL and key.
    async fn start(
        exe: &std::path::Path,
        kind: &str,
        upstream: &str,
        name: &str,
        b: &GatewayBench,
        dir: &std::path::Path,
    ) -> Result<Self, BoxError> {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args([
            "bench",
            "proxy",
            "--kind",
            kind,
            "--upstream",
            upstream,
            "--name",
            name,
        ])
        .arg("--work-dir")
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
        if let Some(url) = &b.database_url {
            cmd.args(["--database-url", url]);
        }
        let mut child = cmd.spawn()?;
        let out = child.stdout.take().ok_or("proxy stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(out).read_line(&mut line).await?;
        let (url, key) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("proxy {kind} did not start"))?;
        let target = Arc::new(Target {
            url: url.into(),
            key: key.into(),
        });
        Ok(Self { child, target })
    }

    /// The child's CPU time so far, in seconds (nanosecond resolution).
    fn cpu(&self) -> f64 {
        self.child.id().map_or(0.0, super::task_cpu_secs)
    }

    /// Closes the child's stdin (a gateway then flushes its usage) and waits for it to exit.
    async fn stop(mut self) -> Result<(), BoxError> {
        drop(self.child.stdin.take());
        self.child.wait().await?;
        Ok(())
    }
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

/// Sequential requests: sorted latencies and the CPU seconds `cpu` (a proxy's clock) moved by.
async fn sequential(
    c: &reqwest::Client,
    t: &Target,
    n: usize,
    cpu_now: &dyn Fn() -> f64,
) -> (Vec<u64>, f64) {
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
/// start, so a stall counts against every request it delays), errors, the CPU seconds `cpu_now` (a
/// proxy's clock) moved by, achieved rate.
async fn open_loop(
    c: &reqwest::Client,
    t: &Arc<Target>,
    rate: u64,
    secs: u64,
    cpu_now: &dyn Fn() -> f64,
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

/// Added p50 and p99 of `through` over `direct` (µs; a p99 difference can come out negative).
fn added(through: &[u64], direct: &[u64]) -> (i64, i64) {
    (
        pct(through, 0.5) as i64 - pct(direct, 0.5) as i64,
        pct(through, 0.99) as i64 - pct(direct, 0.99) as i64,
    )
}

/// Runs the benchmark and prints its figures; `exe` is this binary, which runs each proxy.
pub async fn run(b: GatewayBench, exe: std::path::PathBuf) -> Result<(), BoxError> {
    crate::install_crypto_provider();
    let dir = b.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qm-bench-gateway-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let fast_url = sim(&dir, 0, 0).await?;
    let slow_url = sim(&dir, 20, 0).await?;
    let stream_url = sim(&dir, 0, 10).await?;
    let start = |kind: &'static str, up: String, name: &'static str| {
        let (exe, b, dir) = (exe.clone(), b.clone(), dir.clone());
        async move { Proxy::start(&exe, kind, &up, name, &b, &dir).await }
    };
    let fast = start("gateway", fast_url.clone(), "fast").await?;
    let slow = start("gateway", slow_url.clone(), "slow").await?;
    let stream = start("gateway", stream_url.clone(), "stream").await?;
    let plain = start("plain", fast_url.clone(), "plain").await?;
    let relay = start("relay", fast_url.clone(), "relay").await?;
    let direct = |url: &str| Target {
        url: url.to_string(),
        key: "sk-bench".into(),
    };
    let none = || 0.0;
    let c = client();
    println!(
        "gateway benchmark: {} cores; each proxy is its own process, and its CPU per request is that process's",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    // Concurrency 1.
    for (label, gw, up) in [
        ("upstream answering at once", &fast, &fast_url),
        ("upstream answering after 20 ms", &slow, &slow_url),
    ] {
        let n = if up == &slow_url {
            b.requests / 10
        } else {
            b.requests
        };
        let (d, _) = sequential(&c, &direct(up), n, &none).await;
        let (g, gcpu) = sequential(&c, &gw.target, n, &|| gw.cpu()).await;
        let (a50, a99) = added(&g, &d);
        println!(
            "concurrency 1, {label}, {n} requests: direct p50 {} µs p99 {} µs; through the gateway p50 {} µs p99 {} µs; added p50 {a50} µs, p99 {a99} µs; gateway CPU {:.1} µs/request",
            pct(&d, 0.5),
            pct(&d, 0.99),
            pct(&g, 0.5),
            pct(&g, 0.99),
            gcpu * 1e6 / n as f64,
        );
    }

    // The floors, against the upstream answering at once: a TCP relay (no HTTP) and a plain proxy
    // with the gateway's HTTP stack and none of its logic. Five rounds, each running direct, relay,
    // plain proxy and gateway in turn, so a drift of the machine touches all four alike; each figure is
    // the median of the rounds' figures (min..max in brackets).
    let n = b.requests;
    let mut rounds: Vec<Row> = Vec::new();
    for _ in 0..5 {
        let (d, _) = sequential(&c, &direct(&fast_url), n, &none).await;
        let mut row = [(0, 0, 0.0); 3];
        for (i, p) in [&relay, &plain, &fast].into_iter().enumerate() {
            let (l, cpu) = sequential(&c, &p.target, n, &|| p.cpu()).await;
            let (a50, a99) = added(&l, &d);
            row[i] = (a50, a99, cpu * 1e6 / n as f64);
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

    // A fixed open-loop rate: the floors and the gateway against the upstream answering at once, then
    // the gateway against the 20 ms upstream.
    for (label, p, up) in [
        ("floor: the TCP relay, upstream at once", &relay, &fast_url),
        (
            "floor: the plain proxy, upstream at once",
            &plain,
            &fast_url,
        ),
        ("the gateway, upstream answering at once", &fast, &fast_url),
        (
            "the gateway, upstream answering after 20 ms",
            &slow,
            &slow_url,
        ),
    ] {
        let d_t = Arc::new(direct(up));
        let (d, de, _, _) = open_loop(&c, &d_t, b.rate, b.seconds, &none).await;
        let (g, ge, gcpu, achieved) =
            open_loop(&c, &p.target, b.rate, b.seconds, &|| p.cpu()).await;
        let (a50, a99) = added(&g, &d);
        println!(
            "{} requests/s for {} s, {label}: direct p50 {} µs p99 {} µs ({de} errors); through it p50 {} µs p99 {} µs ({ge} errors, {achieved:.0}/s sent); added p50 {a50} µs, p99 {a99} µs; its CPU {:.1} µs/request",
            b.rate,
            b.seconds,
            pct(&d, 0.5),
            pct(&d, 0.99),
            pct(&g, 0.5),
            pct(&g, 0.99),
            gcpu * 1e6 / (b.rate * b.seconds) as f64,
        );
    }

    // The highest sustained rate against the 20 ms upstream.
    let mut best = None;
    for rate in &b.rates {
        let (g, errors, cpu, achieved) =
            open_loop(&c, &slow.target, *rate, 3, &|| slow.cpu()).await;
        let total = (*rate * 3) as f64;
        let err = errors as f64 / total;
        let ok = err < 0.001 && achieved >= *rate as f64 * 0.95;
        println!(
            "sustained {rate}/s against the 20 ms upstream: {achieved:.0}/s sent, {:.3} % errors, p50 {} µs, p99 {} µs, gateway CPU {:.1} µs/request{}",
            err * 100.0,
            pct(&g, 0.5),
            pct(&g, 0.99),
            cpu * 1e6 / total,
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
    let g = streams(&c, &stream.target, b.streams).await;
    let (dg, dmax) = gaps(&d);
    let (gg, gmax) = gaps(&g);
    let chunks = g.first().map_or(0, |s| s.1.len());
    let first = |s: &[(u64, Vec<u64>)]| median(s.iter().map(|s| s.0).collect());
    println!(
        "streams ({} of {chunks} chunks each): time to first chunk direct {} µs, through the gateway {} µs (added {} µs); mean gap between chunks direct {dg} µs, through the gateway {gg} µs (added {} µs per chunk); largest gap direct {dmax} µs, through the gateway {gmax} µs",
        g.len(),
        first(&d),
        first(&g),
        first(&g) as i64 - first(&d) as i64,
        gg as i64 - dg as i64,
    );

    // Every gateway flushes its usage as it stops.
    for p in [fast, slow, stream, plain, relay] {
        p.stop().await?;
    }
    let mut events = 0;
    for name in ["fast", "slow", "stream"] {
        let file = dir.join(format!("ledger-{name}.db"));
        let ledger = crate::ledger::Ledger::connect(b.database_url.as_deref(), &file).await?;
        events += ledger.event_count().await?;
        if b.database_url.is_some() {
            break;
        }
    }
    println!("ledger usage events after the run: {events}");
    Ok(())
}
