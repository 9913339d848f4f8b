//! `quartermaster bench subscriptions`: N Subscriptions on one Stripe account of `quartermaster sim`,
//! then a resync of all of them at Stripe's 25 requests a second — figures, never a pass/fail.
//!
//! The Subscriptions are created with the account's client limit raised (`--create-rate`; each first
//! reconcile makes a customer and a subscription, ~5 calls). Then the ProviderConfig's `rateLimit` is set
//! to 25 a second, which wakes every Subscription of the account: that resync is measured — vendor
//! calls (one listing of the account's subscriptions serves them all), its duration, Kubernetes writes,
//! the controller's RSS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{
    BoxError, apiserver_requests, controller_counters, count, cpu_secs, crds_and_namespace,
    free_port, reads_writes, rss_kib, sim_calls, spawn, spawn_controller, total, wait_all_ready,
    wait_for,
};
use crate::crd::{ProviderConfig, Subscription};
use crate::kube_client::{KubeLimits, KubeMetrics};

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct SubscriptionBench {
    /// Number of Subscriptions.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// The account's client rate limit while the Subscriptions are created, requests a second.
    #[arg(long, default_value_t = 1000)]
    pub create_rate: u32,
    /// Requests the benchmark's own client keeps in flight while applying objects.
    #[arg(long, default_value_t = 64)]
    pub apply_concurrency: usize,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
    /// Folder for the simulator, the ledger and the logs (default: a new temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// Runs the benchmark and prints its figures; `exe` is the `quartermaster` binary.
pub async fn subscriptions(b: SubscriptionBench, exe: PathBuf) -> Result<(), BoxError> {
    let config = kube::Config::infer().await?;
    let own = KubeMetrics::register(&prometheus::Registry::new());
    let client = crate::kube_client::client(config, KubeLimits { qps: 0, burst: 0 }, Some(own))?;
    let work = b.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qm-bench-subs-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let n = b.subs;
    println!(
        "# quartermaster bench subscriptions --subs {n} (created at {} requests a second)",
        b.create_rate
    );
    let sim_port = free_port()?;
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let _sim = spawn(
        &exe,
        &[
            "sim".into(),
            "--listen".into(),
            format!("127.0.0.1:{sim_port}"),
            "--state".into(),
            work.join("sim.json").display().to_string(),
        ],
        &work.join("sim.log"),
        &[],
    )?;
    let http = reqwest::Client::new();
    wait_for(&format!("{sim_url}/_sim/stats"), &http).await?;

    let ssa = PatchParams::apply("quartermaster-bench").force();
    let ns = crds_and_namespace(&client, "subs").await?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "stripe"},
                "stringData": {"secretKey": "sk_test_bench"}
            }))?,
        )
        .await?;
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc = |rate: u32| {
        serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": ns},
            "spec": {"type": "stripe", "endpoint": sim_url, "allowedNamespaces": [ns],
                     "rateLimit": {"requestsPerSecond": rate, "burst": rate},
                     "plans": [{"name": "basic", "priceID": "price_basic"}],
                     "credentialsSecretRef": {"name": "stripe", "namespace": ns, "key": "secretKey"}}
        })
    };
    pcs.patch(&ns, &ssa, &Patch::Apply(pc(b.create_rate)))
        .await?;

    let (controller, metrics_url) = spawn_controller(&exe, &work, &http).await?;
    let pid = controller.0.id();

    // Create N Subscriptions.
    let subs: Api<Subscription> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (subs, pc) = (subs.clone(), ns.clone());
            async move {
                let s: Subscription = serde_json::from_value(serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Subscription",
                    "metadata": {"name": format!("sub-{i:05}")},
                    "spec": {"plan": "basic", "providerConfigRef": {"name": pc}}
                }))?;
                subs.create(&PostParams::default(), &s).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(b.apply_concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let reconciles = |c: &BTreeMap<String, u64>| {
        count(c, "quartermaster_reconciles_total{kind=\"Subscription\"}")
    };
    let ready = wait_all_ready(&subs, n, Duration::from_secs(b.timeout_secs)).await?;
    let created = started.elapsed();
    let (peak_create, _) = rss_kib(pid);
    let create_calls = total(&sim_calls(&http, &sim_url).await?);
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The resync at Stripe's limit: every Subscription woken by the ProviderConfig change.
    let before = controller_counters(&http, &metrics_url, &["quartermaster_"]).await?;
    let api_before = apiserver_requests(&client).await?;
    let calls_before = total(&sim_calls(&http, &sim_url).await?);
    let cpu_before = cpu_secs(pid);
    let resync_started = Instant::now();
    pcs.patch(&ns, &ssa, &Patch::Apply(pc(25))).await?;
    let deadline = Instant::now() + Duration::from_secs(b.timeout_secs);
    loop {
        let now =
            controller_counters(&http, &metrics_url, &["quartermaster_reconciles_total"]).await?;
        if reconciles(&now) >= reconciles(&before) + n as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the resync did not finish".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resync = resync_started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = controller_counters(&http, &metrics_url, &["quartermaster_"]).await?;
    let (_, api_writes) = reads_writes(&api_before, &apiserver_requests(&client).await?);
    let calls = total(&sim_calls(&http, &sim_url).await?) - calls_before;
    let writes = count(
        &after,
        "quartermaster_status_writes_total{kind=\"Subscription\"}",
    ) - count(
        &before,
        "quartermaster_status_writes_total{kind=\"Subscription\"}",
    );
    let (peak, rss) = rss_kib(pid);
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| Subscriptions | {n} |");
    println!(
        "| all created and Ready (client limit {} a second) | {:.1} s (Ready seen at {:.1} s) |",
        b.create_rate,
        created.as_secs_f64(),
        ready.as_secs_f64()
    );
    println!(
        "| vendor calls while creating, per Subscription | {:.2} |",
        create_calls as f64 / n as f64
    );
    println!(
        "| resync of every Subscription at Stripe's 25 requests a second: duration | {:.1} s |",
        resync.as_secs_f64()
    );
    println!("| vendor calls in that resync (subscription listing pages of 100) | {calls} |");
    println!(
        "| Subscription status writes in that resync / per Subscription | {writes} / {:.3} |",
        writes as f64 / n as f64
    );
    println!(
        "| API server writes in that resync (all, incl. the ProviderConfig's own) | {api_writes:.0} |"
    );
    println!(
        "| controller CPU in that resync | {:.1} s |",
        cpu_secs(pid) - cpu_before
    );
    println!(
        "| controller peak RSS while creating / overall, RSS at the end | {} MB / {} MB, {} MB |",
        peak_create / 1024,
        peak / 1024,
        rss / 1024
    );
    Ok(())
}
