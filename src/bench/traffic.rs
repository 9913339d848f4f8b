//! `quartermaster bench traffic`: N VirtualMachines on one DigitalOcean account of `quartermaster sim`
//! (made by the fleet harness), then three rounds of reading their servers' outbound transfer (and,
//! with `--metrics`, their load) at the account's rate limit — figures, never a pass/fail:
//!
//! 1. a round after every VM is Ready (their `status.transfer` appeared in the rounds while they were
//!    created: nothing changed since);
//! 2. the next one (nothing changed either: nothing is written);
//! 3. a round after every server passed its allowance (each VM bills its overage and announces 80 %
//!    and 100 %; the account's pooled overage is recorded once).
//!
//! Each round's vendor calls (per server, per minute against the limit), the VMs' status writes per VM,
//! API server writes (Events included) and the round's duration are printed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::fleet::{self, Fleet, Running};
use super::{BoxError, controller_counters, count, sim_calls, total};
use crate::crd::VirtualMachine;

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct TrafficBench {
    /// Number of VirtualMachines (one server each).
    #[arg(long, default_value_t = 1000)]
    pub vms: usize,
    /// The account's rate limit, requests a second (a round spends at most half of it).
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// The controller's `--traffic-interval-secs` (start to start; longer than a round, so each round
    /// is measured alone).
    #[arg(long, default_value_t = 60)]
    pub interval_secs: u64,
    /// Every VM opts in to metrics (`spec.metrics`): seven more calls per DigitalOcean server a round.
    #[arg(long)]
    pub metrics: bool,
    /// The settings every fleet benchmark shares.
    #[command(flatten)]
    pub fleet: fleet::FleetArgs,
}

/// Runs the benchmark and prints its figures; `exe` is the `quartermaster` binary.
pub async fn traffic(b: TrafficBench, exe: PathBuf) -> Result<(), BoxError> {
    let (n, rate, metrics) = (b.vms, b.rate, b.metrics);
    println!(
        "# quartermaster bench traffic --vms {n} --rate {rate} --interval-secs {}{}",
        b.interval_secs,
        if metrics { " --metrics" } else { "" }
    );
    let f = fleet::run::<VirtualMachine>(
        Fleet {
            what: "traffic",
            n,
            args: b.fleet,
            sim_args: Some(vec!["--provision-secs=0".into(), "--power-secs=0".into()]),
            secret: serde_json::json!({
                "metadata": {"name": "do-token"}, "stringData": {"token": "bench"}
            }),
            provider_config: Box::new(move |ns, sim_url, step| {
                let rate = if step == 0 { rate } else { rate + 1 };
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
                    "metadata": {"name": ns},
                    "spec": {"type": "digitalocean", "endpoint": sim_url, "allowedNamespaces": [ns],
                             "rateLimit": {"requestsPerSecond": rate, "burst": rate},
                             "credentialsSecretRef": {"name": "do-token", "namespace": ns, "key": "token"}}
                })
            }),
            object: Box::new(move |i, pc| {
                serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
                    "metadata": {"name": format!("vm-{i:05}")},
                    "spec": {"providerConfigRef": {"name": pc}, "region": "fra1",
                             "size": "s-1vcpu-1gb", "image": "debian-12-x64", "metrics": metrics}
                })
            }),
            prepare: None,
            controller_args: vec![
                "--traffic-interval-secs".into(),
                b.interval_secs.to_string(),
            ],
            after: Some(Box::new(move |r| rounds(r, n, rate, metrics).boxed())),
        },
        exe,
    )
    .await?;
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| VirtualMachines (one server each, one account) | {n} |");
    println!(
        "| account rate limit / a round's share | {rate}/s / {:.0}/s ({:.0} calls a minute) |",
        f64::from(rate) / 2.0,
        f64::from(rate) * 30.0
    );
    for row in &f.after {
        println!("{row}");
    }
    fleet::print_common(&f);
    Ok(())
}

