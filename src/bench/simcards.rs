//! `quartermaster bench simcards`: N SimCards claimed on one 1NCE account of `quartermaster sim`, then a
//! resync of all of them at 1NCE's documented 10 requests a second — figures, never a pass/fail.
//!
//! The claims are made with the account's client limit raised (`--claim-rate`; 1NCE's own 10 a second
//! would make 10,000 first reads take ~50 minutes: each SimCard reads its quotas and usage once, 3 calls).
//! Then the ProviderConfig's `rateLimit` is set to 10 a second, which wakes every SimCard of the account:
//! that resync is measured — vendor calls, its duration, Kubernetes writes, the controller's RSS.

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
use crate::crd::{ProviderConfig, SimCard};
use crate::kube_client::{KubeLimits, KubeMetrics};

/// Benchmark settings.
#[derive(Clone, Debug, clap::Args)]
pub struct SimBench {
    /// Number of SimCards (and SIMs in the simulated account).
    #[arg(long, default_value_t = 1000)]
    pub sims: usize,
    /// The account's client rate limit while the SimCards are claimed, requests a second.
    #[arg(long, default_value_t = 1000)]
    pub claim_rate: u32,
    /// Requests the benchmark's own client keeps in flight while applying objects.
    #[arg(long, default_value_t = 64)]
    pub apply_concurrency: usize,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
    /// Folder for the simulator, the ledger and the logs (default: a new temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// Runs the benchmark and prints its figures; `exe` is the `quartermaster` binary.
pub async fn simcards(b: SimBench, exe: PathBuf) -> Result<(), BoxError> {
    let config = kube::Config::infer().await?;
    let own = KubeMetrics::register(&prometheus::Registry::new());
    let client = crate::kube_client::client(config, KubeLimits { qps: 0, burst: 0 }, Some(own))?;
    let work = b.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("qm-bench-sims-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let n = b.sims;
    println!(
        "# quartermaster bench simcards --sims {n} (claims at {} requests a second)",
        b.claim_rate
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
            format!("--onence-sims={n}"),
            "--onence-apply-secs=0".into(),
            "--onence-rate-limit=0".into(),
        ],
        &work.join("sim.log"),
        &[],
    )?;
    let http = reqwest::Client::new();
    wait_for(&format!("{sim_url}/_sim/stats"), &http).await?;

    let ssa = PatchParams::apply("quartermaster-bench").force();
    let ns = crds_and_namespace(&client, "sims").await?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "onence"},
                "stringData": {"credentials": r#"{"clientId":"bench","clientSecret":"bench"}"#}
            }))?,
        )
        .await?;
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc = |rate: u32| {
        serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": ns},
            "spec": {"type": "onence", "endpoint": sim_url, "allowedNamespaces": [ns],
                     "rateLimit": {"requestsPerSecond": rate, "burst": rate},
                     "credentialsSecretRef": {"name": "onence", "namespace": ns, "key": "credentials"}}
        })
    };
    pcs.patch(&ns, &ssa, &Patch::Apply(pc(b.claim_rate)))
        .await?;

    let (controller, metrics_url) = spawn_controller(&exe, &work, &http).await?;
    let pid = controller.0.id();

    // Claim N SIMs.
    let sims: Api<SimCard> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let first = crate::sim::onence::FIRST_ICCID;
    futures::stream::iter(0..n)
        .map(|i| {
            let (sims, pc) = (sims.clone(), ns.clone());
            async move {
                let s: SimCard = serde_json::from_value(serde_json::json!({
                    "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
                    "metadata": {"name": format!("sim-{i:05}")},
                    "spec": {"iccid": (first + i as u64).to_string(), "providerConfigRef": {"name": pc}}
                }))?;
                sims.create(&PostParams::default(), &s).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(b.apply_concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let reconciles =
        |c: &BTreeMap<String, u64>| count(c, "quartermaster_reconciles_total{kind=\"SimCard\"}");
    let ready = wait_all_ready(&sims, n, Duration::from_secs(b.timeout_secs)).await?;
    let claimed = started.elapsed();
    let (peak_claim, _) = rss_kib(pid);
    let claim_calls = total(&sim_calls(&http, &sim_url).await?);
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The resync at 1NCE's limit: every SimCard woken by the ProviderConfig change.
    let before = controller_counters(&http, &metrics_url, &["quartermaster_"]).await?;
    let api_before = apiserver_requests(&client).await?;
    let calls_before = total(&sim_calls(&http, &sim_url).await?);
    let cpu_before = cpu_secs(pid);
    let resync_started = Instant::now();
    pcs.patch(&ns, &ssa, &Patch::Apply(pc(10))).await?;
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
        "quartermaster_status_writes_total{kind=\"SimCard\"}",
    ) - count(
        &before,
        "quartermaster_status_writes_total{kind=\"SimCard\"}",
    );
    let (peak, rss) = rss_kib(pid);
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| SimCards | {n} |");
    println!(
        "| all claimed and Ready (client limit {} a second) | {:.1} s (Ready seen at {:.1} s) |",
        b.claim_rate,
        claimed.as_secs_f64(),
        ready.as_secs_f64()
    );
    println!(
        "| vendor calls while claiming, per SIM | {:.2} |",
        claim_calls as f64 / n as f64
    );
    println!(
        "| resync of every SimCard at 1NCE's 10 requests a second: duration | {:.1} s |",
        resync.as_secs_f64()
    );
    println!("| vendor calls in that resync (SIM listing pages of 100, token) | {calls} |");
    println!(
        "| SimCard status writes in that resync / per SIM | {writes} / {:.3} |",
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
        "| controller peak RSS while claiming / overall, RSS at the end | {} MB / {} MB, {} MB |",
        peak_claim / 1024,
        peak / 1024,
        rss / 1024
    );
    Ok(())
}
