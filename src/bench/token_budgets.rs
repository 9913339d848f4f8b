//! `quartermaster bench tokenbudgets`: N TokenBudgets (one API key each) on one controller, then a
//! resync of all of them — figures, never a pass/fail.
//!
//! Creating makes one key Secret per budget and reads the (empty) ledger once per budget. Then the
//! upstream ProviderConfig is changed, which wakes every budget: that resync is measured — its
//! duration, status writes, ledger reads (a budget at rest reads nothing: one activity query serves
//! all), Kubernetes writes, the controller's CPU and RSS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{
    BoxError, apiserver_requests, controller_counters, count, cpu_secs, crds_and_namespace,
    reads_writes, rss_kib, spawn_controller, wait_all_ready,
};
use crate::crd::{ProviderConfig, TokenBudget};
use crate::kube_client::{KubeLimits, KubeMetrics};

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct BudgetBench {
    /// Number of TokenBudgets.
    #[arg(long, default_value_t = 1000)]
    pub budgets: usize,
    /// Requests the benchmark's own client keeps in flight while applying objects.
    #[arg(long, default_value_t = 64)]
    pub apply_concurrency: usize,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
    /// Folder for the ledger and the logs (default: a new temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// Runs the benchmark and prints its figures; `exe` is the `quartermaster` binary.
pub async fn token_budgets(b: BudgetBench, exe: PathBuf) -> Result<(), BoxError> {
    let config = kube::Config::infer().await?;
    let own = KubeMetrics::register(&prometheus::Registry::new());
    let client = crate::kube_client::client(config, KubeLimits { qps: 0, burst: 0 }, Some(own))?;
    let work = b.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qm-bench-budgets-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let n = b.budgets;
    println!("# quartermaster bench tokenbudgets --budgets {n}");
    let ssa = PatchParams::apply("quartermaster-bench").force();
    let ns = crds_and_namespace(&client, "budgets").await?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "llm"}, "stringData": {"token": "sk-bench"}
            }))?,
        )
        .await?;
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc = |price: &str| {
        serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": ns},
            "spec": {"type": "openai", "endpoint": "http://127.0.0.1:1/v1", "allowedNamespaces": [ns],
                     "credentialsSecretRef": {"name": "llm", "namespace": ns},
                     "models": [{"name": "gpt-4o-mini", "inputPerMillion": price, "outputPerMillion": "0.60"}]}
        })
    };
    pcs.patch(&ns, &ssa, &Patch::Apply(pc("0.15"))).await?;

    let http = reqwest::Client::new();
    let (controller, metrics_url) = spawn_controller(&exe, &work, &http).await?;
    let pid = controller.0.id();

    let budgets: Api<TokenBudget> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (budgets, pc) = (budgets.clone(), ns.clone());
            async move {
                let t: TokenBudget = serde_json::from_value(serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "TokenBudget",
                    "metadata": {"name": format!("tb-{i:05}")},
                    "spec": {"tokens": 1_000_000, "providerConfigRef": {"name": pc},
                             "apiKeys": [{"name": "prod"}], "alertThresholds": [80]}
                }))?;
                budgets.create(&PostParams::default(), &t).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(b.apply_concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let ready = wait_all_ready(&budgets, n, Duration::from_secs(b.timeout_secs)).await?;
    let created = started.elapsed();
    let (peak_create, _) = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c = |m: &BTreeMap<String, u64>, name: &str| count(m, name);
    const RECONCILES: &str = "quartermaster_reconciles_total{kind=\"TokenBudget\"}";
    const WRITES: &str = "quartermaster_status_writes_total{kind=\"TokenBudget\"}";
    const READS: &str = "quartermaster_budget_ledger_reads_total";
    let before = controller_counters(&http, &metrics_url, &["quartermaster_"]).await?;
    let api_before = apiserver_requests(&client).await?;
    let cpu_before = cpu_secs(pid);
    let resync_started = Instant::now();
    pcs.patch(&ns, &ssa, &Patch::Apply(pc("0.16"))).await?;
    let deadline = Instant::now() + Duration::from_secs(b.timeout_secs);
    loop {
        let now =
            controller_counters(&http, &metrics_url, &["quartermaster_reconciles_total"]).await?;
        if c(&now, RECONCILES) >= c(&before, RECONCILES) + n as u64 {
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
    let (peak, rss) = rss_kib(pid);
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| TokenBudgets (one API key Secret each) | {n} |");
    println!(
        "| all created and Ready | {:.1} s (Ready seen at {:.1} s) |",
        created.as_secs_f64(),
        ready.as_secs_f64()
    );
    println!(
        "| status writes / ledger reads while creating, per budget | {:.2} / {:.2} |",
        c(&before, WRITES) as f64 / n as f64,
        c(&before, READS) as f64 / n as f64
    );
    println!(
        "| resync of every budget (its ProviderConfig changed): duration | {:.1} s |",
        resync.as_secs_f64()
    );
    println!(
        "| status writes / ledger reads in that resync | {} / {} |",
        c(&after, WRITES) - c(&before, WRITES),
        c(&after, READS) - c(&before, READS)
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