/// What one round cost.
struct Round {
    seconds: f64,
    calls: u64,
    reads: u64,
    writes: u64,
    api_writes: f64,
}

/// The three measured rounds, as table rows.
async fn rounds(r: Running, n: usize, rate: u32, metrics: bool) -> Result<Vec<String>, BoxError> {
    let http = reqwest::Client::new();
    let client = kube::Client::try_default().await?;
    // A round that started before every VM was Ready is not measured.
    next_round(&r, &http, &client).await?;
    let first = next_round(&r, &http, &client).await?;
    let quiet = next_round(&r, &http, &client).await?;
    let over = http
        .post(format!("{}/_sim/droplets-transfer", r.sim_url))
        .json(&serde_json::json!({ "bytes": (1000i64 << 30) * 6 / 5 }))
        .send()
        .await?;
    if !over.status().is_success() {
        return Err(format!("setting the servers' transfer: {}", over.status()).into());
    }
    let billed = next_round(&r, &http, &client).await?;
    let limit_per_minute = f64::from(rate) * 60.0;
    // DigitalOcean: one call a server for its transfer, seven more for its load.
    let per_server = if metrics { 8.0 } else { 1.0 };
    let row = |what: &str, x: &Round| {
        let round_calls = x.reads as f64 * per_server;
        let per_minute = round_calls / x.seconds.max(0.001) * 60.0;
        format!(
            "| {what}: duration / servers read / the round's calls a minute (the limit allows {limit_per_minute:.0}) / vendor calls in all, the woken VMs' own included (per server) / VM status writes per VM / API server writes (Events included) | {:.1} s / {} / {per_minute:.0} / {} ({:.2}) / {:.3} / {:.0} |",
            x.seconds,
            x.reads,
            x.calls,
            x.calls as f64 / x.reads.max(1) as f64,
            x.writes as f64 / n as f64,
            x.api_writes,
        )
    };
    Ok(vec![
        row("a round after Ready", &first),
        row("the next round (nothing changed at the vendor)", &quiet),
        row(
            "a round after every server passed its allowance (overage billed, 80 % and 100 % Events)",
            &billed,
        ),
    ])
}

/// Waits for the next round to end (and 5 s more, for the writes of the VMs it woke); what it cost,
/// counted from the call.
async fn next_round(
    r: &Running,
    http: &reqwest::Client,
    client: &kube::Client,
) -> Result<Round, BoxError> {
    const ROUNDS: &str = "quartermaster_traffic_rounds_total";
    const READS: &str = "quartermaster_traffic_reads_total";
    const WRITES: &str = "quartermaster_status_writes_total{kind=\"VirtualMachine\"}";
    let prefixes = [ROUNDS, READS, "quartermaster_status_writes_total"];
    let before = controller_counters(http, &r.metrics_url, &prefixes).await?;
    let calls_before = total(&sim_calls(http, &r.sim_url).await?);
    let api_before = super::apiserver_requests(client).await?;
    let deadline = Instant::now() + Duration::from_secs(6 * 3600);
    loop {
        let now = controller_counters(http, &r.metrics_url, &prefixes).await?;
        if count(&now, ROUNDS) > count(&before, ROUNDS) {
            // The VMs the round woke write their status just after it.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = controller_counters(http, &r.metrics_url, &prefixes).await?;
            let text = http.get(&r.metrics_url).send().await?.text().await?;
            let seconds = text
                .lines()
                .find_map(|l| l.strip_prefix("quartermaster_traffic_round_seconds "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            let (_, api_writes) =
                super::reads_writes(&api_before, &super::apiserver_requests(client).await?);
            return Ok(Round {
                seconds,
                calls: total(&sim_calls(http, &r.sim_url).await?) - calls_before,
                reads: count(&now, READS) - count(&before, READS),
                writes: count(&now, WRITES) - count(&before, WRITES),
                api_writes,
            });
        }
        if Instant::now() > deadline {
            return Err("no round ended".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
